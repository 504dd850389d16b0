//! Named events: what happened, logged and counted in one place.
//!
//! Names follow `<Noun><Verb>[Error]` (Vector's instrumentation spec). Code elsewhere
//! says `metrics.emit(BatchCommitted { .. })` and never touches a counter or decides a
//! log level; a metric's labels come from closed sets (an outcome, a table, an error
//! code, a partition number), so their cardinality is fixed.

use std::time::Duration;

use paydedup_sink::SinkError;
use paydedup_state::{Forgotten, Table};

use super::Metrics;
use crate::pipeline::BatchStats;
use crate::relay::RelayError;

const MICROS_PER_SEC: i64 = 1_000_000;

/// Something worth a log line and a metric.
pub trait Event {
    fn emit(self, m: &Metrics);
}

/// A batch (or a drain) was committed to the state store and handed to the relay.
pub struct BatchCommitted<'a> {
    pub stats: &'a BatchStats,
    /// From the first poll of the batch to the end of its commit.
    pub batch: Duration,
    /// The RocksDB commit alone: its write, then its fsync (after the previous batch's,
    /// which it may wait for).
    pub commit: Duration,
}

impl Event for BatchCommitted<'_> {
    fn emit(self, m: &Metrics) {
        let s = self.stats;
        for (outcome, n) in [
            ("unique", s.unique),
            ("duplicate", s.duplicates),
            ("conflict", s.conflicts),
            ("late", s.late),
            ("invalid", s.invalid),
        ] {
            m.records.with_label_values(&[outcome]).inc_by(n);
        }
        for (code, n) in &s.invalid_by_code {
            m.invalid.with_label_values(&[code]).inc_by(*n);
        }
        m.flagged.inc_by(s.flagged);
        m.key_mismatch.inc_by(s.key_mismatch);
        m.windows_closed.inc_by(s.windows_closed);
        m.batches.inc();
        m.batch_seconds.observe(self.batch.as_secs_f64());
        m.commit_seconds.observe(self.commit.as_secs_f64());
        // Emitted right after the commit is durable: now is the commit's time.
        let now_ms = chrono::Utc::now().timestamp_millis();
        for ts in &s.kafka_timestamps_ms {
            // A producer clock ahead of ours is fresh, not negative.
            m.record_commit_latency
                .observe((now_ms - ts).max(0) as f64 / 1e3);
        }
        tracing::debug!(
            records = s.records,
            outbox_rows = s.outbox_rows,
            commit_ms = self.commit.as_millis() as u64,
            "Batch committed."
        );
        if s.conflicts > 0 {
            tracing::warn!(
                conflicts = s.conflicts,
                "Transaction ids reused with a different body."
            );
        }
        if s.key_mismatch > 0 {
            tracing::warn!(
                records = s.key_mismatch,
                "Records keyed by something other than their transaction_id."
            );
        }
    }
}

/// The open windows of a bounded run were closed at the end of the input.
pub struct WindowsDrained {
    pub windows: u64,
}

impl Event for WindowsDrained {
    fn emit(self, _: &Metrics) {
        tracing::info!(
            windows = self.windows,
            "Drained open windows at the end of the input."
        );
    }
}

/// Idle, caught-up partitions followed the slowest active partition's watermark.
pub struct IdlePartitionsAdvanced<'a> {
    pub partitions: &'a [i32],
    pub watermark_micros: i64,
    pub windows: u64,
}

impl Event for IdlePartitionsAdvanced<'_> {
    fn emit(self, _: &Metrics) {
        tracing::info!(
            partitions = ?self.partitions,
            watermark_micros = self.watermark_micros,
            windows_closed = self.windows,
            "Idle partitions' watermarks follow the active partitions; their passed windows closed."
        );
    }
}

/// Backpressure: the outbox reached its bound, consumption stops.
pub struct ConsumerPaused {
    pub outbox_depth: u64,
    pub bound: u64,
}

impl Event for ConsumerPaused {
    fn emit(self, m: &Metrics) {
        m.paused.set(1);
        tracing::warn!(
            outbox_depth = self.outbox_depth,
            bound = self.bound,
            "Outbox full; pausing consumption."
        );
    }
}

/// Backpressure released: the outbox drained below half its bound.
pub struct ConsumerResumed {
    pub outbox_depth: u64,
}

impl Event for ConsumerResumed {
    fn emit(self, m: &Metrics) {
        m.paused.set(0);
        tracing::info!(
            outbox_depth = self.outbox_depth,
            "Outbox drained; resuming consumption."
        );
    }
}

/// A partition's checkpointed position: its watermark and next offset.
pub struct PartitionProgressed {
    pub partition: i32,
    pub watermark_micros: Option<i64>,
    pub next_offset: Option<i64>,
}

