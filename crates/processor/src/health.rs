//! `/metrics`, `/healthz` and `/readyz` over a minimal HTTP/1.1 server on one thread.
//!
//! `/healthz` answers 200 while the process is alive; `/readyz` answers 200 once the
//! state store is open and partitions are assigned, and 503 while shutting down.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::metrics::Metrics;

#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Binds and serves in a background thread; returns the bound address.
pub fn serve(addr: SocketAddr, metrics: Metrics, ready: Readiness) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = handle(stream, &metrics, &ready);
            }
        })
        .context("starting the metrics thread")?;
    Ok(bound)
}

fn handle(mut stream: TcpStream, metrics: &Metrics, ready: &Readiness) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The headers are read (and ignored) before answering: closing a socket with
    // unread bytes in it sends a reset, which can reach the client before the answer.
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body): (&str, &str, Vec<u8>) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => ("200 OK", "text/plain", b"ok\n".to_vec()),
        "/readyz" if ready.get() => ("200 OK", "text/plain", b"ready\n".to_vec()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            b"not ready\n".to_vec(),
        ),
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)
}

/// The container's health probe (`paydedup-processor healthcheck`): an image without
/// curl or a shell still gets a HEALTHCHECK that asks the running processor itself.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The processor's metrics address; an unspecified IP (0.0.0.0, [::]) is probed
    /// on loopback, so the running processor's own setting can be passed as is.
    #[arg(long, env = "PAYDEDUP_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// `/healthz` (alive) or `/readyz` (state open, partitions assigned).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Give up after this long; a hung process is unhealthy.
    #[arg(long = "timeout-secs", value_name = "SECS", default_value = "3",
          value_parser = crate::config::parse::seconds)]
    pub timeout: Duration,
}

/// Asks `path` on the processor's HTTP endpoint; Ok only on `200`.
pub fn probe(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let mut addr = args.metrics_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = TcpStream::connect_timeout(&addr, args.timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        args.path
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("asking {addr}"))?;
    let mut status = String::new();
    BufReader::new(&stream)
        .read_line(&mut status)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let status = status.trim_end();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        anyhow::bail!("{addr}{} answered {status:?}", args.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: SocketAddr, path: &str) -> HealthcheckArgs {
        HealthcheckArgs {
            metrics_addr: addr,
            path: path.into(),
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_probe_passes_on_200_and_fails_on_503_and_on_nothing_listening() {
        let ready = Readiness::default();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::new(),
            ready.clone(),
        )
        .unwrap();
        // The running processor's own setting (0.0.0.0:PORT) probes loopback.
        let unspecified = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        probe(&args(unspecified, "/healthz")).unwrap();
        let err = probe(&args(addr, "/readyz")).unwrap_err();
        assert!(format!("{err:#}").contains("503"), "{err:#}");
        ready.set(true);
        probe(&args(addr, "/readyz")).unwrap();

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(&args(closed, "/healthz")).is_err());
    }
}
