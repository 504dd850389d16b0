//! `paydedup-processor reconcile`: prove the counts.
//!
//! Reads what the sink holds and checks the invariants that make the output
//! trustworthy — and, given the simulator's manifest, that it equals the ground truth.
//! Prints a PASS/FAIL table and exits 0 (all passed), 1 (a check failed: the output is
//! wrong) or 2 (the checks could not run), optionally writing the result as Prometheus
//! metrics ([`export`]).
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
//!
//! On a live pipeline the whole output is never finished; scheduled mode
//! (`--settle-secs`, [`settled`]) checks the settled part only, with the same rules,
//! and in BigQuery through partition-filtered queries.
//!
//! The processor's settings (window size, lateness, sink) come from `run`'s own
//! configuration — its flags, `PAYDEDUP_*` variables and config file — so reconcile and
//! the run it checks cannot disagree on them.

pub mod amounts;
pub mod bigquery;
pub mod check;
pub mod exactly_once;
pub mod export;
pub mod ground_truth;
pub mod ledger;
pub mod sequence_density;
pub mod settled;
pub mod source_accounting;

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, FromArgMatches};
use paydedup_manifest::{Manifest, ManifestError};
use paydedup_sink::bigquery::Warehouse;
use paydedup_sink::SinkError;

use crate::config::{file, parse, RunConfig, SinkTarget};
pub use amounts::WindowMismatch;
pub use check::{Check, CheckKind};
pub use export::Verdict;
pub use ground_truth::Observed;
pub use ledger::{Ledger, LedgerError};
use sequence_density::Start;
pub use settled::{Bound, BoundError, Scope, Timing};

/// Arguments of `reconcile`. The processor's own settings (`run`'s flags, `PAYDEDUP_*`
/// variables and `--config` file) come with it, so the window size, the lateness and
/// the sink are read from the same configuration and cannot disagree with the run.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// What to reconcile: `file:DIR` (the file sink's output) or
    /// `bigquery:PROJECT.DATASET`. Default: the processor's `--sink`.
    #[arg(long, value_name = "TARGET")]
    pub output: Option<SinkTarget>,
    /// The simulator's manifest; adds the ground-truth checks (a whole, finished run:
    /// not with scheduled mode).
    #[arg(long, conflicts_with_all = ["settle", "settled_before"])]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub run: Box<RunConfig>,
}

/// Scheduled mode: check only what is settled (see [`settled`]).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Scheduled mode")]
pub struct ScopeArgs {
    /// Scheduled mode: check only records that reached Kafka more than SECS ago and the
    /// windows they closed; newer ones may still be in flight. Must exceed the
    /// pipeline's delivery delay (docs/operations.md, Reconcile).
    #[arg(id = "settle", long = "settle-secs", value_name = "SECS",
          value_parser = parse::seconds, conflicts_with = "settled_before")]
    pub settle: Option<Duration>,
    /// Scheduled mode with an explicit bound instead of now minus --settle-secs
    /// (RFC 3339): records that reached Kafka before TIME are settled.
    #[arg(long, value_name = "TIME")]
    pub settled_before: Option<DateTime<Utc>>,
    /// Scheduled mode: check event times from the bound minus this, seconds (down to a
    /// window boundary). At least the schedule's interval, so every record is checked.
    #[arg(id = "lookback", long = "lookback-secs", value_name = "SECS",
          default_value = "86400", value_parser = parse::seconds)]
    pub lookback: Duration,
}

/// Where the result goes besides the exit code.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Reporting")]
pub struct ExportArgs {
    /// Write the result as Prometheus metrics to PATH, replaced atomically (for
    /// node_exporter's textfile collector: a `*.prom` file in its directory).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Push the same metrics to this Prometheus Pushgateway (its root URL), job
    /// `paydedup_reconcile`.
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
}

