//! `paydedup-sink`: where delivered rows go.
//!
//! - [`Sink`]: the contract the relay relies on — ordered, idempotent on the sequence.
//! - [`file`]: [`FileSink`], JSON lines, one file per table.
//! - [`bigquery`]: [`BigQuerySink`], the Storage Write API with COMMITTED streams.
//! - [`memory`]: [`MemorySink`], an in-memory test double for fast unit tests (the file
//!   and BigQuery sinks are tested for real beside it, with the same conformance suite).
//! - [`identity`]: [`RowIdentity`], the columns that say which row a row is.
//! - [`stored`]: [`StoredRow`], a row read back from a sink.
//! - [`conformance`]: the suite every sink must pass.

pub mod bigquery;
pub mod conformance;
pub mod file;
pub mod identity;
pub mod memory;
pub mod stored;

pub use bigquery::{BigQueryConfig, BigQuerySink};
pub use file::FileSink;
pub use identity::RowIdentity;
pub use memory::MemorySink;
pub use paydedup_state::Table;
pub use stored::StoredRow;

use thiserror::Error;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Rows newly stored.
    pub written: usize,
    /// Rows the sink already held (a resend after a crash); acknowledged, not stored.
    pub already_present: usize,
}

#[derive(Debug, Error)]
pub enum SinkError {
    /// Worth retrying with backoff: network, unavailability, throttling.
    #[error("transient sink error: {0}")]
    Transient(String),
    /// The sink expected an earlier sequence: rows would be skipped. Never retried
    /// blindly; it means the outbox and the sink disagree.
    #[error("sequence gap in {table} partition {partition}: sink expects {expected}, got {got}")]
    Gap {
        table: Table,
        partition: i32,
        expected: u64,
        got: u64,
    },
    /// The sink refuses a row as invalid (schema mismatch, …) and so the append.
    /// `index` is the first refused row, counted in the `rows` passed to `append`; the
    /// rows before it are valid and must be re-sent, only that one is dead-lettered.
    #[error("row {index} of the append rejected by the sink: {reason}")]
    Rejected { index: usize, reason: String },
    /// Another processor delivers this partition: this one must not (fencing).
    #[error("partition {partition} is delivered by another processor ({holder}); two owners of one partition never both deliver")]
    Fenced { partition: i32, holder: String },
    /// Anything else that will not get better by retrying.
    #[error("sink error: {0}")]
    Fatal(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }

    /// Every value [`SinkError::code`] returns (metrics export each at 0 from the
    /// start); a new variant's code goes in both places.
    pub const CODES: &'static [&'static str] = &["transient", "gap", "rejected", "fenced", "fatal"];

    /// A stable, bounded code for metric labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SinkError::Transient(_) => "transient",
            SinkError::Gap { .. } => "gap",
            SinkError::Rejected { .. } => "rejected",
            SinkError::Fenced { .. } => "fenced",
            SinkError::Fatal(_) => "fatal",
        }
    }
}

/// A destination for outbox rows.
///
/// The relay calls [`Sink::append`] with consecutive rows of one (table, partition),
/// starting at `first_seq`. Rows of one (table, partition) arrive in sequence order, but
/// after a crash the relay may resend rows the sink already stored. So a sink must be
/// **idempotent on the sequence**: rows below its next expected sequence are
/// acknowledged as `already_present` and not stored again; a `first_seq` *above* the
/// next expected one is a [`SinkError::Gap`]. When `append` returns `Ok`, the rows are
/// durable in the sink.
pub trait Sink: Send {
    fn append(
        &mut self,
        table: Table,
        partition: i32,
        first_seq: u64,
        rows: &[Vec<u8>],
    ) -> Result<AppendOutcome, SinkError>;

    /// The next sequence the sink expects for (table, partition), if it knows.
    fn next_seq(&mut self, table: Table, partition: i32) -> Result<Option<u64>, SinkError>;

    /// The [`RowIdentity`] of each row the sink holds for (table, partition) with a
    /// sequence in `from..to`, in sequence order. The relay compares them with the rows
    /// it resends after a restart behind the sink: "already present" must mean the same
    /// rows, not just the same sequences.
    fn stored_identities(
        &mut self,
        table: Table,
        partition: i32,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, RowIdentity)>, SinkError>;

    /// Calls `each` with every row of `table` whose `source_partition` is one of
    /// `partitions`, in no particular order, as column → value with at least `columns`.
    /// Values are what the sink stores: typed JSON (file sink) or strings (BigQuery,
    /// TIMESTAMP as int64 µs); read them with [`StoredRow`]'s helpers. `restore` rebuilds
    /// a state directory from these rows.
    fn scan_rows(
        &mut self,
        table: Table,
        partitions: &[i32],
        columns: &[&str],
        each: &mut dyn FnMut(&StoredRow) -> Result<(), SinkError>,
    ) -> Result<(), SinkError>;

    /// Rows up to `through_seq` were dead-lettered and will never be appended: expect
    /// the sequence after them next. Sinks that never reject rows ignore it.
    fn skip(&mut self, table: Table, partition: i32, through_seq: u64) -> Result<(), SinkError> {
        let _ = (table, partition, through_seq);
        Ok(())
    }
}

/// Splits an append against the sink's next expected sequence: how many leading rows to
/// skip as already present, or the gap error. Shared by every sink.
pub fn plan_append(
    table: Table,
    partition: i32,
    expected: u64,
    first_seq: u64,
    rows: usize,
) -> Result<usize, SinkError> {
    if first_seq > expected {
        return Err(SinkError::Gap {
            table,
            partition,
            expected,
            got: first_seq,
        });
    }
    let skip = (expected - first_seq).min(rows as u64) as usize;
    Ok(skip)
}
