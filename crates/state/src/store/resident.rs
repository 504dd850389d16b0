//! The store's in-memory view of its two keyed column families — the dedup entries as
//! a [`DedupIndex`] over the pages ([`ResidentPages`]) with an earlier build's per-key
//! entries beside it ([`LegacyDedup`]), the fraud keys with their values as
//! [`ResidentValues`] — how they are filled when the store opens, fed by commits,
//! swept as watermarks advance, and consulted by the bulk lookups (see
//! `crate::dedup_index`, `crate::resident_pages` and `crate::resident_values` for the
//! invariants they keep).
//!
//! **The pages before the first batch, the rest in the background.** The dedup pages'
//! keys are read into the index before the store is returned from open (RocksDB
//! cannot answer one id of a page). At 10 M payments the fraud column family holds
//! ~6 M keys, and scanning them took 4–5 s of every restart before the first batch:
//! so a loader thread scans the fraud family, and an earlier build's per-key `dedup`
//! family, while batches run; until it has finished, a fraud lookup memory holds no
//! value for, and a dedup lookup no page answers, go to RocksDB, exactly as without
//! the sets (a held fraud value is the newest there is: a commit's since the open, an
//! unfolded fraud log page's, read before the loader starts, or the loader's for a
//! key neither changed; see `store::fraud_log`). That keeps the
//! invariants at every instant: a key the store held when the scan's iterator was
//! created is inserted by the loader; a key committed after the store opened is
//! inserted by the commit (`record_commit`). A value the loader reads is never newer
//! than one a commit put, so it only fills a key memory does not have.
//!
//! - Dedup pages' bytes: the loader first reads again the newest pages within their
//!   budget and keeps their bytes, newest first (`dedup_pages::PagesToKeep`); until
//!   then a repeat of an id on one of them reads its page from RocksDB.
//! - Dedup: the loader fills only an earlier build's per-key entries, which no page
//!   holds (a page's entry for a key is newer). A partition forgotten while the
//!   loader runs has its entries in the loader's scan skipped: that scan predates the
//!   forgetting.
//! - Fraud: a key a commit deletes while loading is left to RocksDB, and the fraud
//!   values are not swept until the loader is done (it could bring back an expired
//!   key's older value).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{IteratorMode, ReadOptions, DB};

use super::StateStore;
use crate::batch::{Op, OpLog};
use crate::cf::{CF_DEDUP, CF_FRAUD};
use crate::dedup_index::{locator, DedupIndex};
use crate::keys::{dedup_value_partition, DedupEntry};
use crate::legacy_dedup::{LegacyDedup, LegacyLookup};
use crate::resident_pages::{PageEntry, ResidentPages};
use crate::resident_values::{Lookup, ResidentValues};

use super::dedup_pages::{keep_pages, PagesToKeep, PagesWritten};
use super::index_warmup::{self, IndexWarmup};
use crate::StateError;

/// How far (a fraction of the TTL) the most advanced committed watermark moves between
/// two sweeps: a sweep walks every resident key, so it runs rarely, and the set holds
/// at most this fraction of the TTL's worth of expired keys beyond the store.
const SWEEP_EVERY_FRACTION_OF_TTL: i64 = 4;

/// How many of a commit's fraud puts and deletes are prefetched together
/// (`ResidentValues::prefetch`): their slots' and entries' cache lines (~3 a key) stay
/// well within the core's L2 until they are applied.
const PREFETCH_CHUNK: usize = 256;

/// How many scanned keys the loader inserts per lock: commits wait for the lock, so it
/// is held for short stretches (about a millisecond).
const LOAD_CHUNK: usize = 16 * 1024;