/// Why the checks could not run (exit code 2): nothing is known about the output.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bound(#[from] BoundError),
    #[error("{}: {}", .0, cause(.0))]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("querying the warehouse: {0}")]
    Warehouse(#[from] SinkError),
    #[error("the warehouse's answer to the {query} query has no usable `{column}`")]
    Answer {
        query: &'static str,
        column: &'static str,
    },
    #[error(transparent)]
    Window(#[from] WindowMismatch),
}

/// What a foreign error's message leaves out (`ManifestError` names the file only).
fn cause(e: &dyn std::error::Error) -> String {
    e.source().map(ToString::to_string).unwrap_or_default()
}

impl From<clap::Error> for ReconcileError {
    fn from(e: clap::Error) -> ReconcileError {
        ReconcileError::Config(e.to_string().trim_end().to_owned())
    }
}

/// What a scheduled run covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Records that reached Kafka before this (microseconds) were settled.
    pub settled_before: i64,
    /// Event times from this (microseconds) were checked.
    pub since: i64,
    pub partitions: usize,
    /// Records (offsets) in the settled ranges.
    pub records: u64,
    /// (partition, window, currency) aggregates compared with the payments.
    pub windows: u64,
}

impl Coverage {
    fn of(scope: &Scope, windows: u64) -> Coverage {
        Coverage {
            settled_before: scope.bound.settled_before,
            since: scope.bound.since,
            partitions: scope.partitions.len(),
            records: scope
                .partitions
                .values()
                .map(|s| (s.offsets.end() - s.offsets.start() + 1).unsigned_abs())
                .sum(),
            windows,
        }
    }
}

/// A run's result: the checks, and in scheduled mode what they covered.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scheduled mode: a line saying what was settled.
    pub scope: Option<String>,
    pub checks: Vec<Check>,
    pub coverage: Option<Coverage>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// The table (see [`render`]), after the scope line in scheduled mode.
    pub fn render(&self) -> String {
        let (table, _) = render(&self.checks);
        match (&self.scope, &self.coverage) {
            (Some(line), Some(c)) => format!(
                "{line}\nchecked: {} records, {} window aggregates\n{table}",
                c.records, c.windows
            ),
            (Some(line), None) => format!("{line}\n{table}"),
            _ => table,
        }
    }
}

/// Whole output or settled part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything the output holds (a finished, drained run).
    Everything,
    /// What is settled under the bound (a live pipeline).
    Settled(Bound),
}

impl ScopeArgs {
    /// The mode these flags ask for, at wall-clock time `now`.
    pub fn mode(&self, now: DateTime<Utc>, timing: Timing) -> Result<Mode, BoundError> {
        let settled_before = match (self.settled_before, self.settle) {
            (Some(t), _) => t,
            (None, Some(settle)) => chrono::Duration::from_std(settle)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .ok_or(BoundError::BeforeEpoch)?,
            (None, None) => return Ok(Mode::Everything),
        };
        let lookback = i64::try_from(self.lookback.as_micros()).unwrap_or(i64::MAX);
        Bound::new(settled_before.timestamp_micros(), lookback, timing).map(Mode::Settled)
    }
}

