//! The checkpoint step: one batch's effects become durable, then visible.
//!
//! Every batch — a polled batch or the drain at the end of a bounded run — goes through
//! [`Checkpoint::commit`] (or [`Checkpoint::commit_overlapped`]), which does, in this
//! order:
//!
//! 1. records the **expiry horizons** in the batch: each owned partition's watermark
//!    (a dedup entry expires by its own partition's, so a quiet partition keeps only
//!    its own entries) and their minimum (the fallback), so the compaction filters only
//!    ever use committed watermarks;
//! 2. **commits** the batch through the relay ([`RelayCommitter::commit`]): its rows are
//!    counted in the outbox depth (the backpressure signal), then state deltas, outbox
//!    rows, next offsets and watermarks go to disk in one atomic RocksDB write (synced
//!    when `--sync`: the fsync is a step of its own, `StateStore::make_durable`, and
//!    until it the store hides the batch's rows from the relay); only then does the
//!    store advance the in-memory horizons the compaction filters and memory sweeps
//!    read, and the relay thread wakes;
//! 3. reports the **`BatchCommitted`** event (metrics and logs).
//!
//! Steps 2–3 of a polled batch run on commit threads of their own while the processor
//! polls and processes the next batches: the RocksDB write (WAL, memtable inserts) on
//! one, its fsync and what follows it on another, so that the next batch's write runs
//! during the fsync, and the pipeline uses the other core meanwhile. At most
//! `COMMITS_IN_FLIGHT` commits are in flight, and they land in batch order, each after
//! the one before ([`CommitQueue`]); the pipeline reads the in-flight batches' dedup and
//! fraud writes from its own copies (`pipeline::prefetch::InFlight`). Nothing outside
//! the process sees a batch before its commit is durable: the relay is woken, and the
//! horizons and the consumer group's offsets move, only after it.
//!
//! A failed commit returns an error (at the latest when a later batch waits for it;
//! every commit after it refuses to land, `CommitQueue`) and the process exits: the
//! pipeline's in-memory state is then ahead of the disk, and only a restart from
//! RocksDB re-aligns them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use paydedup_state::{StateBatch, StateError, StateStore};

use crate::commit_queue::{CommitQueue, DurableStep};
use crate::metrics::events::BatchCommitted;
use crate::metrics::Metrics;
use crate::pipeline::{BatchStats, Pipeline};
use crate::relay::{OutboxRelay, RelayCommitter, RelayWritten};

pub struct Checkpoint {
    store: Arc<StateStore>,
    relay: OutboxRelay,
    metrics: Metrics,
    /// Every partition this instance owns: the horizon is the minimum over all of them.
    owned: Vec<i32>,
    /// The commits running on threads of their own, each returning its batch's time
    /// from start to durable commit and the offsets it made durable.
    in_flight: CommitQueue<(Duration, BTreeMap<i32, i64>)>,
    /// The next offset of every owned partition as of the last durable commit.
    durable_offsets: BTreeMap<i32, i64>,
}

/// Steps 2–3 of the checkpoint, on whichever thread runs them.
struct CommitStep {
    store: Arc<StateStore>,
    committer: RelayCommitter,
    metrics: Metrics,
    stats: BatchStats,
    started: Instant,
}

impl CommitStep {
    /// Returns the batch's time from its start to its durable commit.
    fn run(self, batch: StateBatch) -> Result<Duration, StateError> {
        self.write(batch)?.make_durable()
    }

    /// The commit's write (see `StateStore::write_commit`); the step returned makes it
    /// durable, and visible.
    fn write(self, batch: StateBatch) -> Result<WrittenStep, StateError> {
        let commit_started = Instant::now();
        let written = self.committer.write(&self.store, batch)?;
        Ok(WrittenStep {
            step: self,
            written,
            commit_started,
        })
    }
}

/// A [`CommitStep`] written, not yet durable.
struct WrittenStep {
    step: CommitStep,
    written: RelayWritten,
    commit_started: Instant,
}

impl WrittenStep {
    /// Returns the batch's time from its start to its durable commit.
    fn make_durable(self) -> Result<Duration, StateError> {
        let WrittenStep {
            step,
            written,
            commit_started,
        } = self;
        written.make_durable(&step.store)?;
        let commit: Duration = commit_started.elapsed();
        let batch = step.started.elapsed();
        step.metrics.emit(BatchCommitted {
            stats: &step.stats,
            batch,
            commit,
        });
        Ok(batch)
    }
}

