//! [`Processor`]: the loop that owns every part of a running processor.
//!
//! One turn of the loop: check for a shutdown or a failed relay, apply backpressure,
//! poll a batch, run it through the [`Pipeline`], and hand the result to the
//! [`Checkpoint`] step. Under load (a full batch polled) the batch is decoded on the
//! decode thread while the ones polled before it are processed, and is processed at
//! most [`DECODE_AHEAD`](crate::pipeline::DECODE_AHEAD) turns later (sooner when a
//! partial or empty poll, or a pause, empties the queue; `pipeline::decode_ahead`). A
//! turn with no records checks whether a bounded run is done, and publishes progress.
//! Nothing here decides anything about a payment: that is the pipeline's job; this
//! file only moves batches and time along.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use paydedup_state::StateBatch;

use crate::activity::PartitionActivity;
use crate::backpressure::{next_flow, Flow};
use crate::checkpoint::Checkpoint;
use crate::kafka::{input_records, KafkaSource};
use crate::metrics::events::{
    CombinedWatermarkMoved, ConsumerLagMeasured, ConsumerPaused, ConsumerResumed,
    IdlePartitionsAdvanced, PartitionProgressed, WindowsDrained,
};
use crate::metrics::Metrics;
use crate::pipeline::{Ahead, BatchStats, DecodeAhead, Decoded, InputBatch, InputRecord, Pipeline};
use crate::shutdown::Shutdown;
use crate::topology::InstanceCount;

/// Why the loop ended normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Signal,
    CaughtUp,
    /// The instance count changed: the partitions must be handed over (`wiring`
    /// starts again on the new set).
    Rescaled {
        from: u32,
        to: u32,
    },
}

/// Watches the instance count the loop was built for.
#[derive(Clone)]
pub struct RescaleWatch {
    pub count: InstanceCount,
    pub built_with: u32,
    /// How long a fenced relay waits for the count to change before it is an error:
    /// another instance that noticed a new count first may claim a partition this
    /// one still owns under the old count.
    pub fenced_grace: Duration,
}

impl RescaleWatch {
    fn changed(&self) -> Option<Exit> {
        let now = self.count.get();
        (now != self.built_with).then_some(Exit::Rescaled {
            from: self.built_with,
            to: now,
        })
    }
}

/// The loop's own settings.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub batch_linger: Duration,
    pub outbox_bound: u64,
    pub exit_when_caught_up: bool,
    pub drain: bool,
}

/// How often the loop measures lag, and reports group offsets.
const LAG_CHECK_EVERY: Duration = Duration::from_millis(500);
const GROUP_COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often the loop checks that the topic's partition count has not changed.
const TOPOLOGY_CHECK_EVERY: Duration = Duration::from_secs(10);

pub struct Processor {
    pub source: KafkaSource,
    pub pipeline: Pipeline,
    pub checkpoint: Checkpoint,
    pub activity: PartitionActivity,
    pub settings: LoopSettings,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Set when the count can change while running (`--statefulset`).
    pub rescale: Option<RescaleWatch>,
    flow: Flow,
    last_group_commit: Instant,
    last_lag_check: Instant,
    last_topology_check: Instant,
    /// Every owned partition had lag 0 at the last measurement, and no records arrived
    /// since.
    caught_up: bool,
    /// The full batches polled and not processed yet, decoding or decoded on the decode
    /// thread (`turn`). Not processed, so not committed: an exit while they wait
    /// leaves their records to the next start.
    ahead: DecodeAhead,
}