fn micros(d: Duration) -> i64 {
    // Settings are bounded to 100 years (`config::parse`): this never saturates.
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl ReconcileArgs {
    /// The processor's timing, from its configuration.
    pub fn timing(&self) -> Timing {
        let p = &self.run.pipeline;
        Timing {
            window: micros(p.window),
            lateness: micros(p.allowed_lateness),
            future_tolerance: micros(p.future_tolerance),
        }
    }

    /// What to reconcile: `--output`, else the processor's sink.
    pub fn target(&self) -> SinkTarget {
        self.output
            .clone()
            .unwrap_or_else(|| self.run.relay.sink.clone())
    }
}

/// `reconcile` as its own command, for parsing its arguments alone.
fn reconcile_command() -> clap::Command {
    ReconcileArgs::augment_args(
        clap::Command::new("paydedup-processor reconcile").no_binary_name(true),
    )
}

/// Parses `reconcile`'s arguments (those after `reconcile`) with the config file
/// layered under them, exactly as `run` does (flag > environment > file > default), and
/// checks the processor's settings with `run`'s own rules. `given` is the parse
/// without the file (already known to succeed).
fn layered(args: Vec<OsString>, given: &clap::ArgMatches) -> Result<ReconcileArgs, ReconcileError> {
    let command = reconcile_command();
    let mut parsed = ReconcileArgs::from_arg_matches(given)?;
    if let Some(path) = &parsed.run.config {
        let mut all = file::file_args(path, &command, given)
            .map_err(|e| ReconcileError::Config(e.to_string()))?;
        all.extend(args);
        parsed = ReconcileArgs::from_arg_matches(&command.try_get_matches_from(all)?)?;
    }
    parsed
        .run
        .validate()
        .map_err(|e| ReconcileError::Config(format!("{e:#}")))?;
    Ok(parsed)
}

/// The `reconcile` subcommand: runs, prints, reports; returns the exit code (see
/// [`export`]). `args` are those after `reconcile`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let started = Instant::now();
    let now = Utc::now();
    let args: Vec<OsString> = args.into_iter().collect();
    let given = match reconcile_command().try_get_matches_from(&args) {
        Ok(g) => g,
        Err(e) => {
            // Usage errors print clap's message; clap exits 2 for them, like us.
            let _ = e.print();
            return Verdict::CouldNotCheck.exit_code();
        }
    };
    // Where to report is known before the config file is read, so a run that fails on
    // the file is still reported.
    let export = ExportArgs::from_arg_matches(&given).unwrap_or_default();
    let result = layered(args, &given).and_then(|a| run(&a, now));
    match &result {
        Ok(report) => print!("{}", report.render()),
        Err(e) => eprintln!("error: {e}"),
    }
    let mut verdict = Verdict::of(&result);
    let text = export::metrics_text(&export::RunResult {
        verdict,
        report: result.as_ref().ok(),
        finished_at: Utc::now().timestamp_micros() as f64 / 1e6,
        duration: started.elapsed(),
    });
    let written = export
        .metrics_file
        .as_deref()
        .map(|path| export::write_file(path, &text));
    let pushed = export
        .pushgateway
        .as_deref()
        .map(|url| export::push(url, &text));
    for e in [written, pushed]
        .into_iter()
        .flatten()
        .filter_map(Result::err)
    {
        eprintln!("error: {e}");
        verdict = verdict.unreported();
    }
    match verdict {
        Verdict::Pass => {}
        Verdict::Mismatch => eprintln!("reconciliation failed: the output is wrong (exit 1)"),
        Verdict::CouldNotCheck => eprintln!("reconciliation could not check the output (exit 2)"),
    }
    // `process::exit` follows: flush what the table printed.
    let _ = std::io::stdout().flush();
    verdict.exit_code()
}

/// Runs the checks `args` asks for, at wall-clock time `now`.
pub fn run(args: &ReconcileArgs, now: DateTime<Utc>) -> Result<Report, ReconcileError> {
    let timing = args.timing();
    let mode = args.scope.mode(now, timing)?;
    let manifest = args.manifest.as_deref().map(Manifest::load).transpose()?;
    match args.target() {
        SinkTarget::File(dir) => reconcile_files(&dir, manifest.as_ref(), mode, timing),
        SinkTarget::BigQuery { target } => {
            let config = args
                .run
                .bigquery
                .config(&target)
                .map_err(|e| ReconcileError::Config(format!("{e:#}")))?;
            let wh = Warehouse::connect(&config)?;
            bigquery::reconcile(&wh, manifest.as_ref(), mode, timing)
        }
    }
}

