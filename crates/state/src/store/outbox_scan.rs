//! Where a read of an outbox stream starts: past the pages deliveries deleted.
//!
//! **Why.** A delivery deletes the pages it emptied with one range deletion
//! (`StateStore::outbox_delete_through`), and the relay reads each stream with a new
//! iterator. A deleted page stays in the column family's memtable, as an entry under
//! a tombstone, until a flush, and the outbox's memtable holds only keys (the pages
//! are in blob files), so it flushes rarely: a read from the stream's first key
//! stepped over every page deleted since, and over their tombstones. At 1,000
//! records/s, in batches cut by the 10 ms linger, the relay's reads were most of the
//! processor's CPU (docs/benchmarks.md, thirty-sixth step). A read that starts at the
//! first page kept seeks past them.
//!
//! **Invariant: a stream has no page below its entry here.** A delivery sets the
//! entry to the first page it kept, once its deletion is written (every page below
//! was deleted by it or before it). So a read may start at the entry: it skips only
//! deleted pages. What could put a page below the entry drops it: forgetting a
//! stream's partition (its sequences start again at 0) and any commit that writes a
//! page below it. Memory only: after an open a stream has no entry, and its first
//! read starts at the stream's beginning.
//!
//! The commit's check and a delivery's update are not one step: a delivery that
//! lands between a commit's check and its write could set an entry above that page.
//! It cannot happen as the processor runs: a stream's sequences restart (the only way
//! to write below a delivered page) only when its partition is forgotten or restored,
//! both before the relay starts on the store, and a running stream's new pages start
//! past everything delivered. (The outbox floor relies on the same.)

use std::collections::HashMap;

use crate::table::Table;

#[derive(Debug, Default)]
pub(super) struct OutboxScanFrom {
    first_kept: HashMap<(Table, i32), u64>,
}

impl OutboxScanFrom {
    /// The first sequence a read of the stream need look at, if known.
    pub(super) fn get(&self, table: Table, partition: i32) -> Option<u64> {
        self.first_kept.get(&(table, partition)).copied()
    }

    /// A delivery deleted every page of the stream below `first_kept`.
    pub(super) fn deleted_below(&mut self, table: Table, partition: i32, first_kept: u64) {
        self.first_kept.insert((table, partition), first_kept);
    }

    /// A page starting at `first` is being written: below the entry, the entry goes.
    pub(super) fn writing(&mut self, table: Table, partition: i32, first: u64) {
        if self.get(table, partition).is_some_and(|kept| first < kept) {
            self.first_kept.remove(&(table, partition));
        }
    }

    /// The partitions' streams are forgotten (their sequences start again).
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        self.first_kept.retain(|(_, p), _| !partitions.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_below_the_entry_or_a_forgotten_partition_drops_it() {
        let mut s = OutboxScanFrom::default();
        assert_eq!(s.get(Table::Payments, 0), None);
        s.deleted_below(Table::Payments, 0, 100);
        s.deleted_below(Table::DedupAudit, 1, 7);
        s.writing(Table::Payments, 0, 100);
        s.writing(Table::Payments, 0, 250);
        assert_eq!(s.get(Table::Payments, 0), Some(100));
        s.writing(Table::Payments, 0, 99);
        assert_eq!(s.get(Table::Payments, 0), None);
        s.forget(&[1]);
        assert_eq!(s.get(Table::DedupAudit, 1), None);
    }
}
