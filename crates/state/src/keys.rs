//! Byte layouts of keys and values. All integers are big-endian so that RocksDB's
//! bytewise order is numeric order (outbox rows iterate by sequence).

use crate::{StateError, Table};

/// The dedup index key of a transaction id: its XXH3-128 hash. Fixed 16 bytes keep the
/// index small whatever the id length; at 2^-128 per pair a collision is not a concern.
pub fn dedup_key(transaction_id: &str) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(transaction_id.as_bytes()).to_be_bytes()
}

/// What the dedup index remembers about the first version of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    /// Event time of the first version, µs. Comes first: the TTL filter reads it.
    pub event_time_micros: i64,
    pub content_hash: u128,
    pub partition: i32,
    pub offset: i64,
}

impl DedupEntry {
    pub const LEN: usize = 8 + 16 + 4 + 8;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.event_time_micros.to_be_bytes());
        b[8..24].copy_from_slice(&self.content_hash.to_be_bytes());
        b[24..28].copy_from_slice(&self.partition.to_be_bytes());
        b[28..].copy_from_slice(&self.offset.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<DedupEntry, StateError> {
        if b.len() != Self::LEN {
            return Err(StateError::BadValue {
                what: "dedup entry",
                len: b.len(),
            });
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[..8]);
        let mut h = [0u8; 16];
        h.copy_from_slice(&b[8..24]);
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[24..28]);
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[28..]);
        Ok(DedupEntry {
            event_time_micros: i64::from_be_bytes(t),
            content_hash: u128::from_be_bytes(h),
            partition: i32::from_be_bytes(p),
            offset: i64::from_be_bytes(o),
        })
    }
}

/// The time a dedup or fraud value starts with (8 bytes big-endian, µs): what the TTL
/// compaction filters and the resident key sets expire a key by. `None` for a value
/// too short to carry one (such a value never expires).
pub fn value_time(value: &[u8]) -> Option<i64> {
    be_i64(value.get(..8)?)
}

/// The partition of an encoded [`DedupEntry`] (bytes 24..28), without decoding the rest.
pub fn dedup_value_partition(value: &[u8]) -> Option<i32> {
    be_i32(value.get(24..28)?)
}