impl Event for PartitionProgressed {
    fn emit(self, m: &Metrics) {
        let p = self.partition.to_string();
        if let Some(wm) = self.watermark_micros {
            m.watermark
                .with_label_values(&[&p])
                .set(wm / MICROS_PER_SEC);
        }
        if let Some(o) = self.next_offset {
            m.next_offset.with_label_values(&[&p]).set(o);
        }
    }
}

/// The processor-wide watermark moved (minimum over active partitions).
pub struct CombinedWatermarkMoved {
    pub micros: i64,
}

impl Event for CombinedWatermarkMoved {
    fn emit(self, m: &Metrics) {
        m.combined_watermark.set(self.micros / MICROS_PER_SEC);
    }
}

/// A partition's lag was measured: high watermark minus checkpointed offset.
pub struct ConsumerLagMeasured {
    pub partition: i32,
    pub lag: i64,
}

impl Event for ConsumerLagMeasured {
    fn emit(self, m: &Metrics) {
        m.lag
            .with_label_values(&[&self.partition.to_string()])
            .set(self.lag);
    }
}

/// Rows committed but not yet acknowledged by the sink.
pub struct OutboxDepthChanged {
    pub rows: u64,
}

impl Event for OutboxDepthChanged {
    fn emit(self, m: &Metrics) {
        m.outbox_depth.set(self.rows as i64);
    }
}

/// Measured at a scrape: how long the oldest undelivered outbox row has waited.
pub struct OutboxAgeMeasured {
    pub age: std::time::Duration,
}

impl Event for OutboxAgeMeasured {
    fn emit(self, m: &Metrics) {
        m.outbox_oldest_age.set(self.age.as_secs_f64());
    }
}

/// Measured at a scrape: bytes in the state store.
pub struct StateSizeMeasured {
    pub bytes: u64,
}

impl Event for StateSizeMeasured {
    fn emit(self, m: &Metrics) {
        m.state_size
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

/// Measured at a scrape: the fraud state held in memory (`ResidentValues`).
pub struct FraudMemoryMeasured {
    pub bytes: usize,
    /// Whether it still holds every stored key (within its budget).
    pub complete: bool,
}

impl Event for FraudMemoryMeasured {
    fn emit(self, m: &Metrics) {
        m.fraud_memory
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        m.fraud_memory_complete.set(i64::from(self.complete));
    }
}

/// Measured at a scrape: the fraud log's pages not yet folded (`store::fraud_log`).
pub struct FraudLogMeasured {
    pub pages: u64,
}

impl Event for FraudLogMeasured {
    fn emit(self, m: &Metrics) {
        m.fraud_log_pages
            .set(i64::try_from(self.pages).unwrap_or(i64::MAX));
    }
}

/// Measured at a scrape: the dedup index (`DedupIndex`), which holds every id within
/// the retention, with the newest pages' entries.
pub struct DedupIndexMeasured {
    pub entries: usize,
    pub bytes: usize,
    /// Pages read from RocksDB in this process (`StateStore::dedup_page_reads`).
    pub page_reads: u64,
}

impl Event for DedupIndexMeasured {
    fn emit(self, m: &Metrics) {
        m.dedup_index_entries
            .set(i64::try_from(self.entries).unwrap_or(i64::MAX));
        m.dedup_index_memory
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        // Counted by the process (across a store's reopening); the counter follows.
        let counted = m.dedup_page_reads.get();
        if self.page_reads > counted {
            m.dedup_page_reads.inc_by(self.page_reads - counted);
        }
    }
}

/// The sink acknowledged rows.
pub struct RowsDelivered {
    pub table: Table,
    pub written: usize,
    pub already_present: usize,
}

impl Event for RowsDelivered {
    fn emit(self, m: &Metrics) {
        m.relay_rows
            .with_label_values(&[self.table.name()])
            .inc_by(self.written as u64);
        m.relay_already_present.inc_by(self.already_present as u64);
    }
}

/// A sink append failed; `retry_in` says whether the relay retries.
pub struct SinkWriteFailed<'a> {
    pub table: Table,
    pub partition: i32,
    pub first_seq: u64,
    pub error: &'a SinkError,
    pub retry_in: Option<Duration>,
}

impl Event for SinkWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.sink_errors.with_label_values(&[self.error.code()]).inc();
        match self.retry_in {
            Some(wait) => tracing::warn!(
                table = %self.table,
                partition = self.partition,
                first_seq = self.first_seq,
                error = %self.error,
                retry_in_ms = wait.as_millis() as u64,
                "Sink write failed; retrying."
            ),
            None => tracing::error!(
                table = %self.table,
                partition = self.partition,
                first_seq = self.first_seq,
                error = %self.error,
                "Sink write failed."
            ),
        }
    }
}