#[derive(Default)]
pub(super) struct Resident {
    /// Where each stored dedup entry is (fingerprint → page and slot).
    dedup: DedupIndex,
    /// The pages the store holds, the newest with their bytes.
    pages: ResidentPages,
    /// An earlier build's per-key dedup entries, which have no page.
    legacy: LegacyDedup,
    /// The fraud values (every key the fraud log's unfolded pages changed among them).
    pub(super) fraud: ResidentValues,
    /// Set until the loader has scanned both column families: the fraud values and
    /// the earlier build's dedup entries may then miss stored keys, so they do not
    /// answer "absent" (a held fraud value still answers; see the module docs); the
    /// pages answer from the open on.
    loading: bool,
    /// Partitions forgotten while loading, whose entries in the loader's scan are stale.
    forgotten_while_loading: Vec<i32>,
    /// A read-only store's: the dedup entries only (loaded at open); fraud lookups go
    /// to RocksDB.
    dedup_only: bool,
    /// The watermark each set was last swept at.
    dedup_swept_at: Option<i64>,
    fraud_swept_at: Option<i64>,
    /// The fraud values' memory budget (`StoreOptions::fraud_memory_bytes`).
    fraud_budget: usize,
}

impl Resident {
    /// Checks the fraud values against their budget; says so, once, when they stop
    /// holding every stored key.
    fn bound_fraud(&mut self) {
        let was_complete = self.fraud.is_complete();
        let complete = self.fraud.bound(self.fraud_budget);
        if was_complete && !complete {
            tracing::warn!(
                budget_mib = self.fraud_budget >> 20,
                keys = self.fraud.len(),
                "The fraud state outgrew its memory budget (--fraud-memory-mib): new cards and customers are kept in RocksDB only, and lookups memory cannot answer go to RocksDB (correct, slower) until a restart with a larger budget."
            );
        }
    }
}

/// The two column families held in memory.
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
}

/// The loader thread filling a store's sets; joined (or stopped) before the store closes.
pub(super) struct ResidentLoader {
    handle: Option<JoinHandle<Result<(), StateError>>>,
    stop: Arc<AtomicBool>,
}

impl ResidentLoader {
    /// Starts keeping the bytes of the pages `to_keep`, then scanning the dedup and
    /// fraud column families of `db` into `resident`, which must be marked as loading.
    pub(super) fn spawn(
        db: Arc<DB>,
        path: std::path::PathBuf,
        resident: Arc<Mutex<Resident>>,
        to_keep: PagesToKeep,
    ) -> Result<ResidentLoader, StateError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name("resident-keys".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let kept = keep_pages(&db, &path, to_keep, &stopping, |seq, bytes| {
                    lock(&resident).pages.keep_restored(seq, bytes)
                });
                // Only a speed-up: the scan below is not given up for it.
                if let Err(e) = kept {
                    tracing::warn!(
                        error = %e,
                        "Could not keep the newest dedup pages' bytes in memory; repeats of their ids read them from RocksDB (correct, slower)."
                    );
                }
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
                            dedup_keys = r.dedup.len() + r.legacy.len(),
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
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
            if let Some(kv) = item.as_ref() {
                chunk.push(kv.clone());
            }
            if chunk.len() == LOAD_CHUNK || (item.is_none() && !chunk.is_empty()) {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                let mut r = lock(resident);
                for (k, v) in chunk.drain(..) {
                    r.load(kind, &k, &v);
                }
                r.bound_fraud();
            }
            if item.is_none() {
                break;
            }
        }
    }
    let mut r = lock(resident);
    r.loading = false;
    r.forgotten_while_loading = Vec::new();
    Ok(())
}

impl Resident {
    /// One key and value the loader's scan read.
    fn load(&mut self, kind: Kind, key: &[u8], value: &[u8]) {
        match kind {
            Kind::Dedup => {
                let forgotten = dedup_value_partition(value)
                    .is_some_and(|p| self.forgotten_while_loading.contains(&p));
                if !forgotten && !page_holds(&self.dedup, &self.pages, key) {
                    self.legacy.load(key, value);
                }
            }
            Kind::Fraud => self.fraud.load(key, value),
        }
    }

    /// The store forgot `partitions` (their keys are deleted from RocksDB).
    fn forget(&mut self, partitions: &[i32]) {
        self.pages.forget(partitions);
        let pages = &self.pages;
        self.dedup.retain(|seq| pages.lives(seq));
        self.legacy.forget(partitions);
        if self.loading {
            self.forgotten_while_loading.extend_from_slice(partitions);
        }
    }
}

