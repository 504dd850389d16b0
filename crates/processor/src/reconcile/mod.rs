//! `paydedup-processor reconcile`: prove the counts.
//!
//! Reads what the sink holds and checks the invariants that make the output
//! trustworthy — and, given the simulator's manifest, that it equals the ground truth.
//! Prints a PASS/FAIL table; any FAIL makes the command exit non-zero.
//!
//! Why these checks, together, prove exactly-once:
//! - [`source_accounting`]: every input record became exactly one row of one of the
//!   four record tables (offsets contiguous, each once) — nothing lost, nothing twice;
//! - [`exactly_once`]: no transaction id is in `payments` twice — dedup held;
//! - [`sequence_density`]: every table's outbox sequences are 0..n per partition — the
//!   relay delivered each committed row once;
//! - [`amounts`]: `payment_metrics` agrees with the payments it aggregates;
//! - [`ground_truth`]: the classification (unique, duplicate, conflict, late, invalid)
//!   and the sums equal the simulator's manifest.
//!
//! The list of checks is one type, [`CheckKind`] (in [`check`]), named after the
//! reconciliation views of `sql/002_reconciliation_views.sql`. The file sink's output
//! is read as a typed [`Ledger`] and judged by the pure functions of the modules above;
//! the warehouse is judged by the views themselves ([`bigquery`]). Both feed the same
//! ground-truth comparison.

pub mod amounts;
pub mod bigquery;
pub mod check;
pub mod exactly_once;
pub mod ground_truth;
pub mod ledger;
pub mod sequence_density;
pub mod source_accounting;

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use paydedup_manifest::Manifest;
use paydedup_sink::bigquery::Warehouse;

pub use check::{Check, CheckKind};
pub use ground_truth::Observed;
pub use ledger::Ledger;

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// What to reconcile: `file:DIR` (the file sink's output) or `bigquery:PROJECT.DATASET`.
    #[arg(long)]
    pub output: String,
    #[command(flatten)]
    pub bigquery: crate::config::BigQueryArgs,
    /// The simulator's manifest; adds the ground-truth checks.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Window size used by the processor, seconds.
    #[arg(long, default_value_t = 60)]
    pub window_secs: i64,
}

/// Runs the checks `args` asks for; returns (the table, all passed).
pub fn run(args: &ReconcileArgs) -> anyhow::Result<(String, bool)> {
    let manifest = args.manifest.as_deref().map(Manifest::load).transpose()?;
    let checks = match args.output.split_once(':') {
        Some(("file", dir)) => {
            reconcile_files(Path::new(dir), manifest.as_ref(), args.window_secs)?
        }
        Some(("bigquery", target)) => {
            let wh = Warehouse::connect(&args.bigquery.config(target)?)?;
            bigquery::reconcile(&wh, manifest.as_ref())?
        }
        _ => bail!(
            "unknown output `{}`: expected file:DIR or bigquery:PROJECT.DATASET",
            args.output
        ),
    };
    Ok(render(&checks))
}

/// All checks over a file sink's output.
pub fn reconcile_files(
    dir: &Path,
    manifest: Option<&Manifest>,
    window_secs: i64,
) -> anyhow::Result<Vec<Check>> {
    if window_secs <= 0 {
        bail!("--window-secs must be positive, got {window_secs}");
    }
    let ledger = Ledger::read(dir)?;
    let mut checks = vec![exactly_once::check(&ledger.payments)];
    checks.extend(source_accounting::check(&ledger.source_offsets()));
    for (table, seqs) in ledger.sequences() {
        checks.push(sequence_density::check(table.name(), &seqs));
    }
    checks.push(amounts::check(
        &ledger.payments,
        &ledger.metrics,
        window_secs,
    ));
    if let Some(m) = manifest {
        checks.extend(ground_truth::check(&ledger.observed(), m));
    }
    Ok(checks)
}

