//! The fraud log: a commit's fraud changes written as one page, folded into the
//! per-key `fraud` family later, off the commit thread.
//!
//! **Why.** Every valid payment changes two fraud keys (its card, its customer), each
//! a random key among millions. Put one by one, each went through the WAL, a memtable
//! skiplist insert, a flush and universal compactions: on the peers' 10 M input about
//! 16 s of CPU a run, much of it on the commit thread (docs/benchmarks.md, twenty-sixth
//! step). As one page per commit (`crate::fraud_log_page`, in blob files like the dedup
//! pages), RocksDB sees one value a commit. Every `FOLD_PAGES` commits a thread sorts
//! the oldest pages' changes (the newest of each key kept), writes them as one SST
//! file, has RocksDB ingest it into `fraud`, and deletes the pages: the keys are
//! written to `fraud` once per fold, not once per change, and never through a memtable.
//!
//! **Invariant: the store's fraud value of a key is its newest change in the unfolded
//! pages, or else what `fraud` holds; and memory holds every key a page changed, with
//! that newest value.** Lookups read memory first and ask `fraud` only for keys memory
//! does not hold, which the pages therefore never changed. What keeps it:
//! - A commit's paged puts go into memory whatever its budget
//!   (`ResidentValues::put_held`), and at open every unfolded page is read into memory
//!   before the first batch (oldest first, so the newest change wins).
//! - An ingested file's keys get sequence numbers above everything already in `fraud`:
//!   an ingest must never carry a value older than one written to `fraud` per key. So
//!   a commit that writes fraud changes per key (it deletes one, a key or value is too
//!   long for memory, or memory is over its budget: only memory keeps a paged key
//!   readable, so past the budget the store stops paging) first folds *every*
//!   unfolded page and waits for their deletion to be durable
//!   ([`StateStore::settle_fraud_log`]). Any page ingested later was written after
//!   that per-key write, so is newer.
//! - A crash between an ingest and the pages' deletion leaves pages whose changes are
//!   already in `fraud`: the next open reads them into memory again, and folding them
//!   again writes the same newest values (a fold is idempotent). A fold file written
//!   but not ingested is left in `fraud-fold/`, which every open empties.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rocksdb::{
    DBCompressionType, IngestExternalFileOptions, IteratorMode, Options, ReadOptions,
    SstFileWriter, WriteBatch, WriteOptions, DB,
};

use super::resident::lock;
use super::StateStore;
use crate::batch::{Op, OpLog};
use crate::cf::{CF_FRAUD, CF_FRAUD_LOG};
use crate::fail_point;
use crate::fraud_log_page;
use crate::resident_values::{self, ResidentValues};
use crate::StateError;

/// Pages per background fold: at 5,000 payments a batch, ~500,000 changes, a fold of
/// ~0.34 s on its thread (the peers' 10 M input: 15.4 M changes in 1,984 pages, 31
/// folds in 10.7 s); the most a restart reads back before its first batch is about
/// twice that (a fold running and a full run waiting).
pub(super) const FOLD_PAGES: u64 = 64;

/// The directory (inside the state directory) fold files are written to before
/// RocksDB takes them.
const FOLD_DIR: &str = "fraud-fold";

/// Where the log stands: which pages exist and which fold runs.
#[derive(Debug, Default)]
pub(super) struct FraudLog {
    /// The number of the next page a commit writes.
    next: u64,
    /// Past the last page of a durable commit: a background fold folds only below it
    /// (`store::durable`). A page between it and `next` may still be being written,
    /// and a fold would take its number for a gap.
    durable_next: u64,
    /// The first page not yet folded: pages below it are in `fraud` (and deleted, or
    /// being deleted by the fold that ingested them).
    first_unfolded: u64,
    /// The background fold of `[first_unfolded, its end)`, if one runs.
    running: Option<RunningFold>,
    /// The folds done since the open.
    totals: FoldTotals,
    /// The fold's buffers, between folds (a running fold has them).
    buffers: FoldBuffers,
    /// **Test double** for a crash between a fold's ingest and its pages' deletion
    /// (which the fail point `FOLD_AFTER_INGEST` makes for real, killing the process):
    /// folds leave their pages behind.
    #[cfg(test)]
    keep_folded_pages: bool,
}

