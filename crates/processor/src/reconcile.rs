//! `paydedup-processor reconcile`: prove the counts.
//!
//! Reads what the sink holds and checks, table by table, the invariants that make the
//! output trustworthy — and, given the simulator's manifest, that it equals the ground
//! truth. Prints a PASS/FAIL table; any FAIL makes the command exit non-zero.
//!
//! The checks mirror the reconciliation views in `sql/` (same names), so the file sink
//! and the warehouse are judged by the same rules:
//! - `exactly_once`: rows in payments = distinct transaction ids;
//! - `source_accounting`: per partition, the source offsets in payments, dedup_audit,
//!   late_events and processing_errors form one contiguous range, each offset once;
//! - `sequence_density`: per (table, partition), outbox sequences are 0..n;
//! - `amounts`: per partition, window and currency, payments sum = payment_metrics sum;
//! - `manifest_*`: counts and sums equal the simulator's ground truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::DateTime;
use clap::Args;
use paydedup_sink::bigquery::Warehouse;
use serde_json::Value;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub pass: bool,
}

fn check(name: impl Into<String>, expected: impl ToString, actual: impl ToString) -> Check {
    let (expected, actual) = (expected.to_string(), actual.to_string());
    Check {
        pass: expected == actual,
        name: name.into(),
        expected,
        actual,
    }
}

