//! The store's [`ResidentKeys`] for its two keyed column families: how they are filled
//! when the store opens, fed by commits, swept as watermarks advance, and consulted by
//! the bulk lookups (see `crate::resident` for the invariant they keep).

use std::sync::{Mutex, MutexGuard};

use rocksdb::{IteratorMode, ReadOptions};
use xxhash_rust::xxh3::xxh3_64;

use super::StateStore;
use crate::batch::Op;
use crate::cf::{CF_DEDUP, CF_FRAUD};
use crate::resident::ResidentKeys;
use crate::StateError;

/// How far (a fraction of the TTL) the most advanced committed watermark moves between
/// two sweeps: a sweep walks every resident key, so it runs rarely, and the set holds
/// at most this fraction of the TTL's worth of expired keys beyond the store.
const SWEEP_EVERY_FRACTION_OF_TTL: i64 = 4;

#[derive(Default)]
pub(super) struct Resident {
    dedup: ResidentKeys,
    fraud: ResidentKeys,
    /// The watermark each set was last swept at.
    dedup_swept_at: Option<i64>,
    fraud_swept_at: Option<i64>,
}

/// A dedup key's fingerprint: its first 8 bytes (the key is itself a 128-bit hash).
fn dedup_fingerprint(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or_else(|| xxh3_64(key))
}

fn fraud_fingerprint(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The time every dedup and fraud value starts with, and the partition a dedup entry
/// carries at bytes 24..28 (fraud state belongs to no partition: 0).
fn time_and_partition(value: &[u8], with_partition: bool) -> (i64, i32) {
    // A value too short to carry a time never expires from the set (as from the store).
    let time = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(i64::MAX);
    let partition = with_partition
        .then(|| value.get(24..28).and_then(|b| b.try_into().ok()))
        .flatten()
        .map(i32::from_be_bytes)
        .unwrap_or(0);
    (time, partition)
}

/// The fingerprints a committed batch adds, taken before the batch is consumed.
pub(super) struct Additions(Vec<(bool, u64, i64, i32)>);

impl Additions {
    pub(super) fn of(ops: &[Op]) -> Additions {
        let mut out = Vec::new();
        for op in ops {
            if let Op::Put { cf, key, value } = op {
                let dedup = *cf == CF_DEDUP;
                if dedup || *cf == CF_FRAUD {
                    let fp = if dedup {
                        dedup_fingerprint(key)
                    } else {
                        fraud_fingerprint(key)
                    };
                    let (time, partition) = time_and_partition(value, dedup);
                    out.push((dedup, fp, time, partition));
                }
            }
        }
        Additions(out)
    }
}

impl StateStore {
    fn resident(&self) -> Option<MutexGuard<'_, Resident>> {
        // A panic while holding the lock cannot leave the set missing a committed key
        // (keys are only ever added after their commit), so a poisoned lock is usable.
        self.resident
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fills the sets from the column families (at open, before any commit).
    pub(super) fn load_resident(&self) -> Result<Mutex<Resident>, StateError> {
        let mut r = Resident::default();
        for (name, set, with_partition) in [
            (CF_DEDUP, &mut r.dedup, true),
            (CF_FRAUD, &mut r.fraud, false),
        ] {
            let mut ro = ReadOptions::default();
            // A one-off scan: do not evict the lookups' working set for it.
            ro.fill_cache(false);
            ro.set_readahead_size(4 << 20);
            for item in self
                .db
                .iterator_cf_opt(self.cf(name)?, ro, IteratorMode::Start)
            {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                let fp = if with_partition {
                    dedup_fingerprint(&k)
                } else {
                    fraud_fingerprint(&k)
                };
                let (time, partition) = time_and_partition(&v, with_partition);
                set.insert(fp, time, partition);
            }
        }
        Ok(Mutex::new(r))
    }

    /// Adds a durable commit's keys, then sweeps a set whose TTL's fraction has passed
    /// since its last sweep (by the most advanced committed watermark).
    pub(super) fn record_commit(&self, added: Additions) {
        let Some(mut r) = self.resident() else {
            return;
        };
        for (dedup, fp, time, partition) in added.0 {
            let set = if dedup { &mut r.dedup } else { &mut r.fraud };
            set.insert(fp, time, partition);
        }
        let now = self.horizons.fraud.get();
        if now == i64::MIN {
            return;
        }
        let due = |swept: Option<i64>, ttl: i64| match swept {
            None => true,
            Some(at) => now.saturating_sub(at) >= ttl / SWEEP_EVERY_FRACTION_OF_TTL,
        };
        let retention = self.retention.load(std::sync::atomic::Ordering::Acquire);
        if due(r.dedup_swept_at, retention) {
            let global = self.horizons.global.get();
            let partitions = &self.horizons.partitions;
            r.dedup
                .sweep(retention, |p| partitions.get(p).unwrap_or(global));
            r.dedup_swept_at = Some(now);
        }
        if due(r.fraud_swept_at, self.fraud_ttl_micros) {
            r.fraud.sweep(self.fraud_ttl_micros, |_| now);
            r.fraud_swept_at = Some(now);
        }
    }

    /// Lets go of the dedup keys of partitions the store just forgot.
    pub(super) fn forget_resident(&self, partitions: &[i32]) {
        if let Some(mut r) = self.resident() {
            r.dedup.forget(partitions);
        }
    }

    /// Which of `keys` the column family `cf` (dedup or fraud) may hold: all of them
    /// without the sets (a read-only inspection).
    pub(super) fn may_hold<K: AsRef<[u8]>>(&self, cf: &str, keys: &[K]) -> Vec<bool> {
        let Some(r) = self.resident() else {
            return vec![true; keys.len()];
        };
        let (set, fingerprint): (&ResidentKeys, fn(&[u8]) -> u64) = if cf == CF_DEDUP {
            (&r.dedup, dedup_fingerprint)
        } else {
            (&r.fraud, fraud_fingerprint)
        };
        keys.iter()
            .map(|k| set.may_hold(fingerprint(k.as_ref())))
            .collect()
    }

    /// How many keys each set holds: (dedup, fraud).
    pub fn resident_keys(&self) -> Option<(usize, usize)> {
        self.resident().map(|r| (r.dedup.len(), r.fraud.len()))
    }
}