#[derive(Debug)]
struct RunningFold {
    to: u64,
    /// The fold's buffers come back with its outcome.
    handle: JoinHandle<(FoldBuffers, Result<FoldTotals, StateError>)>,
}

/// What folds did: one fold's (`folds` = 1), or all a store has done since it opened
/// (`StateStore::fraud_log_folds`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FoldTotals {
    pub folds: u64,
    pub pages: u64,
    /// Changes read from the pages.
    pub changes: u64,
    /// Keys written to `fraud` (a key changed in several pages is written once).
    pub keys: u64,
    /// Wall-clock seconds the folds took (on their thread, or a commit's when it
    /// folds the log first).
    pub seconds: f64,
}

impl FraudLog {
    #[cfg(test)]
    fn deletes_folded_pages(&self) -> bool {
        !self.keep_folded_pages
    }

    #[cfg(not(test))]
    fn deletes_folded_pages(&self) -> bool {
        true
    }

    /// Takes a finished background fold's outcome (its error, if it failed: the commit
    /// about to be made then fails before it writes).
    fn reap(&mut self, wait: bool) -> Result<(), StateError> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        if !wait && !running.handle.is_finished() {
            self.running = Some(running);
            return Ok(());
        }
        let (buffers, report) = running
            .handle
            .join()
            .map_err(|_| StateError::Rocks("the fraud log's fold thread panicked".into()))?;
        self.buffers = buffers.kept();
        let report = report?;
        self.first_unfolded = running.to;
        self.count(&report, "background");
        Ok(())
    }

    /// Adds one fold to the totals, and logs it.
    fn count(&mut self, report: &FoldTotals, how: &'static str) {
        let t = &mut self.totals;
        t.folds += report.folds;
        t.pages += report.pages;
        t.changes += report.changes;
        t.keys += report.keys;
        t.seconds += report.seconds;
        tracing::debug!(
            pages = report.pages,
            changes = report.changes,
            keys = report.keys,
            seconds = report.seconds,
            how,
            "Fraud log folded into the fraud family."
        );
    }
}

/// What a commit does with its fraud changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FraudWrites {
    /// No fraud change.
    None,
    /// One page of the log.
    Paged,
    /// Per key, into `fraud`, after every unfolded page is folded.
    PerKey,
}

/// How a commit writes `ops`' fraud changes: paged when `paging` (the log is on and
/// memory under its budget) and every change is a put memory can hold (see the
/// module docs).
pub(super) fn fraud_writes(ops: &OpLog, paging: bool) -> FraudWrites {
    let mut any = false;
    let mut pageable = paging;
    for op in ops.iter() {
        match op {
            Op::Put { cf, key, value } if cf == CF_FRAUD => {
                any = true;
                pageable &= resident_values::fits(key, value) && fraud_log_page::fits(key, value);
            }
            Op::Delete { cf, .. } if cf == CF_FRAUD => {
                any = true;
                pageable = false;
            }
            _ => {}
        }
    }
    match (any, pageable) {
        (false, _) => FraudWrites::None,
        (true, true) => FraudWrites::Paged,
        (true, false) => FraudWrites::PerKey,
    }
}

impl StateStore {
    /// How this commit writes its fraud changes. Without memory (a read-only store
    /// never commits) everything goes per key.
    pub(super) fn plan_fraud_writes(&self, ops: &OpLog) -> FraudWrites {
        let paging = self.fraud_log_on
            && self
                .resident
                .get()
                .is_some_and(|r| !lock(r).fraud.is_full());
        fraud_writes(ops, paging)
    }

    /// Before a commit: a finished fold's error, if it failed; for a commit writing per
    /// key, every unfolded page folded first and their deletion made durable.
    pub(super) fn prepare_fraud_log(&self, writes: FraudWrites) -> Result<(), StateError> {
        lock(&self.fraud_log).reap(false)?;
        if writes == FraudWrites::PerKey {
            self.settle_fraud_log()?;
        }
        Ok(())
    }

