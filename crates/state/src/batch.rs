//! [`StateBatch`]: everything one processed Kafka batch changes.
//!
//! The pipeline fills a batch with plain puts and deletes; nothing is visible until
//! [`crate::StateStore::commit`] writes it as one RocksDB `WriteBatch`.

use crate::cf;
use crate::keys::{meta, DedupEntry};
use crate::Table;

/// One write of a batch, as the commit reads it: its bytes live in the batch's
/// [`OpLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    Put {
        cf: &'static str,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        cf: &'static str,
        key: &'a [u8],
    },
}

/// Where one op's key (and value) lie in [`OpLog::bytes`]: the key at `start`, the value
/// right after it (`None`: a delete).
#[derive(Debug, Clone, Copy)]
struct OpAt {
    cf: &'static str,
    start: usize,
    key_len: usize,
    value_len: Option<usize>,
}

/// A batch's puts and deletes, in order, their keys and values copied into one buffer.
///
/// Why one buffer: a batch holds a few puts per event (a dedup entry, card and customer
/// state), built on the pipeline thread and dropped on the committing one. As a `Vec`
/// each, that was two allocations per put, each freed by the other thread, which the
/// allocator pays for most (its cross-thread free lists); and the pipeline could not
/// keep a value as the next batch's in-flight copy without cloning it.
#[derive(Debug, Default)]
pub(crate) struct OpLog {
    ops: Vec<OpAt>,
    bytes: Vec<u8>,
}