/// What memory says of one dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DedupAnswer {
    /// The entry the store holds for it, or that it holds none.
    Known(Option<DedupEntry>),
    /// Read the per-key `dedup` family: a key memory has no answer for (no memory, a
    /// key that is not 16 bytes, an earlier build's malformed row, or while the loader
    /// still scans that family).
    AskFamily,
    /// Read these pages' slots from RocksDB, newest first (pages whose bytes memory
    /// no longer keeps); the first whose key matches is the entry. None matching: ask
    /// the per-key family.
    ReadPages(Vec<(i32, u64, usize)>),
}

impl Resident {
    /// Memory's answer for one dedup key: its locators newest first, each compared
    /// whole where its page's bytes are kept, then an earlier build's per-key entry.
    fn dedup_answer(&self, key: &[u8]) -> DedupAnswer {
        let Ok(key16) = <&[u8; 16]>::try_from(key) else {
            return DedupAnswer::AskFamily;
        };
        let mut stored = Vec::new();
        for loc in self.dedup.candidates(key16) {
            match self.pages.entry(loc) {
                PageEntry::Held { key: k, entry } if k == key => {
                    return match DedupEntry::decode(entry) {
                        Ok(e) => DedupAnswer::Known(Some(e)),
                        // Cannot happen (a page's entries are whole): RocksDB's read
                        // of the per-key family then gives the only answer there is.
                        Err(_) => DedupAnswer::AskFamily,
                    };
                }
                // Bytes are let go oldest first: every page after this one is older.
                PageEntry::Stored {
                    partition,
                    seq,
                    slot,
                } => stored.push((partition, seq, slot)),
                PageEntry::Held { .. } | PageEntry::Gone => {}
            }
        }
        if !stored.is_empty() {
            return DedupAnswer::ReadPages(stored);
        }
        match self.legacy.get(key16) {
            LegacyLookup::Held(e) => DedupAnswer::Known(Some(e)),
            LegacyLookup::Ask => DedupAnswer::AskFamily,
            // While the loader scans the per-key family, a key memory does not hold
            // may be there.
            LegacyLookup::Absent if self.loading => DedupAnswer::AskFamily,
            LegacyLookup::Absent => DedupAnswer::Known(None),
        }
    }
}

/// Whether a page whose bytes memory keeps holds `key` (the loader then leaves an
/// earlier build's entry for the key out: the page's is newer). A page whose bytes
/// are not kept does not count: the earlier entry is loaded, and a lookup tries the
/// pages first anyway. (Counting it, a review found, lost an earlier build's live
/// entry sharing a fingerprint with an id on such a page, once that page expired.)
pub(super) fn page_holds(index: &DedupIndex, pages: &ResidentPages, key: &[u8]) -> bool {
    let Ok(key16) = <&[u8; 16]>::try_from(key) else {
        return false;
    };
    index
        .candidates(key16)
        .any(|loc| matches!(pages.entry(loc), PageEntry::Held { key: k, .. } if k == key))
}

