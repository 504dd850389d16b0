//! The result of a run for a scheduler and for Prometheus.
//!
//! The exit code tells "wrong" from "could not look": 0 every check passed, 1 a check
//! failed (the output is wrong), 2 the checks could not run (the warehouse unreachable,
//! a query refused, a bad flag or config file, the configured window size not the
//! processor's). A Kubernetes CronJob's failed Job then means either; the metrics say
//! which.
//!
//! The metrics are the Prometheus text format, written to a file for node_exporter's
//! textfile collector (`--metrics-file`, replaced atomically: the collector never
//! reads half a file) and/or pushed to a Pushgateway (`--pushgateway`). One run's
//! result replaces the previous one's, so a check kind that disappears leaves no stale
//! series. Failing to report a passing run turns it into exit 2: a scheduled check
//! that nobody can see pass is not one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::CheckKind;
use super::Report;

/// A run's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// At least one check failed: the output is wrong.
    Mismatch,
    /// The checks could not run; nothing is known about the output.
    CouldNotCheck,
}

impl Verdict {
    /// The verdict of a run that produced `report`, or failed before it could.
    pub fn of<E>(result: &Result<Report, E>) -> Verdict {
        match result {
            Ok(r) if r.passed() => Verdict::Pass,
            Ok(_) => Verdict::Mismatch,
            Err(_) => Verdict::CouldNotCheck,
        }
    }

    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Mismatch => 1,
            Verdict::CouldNotCheck => 2,
        }
    }

    /// The verdict once the result could not be reported: a pass nobody sees becomes
    /// "could not check"; a mismatch stays one (the exit code still says it).
    pub fn unreported(self) -> Verdict {
        match self {
            Verdict::Pass => Verdict::CouldNotCheck,
            v => v,
        }
    }
}

/// Why the result could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the metrics file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pushing the metrics to {url}: {reason}")]
    Push { url: String, reason: String },
}

/// What a run's metrics are made of.
pub struct RunResult<'a> {
    pub verdict: Verdict,
    /// `None` when the checks could not run.
    pub report: Option<&'a Report>,
    /// When the run finished, seconds since the epoch.
    pub finished_at: f64,
    pub duration: Duration,
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: f64) -> Vec<(String, f64)> {
    vec![(String::new(), v)]
}

/// The run's result in the Prometheus text format.
pub fn metrics_text(r: &RunResult<'_>) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "paydedup_reconcile_last_run_timestamp_seconds",
        "When the last reconcile run finished, Unix time.",
        &one(r.finished_at),
    );
    gauge(
        &mut out,
        "paydedup_reconcile_ok",
        "1 when the last run checked the output and every check passed; 0 when a check failed or the checks could not run.",
        &one(f64::from(u8::from(r.verdict == Verdict::Pass))),
    );
    gauge(
        &mut out,
        "paydedup_reconcile_exit_code",
        "The last run's exit code: 0 passed, 1 a check failed (the output is wrong), 2 the checks could not run.",
        &one(f64::from(r.verdict.exit_code())),
    );
    gauge(
        &mut out,
        "paydedup_reconcile_duration_seconds",
        "How long the last run took.",
        &one(r.duration.as_secs_f64()),
    );
    let Some(report) = r.report else {
        // Nothing was checked: per-check series would claim results nobody has.
        return out;
    };
    let per_kind = |failed_only: bool| -> Vec<(String, f64)> {
        CheckKind::ALL
            .iter()
            .map(|k| {
                let n = report
                    .checks
                    .iter()
                    .filter(|c| c.kind == *k && (!failed_only || !c.pass))
                    .count();
                (format!("{{check=\"{}\"}}", k.name()), n as f64)
            })
            .collect()
    };
    gauge(
        &mut out,
        "paydedup_reconcile_checks",
        "Checks the last run made, by check (a check per partition, table, window range or manifest total).",
        &per_kind(false),
    );
    gauge(
        &mut out,
        "paydedup_reconcile_check_failures",
        "Checks of the last run that failed, by check.",
        &per_kind(true),
    );
    if let Some(c) = &report.coverage {
        gauge(
            &mut out,
            "paydedup_reconcile_settled_before_timestamp_seconds",
            "Scheduled mode: records that reached Kafka before this time, Unix time, were settled.",
            &one(c.settled_before as f64 / 1e6),
        );
        gauge(
            &mut out,
            "paydedup_reconcile_checked_partitions",
            "Scheduled mode: partitions with a settled range in the last run.",
            &one(c.partitions as f64),
        );
        gauge(
            &mut out,
            "paydedup_reconcile_checked_records",
            "Scheduled mode: records (offsets) the last run checked.",
            &one(c.records as f64),
        );
        gauge(
            &mut out,
            "paydedup_reconcile_checked_windows",
            "Scheduled mode: (partition, window, currency) aggregates the last run compared with the payments.",
            &one(c.windows as f64),
        );
    }
    out
}

