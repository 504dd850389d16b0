//! A commit in two steps: **written** ([`StateStore::write_commit`]), then **durable**
//! ([`StateStore::make_durable`]), so that the next commit's write can run while this
//! one's fsync does.
//!
//! **Why.** A synced RocksDB write appends the batch to the WAL, fsyncs it and only then
//! lets the next write in. The fsync is the disk's time, not a CPU's: in a 10 M run on
//! the peers' input the commits were blocked in it ~10 s of ~30, and the next batch's
//! commit waited behind it (docs/benchmarks.md, fortieth step). Written apart, batch
//! `N + 1` goes into the WAL and the memtables while batch `N`'s fsync runs on another
//! thread; one fsync covers everything appended before it.
//!
//! **The invariant: nothing outside the process acts on a commit before it is
//! durable, and commits become durable in the order they were written.**
//! - A written commit is in RocksDB (the OS has its WAL bytes: a `kill -9` keeps it)
//!   but may not survive a power loss. Its outbox pages are hidden from readers
//!   ([`UnsyncedOutbox`]), so the relay never delivers a row a power loss could take
//!   back; its horizons are not published (the compaction filters expire entries only
//!   by durable watermarks); its keys are not yet answered from memory, and the fraud
//!   log's fold folds only pages of durable commits.
//! - RocksDB recovers a prefix of the writes after a crash, of the process or of the
//!   machine: the WAL files are replayed in order up to the first damage
//!   (point-in-time recovery), and a memtable flush syncs the closed WAL files before
//!   its sorted files count. So a commit is never back without every commit written
//!   before it. (The one write that skips the WAL, the fraud log fold's file ingest,
//!   folds only pages of durable commits: a background fold stops at the last durable
//!   page, and `settle_fraud_log` syncs the WAL first.) A later commit written before
//!   an earlier one's fsync failed is therefore harmless: the process stops on that
//!   failure (the queue of commits refuses everything after it), and a restart
//!   replays from whatever prefix is on disk, each commit carrying its own Kafka
//!   offsets.
//! - `write_commit` calls come from one thread at a time, in batch order, and
//!   `make_durable` calls in the same order, each after its own write (the
//!   processor's `CommitQueue`). The bookkeeping of a commit's dedup pages, and the
//!   horizons they are judged by (`WrittenHorizons`), are updated at its write, so the
//!   next write builds on them: it lands only if this one does.

use std::collections::VecDeque;

use crate::batch::{Horizon, OpLog};
use crate::fail_point;
use crate::table::Table;
use crate::{StateError, StateStore};

use super::dedup_pages::PagesWritten;
use super::resident::lock;

/// A commit [`StateStore::write_commit`] wrote and [`StateStore::make_durable`] has not
/// yet made durable. Dropped without that, its rows stay hidden from readers and its
/// keys out of memory: the caller stops (see the module docs).
#[must_use = "a written commit is durable only after make_durable"]
#[derive(Debug, Default)]
pub struct WrittenCommit {
    /// `None` for an empty batch: nothing was written, nothing to wait for.
    inner: Option<Written>,
}

#[derive(Debug)]
pub(super) struct Written {
    /// The batch's ops: once durable, they feed the resident sets.
    pub(super) ops: OpLog,
    pub(super) horizons: Vec<Horizon>,
    pub(super) pages: PagesWritten,
    /// The fraud log page the commit wrote, if it paged its fraud changes.
    pub(super) fraud_page: Option<u64>,
    /// Its ticket in [`UnsyncedOutbox`].
    pub(super) outbox_ticket: u64,
}

impl WrittenCommit {
    pub(super) fn new(written: Written) -> WrittenCommit {
        WrittenCommit {
            inner: Some(written),
        }
    }
}

/// Where a commit's pages of each stream start: `(table, partition, first sequence)`.
pub(super) type PageStarts = Vec<(Table, i32, u64)>;

/// The outbox pages of commits written but not yet durable, per commit in write order:
/// a read of a stream stops before the first of them.
#[derive(Debug, Default)]
pub(super) struct UnsyncedOutbox {
    /// `(ticket, where its pages start)`.
    commits: VecDeque<(u64, PageStarts)>,
    next_ticket: u64,
}

impl UnsyncedOutbox {
    /// A commit is about to write pages from these first sequences on. Before the
    /// write, so that no reader sees them between the write and this.
    pub(super) fn writing(&mut self, firsts: PageStarts) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if !firsts.is_empty() {
            self.commits.push_back((ticket, firsts));
        }
        ticket
    }

    /// The commit holding `ticket` is durable: its pages may be read.
    pub(super) fn durable(&mut self, ticket: u64) {
        self.commits.retain(|(t, _)| *t != ticket);
    }

    /// The first sequence of the stream's pages that may not be read yet, if any.
    pub(super) fn hidden_from(&self, table: Table, partition: i32) -> Option<u64> {
        self.commits
            .iter()
            .flat_map(|(_, firsts)| firsts)
            .filter(|(t, p, _)| *t == table && *p == partition)
            .map(|(_, _, first)| *first)
            .min()
    }
}

