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
//! skipping or reordering rows. A row the sink refuses as invalid (the sink names it;
//! BigQuery refuses the whole append for it) goes alone to the dead-letter file with
//! the reason, is counted, and is then treated as delivered: the valid rows before it
//! are appended first, the ones after it are sent again.
//!
//! - this file: [`OutboxRelay`], the handle the processor holds (depth, notices, flush);
//! - `worker`: the delivery loop on the relay's own thread;
//! - `dead_letter`: the dead-letter store; [`RelayError`]: why the relay stops;
//! - `resend_check`: resent rows below the sink's position must be the sink's rows.

mod age;
mod dead_letter;
mod error;
mod resend_check;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use paydedup_sink::Sink;
use paydedup_state::{StateBatch, StateError, StateStore, Table, WrittenCommit};

pub use error::RelayError;

use crate::pipeline::compact_row;

use crate::metrics::events::{OutboxAgeMeasured, OutboxDepthChanged, RelayStopped};
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
    /// Per (table, partition), the sequence below which resent rows are compared with
    /// the sink's before they count as already present (see `agreement`).
    pub verify_resent_below: BTreeMap<(Table, i32), u64>,
}

/// What the processor's thread and the relay's thread share.
#[derive(Default)]
struct Shared {
    /// Rows committed to the outbox and not yet acknowledged by the sink.
    depth: AtomicU64,
    stop: AtomicBool,
    /// Set and signalled when a commit adds rows, so an idle relay wakes at once.
    wake: (Mutex<bool>, Condvar),
    /// Why the relay stopped, until the processor takes it.
    failure: Mutex<Option<RelayError>>,
    /// When the undelivered rows were committed.
    ages: age::OutboxAges,
}

/// Commits batches whose rows this relay delivers; `Send`, so a commit can run on its
/// own thread while the processor works on the next batch.
pub struct RelayCommitter {
    shared: Arc<Shared>,
}

impl RelayCommitter {
    /// Commits `batch` to the store and hands its outbox rows to the relay.
    ///
    /// NOTE: the rows are counted *before* the commit. From the instant they are on
    /// disk the relay may find them on its own poll, deliver them and subtract them
    /// from the depth; counting after the commit would let that subtraction come
    /// first, saturate at zero, and leave the depth too high forever (a bounded run
    /// would never exit, backpressure would eventually pause for good). If the commit
    /// fails the count stays too high, but the processor then exits.
    pub fn commit(&self, store: &StateStore, batch: StateBatch) -> Result<(), StateError> {
        self.write(store, batch)?.make_durable(store)
    }

    /// [`RelayCommitter::commit`] in two steps (`StateStore::write_commit`): the rows
    /// are counted and written; the relay is woken once [`RelayWritten::make_durable`]
    /// made them durable (until then the store hides them from it).
    pub fn write(&self, store: &StateStore, batch: StateBatch) -> Result<RelayWritten, StateError> {
        let rows = batch.outbox_rows();
        self.shared.depth.fetch_add(rows, Ordering::AcqRel);
        self.shared
            .ages
            .committed(batch.outbox_ends().iter().copied(), Instant::now());
        Ok(RelayWritten {
            written: store.write_commit(batch)?,
            committer: RelayCommitter {
                shared: self.shared.clone(),
            },
        })
    }

    /// Wakes the relay thread: there are new rows.
    fn wake(&self) {
        let (lock, cv) = &self.shared.wake;
        if let Ok(mut w) = lock.lock() {
            *w = true;
            cv.notify_one();
        }
    }
}

/// A batch [`RelayCommitter::write`] wrote, not yet durable.
#[must_use = "a written batch is durable only after make_durable"]
pub struct RelayWritten {
    written: WrittenCommit,
    committer: RelayCommitter,
}

impl RelayWritten {
    /// Makes the batch durable (`StateStore::make_durable`), then wakes the relay.
    pub fn make_durable(self, store: &StateStore) -> Result<(), StateError> {
        store.make_durable(self.written)?;
        // The exported gauge is read from the counter at each scrape (see `spawn`).
        self.committer.wake();
        Ok(())
    }
}