impl Checkpoint {
    pub fn new(
        store: Arc<StateStore>,
        relay: OutboxRelay,
        metrics: Metrics,
        owned: Vec<i32>,
    ) -> Checkpoint {
        Checkpoint {
            store,
            relay,
            metrics,
            owned,
            in_flight: CommitQueue::new("checkpoint"),
            durable_offsets: BTreeMap::new(),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn relay(&self) -> &OutboxRelay {
        &self.relay
    }

    /// Waits for the commits in flight, then gives the relay back, for the final flush
    /// (and, whatever that commit's fate, so that it can be stopped).
    pub fn into_relay(mut self) -> (OutboxRelay, anyhow::Result<()>) {
        let settled = self.settle().map(drop);
        (self.relay, settled)
    }

    /// The next offset of `partition` as of the last durable commit.
    pub fn durable_offset(&self, partition: i32) -> Option<i64> {
        self.durable_offsets.get(&partition).copied()
    }

    fn step(
        &self,
        pipeline: &Pipeline,
        batch: &mut StateBatch,
        stats: &BatchStats,
        started: Instant,
    ) -> CommitStep {
        stamp_watermarks(pipeline, &self.owned, batch);
        CommitStep {
            store: self.store.clone(),
            committer: self.relay.committer(),
            metrics: self.metrics.clone(),
            stats: stats.clone(),
            started,
        }
    }

    fn offsets(&self, pipeline: &Pipeline) -> BTreeMap<i32, i64> {
        self.owned
            .iter()
            .filter_map(|&p| Some((p, pipeline.next_offset(p)?)))
            .collect()
    }

    /// Commits `batch` (produced by `pipeline`, whose watermarks it carries) and makes
    /// it visible to the relay and the metrics, before returning. `started` is when the
    /// batch began.
    pub fn commit(
        &mut self,
        pipeline: &Pipeline,
        mut batch: StateBatch,
        stats: &BatchStats,
        started: Instant,
    ) -> anyhow::Result<()> {
        self.settle()?;
        let step = self.step(pipeline, &mut batch, stats, started);
        step.run(batch)
            .context("committing the batch to the state store")?;
        self.durable_offsets = self.offsets(pipeline);
        Ok(())
    }

    /// The same as [`Checkpoint::commit`], but returns as soon as the commit has started
    /// on a commit thread of its own, to land after the ones in flight. Waits first for
    /// the oldest commits until fewer than `COMMITS_IN_FLIGHT` are in flight, and
    /// returns their batches' times from start to durable commit.
    pub fn commit_overlapped(
        &mut self,
        pipeline: &Pipeline,
        mut batch: StateBatch,
        stats: &BatchStats,
        started: Instant,
    ) -> anyhow::Result<Vec<Duration>> {
        let step = self.step(pipeline, &mut batch, stats, started);
        let offsets = self.offsets(pipeline);
        // Written on one thread, made durable on another: the next batch's write runs
        // while this one's fsync does (`commit_queue`).
        let landed = self.in_flight.start_split(move || {
            let written = step
                .write(batch)
                .context("writing the batch to the state store")?;
            Ok(Box::new(move || {
                let took = written
                    .make_durable()
                    .context("committing the batch to the state store")?;
                Ok((took, offsets))
            }) as DurableStep<_>)
        })?;
        Ok(self.landed(landed))
    }

    /// Waits for the commits in flight: an error if one failed, else their batches'
    /// times from start to durable commit, oldest first.
    pub fn settle(&mut self) -> anyhow::Result<Vec<Duration>> {
        let landed = self.in_flight.settle()?;
        Ok(self.landed(landed))
    }

    /// Takes the offsets of commits that landed (in order, so the last is the newest).
    fn landed(&mut self, landed: Vec<(Duration, BTreeMap<i32, i64>)>) -> Vec<Duration> {
        landed
            .into_iter()
            .map(|(took, offsets)| {
                self.durable_offsets = offsets;
                took
            })
            .collect()
    }
}

/// Records the owned partitions' watermarks in `batch` as its expiry horizons: each
/// partition's, and their minimum (the fallback). `StateStore::make_durable` publishes them
/// to the TTL filters only once the batch is durable (a filter must never see a
/// watermark a crash could roll back).
pub fn stamp_watermarks(pipeline: &Pipeline, owned: &[i32], batch: &mut StateBatch) {
    let per_partition: Vec<(i32, i64)> = owned
        .iter()
        .filter_map(|&p| Some((p, pipeline.watermark(p)?)))
        .collect();
    if let Some(h) = per_partition.iter().map(|(_, wm)| *wm).min() {
        batch.set_horizon(h);
    }
    for &(p, wm) in &per_partition {
        batch.set_partition_horizon(p, wm);
    }
}

#[cfg(test)]
mod tests {
    use paydedup_event::encode_json;
    use paydedup_sink::MemorySink;
    use paydedup_state::StoreOptions;

    use super::*;
    use crate::pipeline::fixtures::{config, payment, MIN};
    use crate::pipeline::InputRecord;
    use crate::relay::RelayConfig;

    /// A checkpoint over `store` owning `owned`, its relay delivering to memory.
    fn checkpoint_over(
        store: &Arc<StateStore>,
        dir: &std::path::Path,
        owned: Vec<i32>,
    ) -> Checkpoint {
        let relay = OutboxRelay::spawn(
            store.clone(),
            Box::new(MemorySink::default()),
            RelayConfig {
                batch_rows: 5000,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                give_up_after: Duration::from_secs(5),
                dead_letter_dir: dir.join("dead-letter"),
                verify_resent_below: Default::default(),
            },
            Metrics::new(),
        )
        .unwrap();
        Checkpoint::new(store.clone(), relay, Metrics::new(), owned)
    }

    /// Payments `p-0` to `p-{n-1}`, one a second from 10:00, encoded.
    fn payments(n: i64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| encode_json(&payment(&format!("p-{i}"), i, 100)))
            .collect()
    }

    /// `input[range]` as records of partition 0, each at the offset of its index.
    fn on_partition_0(input: &[Vec<u8>], range: std::ops::Range<usize>) -> Vec<InputRecord<'_>> {
        range
            .map(|i| InputRecord {
                partition: 0,
                offset: i as i64,
                key: None,
                payload: &input[i],
                timestamp_ms: None,
            })
            .collect()
    }