impl StateStore {
    /// Makes a commit [`StateStore::write_commit`] wrote durable (an fsync of the WAL,
    /// when the store syncs), then lets it be seen: its horizons published, its keys
    /// answered from memory, its outbox pages readable, its fraud log page foldable.
    /// Call in the order the commits were written (see the module docs).
    pub fn make_durable(&self, written: WrittenCommit) -> Result<(), StateError> {
        let Some(w) = written.inner else {
            return Ok(());
        };
        // The batch is in the log (the OS has it), not yet synced or returned.
        fail_point::hit(fail_point::COMMIT_INSIDE);
        if self.sync {
            self.db.flush_wal(true).map_err(|e| self.rocks(e))?;
        }
        fail_point::hit(fail_point::COMMIT_AFTER);
        // The horizons the batch carries are committed now: published before anything
        // judges an entry by them, as a reopen publishes the stored ones. Without this,
        // a restore's partition (its entries and its horizon in one batch) was judged
        // by the global horizon until the pipeline's first batch published its own,
        // and on a store holding partitions further on, that expired live entries.
        for h in w.horizons {
            self.publish_horizon(h);
        }
        lock(&self.unsynced_outbox).durable(w.outbox_ticket);
        if let Some(page) = w.fraud_page {
            self.fraud_page_durable(page);
        }
        // Only now, with the batch durable, may its keys be answered from memory.
        self.record_commit(&w.ops, w.pages, w.fraud_page.is_some())?;
        self.fold_fraud_log_if_due()?;
        self.refresh_size_estimate();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fraud_log::FOLD_PAGES;
    use super::*;
    use crate::{StateBatch, StoreOptions};

    fn rows(seqs: std::ops::Range<u64>) -> StateBatch {
        let mut b = StateBatch::new();
        for seq in seqs {
            b.put_outbox(Table::Payments, 0, seq, format!("row {seq}"));
        }
        b
    }

    fn readable(s: &StateStore) -> Vec<u64> {
        let rows = s.outbox_rows(Table::Payments, 0, 100).unwrap();
        rows.into_iter().map(|(seq, _)| seq).collect()
    }

    /// The relay reads what `outbox_rows` reads: a row a power loss could still take
    /// back is never delivered.
    #[test]
    fn a_written_commits_rows_are_read_only_once_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        s.commit(rows(0..3)).unwrap();
        let a = s.write_commit(rows(3..5)).unwrap();
        let b = s.write_commit(rows(5..8)).unwrap();
        assert_eq!(readable(&s), [0, 1, 2]);
        s.make_durable(a).unwrap();
        assert_eq!(readable(&s), [0, 1, 2, 3, 4]);
        s.make_durable(b).unwrap();
        assert_eq!(readable(&s), (0..8).collect::<Vec<_>>());
        // Delivered rows still go as before.
        s.outbox_delete_through(Table::Payments, 0, 4).unwrap();
        assert_eq!(readable(&s), [5, 6, 7]);
    }

    /// A fraud value as the fraud crate stores one: its time first.
    fn fraud_value(c: u64) -> Vec<u8> {
        [(c as i64).to_be_bytes().as_slice(), b"state"].concat()
    }

    fn fraud_commit(c: u64) -> StateBatch {
        let mut b = StateBatch::new();
        b.put_fraud(format!("card/{c}"), fraud_value(c));
        b
    }

    /// A background fold takes the pages of durable commits only: past them a page
    /// may still be being written, and a fold would take its number for a gap.
    #[test]
    fn a_fold_due_at_a_durable_step_leaves_the_pages_of_commits_not_durable_yet() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        for c in 0..FOLD_PAGES - 1 {
            s.commit(fraud_commit(c)).unwrap();
        }
        let last_due = s.write_commit(fraud_commit(FOLD_PAGES - 1)).unwrap();
        let next = s.write_commit(fraud_commit(FOLD_PAGES)).unwrap();
        assert_eq!(s.fraud_log_pages(), FOLD_PAGES + 1);
        // Its page makes the fold due.
        s.make_durable(last_due).unwrap();
        s.finish_fraud_fold().unwrap();
        assert_eq!(s.fraud_log_folds().pages, FOLD_PAGES);
        assert_eq!(
            s.fraud_log_pages(),
            1,
            "the page not durable stays unfolded"
        );
        s.make_durable(next).unwrap();
        s.settle_fraud_log().unwrap();
        for c in 0..=FOLD_PAGES {
            assert_eq!(
                s.get_fraud(format!("card/{c}").as_bytes()).unwrap(),
                Some(fraud_value(c)),
                "card {c}"
            );
        }
    }

    #[test]
    fn a_streams_pages_are_hidden_from_its_oldest_unsynced_commit_on() {
        let mut u = UnsyncedOutbox::default();
        let a = u.writing(vec![(Table::Payments, 0, 10), (Table::Payments, 1, 4)]);
        let b = u.writing(vec![(Table::Payments, 0, 15)]);
        let empty = u.writing(Vec::new());
        assert_eq!(u.hidden_from(Table::Payments, 0), Some(10));
        assert_eq!(u.hidden_from(Table::Payments, 1), Some(4));
        assert_eq!(u.hidden_from(Table::DedupAudit, 0), None);
        u.durable(empty);
        u.durable(a);
        assert_eq!(u.hidden_from(Table::Payments, 0), Some(15));
        assert_eq!(u.hidden_from(Table::Payments, 1), None);
        u.durable(b);
        assert_eq!(u.hidden_from(Table::Payments, 0), None);
    }
}
