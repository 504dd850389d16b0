//! The dedup index as a fact that can be compared: per partition, the entries alive
//! under the partition's committed watermark, counted and folded into a digest.
//!
//! An independent model that replays the input (the fault campaign's verifier) computes
//! the same numbers from the log alone; equal digests mean the recovered index holds
//! exactly the ids, first-seen times, content hashes and first offsets the dedup rule
//! says it must — after any number of crashes, restores and replays. Expired entries
//! that compaction has not yet removed are left out, as the processor's lookups leave
//! them out, so the result does not depend on when compaction ran.

use std::collections::BTreeMap;

use rocksdb::IteratorMode;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use super::StateStore;
use crate::cf::{CF_DEDUP, CF_DEDUP_PAGES, CF_META};
use crate::expiry::is_expired;
use crate::keys::{self, meta, DedupEntry};
use crate::StateError;

/// One partition's live dedup entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LiveDedup {
    /// The committed watermark the entries were judged against (µs), if any.
    pub watermark: Option<i64>,
    pub live: u64,
    /// Wrapping sum over live entries of `xxh3_64(key ‖ value)` ([`entry_digest`]):
    /// independent of order.
    pub digest: u64,
}

/// One entry's contribution to [`LiveDedup::digest`]: the 16-byte key
/// ([`keys::dedup_key`]) followed by the 36-byte value ([`DedupEntry::encode`]).
pub fn entry_digest(key: &[u8], value: &[u8]) -> u64 {
    let mut b = Vec::with_capacity(key.len() + value.len());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    xxh3_64(&b)
}

impl StateStore {
    /// The live dedup entries per partition (a full scan of the index).
    pub fn live_dedup(&self) -> Result<BTreeMap<i32, LiveDedup>, StateError> {
        let retention = self
            .db
            .get_cf(self.cf(CF_META)?, meta::RETENTION)
            .map_err(|e| self.rocks(e))?
            .and_then(|v| keys::be_i64(&v))
            .unwrap_or(i64::MAX);
        let horizons = self.scan_meta_i64(meta::HORIZON_PREFIX)?;
        let mut out: BTreeMap<i32, LiveDedup> = BTreeMap::new();
        for (p, h) in &horizons {
            out.entry(*p).or_default().watermark = Some(*h);
        }
        for item in self.db.iterator_cf(self.cf(CF_DEDUP)?, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let e = DedupEntry::decode(&v)?;
            let horizon = horizons.get(&e.partition).copied().unwrap_or(i64::MIN);
            if is_expired(e.event_time_micros, retention, horizon) {
                continue;
            }
            let p = out.entry(e.partition).or_default();
            p.live += 1;
            p.digest = p.digest.wrapping_add(entry_digest(&k, &v));
        }
        // And the pages. A key is alive in one place at most: it is written again only
        // once its entry has expired.
        let pages = self.db.cf_handle(CF_DEDUP_PAGES);
        for item in pages
            .into_iter()
            .flat_map(|cf| self.db.iterator_cf(cf, IteratorMode::Start))
        {
            let (_, page) = item.map_err(|e| self.rocks(e))?;
            for (k, e) in crate::dedup_page::entries(&page)? {
                let horizon = horizons.get(&e.partition).copied().unwrap_or(i64::MIN);
                if is_expired(e.event_time_micros, retention, horizon) {
                    continue;
                }
                let p = out.entry(e.partition).or_default();
                p.live += 1;
                p.digest = p.digest.wrapping_add(entry_digest(&k, &e.encode()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StateBatch, StoreOptions};

    #[test]
    fn only_entries_alive_under_their_partitions_watermark_count() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            dedup_retention_micros: Some(100),
            ..StoreOptions::default()
        };
        let s = StateStore::open(dir.path(), &opts).unwrap();
        let entry = |t: i64, partition: i32| DedupEntry {
            event_time_micros: t,
            content_hash: 9,
            partition,
            offset: t,
        };
        let mut b = StateBatch::new();
        b.put_dedup(keys::dedup_key("old"), &entry(10, 0));
        b.put_dedup(keys::dedup_key("edge"), &entry(400, 0));
        b.put_dedup(keys::dedup_key("new"), &entry(450, 0));
        b.put_dedup(keys::dedup_key("other"), &entry(10, 1));
        b.set_partition_horizon(0, 500);
        s.commit(b).unwrap();
        let live = s.live_dedup().unwrap();
        // 10 + 100 < 500 is expired; 400 + 100 == 500 is still alive.
        assert_eq!(live[&0].live, 2);
        assert_eq!(live[&0].watermark, Some(500));
        let want = [("edge", 400), ("new", 450)]
            .iter()
            .map(|(id, t)| entry_digest(&keys::dedup_key(id), &entry(*t, 0).encode()))
            .fold(0u64, u64::wrapping_add);
        assert_eq!(live[&0].digest, want);
        // A partition without a watermark keeps everything.
        assert_eq!((live[&1].live, live[&1].watermark), (1, None));
    }
}