pub struct OutboxRelay {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl OutboxRelay {
    /// Starts the relay thread over the rows already in the outbox.
    pub fn spawn(
        store: Arc<StateStore>,
        sink: Box<dyn Sink>,
        cfg: RelayConfig,
        metrics: Metrics,
    ) -> Result<OutboxRelay, RelayError> {
        let shared = Arc::new(Shared::default());
        let depths = store.outbox_depths()?;
        let initial: u64 = depths.values().sum();
        shared.depth.store(initial, Ordering::Release);
        let next_seqs = store.next_seqs()?;
        let waiting = depths
            .keys()
            .filter_map(|&(t, p)| Some((t, p, *next_seqs.get(&(t, p))?)));
        shared.ages.committed(waiting, Instant::now());
        let weak = Arc::downgrade(&shared);
        // The depth and age gauges are read at each scrape. NOTE: the depth is not
        // emitted where it changes: the commit thread and the relay thread each compute
        // a new value and then set the gauge, and when the two interleave the older
        // value can land last and stay there (a paused consumer with the gauge showing
        // 1 row while the counter held thousands: a CI failure of the outage test).
        metrics.on_render("outbox", move |m| {
            if let Some(shared) = weak.upgrade() {
                m.emit(OutboxDepthChanged {
                    rows: shared.depth.load(Ordering::Acquire),
                });
                let age = shared.ages.oldest(Instant::now());
                m.emit(OutboxAgeMeasured { age });
            }
        });
        let mut worker = worker::Worker {
            store,
            sink,
            cfg,
            metrics,
            shared: shared.clone(),
            scratch: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("outbox-relay".into())
            .spawn(move || {
                if let Err(error) = worker.run() {
                    worker.metrics.emit(RelayStopped { error: &error });
                    if let Ok(mut f) = worker.shared.failure.lock() {
                        *f = Some(error);
                    }
                }
            })
            .map_err(RelayError::Spawn)?;
        Ok(OutboxRelay {
            shared,
            handle: Some(handle),
        })
    }

    /// Rows committed but not yet acknowledged by the sink.
    pub fn depth(&self) -> u64 {
        self.shared.depth.load(Ordering::Acquire)
    }

    /// Commits `batch` to the store and hands its outbox rows to the relay (see
    /// [`RelayCommitter::commit`]).
    pub fn commit(&self, store: &StateStore, batch: StateBatch) -> Result<(), StateError> {
        self.committer().commit(store, batch)
    }

    /// A handle that commits batches for this relay from another thread (the
    /// checkpoint's commit thread).
    pub fn committer(&self) -> RelayCommitter {
        RelayCommitter {
            shared: self.shared.clone(),
        }
    }

    /// Why the relay stopped, if it did (taken: reported once).
    pub fn take_failure(&self) -> Option<RelayError> {
        match self.shared.failure.lock() {
            Ok(mut f) => f.take(),
            Err(_) => Some(RelayError::Poisoned),
        }
    }

    /// Waits until the outbox is empty, the relay fails, or `timeout` passes.
    ///
    /// A relay whose thread has ended delivers nothing more: the flush then returns at
    /// once ([`RelayError::Stopped`]) instead of waiting out `timeout` for a depth that
    /// cannot fall. That is the fenced hand-off: the processor takes the relay's
    /// `fenced` error to hand its partitions over (`Processor::run`), then flushes. The
    /// rows the fence stopped stay in the outbox (a partition's new owner re-derives
    /// them from Kafka; this instance's next relay delivers those of the partitions it
    /// keeps), so not waiting loses nothing and sends nothing twice.
    pub fn flush(&self, timeout: Duration) -> Result<(), RelayError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_failure() {
                return Err(f);
            }
            if self.depth() == 0 {
                return Ok(());
            }
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                // The thread stores its error before it ends: an error stored since the
                // check above is reported, not hidden behind `Stopped`.
                return Err(self.take_failure().unwrap_or_else(|| RelayError::Stopped {
                    undelivered: self.depth(),
                }));
            }
            if Instant::now() >= deadline {
                return Err(RelayError::FlushTimeout {
                    undelivered: self.depth(),
                    timeout,
                });
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

/// Up to `limit` undelivered rows of a stream, from its first, as the sink receives
/// them: compact rows rendered as JSON (see `pipeline::compact_row`), on the caller's
/// thread. A row that cannot be rendered stops delivery ([`RelayError::BadRow`]).
pub fn deliverable_rows(
    store: &StateStore,
    table: Table,
    partition: i32,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, RelayError> {
    deliverable_rows_with(store, table, partition, limit, &mut Vec::new())
}

/// [`deliverable_rows`], each row rendered straight from its decompressed outbox page,
/// which lands in `scratch` (the relay's thread keeps one for its life). Before, every
/// page was decompressed into new, zeroed memory and each row copied out of it before
/// it was rendered: reading pages was 94 of the relay thread's 681 samples in a 2 M
/// profile on the peers' input, 44 after (docs/benchmarks.md, thirty-ninth step).
pub(crate) fn deliverable_rows_with(
    store: &StateStore,
    table: Table,
    partition: i32,
    limit: usize,
    scratch: &mut Vec<u8>,
) -> Result<Vec<(u64, Vec<u8>)>, RelayError> {
    let mut rows = Vec::new();
    let mut bad = None;
    store.visit_outbox_rows(table, partition, limit, scratch, |seq, row| {
        // Past a bad row the visit goes on, rendering nothing: the rows stay in the
        // outbox, and a damaged page further on is still reported first, as before.
        if bad.is_some() {
            return;
        }
        match compact_row::to_json(row) {
            Ok(json) => rows.push((seq, json)),
            Err(source) => {
                bad = Some(RelayError::BadRow {
                    table,
                    partition,
                    seq,
                    source,
                })
            }
        }
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use paydedup_sink::{MemorySink, SinkError};
    use paydedup_state::StoreOptions;
    use paydedup_state::Table;

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
        fn skip(&mut self, t: Table, p: i32, through: u64) -> Result<(), SinkError> {
            self.0.lock().unwrap().skip(t, p, through)
        }
        fn stored_identities(
            &mut self,
            t: Table,
            p: i32,
            from: u64,
            to: u64,
        ) -> Result<Vec<(u64, paydedup_sink::RowIdentity)>, SinkError> {
            self.0.lock().unwrap().stored_identities(t, p, from, to)
        }
        fn scan_rows(
            &mut self,
            t: Table,
            partitions: &[i32],
            columns: &[&str],
            each: &mut dyn FnMut(&paydedup_sink::StoredRow) -> Result<(), SinkError>,
        ) -> Result<(), SinkError> {
            self.0
                .lock()
                .unwrap()
                .scan_rows(t, partitions, columns, each)
        }
    }

    fn cfg(dir: &std::path::Path) -> RelayConfig {
        RelayConfig {
            batch_rows: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            give_up_after: Duration::from_secs(5),
            dead_letter_dir: dir.join("dead-letter"),
            verify_resent_below: BTreeMap::new(),
        }
    }

    fn open_store(dir: &std::path::Path) -> Arc<StateStore> {
        Arc::new(StateStore::open(&dir.join("state"), &StoreOptions::default()).unwrap())
    }

    /// A batch of `n` payments rows `row0…` at sequences 0..n of partition 0.
    fn rows(n: u64) -> StateBatch {
        let mut b = StateBatch::new();
        for s in 0..n {
            b.put_outbox(Table::Payments, 0, s, format!("row{s}").into_bytes());
        }
        b.set_next_seq(Table::Payments, 0, n);
        b
    }

    fn spawn(
        store: &Arc<StateStore>,
        sink: &Arc<Mutex<MemorySink>>,
        dir: &std::path::Path,
    ) -> OutboxRelay {
        OutboxRelay::spawn(
            store.clone(),
            Box::new(Shared(sink.clone())),
            cfg(dir),
            Metrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn rows_are_rendered_through_one_scratch_across_streams_and_a_bad_row_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // A large page and a small one: the larger read first, its bytes left in the
        // scratch when the smaller is read.
        let mut b = StateBatch::new();
        for s in 0..300 {
            let row = format!("{{\"row\":{s},\"pad\":\"{}\"}}", "y".repeat(100));
            b.put_outbox(Table::Payments, 0, s, row);
        }
        b.set_next_seq(Table::Payments, 0, 300);
        b.put_outbox(Table::DedupAudit, 1, 0, b"audit0");
        b.put_outbox(Table::DedupAudit, 1, 1, b"audit1");
        b.set_next_seq(Table::DedupAudit, 1, 2);
        store.commit(b).unwrap();
        let mut scratch = Vec::new();
        for (t, p, limit) in [
            (Table::Payments, 0, 1000),
            (Table::DedupAudit, 1, 1000),
            (Table::Payments, 0, 7),
        ] {
            let through_scratch = deliverable_rows_with(&store, t, p, limit, &mut scratch).unwrap();
            assert_eq!(
                through_scratch,
                deliverable_rows(&store, t, p, limit).unwrap()
            );
            assert_eq!(
                through_scratch.len(),
                limit.min(if p == 0 { 300 } else { 2 })
            );
        }
        assert_eq!(
            deliverable_rows_with(&store, Table::DedupAudit, 1, 1000, &mut scratch).unwrap(),
            vec![(0, b"audit0".to_vec()), (1, b"audit1".to_vec())]
        );
        // A compact row that cannot be rendered (a schema no build wrote) stops
        // delivery, named by its sequence.
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 2, 0, b"{}");
        b.put_outbox(Table::Payments, 2, 1, [compact_row::MARKER, 99]);
        b.put_outbox(Table::Payments, 2, 2, b"{}");
        b.set_next_seq(Table::Payments, 2, 3);
        store.commit(b).unwrap();
        match deliverable_rows_with(&store, Table::Payments, 2, 10, &mut scratch) {
            Err(RelayError::BadRow {
                seq: 1,
                partition: 2,
                ..
            }) => {}
            other => panic!("expected the bad row at sequence 1, got {other:?}"),
        }
    }

    #[test]
    fn delivers_in_order_retries_transient_errors_and_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.commit(rows(10)).unwrap();
        let sink = Arc::new(Mutex::new(MemorySink {
            fail_next: 3,
            ..MemorySink::default()
        }));
        let relay = spawn(&store, &sink, dir.path());
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
        let store = open_store(dir.path());
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 0, 0, b"row");
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
        let err = relay
            .flush(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink unavailable"), "{err}");
        relay.stop();
        // Nothing was lost: the row is still in the outbox.
        assert_eq!(store.outbox_rows(Table::Payments, 0, 10).unwrap().len(), 1);
    }

    /// The fenced hand-off: the processor takes the fenced relay's error to hand its
    /// partitions over (`Processor::run`), then flushes before stopping the relay. The
    /// relay's thread has ended, so the flush must say so at once, not wait out its
    /// timeout (`--sink-give-up-secs`, 300 s by default); the rows stay in the outbox.
    #[test]
    fn a_flush_after_the_fenced_error_was_taken_returns_at_once_and_keeps_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.commit(rows(5)).unwrap();
        // A partition a later owner has claimed: every append is refused as fenced.
        let fenced = MemorySink {
            fenced_by: Some("a later claimant".into()),
            ..MemorySink::default()
        };
        let relay = OutboxRelay::spawn(
            store.clone(),
            Box::new(fenced),
            cfg(dir.path()),
            Metrics::new(),
        )
        .unwrap();
        // As the processor's loop does: take the error, see it is the fence.
        let deadline = Instant::now() + Duration::from_secs(10);
        let failure = loop {
            if let Some(f) = relay.take_failure() {
                break f;
            }
            assert!(Instant::now() < deadline, "the fenced relay never stopped");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(failure.is_fenced(), "{failure}");
        // The final flush: a stopped relay, so `stopped` at once. Before, it polled an
        // outbox nothing would drain until the timeout and said `flush_timeout`.
        let err = relay.flush(Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.code(), "stopped", "{err}");
        relay.stop();
        // Nothing was lost or sent: the rows are still in the outbox.
        assert_eq!(store.outbox_rows(Table::Payments, 0, 10).unwrap().len(), 5);
    }

    /// The value of an unlabelled gauge, as a scrape renders it.
    fn gauge(metrics: &Metrics, name: &str) -> f64 {
        let text = String::from_utf8(metrics.render()).unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is exported"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn oldest_age(metrics: &Metrics) -> f64 {
        gauge(metrics, "paydedup_outbox_oldest_row_age_seconds")
    }

    /// A relay over `store` whose sink refuses every append (retrying), reporting to
    /// `metrics`.
    fn spawn_refusing(
        store: &Arc<StateStore>,
        dir: &std::path::Path,
        metrics: &Metrics,
    ) -> OutboxRelay {
        let refusing = Arc::new(Mutex::new(MemorySink {
            fail_next: usize::MAX,
            ..MemorySink::default()
        }));
        OutboxRelay::spawn(
            store.clone(),
            Box::new(Shared(refusing)),
            cfg(dir),
            metrics.clone(),
        )
        .unwrap()
    }

    /// The age gauge is wired to the relay: rows the sink keeps refusing age (rows
    /// found at start count from the start), delivered rows leave it at 0.
    #[test]
    fn the_oldest_row_age_grows_while_rows_wait_and_is_zero_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.commit(rows(4)).unwrap();
        // A sink that refuses everything: the found rows and a new commit wait.
        let metrics = Metrics::new();
        let relay = spawn_refusing(&store, dir.path(), &metrics);
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 1, 0, b"late");
        b.set_next_seq(Table::Payments, 1, 1);
        relay.commit(&store, b).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(oldest_age(&metrics) >= 0.05, "{}", oldest_age(&metrics));
        relay.stop();

        // A sink that takes them: every row delivered, nothing waits.
        let sink = Arc::new(Mutex::new(MemorySink::default()));
        let metrics = Metrics::new();
        let relay = OutboxRelay::spawn(
            store.clone(),
            Box::new(Shared(sink)),
            cfg(dir.path()),
            metrics.clone(),
        )
        .unwrap();
        relay.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(oldest_age(&metrics), 0.0);
        relay.stop();
    }

    /// The depth gauge shows the relay's counter at every scrape, whatever value a
    /// thread that lost a race last set (here set by hand: the commit and relay threads
    /// interleaving can leave a stale value, which the outage test once scraped).
    #[test]
    fn the_depth_gauge_is_the_counter_at_scrape_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let metrics = Metrics::new();
        let relay = spawn_refusing(&store, dir.path(), &metrics);
        relay.commit(&store, rows(5)).unwrap();
        metrics.emit(OutboxDepthChanged { rows: 1 });
        assert_eq!(relay.depth(), 5);
        assert_eq!(gauge(&metrics, "paydedup_outbox_depth_rows"), 5.0);
        relay.stop();
    }

