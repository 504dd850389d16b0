//! The store's [`ResidentKeys`] for its two keyed column families: how they are filled
//! when the store opens, fed by commits, swept as watermarks advance, and consulted by
//! the bulk lookups (see `crate::resident` for the invariant they keep).
//!
//! **Filled in the background.** At 10 M payments the fraud column family holds ~6 M
//! keys, and scanning them took 4–5 s of every restart before the first batch. So the
//! store opens at once and a loader thread scans both column families while batches
//! run; until it has finished, a set answers "may hold" for every key, and every
//! lookup goes to RocksDB, exactly as without the sets. That keeps the invariant at
//! every instant: a key the store held when the scan's iterator was created is
//! inserted by the loader; a key committed after the store opened is inserted by the
//! commit (`record_commit`); inserting keeps the later time, so the two may come in
//! either order. A key the loader inserts after a commit or sweep removed it is only a
//! false positive, which costs one RocksDB read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{IteratorMode, ReadOptions, DB};
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

/// How many scanned keys the loader inserts per lock: commits wait for the lock, so it
/// is held for short stretches (about a millisecond).
const LOAD_CHUNK: usize = 16 * 1024;

#[derive(Default)]
pub(super) struct Resident {
    dedup: ResidentKeys,
    fraud: ResidentKeys,
    /// Set until the loader has scanned both column families: the sets may then miss
    /// stored keys, so they answer nothing (see the module docs).
    loading: bool,
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

/// The loader thread filling a store's sets; joined (or stopped) before the store closes.
pub(super) struct ResidentLoader {
    handle: Option<JoinHandle<Result<(), StateError>>>,
    stop: Arc<AtomicBool>,
}

impl ResidentLoader {
    /// Starts scanning the dedup and fraud column families of `db` into `resident`,
    /// which must be marked as loading.
    pub(super) fn spawn(
        db: Arc<DB>,
        path: std::path::PathBuf,
        resident: Arc<Mutex<Resident>>,
    ) -> Result<ResidentLoader, StateError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name("resident-keys".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let loaded = load(&db, &path, &resident, &stopping);
                // Lookups are right either way; what an operator needs to know is
                // whether they are fast again (and why not, if the scan failed).
                match &loaded {
                    Err(e) => tracing::error!(
                        error = %e,
                        "Could not load the resident key sets; every lookup goes to RocksDB (correct, slower) until a restart."
                    ),
                    Ok(()) if !stopping.load(Ordering::Acquire) => {
                        let r = lock(&resident);
                        tracing::info!(
                            dedup_keys = r.dedup.len(),
                            fraud_keys = r.fraud.len(),
                            seconds = started.elapsed().as_secs_f64(),
                            "Resident key sets loaded."
                        );
                    }
                    Ok(()) => {}
                }
                loaded
            })
            .map_err(|e| StateError::Rocks(format!("starting the resident keys' loader: {e}")))?;
        Ok(ResidentLoader {
            handle: Some(handle),
            stop,
        })
    }

    /// Waits for the loader; its error, if the scan failed (the sets then stay in
    /// "loading" and every lookup goes to RocksDB: slower, never wrong).
    pub(super) fn join(&mut self) -> Result<(), StateError> {
        match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(StateError::Rocks(
                    "the resident keys' loader panicked".into(),
                ))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for ResidentLoader {
    /// Stops an unfinished scan: its thread holds the database open.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.join();
    }
}

/// A panic while holding the lock cannot leave a set missing a committed key (keys are
/// only ever added after their commit), and a loader's handle is only taken, so a
/// poisoned lock is usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The loader's scan: both column families, `LOAD_CHUNK` keys per lock, then the sets
/// are complete. Returns early (sets still loading) when asked to stop.
fn load(
    db: &DB,
    path: &std::path::Path,
    resident: &Mutex<Resident>,
    stop: &AtomicBool,
) -> Result<(), StateError> {
    let rocks = |e| StateError::from_rocks(e, path);
    for kind in Kind::ALL {
        let cf = super::column_family(db, path, kind.cf())?;
        let mut ro = ReadOptions::default();
        // A one-off scan: do not evict the lookups' working set for it.
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        let mut chunk = Vec::with_capacity(LOAD_CHUNK);
        let mut items = db.iterator_cf_opt(cf, ro, IteratorMode::Start);
        loop {
            let item = items.next().transpose().map_err(rocks)?;
            if let Some((k, v)) = &item {
                chunk.push(kind.entry(k, v));
            }
            if chunk.len() == LOAD_CHUNK || (item.is_none() && !chunk.is_empty()) {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                let mut r = lock(resident);
                let set = r.set(kind);
                for (fingerprint, time, partition) in chunk.drain(..) {
                    set.insert(fingerprint, time, partition);
                }
            }
            if item.is_none() {
                break;
            }
        }
    }
    lock(resident).loading = false;
    Ok(())
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
        self.resident.as_deref().map(lock)
    }

    /// Starts filling the sets from the column families (at open, before any commit):
    /// the sets and their loader.
    pub(super) fn start_resident(
        &self,
    ) -> Result<(Arc<Mutex<Resident>>, ResidentLoader), StateError> {
        let resident = Arc::new(Mutex::new(Resident {
            loading: true,
            ..Resident::default()
        }));
        let loader = ResidentLoader::spawn(self.db.clone(), self.path.clone(), resident.clone())?;
        Ok((resident, loader))
    }

    /// Waits until the resident sets are filled (they are filled in the background
    /// after open; lookups are right either way, only slower until then). The scan's
    /// error, if it failed.
    pub fn wait_resident(&self) -> Result<(), StateError> {
        match &self.resident_loader {
            Some(l) => lock(l).join(),
            None => Ok(()),
        }
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
    /// without the sets (a read-only inspection) or while they are still loading.
    pub(super) fn may_hold<K: AsRef<[u8]>>(&self, cf: &str, keys: &[K]) -> Vec<bool> {
        let resident = self.resident().filter(|r| !r.loading);
        let (Some(mut r), Some(kind)) = (resident, Kind::of(cf)) else {
            return vec![true; keys.len()];
        };
        let set = r.set(kind);
        keys.iter()
            .map(|k| set.may_hold(kind.fingerprint(k.as_ref())))
            .collect()
    }

    /// Empties the sets and marks them loading, as they are at open before the loader
    /// has reached any key (the loader of this store must have finished).
    #[cfg(test)]
    pub(super) fn reset_resident_to_loading(&self) {
        if let Some(mut r) = self.resident() {
            *r = Resident {
                loading: true,
                ..Resident::default()
            };
        }
    }

    /// How many keys each set holds: (dedup, fraud).
    pub fn resident_keys(&self) -> Option<(usize, usize)> {
        self.resident().map(|r| (r.dedup.len(), r.fraud.len()))
    }
}
