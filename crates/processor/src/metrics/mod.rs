//! Prometheus metrics, registered once, with bounded labels.
//!
//! Nothing outside this module touches a counter: the processor, the checkpoint and the
//! relay report named events ([`events`]: `BatchCommitted`, `SinkWriteFailed`,
//! `ConsumerPaused`, …), and each event's `emit` both logs and counts, in one place. The
//! fields below are private so that stays true.

pub mod events;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use events::Event;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    records: IntCounterVec,
    invalid: IntCounterVec,
    flagged: IntCounter,
    key_mismatch: IntCounter,
    windows_closed: IntCounter,
    batches: IntCounter,
    batch_seconds: Histogram,
    commit_seconds: Histogram,
    record_commit_latency: Histogram,
    outbox_depth: IntGauge,
    relay_rows: IntCounterVec,
    relay_already_present: IntCounter,
    sink_errors: IntCounterVec,
    dead_letter_rows: IntCounter,
    relay_failures: IntCounterVec,
    watermark: IntGaugeVec,
    combined_watermark: IntGauge,
    next_offset: IntGaugeVec,
    lag: IntGaugeVec,
    paused: IntGauge,
    instance_count: IntGauge,
    owned_partitions: IntGauge,
    partitions_handed_over: IntCounter,
    partitions_restored: IntCounter,
    outbox_oldest_age: Gauge,
    state_size: IntGauge,
    fraud_memory: IntGauge,
    fraud_memory_complete: IntGauge,
    fraud_log_pages: IntGauge,
    dedup_index_entries: IntGauge,
    dedup_index_memory: IntGauge,
    dedup_page_reads: IntCounter,
    /// Gauges measured at each scrape (an age grows with no event to report it), by
    /// name, so a rebuilt processor replaces its predecessor's.
    on_render: Arc<Mutex<BTreeMap<&'static str, RenderHook>>>,
}

type RenderHook = Box<dyn Fn(&Metrics) + Send + Sync>;

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

/// The error counters are exported at 0 from the start: the processor exits right
/// after counting a relay failure, and a series first seen at 1 in its last scrape
/// is one `increase()` cannot see rise.
fn zeroed(c: IntCounterVec, codes: &[&str]) -> IntCounterVec {
    for code in codes {
        c.with_label_values(&[code]);
    }
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric names are valid");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("metric names are valid");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

/// `paydedup_build_info` (which build is running, for dashboards and for telling a
/// rollout apart from a restart) and the standard `process_*` metrics (start time,
/// memory, CPU, file descriptors), which the restart alert reads.
fn register_process_info(r: Registry) -> Registry {
    let info = IntGaugeVec::new(
        Opts::new("paydedup_build_info", "The running build; always 1."),
        &["version", "revision"],
    )
    .expect("metric names are valid");
    info.with_label_values(&[
        env!("CARGO_PKG_VERSION"),
        option_env!("PAYDEDUP_REVISION").unwrap_or("unknown"),
    ])
    .set(1);
    r.register(Box::new(info)).expect("registered once");
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("registered once");
    r
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    histogram_with(
        r,
        name,
        help,
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ],
    )
}

