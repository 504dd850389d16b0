use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state directory {path} is locked by another process (is a processor already running on it?)")]
    Locked { path: PathBuf },
    #[error("state directory {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("no space left on the state volume: {0}")]
    NoSpace(String),
    #[error("RocksDB error: {0}")]
    Rocks(String),
    /// The dedup retention is part of what the stored keys mean: a shorter one would
    /// forget ids still alive, a longer one would revive ids compaction already removed.
    #[error("state directory {path} was written with --retention-secs {stored_secs}, not {requested_secs}: refusing to change it on existing state (keep {stored_secs}, or start a new state directory with new output tables)")]
    RetentionChanged {
        path: PathBuf,
        stored_secs: i64,
        requested_secs: i64,
    },
    #[error("state value for {what} has an unexpected layout ({len} bytes)")]
    BadValue { what: &'static str, len: usize },
    /// RocksDB is built to checksum with instructions this CPU lacks (see
    /// `.cargo/config.toml`); it would die of an illegal instruction at the first write.
    #[error("this CPU lacks {missing}, which this build of RocksDB uses for its checksums (x86-64 with SSE4.2 and PCLMULQDQ, any server CPU since 2011; or build without .cargo/config.toml's CXXFLAGS)")]
    CpuUnsupported { missing: &'static str },
}

impl StateError {
    /// Maps a RocksDB error to the variant an operator can act on.
    pub(crate) fn from_rocks(e: rocksdb::Error, path: &std::path::Path) -> StateError {
        let msg = e.into_string();
        let lower = msg.to_ascii_lowercase();
        if lower.contains("lock")
            && (lower.contains("resource temporarily unavailable") || lower.contains("lock hold"))
        {
            StateError::Locked {
                path: path.to_owned(),
            }
        } else if lower.contains("corruption") {
            StateError::Corrupt {
                path: path.to_owned(),
                detail: msg,
            }
        } else if lower.contains("no space") {
            StateError::NoSpace(msg)
        } else {
            StateError::Rocks(msg)
        }
    }
}
