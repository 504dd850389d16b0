//! The delivery loop, on the relay's own thread.
//!
//! For each (table, partition) in turn: read the oldest outbox rows, append them to the
//! sink at their sequence, and only after the sink acknowledges, delete them. The order
//! "append, then delete" is what makes a crash safe: at worst rows are appended twice,
//! and the sink acknowledges the second copy as already present.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paydedup_sink::{Sink, SinkError};
use paydedup_state::outbox_page::let_go_past;
use paydedup_state::{fail_point, StateStore, Table};
use rand::Rng;

use super::{dead_letter, deliverable_rows_with, resend_check, RelayConfig, RelayError, Shared};
use crate::metrics::events::{RowsDeadLettered, RowsDelivered, SinkWriteFailed};
use crate::metrics::Metrics;

pub(super) struct Worker {
    pub(super) store: Arc<StateStore>,
    pub(super) sink: Box<dyn Sink>,
    pub(super) cfg: RelayConfig,
    pub(super) metrics: Metrics,
    pub(super) shared: Arc<Shared>,
    /// A decompressed outbox page's memory, kept from one read to the next
    /// (`deliverable_rows_with`), let go of past [`SCRATCH_KEPT_BYTES`].
    pub(super) scratch: Vec<u8>,
}

/// The most page memory the relay keeps between reads: a batch's page of one stream is
/// a few hundred KB to a few MB; a restore's single commit may hold a far larger one,
/// read once.
const SCRATCH_KEPT_BYTES: usize = 16 << 20;

/// Where a run of rows starts.
#[derive(Clone, Copy)]
struct Span {
    table: Table,
    partition: i32,
    first_seq: u64,
}

/// How one append ended, once retries are over.
enum Appended {
    Delivered,
    /// The sink refused the row at `index` (and so the whole append).
    Refused {
        index: usize,
        reason: String,
    },
    Stopping,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    pub(super) fn run(&mut self) -> Result<(), RelayError> {
        while !self.stopping() {
            let mut delivered_any = false;
            let streams = self.store.next_seqs()?;
            for (table, partition) in streams.keys().copied() {
                loop {
                    if self.stopping() {
                        return Ok(());
                    }
                    let rows = deliverable_rows_with(
                        &self.store,
                        table,
                        partition,
                        self.cfg.batch_rows,
                        &mut self.scratch,
                    )?;
                    let_go_past(&mut self.scratch, SCRATCH_KEPT_BYTES);
                    if rows.is_empty() {
                        break;
                    }
                    self.deliver(table, partition, rows)?;
                    delivered_any = true;
                }
            }
            if !delivered_any {
                self.wait_for_commits()?;
            }
        }
        Ok(())
    }

    /// Sleeps until a commit adds rows, or 50 ms pass.
    fn wait_for_commits(&self) -> Result<(), RelayError> {
        let (lock, cv) = &self.shared.wake;
        let guard = lock.lock().map_err(|_| RelayError::Poisoned)?;
        let (mut woken, _) = cv
            .wait_timeout_while(guard, Duration::from_millis(50), |w| !*w)
            .map_err(|_| RelayError::Poisoned)?;
        *woken = false;
        Ok(())
    }

