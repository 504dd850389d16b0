//! Restore: a state directory rebuilt from what the sink holds.
//!
//! A lost or unusable state directory cannot be replaced by an empty one: the sink
//! acknowledges any sequence below its position as "already present", so an empty
//! state's first rows would be dropped (the start-up agreement refuses it). And Kafka
//! retention may have removed the records a replay from offset 0 would need. But every
//! row carries its source partition and offset, and `payments` carries the whole
//! payment: the state can be rebuilt from the warehouse ([`rebuild`] says how, as a
//! pure function of the rows read, [`facts`]).
//!
//! The result is written into an empty state directory in one commit, with the
//! directory's identity, and the processor then runs on it: it resumes each partition
//! at its position, re-reads the records the sink already holds beyond it without
//! sending their rows again (`pipeline/landed.rs`), and agrees with the sink at start
//! like any state.
//!
//! What a restore cannot bring back: the fraud history comes from the restored
//! partitions' payments only, folded in event-time order, so fraud scores after a
//! restore may differ from those the lost state would have given (scores are not
//! reproducible across runs anyway, see docs/architecture.md); the last consumed
//! record's fingerprint (the log check) starts again at the next checkpoint.

pub mod facts;
pub mod rebuild;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Instant;

use paydedup_sink::{Sink, SinkError};
use paydedup_state::keys::{dedup_key, window_key};
use paydedup_state::{StateBatch, StateError, StateStore, Table};
use thiserror::Error;

use crate::pipeline::{rows, watermark};
use facts::Facts;
use rebuild::{rebuild, RebuildConfig, Rebuilt};

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("restore writes only partitions a state holds nothing for, and this one already has a position on partition {partition} (move the directory away, or point --state-dir elsewhere)")]
    NotEmpty { partition: i32 },
    #[error("reading {table} from the sink")]
    Sink {
        table: Table,
        #[source]
        source: SinkError,
    },
    #[error("a {table} row in the sink has no usable `{column}`")]
    BadRow { table: Table, column: &'static str },
    #[error("the sink holds partition {partition} offset {offset} twice (in {} and {}): it is not exact, so no state can be rebuilt from it", tables[0], tables[1])]
    Doubled {
        partition: i32,
        offset: i64,
        tables: [Table; 2],
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub partitions: Vec<i32>,
    pub rows_read: u64,
    /// Partition → where the processor resumes.
    pub positions: Vec<(i32, Option<i64>)>,
    pub landed_ahead: u64,
    pub dedup_entries: u64,
    pub open_windows: u64,
    pub windows_emitted: u64,
    pub fraud_keys: u64,
    pub elapsed_ms: u64,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored partitions {:?} from {} rows in {} ms: positions {:?}, {} records beyond them already delivered (replayed, not resent), {} dedup entries, {} open windows, {} closed windows to send, {} fraud keys",
            self.partitions,
            self.rows_read,
            self.elapsed_ms,
            self.positions,
            self.landed_ahead,
            self.dedup_entries,
            self.open_windows,
            self.windows_emitted,
            self.fraud_keys
        )
    }
}

/// The partitions of `owned` a state holds nothing for: no position, no sequence.
pub fn unpositioned(store: &StateStore, owned: &[i32]) -> Result<Vec<i32>, StateError> {
    let offsets = store.next_offsets()?;
    let seqs = store.next_seqs()?;
    Ok(owned
        .iter()
        .copied()
        .filter(|p| !offsets.contains_key(p) && !seqs.keys().any(|(_, q)| q == p))
        .collect())
}

/// The partitions of `partitions` the sink holds rows for (where a state that holds
/// nothing would have its rows dropped as already present).
pub fn partitions_with_rows(
    sink: &mut dyn Sink,
    partitions: &[i32],
) -> Result<Vec<i32>, SinkError> {
    let mut out = Vec::new();
    for &p in partitions {
        for t in Table::ALL {
            if sink.next_seq(t, p)?.unwrap_or(0) > 0 {
                out.push(p);
                break;
            }
        }
    }
    Ok(out)
}

