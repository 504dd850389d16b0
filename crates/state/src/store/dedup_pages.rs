//! The dedup entries as pages (`crate::dedup_page`): how a commit writes its new
//! entries, which pages it deletes, and how the index is filled from them at open.
//!
//! **Invariant: every dedup entry a commit made durable is in a page, or in the older
//! per-key `dedup` family, until it has expired under its partition's published
//! horizon.** A page goes whole, and only once its newest entry has expired, so no
//! live entry leaves with it. The index (`DedupIndex`) holds what the pages hold:
//! filled from them at open before the store is returned, then by every commit.

use std::collections::{BTreeMap, VecDeque};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use super::index_warmup::IndexWarmup;

use super::StateStore;
use crate::cf::{CF_DEDUP, CF_DEDUP_PAGES};
use crate::dedup_index::{
    in_upper_shards, locator, DedupIndex, LOWER_SHARDS, MAX_PAGE_SEQ, UPPER_SHARDS,
};
use crate::dedup_page::{self, page_key, parse_page_key, CommitPages};
use crate::expiry::is_expired;
use crate::legacy_dedup::LegacyDedup;
use crate::resident_pages::ResidentPages;
use crate::StateError;

/// The pages a store holds, by partition in write order, with their newest times.
#[derive(Debug, Default)]
pub(super) struct DedupPages {
    next_seq: u64,
    /// Each partition's pages, oldest first: (sequence, newest entry's time, entries).
    held: BTreeMap<i32, VecDeque<(u64, i64, usize)>>,
}

/// What a commit's pages change: the pages added, with their bytes (kept in memory for
/// repeats, `ResidentPages`, once the commit is durable), and those deleted.
#[derive(Debug, Default)]
pub(super) struct PagesWritten {
    pub(super) added: Vec<AddedPage>,
    pub(super) deleted: Vec<(i32, u64)>,
}

#[derive(Debug)]
pub(super) struct AddedPage {
    pub(super) partition: i32,
    pub(super) seq: u64,
    pub(super) newest: i64,
    pub(super) bytes: Vec<u8>,
}

/// A page as read back at open: its sequence, partition, newest time and bytes (in
/// RocksDB's buffer: the load keeps none of them, see [`PagesToKeep`]).
struct ReadPage<'db> {
    seq: u64,
    partition: i32,
    newest: i64,
    bytes: rocksdb::DBPinnableSlice<'db>,
}

/// The pages whose bytes memory is to keep after a load, newest first: their bytes are
/// read again and kept after the store is open ([`keep_pages`]), not while the restart
/// waits.
///
/// Why: those bytes are the newest pages up to the budget (128 MB by default), fresh
/// memory whose first touches the kernel zeroes, slowly on some machines (0.4 GB/s
/// measured here): a tenth of a second or more of a restart with 9 M ids alive, for
/// bytes that only spare a repeat a RocksDB read. Until a page is kept, a repeat of an
/// id on it reads its page from RocksDB, as one on an older page always does.
#[derive(Debug, Default)]
pub(super) struct PagesToKeep(Vec<(u64, i32)>);

impl PagesToKeep {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Reads the pages of `to_keep` (newest first) and hands each one's bytes to `keep`
/// (`ResidentPages::keep_restored`), which keeps them in memory and answers whether to
/// go on (no, once memory refuses them: every page after is older, and would be
/// refused too). A page gone from RocksDB meanwhile (expired and deleted, or its
/// partition forgotten) is passed over.
/// Returns early when `stop` is set.
///
/// Newest first, one page at a time, so that the pages memory keeps stay the newest at
/// every step, which lookups rely on (`ResidentPages::keep`), while commits add newer
/// ones.
pub(super) fn keep_pages(
    db: &rocksdb::DB,
    path: &std::path::Path,
    to_keep: PagesToKeep,
    stop: &std::sync::atomic::AtomicBool,
    mut keep: impl FnMut(u64, Box<[u8]>) -> bool,
) -> Result<(), StateError> {
    for (seq, partition) in to_keep.0 {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let Some(page) = read_stored_page(db, path, partition, seq)? else {
            continue;
        };
        // Read and checked whole when loaded; read again here, checked again.
        dedup_page::entry_count(&page)?;
        if !keep(seq, Box::from(&*page)) {
            break;
        }
    }
    Ok(())
}

/// A page's bytes, read (checksums verified) and checked to be whole entries.
fn read_page<'db>(
    db: &'db rocksdb::DB,
    path: &std::path::Path,
    partition: i32,
    seq: u64,
) -> Result<ReadPage<'db>, StateError> {
    let page = read_stored_page(db, path, partition, seq)?.ok_or_else(|| StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("dedup page {partition}/{seq} vanished while loading"),
    })?;
    let newest = dedup_page::newest_time(&page).ok_or(StateError::BadValue {
        what: "dedup page",
        len: page.len(),
    })?;
    dedup_page::entry_count(&page)?;
    Ok(ReadPage {
        seq,
        partition,
        newest,
        bytes: page,
    })
}