    /// Issue 9, hole 6: the relay may deliver a commit's rows before the processor's
    /// notice of that commit arrives. The depth must still end at 0, or a bounded run
    /// never exits and backpressure eventually pauses consumption for good.
    #[test]
    fn depth_ends_at_zero_when_rows_are_delivered_before_the_commit_notice() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let sink = Arc::new(Mutex::new(MemorySink::default()));
        let relay = spawn(&store, &sink, dir.path());
        relay.commit(&store, rows(5)).unwrap();
        // The relay polls on its own: wait until the sink holds every row, as if it had
        // found them before the notice.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink
            .lock()
            .unwrap()
            .rows
            .get(&(Table::Payments, 0))
            .map_or(0, Vec::len)
            < 5
        {
            assert!(Instant::now() < deadline, "the relay never delivered");
            std::thread::sleep(Duration::from_millis(5));
        }
        relay.flush(Duration::from_secs(5)).unwrap();
        assert_eq!(relay.depth(), 0);
        relay.stop();
    }

    /// Issue 9, hole 3: one row the sink refuses must not take its append's valid rows
    /// to the dead-letter file. Only the row the sink names is dead-lettered; the rows
    /// before and after it are delivered, in order.
    #[test]
    fn only_the_row_the_sink_names_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.commit(rows(10)).unwrap();
        let sink = Arc::new(Mutex::new(MemorySink {
            reject_seqs: [4].into(),
            ..MemorySink::default()
        }));
        let relay = spawn(&store, &sink, dir.path());
        relay.flush(Duration::from_secs(10)).unwrap();
        relay.stop();
        let delivered = sink.lock().unwrap().rows[&(Table::Payments, 0)].clone();
        let expected: Vec<Vec<u8>> = (0..10)
            .filter(|s| *s != 4)
            .map(|s| format!("row{s}").into_bytes())
            .collect();
        assert_eq!(delivered, expected);
        let dead = std::fs::read_to_string(dir.path().join("dead-letter/payments.jsonl")).unwrap();
        assert_eq!(dead.lines().count(), 1, "{dead}");
        assert!(
            dead.contains("row4") && dead.contains("\"outbox_seq\":4"),
            "{dead}"
        );
        assert!(store
            .outbox_rows(Table::Payments, 0, 100)
            .unwrap()
            .is_empty());
    }
}
