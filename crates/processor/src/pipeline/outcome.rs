//! Where a record goes: the routing decision, as a pure function.
//!
//! Every record ends in exactly one table, decided by three questions asked in order:
//!
//! 1. Did it decode and validate? No → [`Outcome::Invalid`] (`processing_errors`).
//! 2. Is its event time *strictly* before its partition's watermark? Yes →
//!    [`Outcome::Late`] (`late_events`). A late record touches no state: not the dedup
//!    index, not fraud, not windows, not the watermark. Exactly at the watermark is on
//!    time; with no watermark yet (the partition's first valid event) nothing is late.
//! 3. Is its transaction id alive in the dedup index? No (never seen, or expired under
//!    the watermark) → [`Outcome::Unique`] (`payments`). Yes, with the same content
//!    hash → [`Outcome::Duplicate`]; with another → [`Outcome::Conflict`] (both
//!    `dedup_audit`).
//!
//! [`classify`] answers them from the record and the state read up front for its batch
//! (the dedup entry and the watermark), so it needs no store: applying the outcome's
//! state effects and rendering its row are the caller's next steps.

use paydedup_event::{PaymentEvent, ValidationError};
use paydedup_state::{DedupEntry, Table};

use super::dedupe::{self, DedupDecision};
use super::watermark;

/// One record's routing decision, borrowing the decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Did not decode or validate.
    Invalid { error: &'a ValidationError },
    /// Strictly before `watermark`. `key_known`: its id is still alive in the dedup
    /// index (a late duplicate or conflict), as opposed to never seen or expired.
    Late {
        event: &'a PaymentEvent,
        watermark: i64,
        key_known: bool,
    },
    /// On time, and the first alive version of its id. `hash` is its content hash.
    Unique { event: &'a PaymentEvent, hash: u128 },
    /// On time; the alive `first` version of its id has the same content hash.
    Duplicate {
        event: &'a PaymentEvent,
        hash: u128,
        first: DedupEntry,
    },
    /// On time; the alive `first` version of its id has another content hash (an
    /// idempotency key reused with a different body). `first` stays canonical.
    Conflict {
        event: &'a PaymentEvent,
        hash: u128,
        first: DedupEntry,
    },
}

impl<'a> Outcome<'a> {
    /// The table the record's row goes to.
    pub fn table(&self) -> Table {
        match self {
            Outcome::Invalid { .. } => Table::ProcessingErrors,
            Outcome::Late { .. } => Table::LateEvents,
            Outcome::Unique { .. } => Table::Payments,
            Outcome::Duplicate { .. } | Outcome::Conflict { .. } => Table::DedupAudit,
        }
    }

    /// The decoded event, for every outcome but [`Outcome::Invalid`].
    pub fn event(&self) -> Option<&'a PaymentEvent> {
        match *self {
            Outcome::Invalid { .. } => None,
            Outcome::Late { event, .. }
            | Outcome::Unique { event, .. }
            | Outcome::Duplicate { event, .. }
            | Outcome::Conflict { event, .. } => Some(event),
        }
    }
}

