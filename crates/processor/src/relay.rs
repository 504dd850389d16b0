//! [`OutboxRelay`]: delivers committed outbox rows to the sink, in order, exactly once.
//!
//! Rows leave the process only through here. For each (table, partition) the relay
//! reads the oldest rows, appends them to the sink at their sequence, and deletes them
//! once the sink acknowledges. A crash between the append and the delete resends rows
//! the sink already holds; the sink is idempotent on the sequence, so nothing doubles.
//! The relay only reads commits that are on disk (the store commits with `sync`), so a
//! power loss cannot roll back rows the sink already has.
//!
//! Errors: transient sink errors retry with exponential backoff and full jitter, capped
//! at `max_backoff`; after `give_up_after` of continuous failure, or on any non-retryable
//! error, the relay stops and reports, and the processor exits non-zero rather than
//! skipping or reordering rows. Rows the sink rejects as invalid go to the dead-letter
//! file with the reason, are counted, and are then treated as delivered.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use paydedup_sink::{Sink, SinkError};
use paydedup_state::{StateStore, Table};
use rand::Rng;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per sink append.
    pub batch_rows: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Continuous failure after which the relay gives up.
    pub give_up_after: Duration,
    pub dead_letter_dir: PathBuf,
}

#[derive(Default)]
struct Shared {
    depth: AtomicU64,
    stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    failure: Mutex<Option<String>>,
    delivered: AtomicU64,
}

pub struct OutboxRelay {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
    metrics: Metrics,
}

impl OutboxRelay {
    /// Starts the relay thread. `depth` is the number of rows already in the outbox.
    pub fn spawn(
        store: Arc<StateStore>,
        sink: Box<dyn Sink>,
        cfg: RelayConfig,
        metrics: Metrics,
    ) -> anyhow::Result<OutboxRelay> {
        let shared = Arc::new(Shared::default());
        let initial: u64 = store.outbox_depths()?.values().sum();
        shared.depth.store(initial, Ordering::Release);
        metrics.outbox_depth.set(initial as i64);
        let s = shared.clone();
        let relay_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("outbox-relay".into())
            .spawn(move || {
                let mut worker = Worker {
                    store,
                    sink,
                    cfg,
                    metrics: relay_metrics,
                    shared: s.clone(),
                };
                if let Err(e) = worker.run() {
                    tracing::error!(error = %e, "Outbox relay stopped.");
                    if let Ok(mut f) = s.failure.lock() {
                        *f = Some(e);
                    }
                }
            })?;
        Ok(OutboxRelay {
            shared,
            handle: Some(handle),
            metrics,
        })
    }

