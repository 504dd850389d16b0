//! Time-to-live of dedup and fraud keys.
//!
//! A dedup key expires when `event_time + retention < watermark`. That rule is enforced
//! **logically at lookup** by the processor (so results never depend on when compaction
//! runs) and **physically** here, by a compaction filter, so the on-disk state stays
//! bounded by the retention window however long the stream runs.
//!
//! The filter needs a watermark, and only committed watermarks are published to it, so
//! a crash that rolls a watermark back can never find a key physically gone that is
//! logically still alive.
//!
//! A dedup entry carries the partition that first saw its id, and an id stays in its
//! partition (producers key by `transaction_id`), so the dedup filter judges each entry
//! by **its own partition's** committed watermark ([`PartitionHorizons`]): a partition
//! that went quiet keeps only its own entries, not everyone's. Entries of a partition
//! with no published watermark fall back to the [`ExpiryHorizon`]: the highest of the
//! minimums the checkpoint stamped (over the owned partitions with a watermark). That
//! is only conservative for the partitions it was stamped over, so a commit publishes
//! every horizon it carries as soon as it is durable (`StateStore::make_durable`). A
//! partition restored into a store holding others (a takeover) brings its own horizon
//! in the batch with its entries, and is never judged by the others', which may be
//! hours ahead of it. Fraud state belongs to no partition (a card pays on
//! several); its filter uses the most advanced committed watermark — fraud history
//! only shapes scores, and its TTL (days) dwarfs the skew between partitions. The
//! pipeline judges every fraud value it reads by the same rule over its own, possibly
//! not yet committed, watermarks (`FraudExpiry` in the processor), so a score never
//! depends on whether the commit that moved the horizon has landed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::compaction_filter::Decision;

use crate::keys::{dedup_value_partition, value_time};

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

/// Committed watermark per partition, each monotonic; read by the dedup filter.
#[derive(Debug, Clone, Default)]
pub struct PartitionHorizons(Arc<RwLock<HashMap<i32, i64>>>);

impl PartitionHorizons {
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.read().ok()?.get(&partition).copied()
    }

    /// Every partition's horizon as of now, for a loop that asks once per key (one
    /// lock instead of one per key).
    pub fn snapshot(&self) -> HashMap<i32, i64> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// [`PartitionHorizons::snapshot`] with `global` for a partition that has no
    /// horizon, for a loop that asks once per key *many* times: the resident dedup
    /// sweep asks for every id it holds, and a hashed lookup each was most of its time.
    pub fn table(&self, global: i64) -> HorizonTable {
        HorizonTable::new(self.snapshot(), global)
    }

    /// Publishes a partition's committed watermark; never moves backwards.
    pub fn advance(&self, partition: i32, watermark_micros: i64) {
        if let Ok(mut map) = self.0.write() {
            let h = map.entry(partition).or_insert(i64::MIN);
            *h = (*h).max(watermark_micros);
        }
    }
}

/// Partitions' horizons answered by index: Kafka partition ids are small and dense, so
/// a vector indexed by id answers without hashing; ids beyond [`HorizonTable::DENSE`]
/// (or negative) are looked up in a map. A partition with no horizon answers `global`.
#[derive(Debug, Clone)]
pub struct HorizonTable {
    by_index: Vec<i64>,
    others: HashMap<i32, i64>,
    global: i64,
}

impl HorizonTable {
    /// Partition ids below this are answered by index.
    pub const DENSE: i32 = 1 << 16;

    pub fn new(partitions: HashMap<i32, i64>, global: i64) -> HorizonTable {
        let dense = |p: &i32| (0..Self::DENSE).contains(p);
        let len = partitions
            .keys()
            .filter(|p| dense(p))
            .max()
            .map_or(0, |&max| max as usize + 1);
        let mut by_index = vec![global; len];
        let mut others = HashMap::new();
        for (p, h) in partitions {
            if dense(&p) {
                by_index[p as usize] = h;
            } else {
                others.insert(p, h);
            }
        }
        HorizonTable {
            by_index,
            others,
            global,
        }
    }