/// Routes one record. `existing` is the dedup index entry of its id as this batch sees
/// it (the committed one, or the one an earlier record of the batch wrote), `watermark`
/// its partition's watermark before the record. Expired entries count as absent
/// ([`dedupe::alive`]), so the answer never depends on compaction timing.
///
/// `hash` is the event's content hash (`paydedup_event::content_hash`; anything for an
/// invalid record), worked out where the record was decoded (`decode_ahead::Decoded`).
pub fn classify(
    decoded: &Result<PaymentEvent, ValidationError>,
    hash: u128,
    existing: Option<DedupEntry>,
    watermark: Option<i64>,
    retention_micros: i64,
) -> Outcome<'_> {
    let event = match decoded {
        Err(error) => return Outcome::Invalid { error },
        Ok(event) => event,
    };
    let t = event.event_time_micros();
    if watermark::is_late(t, watermark) {
        return Outcome::Late {
            event,
            // `is_late` implies a watermark: the fallback is never used.
            watermark: watermark.unwrap_or(t),
            key_known: dedupe::alive(existing, watermark, retention_micros).is_some(),
        };
    }
    match dedupe::decide(existing, hash, watermark, retention_micros) {
        DedupDecision::Unique => Outcome::Unique { event, hash },
        DedupDecision::Duplicate { first } => Outcome::Duplicate { event, hash, first },
        DedupDecision::Conflict { first } => Outcome::Conflict { event, hash, first },
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::payment;
    use super::*;
    use paydedup_event::content_hash;

    const RETENTION: i64 = 3_600_000_000;

    /// [`classify`] with the event's content hash, as the decode works it out.
    fn classify_event(
        d: &Result<PaymentEvent, ValidationError>,
        existing: Option<DedupEntry>,
        watermark: Option<i64>,
        retention_micros: i64,
    ) -> Outcome<'_> {
        let hash = d.as_ref().map_or(0, |e| content_hash(e).0);
        classify(d, hash, existing, watermark, retention_micros)
    }

    fn event(amount_minor: i64) -> PaymentEvent {
        payment("tx-1", 0, amount_minor)
    }

    /// The dedup entry `event` itself would have written at `event_time_micros`.
    fn entry_of(event: &PaymentEvent, event_time_micros: i64) -> DedupEntry {
        DedupEntry {
            event_time_micros,
            content_hash: content_hash(event).0,
            partition: 3,
            offset: 42,
        }
    }

    #[test]
    fn invalid_records_go_to_processing_errors() {
        let d = Err(ValidationError::NotAnObject);
        let o = classify_event(&d, None, Some(0), RETENTION);
        assert_eq!(
            o,
            Outcome::Invalid {
                error: &ValidationError::NotAnObject
            }
        );
        assert_eq!(o.table(), Table::ProcessingErrors);
        assert_eq!(o.event(), None);
    }

    #[test]
    fn late_is_strictly_before_the_watermark() {
        let d = Ok(event(100));
        let t = event(100).event_time_micros();
        // Exactly at the watermark: on time.
        let o = classify_event(&d, None, Some(t), RETENTION);
        assert!(matches!(o, Outcome::Unique { .. }));
        // One microsecond after the event: late, with the watermark it missed.
        let o = classify_event(&d, None, Some(t + 1), RETENTION);
        assert!(matches!(
            o,
            Outcome::Late {
                watermark,
                key_known: false,
                ..
            } if watermark == t + 1
        ));
        assert_eq!(o.table(), Table::LateEvents);
        assert_eq!(o.event().map(|e| e.amount_minor), Some(100));
    }

    #[test]
    fn a_late_record_knows_whether_its_id_is_alive() {
        let e = event(100);
        let d = Ok(e.clone());
        let t = e.event_time_micros();
        let wm = t + 1;
        let known = |existing| match classify_event(&d, existing, Some(wm), RETENTION) {
            Outcome::Late { key_known, .. } => key_known,
            other => panic!("expected late, got {other:?}"),
        };
        assert!(!known(None));
        // An entry alive under the watermark: a late repeat of a known id.
        assert!(known(Some(entry_of(&e, t))));
        // Alive exactly at the retention boundary (first + retention == watermark) …
        assert!(known(Some(entry_of(&e, wm - RETENTION))));
        // … and expired one microsecond later: an expired entry is an unknown id.
        assert!(!known(Some(entry_of(&e, wm - RETENTION - 1))));
    }

    #[test]
    fn unique_when_no_entry_or_the_entry_expired() {
        let e = event(100);
        let d = Ok(e.clone());
        let t = e.event_time_micros();
        let hash = content_hash(&e).0;
        let unique = Outcome::Unique { event: &e, hash };
        assert_eq!(classify_event(&d, None, Some(t), RETENTION), unique);
        assert_eq!(classify_event(&d, None, None, RETENTION), unique);
        let expired = entry_of(&e, t - RETENTION - 1);
        assert_eq!(
            classify_event(&d, Some(expired), Some(t), RETENTION),
            unique
        );
        assert_eq!(unique.table(), Table::Payments);
    }

    #[test]
    fn duplicate_when_the_alive_entry_has_the_same_hash() {
        let e = event(100);
        let d = Ok(e.clone());
        let t = e.event_time_micros();
        let first = entry_of(&e, t - 1_000_000);
        let o = classify_event(&d, Some(first), Some(t), RETENTION);
        let hash = content_hash(&e).0;
        assert_eq!(
            o,
            Outcome::Duplicate {
                event: &e,
                hash,
                first
            }
        );
        assert_eq!(o.table(), Table::DedupAudit);
    }

    #[test]
    fn conflict_when_the_alive_entry_has_another_hash() {
        let e = event(999);
        let d = Ok(e.clone());
        let t = e.event_time_micros();
        let first = entry_of(&event(100), t - 1_000_000);
        let o = classify_event(&d, Some(first), Some(t), RETENTION);
        let hash = content_hash(&e).0;
        assert_ne!(hash, first.content_hash);
        assert_eq!(
            o,
            Outcome::Conflict {
                event: &e,
                hash,
                first
            }
        );
        assert_eq!(o.table(), Table::DedupAudit);
    }

    #[test]
    fn without_a_watermark_nothing_is_late_and_nothing_expires() {
        let e = event(100);
        let d = Ok(e.clone());
        // However old the event and the entry, a partition without a watermark (before
        // its first valid event) judges neither late nor expired.
        let first = entry_of(&e, i64::MIN);
        let o = classify_event(&d, Some(first), None, RETENTION);
        assert!(matches!(o, Outcome::Duplicate { .. }));
        assert!(matches!(
            classify_event(&d, None, None, RETENTION),
            Outcome::Unique { .. }
        ));
    }
}