    /// The page number a paged commit writes under, taken for good (a number left
    /// unused by a failed write is a gap, which folds and opens step over).
    pub(super) fn reserve_fraud_page(&self) -> u64 {
        let mut log = lock(&self.fraud_log);
        log.next += 1;
        log.next - 1
    }

    /// After a commit: starts a background fold of the unfolded pages once
    /// `FOLD_PAGES` wait and none runs.
    pub(super) fn fold_fraud_log_if_due(&self) -> Result<(), StateError> {
        let mut log = lock(&self.fraud_log);
        let to = log.durable_next.min(log.next);
        if log.running.is_some() || to.saturating_sub(log.first_unfolded) < FOLD_PAGES {
            return Ok(());
        }
        let (db, path) = (self.db.clone(), self.path.clone());
        let from = log.first_unfolded;
        let delete = log.deletes_folded_pages();
        let mut buffers = std::mem::take(&mut log.buffers);
        let handle = std::thread::Builder::new()
            .name("fraud-fold".into())
            .spawn(move || {
                let report = fold(&db, &path, (from, to), delete, &mut buffers);
                (buffers, report)
            })
            .map_err(|e| StateError::Rocks(format!("starting the fraud log's fold: {e}")))?;
        log.running = Some(RunningFold { to, handle });
        Ok(())
    }

    /// The commit that wrote page `page` is durable.
    pub(super) fn fraud_page_durable(&self, page: u64) {
        let mut log = lock(&self.fraud_log);
        log.durable_next = log.durable_next.max(page + 1);
    }

    /// How many pages of the fraud log are not folded yet (a fold running included):
    /// between 0 and about `2 × FOLD_PAGES` while folds keep up.
    pub fn fraud_log_pages(&self) -> u64 {
        let log = lock(&self.fraud_log);
        log.next - log.first_unfolded
    }

    /// The folds this store has done since it opened.
    pub fn fraud_log_folds(&self) -> FoldTotals {
        lock(&self.fraud_log).totals
    }

    /// Waits for a running fold (its error, if it failed).
    pub fn finish_fraud_fold(&self) -> Result<(), StateError> {
        lock(&self.fraud_log).reap(true)
    }

    /// Folds every unfolded page now (waiting for a running fold first): `fraud` then
    /// holds every fraud change, and the pages' deletion is durable.
    pub fn settle_fraud_log(&self) -> Result<(), StateError> {
        let mut log = lock(&self.fraud_log);
        log.reap(true)?;
        if log.first_unfolded < log.next {
            // The fold ingests its pages' changes as a file, which is durable at once:
            // the pages' commits must be durable first, or a power loss could keep the
            // changes and lose the commits that made them (`store::durable`). Every
            // page below `next` is written, so one sync makes them all durable.
            if self.sync && log.durable_next < log.next {
                self.db.flush_wal(true).map_err(|e| self.rocks(e))?;
            }
            log.durable_next = log.next;
            let delete = log.deletes_folded_pages();
            let pages = (log.first_unfolded, log.next);
            let mut buffers = std::mem::take(&mut log.buffers);
            let report = fold(&self.db, &self.path, pages, delete, &mut buffers);
            log.buffers = buffers.kept();
            let report = report?;
            log.first_unfolded = log.next;
            log.count(&report, "settled");
        }
        Ok(())
    }