/// Formats the table; returns (text, all passed). Each line ends in PASS or FAIL; the
/// last line starts with `PASS: all` or `FAIL:` (scripts and tests match on these).
pub fn render(checks: &[Check]) -> (String, bool) {
    let names: Vec<String> = checks.iter().map(Check::name).collect();
    let width = names.iter().map(String::len).max().unwrap_or(10).max(5);
    let mut out = format!(
        "{:<width$}  {:>22}  {:>22}  RESULT\n",
        "CHECK", "EXPECTED", "ACTUAL"
    );
    for (c, name) in checks.iter().zip(&names) {
        out.push_str(&format!(
            "{:<width$}  {:>22}  {:>22}  {}\n",
            name,
            c.expected,
            c.actual,
            if c.pass { "PASS" } else { "FAIL" }
        ));
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    out.push_str(&if failed == 0 {
        format!("PASS: all {} checks passed\n", checks.len())
    } else {
        format!("FAIL: {failed} of {} checks failed\n", checks.len())
    });
    (out, failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, table: &str, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(format!("{table}.jsonl")), text).unwrap();
    }

    fn payment(id: &str, offset: i64, seq: u64) -> String {
        format!(
            r#"{{"transaction_id":"{id}","event_time":"2024-05-01T12:00:30Z","amount_minor":100,"currency":"EUR","source_partition":0,"source_offset":{offset},"outbox_seq":{seq}}}"#
        )
    }

    /// Two payments and a duplicate of the first, with their metrics row.
    fn good_output(dir: &Path) {
        write(dir, "payments", &[payment("a", 0, 0), payment("b", 1, 1)]);
        write(
            dir,
            "dedup_audit",
            &[
                r#"{"kind":"duplicate","source_partition":0,"source_offset":2,"outbox_seq":0}"#
                    .into(),
            ],
        );
        write(
            dir,
            "payment_metrics",
            &[r#"{"window_start":"2024-05-01T12:00:00Z","currency":"EUR","payment_count":2,"amount_minor_sum":200,"source_partition":0,"outbox_seq":0}"#.into()],
        );
    }

    #[test]
    fn good_output_passes_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        good_output(dir.path());
        let checks = reconcile_files(dir.path(), None, 60).unwrap();
        // exactly_once, one partition, five tables, amounts.
        assert_eq!(checks.len(), 1 + 1 + 5 + 1);
        let (table, ok) = render(&checks);
        assert!(ok, "{table}");
        assert!(table.contains("PASS: all 8 checks passed"), "{table}");
    }

    #[test]
    fn a_doubled_payment_fails_naming_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        good_output(dir.path());
        let doubled = [payment("a", 0, 0), payment("b", 1, 1), payment("a", 0, 0)];
        write(dir.path(), "payments", &doubled);
        let (table, ok) = render(&reconcile_files(dir.path(), None, 60).unwrap());
        assert!(!ok);
        let failing: Vec<&str> = table.lines().filter(|l| l.ends_with("FAIL")).collect();
        assert!(
            failing.iter().any(|l| l.starts_with("exactly_once")),
            "{table}"
        );
        assert!(
            failing.iter().any(|l| l.starts_with("source_accounting")),
            "{table}"
        );
        assert!(
            failing
                .iter()
                .any(|l| l.starts_with("sequence_density: payments")),
            "{table}"
        );
        assert!(failing.iter().any(|l| l.starts_with("amounts")), "{table}");
        assert!(table.ends_with("FAIL: 4 of 8 checks failed\n"), "{table}");
    }

    #[test]
    fn a_bad_window_or_output_is_an_error_not_a_verdict() {
        let dir = tempfile::tempdir().unwrap();
        assert!(reconcile_files(dir.path(), None, 0).is_err());
        let args = ReconcileArgs {
            output: "s3:bucket".into(),
            bigquery: Default::default(),
            manifest: None,
            window_secs: 60,
        };
        assert!(run(&args)
            .unwrap_err()
            .to_string()
            .contains("unknown output"));
    }
}
