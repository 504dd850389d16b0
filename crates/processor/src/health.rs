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
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
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