impl OpLog {
    fn push(&mut self, cf: &'static str, key: &[u8], value: Option<&[u8]>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        if let Some(v) = value {
            self.bytes.extend_from_slice(v);
        }
        self.ops.push(OpAt {
            cf,
            start,
            key_len: key.len(),
            value_len: value.map(<[u8]>::len),
        });
    }

    /// The ops in the order they were made.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Op<'_>> {
        self.ops.iter().map(|at| {
            let key_end = at.start + at.key_len;
            let key = &self.bytes[at.start..key_end];
            match at.value_len {
                Some(n) => Op::Put {
                    cf: at.cf,
                    key,
                    value: &self.bytes[key_end..key_end + n],
                },
                None => Op::Delete { cf: at.cf, key },
            }
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The rows one batch gives one (table, partition), in the order they were put, their
/// bytes in one buffer (see [`OpLog`] for why).
#[derive(Debug)]
pub(crate) struct StreamRows {
    pub(crate) table: Table,
    pub(crate) partition: i32,
    /// (sequence, start, end) of each row in `bytes`.
    rows: Vec<(u64, usize, usize)>,
    bytes: Vec<u8>,
}

impl StreamRows {
    /// The rows in sequence order, cut where a sequence is skipped: one page each.
    pub(crate) fn runs(&mut self) -> Vec<(u64, Vec<&[u8]>)> {
        self.rows.sort_unstable_by_key(|(seq, _, _)| *seq);
        let mut runs: Vec<(u64, Vec<&[u8]>)> = Vec::new();
        for &(seq, start, end) in &self.rows {
            let row = &self.bytes[start..end];
            match runs.last_mut() {
                Some((first, rows)) if *first + rows.len() as u64 == seq => rows.push(row),
                _ => runs.push((seq, vec![row])),
            }
        }
        runs
    }
}

/// An expiry horizon a batch carries (also in its `meta` puts): the commit publishes it
/// to the compaction filters and memory sweeps once the batch is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Horizon {
    /// `meta::HORIZON`, the fallback for partitions without one of their own.
    Global(i64),
    /// `meta::horizon(partition)`.
    Partition(i32, i64),
}

#[derive(Debug, Default)]
pub struct StateBatch {
    pub(crate) ops: OpLog,
    pub(crate) outbox: Vec<StreamRows>,
    outbox_rows: u64,
    pub(crate) horizons: Vec<Horizon>,
}

impl StateBatch {
    pub fn new() -> StateBatch {
        StateBatch::default()
    }

    /// A batch with room for `ops` puts and deletes of `bytes` bytes of keys and
    /// values in all: a pipeline batch knows its size up front, and growing the two
    /// buffers by doubling copied them again and again (~0.5 % of a run's
    /// samples, on the pipeline thread).
    pub fn with_capacity(ops: usize, bytes: usize) -> StateBatch {
        StateBatch {
            ops: OpLog {
                ops: Vec::with_capacity(ops),
                bytes: Vec::with_capacity(bytes),
            },
            ..StateBatch::default()
        }
    }

    fn put(&mut self, cf: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(cf, key.as_ref(), Some(value.as_ref()));
    }

    fn delete(&mut self, cf: &'static str, key: impl AsRef<[u8]>) {
        self.ops.push(cf, key.as_ref(), None);
    }

    pub fn put_dedup(&mut self, key: [u8; 16], entry: &DedupEntry) {
        self.put(cf::CF_DEDUP, key, entry.encode());
    }

    /// Fraud state; the value must start with its 8-byte big-endian last-seen time.
    pub fn put_fraud(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put(cf::CF_FRAUD, key, value);
    }

    pub fn delete_fraud(&mut self, key: impl AsRef<[u8]>) {
        self.delete(cf::CF_FRAUD, key);
    }

    pub fn put_window(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put(cf::CF_WINDOW, key, value);
    }

    pub fn delete_window(&mut self, key: impl AsRef<[u8]>) {
        self.delete(cf::CF_WINDOW, key);
    }

    fn delete_meta(&mut self, key: impl AsRef<[u8]>) {
        self.delete(cf::CF_META, key);
    }

    /// Marks a record beyond a restored position whose row the sink holds in `table`.
    pub fn set_landed_record(&mut self, partition: i32, offset: i64, table: Table) {
        self.put(
            cf::CF_META,
            meta::landed_record(partition, offset),
            [table.id()],
        );
    }

    /// The landed record was replayed.
    pub fn clear_landed_record(&mut self, partition: i32, offset: i64) {
        self.delete_meta(meta::landed_record(partition, offset));
    }

    /// Marks an open window whose `payment_metrics` row the sink already holds.
    pub fn set_landed_window(&mut self, partition: i32, start: i64, currency: &str) {
        self.put(
            cf::CF_META,
            meta::landed_window(partition, start, currency),
            [],
        );
    }

    /// The landed window closed.
    pub fn clear_landed_window(&mut self, partition: i32, start: i64, currency: &str) {
        self.delete_meta(meta::landed_window(partition, start, currency));
    }

    /// An output row with its sequence number (allocated by the caller, dense per
    /// (table, partition)); [`StateBatch::set_next_seq`] must record the next one. The
    /// commit stores a stream's rows as pages (see [`crate::outbox_page`]).
    pub fn put_outbox(&mut self, table: Table, partition: i32, seq: u64, row: impl AsRef<[u8]>) {
        self.outbox_rows += 1;
        let stream = self.stream(table, partition);
        let start = stream.bytes.len();
        stream.bytes.extend_from_slice(row.as_ref());
        stream.rows.push((seq, start, stream.bytes.len()));
    }

    /// Makes room for `rows` more rows of `bytes` bytes in all in a stream: a pipeline
    /// batch knows about how many rows each partition's payments stream gets, and the
    /// stream's buffers grew by doubling from empty (~1 % of a 10 M run's samples, on
    /// the pipeline thread).
    pub fn reserve_outbox(&mut self, table: Table, partition: i32, rows: usize, bytes: usize) {
        let stream = self.stream(table, partition);
        stream.rows.reserve(rows);
        stream.bytes.reserve(bytes);
    }

    /// The rows of one (table, partition), added empty if it has none yet.
    fn stream(&mut self, table: Table, partition: i32) -> &mut StreamRows {
        let i = match self
            .outbox
            .iter()
            .position(|s| (s.table, s.partition) == (table, partition))
        {
            Some(i) => i,
            None => {
                self.outbox.push(StreamRows {
                    table,
                    partition,
                    rows: Vec::new(),
                    bytes: Vec::new(),
                });
                self.outbox.len() - 1
            }
        };
        &mut self.outbox[i]
    }

    pub fn set_next_seq(&mut self, table: Table, partition: i32, next: u64) {
        self.put(
            cf::CF_META,
            meta::next_seq(table, partition),
            next.to_be_bytes(),
        );
    }

    /// The checkpointed source position: offsets below `next` are fully processed.
    pub fn set_next_offset(&mut self, partition: i32, next: i64) {
        self.put(
            cf::CF_META,
            meta::next_offset(partition),
            next.to_be_bytes(),
        );
    }

    /// The last record consumed on `partition`: its offset and fingerprint
    /// ([`keys::record_fingerprint`](crate::keys::record_fingerprint)).
    pub fn set_last_record(&mut self, partition: i32, offset: i64, fingerprint: u64) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&offset.to_be_bytes());
        v[8..].copy_from_slice(&fingerprint.to_be_bytes());
        self.put(cf::CF_META, meta::last_record(partition), v);
    }

    pub fn set_max_event_time(&mut self, partition: i32, micros: i64) {
        self.put(
            cf::CF_META,
            meta::max_event_time(partition),
            micros.to_be_bytes(),
        );
    }

    /// The expiry horizon (minimum committed watermark) the compaction filter may use.
    pub fn set_horizon(&mut self, micros: i64) {
        self.put(cf::CF_META, meta::HORIZON, micros.to_be_bytes());
        self.horizons.push(Horizon::Global(micros));
    }

    /// A partition's committed watermark, for the dedup filter's per-partition expiry.
    pub fn set_partition_horizon(&mut self, partition: i32, micros: i64) {
        self.put(cf::CF_META, meta::horizon(partition), micros.to_be_bytes());
        self.horizons.push(Horizon::Partition(partition, micros));
    }

    pub fn put_sink_meta(&mut self, table: Table, partition: i32, value: impl AsRef<[u8]>) {
        self.put(cf::CF_META, meta::sink(table, partition), value);
    }

    pub fn outbox_rows(&self) -> u64 {
        self.outbox_rows
    }

    /// Each (table, partition) given outbox rows, with the sequence after its last.
    pub fn outbox_ends(&self) -> Vec<(Table, i32, u64)> {
        // A stream room was made for may have no rows.
        self.outbox
            .iter()
            .filter_map(|s| {
                let end = s.rows.iter().map(|(seq, _, _)| seq + 1).max()?;
                Some((s.table, s.partition, end))
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.outbox_rows == 0
    }

    /// The fraud keys the batch puts, in the order the commit writes them.
    pub fn fraud_puts(&self) -> Vec<&[u8]> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Put {
                    cf: family, key, ..
                } if family == cf::CF_FRAUD => Some(key),
                _ => None,
            })
            .collect()
    }

    /// How many writes the batch holds: its puts and deletes, and its outbox rows.
    pub fn len(&self) -> usize {
        self.ops.len() + self.outbox_rows as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_come_back_in_order_with_their_own_bytes() {
        let mut b = StateBatch::new();
        b.put_fraud(b"k1", b"value-1");
        b.delete_fraud(b"k2");
        b.put_window(Vec::from(&b"w"[..]), []);
        b.put_fraud(b"", b"v");
        let ops: Vec<Op<'_>> = b.ops.iter().collect();
        assert_eq!(
            ops,
            vec![
                Op::Put {
                    cf: cf::CF_FRAUD,
                    key: b"k1",
                    value: b"value-1"
                },
                Op::Delete {
                    cf: cf::CF_FRAUD,
                    key: b"k2"
                },
                Op::Put {
                    cf: cf::CF_WINDOW,
                    key: b"w",
                    value: b""
                },
                Op::Put {
                    cf: cf::CF_FRAUD,
                    key: b"",
                    value: b"v"
                },
            ]
        );
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn rows_are_paged_in_sequence_order_and_cut_at_gaps() {
        let mut b = StateBatch::new();
        for (seq, row) in [(5, "e"), (3, "c"), (4, "d"), (9, "i"), (10, "j")] {
            b.put_outbox(Table::Payments, 0, seq, row);
        }
        b.put_outbox(Table::Payments, 1, 0, "other partition");
        assert_eq!(b.outbox_rows(), 6);
        assert_eq!(
            b.outbox_ends(),
            vec![(Table::Payments, 0, 11), (Table::Payments, 1, 1)]
        );
        let runs = b.outbox[0].runs();
        let expected: Vec<(u64, Vec<&[u8]>)> =
            vec![(3, vec![b"c", b"d", b"e"]), (9, vec![b"i", b"j"])];
        assert_eq!(runs, expected);
    }

    /// Room made for a stream that then gets no rows leaves no trace: the batch is still
    /// empty, and only the streams with rows have an end.
    #[test]
    fn room_for_rows_is_not_rows() {
        let mut b = StateBatch::new();
        b.reserve_outbox(Table::Payments, 0, 10, 1_000);
        b.reserve_outbox(Table::Payments, 1, 10, 1_000);
        assert!(b.is_empty());
        assert_eq!(b.outbox_ends(), vec![]);
        b.put_outbox(Table::Payments, 1, 7, "row");
        assert!(!b.is_empty());
        assert_eq!(b.outbox_ends(), vec![(Table::Payments, 1, 8)]);
        let runs = b.outbox[1].runs();
        assert_eq!(runs, vec![(7, vec![&b"row"[..]])]);
    }
}