/// Rows the sink rejected as invalid went to the dead-letter store.
pub struct RowsDeadLettered<'a> {
    pub table: Table,
    pub partition: i32,
    pub first_seq: u64,
    pub rows: usize,
    pub reason: &'a str,
}

impl Event for RowsDeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        m.dead_letter_rows.inc_by(self.rows as u64);
        tracing::error!(
            table = %self.table,
            partition = self.partition,
            first_seq = self.first_seq,
            rows = self.rows,
            reason = %self.reason,
            "Sink rejected rows; written to the dead-letter store."
        );
    }
}

/// The relay stopped for good; the processor exits non-zero.
pub struct RelayStopped<'a> {
    pub error: &'a RelayError,
}

impl Event for RelayStopped<'_> {
    fn emit(self, m: &Metrics) {
        m.relay_failures
            .with_label_values(&[self.error.code()])
            .inc();
        tracing::error!(error = %self.error, error_code = self.error.code(), "Outbox relay stopped.");
    }
}

/// The set of partitions this instance owns was (re)computed; `lost` are those it held
/// state for and no longer owns, now forgotten.
pub struct OwnershipChanged<'a> {
    pub instance: u32,
    pub count: u32,
    pub owned: &'a [i32],
    pub lost: &'a [i32],
    pub forgotten: Forgotten,
}

impl Event for OwnershipChanged<'_> {
    fn emit(self, m: &Metrics) {
        m.instance_count.set(i64::from(self.count));
        m.owned_partitions.set(self.owned.len() as i64);
        tracing::info!(instance = self.instance, instances = self.count, partitions = ?self.owned, "Owned partitions.");
        if self.lost.is_empty() {
            return;
        }
        m.partitions_handed_over.inc_by(self.lost.len() as u64);
        for p in self.lost {
            let p = p.to_string();
            // A partition's gauges belong to its owner now.
            let _ = m.watermark.remove_label_values(&[&p]);
            let _ = m.next_offset.remove_label_values(&[&p]);
            let _ = m.lag.remove_label_values(&[&p]);
        }
        let f = self.forgotten;
        tracing::warn!(partitions = ?self.lost, dedup_entries = f.dedup_entries, undelivered_rows = f.outbox_rows,
            open_windows = f.windows, "Forgot the state of partitions this instance no longer owns (their owner restores them from the sink).");
    }
}

/// Partitions were rebuilt from the warehouse.
pub struct PartitionsRestored<'a> {
    pub report: &'a crate::restore::RestoreReport,
}

