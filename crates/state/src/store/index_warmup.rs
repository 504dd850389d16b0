//! [`IndexWarmup`]: the dedup index's memory made ready while RocksDB opens.
//!
//! A restart takes no batch before the dedup index holds every live id
//! (`load_dedup_pages`), and with millions of ids alive most of that load was the
//! kernel zeroing the index's fresh memory on first write (9 M ids: ~285 MB, about
//! 1 s of CPU of a 1.6-s load on this kind of virtual machine; docs/benchmarks.md,
//! twenty-second step). RocksDB's open before it (replaying the write-ahead log after a
//! crash, ~1 s with a full log) runs on one core. So the index is reserved and its
//! memory touched on a thread of its own during the open, and the load only inserts.
//!
//! How many ids there are is known only once the pages are listed, after the open: the
//! store keeps an estimate in a small file beside RocksDB's ([`SIZE_ESTIMATE_FILE`]):
//! the entries of the pages it holds, written after each load and every few seconds
//! of commits. It is only an estimate, and nothing depends on it being right:
//! - an index warmed for a count the pages then disagree with is dropped
//!   (`DedupIndex::fits`): the load never keeps more memory than without it;
//! - a missing or unreadable file warms nothing;
//! - a count more than the directory's blob files and write-ahead logs together could
//!   hold is not believed (a damaged file must not reserve memory for billions);
//! - the file is removed once read, and written again only after a load succeeds: an
//!   open that fails (or is killed) while warming does not warm the next one.

#[cfg(test)]
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dedup_index::{DedupIndex, LOWER_SHARDS, UPPER_SHARDS};
use crate::dedup_page::ENTRY_LEN;

/// The estimate of the ids the dedup index holds, in decimal, in the state directory.
pub(super) const SIZE_ESTIMATE_FILE: &str = "dedup-index-size";

/// How often commits rewrite [`SIZE_ESTIMATE_FILE`] (a write and a rename on the
/// thread that makes commits durable, after a commit's fsync; an estimate a few seconds old
/// differs from the ids at a kill by a few seconds of payments).
pub(super) const SIZE_ESTIMATE_EVERY: Duration = Duration::from_secs(5);

/// Below this many ids the index is a few MB: nothing worth a thread.
pub(super) const MIN_WARMED_IDS: usize = 1 << 18;

#[cfg(test)]
thread_local! {
    /// Loads on this thread that took a warmed index (the load runs on the thread
    /// that opens the store).
    pub(super) static WARMED_LOADS: Cell<u64> = const { Cell::new(0) };
}

/// The two halves of a pristine index (the shards the load fills on each of its two
/// threads), being reserved and touched on a thread of their own.
pub(super) struct IndexWarmup {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<(DedupIndex, DedupIndex)>>>,
}

impl IndexWarmup {
    /// Starts warming an index for the estimate in `dir`, if there is one (read on
    /// the warming thread: checking it lists the directory).
    pub(super) fn start(dir: &Path) -> Option<IndexWarmup> {
        let file = dir.join(SIZE_ESTIMATE_FILE);
        if !file.exists() {
            return None;
        }
        let dir = dir.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dedup-warmup".into())
            .spawn(move || {
                let estimate = read_size_estimate(&dir);
                // Read once: a warming that does not end well does not repeat.
                let _ = std::fs::remove_file(&file);
                let estimate = estimate.filter(|n| *n >= MIN_WARMED_IDS)?;
                // The upper half first: the load's helper thread, which also reads the
                // pages, inserts it, and is the busier of the two.
                let upper = DedupIndex::warmed(estimate, UPPER_SHARDS, &stopping);
                let lower = DedupIndex::warmed(estimate, LOWER_SHARDS, &stopping);
                Some((lower, upper))
            });
        match thread {
            Ok(thread) => Some(IndexWarmup {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Dedup index not warmed: no thread for it.");
                None
            }
        }
    }

    /// Stops the warming (memory not touched yet is touched by the inserts, as without
    /// it) and returns the (lower, upper) halves if they are empty and the size a load
    /// of `total` ids reserves.
    pub(super) fn finish(mut self, total: usize) -> Option<(DedupIndex, DedupIndex)> {
        self.stop.store(true, Ordering::Relaxed);
        let (lower, upper) = match self.thread.take()?.join() {
            Ok(halves) => halves?,
            Err(_) => {
                tracing::warn!("The dedup index's warming thread panicked; loading without it.");
                return None;
            }
        };
        let fits = lower.is_pristine()
            && upper.is_pristine()
            && lower.fits(total, LOWER_SHARDS)
            && upper.fits(total, UPPER_SHARDS);
        tracing::info!(
            used = fits,
            ids = total,
            "Dedup index warmed while the store opened."
        );
        #[cfg(test)]
        if fits {
            WARMED_LOADS.with(|n| n.set(n.get() + 1));
        }
        fits.then_some((lower, upper))
    }
}

impl Drop for IndexWarmup {
    /// An open that failed before the load: the thread stops after the shard it is
    /// touching, and what it reserved is freed.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The estimate in `dir`, if the file is there, parses, and is no more ids than the
/// directory's blob files and write-ahead logs together could hold (every id is an
/// entry of a page, flushed to a blob file or still in the log).
pub(super) fn read_size_estimate(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join(SIZE_ESTIMATE_FILE)).ok()?;
    let estimate: usize = text.trim().parse().ok()?;
    let bytes: u64 = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".blob") || name.ends_with(".log")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let most = usize::try_from(bytes / ENTRY_LEN as u64).unwrap_or(usize::MAX);
    (estimate <= most).then_some(estimate)
}

