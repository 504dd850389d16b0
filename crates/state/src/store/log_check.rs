//! RocksDB's log files (the MANIFEST and the write-ahead logs) checked before the store
//! opens them, for the one kind of damage RocksDB does not survive.
//!
//! Why: RocksDB's log reader (10.4, `db/log_reader.cc`, `ReadPhysicalRecord`) treats a
//! record whose type byte says "recycled log" (types 5–8, 11, 131) in a log that did
//! not start as one as `kBadRecord` *without consuming it*, and `ReadRecord` then asks
//! for the same record again, forever. So one flipped bit in a record's type byte
//! (full record, 1, into 5) turns `DB::open` into a loop at 100 % CPU that never
//! reports anything: found by the fault campaign, which flips bits in state files (a
//! MANIFEST with types 5 and 17 where 1 belonged; the processor hung at start, every
//! restart again). Before a log's first whole record the reader takes such a type for
//! a recycled log instead and ends the log there, silently; that is refused too. Other
//! damage RocksDB reports as an error, or, for a WAL's tail, drops under point-in-time
//! recovery (the start-up agreement then sees an older state; docs/reliability.md).
//!
//! The check walks each log as the reader does: 32 KiB blocks, a 7-byte header (masked
//! CRC-32C of the type and payload, length, type) per record, the rest of a block
//! dropped where a record does not fit it, is preallocated zeros, or fails its
//! checksum. It fails on the first record the reader would reach whose type is a
//! recycled log's. Every `*.log` is walked, also a WAL older than the last flush that a
//! kill left behind (RocksDB skips and deletes it; damage there is refused all the
//! same). paydedup never recycles logs (RocksDB's default,
//! `recycle_log_file_num` 0), so no such record is ever written: reaching one is
//! damage, reported as [`StateError::Corrupt`] naming the file and offset, which the
//! operator restores from a backup or from the warehouse (docs/operations.md).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::StateError;

/// RocksDB's log block (`log::kBlockSize`).
const BLOCK: usize = 32 * 1024;
/// A record header in a log that is not recycled: CRC (4), length (2), type (1).
const HEADER: usize = 7;

/// The record types of a recycled log (`log_format.h`).
fn recycled_type(t: u8) -> bool {
    matches!(t, 5..=8 | 11 | 131)
}

/// RocksDB stores a record's CRC masked (`crc32c::Mask`); this undoes it.
fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_right(17)
}

/// The offset (within `block`) of the first record the reader reaches whose type is a
/// recycled log's, if any.
fn recycled_record_in(block: &[u8]) -> Option<usize> {
    let mut at = 0;
    while block.len() - at >= HEADER {
        let header = &block[at..at + HEADER];
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        // The reader looks at the type before anything else.
        if recycled_type(kind) {
            return Some(at);
        }
        // A record longer than what is left, preallocated zeros, or a checksum
        // mismatch: the reader drops the rest of the block.
        if HEADER + len > block.len() - at || (kind == 0 && len == 0) {
            return None;
        }
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if unmask(stored) != crc32c::crc32c(&block[at + 6..at + HEADER + len]) {
            return None;
        }
        at += HEADER + len;
    }
    None
}

/// Fails if the reader would reach a recycled log's record in the log at `path`. A
/// file that is gone passes: a live processor deletes WALs after a flush and replaces
/// the MANIFEST now and then, and `paydedup-processor state` reads beside it. Other I/O
/// errors are reported as such, not as damage.
pub(crate) fn check_log(path: &Path) -> Result<(), StateError> {
    let io = |e: std::io::Error| StateError::Rocks(format!("reading {}: {e}", path.display()));
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let mut block = vec![0u8; BLOCK];
    let mut offset = 0u64;
    loop {
        let n = read_block(&mut file, &mut block).map_err(io)?;
        if let Some(at) = recycled_record_in(&block[..n]) {
            return Err(StateError::Corrupt {
                path: path.parent().unwrap_or(path).to_owned(),
                detail: format!(
                    "{} has a damaged record at byte {}: type {} is a recycled log's, which \
                     this store never writes (RocksDB's reader loops on it forever, or ends \
                     the log there)",
                    path.display(),
                    offset + at as u64,
                    block[at + 6]
                ),
            });
        }
        if n < BLOCK {
            return Ok(());
        }
        offset += BLOCK as u64;
    }
}

/// Reads up to a whole block (fewer bytes only at the end of the file).
fn read_block(file: &mut File, block: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < block.len() {
        match file.read(&mut block[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Checks the MANIFEST `CURRENT` names and every write-ahead log in `dir` (a directory
/// without `CURRENT` is new: nothing to check).
pub(crate) fn check_logs(dir: &Path) -> Result<(), StateError> {
    let current = match std::fs::read_to_string(dir.join("CURRENT")) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StateError::Rocks(format!(
                "reading {}/CURRENT: {e}",
                dir.display()
            )))
        }
    };
    check_log(&dir.join(current.trim_end()))?;
    let listing = |e: std::io::Error| StateError::Rocks(format!("listing {}: {e}", dir.display()));
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        // An entry the listing cannot read is an I/O error, not a file to skip: a log
        // left unchecked is one RocksDB may loop on.
        let path = entry.map_err(listing)?.path();
        if path.extension().is_some_and(|x| x == "log") {
            check_log(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record as RocksDB's writer frames it.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut typed = vec![kind];
        typed.extend_from_slice(payload);
        let crc = crc32c::crc32c(&typed)
            .rotate_left(17)
            .wrapping_add(0xa282_ead8);
        let mut r = crc.to_le_bytes().to_vec();
        r.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        r.extend_from_slice(&typed);
        r
    }

    #[test]
    fn a_log_that_is_gone_passes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_log(&dir.path().join("000042.log")).is_ok());
    }

    #[test]
    fn masking_round_trips_and_a_clean_log_passes() {
        let log = [record(1, b"first"), record(1, b"second")].concat();
        assert_eq!(recycled_record_in(&log), None);
    }

    #[test]
    fn a_type_byte_flipped_into_a_recycled_type_is_found_where_the_reader_reaches_it() {
        let mut log = [record(1, b"first"), record(1, b"second")].concat();
        let second = HEADER + 5;
        log[second + 6] ^= 0x04; // 1 -> 5
        assert_eq!(recycled_record_in(&log), Some(second));
    }

    #[test]
    fn a_record_the_reader_drops_is_not_looked_into() {
        // The first record fails its checksum: the reader drops the rest of the
        // block, so a recycled type behind it is never reached.
        let mut first = record(1, b"first");
        first[HEADER] ^= 0x01;
        let mut second = record(1, b"second");
        second[6] = 5;
        assert_eq!(recycled_record_in(&[first, second].concat()), None);
    }

    #[test]
    fn a_damaged_log_is_refused_naming_the_file_and_the_offset() {
        // Like the MANIFEST the fault campaign left: valid records, then one whose
        // type byte was flipped into a recycled log's.
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = Vec::new();
        for payload in [&b"comparator"[..], b"", b"column family", b"log"] {
            manifest.extend_from_slice(&record(1, payload));
        }
        let damaged_at = manifest.len();
        let mut damaged = record(1, b"edit");
        damaged[6] = 5;
        manifest.extend_from_slice(&damaged);
        std::fs::write(dir.path().join("MANIFEST-000014"), &manifest).unwrap();
        std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000014\n").unwrap();
        let err = check_logs(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        assert!(
            err.contains(&format!("damaged record at byte {damaged_at}")),
            "{err}"
        );
    }
}