/// A page sequence a locator can name (`dedup_index::MAX_PAGE_SEQ`), or the error
/// that the store has numbered more pages than it can locate.
fn numbered_seq(seq: u64, path: &std::path::Path) -> Result<u64, StateError> {
    if seq > MAX_PAGE_SEQ {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "dedup page sequence {seq} is beyond the {MAX_PAGE_SEQ} the dedup index can locate"
            ),
        });
    }
    Ok(seq)
}

/// A page read back whose sequence a locator can name, and whose entries slots can.
fn numbered<'db>(page: ReadPage<'db>, path: &std::path::Path) -> Result<ReadPage<'db>, StateError> {
    numbered_seq(page.seq, path)?;
    if dedup_page::entry_count(&page.bytes)? > crate::dedup_index::MAX_PAGE_ENTRIES {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("dedup page {} holds more entries than a page may", page.seq),
        });
    }
    Ok(page)
}

/// Page `seq` of `partition`, read from RocksDB for a repeat of an id whose page's
/// bytes memory no longer keeps: `None` if the page is gone (expired and deleted since
/// memory answered).
pub(super) fn read_stored_page<'db>(
    db: &'db rocksdb::DB,
    path: &std::path::Path,
    partition: i32,
    seq: u64,
) -> Result<Option<rocksdb::DBPinnableSlice<'db>>, StateError> {
    let cf = super::column_family(db, path, CF_DEDUP_PAGES)?;
    db.get_pinned_cf(cf, page_key(partition, seq))
        .map_err(|e| StateError::from_rocks(e, path))
}

impl DedupPages {
    /// How many pages the store holds.
    pub(super) fn len(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// How many entries the pages held hold: what the next open's load reserves the
    /// dedup index for (`index_warmup`).
    pub(super) fn entries(&self) -> usize {
        self.held
            .values()
            .flat_map(|pages| pages.iter().map(|(_, _, n)| n))
            .sum()
    }
}

impl StateStore {
    /// Fills the dedup memory as a read-only store answers from it: the pages (and
    /// the bytes of the newest, at once), then the older per-key family's entries
    /// (which only fill keys no page holds).
    pub(super) fn load_dedup_index(
        &self,
        index: &mut DedupIndex,
        resident: &mut ResidentPages,
        legacy: &mut LegacyDedup,
    ) -> Result<(), StateError> {
        let (_, to_keep) = self.load_dedup_pages(index, resident, None)?;
        self.keep_pages_now(resident, to_keep)?;
        for item in self.db.iterator_cf(self.cf(CF_DEDUP)?, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !super::resident::page_holds(index, resident, &k) {
                legacy.load(&k, &v);
            }
        }
        Ok(())
    }

    /// Keeps the bytes of `to_keep` in `resident` now, on this thread.
    pub(super) fn keep_pages_now(
        &self,
        resident: &mut ResidentPages,
        to_keep: PagesToKeep,
    ) -> Result<(), StateError> {
        let never = std::sync::atomic::AtomicBool::new(false);
        keep_pages(&self.db, &self.path, to_keep, &never, |seq, bytes| {
            resident.keep_restored(seq, bytes)
        })
    }

