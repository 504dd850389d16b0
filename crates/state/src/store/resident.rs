//! The store's [`ResidentKeys`] for its two keyed column families: how they are filled
//! when the store opens, fed by commits, swept as watermarks advance, and consulted by
//! the bulk lookups (see `crate::resident` for the invariant they keep).

use std::sync::{Mutex, MutexGuard};

use rocksdb::{IteratorMode, ReadOptions};
use xxhash_rust::xxh3::xxh3_64;

use super::StateStore;
use crate::batch::Op;
use crate::cf::{CF_DEDUP, CF_FRAUD};
use crate::keys::{be_u64, dedup_value_partition, value_time};
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

impl Resident {
    fn set(&mut self, kind: Kind) -> &mut ResidentKeys {
        match kind {
            Kind::Dedup => &mut self.dedup,
            Kind::Fraud => &mut self.fraud,
        }
    }
}

/// The two column families with resident sets, and how each one's keys and values
/// become a set entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dedup,
    Fraud,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Dedup, Kind::Fraud];

    fn of(cf: &str) -> Option<Kind> {
        match cf {
            CF_DEDUP => Some(Kind::Dedup),
            CF_FRAUD => Some(Kind::Fraud),
            _ => None,
        }
    }

    fn cf(self) -> &'static str {
        match self {
            Kind::Dedup => CF_DEDUP,
            Kind::Fraud => CF_FRAUD,
        }
    }

    /// A dedup key is itself a 128-bit hash: its first 8 bytes. A fraud key is text.
    fn fingerprint(self, key: &[u8]) -> u64 {
        match self {
            Kind::Dedup => key
                .get(..8)
                .and_then(be_u64)
                .unwrap_or_else(|| xxh3_64(key)),
            Kind::Fraud => xxh3_64(key),
        }
    }

    /// The set entry of one stored key: (fingerprint, time, partition). The time and
    /// partition are read as the compaction filters read them (`keys::value_time`,
    /// `keys::dedup_value_partition`); a value without a time never expires, and fraud
    /// state belongs to no partition (0).
    fn entry(self, key: &[u8], value: &[u8]) -> (u64, i64, i32) {
        let time = value_time(value).unwrap_or(i64::MAX);
        let partition = match self {
            Kind::Dedup => dedup_value_partition(value).unwrap_or(0),
            Kind::Fraud => 0,
        };
        (self.fingerprint(key), time, partition)
    }
}

/// The set entries a committed batch adds, taken before the batch is consumed.
pub(super) struct Additions(Vec<(Kind, (u64, i64, i32))>);

impl Additions {
    pub(super) fn of(ops: &[Op]) -> Additions {
        let puts = ops.iter().filter_map(|op| match op {
            Op::Put { cf, key, value } => Some((Kind::of(cf)?, key, value)),
            Op::Delete { .. } => None,
        });
        Additions(puts.map(|(kind, k, v)| (kind, kind.entry(k, v))).collect())
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
        for kind in Kind::ALL {
            let mut ro = ReadOptions::default();
            // A one-off scan: do not evict the lookups' working set for it.
            ro.fill_cache(false);
            ro.set_readahead_size(4 << 20);
            let set = r.set(kind);
            for item in self
                .db
                .iterator_cf_opt(self.cf(kind.cf())?, ro, IteratorMode::Start)
            {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                let (fingerprint, time, partition) = kind.entry(&k, &v);
                set.insert(fingerprint, time, partition);
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
        for (kind, (fingerprint, time, partition)) in added.0 {
            r.set(kind).insert(fingerprint, time, partition);
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
        let (Some(mut r), Some(kind)) = (self.resident(), Kind::of(cf)) else {
            return vec![true; keys.len()];
        };
        let set = r.set(kind);
        keys.iter()
            .map(|k| set.may_hold(kind.fingerprint(k.as_ref())))
            .collect()
    }

    /// How many keys each set holds: (dedup, fraud).
    pub fn resident_keys(&self) -> Option<(usize, usize)> {
        self.resident().map(|r| (r.dedup.len(), r.fraud.len()))
    }
}