impl Event for PartitionsRestored<'_> {
    fn emit(self, m: &Metrics) {
        m.partitions_restored
            .inc_by(self.report.partitions.len() as u64);
        tracing::info!(report = %self.report, "Restored the state from the sink.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    /// The fraud state's memory and whether it still holds every key, from a real
    /// store: complete within its budget, not once it outgrew it.
    #[test]
    fn the_fraud_memory_gauges_follow_the_store() {
        let fill = |budget: usize| {
            let dir = tempfile::tempdir().unwrap();
            let store = paydedup_state::StateStore::open(
                dir.path(),
                &paydedup_state::StoreOptions {
                    fraud_memory_bytes: budget,
                    ..paydedup_state::StoreOptions::default()
                },
            )
            .unwrap();
            store.wait_resident().unwrap();
            let mut b = paydedup_state::StateBatch::new();
            b.put_fraud(b"\x03cust", 1i64.to_be_bytes());
            store.commit(b).unwrap();
            let mut b = paydedup_state::StateBatch::new();
            b.put_fraud(b"\x03other", 1i64.to_be_bytes());
            store.commit(b).unwrap();
            let m = Metrics::new();
            let (bytes, complete) = store.fraud_memory().unwrap();
            m.emit(FraudMemoryMeasured { bytes, complete });
            (bytes, rendered(&m))
        };
        let (bytes, text) = fill(64 << 20);
        assert!(bytes > 0);
        assert!(
            text.contains(&format!("paydedup_fraud_memory_bytes {bytes}")),
            "{text}"
        );
        assert!(text.contains("paydedup_fraud_memory_complete 1"), "{text}");
        // A budget the first key already spends: the second is left to RocksDB.
        let (_, text) = fill(1);
        assert!(text.contains("paydedup_fraud_memory_complete 0"), "{text}");
    }

    /// The fraud log's unfolded pages, from a real store: one per commit with fraud
    /// changes, none once folded.
    #[test]
    fn the_fraud_log_gauge_counts_the_unfolded_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            paydedup_state::StateStore::open(dir.path(), &paydedup_state::StoreOptions::default())
                .unwrap();
        for i in 0..3u8 {
            let mut b = paydedup_state::StateBatch::new();
            b.put_fraud([3, i], 1i64.to_be_bytes());
            store.commit(b).unwrap();
        }
        let m = Metrics::new();
        m.emit(FraudLogMeasured {
            pages: store.fraud_log_pages(),
        });
        assert!(rendered(&m).contains("paydedup_fraud_log_pages 3"));
        store.settle_fraud_log().unwrap();
        m.emit(FraudLogMeasured {
            pages: store.fraud_log_pages(),
        });
        assert!(rendered(&m).contains("paydedup_fraud_log_pages 0"));
    }

    /// The dedup index's size, from a real store: what a commit put is counted.
    #[test]
    fn the_dedup_index_gauges_follow_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            paydedup_state::StateStore::open(dir.path(), &paydedup_state::StoreOptions::default())
                .unwrap();
        store.wait_resident().unwrap();
        let mut b = paydedup_state::StateBatch::new();
        for t in 0..3 {
            let entry = paydedup_state::DedupEntry {
                event_time_micros: t,
                content_hash: 7,
                partition: 0,
                offset: t,
            };
            b.put_dedup(paydedup_state::keys::dedup_key(&format!("tx-{t}")), &entry);
        }
        store.commit(b).unwrap();
        let m = Metrics::new();
        let ((entries, _), (bytes, _)) = (
            store.resident_keys().unwrap(),
            store.resident_bytes().unwrap(),
        );
        m.emit(DedupIndexMeasured {
            entries,
            bytes,
            page_reads: 2,
        });
        let text = rendered(&m);
        assert_eq!(entries, 3);
        assert!(bytes >= 3 * 16, "{bytes}");
        assert!(text.contains("paydedup_dedup_page_reads_total 2"), "{text}");
        assert!(text.contains("paydedup_dedup_index_entries 3"), "{text}");
        assert!(
            text.contains(&format!("paydedup_dedup_index_bytes {bytes}")),
            "{text}"
        );
    }

    #[test]
    fn a_committed_batch_counts_every_outcome() {
        let m = Metrics::new();
        let mut stats = BatchStats {
            records: 6,
            unique: 2,
            duplicates: 1,
            conflicts: 1,
            late: 1,
            invalid: 1,
            ..BatchStats::default()
        };
        stats.invalid_by_code.insert("malformed_json", 1);
        m.emit(BatchCommitted {
            stats: &stats,
            batch: Duration::from_millis(3),
            commit: Duration::from_millis(1),
        });
        let text = rendered(&m);
        assert!(
            text.contains("paydedup_records_total{outcome=\"unique\"} 2"),
            "{text}"
        );
        assert!(text.contains("paydedup_records_total{outcome=\"conflict\"} 1"));
        assert!(text.contains("paydedup_invalid_records_total{code=\"malformed_json\"} 1"));
        assert!(text.contains("paydedup_batches_total 1"));
    }

    #[test]
    fn each_record_is_one_freshness_observation_at_commit() {
        let m = Metrics::new();
        let now = chrono::Utc::now().timestamp_millis();
        // Two records produced 2 s ago, one 20 s ago, and one record without a timestamp.
        let stats = BatchStats {
            records: 4,
            kafka_timestamps_ms: vec![now - 2_000, now - 2_000, now - 20_000],
            ..BatchStats::default()
        };
        m.emit(BatchCommitted {
            stats: &stats,
            batch: Duration::from_millis(3),
            commit: Duration::from_millis(1),
        });
        let text = rendered(&m);
        let bucket = |le: &str| {
            let prefix = format!("paydedup_record_commit_latency_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
                .to_owned()
        };
        assert_eq!(bucket("1"), "0");
        assert_eq!(bucket("2.5"), "2");
        assert_eq!(bucket("30"), "3");
        assert!(text.contains("paydedup_record_commit_latency_seconds_count 3"));
    }

    #[test]
    fn sink_errors_are_labelled_by_error_code_and_pauses_are_visible() {
        let m = Metrics::new();
        let error = SinkError::Transient("down".into());
        m.emit(SinkWriteFailed {
            table: Table::Payments,
            partition: 0,
            first_seq: 0,
            error: &error,
            retry_in: Some(Duration::from_millis(5)),
        });
        m.emit(ConsumerPaused {
            outbox_depth: 10,
            bound: 10,
        });
        let text = rendered(&m);
        assert!(
            text.contains("paydedup_sink_errors_total{kind=\"transient\"} 1"),
            "{text}"
        );
        assert!(text.contains("paydedup_consumer_paused 1"));
        m.emit(ConsumerResumed { outbox_depth: 4 });
        assert!(rendered(&m).contains("paydedup_consumer_paused 0"));
    }
}