/// Outbox key: table id, partition, sequence.
pub fn outbox_key(table: Table, partition: i32, seq: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = table.id();
    k[1..5].copy_from_slice(&partition.to_be_bytes());
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix all outbox rows of one (table, partition) share.
pub fn outbox_prefix(table: Table, partition: i32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = table.id();
    k[1..5].copy_from_slice(&partition.to_be_bytes());
    k
}

/// Splits an outbox key back into (table, partition, seq).
pub fn parse_outbox_key(k: &[u8]) -> Option<(Table, i32, u64)> {
    if k.len() != 13 {
        return None;
    }
    let table = Table::from_id(k[0])?;
    let partition = i32::from_be_bytes(k[1..5].try_into().ok()?);
    let seq = u64::from_be_bytes(k[5..].try_into().ok()?);
    Some((table, partition, seq))
}

/// Meta keys. Each names one fact about one partition (or one table and partition).
pub mod meta {
    use crate::Table;

    fn with_partition(tag: &[u8], partition: i32) -> Vec<u8> {
        let mut k = tag.to_vec();
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    /// Next Kafka offset to read on a partition (the checkpointed source position).
    pub fn next_offset(partition: i32) -> Vec<u8> {
        with_partition(b"offset/", partition)
    }

    pub const NEXT_OFFSET_PREFIX: &[u8] = b"offset/";

    /// Max event time seen on a partition (its watermark is this minus the lateness).
    pub fn max_event_time(partition: i32) -> Vec<u8> {
        with_partition(b"maxevent/", partition)
    }

    pub const MAX_EVENT_TIME_PREFIX: &[u8] = b"maxevent/";

    /// Next outbox sequence of a (table, partition).
    pub fn next_seq(table: Table, partition: i32) -> Vec<u8> {
        let mut k = b"seq/".to_vec();
        k.push(table.id());
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    pub const NEXT_SEQ_PREFIX: &[u8] = b"seq/";

    /// The last record consumed on a partition: its offset and [`record_fingerprint`]
    /// (`super::record_fingerprint`), so a restart can tell the log is still the one
    /// the state consumed.
    pub fn last_record(partition: i32) -> Vec<u8> {
        with_partition(b"lastrec/", partition)
    }

    pub const LAST_RECORD_PREFIX: &[u8] = b"lastrec/";

    /// The dedup retention (µs) the processor runs with.
    pub const RETENTION: &[u8] = b"retention";

    /// What the directory is the state of: topic, partitions, decision settings.
    pub const IDENTITY: &[u8] = b"identity";

    /// A partition's committed watermark, for the dedup filter (see `expiry`).
    pub fn horizon(partition: i32) -> Vec<u8> {
        with_partition(b"horizon/", partition)
    }

    pub const HORIZON_PREFIX: &[u8] = b"horizon/";

    /// The committed expiry horizon (see `expiry`).
    pub const HORIZON: &[u8] = b"horizon";

    /// A record beyond a restored state's position whose row the sink already holds
    /// (value: the table's id): replayed for its state effects, its row not sent again.
    pub fn landed_record(partition: i32, offset: i64) -> Vec<u8> {
        let mut k = with_partition(LANDED_RECORD_PREFIX, partition);
        k.extend_from_slice(&offset.to_be_bytes());
        k
    }

    pub const LANDED_RECORD_PREFIX: &[u8] = b"landed/";

    /// A window whose `payment_metrics` row the sink already holds but which a restored
    /// state still has open: closed without sending its row again.
    pub fn landed_window(partition: i32, window_start_micros: i64, currency: &str) -> Vec<u8> {
        let mut k = LANDED_WINDOW_PREFIX.to_vec();
        k.extend_from_slice(&super::window_key(partition, window_start_micros, currency));
        k
    }

    pub const LANDED_WINDOW_PREFIX: &[u8] = b"landedwin/";

    /// The first undelivered sequence of a (table, partition): rows below it in a page
    /// the relay has not finished are delivered (see `outbox_page`).
    pub fn outbox_floor(table: Table, partition: i32) -> Vec<u8> {
        let mut k = OUTBOX_FLOOR_PREFIX.to_vec();
        k.push(table.id());
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    pub const OUTBOX_FLOOR_PREFIX: &[u8] = b"outfloor/";

    /// A sink's own bookkeeping for a (table, partition), e.g. a BigQuery stream name.
    pub fn sink(table: Table, partition: i32) -> Vec<u8> {
        let mut k = b"sink/".to_vec();
        k.push(table.id());
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }
}

/// Window state key: (partition, window start µs, currency code).
pub fn window_key(partition: i32, window_start_micros: i64, currency: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + 8 + currency.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&window_start_micros.to_be_bytes());
    k.extend_from_slice(currency.as_bytes());
    k
}

pub fn parse_window_key(k: &[u8]) -> Option<(i32, i64, String)> {
    if k.len() < 12 {
        return None;
    }
    let p = i32::from_be_bytes(k[..4].try_into().ok()?);
    let w = i64::from_be_bytes(k[4..12].try_into().ok()?);
    let c = std::str::from_utf8(&k[12..]).ok()?.to_owned();
    Some((p, w, c))
}

/// Reads an 8-byte big-endian i64.
pub fn be_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

/// Reads a 4-byte big-endian i32.
pub fn be_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(b.try_into().ok()?))
}

/// Reads an 8-byte big-endian u64.
pub fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// A Kafka record's fingerprint: key, value and timestamp. Two logs that hold the same
/// record at an offset agree on it; a topic deleted and re-created almost surely not.
pub fn record_fingerprint(key: Option<&[u8]>, value: &[u8], timestamp_ms: Option<i64>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    match key {
        Some(k) => {
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(k);
        }
        None => h.update(&u64::MAX.to_be_bytes()),
    }
    h.update(&timestamp_ms.unwrap_or(i64::MIN).to_be_bytes());
    h.update(value);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_entry_round_trips() {
        let e = DedupEntry {
            event_time_micros: 1_700_000_000_000_000,
            content_hash: u128::MAX - 7,
            partition: 3,
            offset: 42,
        };
        assert_eq!(DedupEntry::decode(&e.encode()).unwrap(), e);
        assert!(DedupEntry::decode(&[0u8; 5]).is_err());
    }

    #[test]
    fn outbox_keys_sort_by_sequence_within_a_partition() {
        let a = outbox_key(Table::Payments, 1, 9);
        let b = outbox_key(Table::Payments, 1, 10);
        let c = outbox_key(Table::Payments, 2, 0);
        assert!(a < b && b < c);
        assert_eq!(parse_outbox_key(&b), Some((Table::Payments, 1, 10)));
        assert!(a.starts_with(&outbox_prefix(Table::Payments, 1)));
    }

    #[test]
    fn window_key_round_trips() {
        let k = window_key(2, 60_000_000, "USD");
        assert_eq!(parse_window_key(&k), Some((2, 60_000_000, "USD".into())));
    }
}
