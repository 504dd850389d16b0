//! `v_source_accounting`: every input record became exactly one row.
//!
//! Each record the processor consumed ends in exactly one of `payments`, `dedup_audit`,
//! `late_events` or `processing_errors`, and carries its Kafka offset. So, per
//! partition, the offsets found across the four tables must be one contiguous range
//! with each offset once. A gap is a record lost (skipped, or its row never
//! delivered); a repeat is a record counted twice.

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};

/// One check per partition over `(partition, offset)` pairs.
pub fn check(offsets: &[(i32, i64)]) -> Vec<Check> {
    let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &(p, o) in offsets {
        per.entry(p).or_default().push(o);
    }
    per.into_iter()
        .map(|(p, offs)| partition(p, offs))
        .collect()
}

fn partition(p: i32, mut offs: Vec<i64>) -> Check {
    offs.sort_unstable();
    let first = offs.first().copied().unwrap_or(0);
    let last = offs.last().copied().unwrap_or(-1);
    let span = (last - first + 1) as usize;
    let records = offs.len();
    offs.dedup();
    let distinct = offs.len();
    let expected = format!("{span} records");
    let pass = records == span && distinct == span;
    let actual = if pass {
        expected.clone()
    } else {
        format!("{records} records, {distinct} distinct")
    };
    Check::judged(
        CheckKind::SourceAccounting,
        format!("partition {p} offsets {first}..={last} contiguous, once each"),
        expected,
        actual,
        pass,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_offsets_pass_per_partition() {
        // Partition 1 starts mid-topic (earlier runs' records): only contiguity counts.
        let checks = check(&[(0, 1), (0, 0), (1, 100), (0, 2), (1, 101)]);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.pass), "{checks:?}");
        assert_eq!(
            checks[1].name(),
            "source_accounting: partition 1 offsets 100..=101 contiguous, once each"
        );
        assert_eq!(checks[0].actual, "3 records");
    }

    #[test]
    fn an_offset_gap_fails() {
        let checks = check(&[(0, 0), (0, 1), (0, 3)]);
        assert!(!checks[0].pass);
        assert_eq!(checks[0].expected, "4 records");
        assert_eq!(checks[0].actual, "3 records, 3 distinct");
    }

    #[test]
    fn an_offset_counted_twice_fails() {
        // The same record as a payment and as an audit row: span is right, count is not.
        let checks = check(&[(0, 0), (0, 1), (0, 1), (0, 2)]);
        assert!(!checks[0].pass);
        assert_eq!(checks[0].actual, "4 records, 3 distinct");
        // A repeat hiding a gap: the count equals the span, the distinct count does not.
        let checks = check(&[(0, 0), (0, 1), (0, 1), (0, 3)]);
        assert!(!checks[0].pass);
        assert_eq!(checks[0].expected, "4 records");
    }
}