fn histogram_with(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("metric names are valid");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            records: counter_vec(&r, "paydedup_records_total", "Input records by outcome (unique, duplicate, conflict, late, invalid).", &["outcome"]),
            invalid: counter_vec(&r, "paydedup_invalid_records_total", "Invalid input records by validation code.", &["code"]),
            flagged: counter(&r, "paydedup_fraud_flagged_total", "Unique payments flagged by fraud scoring."),
            key_mismatch: counter(&r, "paydedup_key_mismatch_total", "Records whose Kafka key is not their transaction_id (dedup is only per partition)."),
            windows_closed: counter(&r, "paydedup_windows_closed_total", "Event-time windows closed and emitted to payment_metrics."),
            batches: counter(&r, "paydedup_batches_total", "Batches processed and committed."),
            batch_seconds: histogram(&r, "paydedup_batch_duration_seconds", "Time to process one batch, commit included."),
            commit_seconds: histogram(&r, "paydedup_commit_duration_seconds", "Time of the atomic RocksDB commit: its write, then its fsync (after the previous batch's)."),
            // Fine around the 250 ms a live pipeline should stay under; coarse for catch-up.
            record_commit_latency: histogram_with(&r, "paydedup_record_commit_latency_seconds", "Kafka timestamp of each record to the durable commit of its batch (freshness of the outbox).", vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            outbox_depth: gauge(&r, "paydedup_outbox_depth_rows", "Rows committed but not yet acknowledged by the sink."),
            relay_rows: counter_vec(&r, "paydedup_relay_rows_total", "Rows delivered to the sink, by table.", &["table"]),
            relay_already_present: counter(&r, "paydedup_relay_already_present_rows_total", "Rows resent after a restart that the sink already held."),
            sink_errors: zeroed(counter_vec(&r, "paydedup_sink_errors_total", "Sink errors by error code (transient, gap, rejected, fenced, fatal).", &["kind"]), paydedup_sink::SinkError::CODES),
            dead_letter_rows: counter(&r, "paydedup_dead_letter_rows_total", "Rows the sink rejected as invalid, written to the dead-letter store."),
            relay_failures: zeroed(counter_vec(&r, "paydedup_relay_failures_total", "Times the relay stopped, by error code; the processor then exits non-zero.", &["error_code"]), crate::relay::RelayError::CODES),
            watermark: gauge_vec(&r, "paydedup_watermark_timestamp_seconds", "Event-time watermark per partition (Unix seconds).", &["partition"]),
            combined_watermark: gauge(&r, "paydedup_combined_watermark_timestamp_seconds", "Minimum watermark over active partitions (Unix seconds)."),
            next_offset: gauge_vec(&r, "paydedup_next_offset", "Checkpointed next Kafka offset per partition.", &["partition"]),
            lag: gauge_vec(&r, "paydedup_consumer_lag_records", "High watermark minus checkpointed offset, per partition.", &["partition"]),
            paused: gauge(&r, "paydedup_consumer_paused", "1 while consumption is paused by outbox backpressure."),
            instance_count: gauge(&r, "paydedup_instance_count", "Instances the partitions are split over (fixed, or the StatefulSet's replicas)."),
            owned_partitions: gauge(&r, "paydedup_owned_partitions", "Partitions this instance owns now."),
            partitions_handed_over: counter(&r, "paydedup_partitions_handed_over_total", "Partitions this instance stopped owning and forgot (a changed instance count)."),
            partitions_restored: counter(&r, "paydedup_partitions_restored_total", "Partitions rebuilt from the warehouse (a lost volume, or taken over)."),
            outbox_oldest_age: float_gauge(&r, "paydedup_outbox_oldest_row_age_seconds", "How long the oldest undelivered outbox row has waited since its commit (0 when none; rows found at start count from the start)."),
            state_size: gauge(&r, "paydedup_state_size_bytes", "Bytes in the state store: SST files and memtables, all column families."),
            fraud_memory: gauge(&r, "paydedup_fraud_memory_bytes", "Bytes of memory the fraud state held in memory takes (keys and values; budget: --fraud-memory-mib)."),
            fraud_memory_complete: gauge(&r, "paydedup_fraud_memory_complete", "1 while the fraud state in memory holds every stored card and customer; 0 once it outgrew --fraud-memory-mib (lookups it cannot answer then read RocksDB until a restart)."),
            fraud_log_pages: gauge(&r, "paydedup_fraud_log_pages", "Pages of the fraud log (one per commit with fraud changes) not yet folded into the per-key fraud family: folded 64 at a time in the background, so up to about 128; a restart reads them back before its first batch."),
            dedup_index_entries: gauge(&r, "paydedup_dedup_index_entries", "Transaction ids the dedup index holds in memory (every id within the retention, and expired ones until the next sweep)."),
            dedup_index_memory: gauge(&r, "paydedup_dedup_index_bytes", "Bytes of memory the dedup index takes: its fingerprints (19-39 bytes a held id, as the tables double; no budget: every id within the retention must be held) and the newest pages' entries (budget: --dedup-page-memory-mib)."),
            dedup_page_reads: counter(&r, "paydedup_dedup_page_reads_total", "Dedup pages read from RocksDB for a repeat of an id older than the pages kept in memory (--dedup-page-memory-mib): correct, slower."),
            on_render: Arc::default(),
            registry: register_process_info(r),
        }
    }

    /// Logs and counts one event.
    pub fn emit(&self, event: impl Event) {
        event.emit(self);
    }

    /// Runs `hook` before every render, replacing an earlier hook of the same name.
    pub fn on_render(&self, name: &'static str, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.on_render.lock() {
            hooks.insert(name, Box::new(hook));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        if let Ok(hooks) = self.on_render.lock() {
            for hook in hooks.values() {
                hook(self);
            }
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