impl StateStore {
    fn resident(&self) -> Option<MutexGuard<'_, Resident>> {
        self.resident.get().map(|r| lock(r))
    }

    /// Starts filling the sets from the column families (at open, before any commit):
    /// the sets and their loader.
    pub(super) fn start_resident(
        &self,
        warmup: Option<IndexWarmup>,
    ) -> Result<(Arc<Mutex<Resident>>, ResidentLoader), StateError> {
        let mut r = Resident {
            loading: true,
            fraud_budget: self.fraud_memory_bytes,
            pages: ResidentPages::new(self.dedup_page_memory_bytes),
            ..Resident::default()
        };
        // Before the loader starts: pages are newer than the per-key family it scans,
        // whose entries only fill keys the index does not have.
        // A restart waits for this (every lookup needs it): logged with its time, which
        // grows with the ids alive within the retention.
        let started = std::time::Instant::now();
        let (pages, to_keep) = self.load_dedup_pages(&mut r.dedup, &mut r.pages, warmup)?;
        index_warmup::write_size_estimate(&self.path, pages.entries());
        tracing::info!(
            pages = pages.len(),
            pages_to_keep = to_keep.len(),
            dedup_entries = r.dedup.len(),
            index_bytes = r.dedup.memory_bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "Dedup index loaded from its pages."
        );
        *lock(&self.dedup_pages) = pages;
        // The fraud log's unfolded changes too: RocksDB's lookups do not read them.
        let started = std::time::Instant::now();
        let changes = self.open_fraud_log(&mut r.fraud)?;
        r.bound_fraud();
        tracing::info!(
            changes,
            fraud_keys = r.fraud.len(),
            seconds = started.elapsed().as_secs_f64(),
            "Fraud log's unfolded changes loaded."
        );
        let resident = Arc::new(Mutex::new(r));
        let loader = ResidentLoader::spawn(
            self.db.clone(),
            self.path.clone(),
            resident.clone(),
            to_keep,
        )?;
        Ok((resident, loader))
    }

    /// A read-only store's memory: the dedup entries, loaded now (pages cannot be
    /// asked for one key); its fraud lookups go to RocksDB.
    pub(super) fn read_only_resident(&self) -> Result<Arc<Mutex<Resident>>, StateError> {
        let mut r = Resident {
            dedup_only: true,
            pages: ResidentPages::new(self.dedup_page_memory_bytes),
            ..Resident::default()
        };
        let Resident {
            dedup,
            pages,
            legacy,
            ..
        } = &mut r;
        self.load_dedup_index(dedup, pages, legacy)?;
        Ok(Arc::new(Mutex::new(r)))
    }

    /// Writes the dedup index's size estimate (the entries of the pages held) if
    /// [`index_warmup::SIZE_ESTIMATE_EVERY`] has passed since commits last did (on
    /// the committing thread, after the commit).
    pub(super) fn refresh_size_estimate(&self) {
        let mut last = lock(&self.size_estimate_written);
        if last.elapsed() < index_warmup::SIZE_ESTIMATE_EVERY {
            return;
        }
        *last = std::time::Instant::now();
        let entries = lock(&self.dedup_pages).entries();
        index_warmup::write_size_estimate(&self.path, entries);
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
    ///
    /// An error only for a page that is not whole entries, which `CommitPages` never
    /// builds: the commit is durable, but memory could not answer for the page's ids,
    /// so the caller must stop (a restart reads the page back, or reports it damaged).
    /// `fraud_paged`: the commit wrote its fraud puts as a page of the fraud log, so
    /// memory must hold every one of them (`store::fraud_log`).
    pub(super) fn record_commit(
        &self,
        ops: &OpLog,
        written: PagesWritten,
        fraud_paged: bool,
    ) -> Result<(), StateError> {
        let Some(mut guard) = self.resident() else {
            return Ok(());
        };
        let r = &mut *guard;
        // The pages deleted go first, so a key written again after expiring has its
        // old locator replaced, not kept beside the new one.
        for (_, seq) in &written.deleted {
            r.pages.remove(*seq);
        }
        // Every page's keys: memory answers every dedup lookup, so none may be missed.
        // The page is held before its keys go in, so it lives for them: two ids of one
        // page sharing a fingerprint keep both locators (a review found the second
        // replacing the first); its bytes are kept after.
        for page in written.added {
            r.pages.add(page.seq, page.partition, None);
            let pages = &r.pages;
            for (slot, key) in crate::dedup_page::keys(&page.bytes)? {
                r.dedup
                    .put(&key, locator(page.seq, slot), |seq| pages.lives(seq));
                r.legacy.remove(&key);
            }
            r.pages.keep(page.seq, page.bytes.into_boxed_slice());
        }
        // Every fraud put and delete, in order.
        let loading = r.loading;
        // Sized for every op, an upper bound (a filter's collect grows from nothing, by
        // doubling).
        let mut fraud: Vec<Op<'_>> = Vec::with_capacity(ops.len());
        fraud.extend(ops.iter().filter(|op| match op {
            Op::Put { cf, .. } | Op::Delete { cf, .. } => Kind::of(cf) == Some(Kind::Fraud),
        }));
        // A few hundred at a time: their slots and entries brought into the cache
        // together (the misses overlap), then applied in order while still there.
        for chunk in fraud.chunks(PREFETCH_CHUNK) {
            r.fraud.prefetch(chunk.iter().map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key, .. } => *key,
            }));
            for op in chunk {
                match *op {
                    Op::Put { key, value, .. } if fraud_paged => r.fraud.put_held(key, value),
                    Op::Put { key, value, .. } => r.fraud.put(key, value),
                    Op::Delete { key, .. } => r.fraud.delete(key, loading),
                }
            }
        }
        r.bound_fraud();
        let now = self.horizons.fraud.get();
        if now == i64::MIN {
            return Ok(());
        }
        let due = |swept: Option<i64>, ttl: i64| match swept {
            None => true,
            Some(at) => now.saturating_sub(at) >= ttl / SWEEP_EVERY_FRACTION_OF_TTL,
        };
        let retention = self.retention.load(std::sync::atomic::Ordering::Acquire);
        if due(r.dedup_swept_at, retention) {
            let global = self.horizons.global.get();
            // Read once: the sweep asks for every resident key (~0.8 % of a 10 M run's
            // samples went to taking the lock per key), and answered by index.
            let horizons = self.horizons.partitions.table(global);
            let pages = &r.pages;
            r.dedup.retain(|seq| pages.lives(seq));
            r.legacy.sweep(retention, |p| horizons.get(p));
            r.dedup_swept_at = Some(now);
        }
        if !loading && due(r.fraud_swept_at, self.fraud_ttl_micros) {
            r.fraud.sweep(self.fraud_ttl_micros, now);
            r.fraud_swept_at = Some(now);
        }
        Ok(())
    }

    /// Lets go of the dedup entries of partitions the store just forgot.
    pub(super) fn forget_resident(&self, partitions: &[i32]) {
        if let Some(mut r) = self.resident() {
            r.forget(partitions);
        }
    }

    /// What memory says of each dedup key (see [`DedupAnswer`]).
    pub(super) fn resident_dedup<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<DedupAnswer> {
        let Some(r) = self.resident() else {
            return vec![DedupAnswer::AskFamily; keys.len()];
        };
        keys.iter().map(|k| r.dedup_answer(k.as_ref())).collect()
    }

    /// The fraud values memory can answer: `answer(i, value)` gets memory's answer for
    /// `keys[i]` (borrowed, under the sets' lock: nothing is copied), and the indices
    /// of the keys left to RocksDB are returned (every key without memory). While the
    /// loader still scans, only a held value answers: it is the newest there is (a
    /// commit's since the open, an unfolded page's, or what the loader read for a key
    /// neither changed), and a key memory does not hold may yet be in the scan's part
    /// still ahead. `answer` runs under the lock the commit thread also takes: it must
    /// be short (a copy, not a decode) and must not call the store.
    pub(super) fn resident_fraud<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        mut answer: impl FnMut(usize, Option<&[u8]>),
    ) -> Vec<usize> {
        let Some(r) = self.resident().filter(|r| !r.dedup_only) else {
            return (0..keys.len()).collect();
        };
        let mut asked = Vec::new();
        for (i, lookup) in r.fraud.get_many(keys).into_iter().enumerate() {
            match lookup {
                Lookup::Held(v) => answer(i, Some(v)),
                Lookup::Absent if !r.loading => answer(i, None),
                Lookup::Absent | Lookup::Ask => asked.push(i),
            }
        }
        asked
    }

    /// Empties the sets and marks them loading, as they are at open before the loader
    /// has reached any key (the loader of this store must have finished).
    #[cfg(test)]
    pub(super) fn reset_resident_to_loading(&self) -> Result<(), StateError> {
        let mut fresh = Resident {
            loading: true,
            ..Resident::default()
        };
        // As at open: the pages are in memory before the loader starts.
        fresh.pages = ResidentPages::new(self.dedup_page_memory_bytes);
        let (pages, to_keep) = self.load_dedup_pages(&mut fresh.dedup, &mut fresh.pages, None)?;
        self.keep_pages_now(&mut fresh.pages, to_keep)?;
        *lock(&self.dedup_pages) = pages;
        // And the fraud log's unfolded changes, once no fold runs.
        self.finish_fraud_fold()?;
        self.read_unfolded_into(&mut fresh.fraud)?;
        if let Some(mut r) = self.resident() {
            fresh.fraud_budget = r.fraud_budget;
            *r = fresh;
        }
        Ok(())
    }

    /// The sequences of the dedup pages whose bytes memory keeps, oldest first.
    #[cfg(test)]
    pub(super) fn kept_dedup_pages(&self) -> Vec<u64> {
        self.resident().map(|r| r.pages.kept()).unwrap_or_default()
    }

    /// Bytes of memory the sets take: (dedup entries, fraud keys and values).
    pub fn resident_bytes(&self) -> Option<(usize, usize)> {
        self.resident().map(|r| {
            let dedup = r.dedup.memory_bytes() + r.pages.memory_bytes() + r.legacy.memory_bytes();
            (dedup, r.fraud.memory_bytes())
        })
    }

    /// The fraud values' memory: (bytes, whether they hold every stored key).
    pub fn fraud_memory(&self) -> Option<(usize, bool)> {
        self.resident()
            .map(|r| (r.fraud.memory_bytes(), r.fraud.is_complete()))
    }

    /// How many keys each set holds: (dedup, fraud).
    pub fn resident_keys(&self) -> Option<(usize, usize)> {
        self.resident()
            .map(|r| (r.dedup.len() + r.legacy.len(), r.fraud.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    fn on(partition: i32, t: i64) -> Vec<u8> {
        DedupEntry {
            event_time_micros: t,
            content_hash: 1,
            partition,
            offset: 0,
        }
        .encode()
        .to_vec()
    }

    /// The loader's scan predates a forgetting that happens while it runs (a rescale
    /// forgets partitions right after open): the forgotten partition's entries it still
    /// reads are stale, and answered from memory they would turn a new payment into a
    /// duplicate of a payment this instance no longer owns.
    #[test]
    fn a_partition_forgotten_while_loading_does_not_come_back_from_the_scan() {
        let mut r = Resident {
            loading: true,
            ..Resident::default()
        };
        let (a, b, c) = (dedup_key("a"), dedup_key("b"), dedup_key("c"));
        r.load(Kind::Dedup, &a, &on(0, 5));
        r.forget(&[1]);
        // Scanned after the forgetting, from the scan's older view.
        r.load(Kind::Dedup, &b, &on(1, 6));
        r.load(Kind::Dedup, &c, &on(2, 7));
        // A commit after the forgetting puts partition 1's keys as usual (a page).
        let d = dedup_key("d");
        let page = crate::dedup_page::encode([(&d, &DedupEntry::decode(&on(1, 8)).unwrap())]);
        r.pages = ResidentPages::new(1 << 20);
        r.pages.add(0, 1, Some(page.into_boxed_slice()));
        r.dedup.put(&d, locator(0, 0), |_| true);
        r.loading = false;
        let found = |r: &Resident, k: &[u8; 16]| match r.dedup_answer(k) {
            DedupAnswer::Known(e) => e.map(|e| e.event_time_micros),
            other => panic!("memory answers every key once loaded: {other:?}"),
        };
        assert_eq!(found(&r, &b), None);
        assert_eq!(found(&r, &a), Some(5));
        assert_eq!(found(&r, &c), Some(7));
        assert_eq!(found(&r, &d), Some(8));
        // Once loaded, a forgetting is only the deletion it is: of legacy entries and
        // of pages alike.
        r.forget(&[2]);
        assert!(r.forgotten_while_loading.iter().all(|p| *p == 1));
        assert_eq!(found(&r, &c), None);
        r.forget(&[1]);
        assert_eq!(found(&r, &d), None);
        assert!(r.dedup.is_empty());
    }
}
