//! The command line: one subcommand per job of the binary.

use clap::{Parser, Subcommand};

use crate::config::{RunArgs, StateArgs};
use crate::reconcile::ReconcileArgs;

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
    Run(Box<RunArgs>),
    /// Print what a state directory holds: keys, bytes, offsets, watermarks, outbox depth.
    State(StateArgs),
    /// Check the delivered output (and the simulator's manifest); exit non-zero on a mismatch.
    Reconcile(ReconcileArgs),
}
