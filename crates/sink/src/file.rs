//! [`FileSink`]: JSON lines, one file per table (`<dir>/<table>.jsonl`).
//!
//! Each row is a JSON object that carries its own `source_partition` and `outbox_seq`.
//! On open, the sink scans its files to learn the next sequence of every
//! (table, partition), so a restarted processor that resends rows never writes a
//! sequence twice and never skips one. A crash can leave a torn last line; opening
//! truncates it (its rows were never acknowledged, so the relay sends them again).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use paydedup_state::outbox_page::let_go_past;

use crate::{identity, plan_append, AppendOutcome, RowIdentity, Sink, SinkError, StoredRow, Table};

pub struct FileSink {
    dir: PathBuf,
    files: HashMap<Table, File>,
    next: HashMap<(Table, i32), u64>,
    /// fsync after each append (on by default: an acknowledged row survives power loss).
    fsync: bool,
    /// Identities read ahead for a resend that is being verified: one scan of the file
    /// serves the whole overlap, which the relay asks for in ascending pieces.
    identities: HashMap<(Table, i32), BTreeMap<u64, RowIdentity>>,
    /// Held exclusive locks, one per owned partition (see [`FileSink::open_owned`]).
    _locks: Vec<File>,
    /// An append's lines, kept from one append to the next (let go of past
    /// [`LINES_KEPT_BYTES`]): new memory at every append was zeroed by the kernel page
    /// by page, a few per cent of the relay thread's samples on the peers' input.
    lines: Vec<u8>,
}

/// The most line memory a file sink keeps between appends (a relay's append of 5,000
/// payment rows is a few MB).
const LINES_KEPT_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct Position {
    source_partition: i32,
    outbox_seq: u64,
}

fn io(context: &str, path: &Path, e: std::io::Error) -> SinkError {
    if e.raw_os_error() == Some(28) {
        return SinkError::Transient(format!("{context} {}: disk full ({e})", path.display()));
    }
    SinkError::Fatal(format!("{context} {}: {e}", path.display()))
}

impl FileSink {
    pub fn open(dir: &Path) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut sink = FileSink {
            dir: dir.to_owned(),
            files: HashMap::new(),
            next: HashMap::new(),
            fsync: true,
            identities: HashMap::new(),
            _locks: Vec::new(),
            lines: Vec::new(),
        };
        for table in Table::ALL {
            sink.recover(table)?;
        }
        Ok(sink)
    }

    /// Opens the sink as the one deliverer of `partitions`: an exclusive lock per
    /// partition (`DIR/.owner-p<P>.lock`, held until the process exits, released by the
    /// kernel if it dies). A second processor configured to own one of them is fenced
    /// at start ([`SinkError::Fenced`]), so two owners of a partition never both
    /// deliver. (Advisory `flock` locks: the directory must be on a local or
    /// lock-honouring filesystem.)
    pub fn open_owned(dir: &Path, partitions: &[i32]) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut locks = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let path = dir.join(format!(".owner-p{p}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("opening", &path, e))?;
            match file.try_lock() {
                Ok(()) => locks.push(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(SinkError::Fenced {
                        partition: p,
                        holder: format!("it holds {}", path.display()),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &path, e)),
            }
        }
        let mut sink = FileSink::open(dir)?;
        sink._locks = locks;
        Ok(sink)
    }

    /// Turns per-append fsync off (tests and benchmarks that do not simulate power loss).
    pub fn without_fsync(mut self) -> FileSink {
        self.fsync = false;
        self
    }

    pub fn path(&self, table: Table) -> PathBuf {
        self.dir.join(format!("{}.jsonl", table.name()))
    }

    /// Scans a table's file: truncates a torn tail, learns the next sequences.
    fn recover(&mut self, table: Table) -> Result<(), SinkError> {
        let path = self.path(table);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        let mut reader = BufReader::new(&mut file);
        let mut good_len: u64 = 0;
        let mut line = Vec::new();
        let mut line_no = 0;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| io("reading", &path, e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // end of file, or a torn last line
            }
            line_no += 1;
            let pos: Position = serde_json::from_slice(&line).map_err(|e| {
                SinkError::Fatal(format!(
                    "{} line {line_no} has no source_partition/outbox_seq: {e}",
                    path.display()
                ))
            })?;
            let next = self.next.entry((table, pos.source_partition)).or_insert(0);
            if pos.outbox_seq != *next {
                return Err(SinkError::Fatal(format!(
                    "{} line {line_no}: partition {} sequence {} follows {} (file was edited?)",
                    path.display(),
                    pos.source_partition,
                    pos.outbox_seq,
                    *next
                )));
            }
            *next += 1;
            good_len += n as u64;
        }
        drop(reader);
        let len = file.metadata().map_err(|e| io("reading", &path, e))?.len();
        if len != good_len {
            file.set_len(good_len)
                .map_err(|e| io("truncating", &path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| io("seeking", &path, e))?;
        }
        self.files.insert(table, file);
        Ok(())
    }
}