    /// At open: empties the fold directory, finds the unfolded pages, and reads their
    /// changes into `memory` (oldest first: the newest change of a key wins). Returns
    /// how many changes were read.
    pub(super) fn open_fraud_log(&self, memory: &mut ResidentValues) -> Result<u64, StateError> {
        let dir = self.path.join(FOLD_DIR);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StateError::Rocks(format!(
                    "emptying {}: {e}",
                    dir.display()
                )))
            }
        }
        let (changes, pages) = self.read_unfolded_into(memory)?;
        let mut log = lock(&self.fraud_log);
        if let Some((first, last)) = pages {
            log.first_unfolded = first;
            log.next = last + 1;
            log.durable_next = log.next;
        }
        Ok(changes)
    }

    /// Puts every unfolded page's changes into `memory`, oldest first (the newest
    /// change of a key wins): how many, and the first and last page numbers.
    pub(super) fn read_unfolded_into(
        &self,
        memory: &mut ResidentValues,
    ) -> Result<(u64, Option<(u64, u64)>), StateError> {
        let mut changes = 0u64;
        let mut pages: Option<(u64, u64)> = None;
        self.each_fraud_page(None, |n, page| {
            pages = Some((pages.map_or(n, |(first, _)| first), n));
            for entry in fraud_log_page::entries(page) {
                let (key, value) = entry?;
                memory.put_held(key, value);
                changes += 1;
            }
            Ok(())
        })?;
        Ok((changes, pages))
    }

    /// Calls `each(page number, page)` for every page of the log, oldest first, as of
    /// `snapshot` (or now).
    pub(super) fn each_fraud_page(
        &self,
        snapshot: Option<&rocksdb::Snapshot<'_>>,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        // An older build's directory opened read-only has no log.
        let Some(cf) = self.db.cf_handle(CF_FRAUD_LOG) else {
            return Ok(());
        };
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        if let Some(s) = snapshot {
            ro.set_snapshot(s);
        }
        for item in self.db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            each(page_number(&k, &self.path)?, &v)?;
        }
        Ok(())
    }
}

fn page_number(key: &[u8], path: &Path) -> Result<u64, StateError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("a fraud log key of {} bytes, not 8", key.len()),
        })
}

/// The key of page `n`.
pub(super) fn page_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The most memory a fold's buffers keep between folds: a 10 M run's folds take ~50–90 MB
/// (`FOLD_PAGES` pages of ~390 KB, their ~500,000 changes and their sort order).
const FOLD_BUFFERS_KEPT_BYTES: usize = 256 << 20;

/// The buffers a fold works in, kept from one fold to the next.
///
/// Why: allocated afresh, their ~50 MB were new memory every fold, which the kernel
/// zeroes page by page as it is first touched: 2.3 s of a 10 M run's CPU, a third of
/// the fold thread's (docs/benchmarks.md, twenty-eighth step). Kept, they are written
/// over.
#[derive(Debug, Default)]
pub(super) struct FoldBuffers {
    /// The pages read, back to back.
    bytes: Vec<u8>,
    /// Each change of the pages, in the order made: where it lies in `bytes`.
    changes: Vec<fraud_log_page::Span>,
    /// (the key's first 16 bytes as a number, index into `changes`), sorted by key.
    order: Vec<(u128, u32)>,
}

impl FoldBuffers {
    fn clear(&mut self) {
        self.bytes.clear();
        self.changes.clear();
        self.order.clear();
    }

    /// Adds a page's changes after those of the pages added before it (which are
    /// older).
    fn add_page(&mut self, page: &[u8]) -> Result<(), StateError> {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(page);
        for span in fraud_log_page::spans(page) {
            let span = span?;
            self.changes.push(fraud_log_page::Span {
                key_at: base + span.key_at,
                ..span
            });
        }
        // The sort numbers changes with a u32 (a fold is ~500,000).
        if u32::try_from(self.changes.len()).is_err() {
            return Err(StateError::Rocks(format!(
                "a fraud log fold of more than {} changes",
                u32::MAX
            )));
        }
        Ok(())
    }

    /// The buffers to keep for the next fold: these, or none after an unusually large
    /// fold (a settle of many pages), whose memory would otherwise stay held for good.
    fn kept(self) -> FoldBuffers {
        let bytes = self.bytes.capacity()
            + self.changes.capacity() * std::mem::size_of::<fraud_log_page::Span>()
            + self.order.capacity() * std::mem::size_of::<(u128, u32)>();
        if bytes > FOLD_BUFFERS_KEPT_BYTES {
            FoldBuffers::default()
        } else {
            self
        }
    }

