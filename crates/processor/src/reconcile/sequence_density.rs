//! `v_sequence_density`: the relay delivered every row once, in order.
//!
//! The processor numbers each (table, partition)'s rows 0, 1, 2... in the same atomic
//! commit that records the input offsets, and the sink skips sequences it already
//! holds. So the delivered sequences must be exactly 0..n: a gap is a row that was
//! committed but never delivered, a repeat is a row delivered twice.
//!
//! A scheduled run checks a range of recent rows (`super::settled`), whose sequences
//! start wherever the range starts: there, they must be dense from the lowest one
//! present ([`Start::Lowest`]).

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};

const DENSE: &str = "no gap, no repeat";

/// Where a partition's sequences must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At 0: the whole table.
    Zero,
    /// At the lowest sequence present: a range of the table.
    Lowest,
}

/// What one (table, partition)'s rows say about their sequences (computed by SQL in
/// the warehouse, from the rows for the file sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqStats {
    pub rows: u64,
    pub distinct: u64,
    pub min: u64,
    pub max: u64,
}

impl SeqStats {
    /// `None` for no rows.
    pub fn of(mut seqs: Vec<u64>) -> Option<SeqStats> {
        seqs.sort_unstable();
        let (min, max) = (*seqs.first()?, *seqs.last()?);
        let rows = seqs.len() as u64;
        seqs.dedup();
        Some(SeqStats {
            rows,
            distinct: seqs.len() as u64,
            min,
            max,
        })
    }

    /// Every sequence from the start to the max, each once.
    pub fn dense(&self, start: Start) -> bool {
        let from = match start {
            Start::Zero => 0,
            Start::Lowest => self.min,
        };
        self.min == from
            && self.rows == self.distinct
            && u128::from(self.rows) == u128::from(self.max) - u128::from(from) + 1
    }
}

/// One check per table over its rows' `(partition, outbox_seq)`.
pub fn check(table: &str, seqs: &[(i32, u64)], start: Start) -> Check {
    let mut per: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for &(p, s) in seqs {
        per.entry(p).or_default().push(s);
    }
    let stats: Vec<(i32, SeqStats)> = per
        .into_iter()
        .filter_map(|(p, seqs)| Some((p, SeqStats::of(seqs)?)))
        .collect();
    judge(table, &stats, start)
}

/// One check for a table over its partitions' stats.
pub fn judge(table: &str, stats: &[(i32, SeqStats)], start: Start) -> Check {
    let broken: Vec<i32> = stats
        .iter()
        .filter_map(|(p, s)| (!s.dense(start)).then_some(*p))
        .collect();
    let actual = if broken.is_empty() {
        DENSE.to_owned()
    } else {
        format!("broken in partitions {broken:?}")
    };
    Check::equal(CheckKind::SequenceDensity, table, DENSE.to_owned(), actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_to_n_per_partition_passes() {
        let c = check("payments", &[(0, 1), (1, 0), (0, 0), (0, 2)], Start::Zero);
        assert!(c.pass, "{c:?}");
        assert_eq!(c.name(), "sequence_density: payments");
        assert!(check("late_events", &[], Start::Zero).pass);
    }

    #[test]
    fn a_repeated_seq_fails_naming_the_partition() {
        let c = check(
            "dedup_audit",
            &[(0, 0), (1, 0), (1, 1), (1, 1)],
            Start::Zero,
        );
        assert!(!c.pass);
        assert_eq!(c.actual, "broken in partitions [1]");
    }

    #[test]
    fn a_gap_or_a_late_start_fails() {
        assert!(!check("payments", &[(0, 0), (0, 2)], Start::Zero).pass);
        assert!(!check("payments", &[(3, 1), (3, 2)], Start::Zero).pass);
    }

    #[test]
    fn a_range_may_start_late_but_not_have_a_gap_or_a_repeat() {
        // Rows 0..=99 are before the range (or expired): 100.. is dense.
        assert!(check("payments", &[(3, 101), (3, 100), (3, 102)], Start::Lowest).pass);
        assert!(!check("payments", &[(3, 100), (3, 102)], Start::Lowest).pass);
        assert!(!check("payments", &[(3, 100), (3, 101), (3, 101)], Start::Lowest).pass);
        // The same rows from the warehouse's aggregates.
        let s = SeqStats {
            rows: 3,
            distinct: 3,
            min: 100,
            max: 102,
        };
        assert!(s.dense(Start::Lowest) && !s.dense(Start::Zero));
        assert!(!SeqStats { max: 103, ..s }.dense(Start::Lowest));
    }
}
