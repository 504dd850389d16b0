//! `paydedup-processor`: the stream processor.
//!
//! - [`config`]: flags, environment, config file.
//! - [`consumer`]: the Kafka loop (assign at checkpointed offsets, batch, commit).
//! - [`pipeline`]: decode → watermark → dedup → fraud → windows → rows, pure decisions.
//! - [`relay`]: the outbox relay that delivers rows to the sink exactly once.
//! - [`metrics`], [`health`]: Prometheus and the HTTP endpoints.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - [`state_cmd`]: the `state` subcommand.
//! - [`reconcile`]: the `reconcile` subcommand (PASS/FAIL table).

pub mod config;
pub mod consumer;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod reconcile;
pub mod relay;
pub mod shutdown;
pub mod state_cmd;
