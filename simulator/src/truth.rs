//! The ground truth: how each produced record must be classified.
//!
//! This is an independent model of the processor's contract (ARCHITECTURE.md, "Dedup
//! semantics"), written from the spec, not shared with the processor's code, so that the
//! manifest is an oracle and not a copy:
//!
//! - per partition, `watermark = max event time seen − allowed_lateness`;
//! - a valid event older than the watermark is **late**;
//! - else an id seen before (and not expired: `first_time + retention >= watermark`) is a
//!   **duplicate** when its content hash matches and a **conflict** when it does not;
//! - else it is **unique**;
//! - the max event time then advances with every valid, non-late event.

use std::collections::HashMap;

use paydedup_event::{content_hash, PaymentEvent};

/// What a record is, in the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unique,
    /// A client retry seconds later (same content).
    Duplicate,
    /// The same event again minutes later (same content).
    Replay,
    Conflict,
    Late {
        key_known: bool,
    },
    Malformed {
        code: &'static str,
    },
}

/// The intent of a re-sent record, used to split duplicates into retries and replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    Retry,
    Replay,
    Other,
}

#[derive(Debug, Default)]
pub struct PartitionTruth {
    max_event_micros: Option<i64>,
    /// id → (first event time, content hash).
    seen: HashMap<String, (i64, u128)>,
}

#[derive(Debug)]
pub struct Truth {
    lateness_micros: i64,
    retention_micros: i64,
    partitions: Vec<PartitionTruth>,
}

impl Truth {
    pub fn new(partitions: usize, lateness_secs: i64, retention_secs: i64) -> Truth {
        Truth {
            lateness_micros: lateness_secs * 1_000_000,
            retention_micros: retention_secs * 1_000_000,
            partitions: (0..partitions).map(|_| PartitionTruth::default()).collect(),
        }
    }

    /// The current watermark of a partition, if it has seen a valid event.
    pub fn watermark(&self, partition: usize) -> Option<i64> {
        self.partitions[partition]
            .max_event_micros
            .map(|m| m - self.lateness_micros)
    }

    /// Classifies a valid event arriving on `partition` and updates the model.
    pub fn observe(&mut self, partition: usize, event: &PaymentEvent, resend: Resend) -> Kind {
        let watermark = self.watermark(partition);
        let retention = self.retention_micros;
        let p = &mut self.partitions[partition];
        let t = event.event_time_micros();
        let id = event.transaction_id.as_str();
        let known = p
            .seen
            .get(id)
            .filter(|(first, _)| watermark.is_none_or(|wm| first + retention >= wm))
            .copied();
        if let Some(wm) = watermark {
            if t < wm {
                return Kind::Late {
                    key_known: known.is_some(),
                };
            }
        }
        let hash = content_hash(event).0;
        let kind = match known {
            Some((_, h)) if h == hash => match resend {
                Resend::Replay => Kind::Replay,
                _ => Kind::Duplicate,
            },
            Some(_) => Kind::Conflict,
            None => {
                p.seen.insert(id.to_owned(), (t, hash));
                Kind::Unique
            }
        };
        p.max_event_micros = Some(p.max_event_micros.map_or(t, |m| m.max(t)));
        kind
    }

    /// When `id` was first seen on `partition` (its occurrence still remembered, alive or
    /// not yet pruned).
    pub fn first_seen(&self, partition: usize, id: &str) -> Option<i64> {
        self.partitions[partition].seen.get(id).map(|(t, _)| *t)
    }

    /// Remembers an id seen by an earlier run (a storm continued across runs): it was
    /// first seen at `first_micros` with content `hash`. Whether it is still alive is
    /// judged by `observe`, against this run's watermark.
    pub fn remember(&mut self, partition: usize, id: &str, first_micros: i64, hash: u128) {
        self.partitions[partition]
            .seen
            .insert(id.to_owned(), (first_micros, hash));
    }

    /// The largest event time a valid, non-late event carried, over all partitions.
    pub fn max_event_micros(&self) -> Option<i64> {
        self.partitions
            .iter()
            .filter_map(|p| p.max_event_micros)
            .max()
    }

    /// Forgets expired ids so a long run keeps bounded memory (the classification is
    /// unaffected: expired ids are ignored by `observe` anyway).
    pub fn prune(&mut self) {
        for i in 0..self.partitions.len() {
            if let Some(wm) = self.watermark(i) {
                let retention = self.retention_micros;
                self.partitions[i]
                    .seen
                    .retain(|_, (first, _)| *first + retention >= wm);
            }
        }
    }
}