/// All checks over a file sink's output.
pub fn reconcile_files(
    dir: &Path,
    manifest: Option<&Manifest>,
    mode: Mode,
    timing: Timing,
) -> Result<Report, ReconcileError> {
    if timing.window <= 0 {
        return Err(BoundError::NoWindow.into());
    }
    let ledger = Ledger::read(dir)?;
    let report = match mode {
        Mode::Everything => {
            amounts::same_window(timing.window, ledger.metrics.iter().map(window_size))?;
            let mut checks = ledger_checks(
                &ledger,
                &ledger.payments,
                &ledger.metrics,
                timing,
                Start::Zero,
            );
            if let Some(m) = manifest {
                checks.extend(ground_truth::check(&ledger.observed(), m));
            }
            Report {
                scope: None,
                checks,
                coverage: None,
            }
        }
        Mode::Settled(bound) => {
            let evidence = settled::Evidence::of_rows(&bound, ledger.accepted_rows());
            let scope = Scope::new(bound, &evidence);
            // Records by their offset; metrics rows and the payments they aggregate by
            // their window (a window's payments need not be in the offset ranges).
            let records = ledger.filtered(
                |p, offset| scope.has_record(p, offset),
                |p, start| scope.has_window(p, start),
            );
            let payments: Vec<_> = ledger
                .payments
                .iter()
                .filter(|r| scope.has_window_of(r.source_partition, r.event_time))
                .cloned()
                .collect();
            amounts::same_window(timing.window, records.metrics.iter().map(window_size))?;
            // Nothing settled: nothing to judge (as in the warehouse path).
            let checks = if scope.partitions.is_empty() {
                Vec::new()
            } else {
                ledger_checks(&records, &payments, &records.metrics, timing, Start::Lowest)
            };
            let windows = amounts::compare(&payments, &records.metrics, timing.window).0;
            Report {
                scope: Some(scope.describe()),
                checks,
                coverage: Some(Coverage::of(&scope, windows)),
            }
        }
    };
    Ok(report)
}

fn window_size(m: &ledger::Metrics) -> i64 {
    m.window_end - m.window_start
}

