//! `v_sequence_density`: the relay delivered every row once, in order.
//!
//! The processor numbers each (table, partition)'s rows 0, 1, 2... in the same atomic
//! commit that records the input offsets, and the sink skips sequences it already
//! holds. So the delivered sequences must be exactly 0..n: a gap is a row that was
//! committed but never delivered, a repeat is a row delivered twice.

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};

const DENSE: &str = "no gap, no repeat";

/// One check per table over its rows' `(partition, outbox_seq)`.
pub fn check(table: &str, seqs: &[(i32, u64)]) -> Check {
    let mut per: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for &(p, s) in seqs {
        per.entry(p).or_default().push(s);
    }
    let broken: Vec<i32> = per
        .into_iter()
        .filter_map(|(p, seqs)| (!dense(seqs)).then_some(p))
        .collect();
    let actual = if broken.is_empty() {
        DENSE.to_owned()
    } else {
        format!("broken in partitions {broken:?}")
    };
    Check::equal(CheckKind::SequenceDensity, table, DENSE.to_owned(), actual)
}

/// Sorted, the k-th sequence is k.
fn dense(mut seqs: Vec<u64>) -> bool {
    seqs.sort_unstable();
    seqs.iter().enumerate().all(|(k, s)| *s == k as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_to_n_per_partition_passes() {
        let c = check("payments", &[(0, 1), (1, 0), (0, 0), (0, 2)]);
        assert!(c.pass, "{c:?}");
        assert_eq!(c.name(), "sequence_density: payments");
        assert!(check("late_events", &[]).pass);
    }

    #[test]
    fn a_repeated_seq_fails_naming_the_partition() {
        let c = check("dedup_audit", &[(0, 0), (1, 0), (1, 1), (1, 1)]);
        assert!(!c.pass);
        assert_eq!(c.actual, "broken in partitions [1]");
    }

    #[test]
    fn a_gap_or_a_late_start_fails() {
        assert!(!check("payments", &[(0, 0), (0, 2)]).pass);
        assert!(!check("payments", &[(3, 1), (3, 2)]).pass);
    }
}
