//! The pipeline: decode+validate → watermark → dedup → fraud → windows → rows.
//!
//! [`Pipeline::process`] turns one batch of Kafka records into one [`StateBatch`]:
//! dedup keys, fraud and window state, outbox rows, next offsets and watermarks. The
//! caller commits it atomically. The decisions themselves are pure functions:
//! [`outcome::classify`] routes a record (over [`watermark`] and [`dedupe`]), [`window`]
//! places and closes windows, `paydedup_fraud::assess` scores, [`rows`] renders. This
//! module only threads state through them in partition order:
//!
//! 1. decode every record, then read the batch's dedup and fraud state in bulk
//!    ([`prefetch`]);
//! 2. per record: move the partition's offset, classify, apply the outcome's state
//!    effects (dedup entry, fraud history, watermark, window), render its row;
//! 3. close the windows the watermarks passed (`closing.rs`, which [`Pipeline::drain`]
//!    shares);
//! 4. write the state deltas and positions.
//!
//! The pipeline keeps in memory the committed values it needs on every record
//! (watermarks, sequences, open windows). If a commit fails the process exits and
//! restarts from RocksDB, so memory and disk never need reconciling.

mod closing;
pub mod compact_row;
pub mod decode_ahead;
pub mod dedupe;
#[cfg(test)]
pub(crate) mod fixtures;
mod json_row;
mod landed;
pub mod outcome;
pub mod prefetch;
pub mod rows;
pub mod watermark;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paydedup_event::{Currency, DecodeLimits, PaymentEvent, ValidationError};
use paydedup_fraud::FraudConfig;
use paydedup_state::keys::{parse_window_key, window_key};
use paydedup_state::{DedupEntry, StateBatch, StateError, StateStore, Table};

pub use decode_ahead::{Ahead, DecodeAhead, Decoded, InputBatch, RecordDecoder, DECODE_AHEAD};
use outcome::{classify, Outcome};
pub use prefetch::COMMITS_IN_FLIGHT;
use prefetch::{BatchState, FraudExpiry, InFlight};
use rows::AuditKind;
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

impl InputRecord<'_> {
    /// Key, value and timestamp hashed: checkpointed with the position, so a restart
    /// can tell whether the log still holds this record at this offset.
    pub fn fingerprint(&self) -> u64 {
        paydedup_state::keys::record_fingerprint(self.key, self.payload, self.timestamp_ms)
    }
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
    /// Landed records (a restored state's replay) whose row the sink holds in another
    /// table than the replay decided.
    pub landed_disagreements: u64,
    /// Invalid records per validation code.
    pub invalid_by_code: BTreeMap<&'static str, u64>,
    /// The Kafka timestamp of every record that has one, in milliseconds: at the
    /// batch's durable commit each becomes one observation of the records' freshness
    /// (Kafka timestamp → commit).
    pub kafka_timestamps_ms: Vec<i64>,
}

#[derive(Debug, Clone, Default)]
struct PartitionProgress {
    max_event_micros: Option<i64>,
    next_offset: Option<i64>,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    /// Looked up per record: hashed with foldhash, not SipHash (see `prefetch::BatchMap`).
    partitions: prefetch::BatchMap<i32, PartitionProgress>,
    next_seq: prefetch::BatchMap<(Table, i32), u64>,
    /// Open windows: (partition, start, currency code) → aggregate.
    windows: BTreeMap<WindowKey, WindowAgg>,
    /// (table, partition) whose next sequence changed since the last flush into a
    /// batch: `seq` marks them, `flush_seqs` writes them.
    dirty_seqs: BTreeSet<(Table, i32)>,
    /// A restored state's records beyond its position whose rows the sink already
    /// holds: partition → offset → table. Replayed for their state effects; their rows
    /// are not sent again (see `landed.rs`).
    landed: HashMap<i32, BTreeMap<i64, Table>>,
    /// Open windows whose `payment_metrics` row the sink already holds.
    landed_windows: BTreeSet<WindowKey>,
    /// The dedup and fraud values of the last batches, whose commits may still be
    /// running (see `prefetch`).
    in_flight: InFlight,
    /// The store's fraud horizon when the pipeline loaded: fraud values expire by no
    /// less (see [`Pipeline::fraud_horizon`]).
    fraud_floor: Option<i64>,
    /// The last record's row, once the batch has copied it: the next unique payment's
    /// row is written into it (an allocation and a free a row less).
    spare_row: Vec<u8>,
}

