//! The pipeline: decode+validate → watermark → dedup → fraud → windows → rows.
//!
//! [`Pipeline::process`] turns one batch of Kafka records into one [`StateBatch`]:
//! dedup keys, fraud and window state, outbox rows, next offsets and watermarks. The
//! caller commits it atomically. The decisions themselves are the pure functions in
//! [`watermark`], [`dedupe`], [`window`] and `paydedup_fraud::assess`; this module only
//! threads state through them in partition order.
//!
//! The pipeline keeps in memory the committed values it needs on every record
//! (watermarks, sequences, open windows). If a commit fails the process exits and
//! restarts from RocksDB, so memory and disk never need reconciling.

pub mod dedupe;
pub mod rows;
pub mod watermark;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use chrono::{TimeZone, Utc};
use paydedup_event::{content_hash, decode, Currency, DecodeLimits, PaymentEvent, ValidationError};
use paydedup_fraud::{assess, CardState, CustomerState, FraudConfig};
use paydedup_state::keys::{dedup_key, parse_window_key, window_key};
use paydedup_state::{DedupEntry, StateBatch, StateError, StateStore, Table};
use serde::Serialize;

use dedupe::DedupDecision;
use rows::*;
use window::WindowAgg;

/// One Kafka record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// Kafka CreateTime in ms, if the record has one.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub allowed_lateness_micros: i64,
    pub retention_micros: i64,
    pub window_micros: i64,
    pub decode: DecodeLimits,
    pub fraud: FraudConfig,
}

/// What a batch did, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub records: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub late: u64,
    pub invalid: u64,
    pub flagged: u64,
    /// Records whose Kafka key is not their transaction_id (dedup is then only as
    /// global as the producer's partitioning).
    pub key_mismatch: u64,
    pub windows_closed: u64,
    pub outbox_rows: u64,
    /// Invalid records per validation code.
    pub invalid_by_code: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default)]
struct PartitionProgress {
    max_event_micros: Option<i64>,
    next_offset: Option<i64>,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    partitions: HashMap<i32, PartitionProgress>,
    next_seq: HashMap<(Table, i32), u64>,
    /// Open windows: (partition, start, currency code) → aggregate.
    windows: BTreeMap<WindowKey, WindowAgg>,
    /// (table, partition) whose next sequence changed since the last flush into a
    /// batch: `seq` marks them, `flush_seqs` writes them.
    dirty_seqs: BTreeSet<(Table, i32)>,
}