    pub fn get(&self, partition: i32) -> i64 {
        match usize::try_from(partition)
            .ok()
            .and_then(|i| self.by_index.get(i))
        {
            Some(&h) => h,
            None => self.others.get(&partition).copied().unwrap_or(self.global),
        }
    }
}

/// Whether a value whose time is `time_micros` is expired under `horizon` with `ttl`.
/// Saturating, so extreme values never wrap.
pub fn is_expired(time_micros: i64, ttl_micros: i64, horizon: i64) -> bool {
    time_micros.saturating_add(ttl_micros) < horizon
}

/// Whether a dedup or fraud value is expired under `horizon` with `ttl`, by the time it
/// starts with. A value too short to carry a time never expires (as the filter keeps it).
pub fn value_expired(value: &[u8], ttl_micros: i64, horizon: i64) -> bool {
    value_time(value).is_some_and(|time| is_expired(time, ttl_micros, horizon))
}

/// Builds the compaction filter for a column family whose values start with an 8-byte
/// big-endian time. Values too short to carry one are kept.
pub fn ttl_filter(
    horizon: ExpiryHorizon,
    ttl_micros: Arc<AtomicI64>,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, _key, value| {
        let ttl = ttl_micros.load(Ordering::Acquire);
        if value_expired(value, ttl, horizon.get()) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }
}

/// The dedup filter: an entry (time at bytes 0..8, partition at 24..28) expires under
/// its own partition's horizon, or the global one if its partition has none.
pub fn dedup_filter(
    global: ExpiryHorizon,
    partitions: PartitionHorizons,
    ttl_micros: Arc<AtomicI64>,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, _key, value| {
        let (Some(time), Some(partition)) = (value_time(value), dedup_value_partition(value))
        else {
            return Decision::Keep;
        };
        let horizon = partitions.get(partition).unwrap_or_else(|| global.get());
        let ttl = ttl_micros.load(Ordering::Acquire);
        if is_expired(time, ttl, horizon) {
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
    fn a_value_expires_by_the_time_it_starts_with_and_a_short_one_never() {
        let value = |t: i64| [&t.to_be_bytes()[..], b"history"].concat();
        assert!(!value_expired(&value(100), 50, 150));
        assert!(value_expired(&value(100), 50, 151));
        assert!(!value_expired(b"short", 0, i64::MAX));
    }

    #[test]
    fn partition_horizons_are_per_partition_and_monotonic() {
        let h = PartitionHorizons::default();
        assert_eq!(h.get(0), None);
        h.advance(0, 10);
        h.advance(0, 5);
        h.advance(1, 3);
        assert_eq!((h.get(0), h.get(1), h.get(2)), (Some(10), Some(3), None));
    }

    #[test]
    fn a_horizon_table_answers_as_the_map_with_the_global_fallback() {
        let dense_edge = HorizonTable::DENSE - 1;
        let map: HashMap<i32, i64> = [
            (0, 10),
            (3, 30),
            (dense_edge, 40),
            (HorizonTable::DENSE, 50),
            (i32::MAX, 60),
            (-1, 70),
        ]
        .into();
        let h = PartitionHorizons::default();
        for (&p, &w) in &map {
            h.advance(p, w);
        }
        let table = h.table(-5);
        for p in [
            0,
            1,
            2,
            3,
            4,
            100,
            dense_edge,
            HorizonTable::DENSE,
            HorizonTable::DENSE + 1,
            i32::MAX,
            -1,
            -2,
            i32::MIN,
        ] {
            assert_eq!(
                table.get(p),
                map.get(&p).copied().unwrap_or(-5),
                "partition {p}"
            );
        }
        // No partition at all: everything is the global horizon.
        assert_eq!(HorizonTable::new(HashMap::new(), 7).get(0), 7);
    }

    #[test]
    fn horizon_never_moves_backwards() {
        let h = ExpiryHorizon::default();
        h.advance(10);
        h.advance(5);
        assert_eq!(h.get(), 10);
    }
}
