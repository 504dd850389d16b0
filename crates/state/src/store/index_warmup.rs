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
//! store keeps an estimate in a small file beside RocksDB's ([`HINT_FILE`]), written
//! after each load and every few seconds of commits. It is only an estimate: an index
//! warmed for a count the pages then disagree with is dropped (`DedupIndex::fits`: the
//! load never takes more memory than without it), a missing or unreadable file warms
//! nothing, and a count no file in the directory could hold is not believed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dedup_index::{DedupIndex, LOWER_SHARDS, UPPER_SHARDS};
use crate::dedup_page::ENTRY_LEN;

/// The estimate of the ids the dedup index holds, in decimal, in the state directory.
pub(super) const HINT_FILE: &str = "dedup-index-size";

/// How often commits refresh [`HINT_FILE`] (a write and a rename, off the sync path:
/// an estimate a few seconds old sizes the index the same power of two).
pub(super) const HINT_EVERY: Duration = Duration::from_secs(5);

/// Below this many ids the index is a few MB: nothing worth a thread.
pub(super) const MIN_WARMED_IDS: usize = 1 << 18;

/// Loads that took a warmed index, in this process (for tests).
#[cfg(test)]
pub(super) static WARMED_LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The two halves of a pristine index (the shards the load fills on each of its two
/// threads), being reserved and touched on a thread of their own.
pub(super) struct IndexWarmup {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(DedupIndex, DedupIndex)>>,
}

impl IndexWarmup {
    /// Starts warming an index for the estimate in `dir`, if there is a believable
    /// one worth it.
    pub(super) fn start(dir: &Path) -> Option<IndexWarmup> {
        let estimate = read_hint(dir)?;
        if estimate < MIN_WARMED_IDS {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dedup-warmup".into())
            .spawn(move || {
                // The upper half first: the load's helper thread, which also reads the
                // pages, inserts it, and is the busier of the two.
                let upper = DedupIndex::warmed(estimate, UPPER_SHARDS, &stopping);
                let lower = DedupIndex::warmed(estimate, LOWER_SHARDS, &stopping);
                (lower, upper)
            });
        match thread {
            Ok(thread) => Some(IndexWarmup {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "Dedup index not warmed: no thread.");
                None
            }
        }
    }

    /// Stops the warming (memory not touched yet is touched by the inserts, as without
    /// it) and returns the (lower, upper) halves if they are the size a load of
    /// `total` ids reserves.
    pub(super) fn finish(mut self, total: usize) -> Option<(DedupIndex, DedupIndex)> {
        self.stop.store(true, Ordering::Relaxed);
        let (lower, upper) = self.thread.take()?.join().ok()?;
        let fits = lower.fits(total, LOWER_SHARDS) && upper.fits(total, UPPER_SHARDS);
        tracing::debug!(fits, total, "Dedup index warmed while the store opened.");
        #[cfg(test)]
        if fits {
            WARMED_LOADS.fetch_add(1, Ordering::Relaxed);
        }
        fits.then_some((lower, upper))
    }
}

impl Drop for IndexWarmup {
    /// An open that failed before the load: the thread stops at its next shard.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The estimate in `dir`, if the file is there, parses, and is no more ids than the
/// directory's files could hold (every id is at least an entry of a page, in a blob
/// file or the write-ahead log): a damaged file must not reserve memory for billions.
pub(super) fn read_hint(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join(HINT_FILE)).ok()?;
    let estimate: usize = text.trim().parse().ok()?;
    let bytes: u64 = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum();
    let most = usize::try_from(bytes / ENTRY_LEN as u64).unwrap_or(usize::MAX);
    (estimate <= most).then_some(estimate)
}

/// Writes the estimate (to a temporary file renamed over the old one, so that a crash
/// leaves the old estimate or the new). A failure is logged and otherwise ignored: the
/// estimate only saves time at the next open.
pub(super) fn write_hint(dir: &Path, ids: usize) {
    let tmp = dir.join(format!("{HINT_FILE}.tmp"));
    let written = std::fs::write(&tmp, format!("{ids}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(HINT_FILE)));
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
        assert_eq!(read_hint(dir.path()), None, "no file, no estimate");
        // 1,000 ids need at least 52 KB of pages somewhere in the directory.
        std::fs::write(dir.path().join("000001.blob"), vec![0u8; 1000 * ENTRY_LEN]).unwrap();
        write_hint(dir.path(), 1000);
        assert_eq!(read_hint(dir.path()), Some(1000));
        assert!(!dir.path().join(format!("{HINT_FILE}.tmp")).exists());
        // More ids than the files could hold: a damaged estimate.
        write_hint(dir.path(), 1_000_000_000);
        assert_eq!(read_hint(dir.path()), None);
        std::fs::write(dir.path().join(HINT_FILE), "12x\n").unwrap();
        assert_eq!(read_hint(dir.path()), None);
    }

    #[test]
    fn a_warmup_for_the_loads_count_is_used_and_one_for_another_size_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ids = 2 * MIN_WARMED_IDS;
        std::fs::write(dir.path().join("000001.blob"), vec![0u8; ids * ENTRY_LEN]).unwrap();
        write_hint(dir.path(), ids);
        let warm = IndexWarmup::start(dir.path()).expect("an estimate worth warming");
        let (lower, upper) = warm.finish(ids + ids / 100).expect("the same size");
        assert!(lower.is_pristine() && upper.is_pristine());
        // Four times the ids: the tables would be too small, so not used.
        let warm = IndexWarmup::start(dir.path()).unwrap();
        assert!(warm.finish(4 * ids).is_none());
        // A quarter: the tables would be larger than the load's, so not used either.
        let warm = IndexWarmup::start(dir.path()).unwrap();
        assert!(warm.finish(ids / 4).is_none());
        // Too few ids to be worth a thread.
        write_hint(dir.path(), MIN_WARMED_IDS - 1);
        assert!(IndexWarmup::start(dir.path()).is_none());
    }
}