impl Sink for FileSink {
    fn append(
        &mut self,
        table: Table,
        partition: i32,
        first_seq: u64,
        rows: &[Vec<u8>],
    ) -> Result<AppendOutcome, SinkError> {
        let expected = self.next.get(&(table, partition)).copied().unwrap_or(0);
        let skip = plan_append(table, partition, expected, first_seq, rows.len())?;
        let fresh = &rows[skip..];
        if !fresh.is_empty() {
            let path = self.path(table);
            let file = self
                .files
                .get_mut(&table)
                .ok_or_else(|| SinkError::Fatal(format!("{} is not open", path.display())))?;
            // One write of whole lines: a crash leaves at most a torn tail, which
            // `recover` removes. A failed write (disk full) is undone here, so the
            // retry does not append after half a batch.
            let before = file.metadata().map_err(|e| io("reading", &path, e))?.len();
            let buf = &mut self.lines;
            buf.clear();
            buf.reserve_exact(fresh.iter().map(|r| r.len() + 1).sum());
            for r in fresh {
                buf.extend_from_slice(r);
                buf.push(b'\n');
            }
            let written =
                file.write_all(buf).and_then(
                    |()| {
                        if self.fsync {
                            file.sync_data()
                        } else {
                            Ok(())
                        }
                    },
                );
            let_go_past(&mut self.lines, LINES_KEPT_BYTES);
            if let Err(e) = written {
                let _ = file.set_len(before);
                let _ = file.seek(SeekFrom::End(0));
                return Err(io("writing", &path, e));
            }
            self.next
                .insert((table, partition), expected + fresh.len() as u64);
        }
        Ok(AppendOutcome {
            written: fresh.len(),
            already_present: skip,
        })
    }

    fn next_seq(&mut self, table: Table, partition: i32) -> Result<Option<u64>, SinkError> {
        Ok(Some(
            self.next.get(&(table, partition)).copied().unwrap_or(0),
        ))
    }

    fn stored_identities(
        &mut self,
        table: Table,
        partition: i32,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, RowIdentity)>, SinkError> {
        let cached = self
            .identities
            .get(&(table, partition))
            .is_some_and(|c| c.first_key_value().is_some_and(|(s, _)| *s <= from));
        if !cached {
            let read = self.read_identities(table, partition, from)?;
            self.identities.insert((table, partition), read);
        }
        let Some(cache) = self.identities.get_mut(&(table, partition)) else {
            return Ok(Vec::new());
        };
        // Hand out `from..to` and forget everything below `to`.
        let rest = cache.split_off(&to);
        let wanted = std::mem::replace(cache, rest);
        Ok(wanted.into_iter().filter(|(s, _)| *s >= from).collect())
    }

    fn scan_rows(
        &mut self,
        table: Table,
        partitions: &[i32],
        _columns: &[&str],
        each: &mut dyn FnMut(&StoredRow) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        self.scan_file(table, partitions, each)
    }
}

