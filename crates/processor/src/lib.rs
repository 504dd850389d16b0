//! `paydedup-processor`: the stream processor.
//!
//! The path of one record, in the order it meets these modules:
//!
//! - [`kafka`]: polled by the [`KafkaSource`](kafka::KafkaSource) from an owned
//!   partition, as part of a batch;
//! - [`processor`]: the [`Processor`](processor::Processor) loop hands the batch to
//! - [`pipeline`]: decoded and validated, classified (invalid / late / unique /
//!   duplicate / conflict) against its partition's watermark and the dedup state read
//!   up front for the batch, enriched with fraud signals, counted into its window, and
//!   rendered as one output row in the batch's outbox;
//! - [`checkpoint`]: the batch's state deltas, outbox rows and next offsets are
//!   committed in one atomic RocksDB write, then the relay is told;
//! - [`relay`]: the [`OutboxRelay`](relay::OutboxRelay) appends the row to the sink at
//!   its sequence and deletes it from the outbox once acknowledged.
//!
//! Around that path: [`config`] (every setting, declared once), [`cli`] and [`wiring`]
//! (building the parts), [`backpressure`] (pause at the outbox bound, resume at half),
//! [`activity`] (idle partitions), [`identity`] (what a state directory is the state
//! of), [`agreement`] (state and sink agree at start-up), [`metrics`] (named events that log and count),
//! [`health`] (HTTP endpoints), [`shutdown`] (signals), [`state_cmd`] (the `state`
//! subcommand) and [`reconcile`] (the `reconcile` subcommand: the output, and the
//! simulator's manifest from `paydedup-manifest`, checked against one typed list of
//! invariants named after the SQL views).

pub mod activity;
pub mod agreement;
pub mod backpressure;
pub mod checkpoint;
pub mod cli;
pub mod commit_queue;
pub mod config;
pub mod health;
pub mod identity;
pub mod kafka;
pub mod log_end;
pub mod metrics;
pub mod pipeline;
pub mod processor;
pub mod reconcile;
pub mod relay;
pub mod restore;
pub mod shutdown;
pub mod state_cmd;
pub mod topology;
pub mod wiring;
