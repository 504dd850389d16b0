//! The processor under test: started, killed, terminated and restarted by the
//! campaign, each run logging to its own file.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use paydedup_testkit::{binary, free_port, signal, Broker, Emulator};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for Ended {
    fn from(s: ExitStatus) -> Ended {
        match (s.code(), s.signal()) {
            (Some(c), _) => Ended::Code(c),
            (None, Some(sig)) => Ended::Signal(sig),
            _ => Ended::Code(-1),
        }
    }
}

pub const SIGABRT: i32 = 6;
pub const SIGKILL: i32 = 9;

pub struct Supervisor {
    /// `run` and everything after it, but the fail point.
    args: Vec<String>,
    logs: PathBuf,
    child: Option<Child>,
    runs: u32,
    started: Option<Instant>,
    /// The current run's metrics (and health) port.
    port: u16,
}

impl Supervisor {
    pub fn new(args: Vec<String>, logs: &Path) -> anyhow::Result<Supervisor> {
        std::fs::create_dir_all(logs)?;
        Ok(Supervisor {
            args,
            logs: logs.to_owned(),
            child: None,
            runs: 0,
            started: None,
            port: 0,
        })
    }

    /// Starts a run (the last must have ended), with a fail point armed if given and
    /// extra flags appended.
    pub fn start(&mut self, fail_point: Option<(&str, u32)>, extra: &[&str]) -> anyhow::Result<()> {
        let args = self.args.clone();
        self.spawn(&args, fail_point, extra)
    }

    /// Starts a run with its usual flags edited by `edit` (a wrong start on purpose).
    pub fn start_edited(&mut self, edit: impl FnOnce(&mut Vec<String>)) -> anyhow::Result<()> {
        let mut args = self.args.clone();
        edit(&mut args);
        self.spawn(&args, None, &[])
    }

    fn spawn(
        &mut self,
        args: &[String],
        fail_point: Option<(&str, u32)>,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the processor is already running");
        self.runs += 1;
        let log = File::create(self.log_path())?;
        self.port = free_port()?;
        let mut cmd = Command::new(binary("paydedup-processor")?);
        cmd.args(args)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("PAYDEDUP_FAIL_POINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((name, pass)) = fail_point {
            cmd.env("PAYDEDUP_FAIL_POINT", format!("{name}:{pass}"));
        }
        self.child = Some(cmd.spawn().context("starting the processor")?);
        self.started = Some(Instant::now());
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.logs.join(format!("processor-{:04}.log", self.runs))
    }

    /// The current (or last) run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether a run was started and not yet seen to end (see [`Supervisor::reap`]).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// How the current run ended, if it did on its own.
    pub fn reap(&mut self) -> Option<Ended> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.into())
    }

    /// How long the current run has been up.
    pub fn uptime(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// SIGKILL; how the run ended (it may have ended on its own before).
    pub fn kill(&mut self) -> Option<Ended> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok().map(Ended::from)
    }

    /// SIGTERM, then waits up to `grace` (SIGKILL after it).
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<Option<Ended>> {
        let Some(c) = self.child.as_ref() else {
            return Ok(None);
        };
        signal(c.id(), "TERM")?;
        Ok(self.wait(grace).or_else(|| self.kill()))
    }

    /// Waits up to `timeout` for the run to end on its own.
    pub fn wait(&mut self, timeout: Duration) -> Option<Ended> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until the run answers `/readyz` with 200 (it has assigned its partitions,
    /// agreed with the sink and started the relay), it ends, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // `try_wait` keeps the status for `reap` to report later.
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => {}
                _ => return false,
            }
            if ready(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// SIGTERM without waiting (a pod being deleted); see [`Supervisor::wait`].
    pub fn signal_term(&self) -> anyhow::Result<()> {
        match self.child.as_ref() {
            Some(c) => signal(c.id(), "TERM"),
            None => Ok(()),
        }
    }

    /// The current run's `/metrics` text, if it answers.
    pub fn metrics(&self) -> Option<String> {
        self.child.as_ref()?;
        http_get(self.port, "/metrics")
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    }
}

/// `paydedup_next_offset` per partition from a `/metrics` text.
pub fn next_offsets(metrics: &str) -> std::collections::BTreeMap<i32, i64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("paydedup_next_offset{partition=\""))
        .filter_map(|rest| {
            let (p, value) = rest.split_once("\"} ")?;
            Some((p.parse().ok()?, value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// A plain HTTP GET on 127.0.0.1: the status and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `paydedup-processor run`'s flags for a campaign: the broker, the emulator's dataset,
/// small batches (more commits, more places for a fault to land), `retention_secs`.
pub fn processor_args(
    broker: &Broker,
    emu: &Emulator,
    topic: &str,
    dataset: &str,
    retention_secs: i64,
) -> Vec<String> {
    [
        "run",
        "--brokers",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--log-format",
        "text",
        "--batch-size",
        "500",
        "--relay-batch",
        "500",
        // Idle partitions following the others would depend on wall-clock timing,
        // which the ground truth does not model.
        "--idle-timeout-secs",
        "86400",
        "--sink-give-up-secs",
        "600",
        "--bigquery-rest-url",
        &emu.rest_url(),
        "--bigquery-grpc-url",
        &emu.grpc_url(),
        "--bigquery-no-auth",
        "--sink",
        &format!("bigquery:{}.{dataset}", emu.project),
        "--retention-secs",
        &retention_secs.to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Sets `flag`'s value in a command line, appending the flag if it is not there.
pub fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_owned(),
        _ => {
            args.push(flag.to_owned());
            args.push(value.to_owned());
        }
    }
}

/// Whether `GET /readyz` answers 200.
fn ready(port: u16) -> bool {
    matches!(http_get(port, "/readyz"), Some((200, _)))
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::set_flag;

    #[test]
    fn set_flag_replaces_a_value_or_appends_the_flag() {
        let mut a: Vec<String> = ["run", "--topic", "payments"].map(String::from).to_vec();
        set_flag(&mut a, "--topic", "other");
        set_flag(&mut a, "--window-secs", "7");
        assert_eq!(a, ["run", "--topic", "other", "--window-secs", "7"]);
    }

    #[test]
    fn next_offsets_are_read_from_the_metrics_text() {
        let text = "# HELP paydedup_next_offset x\npaydedup_next_offset{partition=\"0\"} 17\npaydedup_next_offset{partition=\"12\"} 3\npaydedup_lag{partition=\"0\"} 9\n";
        assert_eq!(super::next_offsets(text), [(0, 17), (12, 3)].into());
    }
}