    fn deliver(
        &mut self,
        table: Table,
        partition: i32,
        rows: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), RelayError> {
        let first_seq = rows[0].0;
        let last_seq = rows[rows.len() - 1].0;
        if last_seq - first_seq + 1 != rows.len() as u64 {
            return Err(RelayError::OutboxHole {
                table,
                partition,
                first_seq,
                last_seq,
            });
        }
        let payload: Vec<Vec<u8>> = rows.into_iter().map(|(_, r)| r).collect();
        let at = Span {
            table,
            partition,
            first_seq,
        };
        if !self.verify_resent(at, &payload)? {
            return Ok(()); // stopping
        }
        let Some(through) = self.deliver_up_to_a_refused_row(at, &payload)? else {
            return Ok(()); // stopping
        };
        fail_point::hit(fail_point::RELAY_AFTER_ACK);
        self.store
            .outbox_delete_through(table, partition, through)?;
        fail_point::hit(fail_point::RELAY_AFTER_DELETE);
        self.shared.ages.delivered(table, partition, through);
        let n = through - first_seq + 1;
        // Saturating: see `RelayCommitter::commit` (the gauge reads this at a scrape).
        let _ = self
            .shared
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d.saturating_sub(n))
            });
        Ok(())
    }

    /// Delivers `payload` (rows from `at.first_seq` on), or, when the sink refuses a
    /// row, the valid rows before it and then that row alone to the dead-letter store.
    /// Returns the last sequence dealt with (rows after a refused one stay in the
    /// outbox and are sent again), or `None` when the relay is stopping.
    ///
    /// A sink refuses a whole append for one bad row and names it: the append is then
    /// retried with only the rows before it, until a prefix is accepted (or the first
    /// row itself is the refused one). Only rows the sink named are ever dead-lettered.
    fn deliver_up_to_a_refused_row(
        &mut self,
        at: Span,
        payload: &[Vec<u8>],
    ) -> Result<Option<u64>, RelayError> {
        let mut end = payload.len();
        let mut refused: Option<(usize, String)> = None;
        loop {
            match self.append_with_retries(at, &payload[..end])? {
                Appended::Stopping => return Ok(None),
                Appended::Delivered => break,
                Appended::Refused { index, reason } => {
                    // A sink naming a row outside the append is treated as naming the last.
                    let index = index.min(end - 1);
                    refused = Some((index, reason));
                    if index == 0 {
                        break;
                    }
                    end = index;
                }
            }
        }
        let Some((index, reason)) = refused else {
            return Ok(Some(at.first_seq + payload.len() as u64 - 1));
        };
        let seq = at.first_seq + index as u64;
        let bad = Span {
            first_seq: seq,
            ..at
        };
        self.dead_letter(bad, &payload[index..=index], &reason)?;
        Ok(Some(seq))
    }

    /// Appends until the sink acknowledges, refuses a row, or fails for good.
    /// Transient errors retry with exponential backoff and full jitter.
    fn append_with_retries(
        &mut self,
        at: Span,
        payload: &[Vec<u8>],
    ) -> Result<Appended, RelayError> {
        let Span {
            table,
            partition,
            first_seq,
        } = at;
        let started = Instant::now();
        let mut backoff = self.cfg.initial_backoff;
        loop {
            let error = match self.sink.append(table, partition, first_seq, payload) {
                Ok(out) => {
                    self.metrics.emit(RowsDelivered {
                        table,
                        written: out.written,
                        already_present: out.already_present,
                    });
                    return Ok(Appended::Delivered);
                }
                Err(e) => e,
            };
            let retryable = error.is_retryable() && started.elapsed() < self.cfg.give_up_after;
            // Full jitter: sleep uniformly in [0, backoff], then double up to the cap.
            let sleep = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
            self.metrics.emit(SinkWriteFailed {
                table,
                partition,
                first_seq,
                error: &error,
                retry_in: retryable.then_some(sleep),
            });
            match error {
                SinkError::Rejected { index, reason } => {
                    return Ok(Appended::Refused { index, reason });
                }
                e if e.is_retryable() && !retryable => {
                    return Err(RelayError::SinkUnavailable {
                        table,
                        partition,
                        first_seq,
                        waited: started.elapsed(),
                        source: e,
                    })
                }
                e if !e.is_retryable() => {
                    return Err(RelayError::Sink {
                        table,
                        partition,
                        first_seq,
                        source: e,
                    })
                }
                _ => {}
            }
            std::thread::sleep(sleep);
            backoff = (backoff * 2).min(self.cfg.max_backoff);
            if self.stopping() {
                return Ok(Appended::Stopping);
            }
        }
    }

    /// Below the sequence `agreement` found the sink at, a replay from an older state
    /// resends rows the sink holds: compare them before they count as present. Returns
    /// `false` when the relay is stopping. Reading back retries like an append.
    fn verify_resent(&mut self, at: Span, payload: &[Vec<u8>]) -> Result<bool, RelayError> {
        let key = (at.table, at.partition);
        let Some(&through) = self.cfg.verify_resent_below.get(&key) else {
            return Ok(true);
        };
        let end = (at.first_seq + payload.len() as u64).min(through);
        if at.first_seq < end {
            let started = Instant::now();
            let mut backoff = self.cfg.initial_backoff;
            let theirs = loop {
                match self
                    .sink
                    .stored_identities(at.table, at.partition, at.first_seq, end)
                {
                    Ok(t) => break t,
                    Err(e) if e.is_retryable() && started.elapsed() < self.cfg.give_up_after => {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(self.cfg.max_backoff);
                        if self.stopping() {
                            return Ok(false);
                        }
                    }
                    Err(source) => {
                        return Err(RelayError::VerifyRead {
                            table: at.table,
                            partition: at.partition,
                            first_seq: at.first_seq,
                            source,
                        })
                    }
                }
            };
            let ours = &payload[..(end - at.first_seq) as usize];
            resend_check::compare(at.table, at.partition, at.first_seq, ours, &theirs)?;
        }
        if end >= through {
            self.cfg.verify_resent_below.remove(&key);
        }
        Ok(true)
    }

    /// Stores rejected rows in the dead-letter file, then tells the sink to expect the
    /// sequence after them.
    fn dead_letter(
        &mut self,
        at: Span,
        payload: &[Vec<u8>],
        reason: &str,
    ) -> Result<(), RelayError> {
        let Span {
            table,
            partition,
            first_seq,
        } = at;
        let last_seq = first_seq + payload.len() as u64 - 1;
        dead_letter::append(
            &self.cfg.dead_letter_dir,
            table,
            partition,
            first_seq,
            payload,
            reason,
        )?;
        self.metrics.emit(RowsDeadLettered {
            table,
            partition,
            first_seq,
            rows: payload.len(),
            reason,
        });
        self.sink
            .skip(table, partition, last_seq)
            .map_err(|source| RelayError::SkipRejected {
                table,
                partition,
                source,
            })
    }
}