/// Rebuilds `partitions` into `store`, which must hold nothing for them (it may hold
/// other partitions: a processor that takes partitions over), from what `sink` holds;
/// `log_end` is each partition's log end offset (Kafka's high watermark), where known.
pub fn restore(
    store: &StateStore,
    sink: &mut dyn Sink,
    partitions: &[i32],
    log_end: &BTreeMap<i32, i64>,
    cfg: &RebuildConfig,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let free = unpositioned(store, partitions)?;
    if let Some(&partition) = partitions.iter().find(|p| !free.contains(p)) {
        return Err(RestoreError::NotEmpty { partition });
    }
    // A state that holds other partitions keeps its global expiry horizon and the fraud
    // history it has (shared across partitions; scores are advisory).
    let fresh = store.next_offsets()?.is_empty();
    let mut facts = Facts::default();
    let mut rows_read = 0u64;
    for table in Table::ALL {
        let mut bad = None;
        sink.scan_rows(table, partitions, facts::columns(table), &mut |row| {
            rows_read += 1;
            if bad.is_none() {
                if let Err(e) = facts.add(table, row) {
                    bad = Some(e);
                }
            }
            Ok(())
        })
        .map_err(|source| RestoreError::Sink { table, source })?;
        if let Some(e) = bad {
            return Err(e);
        }
    }
    let rebuilt = rebuild(&facts, partitions, log_end, cfg)?;
    let mut batch = StateBatch::new();
    let mut report = write(&rebuilt, sink, cfg, store, fresh, &mut batch)?;
    store.commit(batch)?;
    report.partitions = partitions.to_vec();
    report.rows_read = rows_read;
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The rebuilt state as one batch: positions, watermarks, sequences (the sink's),
/// dedup entries, windows, fraud history, the landed marks, and the rows of windows to
/// emit.
fn write(
    r: &Rebuilt,
    sink: &mut dyn Sink,
    cfg: &RebuildConfig,
    store: &StateStore,
    fresh: bool,
    batch: &mut StateBatch,
) -> Result<RestoreReport, RestoreError> {
    let mut report = RestoreReport::default();
    let mut min_wm: Option<i64> = None;
    for (&p, pr) in &r.partitions {
        report.positions.push((p, pr.next_offset));
        if let Some(n) = pr.next_offset {
            batch.set_next_offset(p, n);
        }
        if let Some(m) = pr.max_event {
            batch.set_max_event_time(p, m);
            if let Some(wm) = watermark::watermark(Some(m), cfg.allowed_lateness_micros) {
                batch.set_partition_horizon(p, wm);
                min_wm = Some(min_wm.map_or(wm, |x| x.min(wm)));
            }
        }
        for (&o, &t) in &pr.landed_ahead {
            batch.set_landed_record(p, o, t);
        }
        report.landed_ahead += pr.landed_ahead.len() as u64;
        for t in Table::ALL {
            let mut next = sink
                .next_seq(t, p)
                .map_err(|source| RestoreError::Sink { table: t, source })?
                .unwrap_or(0);
            if t == Table::PaymentMetrics {
                for ((wp, start, currency), agg) in r.to_emit.range((p, i64::MIN, "")..) {
                    if *wp != p {
                        break;
                    }
                    let row =
                        rows::payment_metrics(p, *start, cfg.window_micros, currency, agg, next);
                    batch.put_outbox(Table::PaymentMetrics, p, next, row);
                    next += 1;
                    report.windows_emitted += 1;
                }
            }
            batch.set_next_seq(t, p, next);
        }
    }
    if let (Some(wm), true) = (min_wm, fresh) {
        batch.set_horizon(wm);
    }
    for (id, e) in &r.dedup {
        batch.put_dedup(dedup_key(id), e);
    }
    report.dedup_entries = r.dedup.len() as u64;
    for ((p, start, currency), agg) in &r.open_windows {
        batch.put_window(window_key(*p, *start, currency), agg.encode());
    }
    report.open_windows = r.open_windows.len() as u64;
    for (p, start, currency) in &r.landed_windows {
        batch.set_landed_window(*p, *start, currency);
    }
    let fraud = r
        .cards
        .iter()
        .map(|(card, s)| (paydedup_fraud::CardState::key(card), s.encode()))
        .chain(
            r.customers
                .iter()
                .map(|(c, s)| (paydedup_fraud::CustomerState::key(c), s.encode())),
        );
    for (key, value) in fraud {
        if fresh || store.get_fraud(&key)?.is_none() {
            batch.put_fraud(key, value);
            report.fraud_keys += 1;
        }
    }
    Ok(report)
}
