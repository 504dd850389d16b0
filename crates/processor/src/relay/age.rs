//! [`OutboxAges`]: how long the oldest undelivered outbox row has waited.
//!
//! The depth says how many rows wait; an operator also needs to know for how long,
//! because a single stuck (table, partition) behind a steady flow keeps the depth flat
//! while its rows age. Rows carry no commit time, so each commit records, per stream
//! it added rows to, the stream's end sequence (exclusive) and the instant; delivering
//! through a sequence drops the marks it covers. The oldest remaining mark over all
//! streams is the oldest undelivered row's commit instant.
//!
//! Marks are pushed *before* the commit is written (as the depth is counted before):
//! the relay may deliver the rows the moment they are on disk, and a mark pushed after
//! that delivery would never be dropped. Rows found in the outbox at start get the
//! start instant: their age is counted from this process's start, a lower bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paydedup_state::Table;

/// A stream's commits not yet fully delivered: (end sequence exclusive, commit
/// instant), oldest first.
type Marks = VecDeque<(u64, Instant)>;

#[derive(Default)]
pub struct OutboxAges {
    streams: Mutex<BTreeMap<(Table, i32), Marks>>,
}

impl OutboxAges {
    /// Rows below `end` in each stream were committed at `at`.
    pub fn committed(&self, ends: impl IntoIterator<Item = (Table, i32, u64)>, at: Instant) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        for (table, partition, end) in ends {
            let marks = streams.entry((table, partition)).or_default();
            if marks.back().is_none_or(|&(last, _)| end > last) {
                marks.push_back((end, at));
            }
        }
    }

    /// The sink acknowledged (or dead-lettered) the stream's rows through `last_seq`.
    pub fn delivered(&self, table: Table, partition: i32, last_seq: u64) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        if let Some(marks) = streams.get_mut(&(table, partition)) {
            while marks.front().is_some_and(|&(end, _)| end <= last_seq + 1) {
                marks.pop_front();
            }
        }
    }

    /// How long the oldest undelivered row has waited; zero when none waits.
    pub fn oldest(&self, now: Instant) -> Duration {
        let Ok(streams) = self.streams.lock() else {
            return Duration::ZERO;
        };
        streams
            .values()
            .filter_map(|marks| marks.front())
            .map(|&(_, at)| now.saturating_duration_since(at))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_stuck_stream_keeps_its_age_while_others_flow() {
        let ages = OutboxAges::default();
        let t0 = Instant::now();
        ages.committed([(Table::Payments, 0, 10), (Table::Payments, 1, 5)], t0);
        ages.committed([(Table::Payments, 0, 20)], t0 + S);
        ages.delivered(Table::Payments, 0, 19); // stream 0 drains, stream 1 is stuck
        assert_eq!(ages.oldest(t0 + 10 * S), 10 * S);
        ages.delivered(Table::Payments, 1, 4);
        assert_eq!(ages.oldest(t0 + 10 * S), Duration::ZERO);
    }

    #[test]
    fn a_partial_delivery_keeps_the_commit_it_did_not_finish() {
        let ages = OutboxAges::default();
        let t0 = Instant::now();
        ages.committed([(Table::Payments, 0, 10)], t0);
        ages.committed([(Table::Payments, 0, 20)], t0 + 5 * S);
        ages.delivered(Table::Payments, 0, 8); // row 9 of the first commit still waits
        assert_eq!(ages.oldest(t0 + 6 * S), 6 * S);
        ages.delivered(Table::Payments, 0, 9);
        assert_eq!(ages.oldest(t0 + 6 * S), S);
    }

    #[test]
    fn other_tables_streams_are_separate_and_old_ends_are_not_pushed_twice() {
        let ages = OutboxAges::default();
        let t0 = Instant::now();
        ages.committed([(Table::Payments, 0, 10)], t0);
        ages.committed([(Table::Payments, 0, 10)], t0 + 3 * S); // no new rows
        ages.delivered(Table::Payments, 0, 9);
        assert_eq!(ages.oldest(t0 + 4 * S), Duration::ZERO);
        ages.committed([(Table::Payments, 0, 11)], t0 + 4 * S);
        ages.delivered(Table::Payments, 3, 100); // another stream: no effect
        assert_eq!(ages.oldest(t0 + 5 * S), S);
    }
}
