//! `v_source_accounting`: every input record became exactly one row.
//!
//! Each record the processor consumed ends in exactly one of `payments`, `dedup_audit`,
//! `late_events` or `processing_errors`, and carries its Kafka offset. So, per
//! partition, the offsets found across the four tables must be one contiguous range
//! with each offset once. A gap is a record lost (skipped, or its row never
//! delivered); a repeat is a record counted twice.
//!
//! The range starts at the lowest offset present, not at 0: a topic whose first
//! records expired before the processor read them, or a scheduled run that checks a
//! recent range (`super::settled`), starts mid-partition. Gaps inside it still fail.

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};

/// What one partition's rows say about its offsets. The warehouse computes these in
/// SQL, the file path from the rows; [`judge`] gives both the same verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetStats {
    pub records: u64,
    pub distinct: u64,
    pub first: i64,
    pub last: i64,
}

impl OffsetStats {
    /// The stats of a partition's offsets (any order); `None` for no offsets.
    pub fn of(mut offsets: Vec<i64>) -> Option<OffsetStats> {
        offsets.sort_unstable();
        let (first, last) = (*offsets.first()?, *offsets.last()?);
        let records = offsets.len() as u64;
        offsets.dedup();
        Some(OffsetStats {
            records,
            distinct: offsets.len() as u64,
            first,
            last,
        })
    }
}

/// One check per partition over `(partition, offset)` pairs.
pub fn check(offsets: &[(i32, i64)]) -> Vec<Check> {
    let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &(p, o) in offsets {
        per.entry(p).or_default().push(o);
    }
    per.into_iter()
        .filter_map(|(p, offs)| Some(judge(p, &OffsetStats::of(offs)?)))
        .collect()
}

/// Passes when the offsets `first..=last` are all there, each once.
pub fn judge(p: i32, s: &OffsetStats) -> Check {
    let span = i128::from(s.last) - i128::from(s.first) + 1;
    let expected = format!("{span} records");
    let pass = i128::from(s.records) == span && i128::from(s.distinct) == span;
    let actual = if pass {
        expected.clone()
    } else {
        format!("{} records, {} distinct", s.records, s.distinct)
    };
    Check::judged(
        CheckKind::SourceAccounting,
        format!(
            "partition {p} offsets {}..={} contiguous, once each",
            s.first, s.last
        ),
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

    #[test]
    fn stats_from_the_warehouse_are_judged_alike() {
        let s = OffsetStats::of(vec![12, 10, 11]).unwrap();
        assert_eq!(
            s,
            OffsetStats {
                records: 3,
                distinct: 3,
                first: 10,
                last: 12
            }
        );
        assert!(judge(0, &s).pass);
        let gap = OffsetStats { last: 13, ..s };
        assert!(!judge(0, &gap).pass);
        assert_eq!(OffsetStats::of(Vec::new()), None);
    }
}