/// Writes `text` to `path` through a temporary file in the same directory and a
/// rename, so a reader sees the old file or the new one, never a part.
pub fn write_file(path: &Path, text: &str) -> Result<(), ExportError> {
    let err = |source| ExportError::File {
        path: path.to_owned(),
        source,
    };
    // The collector reads only `*.prom`: the temporary name is never collected.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The Pushgateway job the metrics are pushed under.
pub const PUSH_JOB: &str = "paydedup_reconcile";

/// PUTs `text` to the Pushgateway at `url` (its root): PUT replaces the job's group,
/// so no series of an earlier run survives.
pub fn push(url: &str, text: &str) -> Result<(), ExportError> {
    let target = format!("{}/metrics/job/{PUSH_JOB}", url.trim_end_matches('/'));
    let fail = |reason: String| ExportError::Push {
        url: target.clone(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let resp = client
        .put(&target)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text.to_owned())
        .send()
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::check::Check;
    use crate::reconcile::Coverage;

    fn report(pass: bool) -> Report {
        Report {
            scope: None,
            checks: vec![
                Check::equal(CheckKind::ExactlyOnce, "x", 1, 1),
                Check::equal(CheckKind::SourceAccounting, "partition 0", 3, 3),
                Check::equal(
                    CheckKind::SourceAccounting,
                    "partition 1",
                    3,
                    if pass { 3 } else { 2 },
                ),
            ],
            coverage: Some(Coverage {
                settled_before: 1_700_000_000_500_000,
                since: 0,
                partitions: 2,
                records: 6,
                windows: 4,
            }),
        }
    }

    #[test]
    fn the_exit_code_tells_wrong_from_could_not_look() {
        let pass: Result<Report, ()> = Ok(report(true));
        let wrong: Result<Report, ()> = Ok(report(false));
        let unreachable: Result<Report, ()> = Err(());
        assert_eq!(Verdict::of(&pass).exit_code(), 0);
        assert_eq!(Verdict::of(&wrong).exit_code(), 1);
        assert_eq!(Verdict::of(&unreachable).exit_code(), 2);
        // A result nobody can see: a pass is no pass, a mismatch stays a mismatch.
        assert_eq!(Verdict::Pass.unreported(), Verdict::CouldNotCheck);
        assert_eq!(Verdict::Mismatch.unreported(), Verdict::Mismatch);
        assert_eq!(Verdict::CouldNotCheck.unreported(), Verdict::CouldNotCheck);
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_say_ok_per_check_failures_and_coverage() {
        let r = report(false);
        let text = metrics_text(&RunResult {
            verdict: Verdict::of::<()>(&Ok(r.clone())),
            report: Some(&r),
            finished_at: 1_700_000_100.25,
            duration: Duration::from_millis(1500),
        });
        assert_eq!(
            sample(&text, "paydedup_reconcile_last_run_timestamp_seconds"),
            Some(1_700_000_100.25)
        );
        assert_eq!(sample(&text, "paydedup_reconcile_ok"), Some(0.0));
        assert_eq!(sample(&text, "paydedup_reconcile_exit_code"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "paydedup_reconcile_check_failures{check=\"source_accounting\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "paydedup_reconcile_checks{check=\"source_accounting\"}"
            ),
            Some(2.0)
        );
        // Every kind is exported, at 0 when it did not fail (an alert can say `> 0`).
        assert_eq!(
            sample(
                &text,
                "paydedup_reconcile_check_failures{check=\"manifest_amount\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "paydedup_reconcile_settled_before_timestamp_seconds"),
            Some(1_700_000_000.5)
        );
        assert_eq!(
            sample(&text, "paydedup_reconcile_checked_records"),
            Some(6.0)
        );
        // Each series has its HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{l}");
        }
    }

    #[test]
    fn a_run_that_could_not_check_claims_no_check_results() {
        let text = metrics_text(&RunResult {
            verdict: Verdict::CouldNotCheck,
            report: None,
            finished_at: 1.0,
            duration: Duration::ZERO,
        });
        assert_eq!(sample(&text, "paydedup_reconcile_ok"), Some(0.0));
        assert_eq!(sample(&text, "paydedup_reconcile_exit_code"), Some(2.0));
        assert!(!text.contains("check_failures"), "{text}");
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reconcile.prom");
        write_file(&path, "a 1\n").unwrap();
        write_file(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        let missing = dir.path().join("no/such/dir/r.prom");
        assert!(matches!(
            write_file(&missing, "x"),
            Err(ExportError::File { .. })
        ));
    }

    /// A one-request HTTP server: returns what it received.
    fn serve_once(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as many body bytes as it announces.
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (url, handle)
    }

    #[test]
    fn push_replaces_the_jobs_group_and_a_refusal_is_an_error() {
        let (url, server) = serve_once("200 OK");
        push(&format!("{url}/"), "paydedup_reconcile_ok 1\n").unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("PUT /metrics/job/paydedup_reconcile HTTP/1.1"),
            "{request}"
        );
        assert!(request.ends_with("paydedup_reconcile_ok 1\n"), "{request}");

        let (url, server) = serve_once("500 Internal Server Error");
        let e = push(&url, "x 1\n").unwrap_err();
        server.join().unwrap();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
    }
}
