//! Test helpers that run the real components on free ports.
//!
//! - [`Broker`]: a real `tansu` Kafka-protocol broker with the SQLite storage engine, in
//!   its own temporary folder, on a free 127.0.0.1 port; killed on drop.
//! - [`binary`]: the path of a workspace binary (`paydedup-simulator`, …) built by the
//!   same `cargo test` run.
//! - [`KubernetesApiDouble`]: a test double of the one Kubernetes API request the
//!   processor makes (a StatefulSet's replicas); no cluster runs here.
//!
//! The broker binary comes from `PAYDEDUP_TANSU` or the cache that
//! `scripts/install-tansu.sh` fills (`~/.cache/paydedup/tansu/bin/tansu`). Tests never use
//! fixed ports, so they run side by side.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The paydedup tool cache (`PAYDEDUP_CACHE`, default `~/.cache/paydedup`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PAYDEDUP_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache/paydedup")
}

/// The tansu binary, or an error that says how to install it.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PAYDEDUP_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let p = cache_dir().join("tansu/bin/tansu");
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "the tansu broker is not installed at {}; run scripts/install-tansu.sh (or the README's test command)",
        p.display()
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// Path of a binary of this workspace, built next to the running test executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // A test: target/<profile>/deps/test-xxxx; a binary: target/<profile>/<bin>. The
    // workspace's binaries are in target/<profile>/.
    let beside = exe.parent().context("the executable has no directory")?;
    let dir = if beside.ends_with("deps") {
        beside
            .parent()
            .context("test executable has no target directory")?
    } else {
        beside
    };
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is not built; run the tests with `cargo test --workspace` so binaries are built",
            p.display()
        );
    }
    Ok(p)
}

/// A log file a child process appends to (kept across restarts).
fn append_log(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`) to a process.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// A running tansu broker with SQLite storage.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("paydedup-tansu-")
            .tempdir()
            .context("creating the broker's folder")?;
        let port = free_port()?;
        let mut broker = Broker {
            child: None,
            port,
            dir,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = append_log(&self.dir.path().join("tansu.log"))?;
        // NOTE: tansu reads generic variables (STORAGE_ENGINE, LISTENER_URL, …) and a
        // `.env` in its working directory; a clean environment and a fresh folder keep
        // them from overriding our flags. The SQLite URL must be relative (an absolute
        // one is joined onto the working directory).
        let child = Command::new(tansu_binary()?)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic through tansu's CLI (tansu does not auto-create topics).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let status = Command::new(tansu_binary()?)
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .status()
            .context("running `tansu topic create`")?;
        if !status.success() {
            bail!("`tansu topic create {name}` failed: {status}");
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL and starts it again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .context("the broker is not running")?
            .id();
        signal(pid, name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The BigQuery emulator's venv python, or an error that says how to install it.
pub fn emulator_python() -> anyhow::Result<PathBuf> {
    let p = cache_dir().join("bqemulator-venv/bin/python");
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "the BigQuery emulator is not installed at {}; run scripts/install-bqemulator.sh (or the README's test command)",
        p.display()
    )
}

/// The launcher that makes the emulator work offline (`scripts/bqemu_launcher.py` of
/// the checkout under test), found at run time: above `PAYDEDUP_REPO`, the package
/// `cargo test` runs (`CARGO_MANIFEST_DIR` in the environment) or the working
/// directory. Not `env!("CARGO_MANIFEST_DIR")`: the build cache is shared between
/// clones and cargo does not rebuild when only the checkout's path changes, so a path
/// baked in at compile time can name another, or a deleted, checkout.
pub fn emulator_launcher() -> anyhow::Result<PathBuf> {
    const LAUNCHER: &str = "scripts/bqemu_launcher.py";
    let starts: Vec<PathBuf> = ["PAYDEDUP_REPO", "CARGO_MANIFEST_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain(std::env::current_dir().ok())
        .collect();
    for start in &starts {
        if let Some(p) = start
            .ancestors()
            .map(|dir| dir.join(LAUNCHER))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    bail!(
        "{LAUNCHER} not found above {starts:?}; run from the repository, or set PAYDEDUP_REPO to it"
    )
}

/// A running BigQuery emulator (`bqemulator`) with persistent storage in a temporary
/// folder, REST and Storage Write gRPC on free ports. Stopping and starting it again
/// keeps the tables (as a BigQuery outage would) but loses the write streams.
pub struct Emulator {
    child: Option<Child>,
    pub rest_port: u16,
    pub grpc_port: u16,
    pub project: String,
    dir: tempfile::TempDir,
}

impl Emulator {
    pub fn start() -> anyhow::Result<Emulator> {
        let dir = tempfile::Builder::new()
            .prefix("paydedup-bqemu-")
            .tempdir()
            .context("creating the emulator's folder")?;
        let mut e = Emulator {
            child: None,
            rest_port: free_port()?,
            grpc_port: free_port()?,
            project: "paydedup-test".into(),
            dir,
        };
        e.spawn()?;
        Ok(e)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = append_log(&self.dir.path().join("emulator.log"))?;
        let child = Command::new(emulator_python()?)
            .arg(emulator_launcher()?)
            .arg("start")
            .args([
                "--rest-host",
                "127.0.0.1",
                "--rest-port",
                &self.rest_port.to_string(),
            ])
            .args([
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                &self.grpc_port.to_string(),
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--project", &self.project, "--log-level", "warning"])
            .env("BQEMU_ENABLE_FORMAT_EXTENSIONS", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the BigQuery emulator")?;
        self.child = Some(child);
        wait_for_port(self.rest_port, Duration::from_secs(60))?;
        wait_for_port(self.grpc_port, Duration::from_secs(60))
    }

    /// `http://127.0.0.1:PORT` of the REST API.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// `http://127.0.0.1:PORT` of the Storage Write gRPC API.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Stops the emulator with SIGKILL (tables persist, write streams are lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// **Test double** of the Kubernetes API server, for the one request paydedup makes:
/// `GET /apis/apps/v1/namespaces/{namespace}/statefulsets/{name}`, answered with the
/// StatefulSet's `spec.replicas` as the test sets it. No Kubernetes cluster runs on
/// this machine; the processor's client code is the real one (`--kube-api` points it
/// here, over plain HTTP, without the service account's token).
pub struct KubernetesApiDouble {
    port: u16,
    replicas: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl KubernetesApiDouble {
    pub fn start(
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> anyhow::Result<KubernetesApiDouble> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let api = KubernetesApiDouble {
            port,
            replicas: Arc::new(AtomicU32::new(replicas)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let path = format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}");
        let (replicas, stop) = (api.replicas.clone(), api.stop.clone());
        std::thread::Builder::new()
            .name("kubernetes-api-double".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = answer(stream, &path, replicas.load(Ordering::Acquire));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(api)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What `kubectl scale statefulset … --replicas=n` changes.
    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n, Ordering::Release);
    }
}

impl Drop for KubernetesApiDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn answer(mut stream: TcpStream, path: &str, replicas: u32) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if line.starts_with("GET ") && target == path {
        (
            "200 OK",
            format!(
                r#"{{"kind":"StatefulSet","apiVersion":"apps/v1","spec":{{"replicas":{replicas}}},"status":{{"replicas":{replicas}}}}}"#
            ),
        )
    } else {
        (
            "404 Not Found",
            r#"{"kind":"Status","code":404}"#.to_owned(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