    /// With commits in flight, the offsets reported durable (to the consumer group) are
    /// those of the newest batch that has landed, never of one still in flight; and a
    /// batch is handed over only once fewer than `COMMITS_IN_FLIGHT` are in flight.
    #[test]
    fn durable_offsets_are_the_newest_landed_batchs() {
        use crate::pipeline::COMMITS_IN_FLIGHT;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            StateStore::open(&dir.path().join("state"), &StoreOptions::default()).unwrap(),
        );
        let mut pipeline = Pipeline::load(config(), &store).unwrap();
        let mut checkpoint = checkpoint_over(&store, dir.path(), vec![0]);
        let input = payments(50);
        for k in 0..5 {
            let records = on_partition_0(&input, k * 10..k * 10 + 10);
            let (batch, stats) = pipeline.process(&records, &store).unwrap();
            let landed = checkpoint
                .commit_overlapped(&pipeline, batch, &stats, Instant::now())
                .unwrap();
            // Batch k - COMMITS_IN_FLIGHT had to land for batch k to be handed over.
            let expected = k
                .checked_sub(COMMITS_IN_FLIGHT)
                .map(|j| ((j + 1) * 10) as i64);
            assert_eq!(landed.len(), usize::from(expected.is_some()), "batch {k}");
            assert_eq!(checkpoint.durable_offset(0), expected, "batch {k}");
            let stored = store.next_offsets().unwrap().get(&0).copied();
            assert!(
                expected <= stored,
                "batch {k}: {expected:?} reported, {stored:?} stored"
            );
        }
        assert_eq!(checkpoint.settle().unwrap().len(), COMMITS_IN_FLIGHT);
        assert_eq!(checkpoint.durable_offset(0), Some(50));
        assert_eq!(store.next_offsets().unwrap().get(&0), Some(&50));
        let (relay, settled) = checkpoint.into_relay();
        settled.unwrap();
        relay.stop();
    }

    /// A commit that fails while others are in flight: the error reaches the caller (at
    /// the latest when a later batch waits for it), no batch after it lands although
    /// one was already handed over, the offsets reported durable stay those of the last
    /// batch that landed, and a restart from the store resumes there and delivers every
    /// payment exactly once. The failure is the store's test double for a disk that
    /// fails one write (`fail_commit_after`): the commits after it would land if asked.
    #[cfg(feature = "fail-points")]
    #[test]
    fn after_a_failed_commit_nothing_later_lands_and_a_restart_resumes_at_the_last_landed_batch() {
        use crate::pipeline::COMMITS_IN_FLIGHT;
        use paydedup_state::Table;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let input = payments(60);
        {
            let store = Arc::new(StateStore::open(&path, &StoreOptions::default()).unwrap());
            store.fail_commit_after(2);
            let mut pipeline = Pipeline::load(config(), &store).unwrap();
            let mut checkpoint = checkpoint_over(&store, dir.path(), vec![0]);
            let mut failed = None;
            for k in 0..6 {
                let (batch, stats) = pipeline
                    .process(&on_partition_0(&input, k * 10..k * 10 + 10), &store)
                    .unwrap();
                match checkpoint.commit_overlapped(&pipeline, batch, &stats, Instant::now()) {
                    Ok(_) => assert!(failed.is_none(), "batch {k} handed over after a failure"),
                    // The failure itself first, then a refusal that names it.
                    Err(e) if failed.is_none() => {
                        failed = Some(k);
                        assert!(
                            format!("{e:#}").contains("injected commit failure"),
                            "{e:#}"
                        );
                    }
                    Err(e) => {
                        assert!(
                            format!("{e:#}").contains("an earlier commit failed"),
                            "{e:#}"
                        )
                    }
                }
            }
            // Batch 2 failed; batch 3 was handed over before that was known, and batch 4
            // waited for batch 2 (two in flight) and got its error.
            assert_eq!(failed, Some(2 + COMMITS_IN_FLIGHT));
            assert!(checkpoint.settle().is_err(), "the failure sticks");
            assert_eq!(checkpoint.durable_offset(0), Some(20));
            assert_eq!(store.next_offsets().unwrap().get(&0), Some(&20));
            let (relay, settled) = checkpoint.into_relay();
            assert!(settled.is_err());
            relay.stop();
        }
        // The restart: from offset 20, the rest of the input, committed as usual.
        let store = Arc::new(StateStore::open(&path, &StoreOptions::default()).unwrap());
        let mut pipeline = Pipeline::load(config(), &store).unwrap();
        assert_eq!(pipeline.next_offset(0), Some(20));
        let (batch, _) = pipeline
            .process(&on_partition_0(&input, 20..60), &store)
            .unwrap();
        store.commit(batch).unwrap();
        // Each payment's row carries the next sequence: payment i is row i, whether
        // the relay delivered it before the failure (gone from the outbox) or not.
        let rows = crate::relay::deliverable_rows(&store, Table::Payments, 0, 1_000).unwrap();
        assert_eq!(rows.last().map(|(seq, _)| *seq), Some(59));
        for (seq, row) in &rows {
            let r: serde_json::Value = serde_json::from_slice(row).unwrap();
            assert_eq!(r["transaction_id"], format!("p-{seq}"));
        }
        assert_eq!(store.next_seqs().unwrap()[&(Table::Payments, 0)], 60);
    }

    /// Issue 9, hole 7: an owned partition that went quiet early must not keep the
    /// other partitions' expired dedup keys on disk (with one horizon for all, the
    /// minimum over partitions, it pins everything at its own old watermark).
    #[test]
    fn an_idle_partition_does_not_keep_other_partitions_keys_alive() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            dedup_retention_micros: Some(60 * MIN),
            ..StoreOptions::default()
        };
        let store = Arc::new(StateStore::open(&dir.path().join("state"), &opts).unwrap());
        let mut pipeline = Pipeline::load(config(), &store).unwrap();
        let mut checkpoint = checkpoint_over(&store, dir.path(), vec![0, 1]);
        // Partition 1: one payment at 10:00, then nothing. Partition 0: one payment
        // every 10 s of event time for 4 hours.
        let mut input = vec![(1, encode_json(&payment("quiet", 0, 100)))];
        for i in 0..1440 {
            input.push((0, encode_json(&payment(&format!("busy-{i}"), i * 10, 100))));
        }
        let ts = Some(payment("x", 5 * 3600, 1).event_time.timestamp_millis());
        for (n, chunk) in input.chunks(200).enumerate() {
            let records: Vec<InputRecord<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, (p, bytes))| InputRecord {
                    partition: *p,
                    offset: (n * 200 + i) as i64,
                    key: None,
                    payload: bytes,
                    timestamp_ms: ts,
                })
                .collect();
            let (batch, stats) = pipeline.process(&records, &store).unwrap();
            checkpoint
                .commit(&pipeline, batch, &stats, Instant::now())
                .unwrap();
        }
        store.compact().unwrap();
        // Partition 0's watermark is 13:55 - 5 min; ids before 12:50 are expired there.
        // About 65 minutes of its ids (~390) plus the quiet one may stay, and since a
        // dedup page goes whole once its newest entry has expired, up to one commit's
        // page (200 ids here) of expired ones with them; 1,441 stayed before.
        let keys = store.stats().unwrap().dedup_keys;
        assert!(keys <= 600, "{keys} dedup keys kept");
        let (relay, settled) = checkpoint.into_relay();
        settled.unwrap();
        relay.stop();
    }
}