impl Processor {
    pub fn new(
        source: KafkaSource,
        pipeline: Pipeline,
        checkpoint: Checkpoint,
        activity: PartitionActivity,
        settings: LoopSettings,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Processor {
        let ahead = DecodeAhead::new(pipeline.decoder());
        Processor {
            source,
            pipeline,
            checkpoint,
            activity,
            settings,
            metrics,
            shutdown,
            rescale: None,
            flow: Flow::Reading,
            last_group_commit: Instant::now(),
            last_lag_check: Instant::now(),
            last_topology_check: Instant::now(),
            caught_up: false,
            ahead,
        }
    }

    /// Runs until a signal, the end of a bounded run, or an error.
    pub fn run(&mut self) -> anyhow::Result<Exit> {
        loop {
            if self.shutdown.requested() {
                tracing::info!("Shutdown requested; the commits in flight complete before exit.");
                return Ok(Exit::Signal);
            }
            if let Some(exit) = self.rescale.as_ref().and_then(RescaleWatch::changed) {
                tracing::warn!(
                    ?exit,
                    "The instance count changed; handing partitions over."
                );
                return Ok(exit);
            }
            if let Some(failure) = self.checkpoint.relay().take_failure() {
                if failure.is_fenced() {
                    if let Some(exit) = self.await_rescale() {
                        tracing::warn!(error = %failure, ?exit, "Fenced by the partition's next owner; handing partitions over.");
                        return Ok(exit);
                    }
                }
                return Err(anyhow!("the outbox relay stopped: {failure}"));
            }
            self.apply_backpressure()?;
            if self.last_topology_check.elapsed() >= TOPOLOGY_CHECK_EVERY {
                self.last_topology_check = Instant::now();
                self.source.check_partition_count()?;
            }
            if self.last_lag_check.elapsed() >= LAG_CHECK_EVERY {
                self.last_lag_check = Instant::now();
                let lags = self.measure_lag();
                self.caught_up = lags
                    .as_ref()
                    .is_some_and(|l| l.iter().all(|&(_, lag)| lag == 0));
                if let Some(lags) = lags {
                    self.advance_idle_partitions(&lags)?;
                }
            }
            if let Some(exit) = self.turn()? {
                return Ok(exit);
            }
        }
    }

    /// A fenced relay, with a count that can change: waits a little for this
    /// instance to see the count the fencing one already saw.
    fn await_rescale(&self) -> Option<Exit> {
        let watch = self.rescale.as_ref()?;
        let deadline = Instant::now() + watch.fenced_grace;
        while Instant::now() < deadline && !self.shutdown.requested() {
            if let Some(exit) = watch.changed() {
                return Some(exit);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        watch.changed()
    }

    /// Polls and processes one batch, or handles an empty poll.
    fn turn(&mut self) -> anyhow::Result<Option<Exit>> {
        let s = &self.settings;
        let messages = self.source.poll_batch(
            s.batch_size,
            s.batch_timeout,
            s.batch_linger,
            &self.shutdown,
        )?;
        let full = messages.len() >= s.batch_size;
        // Copied into one buffer, so the consumer's messages are let go
        // and the batch can wait its turn (up to `DECODE_AHEAD` turns).
        let records = input_records(&messages);
        // Seen when polled, as the idle check (`advance_idle_partitions`, between
        // turns) must see it, not when processed turns later.
        self.activity.saw(&records);
        let input = InputBatch::copy(&records);
        drop(records);
        drop(messages);
        if !full {
            // Nothing more is waiting: no batch is decoded ahead of a partial one (a
            // quiet stream waits no extra turn). The ones decoded ahead go first.
            let had_ahead = self.process_ahead()?;
            if !input.is_empty() {
                self.process(&input.records(), None)?;
            } else if !had_ahead {
                return self.on_empty_poll();
            }
            return Ok(None);
        }
        // A full batch: decoded on the decode thread while the ones polled before it
        // are processed here (`pipeline::decode_ahead`); its turn comes once
        // `DECODE_AHEAD` newer ones wait behind it.
        if let Some(Ahead { input, decoded }) = self.ahead.push(Arc::new(input))? {
            self.process(&input.records(), Some(decoded))?;
        }
        Ok(None)
    }

    /// Runs one batch through the pipeline (`decoded` when it was decoded ahead) and
    /// hands it to the checkpoint step. The batch's duration (a metric) counts from
    /// here; a record's latency counts from its Kafka timestamp, the wait ahead
    /// included.
    fn process(
        &mut self,
        records: &[InputRecord<'_>],
        decoded: Option<Decoded>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        self.caught_up = false;
        // Every log line of this batch (pipeline, checkpoint) carries its size.
        let span = tracing::info_span!("batch", records = records.len());
        let _entered = span.enter();
        let store = self.checkpoint.store();
        let (batch, stats) = match decoded {
            Some(decoded) => self.pipeline.process_decoded(records, decoded, store)?,
            None => self.pipeline.process(records, store)?,
        };
        // The commit runs while the next batch is polled and processed.
        self.checkpoint
            .commit_overlapped(&self.pipeline, batch, &stats, started)?;
        self.publish_progress();
        if self.last_group_commit.elapsed() >= GROUP_COMMIT_EVERY {
            self.last_group_commit = Instant::now();
            self.source
                .report_progress(|p| self.checkpoint.durable_offset(p))?;
        }
        Ok(())
    }

    /// Pauses or resumes the consumer by the outbox depth (see [`crate::backpressure`]).
    fn apply_backpressure(&mut self) -> anyhow::Result<()> {
        let depth = self.checkpoint.relay().depth();
        let bound = self.settings.outbox_bound;
        match (self.flow, next_flow(self.flow, depth, bound)) {
            (Flow::Reading, Flow::Paused) => {
                // The batches decoded ahead were polled already: processed before the
                // pause shows, so that from then on consumption stands still (a
                // test's scrape between the pause and the next turn saw it move).
                self.process_ahead()?;
                self.source.pause()?;
                self.metrics.emit(ConsumerPaused {
                    outbox_depth: depth,
                    bound,
                });
                self.flow = Flow::Paused;
            }
            (Flow::Paused, Flow::Reading) => {
                self.source.resume()?;
                self.metrics.emit(ConsumerResumed {
                    outbox_depth: depth,
                });
                self.flow = Flow::Reading;
            }
            _ => {}
        }
        Ok(())
    }

    /// Processes the batches decoded ahead, oldest first, if any wait; returns whether
    /// any did.
    fn process_ahead(&mut self) -> anyhow::Result<bool> {
        let had_ahead = !self.ahead.is_empty();
        while let Some(Ahead { input, decoded }) = self.ahead.pop()? {
            self.process(&input.records(), Some(decoded))?;
        }
        Ok(had_ahead)
    }

    /// Nothing arrived: end a bounded run once every owned partition is caught up and
    /// every row delivered.
    fn on_empty_poll(&mut self) -> anyhow::Result<Option<Exit>> {
        // Nothing to overlap the last commit with: finish it now.
        self.checkpoint.settle()?;
        self.publish_progress();
        if self.flow == Flow::Paused || !self.caught_up || !self.settings.exit_when_caught_up {
            return Ok(None);
        }
        if self.settings.drain && self.pipeline.open_windows() > 0 {
            self.drain()?;
        }
        if self.checkpoint.relay().depth() == 0 {
            // "Caught up" must include partitions added since the last check.
            self.source.check_partition_count()?;
            tracing::info!("Caught up and delivered; exiting.");
            return Ok(Some(Exit::CaughtUp));
        }
        Ok(None)
    }

    /// Reports lag, busy, idle or paused alike (a gauge that only moved when idle would
    /// freeze exactly when the processor falls behind): the log ends of the latest
    /// background measurement (`log_end`) against the next offsets now. `None` before
    /// the first measurement and when the broker did not answer for some partition.
    fn measure_lag(&self) -> Option<Vec<(i32, i64)>> {
        let lags = self
            .source
            .lag(LAG_CHECK_EVERY, |p| self.pipeline.next_offset(p))?;
        for &(partition, lag) in &lags {
            self.metrics.emit(ConsumerLagMeasured { partition, lag });
        }
        Some(lags)
    }

    /// Partitions that are caught up and received nothing for the idle timeout follow
    /// the slowest active partition's watermark, so their open windows close (see
    /// [`Pipeline::advance_idle`]); committed through the same checkpoint step.
    fn advance_idle_partitions(&mut self, lags: &[(i32, i64)]) -> anyhow::Result<()> {
        let owned = self.source.owned();
        let Some(to) = self
            .activity
            .slowest_active_watermark(&self.pipeline, owned)
        else {
            return Ok(());
        };
        let idle: Vec<i32> = self
            .activity
            .idle(owned)
            .into_iter()
            .filter(|p| lags.iter().any(|&(q, lag)| q == *p && lag == 0))
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (batch, closed) = self.pipeline.advance_idle(&idle, to);
        if batch.is_empty() {
            return Ok(());
        }
        let stats = BatchStats {
            windows_closed: closed,
            outbox_rows: batch.outbox_rows(),
            ..BatchStats::default()
        };
        self.checkpoint
            .commit(&self.pipeline, batch, &stats, started)?;
        self.metrics.emit(IdlePartitionsAdvanced {
            partitions: &idle,
            watermark_micros: to,
            windows: closed,
        });
        Ok(())
    }

    /// Closes every open window of the owned partitions (a bounded run's end), through
    /// the same checkpoint step as any batch.
    fn drain(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let (batch, closed): (StateBatch, u64) = self.pipeline.drain(self.source.owned());
        let stats = BatchStats {
            windows_closed: closed,
            outbox_rows: batch.outbox_rows(),
            ..BatchStats::default()
        };
        self.checkpoint
            .commit(&self.pipeline, batch, &stats, started)?;
        self.metrics.emit(WindowsDrained { windows: closed });
        Ok(())
    }

    /// Watermarks and next offsets per partition, and the processor-wide watermark.
    fn publish_progress(&self) {
        let owned = self.source.owned();
        for &partition in owned {
            self.metrics.emit(PartitionProgressed {
                partition,
                watermark_micros: self.pipeline.watermark(partition),
                next_offset: self.pipeline.next_offset(partition),
            });
        }
        if let Some(micros) = self.activity.combined_watermark(&self.pipeline, owned) {
            self.metrics.emit(CombinedWatermarkMoved { micros });
        }
    }

    /// Ends the run: delivers what is committed (a later start would anyway, but a clean
    /// exit leaves nothing behind) and stops the relay.
    pub fn finish(
        self,
        result: anyhow::Result<Exit>,
        flush_timeout: Duration,
    ) -> anyhow::Result<Exit> {
        let (relay, settled) = self.checkpoint.into_relay();
        let result = match (result, settled) {
            (result, Ok(())) => result,
            (Ok(_), Err(e)) => Err(e),
            (Err(first), Err(e)) => {
                Err(first.context(format!("and the last commit failed: {e:#}")))
            }
        };
        let result = result.and_then(|exit| match relay.flush(flush_timeout) {
            Ok(()) => Ok(exit),
            // A hand-off loses nothing it cannot deliver now: rows of partitions kept
            // stay in the outbox for the next relay, rows of partitions handed over are
            // re-derived by their new owner, which restores from what the sink holds.
            Err(e) if matches!(exit, Exit::Rescaled { .. }) => {
                tracing::warn!(error = %e, "Not everything was delivered before the hand-off; the outbox keeps it.");
                Ok(exit)
            }
            Err(e) => Err(anyhow!("delivering the outbox before exit: {e}")),
        });
        relay.stop();
        result
    }
}