impl FileSink {
    /// Every row of `table` on one of `partitions`.
    fn scan_file(
        &self,
        table: Table,
        partitions: &[i32],
        each: &mut dyn FnMut(&StoredRow) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let path = self.path(table);
        let file = File::open(&path).map_err(|e| io("opening", &path, e))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io("reading", &path, e))?;
            let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                .map_err(|e| {
                    SinkError::Fatal(format!(
                        "{}: a row is not a JSON object: {e}",
                        path.display()
                    ))
                })?;
            let row = StoredRow(row);
            let on = row
                .int("source_partition")
                .is_some_and(|p| partitions.iter().any(|q| i64::from(*q) == p));
            if on {
                each(&row)?;
            }
        }
        Ok(())
    }

    /// Identities of one partition's rows of `table` from sequence `from` on.
    fn read_identities(
        &self,
        table: Table,
        partition: i32,
        from: u64,
    ) -> Result<BTreeMap<u64, RowIdentity>, SinkError> {
        let path = self.path(table);
        let file = File::open(&path).map_err(|e| io("opening", &path, e))?;
        let mut out = BTreeMap::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io("reading", &path, e))?;
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                SinkError::Fatal(format!("{}: a row is not JSON: {e}", path.display()))
            })?;
            out.extend(identity::of_stored_row(table, partition, from.., &v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dirs: std::cell::RefCell<Vec<tempfile::TempDir>> = Default::default();
        crate::conformance::run(|| {
            let d = tempfile::tempdir().unwrap();
            let s = FileSink::open(d.path()).unwrap();
            dirs.borrow_mut().push(d);
            s
        });
    }

    fn row(p: i32, s: u64) -> Vec<u8> {
        format!("{{\"source_partition\":{p},\"outbox_seq\":{s}}}").into_bytes()
    }

    #[test]
    fn a_second_owner_of_a_partition_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileSink::open_owned(dir.path(), &[0, 1]).unwrap();
        let e = FileSink::open_owned(dir.path(), &[1, 2]).err().unwrap();
        assert!(matches!(e, SinkError::Fenced { partition: 1, .. }), "{e}");
        // Other partitions are free; the lock goes with its holder.
        assert!(FileSink::open_owned(dir.path(), &[2, 3]).is_ok());
        drop(first);
        assert!(FileSink::open_owned(dir.path(), &[1]).is_ok());
    }

    #[test]
    fn reopen_resumes_sequences_and_truncates_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = FileSink::open(d.path()).unwrap();
            s.append(Table::Payments, 0, 0, &[row(0, 0), row(0, 1)])
                .unwrap();
            s.append(Table::Payments, 3, 0, &[row(3, 0)]).unwrap();
        }
        // A crash mid-write leaves half a line.
        let path = d.path().join("payments.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"source_partition\":0,\"outb").unwrap();
        drop(f);

        let mut s = FileSink::open(d.path()).unwrap();
        assert_eq!(s.next_seq(Table::Payments, 0).unwrap(), Some(2));
        assert_eq!(s.next_seq(Table::Payments, 3).unwrap(), Some(1));
        // The relay resends 1..3; only 2 is new.
        let out = s
            .append(Table::Payments, 0, 1, &[row(0, 1), row(0, 2)])
            .unwrap();
        assert_eq!((out.written, out.already_present), (1, 1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.ends_with("\"outbox_seq\":2}\n"));
    }

    #[test]
    fn appends_after_a_larger_one_write_exactly_their_own_lines() {
        // The line buffer is kept from one append to the next: nothing of a larger,
        // earlier append may reach the file again.
        let d = tempfile::tempdir().unwrap();
        let mut s = FileSink::open(d.path()).unwrap().without_fsync();
        let long = |p: i32, seq: u64| {
            let mut r = row(p, seq);
            r.pop(); // the closing brace
            r.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(300)).as_bytes());
            r
        };
        let big: Vec<Vec<u8>> = (0..200).map(|seq| long(0, seq)).collect();
        s.append(Table::Payments, 0, 0, &big).unwrap();
        s.append(Table::Payments, 1, 0, &[row(1, 0)]).unwrap();
        s.append(Table::DedupAudit, 0, 0, &[row(0, 0), row(0, 1)])
            .unwrap();
        s.append(Table::Payments, 0, 200, &[row(0, 200)]).unwrap();
        let mut expected: Vec<u8> = Vec::new();
        for r in big.iter().chain([&row(1, 0), &row(0, 200)]) {
            expected.extend_from_slice(r);
            expected.push(b'\n');
        }
        assert_eq!(
            std::fs::read(d.path().join("payments.jsonl")).unwrap(),
            expected
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("dedup_audit.jsonl")).unwrap(),
            format!(
                "{}\n{}\n",
                String::from_utf8(row(0, 0)).unwrap(),
                String::from_utf8(row(0, 1)).unwrap()
            )
        );
    }

    #[test]
    fn an_edited_file_with_a_sequence_hole_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("payments.jsonl"),
            [row(0, 0), b"\n".to_vec(), row(0, 2), b"\n".to_vec()].concat(),
        )
        .unwrap();
        assert!(matches!(FileSink::open(d.path()), Err(SinkError::Fatal(_))));
    }
}
