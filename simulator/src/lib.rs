//! `paydedup-simulator`: realistic payments with injected faults, and the ground truth.
//!
//! - [`config`]: the command line.
//! - [`world`]: merchants, cards, customers (Zipf popularity, log-normal amounts).
//! - [`traffic`]: the record stream, with duplicates, replays, conflicts, disorder,
//!   late and malformed records, and fraud-like patterns.
//! - [`truth`]: the independent model that says what each record must become.
//! - [`manifest`]: the JSON summary reconciliation is checked against.
//! - [`produce`]: the idempotent Kafka producer.

pub mod config;
pub mod manifest;
pub mod produce;
pub mod traffic;
pub mod truth;
pub mod world;

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use config::Config;
use manifest::{Manifest, ManifestExt, StormTotals};
use produce::Sender;
use traffic::{Rates, StormConfig, Traffic, TrafficConfig};

/// What a run produced, printed as the final summary line.
pub struct Summary {
    pub manifest: Manifest,
    pub manifest_path: std::path::PathBuf,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        let t = &m.totals;
        write!(
            f,
            "produced {} records to `{}` ({} partitions) in {:.1} s, {:.0} records/s: \
             unique {}, duplicate {}, replay {}, conflict {}, late {}, malformed {}; manifest {}",
            t.records,
            m.topic,
            m.partitions,
            m.elapsed_secs,
            t.records as f64 / m.elapsed_secs.max(1e-9),
            t.unique,
            t.duplicate,
            t.replay,
            t.conflict,
            t.late,
            t.malformed,
            self.manifest_path.display()
        )
    }
}

pub fn run(config: &Config) -> anyhow::Result<Summary> {
    config.validate().map_err(anyhow::Error::msg)?;
    let partitions = produce::ensure_topic(
        &config.brokers,
        &config.topic,
        config.create_partitions,
        &config.kafka,
    )?;
    let now = Utc::now();
    let expected = match (config.duration_secs, config.rate) {
        (Some(d), Some(r)) => d as f64 * r,
        (Some(d), None) => d as f64 * config.event_rate,
        (None, _) => config.count as f64,
    };
    let start_time = config.start_time.unwrap_or_else(|| {
        now - chrono::Duration::milliseconds((expected / config.event_rate * 1000.0) as i64)
    });
    let mut traffic = Traffic::new(TrafficConfig {
        seed: config.seed,
        partitions,
        start_time,
        event_rate: config.event_rate,
        allowed_lateness_secs: config.allowed_lateness_secs,
        retention_secs: config.retention_secs,
        merchants: config.merchants,
        cards: config.cards,
        rates: Rates {
            duplicate: config.duplicate_rate,
            replay: config.replay_rate,
            conflict: config.conflict_rate,
            out_of_order: config.out_of_order_rate,
            late: config.late_rate,
            malformed: config.malformed_rate,
            fraud: config.fraud_rate,
            skewed: config.skew_rate,
        },
        clock_skew_secs: config.clock_skew_secs,
        future_tolerance_secs: config.future_tolerance_secs,
        storm: (config.storm_copies > 0).then(|| StormConfig {
            transaction_id: config
                .storm_id
                .clone()
                .unwrap_or_else(|| format!("tx-storm-{:016x}", config.seed)),
            copies: config.storm_copies,
            // Spread over the run (with room to spare at the end), never more than
            // every other record.
            every: ((expected / (config.storm_copies as f64 + 1.0)) as u64).max(2),
            alive_since_micros: config.storm_alive_since.map(|t| t.timestamp_micros()),
        }),
    });
    let mut manifest = Manifest::new(
        &config.topic,
        config.seed,
        partitions,
        start_time,
        config.allowed_lateness_secs,
        config.retention_secs,
    );
    let sender = Sender::new(&config.brokers, &config.kafka, partitions)?;

    let bar = if config.quiet || config.duration_secs.is_some() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(config.count), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };

    let started = Instant::now();
    let deadline = config
        .duration_secs
        .map(|d| started + Duration::from_secs(d));
    let mut sent: u64 = 0;
    loop {
        match deadline {
            Some(d) if Instant::now() >= d => break,
            None if sent >= config.count => break,
            _ => {}
        }
        if let Some(rate) = config.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let wall_now = Utc::now();
        let record = traffic.next_record(wall_now);
        sender.send(
            &config.topic,
            record.partition,
            &record.key,
            &record.payload,
            wall_now.timestamp_millis() + record.clock_skew_ms,
        )?;
        manifest.record(&record);
        sent += 1;
        if sent.is_multiple_of(1024) {
            bar.set_position(sent);
            let failed = sender
                .tracker()
                .failed
                .load(std::sync::atomic::Ordering::Relaxed);
            if failed > 0 {
                break;
            }
        }
    }
    sender.flush(Duration::from_secs(120))?;
    bar.finish_and_clear();
    manifest.elapsed_secs = started.elapsed().as_secs_f64();
    manifest.max_event_time = traffic.max_event_time();
    manifest.storm = traffic.storm_report().map(|r| StormTotals {
        transaction_id: r.transaction_id,
        partition: usize::try_from(r.partition).unwrap_or(0),
        copies: r.copies,
        unique: r.unique,
        duplicate: r.duplicate,
        late: r.late,
        alive_since: r
            .alive_since_micros
            .and_then(chrono::DateTime::from_timestamp_micros),
    });

    let tracker = sender.tracker();
    let failed = tracker.failed.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        let first = tracker
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_default();
        bail!("{failed} records were not delivered (first error: {first}); the manifest would be wrong, so none was written");
    }
    let delivered = tracker.delivered.load(std::sync::atomic::Ordering::Relaxed);
    if delivered != sent {
        bail!("{sent} records sent but only {delivered} acknowledged");
    }
    manifest.first_offset = tracker
        .first_offset
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();

    let json = serde_json::to_vec_pretty(&manifest).context("encoding the manifest")?;
    std::fs::write(&config.manifest, json)
        .with_context(|| format!("writing the manifest to {}", config.manifest.display()))?;
    Ok(Summary {
        manifest,
        manifest_path: config.manifest.clone(),
    })
}
