//! [`StateBatch`]: everything one processed Kafka batch changes.
//!
//! The pipeline fills a batch with plain puts and deletes; nothing is visible until
//! [`crate::StateStore::commit`] writes it as one RocksDB `WriteBatch`.

use crate::cf;
use crate::keys::{meta, DedupEntry};
use crate::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: &'static str,
        key: Vec<u8>,
    },
}

/// The rows one batch gives one (table, partition), in the order they were put.
#[derive(Debug)]
pub(crate) struct StreamRows {
    pub(crate) table: Table,
    pub(crate) partition: i32,
    pub(crate) rows: Vec<(u64, Vec<u8>)>,
}

impl StreamRows {
    /// The rows in sequence order, cut where a sequence is skipped: one page each.
    pub(crate) fn into_runs(mut self) -> Vec<(u64, Vec<Vec<u8>>)> {
        self.rows.sort_unstable_by_key(|(seq, _)| *seq);
        let mut runs: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        for (seq, row) in self.rows {
            match runs.last_mut() {
                Some((first, rows)) if *first + rows.len() as u64 == seq => rows.push(row),
                _ => runs.push((seq, vec![row])),
            }
        }
        runs
    }
}

#[derive(Debug, Default)]
pub struct StateBatch {
    pub(crate) ops: Vec<Op>,
    pub(crate) outbox: Vec<StreamRows>,
    outbox_rows: u64,
}

impl StateBatch {
    pub fn new() -> StateBatch {
        StateBatch::default()
    }

    fn put(&mut self, cf: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            cf,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn put_dedup(&mut self, key: [u8; 16], entry: &DedupEntry) {
        self.put(cf::CF_DEDUP, key, entry.encode());
    }

    /// Fraud state; the value must start with its 8-byte big-endian last-seen time.
    pub fn put_fraud(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put(cf::CF_FRAUD, key, value);
    }

    pub fn delete_fraud(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete {
            cf: cf::CF_FRAUD,
            key,
        });
    }

    pub fn put_window(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put(cf::CF_WINDOW, key, value);
    }

    pub fn delete_window(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete {
            cf: cf::CF_WINDOW,
            key,
        });
    }

    fn delete_meta(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete {
            cf: cf::CF_META,
            key,
        });
    }

    /// Marks a record beyond a restored position whose row the sink holds in `table`.
    pub fn set_landed_record(&mut self, partition: i32, offset: i64, table: Table) {
        self.put(
            cf::CF_META,
            meta::landed_record(partition, offset),
            vec![table.id()],
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
            Vec::new(),
        );
    }

    /// The landed window closed.
    pub fn clear_landed_window(&mut self, partition: i32, start: i64, currency: &str) {
        self.delete_meta(meta::landed_window(partition, start, currency));
    }

    /// An output row with its sequence number (allocated by the caller, dense per
    /// (table, partition)); [`StateBatch::set_next_seq`] must record the next one. The
    /// commit stores a stream's rows as pages (see [`crate::outbox_page`]).
    pub fn put_outbox(&mut self, table: Table, partition: i32, seq: u64, row: Vec<u8>) {
        self.outbox_rows += 1;
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
                });
                self.outbox.len() - 1
            }
        };
        self.outbox[i].rows.push((seq, row));
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
        let mut v = offset.to_be_bytes().to_vec();
        v.extend_from_slice(&fingerprint.to_be_bytes());
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
        self.put(cf::CF_META, meta::HORIZON.to_vec(), micros.to_be_bytes());
    }

    /// A partition's committed watermark, for the dedup filter's per-partition expiry.
    pub fn set_partition_horizon(&mut self, partition: i32, micros: i64) {
        self.put(cf::CF_META, meta::horizon(partition), micros.to_be_bytes());
    }

    pub fn put_sink_meta(&mut self, table: Table, partition: i32, value: Vec<u8>) {
        self.put(cf::CF_META, meta::sink(table, partition), value);
    }

    pub fn outbox_rows(&self) -> u64 {
        self.outbox_rows
    }

    /// Each (table, partition) given outbox rows, with the sequence after its last.
    pub fn outbox_ends(&self) -> Vec<(Table, i32, u64)> {
        self.outbox
            .iter()
            .map(|s| {
                let end = s.rows.iter().map(|(seq, _)| seq + 1).max().unwrap_or(0);
                (s.table, s.partition, end)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.outbox.is_empty()
    }

    /// How many writes the batch holds: its puts and deletes, and its outbox rows.
    pub fn len(&self) -> usize {
        self.ops.len() + self.outbox_rows as usize
    }
}