    fn key(&self, change: u32) -> &[u8] {
        let s = self.changes[change as usize];
        &self.bytes[s.key_at..s.key_at + s.key_len]
    }

    fn change(&self, change: u32) -> (&[u8], &[u8]) {
        let s = self.changes[change as usize];
        let value_at = s.key_at + s.key_len;
        (
            &self.bytes[s.key_at..value_at],
            &self.bytes[value_at..value_at + s.value_len],
        )
    }

    /// The newest change of each key among the pages added, in key order: what one fold
    /// writes.
    fn newest_by_key(&mut self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        // Sorted by key, the changes of one key in the order they were made, then the
        // last of each run of one key kept. The sort compares the keys' first 16 bytes
        // as one number (zero-padded: the same order as comparing the bytes, a tie
        // going to the whole keys): a sort of slices chasing pointers into the pages
        // took about twice the fold's time (docs/benchmarks.md, twenty-sixth step).
        let prefix = |k: &[u8]| {
            let mut p = [0u8; 16];
            let n = k.len().min(16);
            p[..n].copy_from_slice(&k[..n]);
            u128::from_be_bytes(p)
        };
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend((0..self.changes.len() as u32).map(|i| (prefix(self.key(i)), i)));
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.key(a.1).cmp(self.key(b.1)))
                .then(a.1.cmp(&b.1))
        });
        self.order = order;
        let this = &*self;
        let newest = move |n: usize| match this.order.get(n + 1) {
            None => true,
            Some(next) => {
                let here = this.order[n];
                next.0 != here.0 || this.key(next.1) != this.key(here.1)
            }
        };
        (0..this.order.len())
            .filter(move |&n| newest(n))
            .map(move |n| this.change(this.order[n].1))
    }
}

