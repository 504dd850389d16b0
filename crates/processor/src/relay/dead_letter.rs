//! The dead-letter store: rows the sink refused as invalid, one JSON line each, with
//! the reason. Written and synced *before* the sink is told to move past them, so a
//! rejected row is never only in memory.

use std::io::Write;
use std::path::Path;

use paydedup_state::Table;

use super::RelayError;

/// Appends `rows` (starting at `first_seq`) to `DIR/<table>.jsonl` and syncs it.
pub fn append(
    dir: &Path,
    table: Table,
    partition: i32,
    first_seq: u64,
    rows: &[Vec<u8>],
    reason: &str,
) -> Result<(), RelayError> {
    let path = dir.join(format!("{}.jsonl", table.name()));
    let io = |source| RelayError::DeadLetter {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    for (i, row) in rows.iter().enumerate() {
        let line = serde_json::json!({
            "table": table.name(),
            "source_partition": partition,
            "outbox_seq": first_seq + i as u64,
            "reason": reason,
            "row": String::from_utf8_lossy(row),
        });
        writeln!(f, "{line}").map_err(io)?;
    }
    f.sync_data().map_err(io)
}
