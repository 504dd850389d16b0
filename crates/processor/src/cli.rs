//! The command line: one subcommand per job.

use clap::{Parser, Subcommand};

use crate::config::{RunConfig, StateArgs};

#[derive(Debug, Parser)]
#[command(
    name = "paydedup-processor",
    version,
    about = "Exactly-once payment deduplication: Kafka in, deduplicated and fraud-enriched payments out."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume, deduplicate, enrich and deliver (the processor).
    Run(Box<RunConfig>),
    /// Rebuild an empty state directory from what the sink holds (the flags of `run`):
    /// for a lost or unusable volume, or a partition's new owner.
    Restore(Box<RunConfig>),
    /// Print what a state directory holds: keys, bytes, offsets, watermarks, outbox depth.
    State(StateArgs),
    /// Check the delivered output (and the simulator's manifest); exit non-zero on a mismatch.
    Reconcile(crate::reconcile::ReconcileArgs),
    /// Probe a running processor's `/healthz` (or `/readyz`); exit 0 when it answers
    /// 200. The container images' HEALTHCHECK.
    Healthcheck(crate::health::HealthcheckArgs),
}