/// Folds pages `[from, to)` into `fraud`: their newest change of each key written as
/// one SST file, ingested, then the pages deleted (synced, see the module docs;
/// `delete` is false only for a test's stand-in for a crash before the deletion).
fn fold(
    db: &DB,
    path: &Path,
    (from, to): (u64, u64),
    delete: bool,
    buffers: &mut FoldBuffers,
) -> Result<FoldTotals, StateError> {
    let started = std::time::Instant::now();
    let rocks = |e| StateError::from_rocks(e, path);
    let log_cf = super::column_family(db, path, CF_FRAUD_LOG)?;
    let fraud_cf = super::column_family(db, path, CF_FRAUD)?;
    let mut ro = ReadOptions::default();
    ro.fill_cache(false);
    ro.set_iterate_upper_bound(page_key(to).to_vec());
    buffers.clear();
    let mut pages = db.raw_iterator_cf_opt(log_cf, ro);
    pages.seek(page_key(from));
    while let Some(page) = pages.value() {
        buffers.add_page(page)?;
        pages.next();
    }
    pages.status().map_err(rocks)?;
    drop(pages);
    let changes = buffers.changes.len() as u64;
    let mut keys = 0u64;
    if changes > 0 {
        let dir = path.join(FOLD_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StateError::Rocks(format!("creating {}: {e}", dir.display())))?;
        let file: PathBuf = dir.join(format!("fold-{from}-{to}.sst"));
        let mut opts = Options::default();
        // Uncompressed: the family's compactions compress what they write, and this
        // file is read back by the first of them.
        opts.set_compression_type(DBCompressionType::None);
        let mut writer = SstFileWriter::create(&opts);
        writer.open(&file).map_err(rocks)?;
        for (key, value) in buffers.newest_by_key() {
            writer.put(key, value).map_err(rocks)?;
            keys += 1;
        }
        writer.finish().map_err(rocks)?;
        fail_point::hit(fail_point::FOLD_BEFORE_INGEST);
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        db.ingest_external_file_cf_opts(fraud_cf, &ingest, vec![&file])
            .map_err(rocks)?;
    }
    fail_point::hit(fail_point::FOLD_AFTER_INGEST);
    if delete {
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(log_cf, page_key(from), page_key(to));
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        db.write_opt(wb, &synced).map_err(rocks)?;
    }
    Ok(FoldTotals {
        folds: 1,
        pages: to - from,
        changes,
        keys,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Lets a running fold finish: its thread holds the database.
impl Drop for FraudLog {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(puts: &[(&str, &str)]) -> Box<[u8]> {
        let mut p = Vec::new();
        for (k, v) in puts {
            fraud_log_page::push(&mut p, k.as_bytes(), v.as_bytes());
        }
        p.into_boxed_slice()
    }

    use crate::{StateBatch, StoreOptions};
    use std::collections::BTreeMap;

    /// A fraud value last seen at `t` (the TTL reads its first 8 bytes).
    fn value(t: i64, tag: &str) -> Vec<u8> {
        [t.to_be_bytes().as_slice(), tag.as_bytes()].concat()
    }

    fn key(i: u64) -> Vec<u8> {
        format!("card/{i:04}").into_bytes()
    }

    /// Commits `n` batches, each changing a few shared keys and one new key, and
    /// records what each key should read.
    fn commit_many(s: &StateStore, from: u64, n: u64, want: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        for c in from..from + n {
            let mut b = StateBatch::new();
            for k in [key(c % 7), key(c % 3), key(1_000 + c)] {
                let v = value(c as i64, &format!("c{c}"));
                b.put_fraud(k.clone(), v.clone());
                want.insert(k, v);
            }
            s.commit(b).unwrap();
        }
    }

    /// Every key reads its newest value, one by one, in bulk, and in the exact count.
    fn assert_reads(s: &StateStore, want: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
        let keys: Vec<&Vec<u8>> = want.keys().collect();
        let got = s.get_fraud_many(&keys).unwrap();
        for ((k, v), g) in want.iter().zip(&got) {
            assert_eq!(
                g.as_ref(),
                Some(v),
                "{when}: {}",
                String::from_utf8_lossy(k)
            );
            assert_eq!(s.get_fraud(k).unwrap().as_ref(), Some(v), "{when}");
        }
        assert_eq!(s.stats().unwrap().fraud_keys, want.len() as u64, "{when}");
    }

    fn pages_stored(s: &StateStore) -> u64 {
        let mut n = 0;
        s.each_fraud_page(None, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    }

    /// The log's whole life: paged commits, a background fold into `fraud`, the
    /// unfolded pages read back at a reopen (and by lookups while the loader still
    /// scans), a read-only view, and a full fold.
    #[test]
    fn paged_changes_read_back_through_folds_reopens_and_read_only_views() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut want = BTreeMap::new();
        commit_many(&s, 0, FOLD_PAGES + 10, &mut want);
        s.finish_fraud_fold().unwrap();
        // The first FOLD_PAGES pages went into `fraud` and left the log.
        assert_eq!(pages_stored(&s), 10);
        let fraud = s.cf(CF_FRAUD).unwrap();
        assert_eq!(
            s.db.get_cf(fraud, key(1_000)).unwrap(),
            Some(value(0, "c0")),
            "a folded page's change is in the per-key family"
        );
        assert_eq!(s.db.get_cf(fraud, key(1_000 + FOLD_PAGES)).unwrap(), None);
        assert_reads(&s, &want, "after a fold");
        commit_many(&s, FOLD_PAGES + 10, 5, &mut want);
        drop(s);

        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_reads(&s, &want, "reopened");
        // As the first batch after a restart finds it, the loader not yet started:
        // the pages' keys from memory, the folded ones from RocksDB.
        s.wait_resident().unwrap();
        s.reset_resident_to_loading().unwrap();
        assert_reads(&s, &want, "while loading");
        commit_many(&s, FOLD_PAGES + 15, FOLD_PAGES, &mut want);
        s.finish_fraud_fold().unwrap();
        assert!(pages_stored(&s) < FOLD_PAGES, "a second fold ran");
        assert_reads(&s, &want, "after the second fold");
        drop(s);

        let ro = StateStore::open_read_only(dir.path()).unwrap();
        assert!(pages_stored(&ro) > 0);
        assert_reads(&ro, &want, "read-only");
        drop(ro);

        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        s.compact().unwrap();
        assert_eq!(pages_stored(&s), 0, "compact folds the whole log");
        assert_reads(&s, &want, "after compact");
    }

    /// Commits of one store build their pages in one kept buffer (`CommitBuffers`).
    #[test]
    fn each_page_holds_its_own_commits_puts_only() {
        // One store, so the commits share its page buffer: a page must not carry an
        // earlier commit's entries (a key a per-key commit deleted in between would
        // come back with the next page).
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        for (k, tag) in [(1, "first"), (2, "second"), (3, "third")] {
            let mut b = StateBatch::new();
            b.put_fraud(key(k), value(k as i64, tag));
            s.commit(b).unwrap();
        }
        let mut pages = Vec::new();
        s.each_fraud_page(None, |_, page| {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = fraud_log_page::entries(page)
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()?;
            pages.push(entries);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            pages,
            [(1, "first"), (2, "second"), (3, "third")]
                .map(|(k, tag)| vec![(key(k), value(k as i64, tag))])
        );
    }

    /// The hazard of ingesting: a fold's file lands above everything in `fraud`, so
    /// a page folded after a per-key write of the same key would bring back its older
    /// value. A commit that writes per key (here: it deletes a key) folds the log
    /// first; the per-key value then survives later folds, reopens and compactions.
    #[test]
    fn a_per_key_commit_folds_the_log_first_so_no_older_page_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = StateBatch::new();
        b.put_fraud(key(1), value(1, "paged"));
        b.put_fraud(key(500), value(1, "to delete"));
        s.commit(b).unwrap();
        assert_eq!(pages_stored(&s), 1);

        let mut b = StateBatch::new();
        b.put_fraud(key(1), value(2, "per key"));
        b.delete_fraud(key(500));
        s.commit(b).unwrap();
        assert_eq!(pages_stored(&s), 0, "folded before the per-key write");
        let mut want = BTreeMap::from([(key(1), value(2, "per key"))]);
        assert_reads(&s, &want, "after the per-key commit");
        assert_eq!(s.get_fraud(&key(500)).unwrap(), None);
        drop(s);

        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_reads(&s, &want, "reopened");
        s.compact().unwrap();
        assert_reads(&s, &want, "compacted");
        assert_eq!(s.get_fraud(&key(500)).unwrap(), None);
        // Paged again afterwards, and newer than the per-key value.
        commit_many(&s, 10, FOLD_PAGES + 1, &mut want);
        s.finish_fraud_fold().unwrap();
        assert_reads(&s, &want, "paged again and folded");
        assert_eq!(s.get_fraud(&key(500)).unwrap(), None);
    }

    /// A crash between a fold's ingest and its pages' deletion (the test double leaves
    /// the pages; the processor's crash test dies there for real): the next open reads
    /// the pages back, and folding them again changes nothing, before or after newer
    /// pages, and before a per-key commit.
    #[test]
    fn a_fold_whose_pages_were_not_deleted_is_folded_again_without_harm() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        lock(&s.fraud_log).keep_folded_pages = true;
        let mut want = BTreeMap::new();
        commit_many(&s, 0, FOLD_PAGES, &mut want);
        s.finish_fraud_fold().unwrap();
        let fraud = s.cf(CF_FRAUD).unwrap();
        assert!(
            s.db.get_cf(fraud, key(1_000)).unwrap().is_some(),
            "ingested"
        );
        assert_eq!(pages_stored(&s), FOLD_PAGES, "and the pages left behind");
        drop(s);

        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_reads(&s, &want, "reopened after the crash");
        commit_many(&s, FOLD_PAGES, FOLD_PAGES + 3, &mut want);
        s.finish_fraud_fold().unwrap();
        assert_reads(&s, &want, "folded again with newer pages");
        let mut b = StateBatch::new();
        b.delete_fraud(key(1_000));
        want.remove(&key(1_000));
        s.commit(b).unwrap();
        assert_eq!(pages_stored(&s), 0);
        drop(s);
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        s.compact().unwrap();
        assert_reads(&s, &want, "after a per-key commit, reopened and compacted");
    }

    /// Memory keeps every paged key whatever its budget (RocksDB cannot answer for
    /// them); once over the budget, commits stop paging: they fold the log and write
    /// per key, and lookups memory cannot answer go to RocksDB.
    #[test]
    fn past_the_memory_budget_commits_fold_the_log_and_write_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            fraud_memory_bytes: 64 << 10,
            ..StoreOptions::default()
        };
        let s = StateStore::open(dir.path(), &opts).unwrap();
        let mut want = BTreeMap::new();
        let mut paged = 0;
        for c in 0..200u64 {
            let mut b = StateBatch::new();
            for i in 0..50 {
                let k = key(c * 50 + i);
                let v = value(c as i64, "x");
                b.put_fraud(k.clone(), v.clone());
                want.insert(k, v);
            }
            let before = pages_stored(&s);
            s.commit(b).unwrap();
            if pages_stored(&s) > before {
                paged += 1;
            }
        }
        let (_, complete) = s.fraud_memory().unwrap();
        assert!(!complete, "the budget left keys out");
        assert!(paged > 0, "commits paged while under the budget");
        assert_eq!(pages_stored(&s), 0, "over it, the log was folded");
        assert_reads(&s, &want, "over the budget");
        drop(s);
        let s = StateStore::open(dir.path(), &opts).unwrap();
        assert_reads(&s, &want, "reopened over the budget");
        drop(s);

        // Pages written under a large budget, opened under a small one: every
        // unfolded change is read into memory all the same, and the first commit
        // folds them before it writes per key.
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut want = BTreeMap::new();
        commit_many(&s, 0, 10, &mut want);
        drop(s);
        let tiny = StoreOptions {
            fraud_memory_bytes: 1,
            ..StoreOptions::default()
        };
        let s = StateStore::open(dir.path(), &tiny).unwrap();
        assert_eq!(pages_stored(&s), 10);
        s.wait_resident().unwrap();
        assert_reads(&s, &want, "pages past the budget");
        commit_many(&s, 10, 1, &mut want);
        assert_eq!(pages_stored(&s), 0, "folded, then written per key");
        assert_reads(&s, &want, "after the first commit over the budget");
    }

    #[test]
    fn a_fold_keeps_the_newest_change_of_each_key_in_key_order() {
        let mut buffers = FoldBuffers::default();
        // Twice through the same buffers: what one fold left must not reach the next.
        for round in 0..2 {
            buffers.clear();
            let pages = [
                page(&[("b", "b1"), ("a", "a1"), ("b", "b2")]),
                page(&[("c", "c1"), ("a", "a2")]),
                page(&[("b", "b3"), ("ab", "x"), ("abcdefghijklmnopq", "long1")]),
                page(&[
                    ("abcdefghijklmnopr", "long2"),
                    ("abcdefghijklmnopq", "long3"),
                ]),
            ];
            for p in &pages {
                buffers.add_page(p).unwrap();
            }
            assert_eq!(buffers.changes.len(), 10, "round {round}");
            let got: Vec<(&[u8], &[u8])> = buffers.newest_by_key().collect();
            // Keys equal in their first 16 bytes are told apart by the rest.
            let want: Vec<(&[u8], &[u8])> = vec![
                (b"a", b"a2"),
                (b"ab", b"x"),
                (b"abcdefghijklmnopq", b"long3"),
                (b"abcdefghijklmnopr", b"long2"),
                (b"b", b"b3"),
                (b"c", b"c1"),
            ];
            assert_eq!(got, want, "round {round}");
        }
    }

    #[test]
    fn a_page_cut_short_fails_the_fold_instead_of_folding_less() {
        let mut buffers = FoldBuffers::default();
        let p = page(&[("a", "a1"), ("b", "b1")]);
        assert!(buffers.add_page(&p[..p.len() - 1]).is_err());
    }
}