    /// Reads every page into `index` (each key's locator: later pages were written
    /// later) and `resident` (every page, without its bytes), and returns their
    /// bookkeeping and the newest pages whose bytes fit the budget, for memory to keep
    /// once the store is open.
    ///
    /// A restart waits for this, so it is kept short. Two passes, so that memory holds
    /// a few pages at a time beside the index: the first lists the pages (key order is
    /// by partition) without verifying their checksums, the second reads them again,
    /// verified, in write order, the store's sequence across partitions. In the second,
    /// a helper thread reads the pages, and inserts the keys of half the shards while
    /// this one inserts the other half (see below), while RocksDB's compactions wait
    /// (`StateStore::resume_compactions`).
    pub(super) fn load_dedup_pages(
        &self,
        index: &mut DedupIndex,
        resident: &mut ResidentPages,
        warmup: Option<IndexWarmup>,
    ) -> Result<(DedupPages, PagesToKeep), StateError> {
        let mut pages = DedupPages::default();
        let mut to_keep = PagesToKeep::default();
        // A directory an older build wrote, opened read-only, has no pages.
        let Some(cf) = self.db.cf_handle(CF_DEDUP_PAGES) else {
            return Ok((pages, to_keep));
        };
        // The listing is only an order and sizes: nothing read in it is kept, since
        // it is not verified. What the pages say (their newest times, their entries)
        // comes from the second, verified read.
        let (mut order, mut total) = (Vec::new(), 0);
        let mut listing = ReadOptions::default();
        // A checksum per page twice was a tenth of a restart's time.
        listing.set_verify_checksums(false);
        listing.fill_cache(false);
        for item in self.db.iterator_cf_opt(cf, listing, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let (partition, seq) = parse_page_key(&k).ok_or(StateError::BadValue {
                what: "dedup page key",
                len: k.len(),
            })?;
            order.push((seq, partition, v.len()));
            total += v.len() / dedup_page::ENTRY_LEN;
        }
        // A pristine index (every open's) is filled on two threads, each inserting the
        // keys of half the shards into an index of its own: the inserts (cache misses
        // and first touches of a table of hundreds of MB) were most of a restart's
        // time with 9 M ids, on one thread while the other only read the pages. (Any
        // other index is filled here alone, as `absorb` could not join it.)
        let split = index.is_pristine();
        // Halves reserved (and their memory touched) while RocksDB opened, if they
        // are the size this load reserves (`index_warmup`).
        let mut warm_upper = None;
        match warmup.and_then(|w| w.finish(total)) {
            Some((lower, upper)) if split => {
                *index = lower;
                warm_upper = Some(upper);
            }
            _ if split => index.reserve_shards(total, LOWER_SHARDS),
            _ => index.reserve(total),
        }
        // In write order: a key written again after expiring has its later page's
        // locator tried first. Sequences are the store's, one per page: two alike is
        // a damaged listing.
        order.sort_unstable();
        if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: format!("two dedup pages listed with sequence {}", w[0].0),
            });
        }
        // The newest pages whose bytes fit the budget are to be kept (read newest
        // first by a repeat), once the store is open (`PagesToKeep`); the first
        // sequence to keep.
        let mut room = resident.budget();
        let keep_from = order
            .iter()
            .rev()
            .take_while(|(_, _, len)| {
                let fits = *len <= room;
                room = room.saturating_sub(*len);
                fits
            })
            .last()
            .map_or(u64::MAX, |(seq, _, _)| *seq);
        let db = &self.db;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(4);
            // The helper reads the pages, and (`split`) inserts the upper shards' keys
            // into `upper`, in the same write order as this thread.
            let helper = std::thread::Builder::new()
                .name("dedup-pages".into())
                .spawn_scoped(scope, move || {
                    let mut upper = warm_upper.unwrap_or_default();
                    if split {
                        // Warmed halves hold the room already (this reserves nothing).
                        upper.reserve_shards(total, UPPER_SHARDS);
                    }
                    for (seq, partition, _) in order {
                        let read = read_page(db, &self.path, partition, seq)
                            .and_then(|p| numbered(p, &self.path));
                        if let (true, Ok(page)) = (split, &read) {
                            for (slot, key) in
                                dedup_page::keys(&page.bytes)?.filter(|(_, k)| in_upper_shards(k))
                            {
                                // No page goes while loading: every locator lives.
                                upper.put(&key, locator(seq, slot), |_| true);
                            }
                        }
                        let stop = read.is_err();
                        // The receiver is gone once it failed: nothing more to read.
                        if tx.send(read).is_err() || stop {
                            break;
                        }
                    }
                    Ok::<DedupIndex, StateError>(upper)
                })
                .map_err(|e| StateError::Rocks(format!("starting the dedup pages' reader: {e}")))?;
            for read in rx {
                let page = read?;
                for (slot, key) in dedup_page::keys(&page.bytes)? {
                    if !(split && in_upper_shards(&key)) {
                        index.put(&key, locator(page.seq, slot), |_| true);
                    }
                }
                // In sequence order, so each partition's pages are in write order.
                pages.next_seq = pages.next_seq.max(page.seq + 1);
                pages.held.entry(page.partition).or_default().push_back((
                    page.seq,
                    page.newest,
                    dedup_page::entry_count(&page.bytes)?,
                ));
                resident.add(page.seq, page.partition, None);
                if page.seq >= keep_from {
                    to_keep.0.push((page.seq, page.partition));
                }
            }
            let upper = helper
                .join()
                .map_err(|_| StateError::Rocks("the dedup pages' reader panicked".into()))??;
            // Cannot fail: `index` was pristine and is filled in the lower shards only.
            if split && !index.absorb(upper, UPPER_SHARDS) {
                return Err(StateError::Rocks(
                    "the dedup index's two halves overlap after loading".into(),
                ));
            }
            Ok::<(), StateError>(())
        })?;
        // Newest first (see `keep_pages`).
        to_keep.0.reverse();
        Ok((pages, to_keep))
    }

    /// Puts a commit's dedup pages into `wb`, and deletes the pages whose newest entry
    /// has expired under the published horizons.
    pub(super) fn write_dedup_pages(
        &self,
        new_pages: CommitPages,
        wb: &mut WriteBatch,
    ) -> Result<PagesWritten, StateError> {
        let cf = self.cf(CF_DEDUP_PAGES)?;
        let mut pages = super::resident::lock(&self.dedup_pages);
        let mut written = PagesWritten::default();
        let mut seq = pages.next_seq;
        for (partition, bytes, newest) in new_pages.finish() {
            numbered_seq(seq, &self.path)?;
            wb.put_cf(cf, page_key(partition, seq), &bytes);
            written.added.push(AddedPage {
                partition,
                seq,
                newest,
                bytes,
            });
            seq += 1;
        }
        let retention = self.retention.load(std::sync::atomic::Ordering::Acquire);
        // The written commits' horizons: a partition's first one may be in a commit
        // written and not yet durable, and judged by the global one its pages would go
        // (`store::durable`).
        let global = self.written_horizons.global.get();
        let horizons = self.written_horizons.partitions.snapshot();
        for (&partition, held) in &pages.held {
            let horizon = horizons.get(&partition).copied().unwrap_or(global);
            for &(seq, newest, _) in held {
                if !is_expired(newest, retention, horizon) {
                    break;
                }
                wb.delete_cf(cf, page_key(partition, seq));
                written.deleted.push((partition, seq));
            }
        }
        pages.next_seq = seq;
        Ok(written)
    }

    /// The commit carrying `written` is written (not yet durable: the next commit's
    /// write builds on its pages, `store::durable`; if it never becomes durable the
    /// process stops, and this memory with it).
    pub(super) fn dedup_pages_written(&self, written: &PagesWritten) {
        let mut pages = super::resident::lock(&self.dedup_pages);
        for &(partition, seq) in &written.deleted {
            if let Some(held) = pages.held.get_mut(&partition) {
                if held.front().is_some_and(|(s, _, _)| *s == seq) {
                    held.pop_front();
                }
            }
        }
        for page in &written.added {
            pages.held.entry(page.partition).or_default().push_back((
                page.seq,
                page.newest,
                // Only the size estimate reads it; `record_commit` refuses a page
                // that is not whole entries.
                dedup_page::entry_count(&page.bytes).unwrap_or(0),
            ));
        }
    }

    /// How many entries the pages hold (a scan of them, for `stats`).
    pub(super) fn count_paged_dedup_entries(&self) -> Result<u64, StateError> {
        let mut n = 0;
        let Some(cf) = self.db.cf_handle(CF_DEDUP_PAGES) else {
            return Ok(n);
        };
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item.map_err(|e| self.rocks(e))?;
            n += dedup_page::entry_count(&v)? as u64;
        }
        Ok(n)
    }

    /// Deletes the pages of `partitions` into `wb` (forgetting them).
    pub(super) fn forget_dedup_pages(
        &self,
        partitions: &[i32],
        wb: &mut WriteBatch,
    ) -> Result<u64, StateError> {
        let cf = self.cf(CF_DEDUP_PAGES)?;
        let mut entries = 0;
        for &p in partitions {
            self.scan_prefix(CF_DEDUP_PAGES, &p.to_be_bytes(), |k, v| {
                entries += dedup_page::entry_count(v)? as u64;
                wb.delete_cf(cf, k);
                Ok(())
            })?;
        }
        Ok(entries)
    }

    /// After a forgetting is durable.
    pub(super) fn dedup_pages_forgotten(&self, partitions: &[i32]) {
        let mut pages = super::resident::lock(&self.dedup_pages);
        for p in partitions {
            pages.held.remove(p);
        }
    }
}
