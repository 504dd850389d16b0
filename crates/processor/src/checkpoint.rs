//! The checkpoint step: one batch's effects become durable, then visible.
//!
//! Every batch — a polled batch or the drain at the end of a bounded run — goes through
//! [`Checkpoint::commit`], which does, in this order:
//!
//! 1. records the **expiry horizon** in the batch: the minimum watermark over *all*
//!    owned partitions (an idle partition's keys are still alive under its own
//!    watermark), so the compaction filter only ever uses a committed watermark;
//! 2. **commits** the batch through the relay ([`OutboxRelay::commit`]): its rows are
//!    counted in the outbox depth (the backpressure signal), then state deltas, outbox
//!    rows, next offsets and watermarks go to disk in one atomic RocksDB write (synced
//!    when `--sync`), then the relay thread wakes;
//! 3. **advances** the in-memory horizon the compaction filter reads, only now that the
//!    commit is on disk;
//! 4. reports the **`BatchCommitted`** event (metrics and logs).
//!
//! A failed commit returns an error and the process exits: the pipeline's in-memory
//! state is then ahead of the disk, and only a restart from RocksDB re-aligns them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use paydedup_state::{StateBatch, StateStore};

use crate::metrics::events::BatchCommitted;
use crate::metrics::Metrics;
use crate::pipeline::{BatchStats, Pipeline};
use crate::relay::OutboxRelay;

pub struct Checkpoint {
    store: Arc<StateStore>,
    relay: OutboxRelay,
    metrics: Metrics,
    /// Every partition this instance owns: the horizon is the minimum over all of them.
    owned: Vec<i32>,
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
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn relay(&self) -> &OutboxRelay {
        &self.relay
    }

    /// Gives the relay back, for the final flush.
    pub fn into_relay(self) -> OutboxRelay {
        self.relay
    }

    /// Commits `batch` (produced by `pipeline`, whose watermarks it carries) and makes
    /// it visible to the relay and the metrics. `started` is when the batch began.
    pub fn commit(
        &self,
        pipeline: &Pipeline,
        mut batch: StateBatch,
        stats: &BatchStats,
        started: Instant,
    ) -> anyhow::Result<()> {
        let horizon = self
            .owned
            .iter()
            .filter_map(|p| pipeline.watermark(*p))
            .min();
        if let Some(h) = horizon {
            batch.set_horizon(h);
        }
        let commit_started = Instant::now();
        self.relay
            .commit(&self.store, batch)
            .context("committing the batch to the state store")?;
        let commit: Duration = commit_started.elapsed();
        if let Some(h) = horizon {
            self.store.horizon().advance(h);
        }
        self.metrics.emit(BatchCommitted {
            stats,
            batch: started.elapsed(),
            commit,
        });
        Ok(())
    }
}