/// The contract's checks over `records` (and, for amounts, over the given payments and
/// metrics).
fn ledger_checks(
    records: &Ledger,
    window_payments: &[ledger::Payment],
    window_metrics: &[ledger::Metrics],
    timing: Timing,
    start: Start,
) -> Vec<Check> {
    let mut checks = vec![exactly_once::check(&records.payments)];
    checks.extend(source_accounting::check(&records.source_offsets()));
    for (table, seqs) in records.sequences() {
        checks.push(sequence_density::check(table.name(), &seqs, start));
    }
    checks.push(amounts::check(
        window_payments,
        window_metrics,
        timing.window,
    ));
    checks
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
    use std::collections::BTreeMap;

    const S: i64 = 1_000_000;
    /// A minute boundary (2026-05-28T20:27:00Z).
    const T0: i64 = 1_780_000_020 * S;

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
                r#"{"kind":"duplicate","event_time":"2024-05-01T12:00:30Z","source_partition":0,"source_offset":2,"outbox_seq":0}"#
                    .into(),
            ],
        );
        write(
            dir,
            "payment_metrics",
            &[r#"{"window_start":"2024-05-01T12:00:00Z","window_end":"2024-05-01T12:01:00Z","currency":"EUR","payment_count":2,"amount_minor_sum":200,"source_partition":0,"outbox_seq":0}"#.into()],
        );
    }

    const MINUTE: Timing = Timing {
        window: 60 * S,
        lateness: 300 * S,
        future_tolerance: 600 * S,
    };

    fn everything(dir: &Path) -> Report {
        reconcile_files(dir, None, Mode::Everything, MINUTE).unwrap()
    }

    #[test]
    fn good_output_passes_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        good_output(dir.path());
        let report = everything(dir.path());
        // exactly_once, one partition, five tables, amounts.
        assert_eq!(report.checks.len(), 1 + 1 + 5 + 1);
        let table = report.render();
        assert!(report.passed(), "{table}");
        assert!(table.contains("PASS: all 8 checks passed"), "{table}");
    }

    #[test]
    fn a_doubled_payment_fails_naming_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        good_output(dir.path());
        let doubled = [payment("a", 0, 0), payment("b", 1, 1), payment("a", 0, 0)];
        write(dir.path(), "payments", &doubled);
        let report = everything(dir.path());
        let table = report.render();
        assert!(!report.passed());
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

    /// Parses like `main`: `reconcile` flags with the config file layered under them.
    fn parse(args: &[&str]) -> Result<ReconcileArgs, ReconcileError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let given = reconcile_command().try_get_matches_from(&args)?;
        layered(args, &given)
    }

    #[test]
    fn the_window_and_the_target_come_from_the_processors_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("paydedup.toml");
        std::fs::write(
            &config,
            "window_secs = 5\nallowed_lateness_secs = 10\nretention_secs = 60\nsink = \"file:/data/out\"\n",
        )
        .unwrap();
        let config = config.to_str().unwrap();
        let a = parse(&["--config", config]).unwrap();
        assert_eq!(
            a.timing(),
            Timing {
                window: 5 * S,
                lateness: 10 * S,
                future_tolerance: 600 * S
            }
        );
        assert_eq!(a.target(), SinkTarget::File("/data/out".into()));
        // Flags win over the file, as for `run`.
        let a = parse(&[
            "--config",
            config,
            "--window-secs",
            "7",
            "--output",
            "file:x",
        ])
        .unwrap();
        assert_eq!(a.timing().window, 7 * S);
        assert_eq!(a.target(), SinkTarget::File("x".into()));
        // `run`'s rules apply: a zero window is refused before anything is read.
        let e = parse(&["--window-secs", "0"]).unwrap_err();
        assert!(e.to_string().contains("--window-secs"), "{e}");
    }

    #[test]
    fn a_bad_output_or_window_is_an_error_not_a_verdict() {
        let e = parse(&["--output", "s3:bucket"]).unwrap_err();
        assert!(e.to_string().contains("unknown sink"), "{e}");
        // A manifest describes a whole run: not a scheduled range.
        let e = parse(&["--manifest", "m.json", "--settle-secs", "60"]).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
        // Metrics rows closed with another window size: not judged.
        let dir = tempfile::tempdir().unwrap();
        good_output(dir.path());
        let five = Timing {
            window: 5 * S,
            ..MINUTE
        };
        let e = reconcile_files(dir.path(), None, Mode::Everything, five).unwrap_err();
        assert!(matches!(e, ReconcileError::Window(_)), "{e}");
    }

    #[test]
    fn the_mode_follows_the_flags() {
        let now = DateTime::from_timestamp_micros(T0).unwrap();
        let mode = |args: &[&str]| parse(args).unwrap().scope.mode(now, MINUTE).unwrap();
        assert_eq!(mode(&[]), Mode::Everything);
        let Mode::Settled(b) = mode(&["--settle-secs", "1800", "--lookback-secs", "3600"]) else {
            panic!("not scheduled");
        };
        assert_eq!(b.settled_before, T0 - 1800 * S);
        assert_eq!(b.since, T0 - 5400 * S);
        let Mode::Settled(b) = mode(&["--settled-before", "2026-05-28T20:00:00.5Z"]) else {
            panic!("not scheduled");
        };
        assert_eq!(b.settled_before, 1_779_998_400 * S + S / 2);
        assert_eq!(
            b.since,
            1_779_998_400 * S - 86_400 * S,
            "one day by default"
        );
    }

    /// A partition's rows as the processor would have delivered them: record `i` has
    /// event time T0 + 10 s·i and reached Kafka a second later; every 10th is a
    /// duplicate, every 25th invalid, the rest payments of 100·i; windows close once
    /// the max event time passes their end plus the 300 s lateness. `keep` says which
    /// offsets (and `keep_window` which windows) were delivered.
    fn delivered(
        dir: &Path,
        n: i64,
        keep: impl Fn(i64) -> bool,
        keep_window: impl Fn(i64) -> bool,
        amount: impl Fn(i64) -> i64,
    ) {
        let ts = |m: i64| settled::rfc3339(m);
        let (mut pay, mut aud, mut err, mut met) = (vec![], vec![], vec![], vec![]);
        let mut sums: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
        let (mut pseq, mut aseq, mut eseq) = (0, 0, 0);
        for i in 0..n {
            let ev = T0 + 10 * S * i;
            let common = format!(
                r#""kafka_timestamp":"{}","source_partition":0,"source_offset":{i}"#,
                ts(ev + S)
            );
            if i % 25 == 24 {
                if keep(i) {
                    err.push(format!(
                        r#"{{"error_code":"invalid_json",{common},"outbox_seq":{eseq}}}"#
                    ));
                }
                eseq += 1;
            } else if i % 10 == 9 {
                if keep(i) {
                    aud.push(format!(
                        r#"{{"kind":"duplicate","event_time":"{}",{common},"outbox_seq":{aseq}}}"#,
                        ts(ev)
                    ));
                }
                aseq += 1;
            } else {
                let e = sums.entry(settled::floor(ev, 60 * S)).or_default();
                e.0 += 1;
                e.1 += 100 * i;
                if keep(i) {
                    pay.push(format!(
                        r#"{{"transaction_id":"t{i}","event_time":"{}","amount_minor":{},"currency":"EUR",{common},"outbox_seq":{pseq}}}"#,
                        ts(ev),
                        amount(i)
                    ));
                }
                pseq += 1;
            }
        }
        let max_event = T0 + 10 * S * (n - 1);
        for (mseq, (start, (count, sum))) in sums
            .into_iter()
            .filter(|(s, _)| s + 60 * S + 300 * S <= max_event)
            .enumerate()
        {
            if keep_window(start) {
                met.push(format!(
                    r#"{{"window_start":"{}","window_end":"{}","currency":"EUR","payment_count":{count},"amount_minor_sum":{sum},"source_partition":0,"outbox_seq":{mseq}}}"#,
                    ts(start),
                    ts(start + 60 * S)
                ));
            }
        }
        write(dir, "payments", &pay);
        write(dir, "dedup_audit", &aud);
        write(dir, "processing_errors", &err);
        write(dir, "payment_metrics", &met);
    }

    /// Records that reached Kafka before T0 + 2011 s (offsets 0..=200) are settled.
    fn scheduled() -> Mode {
        let b = Bound::new(T0 + 2011 * S, 86_400 * S, MINUTE).unwrap();
        Mode::Settled(b)
    }

    fn failing(report: &Report) -> Vec<String> {
        report
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(Check::name)
            .collect()
    }

    #[test]
    fn in_flight_rows_and_open_windows_fail_everything_but_not_a_scheduled_run() {
        let dir = tempfile::tempdir().unwrap();
        // Offsets 250 and 251 are not delivered yet, nor the windows from T0 + 40 min.
        let in_flight = |i: i64| i != 250 && i != 251;
        delivered(
            dir.path(),
            300,
            in_flight,
            |s| s < T0 + 2400 * S,
            |i| 100 * i,
        );
        let all = everything(dir.path());
        assert!(!all.passed(), "the whole output is not finished");
        let report = reconcile_files(dir.path(), None, scheduled(), MINUTE).unwrap();
        assert!(report.passed(), "{}", report.render());
        // Offsets 0..=200 are settled; windows close 300 s behind the settled max
        // event time (T0 + 2000 s): the 28 windows before T0 + 1680 s are compared.
        let c = report.coverage.clone().unwrap();
        assert_eq!((c.partitions, c.records, c.windows), (1, 201, 28));
        let table = report.render();
        assert!(
            table.starts_with("scheduled: records in Kafka before 2026-05-28T21:00:31.000000Z"),
            "{table}"
        );
        assert!(table.contains("partition 0 offsets 0..=200"), "{table}");
    }

    #[test]
    fn a_wrong_row_in_the_settled_range_fails_by_name() {
        // One payment's amount differs from what its window aggregated.
        let dir = tempfile::tempdir().unwrap();
        let amount = |i: i64| if i == 50 { 1 } else { 100 * i };
        delivered(dir.path(), 300, |_| true, |_| true, amount);
        let report = reconcile_files(dir.path(), None, scheduled(), MINUTE).unwrap();
        assert_eq!(
            failing(&report),
            ["amounts: windows where payments sum != metrics sum"]
        );
        // A record lost inside the range: its partition, its table, its window.
        let dir = tempfile::tempdir().unwrap();
        delivered(dir.path(), 300, |i| i != 101, |_| true, |i| 100 * i);
        let report = reconcile_files(dir.path(), None, scheduled(), MINUTE).unwrap();
        assert_eq!(
            failing(&report),
            [
                "source_accounting: partition 0 offsets 0..=200 contiguous, once each",
                "sequence_density: payments",
                "amounts: windows where payments sum != metrics sum"
            ]
        );
    }

    #[test]
    fn expired_early_rows_are_tolerated_but_a_gap_after_them_is_not() {
        // Rows of the first ten minutes (event time) expired from the tables: records
        // 0..=59 and their windows, so every table's sequences start mid-table.
        let dir = tempfile::tempdir().unwrap();
        let expired = |i: i64| i >= 60;
        delivered(dir.path(), 300, expired, |s| s >= T0 + 600 * S, |i| 100 * i);
        let report = reconcile_files(dir.path(), None, scheduled(), MINUTE).unwrap();
        assert!(report.passed(), "{}", report.render());
        assert!(report.render().contains("partition 0 offsets 60..=200"));
        let all = everything(dir.path());
        assert!(failing(&all).contains(&"sequence_density: payments".to_owned()));

        let dir = tempfile::tempdir().unwrap();
        delivered(
            dir.path(),
            300,
            |i| expired(i) && i != 70,
            |s| s >= T0 + 600 * S,
            |i| 100 * i,
        );
        let report = reconcile_files(dir.path(), None, scheduled(), MINUTE).unwrap();
        assert!(failing(&report).contains(&"sequence_density: payments".to_owned()));
    }

    #[test]
    fn nothing_settled_is_nothing_checked_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        delivered(dir.path(), 300, |_| true, |_| true, |i| 100 * i);
        // Every record reached Kafka after this bound.
        let b = Bound::new(T0, 3600 * S, MINUTE).unwrap();
        let report = reconcile_files(dir.path(), None, Mode::Settled(b), MINUTE).unwrap();
        assert!(report.checks.is_empty() && report.passed());
        assert_eq!(report.coverage.map(|c| c.records), Some(0));
    }

    #[test]
    fn main_exits_0_1_or_2_and_writes_the_metric() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let prom = dir.path().join("reconcile.prom");
        let run = |extra: &[&str]| {
            let mut args = vec![
                format!("--output=file:{}", out.display()),
                "--settled-before=2026-05-28T21:00:31Z".to_owned(),
                format!("--metrics-file={}", prom.display()),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let code = main(args.into_iter().map(OsString::from));
            (code, std::fs::read_to_string(&prom).unwrap())
        };
        delivered(&out, 300, |i| i != 250, |_| true, |i| 100 * i);
        let (code, text) = run(&[]);
        assert_eq!(code, 0);
        assert!(text.contains("paydedup_reconcile_ok 1\n"), "{text}");

        delivered(&out, 300, |i| i != 150, |_| true, |i| 100 * i);
        let (code, text) = run(&[]);
        assert_eq!(code, 1);
        assert!(text.contains("paydedup_reconcile_exit_code 1\n"), "{text}");
        assert!(
            text.contains("paydedup_reconcile_check_failures{check=\"source_accounting\"} 1\n"),
            "{text}"
        );

        std::fs::write(out.join("payments.jsonl"), "{not json\n").unwrap();
        let (code, text) = run(&[]);
        assert_eq!(code, 2);
        assert!(text.contains("paydedup_reconcile_ok 0\n"), "{text}");
        assert!(text.contains("paydedup_reconcile_exit_code 2\n"), "{text}");
        // A config file that cannot be read: still reported, as "could not check".
        let (code, text) = run(&["--config=/nonexistent/paydedup.toml"]);
        assert_eq!(code, 2);
        assert!(text.contains("paydedup_reconcile_exit_code 2\n"), "{text}");
    }
}