fn read_rows(dir: &Path, table: &str) -> anyhow::Result<Vec<Value>> {
    let path = dir.join(format!("{table}.jsonl"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}

fn micros(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

/// All checks over a file sink's output.
pub fn reconcile_files(
    dir: &Path,
    manifest: Option<&Value>,
    window_secs: i64,
) -> anyhow::Result<Vec<Check>> {
    let payments = read_rows(dir, "payments")?;
    let audit = read_rows(dir, "dedup_audit")?;
    let late = read_rows(dir, "late_events")?;
    let errors = read_rows(dir, "processing_errors")?;
    let metrics = read_rows(dir, "payment_metrics")?;
    let mut checks = Vec::new();

    let mut ids: Vec<&str> = payments
        .iter()
        .filter_map(|r| r["transaction_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    checks.push(check(
        "exactly_once: payments rows = distinct ids",
        ids.len(),
        payments.len(),
    ));

    // Source accounting per partition.
    let mut offsets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in payments.iter().chain(&audit).chain(&late).chain(&errors) {
        offsets
            .entry(i(&r["source_partition"]))
            .or_default()
            .push(i(&r["source_offset"]));
    }
    for (p, offs) in offsets.iter_mut() {
        offs.sort_unstable();
        let first = offs.first().copied().unwrap_or(0);
        let last = offs.last().copied().unwrap_or(-1);
        let span = (last - first + 1) as usize;
        let mut distinct = offs.clone();
        distinct.dedup();
        checks.push(check(
            format!(
                "source_accounting: partition {p} offsets {first}..={last} contiguous, once each"
            ),
            format!("{span} records"),
            format!("{} records, {} distinct", offs.len(), distinct.len()),
        ));
        if offs.len() != span || distinct.len() != span {
            if let Some(c) = checks.last_mut() {
                c.pass = false;
            }
        } else if let Some(c) = checks.last_mut() {
            c.pass = true;
            c.actual = c.expected.clone();
        }
    }

    // Sequence density per (table, partition).
    for (name, rows) in [
        ("payments", &payments),
        ("dedup_audit", &audit),
        ("late_events", &late),
        ("processing_errors", &errors),
        ("payment_metrics", &metrics),
    ] {
        let mut per: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for r in rows.iter() {
            per.entry(i(&r["source_partition"]))
                .or_default()
                .push(i(&r["outbox_seq"]));
        }
        let mut bad = Vec::new();
        for (p, mut seqs) in per {
            seqs.sort_unstable();
            if seqs.iter().enumerate().any(|(k, s)| *s != k as i64) {
                bad.push(p);
            }
        }
        checks.push(check(
            format!("sequence_density: {name}"),
            "no gap, no repeat",
            if bad.is_empty() {
                "no gap, no repeat".to_owned()
            } else {
                format!("broken in partitions {bad:?}")
            },
        ));
    }

    // Amounts per (partition, window, currency).
    let window = window_secs * 1_000_000;
    let mut from_payments: BTreeMap<(i64, i64, String), (i64, i128)> = BTreeMap::new();
    for r in &payments {
        let start = micros(&r["event_time"]).div_euclid(window) * window;
        let e = from_payments
            .entry((
                i(&r["source_partition"]),
                start,
                r["currency"].as_str().unwrap_or("").to_owned(),
            ))
            .or_default();
        e.0 += 1;
        e.1 += i128::from(i(&r["amount_minor"]));
    }
    let mut from_metrics: BTreeMap<(i64, i64, String), (i64, i128)> = BTreeMap::new();
    for r in &metrics {
        let e = from_metrics
            .entry((
                i(&r["source_partition"]),
                micros(&r["window_start"]),
                r["currency"].as_str().unwrap_or("").to_owned(),
            ))
            .or_default();
        e.0 += i(&r["payment_count"]);
        e.1 += i128::from(i(&r["amount_minor_sum"]));
    }
    // Windows with only duplicates have a metrics row with zero payments.
    from_metrics.retain(|_, v| v.0 != 0);
    let mismatched = from_payments
        .iter()
        .filter(|(k, v)| from_metrics.get(*k) != Some(*v))
        .count()
        + from_metrics
            .keys()
            .filter(|k| !from_payments.contains_key(*k))
            .count();
    checks.push(check(
        "amounts: windows where payments sum != metrics sum",
        0,
        mismatched,
    ));

    if let Some(m) = manifest {
        let mut observed = Observed {
            payments: payments.len() as i64,
            duplicates: audit.iter().filter(|r| r["kind"] == "duplicate").count() as i64,
            conflicts: audit.iter().filter(|r| r["kind"] == "conflict").count() as i64,
            late: late.len() as i64,
            invalid: errors.len() as i64,
            ..Observed::default()
        };
        for e in &errors {
            *observed
                .invalid_by_code
                .entry(e["error_code"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        for (p, offs) in &offsets {
            observed.records_by_partition.insert(*p, offs.len() as i64);
        }
        for r in &payments {
            *observed
                .amount_by_currency
                .entry(r["currency"].as_str().unwrap_or("").to_owned())
                .or_default() += i128::from(i(&r["amount_minor"]));
        }
        checks.extend(manifest_checks(&observed, m));
    }
    Ok(checks)
}

/// The reconciliation views of `sql/002_reconciliation_views.sql` that have a `pass`
/// column: each must have no failing row.
pub const PASS_VIEWS: [&str; 4] = [
    "v_exactly_once",
    "v_source_accounting",
    "v_sequence_density",
    "v_amount_reconciliation",
];

fn num(s: Option<String>) -> i128 {
    s.map(|v| v.split('.').next().unwrap_or("0").to_owned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// All checks over a BigQuery dataset: the views, then the manifest.
pub fn reconcile_bigquery(wh: &Warehouse, manifest: Option<&Value>) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for view in PASS_VIEWS {
        let r = wh.query(&format!(
            "SELECT COUNT(*) AS total_rows, COUNTIF(NOT pass) AS failing_rows FROM `${{dataset}}.{view}`"
        ))?;
        let failing = r.get_i64(0, "failing_rows").unwrap_or(-1);
        let total = r.get_i64(0, "total_rows").unwrap_or(0);
        checks.push(check(
            format!("view {view}: failing rows (of {total})"),
            0,
            failing,
        ));
    }
    let r = wh.query("SELECT payment_rows, distinct_ids FROM `${dataset}.v_exactly_once`")?;
    checks.push(check(
        "exactly_once: payments rows = distinct ids",
        r.get_i64(0, "distinct_ids").unwrap_or(-1),
        r.get_i64(0, "payment_rows").unwrap_or(-2),
    ));
    let Some(m) = manifest else {
        return Ok(checks);
    };
    let count =
        |sql: &str| -> anyhow::Result<i64> { Ok(wh.query(sql)?.get_i64(0, "n").unwrap_or(-1)) };
    let mut observed = Observed {
        payments: count("SELECT COUNT(*) AS n FROM `${dataset}.payments`")?,
        duplicates: count(
            "SELECT COUNT(*) AS n FROM `${dataset}.dedup_audit` WHERE kind = 'duplicate'",
        )?,
        conflicts: count(
            "SELECT COUNT(*) AS n FROM `${dataset}.dedup_audit` WHERE kind = 'conflict'",
        )?,
        late: count("SELECT COUNT(*) AS n FROM `${dataset}.late_events`")?,
        invalid: count("SELECT COUNT(*) AS n FROM `${dataset}.processing_errors`")?,
        ..Observed::default()
    };
    let codes = wh.query(
        "SELECT error_code, COUNT(*) AS n FROM `${dataset}.processing_errors` GROUP BY error_code",
    )?;
    for row in 0..codes.rows.len() {
        observed.invalid_by_code.insert(
            codes.get_str(row, "error_code").unwrap_or_default(),
            codes.get_i64(row, "n").unwrap_or(0),
        );
    }
    let parts =
        wh.query("SELECT source_partition, input_records FROM `${dataset}.v_source_accounting`")?;
    for row in 0..parts.rows.len() {
        observed.records_by_partition.insert(
            parts.get_i64(row, "source_partition").unwrap_or(-1),
            parts.get_i64(row, "input_records").unwrap_or(0),
        );
    }
    let sums = wh.query(
        "SELECT currency, SUM(amount_minor) AS s FROM `${dataset}.payments` GROUP BY currency",
    )?;
    for row in 0..sums.rows.len() {
        observed.amount_by_currency.insert(
            sums.get_str(row, "currency").unwrap_or_default(),
            num(sums.get_str(row, "s")),
        );
    }
    checks.extend(manifest_checks(&observed, m));
    Ok(checks)
}

/// What the output holds, in the terms of the simulator's manifest.
#[derive(Debug, Default)]
pub struct Observed {
    pub payments: i64,
    pub duplicates: i64,
    pub conflicts: i64,
    pub late: i64,
    pub invalid: i64,
    pub invalid_by_code: BTreeMap<String, i64>,
    pub records_by_partition: BTreeMap<i64, i64>,
    pub amount_by_currency: BTreeMap<String, i128>,
}

/// The ground-truth checks: the same for every kind of output.
pub fn manifest_checks(o: &Observed, m: &Value) -> Vec<Check> {
    let t = &m["totals"];
    let mut checks = vec![
        check("manifest_unique: payments", i(&t["unique"]), o.payments),
        check(
            "manifest_duplicates: dedup_audit kind=duplicate",
            i(&t["duplicate"]) + i(&t["replay"]),
            o.duplicates,
        ),
        check(
            "manifest_conflicts: dedup_audit kind=conflict",
            i(&t["conflict"]),
            o.conflicts,
        ),
        check("manifest_late: late_events", i(&t["late"]), o.late),
        check(
            "manifest_invalid: processing_errors",
            i(&t["malformed"]),
            o.invalid,
        ),
    ];
    if let Some(expected) = m["malformed_by_code"].as_object() {
        for (code, n) in expected {
            checks.push(check(
                format!("manifest_invalid: code {code}"),
                i(n),
                o.invalid_by_code.get(code).copied().unwrap_or(0),
            ));
        }
    }
    if let Some(parts) = m["by_partition"].as_array() {
        for (p, c) in parts.iter().enumerate() {
            checks.push(check(
                format!("manifest_records: partition {p}"),
                i(&c["records"]),
                o.records_by_partition
                    .get(&(p as i64))
                    .copied()
                    .unwrap_or(0),
            ));
        }
    }
    if let Some(cur) = m["by_currency"].as_object() {
        for (c, v) in cur {
            let expected: i128 = v["unique_amount_minor"].to_string().parse().unwrap_or(-1);
            checks.push(check(
                format!("manifest_amount: {c} minor units"),
                expected,
                o.amount_by_currency.get(c).copied().unwrap_or(0),
            ));
        }
    }
    checks
}

/// Formats the table; returns (text, all passed).
pub fn render(checks: &[Check]) -> (String, bool) {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(10)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:>22}  {:>22}  RESULT\n",
        "CHECK", "EXPECTED", "ACTUAL"
    );
    let mut all = true;
    for c in checks {
        all &= c.pass;
        out.push_str(&format!(
            "{:<width$}  {:>22}  {:>22}  {}\n",
            c.name,
            c.expected,
            c.actual,
            if c.pass { "PASS" } else { "FAIL" }
        ));
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    out.push_str(&if all {
        format!("PASS: all {} checks passed\n", checks.len())
    } else {
        format!("FAIL: {failed} of {} checks failed\n", checks.len())
    });
    (out, all)
}

pub fn run(args: &ReconcileArgs) -> anyhow::Result<(String, bool)> {
    let manifest = match &args.manifest {
        Some(p) => Some(
            serde_json::from_slice::<Value>(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("parsing manifest {}", p.display()))?,
        ),
        None => None,
    };
    let checks = match args.output.split_once(':') {
        Some(("file", dir)) => {
            reconcile_files(Path::new(dir), manifest.as_ref(), args.window_secs)?
        }
        Some(("bigquery", target)) => {
            let wh = Warehouse::connect(&args.bigquery.config(target)?)?;
            reconcile_bigquery(&wh, manifest.as_ref())?
        }
        _ => bail!(
            "unknown output `{}`: expected file:DIR or bigquery:PROJECT.DATASET",
            args.output
        ),
    };
    Ok(render(&checks))
}