    /// Rows committed but not yet acknowledged by the sink.
    pub fn depth(&self) -> u64 {
        self.shared.depth.load(Ordering::Acquire)
    }

    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Acquire)
    }

    /// Tells the relay that `rows` more rows were committed.
    pub fn committed(&self, rows: u64) {
        let depth = self.shared.depth.fetch_add(rows, Ordering::AcqRel) + rows;
        self.metrics.outbox_depth.set(depth as i64);
        let (lock, cv) = &self.shared.wake;
        if let Ok(mut w) = lock.lock() {
            *w = true;
            cv.notify_one();
        }
    }

    /// Why the relay stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until the outbox is empty, the relay fails, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.failure() {
                return Err(f);
            }
            if self.depth() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} rows still undelivered after {timeout:?}",
                    self.depth()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Worker {
    store: Arc<StateStore>,
    sink: Box<dyn Sink>,
    cfg: RelayConfig,
    metrics: Metrics,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(&mut self) -> Result<(), String> {
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut delivered_any = false;
            let streams = self.store.next_seqs().map_err(|e| e.to_string())?;
            for (table, partition) in streams.keys().copied() {
                loop {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    let rows = self
                        .store
                        .outbox_rows(table, partition, self.cfg.batch_rows)
                        .map_err(|e| e.to_string())?;
                    if rows.is_empty() {
                        break;
                    }
                    self.deliver(table, partition, rows)?;
                    delivered_any = true;
                }
            }
            if !delivered_any {
                let (lock, cv) = &self.shared.wake;
                let guard = lock.lock().map_err(|e| e.to_string())?;
                let (mut woken, _) = cv
                    .wait_timeout_while(guard, Duration::from_millis(50), |w| !*w)
                    .map_err(|e| e.to_string())?;
                *woken = false;
            }
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        table: Table,
        partition: i32,
        rows: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), String> {
        let first_seq = rows[0].0;
        let last_seq = rows[rows.len() - 1].0;
        if last_seq - first_seq + 1 != rows.len() as u64 {
            return Err(format!(
                "outbox for {table} partition {partition} has a hole between {first_seq} and {last_seq}"
            ));
        }
        let payload: Vec<Vec<u8>> = rows.into_iter().map(|(_, r)| r).collect();
        let started = Instant::now();
        let mut backoff = self.cfg.initial_backoff;
        loop {
            match self.sink.append(table, partition, first_seq, &payload) {
                Ok(out) => {
                    self.metrics
                        .relay_delivered(table.name(), out.written, out.already_present);
                    break;
                }
                Err(SinkError::Rejected { count, reason }) => {
                    self.metrics.sink_error("rejected");
                    self.dead_letter(table, partition, first_seq, &payload, &reason)?;
                    self.metrics.dead_letter_rows.inc_by(count as u64);
                    self.sink
                        .skip(table, partition, last_seq)
                        .map_err(|e| format!("moving the sink past dead-lettered rows: {e}"))?;
                    tracing::error!(table = %table, partition, first_seq, rows = count, reason = %reason, "Sink rejected rows; written to the dead-letter store.");
                    break;
                }
                Err(e) if e.is_retryable() => {
                    self.metrics.sink_error("transient");
                    if started.elapsed() >= self.cfg.give_up_after {
                        return Err(format!(
                            "sink unavailable for {:?} delivering {table} partition {partition} from seq {first_seq}: {e}",
                            started.elapsed()
                        ));
                    }
                    tracing::warn!(table = %table, partition, error = %e, retry_in_ms = backoff.as_millis() as u64, "Sink write failed; retrying.");
                    // Full jitter: sleep uniformly in [0, backoff], then double up to the cap.
                    let sleep = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
                    std::thread::sleep(sleep);
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    if self.shared.stop.load(Ordering::Acquire) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.metrics.sink_error(match e {
                        SinkError::Gap { .. } => "gap",
                        _ => "fatal",
                    });
                    return Err(format!(
                        "delivering {table} partition {partition} from seq {first_seq}: {e}"
                    ));
                }
            }
        }
        self.store
            .outbox_delete_through(table, partition, last_seq)
            .map_err(|e| e.to_string())?;
        let n = payload.len() as u64;
        let prev = self
            .shared
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d.saturating_sub(n))
            })
            .unwrap_or(0);
        self.metrics.outbox_depth.set(prev.saturating_sub(n) as i64);
        self.shared.delivered.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    fn dead_letter(
        &self,
        table: Table,
        partition: i32,
        first_seq: u64,
        rows: &[Vec<u8>],
        reason: &str,
    ) -> Result<(), String> {
        std::fs::create_dir_all(&self.cfg.dead_letter_dir).map_err(|e| e.to_string())?;
        let path = self
            .cfg
            .dead_letter_dir
            .join(format!("{}.jsonl", table.name()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening dead-letter file {}: {e}", path.display()))?;
        for (i, row) in rows.iter().enumerate() {
            let line = serde_json::json!({
                "table": table.name(),
                "source_partition": partition,
                "outbox_seq": first_seq + i as u64,
                "reason": reason,
                "row": String::from_utf8_lossy(row),
            });
            writeln!(f, "{line}").map_err(|e| e.to_string())?;
        }
        f.sync_data().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use paydedup_sink::MemorySink;
    use paydedup_state::{StateBatch, StoreOptions};

    use super::*;

    /// A sink double that shares its rows with the test and can fail on demand.
    struct Shared(Arc<Mutex<MemorySink>>);

    impl Sink for Shared {
        fn append(
            &mut self,
            t: Table,
            p: i32,
            s: u64,
            r: &[Vec<u8>],
        ) -> Result<paydedup_sink::AppendOutcome, SinkError> {
            self.0.lock().unwrap().append(t, p, s, r)
        }
        fn next_seq(&mut self, t: Table, p: i32) -> Result<Option<u64>, SinkError> {
            self.0.lock().unwrap().next_seq(t, p)
        }
    }

    fn cfg(dir: &std::path::Path) -> RelayConfig {
        RelayConfig {
            batch_rows: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            give_up_after: Duration::from_secs(5),
            dead_letter_dir: dir.join("dead-letter"),
        }
    }

    #[test]
    fn delivers_in_order_retries_transient_errors_and_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            StateStore::open(&dir.path().join("state"), &StoreOptions::default()).unwrap(),
        );
        let mut b = StateBatch::new();
        for s in 0..10 {
            b.put_outbox(Table::Payments, 0, s, format!("row{s}").into_bytes());
        }
        b.set_next_seq(Table::Payments, 0, 10);
        store.commit(b).unwrap();
        let sink = Arc::new(Mutex::new(MemorySink {
            fail_next: 3,
            ..MemorySink::default()
        }));
        let relay = OutboxRelay::spawn(
            store.clone(),
            Box::new(Shared(sink.clone())),
            cfg(dir.path()),
            Metrics::new(),
        )
        .unwrap();
        relay.flush(Duration::from_secs(10)).unwrap();
        relay.stop();
        let rows = sink.lock().unwrap().rows[&(Table::Payments, 0)].clone();
        assert_eq!(
            rows,
            (0..10)
                .map(|s| format!("row{s}").into_bytes())
                .collect::<Vec<_>>()
        );
        assert!(store
            .outbox_rows(Table::Payments, 0, 100)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_sink_that_never_recovers_stops_the_relay_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            StateStore::open(&dir.path().join("state"), &StoreOptions::default()).unwrap(),
        );
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 0, 0, b"row".to_vec());
        b.set_next_seq(Table::Payments, 0, 1);
        store.commit(b).unwrap();
        let sink = Arc::new(Mutex::new(MemorySink {
            fail_next: usize::MAX,
            ..MemorySink::default()
        }));
        let mut c = cfg(dir.path());
        c.give_up_after = Duration::from_millis(50);
        let relay =
            OutboxRelay::spawn(store.clone(), Box::new(Shared(sink)), c, Metrics::new()).unwrap();
        let err = relay.flush(Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("sink unavailable"), "{err}");
        relay.stop();
        // Nothing was lost: the row is still in the outbox.
        assert_eq!(store.outbox_rows(Table::Payments, 0, 10).unwrap().len(), 1);
    }
}
