//! Command-line configuration of the simulator.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Parser;

/// Produce realistic payment events to Kafka, with injected duplicates, replays,
/// conflicts, out-of-order and late events and malformed records, and write a manifest
/// of exactly what was produced (the ground truth for reconciliation).
///
/// Every record is keyed by its transaction_id and sent to partition
/// xxh3(transaction_id) mod N, so all versions of one payment share a partition.
#[derive(Debug, Clone, Parser)]
#[command(name = "paydedup-simulator", version)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, env = "PAYDEDUP_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Topic to produce to.
    #[arg(long, env = "PAYDEDUP_TOPIC", default_value = "payments")]
    pub topic: String,

    /// Create the topic with this many partitions if it does not exist. Without it, a
    /// missing topic is an error.
    #[arg(long)]
    pub create_partitions: Option<i32>,

    /// Number of records to produce (every kind counts). Conflicts with --duration.
    #[arg(long, default_value_t = 100_000, conflicts_with = "duration_secs")]
    pub count: u64,

    /// Produce for this many seconds instead of a fixed count.
    #[arg(long = "duration", value_name = "SECS")]
    pub duration_secs: Option<u64>,

    /// Records per second sent to Kafka; unset means as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seed of the generator: the same seed, start time and flags give the same records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Event time of the first payment (RFC 3339). Default: far enough in the past that
    /// the last payment's event time is about now.
    #[arg(long)]
    pub start_time: Option<DateTime<Utc>>,

    /// Payments per second of event time (how densely the simulated business trades).
    #[arg(long, default_value_t = 100.0)]
    pub event_rate: f64,

    /// Allowed lateness the processor uses, in seconds. The simulator keeps normal
    /// disorder well inside it and sends late events well beyond it.
    #[arg(long, default_value_t = 300)]
    pub allowed_lateness_secs: i64,

    /// Dedup retention the processor uses, in seconds (ids older than this are forgotten).
    #[arg(long, default_value_t = 3600)]
    pub retention_secs: i64,

    /// Rate of exact duplicates (a client retry 1–10 s later).
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,

    /// Rate of replays (the same event again 30–120 s later, e.g. an upstream re-send).
    #[arg(long, default_value_t = 0.02)]
    pub replay_rate: f64,

    /// Rate of conflicts (the same transaction_id with a different amount).
    #[arg(long, default_value_t = 0.005)]
    pub conflict_rate: f64,

    /// Rate of out-of-order events (event time 1–60 s before the stream's clock).
    #[arg(long, default_value_t = 0.10)]
    pub out_of_order_rate: f64,

    /// Rate of late events (event time beyond the allowed lateness).
    #[arg(long, default_value_t = 0.005)]
    pub late_rate: f64,

    /// Rate of malformed records (bad JSON, missing fields, unknown currency, …).
    #[arg(long, default_value_t = 0.01)]
    pub malformed_rate: f64,

    /// Rate of fraud-like patterns (velocity bursts, geo mismatch, impossible travel).
    #[arg(long, default_value_t = 0.01)]
    pub fraud_rate: f64,

    /// Rate of payments from a producer whose clock is off by --clock-skew-secs: its
    /// event time and its Kafka timestamp are both shifted. Ahead, such a payment moves
    /// its partition's watermark (later payments there turn late) or, near real time,
    /// is `event_time_in_future`; behind, it is late. A payment whose verdict would
    /// depend on when the processor reads it is sent unskewed.
    #[arg(long, default_value_t = 0.0)]
    pub skew_rate: f64,

    /// How far the skewed producer's clock is off, in seconds (negative: behind).
    #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
    pub clock_skew_secs: i64,

    /// The processor's --future-tolerance-secs (how far ahead of a record's Kafka
    /// timestamp its event time may be).
    #[arg(long, default_value_t = 600)]
    pub future_tolerance_secs: i64,

    /// Duplicate storm: send one payment this many more times, spread over the run (a
    /// client stuck in a retry loop). Each copy is a duplicate while the first
    /// occurrence is in the dedup index, a new payment once it expired, late when its
    /// event time is behind the watermark.
    #[arg(long, default_value_t = 0)]
    pub storm_copies: u64,

    /// The storm's transaction id (default: one derived from --seed). Pass the same id
    /// to consecutive runs to continue one storm across them.
    #[arg(long)]
    pub storm_id: Option<String>,

    /// Continuing a storm: the event time at which the occurrence of the storm's id that
    /// the previous run left in the dedup index was first seen (that run's manifest,
    /// `storm.alive_since`).
    #[arg(long, requires = "storm_id")]
    pub storm_alive_since: Option<DateTime<Utc>>,

    /// Number of merchants (Zipf-distributed popularity).
    #[arg(long, default_value_t = 2_000)]
    pub merchants: usize,

    /// Number of cards (Zipf-distributed usage).
    #[arg(long, default_value_t = 50_000)]
    pub cards: usize,

    /// Where to write the ground-truth manifest (JSON).
    #[arg(long, default_value = "manifest.json")]
    pub manifest: PathBuf,

    /// Librdkafka producer properties, `key=value`, repeatable (e.g. `linger.ms=20`).
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka: Vec<(String, String)>,

    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

impl Config {
    /// Checks the flags that clap cannot check by type.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("--duplicate-rate", self.duplicate_rate),
            ("--replay-rate", self.replay_rate),
            ("--conflict-rate", self.conflict_rate),
            ("--out-of-order-rate", self.out_of_order_rate),
            ("--late-rate", self.late_rate),
            ("--malformed-rate", self.malformed_rate),
            ("--fraud-rate", self.fraud_rate),
            ("--skew-rate", self.skew_rate),
        ];
        for (name, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        if self.late_rate + self.malformed_rate > 0.9 {
            return Err("--late-rate + --malformed-rate must leave room for payments".into());
        }
        if !(self.event_rate > 0.0 && self.event_rate.is_finite()) {
            return Err(format!(
                "--event-rate must be positive, got {}",
                self.event_rate
            ));
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err(format!("--rate must be positive, got {r}"));
            }
        }
        if self.allowed_lateness_secs < 180 {
            return Err(
                "--allowed-lateness-secs must be at least 180 (replays arrive up to 120 s late)"
                    .into(),
            );
        }
        if self.retention_secs < self.allowed_lateness_secs {
            return Err("--retention-secs must be at least --allowed-lateness-secs".into());
        }
        if self.clock_skew_secs.abs() > 7 * 86_400 {
            return Err("--clock-skew-secs must be within a week".into());
        }
        if self.future_tolerance_secs <= 0 {
            return Err("--future-tolerance-secs must be positive".into());
        }
        if let Some(id) = &self.storm_id {
            if id.is_empty() || id.len() > paydedup_event::TransactionId::MAX_LEN {
                return Err(format!(
                    "--storm-id must be 1 to {} bytes",
                    paydedup_event::TransactionId::MAX_LEN
                ));
            }
        }
        if self.merchants == 0 || self.cards == 0 {
            return Err("--merchants and --cards must be positive".into());
        }
        if let Some(p) = self.create_partitions {
            if p <= 0 {
                return Err(format!("--create-partitions must be positive, got {p}"));
            }
        }
        Ok(())
    }
}
