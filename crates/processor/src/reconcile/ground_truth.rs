//! The `manifest_*` checks: the output equals the simulator's ground truth.
//!
//! The views prove the output is *consistent* (nothing lost, nothing doubled); only the
//! manifest can prove it is *right*: that each record was classified as the simulator,
//! which knows what it injected, says it must be. The output is first summarised as
//! [`Observed`] (from the ledger, or by queries on the warehouse), so the comparison
//! below is one function for every kind of output.

use std::collections::BTreeMap;

use paydedup_manifest::Manifest;

use super::check::{Check, CheckKind};

/// What the output holds, in the terms of the simulator's manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub payments: i64,
    /// `dedup_audit` rows with `kind = duplicate`.
    pub duplicates: i64,
    /// `dedup_audit` rows with `kind = conflict`.
    pub conflicts: i64,
    pub late: i64,
    /// Rows in `processing_errors`.
    pub invalid: i64,
    pub invalid_by_code: BTreeMap<String, i64>,
    /// Partition → rows in the four record tables (= input records).
    pub records_by_partition: BTreeMap<i64, i64>,
    /// Currency → sum of `payments.amount_minor`.
    pub amount_by_currency: BTreeMap<String, i128>,
}

/// Every ground-truth check: totals, then per error code, partition and currency.
pub fn check(o: &Observed, m: &Manifest) -> Vec<Check> {
    let mut checks = totals(o, m);
    checks.extend(by_code(o, m));
    checks.extend(by_partition(o, m));
    checks.extend(by_currency(o, m));
    checks
}

fn totals(o: &Observed, m: &Manifest) -> Vec<Check> {
    let t = &m.totals;
    let eq = |kind, subject: &str, expected: u64, actual: i64| {
        Check::equal(kind, subject, i128::from(expected), i128::from(actual))
    };
    vec![
        eq(CheckKind::ManifestUnique, "payments", t.unique, o.payments),
        // A retry and a replay are both "seen before, same content" to the processor.
        eq(
            CheckKind::ManifestDuplicates,
            "dedup_audit kind=duplicate",
            t.audited_duplicates(),
            o.duplicates,
        ),
        eq(
            CheckKind::ManifestConflicts,
            "dedup_audit kind=conflict",
            t.conflict,
            o.conflicts,
        ),
        eq(CheckKind::ManifestLate, "late_events", t.late, o.late),
        eq(
            CheckKind::ManifestInvalid,
            "processing_errors",
            t.malformed,
            o.invalid,
        ),
    ]
}

fn by_code(o: &Observed, m: &Manifest) -> Vec<Check> {
    m.malformed_by_code
        .iter()
        .map(|(code, n)| {
            Check::equal(
                CheckKind::ManifestInvalid,
                format!("code {code}"),
                i128::from(*n),
                i128::from(o.invalid_by_code.get(code).copied().unwrap_or(0)),
            )
        })
        .collect()
}

fn by_partition(o: &Observed, m: &Manifest) -> Vec<Check> {
    m.by_partition
        .iter()
        .enumerate()
        .map(|(p, counts)| {
            let actual = o.records_by_partition.get(&(p as i64)).copied();
            Check::equal(
                CheckKind::ManifestRecords,
                format!("partition {p}"),
                i128::from(counts.records),
                i128::from(actual.unwrap_or(0)),
            )
        })
        .collect()
}

fn by_currency(o: &Observed, m: &Manifest) -> Vec<Check> {
    m.by_currency
        .iter()
        .map(|(c, totals)| {
            Check::equal(
                CheckKind::ManifestAmount,
                format!("{c} minor units"),
                totals.unique_amount_minor,
                o.amount_by_currency.get(c).copied().unwrap_or(0),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use paydedup_manifest::{CurrencyTotals, KindCounts};

    /// A manifest and the output that matches it.
    fn matching() -> (Manifest, Observed) {
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let mut m = Manifest::new("payments", 1, 2, start, 300, 3600);
        m.totals = KindCounts {
            records: 12,
            unique: 5,
            duplicate: 2,
            replay: 1,
            conflict: 1,
            late: 2,
            late_key_known: 1,
            malformed: 1,
        };
        m.by_partition[0].records = 7;
        m.by_partition[1].records = 5;
        m.malformed_by_code.insert("invalid_json".into(), 1);
        m.by_currency.insert(
            "EUR".into(),
            CurrencyTotals {
                unique_count: 5,
                unique_amount_minor: 900,
            },
        );
        let o = Observed {
            payments: 5,
            duplicates: 3,
            conflicts: 1,
            late: 2,
            invalid: 1,
            invalid_by_code: [("invalid_json".to_owned(), 1)].into(),
            records_by_partition: [(0, 7), (1, 5)].into(),
            amount_by_currency: [("EUR".to_owned(), 900)].into(),
        };
        (m, o)
    }

    fn failing(o: &Observed, m: &Manifest) -> Vec<String> {
        check(o, m)
            .into_iter()
            .filter(|c| !c.pass)
            .map(|c| c.name())
            .collect()
    }

    #[test]
    fn matching_output_passes_every_check() {
        let (m, o) = matching();
        let checks = check(&o, &m);
        assert_eq!(checks.len(), 5 + 1 + 2 + 1);
        assert!(checks.iter().all(|c| c.pass), "{checks:?}");
        assert_eq!(
            checks[1].name(),
            "manifest_duplicates: dedup_audit kind=duplicate"
        );
        assert_eq!(checks[1].expected, "3", "duplicate + replay");
    }

    #[test]
    fn each_count_off_by_one_fails_its_own_check() {
        let (m, o) = matching();
        let off = |f: fn(&mut Observed), name: &str| {
            let mut o = o.clone();
            f(&mut o);
            assert_eq!(failing(&o, &m), vec![name.to_owned()]);
        };
        off(|o| o.payments += 1, "manifest_unique: payments");
        off(
            |o| o.duplicates -= 1,
            "manifest_duplicates: dedup_audit kind=duplicate",
        );
        off(
            |o| o.conflicts += 1,
            "manifest_conflicts: dedup_audit kind=conflict",
        );
        off(|o| o.late -= 1, "manifest_late: late_events");
        off(|o| o.invalid += 1, "manifest_invalid: processing_errors");
        off(
            |o| *o.invalid_by_code.get_mut("invalid_json").unwrap() += 1,
            "manifest_invalid: code invalid_json",
        );
        off(
            |o| *o.records_by_partition.get_mut(&1).unwrap() -= 1,
            "manifest_records: partition 1",
        );
        off(
            |o| *o.amount_by_currency.get_mut("EUR").unwrap() += 1,
            "manifest_amount: EUR minor units",
        );
    }

    #[test]
    fn what_the_output_lacks_counts_as_zero() {
        let (m, _) = matching();
        assert_eq!(failing(&Observed::default(), &m).len(), 9);
    }
}
