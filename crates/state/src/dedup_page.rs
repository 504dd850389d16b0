//! A dedup page: the dedup entries one commit adds for one partition, as one value.
//!
//! Why pages: one RocksDB key per transaction id cost a memtable insert, a flush and a
//! compaction per id, ~15 % of a 10 M run's CPU, for entries that nearly all expire
//! unread within the retention. The entries live in memory (`DedupIndex`), which
//! answers every lookup; RocksDB only has to give them back at open. A page is written
//! once (in the commit's `WriteBatch`, so atomically with everything else the batch
//! does) and deleted whole once its newest entry has expired under its partition's
//! horizon. Measured against per-key puts: +5.6 % and +9.0 % events/s at 10 M, 10–17 %
//! less user CPU (docs/benchmarks.md, thirteenth step).
//!
//! Key: the partition (4 bytes) and the page's sequence number (8 bytes), big-endian,
//! so a partition's pages are one prefix (forgetting it is a range) in write order.
//! Value: the newest event time among the entries (8 bytes, big-endian), then each
//! entry as its 16-byte key and its `DedupEntry` bytes.

use std::collections::BTreeMap;

use crate::dedup_index::MAX_PAGE_ENTRIES;
use crate::keys::{dedup_value_partition, value_time, DedupEntry};
use crate::StateError;

/// Bytes one entry takes in a page.
pub const ENTRY_LEN: usize = 16 + DedupEntry::LEN;

pub fn page_key(partition: i32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// (partition, sequence) of a page key.
pub fn parse_page_key(key: &[u8]) -> Option<(i32, u64)> {
    let p = i32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(4..)?.try_into().ok()?);
    Some((p, seq))
}

/// A page being written: its entries appended as they come, its newest time kept.
#[derive(Debug)]
pub struct PageBuilder {
    page: Vec<u8>,
    newest: i64,
    entries: usize,
}

impl Default for PageBuilder {
    fn default() -> PageBuilder {
        PageBuilder {
            page: vec![0u8; 8],
            newest: i64::MIN,
            entries: 0,
        }
    }
}

impl PageBuilder {
    /// Appends one entry: its 16-byte key and its encoded `DedupEntry`. Anything else
    /// is refused, since a page whose length is not a whole number of entries could
    /// never be read back (and every open would then fail).
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let time = value_time(value).filter(|_| key.len() == 16 && value.len() == DedupEntry::LEN);
        let Some(time) = time else {
            return Err(StateError::BadValue {
                what: "dedup entry (key and value)",
                len: key.len() + value.len(),
            });
        };
        self.page.extend_from_slice(key);
        self.page.extend_from_slice(value);
        self.newest = self.newest.max(time);
        self.entries += 1;
        Ok(())
    }

    /// Whether the page holds as many entries as a locator can name
    /// (`dedup_index::MAX_PAGE_ENTRIES`).
    fn is_full(&self) -> bool {
        self.entries >= MAX_PAGE_ENTRIES
    }

    /// The page's bytes and its newest time.
    pub fn finish(mut self) -> (Vec<u8>, i64) {
        self.page[..8].copy_from_slice(&self.newest.to_be_bytes());
        (self.page, self.newest)
    }
}

/// One commit's pages: its dedup entries, by the partition each entry names (a
/// partition's entries beyond `MAX_PAGE_ENTRIES` in one commit start another page).
#[derive(Debug, Default)]
pub struct CommitPages(BTreeMap<i32, Vec<PageBuilder>>);

impl CommitPages {
    /// Adds a dedup put (key, encoded `DedupEntry`) to its partition's page.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let partition = dedup_value_partition(value).ok_or(StateError::BadValue {
            what: "dedup entry",
            len: value.len(),
        })?;
        let pages = self.0.entry(partition).or_default();
        match pages.last_mut() {
            Some(page) if !page.is_full() => page.push(key, value),
            _ => {
                let mut page = PageBuilder::default();
                page.push(key, value)?;
                pages.push(page);
                Ok(())
            }
        }
    }

    /// Each partition's pages: (partition, bytes, newest time), by partition, each
    /// partition's in the order their entries came.
    pub fn finish(self) -> impl Iterator<Item = (i32, Vec<u8>, i64)> {
        self.0.into_iter().flat_map(|(p, pages)| {
            pages.into_iter().map(move |b| {
                let (page, newest) = b.finish();
                (p, page, newest)
            })
        })
    }
}

/// A page of `entries` (at least one).
pub fn encode<'a>(entries: impl IntoIterator<Item = (&'a [u8; 16], &'a DedupEntry)>) -> Vec<u8> {
    let mut page = PageBuilder::default();
    for (key, entry) in entries {
        // A 16-byte key and an encoded entry: always a whole entry.
        let _ = page.push(key, &entry.encode());
    }
    page.finish().0
}

/// The newest event time of a page's entries: the page may go once it has expired.
pub fn newest_time(page: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(page.get(..8)?.try_into().ok()?))
}

