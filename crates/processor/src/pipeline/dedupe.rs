//! The dedup decision: unique, duplicate or conflict.
//!
//! Key: `transaction_id`. The index remembers the *first* version (event time, content
//! hash, partition/offset); a later record with the same id is a duplicate when its
//! content hash matches and a conflict (an idempotency key reused with a different
//! body) when it does not. The first version stays canonical either way.
//!
//! Expiry is logical here: an entry with `event_time + retention < watermark` is treated
//! as absent, whether or not compaction has removed it yet, so results never depend on
//! compaction timing.

use paydedup_state::expiry::is_expired;
use paydedup_state::DedupEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupDecision {
    Unique,
    Duplicate { first: DedupEntry },
    Conflict { first: DedupEntry },
}

/// The index entry if it is still alive under `watermark`.
pub fn alive(
    entry: Option<DedupEntry>,
    watermark: Option<i64>,
    retention_micros: i64,
) -> Option<DedupEntry> {
    entry.filter(|e| match watermark {
        Some(wm) => !is_expired(e.event_time_micros, retention_micros, wm),
        None => true,
    })
}

pub fn decide(
    existing: Option<DedupEntry>,
    content_hash: u128,
    watermark: Option<i64>,
    retention_micros: i64,
) -> DedupDecision {
    match alive(existing, watermark, retention_micros) {
        None => DedupDecision::Unique,
        Some(first) if first.content_hash == content_hash => DedupDecision::Duplicate { first },
        Some(first) => DedupDecision::Conflict { first },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: i64, hash: u128) -> DedupEntry {
        DedupEntry {
            event_time_micros: t,
            content_hash: hash,
            partition: 0,
            offset: 0,
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, 1, Some(0), 100), DedupDecision::Unique);
        let e = entry(50, 1);
        assert_eq!(
            decide(Some(e), 1, Some(100), 100),
            DedupDecision::Duplicate { first: e }
        );
        assert_eq!(
            decide(Some(e), 2, Some(100), 100),
            DedupDecision::Conflict { first: e }
        );
    }

    #[test]
    fn expiry_is_enforced_at_lookup() {
        let e = entry(50, 1);
        // 50 + 100 == 150: still alive at watermark 150, gone at 151.
        assert_eq!(
            decide(Some(e), 1, Some(150), 100),
            DedupDecision::Duplicate { first: e }
        );
        assert_eq!(decide(Some(e), 1, Some(151), 100), DedupDecision::Unique);
        // Without a watermark nothing expires.
        assert_eq!(
            decide(Some(e), 1, None, 100),
            DedupDecision::Duplicate { first: e }
        );
    }
}
