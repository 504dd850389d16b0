//! `paydedup-processor`: the stream processor.
//!
//! - [`cli`]: the command line (`run`, `state`, `reconcile`).
//! - [`config`]: flags, environment, config file.
//! - [`consumer`]: the Kafka loop (assign at checkpointed offsets, batch, commit).
//! - [`pipeline`]: decode → watermark → dedup → fraud → windows → rows, pure decisions.
//! - [`relay`]: the outbox relay that delivers rows to the sink exactly once.
//! - [`metrics`], [`health`]: Prometheus and the HTTP endpoints.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - [`state_cmd`]: the `state` subcommand.
//! - [`reconcile`]: the `reconcile` subcommand: the output (and the simulator's manifest,
//!   `paydedup-manifest`) checked against one typed list of invariants; PASS/FAIL table.

pub mod cli;
pub mod config;
pub mod consumer;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod reconcile;
pub mod relay;
pub mod shutdown;
pub mod state_cmd;