/// How many entries a page holds, without decoding them; an error as for `entries`.
pub fn entry_count(page: &[u8]) -> Result<usize, StateError> {
    let body = page.get(8..).unwrap_or_default();
    if page.len() < 8 || body.len() % ENTRY_LEN != 0 {
        return Err(StateError::BadValue {
            what: "dedup page",
            len: page.len(),
        });
    }
    Ok(body.len() / ENTRY_LEN)
}

/// A page's entries, in the order they were written; an error for a page whose length
/// is not a whole number of entries (damaged, or written by something else).
pub fn entries(
    page: &[u8],
) -> Result<impl Iterator<Item = ([u8; 16], DedupEntry)> + '_, StateError> {
    entry_count(page)?;
    let body = page.get(8..).unwrap_or_default();
    // Every chunk is a whole entry (checked above), so none is skipped.
    Ok(body.chunks_exact(ENTRY_LEN).filter_map(|e| {
        let key: [u8; 16] = e[..16].try_into().ok()?;
        DedupEntry::decode(&e[16..]).ok().map(|d| (key, d))
    }))
}

/// The entry at `slot` of a page: (its 16-byte key, its encoded `DedupEntry`), if the
/// page has such a slot.
pub fn entry_at(page: &[u8], slot: usize) -> Option<(&[u8], &[u8])> {
    let at = 8 + slot.checked_mul(ENTRY_LEN)?;
    let e = page.get(at..at.checked_add(ENTRY_LEN)?)?;
    Some(e.split_at(16))
}

/// The entry for `key` at `slot` of a page, if that slot holds `key`.
pub fn matching_entry(
    page: &[u8],
    slot: usize,
    key: &[u8],
) -> Result<Option<DedupEntry>, StateError> {
    match entry_at(page, slot) {
        Some((k, e)) if k == key => DedupEntry::decode(e).map(Some),
        _ => Ok(None),
    }
}

/// A page's keys with their slots, without decoding the entries (what a restart's
/// index needs); an error as for `entries`.
pub fn keys(page: &[u8]) -> Result<impl Iterator<Item = (usize, [u8; 16])> + '_, StateError> {
    entry_count(page)?;
    let body = page.get(8..).unwrap_or_default();
    Ok(body
        .chunks_exact(ENTRY_LEN)
        .enumerate()
        .filter_map(|(slot, e)| Some((slot, e[..16].try_into().ok()?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    fn entry(t: i64, p: i32) -> DedupEntry {
        DedupEntry {
            event_time_micros: t,
            content_hash: u128::MAX - 3,
            partition: p,
            offset: -t,
        }
    }

    #[test]
    fn a_page_gives_back_its_entries_and_its_newest_time() {
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        let (ea, eb) = (entry(20, 3), entry(-5, 3));
        let page = encode([(&a, &ea), (&b, &eb)]);
        assert_eq!(page.len(), 8 + 2 * ENTRY_LEN);
        assert_eq!(newest_time(&page), Some(20));
        let got: Vec<_> = entries(&page).unwrap().collect();
        assert_eq!(got, vec![(a, ea), (b, eb)]);
        let got: Vec<_> = keys(&page).unwrap().collect();
        assert_eq!(got, vec![(0, a), (1, b)]);
        assert!(keys(&page[..page.len() - 1]).is_err());
        assert!(entries(&page[..page.len() - 1]).is_err());
        assert!(entries(b"short").is_err());
        // A commit's pages, by partition; an entry of the wrong length is refused.
        let mut pages = CommitPages::default();
        pages.push(&a, &ea.encode()).unwrap();
        pages.push(&b, &entry(30, 1).encode()).unwrap();
        assert!(pages.push(b"short key", &ea.encode()).is_err());
        assert!(pages.push(&a, b"short value").is_err());
        let got: Vec<_> = pages.finish().map(|(p, _, newest)| (p, newest)).collect();
        assert_eq!(got, vec![(1, 30), (3, 20)]);
    }

    #[test]
    fn page_keys_sort_by_partition_then_sequence() {
        let mut keys = [page_key(1, 2), page_key(0, 9), page_key(1, 1)];
        keys.sort();
        assert_eq!(keys, [page_key(0, 9), page_key(1, 1), page_key(1, 2)]);
        assert_eq!(
            parse_page_key(&page_key(-1, u64::MAX)),
            Some((-1, u64::MAX))
        );
        assert_eq!(parse_page_key(b"short"), None);
    }

    #[test]
    fn a_slot_holding_another_key_matches_nothing() {
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        let page = encode([(&a, &entry(0, 0)), (&b, &entry(1, 0))]);
        assert_eq!(matching_entry(&page, 0, &a).unwrap(), Some(entry(0, 0)));
        assert_eq!(matching_entry(&page, 1, &b).unwrap(), Some(entry(1, 0)));
        assert_eq!(matching_entry(&page, 0, &b).unwrap(), None);
        assert_eq!(matching_entry(&page, 5, &a).unwrap(), None);
    }
}
