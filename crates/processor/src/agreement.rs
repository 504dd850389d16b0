//! Start-up agreement: before the relay sends anything, the state and the sink must
//! agree on where each (table, partition) stands.
//!
//! Every sink acknowledges a row below its position as "already present" without
//! storing it (that is what makes a resend after a crash harmless). The flip side: a
//! state that is *behind* its sink — lost and started empty, or restored from an older
//! copy — regenerates rows at sequences the sink already holds, and those rows would
//! be dropped as "present" whether or not they are the same rows. After Kafka
//! retention has moved a partition's log start, an empty state restarts there with
//! sequence 0 and its first new rows would vanish. So, per (table, partition) of the
//! partitions this instance owns, with
//! - `sink`: the next sequence the sink expects,
//! - `delivered`: the first sequence still in the outbox (or the state's next
//!   sequence when the outbox is empty): everything below left the outbox acknowledged,
//! - `state`: the next sequence the state will give a row,
//!
//! the verdict ([`judge`], a plain function) is:
//! - `delivered ≤ sink ≤ state`: in step (rows in `delivered..sink` are a resend of
//!   this state's own outbox rows, byte for byte the ones the sink holds);
//! - `sink < delivered`: the sink lost rows the state saw acknowledged (a truncated
//!   table, another dataset): stop;
//! - `sink > state` and the state holds nothing for the partition: stop, with the way
//!   to recover — new rows would otherwise be dropped;
//! - `sink > state` with a state that has a position: a replay from an older state.
//!   Allowed only if it regenerates the *same* rows: the relay compares the
//!   [`RowIdentity`](paydedup_sink::RowIdentity) of each resent row below `sink` with
//!   the sink's row at that sequence and stops at the first difference.

use std::collections::BTreeMap;

use paydedup_sink::{Sink, SinkError};
use paydedup_state::{StateError, StateStore, Table};
use thiserror::Error;

/// Where one (table, partition) stands on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// The next sequence the sink expects.
    pub sink: u64,
    /// The first sequence still in the outbox, or `state` when it is empty.
    pub delivered: u64,
    /// The next sequence the state will give a row.
    pub state: u64,
    /// Whether the state has consumed anything of the partition.
    pub state_has_position: bool,
}

/// What start-up may do with one (table, partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InStep,
    /// A replay from an older state: rows below `through` are already in the sink and
    /// must be verified as the same rows when they are resent.
    VerifyResentBelow {
        through: u64,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Disagreement {
    #[error(
        "{table} partition {partition}: the sink holds {sink} rows, but this state holds nothing for the \
         partition; new rows would be dropped as already present. Start with the state directory that \
         wrote those rows (or a copy of it), rebuild it from the sink (`paydedup-processor restore` with \
         the flags of `run`; `run` does it itself without --no-auto-restore), or deliver to an empty \
         dataset or directory"
    )]
    EmptyStateFacesRows {
        table: Table,
        partition: i32,
        sink: u64,
    },
    #[error(
        "{table} partition {partition}: the state saw rows up to sequence {delivered} acknowledged, but \
         the sink expects sequence {sink} next: rows were removed from the sink, or this is not the sink \
         this state delivered to. Point the processor at the right sink; nothing was sent"
    )]
    SinkLostRows {
        table: Table,
        partition: i32,
        sink: u64,
        delivered: u64,
    },
}

/// The decision for one (table, partition).
pub fn judge(table: Table, partition: i32, at: Positions) -> Result<Verdict, Disagreement> {
    if at.sink < at.delivered {
        return Err(Disagreement::SinkLostRows {
            table,
            partition,
            sink: at.sink,
            delivered: at.delivered,
        });
    }
    if at.sink <= at.state {
        return Ok(Verdict::InStep);
    }
    if !at.state_has_position {
        return Err(Disagreement::EmptyStateFacesRows {
            table,
            partition,
            sink: at.sink,
        });
    }
    Ok(Verdict::VerifyResentBelow { through: at.sink })
}

#[derive(Debug, Error)]
pub enum AgreementError {
    #[error(transparent)]
    Disagreement(#[from] Disagreement),
    #[error("asking the sink where {table} partition {partition} stands: {source}")]
    Sink {
        table: Table,
        partition: i32,
        source: SinkError,
    },
    #[error("reading the state's positions: {0}")]
    State(#[from] StateError),
}

/// Checks every table of every `owned` partition; returns the (table, partition)s whose
/// resent rows must be verified, and below which sequence.
pub fn check(
    store: &StateStore,
    sink: &mut dyn Sink,
    owned: &[i32],
) -> Result<BTreeMap<(Table, i32), u64>, AgreementError> {
    let next_seqs = store.next_seqs()?;
    let offsets = store.next_offsets()?;
    let mut verify = BTreeMap::new();
    for &partition in owned {
        for table in Table::ALL {
            let sink_next =
                sink.next_seq(table, partition)
                    .map_err(|source| AgreementError::Sink {
                        table,
                        partition,
                        source,
                    })?;
            let Some(sink_next) = sink_next else { continue };
            let state = next_seqs.get(&(table, partition)).copied().unwrap_or(0);
            let delivered = store
                .outbox_rows(table, partition, 1)?
                .first()
                .map_or(state, |(seq, _)| *seq);
            let at = Positions {
                sink: sink_next,
                delivered,
                state,
                state_has_position: offsets.contains_key(&partition),
            };
            if let Verdict::VerifyResentBelow { through } = judge(table, partition, at)? {
                tracing::warn!(
                    table = %table, partition, state_seq = state, sink_seq = through,
                    "The state is behind the sink: a replay; resent rows are checked against the sink's."
                );
                verify.insert((table, partition), through);
            }
        }
    }
    Ok(verify)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sink: u64, delivered: u64, state: u64, has: bool) -> Positions {
        Positions {
            sink,
            delivered,
            state,
            state_has_position: has,
        }
    }

    #[test]
    fn a_sink_between_the_outbox_and_the_state_is_in_step() {
        for sink in 3..=7 {
            assert_eq!(
                judge(Table::Payments, 0, at(sink, 3, 7, true)),
                Ok(Verdict::InStep)
            );
        }
        // A brand-new state facing a brand-new sink.
        assert_eq!(
            judge(Table::Payments, 0, at(0, 0, 0, false)),
            Ok(Verdict::InStep)
        );
    }

    /// Issue 9, hole 1: an empty state facing a sink that holds rows must not start.
    #[test]
    fn an_empty_state_facing_rows_stops() {
        assert!(matches!(
            judge(Table::Payments, 2, at(500, 0, 0, false)),
            Err(Disagreement::EmptyStateFacesRows {
                sink: 500,
                partition: 2,
                ..
            })
        ));
    }

    #[test]
    fn an_older_state_replays_under_verification() {
        assert_eq!(
            judge(Table::DedupAudit, 0, at(900, 400, 400, true)),
            Ok(Verdict::VerifyResentBelow { through: 900 })
        );
    }

    #[test]
    fn a_sink_that_lost_acknowledged_rows_stops() {
        assert!(matches!(
            judge(Table::Payments, 0, at(10, 50, 60, true)),
            Err(Disagreement::SinkLostRows {
                sink: 10,
                delivered: 50,
                ..
            })
        ));
    }

    #[test]
    fn the_error_says_what_to_do() {
        let e = judge(Table::Payments, 1, at(5, 0, 0, false)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("payments partition 1"), "{text}");
        assert!(
            text.contains("state directory that wrote those rows"),
            "{text}"
        );
    }
}
