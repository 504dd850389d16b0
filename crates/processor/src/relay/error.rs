//! Why the relay stops. Every variant ends delivery for good: the processor exits
//! non-zero and a restart resumes from the outbox, which still holds every row.

use std::path::PathBuf;
use std::time::Duration;

use paydedup_sink::SinkError;
use paydedup_state::{StateError, Table};
use thiserror::Error;

use crate::pipeline::compact_row::CompactRowError;

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("reading or trimming the outbox: {0}")]
    State(#[from] StateError),
    #[error(
        "outbox for {table} partition {partition} has a hole between {first_seq} and {last_seq}"
    )]
    OutboxHole {
        table: Table,
        partition: i32,
        first_seq: u64,
        last_seq: u64,
    },
    #[error("sink unavailable for {waited:?} delivering {table} partition {partition} from seq {first_seq}: {source}")]
    SinkUnavailable {
        table: Table,
        partition: i32,
        first_seq: u64,
        waited: Duration,
        source: SinkError,
    },
    #[error("delivering {table} partition {partition} from seq {first_seq}: {source}")]
    Sink {
        table: Table,
        partition: i32,
        first_seq: u64,
        source: SinkError,
    },
    #[error("moving the sink past dead-lettered rows of {table} partition {partition}: {source}")]
    SkipRejected {
        table: Table,
        partition: i32,
        source: SinkError,
    },
    #[error("writing the dead-letter file {path}: {source}")]
    DeadLetter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{undelivered} rows still undelivered after {timeout:?}")]
    FlushTimeout { undelivered: u64, timeout: Duration },
    /// A flush of a relay whose thread had already ended, its error taken earlier (a
    /// fenced hand-off): nothing more can be delivered, so the flush does not wait.
    #[error("the relay had already stopped; {undelivered} undelivered rows stay in the outbox")]
    Stopped { undelivered: u64 },
    #[error(
        "{table} partition {partition} sequence {seq}: the replay made a different row than the sink \
         holds ({ours} here, {theirs} in the sink). The state is not the one that wrote these rows \
         (another topic, or a re-created one); nothing more was sent"
    )]
    ReplayDiffers {
        table: Table,
        partition: i32,
        seq: u64,
        ours: String,
        theirs: String,
    },
    #[error("reading back {table} partition {partition} rows from seq {first_seq} to verify a replay: {source}")]
    VerifyRead {
        table: Table,
        partition: i32,
        first_seq: u64,
        source: SinkError,
    },
    #[error(
        "{table} partition {partition} sequence {seq}: the stored row cannot be rendered: {source}"
    )]
    BadRow {
        table: Table,
        partition: i32,
        seq: u64,
        source: CompactRowError,
    },
    #[error("starting the relay thread: {0}")]
    Spawn(std::io::Error),
    #[error("the relay's shared state is poisoned (a thread panicked)")]
    Poisoned,
}

impl RelayError {
    /// The sink refused this processor: another owns the partition now (see `fence`).
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            RelayError::Sink {
                source: SinkError::Fenced { .. },
                ..
            }
        )
    }

    /// Every value [`RelayError::code`] returns (metrics export each at 0 from the
    /// start); a new variant's code goes in both places.
    pub const CODES: &'static [&'static str] = &[
        "state",
        "outbox_hole",
        "sink_unavailable",
        "sink_gap",
        "fenced",
        "sink_fatal",
        "sink_skip",
        "dead_letter_io",
        "flush_timeout",
        "stopped",
        "replay_differs",
        "verify_read",
        "bad_row",
        "spawn",
        "poisoned",
    ];

    /// A stable, bounded code for metric labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::State(_) => "state",
            RelayError::OutboxHole { .. } => "outbox_hole",
            RelayError::SinkUnavailable { .. } => "sink_unavailable",
            RelayError::Sink { source, .. } => match source {
                SinkError::Gap { .. } => "sink_gap",
                SinkError::Fenced { .. } => "fenced",
                _ => "sink_fatal",
            },
            RelayError::SkipRejected { .. } => "sink_skip",
            RelayError::DeadLetter { .. } => "dead_letter_io",
            RelayError::FlushTimeout { .. } => "flush_timeout",
            RelayError::Stopped { .. } => "stopped",
            RelayError::ReplayDiffers { .. } => "replay_differs",
            RelayError::VerifyRead { .. } => "verify_read",
            RelayError::BadRow { .. } => "bad_row",
            RelayError::Spawn(_) => "spawn",
            RelayError::Poisoned => "poisoned",
        }
    }
}