/// Writes the estimate (to a temporary file renamed over the old one, so that a
/// process that dies leaves the old estimate or the new; after a power loss, with no
/// fsync, possibly an empty file, which reads as none). A failure is logged and
/// otherwise ignored: the estimate only saves time at the next open.
pub(super) fn write_size_estimate(dir: &Path, ids: usize) {
    let tmp = dir.join(format!("{SIZE_ESTIMATE_FILE}.tmp"));
    let written = std::fs::write(&tmp, format!("{ids}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(SIZE_ESTIMATE_FILE)));
    if let Err(e) = written {
        tracing::debug!(error = %e, "The dedup index's size estimate was not written.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_round_trips_and_a_damaged_one_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_size_estimate(dir.path()), None, "no file, no estimate");
        // 1,000 ids need at least 52 KB of pages in blob files or the log.
        std::fs::write(dir.path().join("000001.blob"), vec![0u8; 1000 * ENTRY_LEN]).unwrap();
        // Other files hold no pages.
        std::fs::write(dir.path().join("000002.sst"), vec![0u8; 10_000 * ENTRY_LEN]).unwrap();
        write_size_estimate(dir.path(), 1000);
        assert_eq!(read_size_estimate(dir.path()), Some(1000));
        assert!(!dir
            .path()
            .join(format!("{SIZE_ESTIMATE_FILE}.tmp"))
            .exists());
        // More ids than the blob files and logs could hold: a damaged estimate.
        write_size_estimate(dir.path(), 1001);
        assert_eq!(read_size_estimate(dir.path()), None);
        std::fs::write(dir.path().join(SIZE_ESTIMATE_FILE), "12x\n").unwrap();
        assert_eq!(read_size_estimate(dir.path()), None);
    }

    #[test]
    fn a_warmup_for_the_loads_count_is_used_and_one_for_another_size_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ids = 2 * MIN_WARMED_IDS;
        std::fs::write(dir.path().join("000001.log"), vec![0u8; ids * ENTRY_LEN]).unwrap();
        let start = || {
            write_size_estimate(dir.path(), ids);
            IndexWarmup::start(dir.path()).expect("an estimate")
        };
        let warm = start();
        let (lower, upper) = warm.finish(ids + ids / 100).expect("the same size");
        assert!(lower.is_pristine() && upper.is_pristine());
        // Read once: the file is gone until the next load writes it.
        assert!(!dir.path().join(SIZE_ESTIMATE_FILE).exists());
        assert!(IndexWarmup::start(dir.path()).is_none());
        // Four times the ids: the tables would be too small, so not used.
        assert!(start().finish(4 * ids).is_none());
        // A quarter: the tables would be larger than the load's, so not used either.
        assert!(start().finish(ids / 4).is_none());
        // Too few ids to be worth warming.
        write_size_estimate(dir.path(), MIN_WARMED_IDS - 1);
        assert!(IndexWarmup::start(dir.path())
            .unwrap()
            .finish(MIN_WARMED_IDS - 1)
            .is_none());
        // Dropped without finishing (an open that failed): stops and frees.
        drop(start());
    }
}