/// (partition, window start µs, currency code).
type WindowKey = (i32, i64, &'static str);

fn enc<T: Serialize>(row: &T) -> Vec<u8> {
    // Row structs hold only strings, numbers and bools: serialisation cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Pipeline {
    /// Loads the committed progress, sequences and open windows from the store.
    pub fn load(cfg: PipelineConfig, store: &StateStore) -> Result<Pipeline, StateError> {
        let mut partitions: HashMap<i32, PartitionProgress> = HashMap::new();
        for (p, o) in store.next_offsets()? {
            partitions.entry(p).or_default().next_offset = Some(o);
        }
        for (p, m) in store.max_event_times()? {
            partitions.entry(p).or_default().max_event_micros = Some(m);
        }
        let next_seq = store.next_seqs()?.into_iter().collect();
        let mut windows = BTreeMap::new();
        for (k, v) in store.windows()? {
            let Some((p, start, currency)) = parse_window_key(&k)
                .and_then(|(p, start, c)| Some((p, start, Currency::from_code(&c)?.code())))
            else {
                return Err(StateError::BadValue {
                    what: "window key",
                    len: k.len(),
                });
            };
            let agg: WindowAgg = serde_json::from_slice(&v).map_err(|_| StateError::BadValue {
                what: "window value",
                len: v.len(),
            })?;
            windows.insert((p, start, currency), agg);
        }
        Ok(Pipeline {
            cfg,
            partitions,
            next_seq,
            windows,
            dirty_seqs: BTreeSet::new(),
        })
    }

    /// The checkpointed next offset of a partition (where the consumer must resume).
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.next_offset)
    }

    /// A partition's current watermark.
    pub fn watermark(&self, partition: i32) -> Option<i64> {
        watermark::watermark(
            self.partitions
                .get(&partition)
                .and_then(|p| p.max_event_micros),
            self.cfg.allowed_lateness_micros,
        )
    }

    /// Watermarks of the given partitions.
    pub fn watermarks(&self, partitions: &[i32]) -> Vec<(i32, Option<i64>)> {
        partitions.iter().map(|&p| (p, self.watermark(p))).collect()
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Allocates the next sequence of (table, partition).
    fn seq(&mut self, table: Table, partition: i32) -> u64 {
        let s = self.next_seq.entry((table, partition)).or_insert(0);
        let v = *s;
        *s += 1;
        self.dirty_seqs.insert((table, partition));
        v
    }

    /// Records every sequence counter `seq` moved, in the batch that carries its rows.
    fn flush_seqs(&mut self, batch: &mut StateBatch) {
        for (t, p) in std::mem::take(&mut self.dirty_seqs) {
            batch.set_next_seq(t, p, self.next_seq[&(t, p)]);
        }
    }

    /// Processes one batch (records of any partitions, each partition's in offset
    /// order) into a [`StateBatch`] ready to commit.
    pub fn process(
        &mut self,
        records: &[InputRecord<'_>],
        store: &StateStore,
    ) -> Result<(StateBatch, BatchStats), StateError> {
        let mut stats = BatchStats::default();
        let mut batch = StateBatch::new();

        // 1. Decode everything, then fetch the state the batch needs in bulk.
        let decoded: Vec<Result<PaymentEvent, ValidationError>> = records
            .iter()
            .map(|r| {
                let reference = r
                    .timestamp_ms
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    // No timestamp: nothing to judge "in the future" against that a
                    // replay would see the same way, so the check is skipped.
                    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
                decode(r.payload, reference, &self.cfg.decode)
            })
            .collect();
        let mut dedup_keys: Vec<[u8; 16]> = Vec::new();
        let mut fraud_keys: Vec<Vec<u8>> = Vec::new();
        for e in decoded.iter().flatten() {
            dedup_keys.push(dedup_key(e.transaction_id.as_str()));
            fraud_keys.push(CardState::key(&e.card_fingerprint));
            fraud_keys.push(CustomerState::key(&e.customer_id));
        }
        dedup_keys.sort_unstable();
        dedup_keys.dedup();
        fraud_keys.sort_unstable();
        fraud_keys.dedup();
        let mut dedup: HashMap<[u8; 16], Option<DedupEntry>> = dedup_keys
            .iter()
            .copied()
            .zip(store.get_dedup_many(&dedup_keys)?)
            .collect();
        let mut dedup_written: Vec<[u8; 16]> = Vec::new();
        let fraud_values = store.get_fraud_many(&fraud_keys)?;
        // Fraud state per key, with whether this batch changed it.
        let mut cards: HashMap<Vec<u8>, (CardState, bool)> = HashMap::new();
        let mut customers: HashMap<Vec<u8>, (CustomerState, bool)> = HashMap::new();
        for (k, v) in fraud_keys.into_iter().zip(fraud_values) {
            let v = v.unwrap_or_default();
            if k.starts_with(b"card/") {
                cards.insert(k, (CardState::decode(&v), false));
            } else {
                customers.insert(k, (CustomerState::decode(&v), false));
            }
        }
        let mut windows_touched: BTreeSet<WindowKey> = BTreeSet::new();

        // 2. Each record, in order, ends in exactly one table.
        for (r, d) in records.iter().zip(decoded.iter()) {
            stats.records += 1;
            let kafka_ts = r.timestamp_ms.map(|ms| ts(ms.saturating_mul(1000)));
            let progress = self.partitions.entry(r.partition).or_default();
            progress.next_offset = Some(r.offset + 1);
            let wm =
                watermark::watermark(progress.max_event_micros, self.cfg.allowed_lateness_micros);
            let (table, seq, row) = match d {
                Err(e) => {
                    stats.invalid += 1;
                    *stats.invalid_by_code.entry(e.code()).or_default() += 1;
                    let (payload, redacted) = if e.code() == "card_number_detected" {
                        rows::redact_pans(r.payload)
                    } else {
                        (r.payload.to_vec(), false)
                    };
                    let seq = self.seq(Table::ProcessingErrors, r.partition);
                    let key = r.key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| {
                        k.len() <= 256
                            && !(e.code() == "card_number_detected"
                                && rows::redact_pans(k.as_bytes()).1)
                    });
                    let row = ProcessingErrorRow {
                        error_code: e.code(),
                        error_field: e.field(),
                        error_message: e.to_string(),
                        payload_base64: b64(&payload),
                        payload_redacted: redacted,
                        payload_bytes: r.payload.len(),
                        kafka_key: key,
                        kafka_timestamp: kafka_ts,
                        source_partition: r.partition,
                        source_offset: r.offset,
                        outbox_seq: seq,
                    };
                    (Table::ProcessingErrors, seq, enc(&row))
                }
                Ok(event) => {
                    if r.key != Some(event.transaction_id.as_str().as_bytes()) {
                        stats.key_mismatch += 1;
                    }
                    let t = event.event_time_micros();
                    let key = dedup_key(event.transaction_id.as_str());
                    let existing = dedup.get(&key).copied().flatten();
                    if watermark::is_late(t, wm) {
                        stats.late += 1;
                        let known =
                            dedupe::alive(existing, wm, self.cfg.retention_micros).is_some();
                        let wm = wm.unwrap_or(t);
                        let seq = self.seq(Table::LateEvents, r.partition);
                        let row = LateEventRow {
                            transaction_id: event.transaction_id.as_str(),
                            event_time: ts(t),
                            watermark: ts(wm),
                            lateness_secs: (wm - t) as f64 / 1e6,
                            key_known: known,
                            amount_minor: event.amount_minor,
                            currency: event.currency.code(),
                            payload_base64: b64(r.payload),
                            kafka_timestamp: kafka_ts,
                            source_partition: r.partition,
                            source_offset: r.offset,
                            outbox_seq: seq,
                        };
                        (Table::LateEvents, seq, enc(&row))
                    } else {
                        let hash = content_hash(event).0;
                        let decision =
                            dedupe::decide(existing, hash, wm, self.cfg.retention_micros);
                        let progress = self.partitions.entry(r.partition).or_default();
                        progress.max_event_micros =
                            watermark::advance(progress.max_event_micros, t);
                        let wkey = (
                            r.partition,
                            window::window_start(t, self.cfg.window_micros),
                            event.currency.code(),
                        );
                        let agg = self.windows.entry(wkey).or_default();
                        windows_touched.insert(wkey);
                        match decision {
                            DedupDecision::Unique => {
                                stats.unique += 1;
                                let entry = DedupEntry {
                                    event_time_micros: t,
                                    content_hash: hash,
                                    partition: r.partition,
                                    offset: r.offset,
                                };
                                dedup.insert(key, Some(entry));
                                dedup_written.push(key);
                                let card = cards
                                    .entry(CardState::key(&event.card_fingerprint))
                                    .or_default();
                                let customer = customers
                                    .entry(CustomerState::key(&event.customer_id))
                                    .or_default();
                                let a =
                                    assess(event, &mut card.0, &mut customer.0, &self.cfg.fraud);
                                card.1 = true;
                                customer.1 = true;
                                agg.payment_count += 1;
                                agg.amount_minor_sum += i128::from(event.amount_minor);
                                if a.flagged {
                                    agg.flagged_count += 1;
                                    stats.flagged += 1;
                                }
                                let seq = self.seq(Table::Payments, r.partition);
                                let row = PaymentRow {
                                    transaction_id: event.transaction_id.as_str(),
                                    event_time: ts(t),
                                    amount_minor: event.amount_minor,
                                    amount: event.currency.format_major(event.amount_minor),
                                    currency: event.currency.code(),
                                    merchant_id: &event.merchant_id,
                                    merchant_category: format!("{:04}", event.merchant_category),
                                    card_fingerprint: &event.card_fingerprint,
                                    card_country: &event.card_country,
                                    customer_id: &event.customer_id,
                                    ip_country: &event.ip_country,
                                    device_id: &event.device_id,
                                    region: &event.region,
                                    payment_method: event.payment_method.as_str(),
                                    schema_version: event.schema_version,
                                    content_hash: format!("{hash:032x}"),
                                    fraud_score: a.score,
                                    fraud_flagged: a.flagged,
                                    fraud_reasons: a.reasons.iter().map(|r| r.as_str()).collect(),
                                    card_count_10m: a.card_count_10m,
                                    card_count_1h: a.card_count_1h,
                                    kafka_timestamp: kafka_ts,
                                    source_partition: r.partition,
                                    source_offset: r.offset,
                                    outbox_seq: seq,
                                };
                                (Table::Payments, seq, enc(&row))
                            }
                            DedupDecision::Duplicate { first }
                            | DedupDecision::Conflict { first } => {
                                let kind = if matches!(decision, DedupDecision::Duplicate { .. }) {
                                    stats.duplicates += 1;
                                    agg.duplicate_count += 1;
                                    "duplicate"
                                } else {
                                    stats.conflicts += 1;
                                    agg.conflict_count += 1;
                                    "conflict"
                                };
                                let seq = self.seq(Table::DedupAudit, r.partition);
                                let row = DedupAuditRow {
                                    kind,
                                    transaction_id: event.transaction_id.as_str(),
                                    event_time: ts(t),
                                    first_event_time: ts(first.event_time_micros),
                                    amount_minor: event.amount_minor,
                                    currency: event.currency.code(),
                                    first_content_hash: format!("{:032x}", first.content_hash),
                                    repeat_content_hash: format!("{hash:032x}"),
                                    first_partition: first.partition,
                                    first_offset: first.offset,
                                    kafka_timestamp: kafka_ts,
                                    source_partition: r.partition,
                                    source_offset: r.offset,
                                    outbox_seq: seq,
                                };
                                (Table::DedupAudit, seq, enc(&row))
                            }
                        }
                    }
                }
            };
            batch.put_outbox(table, r.partition, seq, row);
        }

        // 3. Close windows the watermarks have passed, in (partition, start, currency)
        //    order, and emit them.
        let closed: Vec<WindowKey> = self
            .windows
            .keys()
            .filter(|(p, start, _)| {
                window::is_closed(*start, self.cfg.window_micros, self.watermark(*p))
            })
            .copied()
            .collect();
        for key in closed {
            let Some(agg) = self.windows.remove(&key) else {
                continue;
            };
            self.emit_window(key, &agg, &mut batch);
            batch.delete_window(window_key(key.0, key.1, key.2));
            stats.windows_closed += 1;
        }

        // 4. State deltas: dedup keys, fraud state, open windows, positions.
        for key in dedup_written {
            if let Some(Some(entry)) = dedup.get(&key) {
                batch.put_dedup(key, entry);
            }
        }
        for (k, (card, changed)) in cards {
            if changed {
                batch.put_fraud(k, card.encode());
            }
        }
        for (k, (customer, changed)) in customers {
            if changed {
                batch.put_fraud(k, customer.encode());
            }
        }
        for key in windows_touched {
            if let Some(agg) = self.windows.get(&key) {
                batch.put_window(window_key(key.0, key.1, key.2), enc(agg));
            }
        }
        self.flush_seqs(&mut batch);
        let mut partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        for p in partitions {
            let progress = &self.partitions[&p];
            if let Some(o) = progress.next_offset {
                batch.set_next_offset(p, o);
            }
            if let Some(m) = progress.max_event_micros {
                batch.set_max_event_time(p, m);
            }
        }
        stats.outbox_rows = batch.outbox_rows();
        Ok((batch, stats))
    }

    fn emit_window(&mut self, key: WindowKey, agg: &WindowAgg, batch: &mut StateBatch) {
        let (p, start, currency) = key;
        let seq = self.seq(Table::PaymentMetrics, p);
        let code = Currency::from_code(currency);
        let sum = i64::try_from(agg.amount_minor_sum).unwrap_or(i64::MAX);
        let row = PaymentMetricsRow {
            window_start: ts(start),
            window_end: ts(start + self.cfg.window_micros),
            currency,
            payment_count: agg.payment_count,
            amount_minor_sum: sum,
            amount_sum: code.map(|c| c.format_major(sum)).unwrap_or_default(),
            duplicate_count: agg.duplicate_count,
            conflict_count: agg.conflict_count,
            flagged_count: agg.flagged_count,
            source_partition: p,
            outbox_seq: seq,
        };
        batch.put_outbox(Table::PaymentMetrics, p, seq, enc(&row));
    }

    /// Drains: closes every open window of the given partitions, as if their watermark
    /// had passed all of them (Flink's stop-with-drain). Used at the end of a bounded
    /// run so the metrics reconcile with the payments; later events for those windows
    /// would be late, because the partition's max event time moves past them.
    pub fn drain(&mut self, partitions: &[i32]) -> (StateBatch, u64) {
        let mut batch = StateBatch::new();
        let keys: Vec<WindowKey> = self
            .windows
            .keys()
            .filter(|(p, _, _)| partitions.contains(p))
            .copied()
            .collect();
        let mut closed = 0;
        let mut touched: Vec<i32> = Vec::new();
        for key in keys {
            let Some(agg) = self.windows.remove(&key) else {
                continue;
            };
            self.emit_window(key, &agg, &mut batch);
            batch.delete_window(window_key(key.0, key.1, key.2));
            // Move the max event time past the window so nothing can reopen it.
            let end = key.1 + self.cfg.window_micros + self.cfg.allowed_lateness_micros;
            let progress = self.partitions.entry(key.0).or_default();
            progress.max_event_micros = watermark::advance(progress.max_event_micros, end);
            touched.push(key.0);
            closed += 1;
        }
        touched.sort_unstable();
        touched.dedup();
        self.flush_seqs(&mut batch);
        for p in touched {
            if let Some(m) = self.partitions[&p].max_event_micros {
                batch.set_max_event_time(p, m);
            }
        }
        (batch, closed)
    }
}

#[cfg(test)]
mod tests;
