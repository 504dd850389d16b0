//! [`LegacyDedup`]: the dedup entries an earlier build wrote one RocksDB key per id
//! (the `dedup` column family), held whole in memory. They have no page, so the
//! compact index (`crate::dedup_index`) cannot point at them; they are found here
//! instead until they expire (within the retention of the upgrade, then never again:
//! commits write pages only).
//!
//! The loader (`store::resident`) fills this in the background, only for keys no page
//! holds (pages are newer); a page put for a key takes the key out of here. A value of
//! the wrong length leaves its key, and only it, to RocksDB, which then reports the
//! error it is.

use std::collections::{HashMap, HashSet};

use crate::expiry::is_expired;
use crate::keys::DedupEntry;

/// What this holds for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyLookup {
    Held(DedupEntry),
    Absent,
    /// A key whose stored value is malformed: RocksDB answers it, with the error it is.
    Ask,
}

#[derive(Default)]
pub struct LegacyDedup {
    entries: HashMap<[u8; 16], DedupEntry>,
    ask: HashSet<[u8; 16]>,
}

impl LegacyDedup {
    /// The loader read `value` under `key`: it only fills a key not held already.
    pub fn load(&mut self, key: &[u8], value: &[u8]) {
        // A key that is not 16 bytes is no transaction id's: no lookup asks for it
        // here (the store sends such a lookup to RocksDB).
        let Ok(key) = <[u8; 16]>::try_from(key) else {
            return;
        };
        if self.entries.contains_key(&key) || self.ask.contains(&key) {
            return;
        }
        match DedupEntry::decode(value) {
            Ok(e) => {
                self.entries.insert(key, e);
            }
            Err(_) => {
                self.ask.insert(key);
            }
        }
    }

    /// A page now holds `key`: its entry there is the one.
    pub fn remove(&mut self, key: &[u8; 16]) {
        if !self.is_empty() {
            self.entries.remove(key);
            self.ask.remove(key);
        }
    }

    pub fn get(&self, key: &[u8; 16]) -> LegacyLookup {
        if self.is_empty() {
            return LegacyLookup::Absent;
        }
        if self.ask.contains(key) {
            return LegacyLookup::Ask;
        }
        match self.entries.get(key) {
            Some(e) => LegacyLookup::Held(*e),
            None => LegacyLookup::Absent,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.ask.is_empty()
    }

    /// Bytes of memory (by capacity: 52 bytes and a control byte an entry).
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * (std::mem::size_of::<([u8; 16], DedupEntry)>() + 1)
            + self.ask.capacity() * 17
    }

    /// Lets go of every entry expired by `retention` under its partition's horizon,
    /// as the compaction filter drops it. Returns how many.
    pub fn sweep(&mut self, retention_micros: i64, horizon: impl Fn(i32) -> i64) -> usize {
        let before = self.len();
        self.entries.retain(|_, e| {
            !is_expired(e.event_time_micros, retention_micros, horizon(e.partition))
        });
        before - self.len()
    }

    /// Lets go of every entry of the given partitions.
    pub fn forget(&mut self, partitions: &[i32]) {
        self.entries
            .retain(|_, e| !partitions.contains(&e.partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    fn entry(t: i64, partition: i32) -> DedupEntry {
        DedupEntry {
            event_time_micros: t,
            content_hash: 3,
            partition,
            offset: t,
        }
    }

    #[test]
    fn a_loaded_entry_is_held_until_a_page_takes_its_key() {
        let mut l = LegacyDedup::default();
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        l.load(&a, &entry(10, 0).encode());
        // The loader never replaces what it already filled.
        l.load(&a, &entry(20, 0).encode());
        assert_eq!(l.get(&a), LegacyLookup::Held(entry(10, 0)));
        assert_eq!(l.get(&b), LegacyLookup::Absent);
        l.remove(&a);
        assert_eq!(l.get(&a), LegacyLookup::Absent);
        assert!(l.is_empty());
    }

    #[test]
    fn a_malformed_value_is_left_to_rocksdb_and_only_its_key() {
        let mut l = LegacyDedup::default();
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        l.load(&a, b"short");
        l.load(&b, &entry(5, 0).encode());
        l.load(b"not sixteen", &entry(5, 0).encode());
        assert_eq!(l.get(&a), LegacyLookup::Ask);
        assert_eq!(l.get(&b), LegacyLookup::Held(entry(5, 0)));
        l.remove(&a);
        assert_eq!(l.get(&a), LegacyLookup::Absent);
    }

    #[test]
    fn sweeping_keeps_what_the_store_would_keep() {
        let mut l = LegacyDedup::default();
        let (a, b, c) = (dedup_key("a"), dedup_key("b"), dedup_key("c"));
        l.load(&a, &entry(10_000_000, 0).encode());
        l.load(&b, &entry(10_000_000, 1).encode());
        l.load(&c, &entry(10_500_000, 0).encode());
        // Retention 5 s. Partition 0's horizon at 15 s: 10 s is at the boundary, alive.
        let at = |h0: i64| move |p: i32| if p == 0 { h0 } else { 0 };
        assert_eq!(l.sweep(5_000_000, at(15_000_000)), 0);
        assert_eq!(l.sweep(5_000_000, at(15_200_000)), 1);
        assert_eq!(l.get(&a), LegacyLookup::Absent);
        assert_eq!(l.get(&b), LegacyLookup::Held(entry(10_000_000, 1)));
        l.forget(&[1]);
        assert_eq!(l.get(&b), LegacyLookup::Absent);
        assert_eq!(l.len(), 1);
    }
}
