//! The contract: every check `reconcile` runs, as one list.
//!
//! The first four kinds are the rules of the reconciliation views in
//! `sql/002_reconciliation_views.sql`; [`CheckKind::view`] names the view, so the file
//! sink (checked here, in Rust) and the warehouse (checked by the views) are judged by
//! the same rules under the same names. The `Manifest*` kinds compare the output with
//! the simulator's ground truth (`paydedup-manifest`) and have no view.

use std::fmt::Display;

/// Which invariant a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Rows in `payments` = distinct transaction ids: no payment was delivered twice.
    ExactlyOnce,
    /// Per partition, the source offsets found in the four record tables form one
    /// contiguous range, each offset once: every input record became exactly one row.
    SourceAccounting,
    /// Per (table, partition), `outbox_seq` is 0..n: the relay lost and repeated nothing.
    SequenceDensity,
    /// Per window and currency, the payments' sum = the `payment_metrics` sum.
    AmountReconciliation,
    /// `totals.unique` = rows in `payments`.
    ManifestUnique,
    /// `totals.duplicate + totals.replay` = `dedup_audit` rows of kind duplicate.
    ManifestDuplicates,
    /// `totals.conflict` = `dedup_audit` rows of kind conflict.
    ManifestConflicts,
    /// `totals.late` = rows in `late_events`.
    ManifestLate,
    /// `totals.malformed` = rows in `processing_errors`, and so per error code.
    ManifestInvalid,
    /// `by_partition[p].records` = rows of partition p in the four record tables.
    ManifestRecords,
    /// `by_currency[c].unique_amount_minor` = sum of `payments.amount_minor` in c.
    ManifestAmount,
}

impl CheckKind {
    /// Every kind, in the order the table prints them.
    pub const ALL: [CheckKind; 11] = [
        CheckKind::ExactlyOnce,
        CheckKind::SourceAccounting,
        CheckKind::SequenceDensity,
        CheckKind::AmountReconciliation,
        CheckKind::ManifestUnique,
        CheckKind::ManifestDuplicates,
        CheckKind::ManifestConflicts,
        CheckKind::ManifestLate,
        CheckKind::ManifestInvalid,
        CheckKind::ManifestRecords,
        CheckKind::ManifestAmount,
    ];

    /// The reconciliation view (with a `pass` column) that states this rule in SQL.
    pub fn view(self) -> Option<&'static str> {
        match self {
            CheckKind::ExactlyOnce => Some("v_exactly_once"),
            CheckKind::SourceAccounting => Some("v_source_accounting"),
            CheckKind::SequenceDensity => Some("v_sequence_density"),
            CheckKind::AmountReconciliation => Some("v_amount_reconciliation"),
            _ => None,
        }
    }

    /// The name that starts the check's line in the table.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::ExactlyOnce => "exactly_once",
            CheckKind::SourceAccounting => "source_accounting",
            CheckKind::SequenceDensity => "sequence_density",
            CheckKind::AmountReconciliation => "amounts",
            CheckKind::ManifestUnique => "manifest_unique",
            CheckKind::ManifestDuplicates => "manifest_duplicates",
            CheckKind::ManifestConflicts => "manifest_conflicts",
            CheckKind::ManifestLate => "manifest_late",
            CheckKind::ManifestInvalid => "manifest_invalid",
            CheckKind::ManifestRecords => "manifest_records",
            CheckKind::ManifestAmount => "manifest_amount",
        }
    }
}

/// One line of the table: a rule applied to one subject (a table, a partition, a
/// currency...), what it should be, what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    pub subject: String,
    pub expected: String,
    pub actual: String,
    pub pass: bool,
}

impl Check {
    /// Passes when `actual == expected`.
    pub fn equal<T: PartialEq + Display>(
        kind: CheckKind,
        subject: impl Into<String>,
        expected: T,
        actual: T,
    ) -> Check {
        Check {
            kind,
            subject: subject.into(),
            pass: expected == actual,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// A verdict reached by the caller, with its own words for expected and actual.
    pub fn judged(
        kind: CheckKind,
        subject: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
        pass: bool,
    ) -> Check {
        Check {
            kind,
            subject: subject.into(),
            expected: expected.into(),
            actual: actual.into(),
            pass,
        }
    }

    /// `kind: subject`, as printed.
    pub fn name(&self) -> String {
        format!("{}: {}", self.kind.name(), self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const VIEWS_SQL: &str = include_str!("../../../../sql/002_reconciliation_views.sql");

    /// The views of the SQL file that have a `pass` column.
    fn pass_views_in_sql() -> BTreeSet<String> {
        VIEWS_SQL
            .split("CREATE OR REPLACE VIEW `${dataset}.")
            .skip(1)
            .filter(|body| body.contains(" AS pass"))
            .filter_map(|body| body.split('`').next().map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_checked_views_are_exactly_the_sql_views_with_a_pass_column() {
        let ours: BTreeSet<String> = CheckKind::ALL
            .iter()
            .filter_map(|k| k.view())
            .map(str::to_owned)
            .collect();
        assert_eq!(ours, pass_views_in_sql());
        assert_eq!(ours.len(), 4);
    }

    #[test]
    fn equal_passes_only_on_equal_values() {
        let ok = Check::equal(CheckKind::ManifestLate, "late_events", 3, 3);
        assert!(ok.pass);
        assert_eq!(ok.name(), "manifest_late: late_events");
        let off_by_one = Check::equal(CheckKind::ManifestLate, "late_events", 3, 4);
        assert!(!off_by_one.pass);
        assert_eq!(
            (off_by_one.expected.as_str(), off_by_one.actual.as_str()),
            ("3", "4")
        );
    }

    #[test]
    fn names_are_unique() {
        let names: BTreeSet<&str> = CheckKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), CheckKind::ALL.len());
    }
}
