//! Time-to-live of dedup and fraud keys.
//!
//! A dedup key expires when `event_time + retention < watermark`. That rule is enforced
//! **logically at lookup** by the processor (so results never depend on when compaction
//! runs) and **physically** here, by a compaction filter, so the on-disk state stays
//! bounded by the retention window however long the stream runs.
//!
//! The filter needs a watermark. It reads the [`ExpiryHorizon`]: the minimum watermark
//! over all partitions *as last committed*. The minimum is conservative (a key alive for
//! any partition is kept), and only committed watermarks are published, so a crash that
//! rolls the watermark back can never find a key physically gone that is logically
//! still alive.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;

/// Shared, monotonic "everything with a time below this is eligible" horizon, in
/// microseconds of event time. `i64::MIN` until the first watermark is committed.
#[derive(Debug, Clone)]
pub struct ExpiryHorizon(Arc<AtomicI64>);

impl Default for ExpiryHorizon {
    fn default() -> Self {
        ExpiryHorizon(Arc::new(AtomicI64::new(i64::MIN)))
    }
}

impl ExpiryHorizon {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Publishes a committed watermark; never moves backwards.
    pub fn advance(&self, watermark_micros: i64) {
        self.0.fetch_max(watermark_micros, Ordering::AcqRel);
    }
}

/// Whether a value whose time is `time_micros` is expired under `horizon` with `ttl`.
/// Saturating, so extreme values never wrap.
pub fn is_expired(time_micros: i64, ttl_micros: i64, horizon: i64) -> bool {
    time_micros.saturating_add(ttl_micros) < horizon
}

/// Builds the compaction filter for a column family whose values start with an 8-byte
/// big-endian time. Values too short to carry one are kept.
pub fn ttl_filter(
    horizon: ExpiryHorizon,
    ttl_micros: Arc<AtomicI64>,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, _key, value| {
        let Some(time) = value.get(..8).and_then(|b| b.try_into().ok()) else {
            return Decision::Keep;
        };
        let ttl = ttl_micros.load(Ordering::Acquire);
        if is_expired(i64::from_be_bytes(time), ttl, horizon.get()) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_boundary_is_strict() {
        // event_time + retention == watermark: still alive.
        assert!(!is_expired(100, 50, 150));
        assert!(is_expired(100, 50, 151));
        assert!(!is_expired(i64::MAX, i64::MAX, i64::MAX));
        assert!(!is_expired(0, 10, i64::MIN));
    }

    #[test]
    fn horizon_never_moves_backwards() {
        let h = ExpiryHorizon::default();
        h.advance(10);
        h.advance(5);
        assert_eq!(h.get(), 10);
    }
}