/// The largest row buffer kept for the next row (`Pipeline::spare_row`).
const SPARE_ROW_MAX_BYTES: usize = 1024;

/// (partition, window start µs, currency code).
type WindowKey = (i32, i64, &'static str);

impl BatchStats {
    /// Counts one record's outcome (fraud flags are counted where they are scored; key
    /// mismatches where the batch was decoded).
    fn count(&mut self, r: &InputRecord<'_>, outcome: &Outcome<'_>) {
        self.records += 1;
        self.kafka_timestamps_ms.extend(r.timestamp_ms);
        match outcome {
            Outcome::Invalid { error } => {
                self.invalid += 1;
                *self.invalid_by_code.entry(error.code()).or_default() += 1;
            }
            Outcome::Late { .. } => self.late += 1,
            Outcome::Unique { .. } => self.unique += 1,
            Outcome::Duplicate { .. } => self.duplicates += 1,
            Outcome::Conflict { .. } => self.conflicts += 1,
        }
    }
}

impl Pipeline {
    /// Loads the committed progress, sequences and open windows from the store.
    pub fn load(cfg: PipelineConfig, store: &StateStore) -> Result<Pipeline, StateError> {
        let mut partitions: prefetch::BatchMap<i32, PartitionProgress> = Default::default();
        for (p, o) in store.next_offsets()? {
            partitions.entry(p).or_default().next_offset = Some(o);
        }
        for (p, m) in store.max_event_times()? {
            partitions.entry(p).or_default().max_event_micros = Some(m);
        }
        let next_seq = store.next_seqs()?.into_iter().collect();
        // The store may be ahead of every partition loaded: a partition this instance
        // no longer owns (forgotten at start) may have published a later watermark.
        let fraud_floor = store.fraud_horizon();
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
        let ahead = store.landed_ahead()?;
        let landed_windows = ahead
            .windows
            .iter()
            .filter_map(|(p, start, c)| Some((*p, *start, Currency::from_code(c)?.code())))
            .collect();
        Ok(Pipeline {
            cfg,
            partitions,
            next_seq,
            windows,
            dirty_seqs: BTreeSet::new(),
            landed: ahead.records.into_iter().collect(),
            landed_windows,
            in_flight: InFlight::default(),
            fraud_floor,
            spare_row: Vec::new(),
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

    /// The horizon fraud values expire by (see [`FraudExpiry`]): the store's as the
    /// pipeline loaded (`fraud_floor`), raised by the most advanced watermark of any
    /// partition the pipeline knows, as the store's filter uses the most advanced one
    /// committed.
    fn fraud_horizon(&self) -> Option<i64> {
        let lateness = self.cfg.allowed_lateness_micros;
        self.partitions
            .values()
            .filter_map(|p| watermark::watermark(p.max_event_micros, lateness))
            .chain(self.fraud_floor)
            .max()
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
        let decoded = self.decoder().decode(records);
        self.process_decoded(records, decoded, store)
    }

    /// [`Pipeline::process`] of a batch already decoded (`decoded.events[i]` is what
    /// `records[i]` decoded to, by [`Pipeline::decoder`]): decoded ahead, on another
    /// thread, while the batches before it were processed (`decode_ahead`).
    pub fn process_decoded(
        &mut self,
        records: &[InputRecord<'_>],
        decoded: Decoded,
        store: &StateStore,
    ) -> Result<(StateBatch, BatchStats), StateError> {
        // 1. Everything decoded: fetch the state the batch needs in bulk.
        // A caller's bug, never input: a shorter `decoded` would have the zip below
        // skip records whose positions the batch still moves past.
        assert_eq!(records.len(), decoded.len(), "one decode per record");
        assert_eq!(decoded.hashes.len(), decoded.len(), "one hash per record");
        let expiry = FraudExpiry {
            ttl_micros: store.fraud_ttl_micros(),
            horizon: self.fraud_horizon(),
        };
        let Decoded {
            events,
            hashes,
            key_mismatches,
            keys,
        } = decoded;
        let mut state = BatchState::read(&events, keys, &self.in_flight, store, expiry)?;
        let mut stats = BatchStats {
            key_mismatch: key_mismatches,
            ..BatchStats::default()
        };
        // Per record, about: a dedup entry (16 + 36 bytes), a card (~18 + 40) and a
        // customer (~11 + 20).
        let mut batch = StateBatch::with_capacity(3 * records.len(), 160 * records.len());
        // Nearly every record is a payment row of its partition (a row averaged 143
        // bytes on the peers' 2 M input).
        let per_partition = records_per_partition(records);
        for &(partition, n) in &per_partition {
            batch.reserve_outbox(Table::Payments, partition, n, 160 * n);
        }

        // 2. Each record, in order, ends in exactly one table.
        let mut windows_touched = BTreeSet::new();
        let each = records.iter().zip(&events).zip(&hashes);
        for (i, ((r, d), &hash)) in each.enumerate() {
            // A record whose row the sink already holds (a restored state replaying
            // past its position) has its state effects, not its row.
            let landed = self.take_landed(r, &mut batch);
            let (table, seq, row) = self.record(
                r,
                (i, d, hash),
                landed.is_none(),
                &mut state,
                &mut windows_touched,
                &mut stats,
            );
            match landed {
                None => batch.put_outbox(table, r.partition, seq, &row),
                Some(held) => self.check_landed(r, table, held, &mut stats),
            }
            // Kept only if row-sized: a processing error's row carries its whole
            // payload, and its memory would otherwise stay for good.
            if row.capacity() <= SPARE_ROW_MAX_BYTES {
                self.spare_row = row;
            }
        }

        // 3. Close the windows the watermarks have passed.
        stats.windows_closed = self.close_passed_windows(&mut batch);

        // 4. State deltas: dedup keys, fraud state, open windows, sequences, positions.
        self.in_flight.push(state.into_deltas(&mut batch));
        for key in windows_touched {
            // A window closed in step 3 was deleted there; only open ones are written.
            if let Some(agg) = self.windows.get(&key) {
                batch.put_window(window_key(key.0, key.1, key.2), agg.encode());
            }
        }
        self.flush_seqs(&mut batch);
        self.put_positions(records, &per_partition, &mut batch);
        stats.outbox_rows = batch.outbox_rows();
        Ok((batch, stats))
    }

    /// What decodes this pipeline's records (for a batch decoded ahead, on another
    /// thread: `decode_ahead`).
    pub fn decoder(&self) -> RecordDecoder {
        RecordDecoder {
            limits: self.cfg.decode.clone(),
        }
    }

    /// One record: classify it, apply its outcome's state effects, render its row.
    /// Returns the row with its table and sequence; with `send` false (a landed record)
    /// everything happens but the sequence allocation (the row is then not sent).
    fn record<'a>(
        &mut self,
        r: &InputRecord<'_>,
        // The record's index in the batch (where `state` keeps its state), what it
        // decoded to and its content hash.
        (index, decoded, hash): (usize, &'a Result<PaymentEvent, ValidationError>, u128),
        send: bool,
        state: &mut BatchState<'a>,
        touched: &mut BTreeSet<WindowKey>,
        stats: &mut BatchStats,
    ) -> (Table, u64, Vec<u8>) {
        // The record is consumed whatever its outcome; its watermark is the one before it.
        let progress = self.partitions.entry(r.partition).or_default();
        progress.next_offset = Some(r.offset + 1);
        let wm = watermark::watermark(progress.max_event_micros, self.cfg.allowed_lateness_micros);
        let existing = state.dedup_entry(index);
        let outcome = classify(decoded, hash, existing, wm, self.cfg.retention_micros);
        stats.count(r, &outcome);
        let table = outcome.table();
        let seq = if send {
            self.seq(table, r.partition)
        } else {
            0
        };
        let row = match outcome {
            // Invalid and late records change no state.
            Outcome::Invalid { error } => rows::processing_error(r, error, seq),
            Outcome::Late {
                event,
                watermark,
                key_known,
            } => rows::late_event(r, event, watermark, key_known, seq),
            Outcome::Unique { event, hash } => {
                let first = DedupEntry {
                    event_time_micros: event.event_time_micros(),
                    content_hash: hash,
                    partition: r.partition,
                    offset: r.offset,
                };
                state.insert_dedup(index, first);
                let fraud = state.assess(index, &self.cfg.fraud);
                stats.flagged += u64::from(fraud.flagged);
                self.on_time(r.partition, event, touched)
                    .add_payment(event.amount_minor, fraud.flagged);
                let buf = std::mem::take(&mut self.spare_row);
                rows::payment(buf, r, event, hash, &fraud, seq)
            }
            Outcome::Duplicate { event, hash, first } => {
                self.on_time(r.partition, event, touched).duplicate_count += 1;
                rows::dedup_audit(r, AuditKind::Duplicate, event, hash, &first, seq)
            }
            Outcome::Conflict { event, hash, first } => {
                self.on_time(r.partition, event, touched).conflict_count += 1;
                rows::dedup_audit(r, AuditKind::Conflict, event, hash, &first, seq)
            }
        };
        (table, seq, row)
    }

    /// An on-time event (unique or repeat) moves its partition's max event time and
    /// counts in its window, which it returns. On time means `event_time >= watermark`,
    /// so the window is still open (see [`window`]).
    fn on_time(
        &mut self,
        partition: i32,
        event: &PaymentEvent,
        touched: &mut BTreeSet<WindowKey>,
    ) -> &mut WindowAgg {
        let t = event.event_time_micros();
        let progress = self.partitions.entry(partition).or_default();
        progress.max_event_micros = watermark::advance(progress.max_event_micros, t);
        let key = (
            partition,
            window::window_start(t, self.cfg.window_micros),
            event.currency.code(),
        );
        touched.insert(key);
        self.windows.entry(key).or_default()
    }

    /// Checkpoints the next offset and max event time of every partition in `records`
    /// (`per_partition`: [`records_per_partition`] of them, worked out once a batch).
    fn put_positions(
        &self,
        records: &[InputRecord<'_>],
        per_partition: &[(i32, usize)],
        batch: &mut StateBatch,
    ) {
        for &(p, _) in per_partition {
            let progress = &self.partitions[&p];
            if let Some(o) = progress.next_offset {
                batch.set_next_offset(p, o);
            }
            if let Some(last) = records.iter().rev().find(|r| r.partition == p) {
                batch.set_last_record(p, last.offset, last.fingerprint());
            }
            if let Some(m) = progress.max_event_micros {
                batch.set_max_event_time(p, m);
            }
        }
    }
}

/// How many of `records` each partition has, in order of first appearance. A poll
/// hands over each partition's records in runs, so the last partition is tried first.
fn records_per_partition(records: &[InputRecord<'_>]) -> Vec<(i32, usize)> {
    let mut counts: Vec<(i32, usize)> = Vec::new();
    let mut last = 0;
    for r in records {
        if counts.get(last).is_some_and(|(p, _)| *p == r.partition) {
            counts[last].1 += 1;
            continue;
        }
        last = match counts.iter().position(|(p, _)| *p == r.partition) {
            Some(i) => i,
            None => {
                counts.push((r.partition, 0));
                counts.len() - 1
            }
        };
        counts[last].1 += 1;
    }
    counts
}

#[cfg(test)]
mod tests;
