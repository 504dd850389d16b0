//! [`DedupIndex`]: every stored dedup entry, in memory, so that a batch's dedup lookups
//! are answered without RocksDB: nine in ten transaction ids are new, and the tenth — a
//! retry, a replay — wants its first version's entry. Since the entries are written as
//! pages (`crate::dedup_page`), RocksDB cannot answer one id at all: memory must.
//!
//! **The invariant: for every entry the store holds (in a page, or in an earlier
//! build's per-key `dedup` family), the index holds the same entry, or says to ask
//! RocksDB** ([`DedupLookup::Ask`], only for a per-key row it could not read). Two
//! exceptions, both answers the pipeline gives the same way: an entry expired under its
//! partition's committed horizon may be gone from the index before its page is deleted
//! (the pipeline treats an expired entry as absent, `dedupe::alive`), and an entry the
//! loader brings back after a sweep let it go is such an expired one. So the index is
//! filled from the pages and the per-key family when the store opens, takes every
//! entry a commit puts *after* that commit is durable (a later put of a key replaces
//! its entry), and lets go of keys only when the store's own expiry rule would.
//!
//! A key is a 128-bit hash (`keys::dedup_key`): its first 8 bytes are the map's key,
//! its last 8 are kept to tell two keys apart that share the first. Two stored keys
//! sharing the first 8 bytes (about one pair in 4·10^7 at a million live ids) are both
//! kept whole in a small map beside it: with dedup pages (`crate::dedup_page`) RocksDB
//! cannot answer one key, so memory must. A value of the wrong length (only an older
//! build's per-key column family can hold one) leaves its key, and only it, to RocksDB,
//! which then reports the error it is.
//!
//! A bucket takes 56 bytes and a control byte, and the table holds 7 ids in 8 buckets
//! before it doubles: 65 to 130 bytes an id, by where the count falls between two
//! powers of two (by arithmetic, a million ids: 120 MB; 9 M: 956 MB). The keys alone, which is all an
//! earlier build held, took 17 bytes a bucket: the rest is the price of not asking
//! RocksDB, which cannot answer one id of a page.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::expiry::is_expired;
use crate::keys::DedupEntry;

/// Fingerprints are already uniform hashes: the map uses them as they are.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this keeps the trait total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Fingerprints<V> = HashMap<u64, V, BuildHasherDefault<FingerprintHasher>>;

/// What the index says about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupLookup {
    /// The entry the store holds.
    Held(DedupEntry),
    /// The store does not hold the key (or holds it expired, see the module docs).
    Absent,
    /// Ask RocksDB: a key that is not 16 bytes, or a per-key row whose value the
    /// index could not read (RocksDB then reports the error it is).
    Ask,
}

/// One held entry, without its map key (the key's first 8 bytes). Laid out without
/// `u128`, whose 16-byte alignment would pad it to 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// The key's last 8 bytes.
    rest: u64,
    event_time_micros: i64,
    content_hash: [u64; 2],
    offset: i64,
    partition: i32,
}

impl Held {
    fn new(rest: u64, e: &DedupEntry) -> Held {
        Held {
            rest,
            event_time_micros: e.event_time_micros,
            content_hash: [(e.content_hash >> 64) as u64, e.content_hash as u64],
            offset: e.offset,
            partition: e.partition,
        }
    }

    fn entry(&self) -> DedupEntry {
        DedupEntry {
            event_time_micros: self.event_time_micros,
            content_hash: (u128::from(self.content_hash[0]) << 64)
                | u128::from(self.content_hash[1]),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// A 16-byte key's (fingerprint, rest): its two big-endian halves.
fn halves(key: &[u8; 16]) -> (u64, u64) {
    let (mut fingerprint, mut rest) = ([0u8; 8], [0u8; 8]);
    fingerprint.copy_from_slice(&key[..8]);
    rest.copy_from_slice(&key[8..]);
    (u64::from_be_bytes(fingerprint), u64::from_be_bytes(rest))
}

/// A key's (fingerprint, rest), if it is a 16-byte key (every transaction id's is).
fn split(key: &[u8]) -> Option<(u64, u64)> {
    <&[u8; 16]>::try_from(key).ok().map(halves)
}

/// How many tables the entries are spread over, by four bits of the fingerprint that
/// neither a table's bucket index (its low bits) nor its control byte (its top 7)
/// uses. Why: one table of millions doubles all at once, on the committing thread,
/// holding the old and the new table together (9 M ids: a 478 MB table rehashed into
/// a 956 MB one); sixteen double one at a time, each a sixteenth of that.
const SHARDS: usize = 16;

fn shard(fingerprint: u64) -> usize {
    (fingerprint >> 32) as usize & (SHARDS - 1)
}

/// The shards a two-thread load fills on each thread (see [`DedupIndex::absorb`]).
pub const LOWER_SHARDS: std::ops::Range<usize> = 0..SHARDS / 2;
pub const UPPER_SHARDS: std::ops::Range<usize> = SHARDS / 2..SHARDS;

/// Whether a 16-byte key goes to one of [`UPPER_SHARDS`].
pub fn in_upper_shards(key: &[u8; 16]) -> bool {
    UPPER_SHARDS.contains(&shard(halves(key).0))
}

pub struct DedupIndex {
    maps: Vec<Fingerprints<Held>>,
    /// The buckets each map has grown to. A table never shrinks, but after removals
    /// its `capacity()` may (a removed slot can stay a tombstone, counted in neither
    /// its items nor its room), so the memory is read off the growth instead.
    buckets: Vec<usize>,
    /// Fingerprints two stored keys share: their keys are kept whole in `shared_keys`
    /// instead of `map` (about one pair in 4·10^7 at a million live ids). Never
    /// removed: an entry in `shared_keys` is found wherever the map would have had it.
    shared: HashSet<u64, BuildHasherDefault<FingerprintHasher>>,
    shared_keys: HashMap<[u8; 16], Held>,
    /// Keys whose stored value is malformed (only an older build's per-key column
    /// family can hold one): RocksDB answers those, with the error they are. Whole
    /// keys, never fingerprints: another key with the same first 8 bytes lives in a
    /// page, which RocksDB cannot answer, so it must stay held here.
    ask: HashSet<[u8; 16]>,
}

impl Default for DedupIndex {
    fn default() -> DedupIndex {
        DedupIndex {
            maps: (0..SHARDS).map(|_| Fingerprints::default()).collect(),
            buckets: vec![0; SHARDS],
            shared: HashSet::default(),
            shared_keys: HashMap::new(),
            ask: HashSet::new(),
        }
    }
}

/// The buckets behind a hashbrown table's `capacity`: it fills 7 of 8 before growing
/// (tables under 8 buckets fill all but one).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

/// A 16-byte key from its two halves.
fn whole(fingerprint: u64, rest: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&fingerprint.to_be_bytes());
    k[8..].copy_from_slice(&rest.to_be_bytes());
    k
}

impl DedupIndex {
    /// A durable commit put `value` under `key`: it replaces what the key held.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.add(key, value, true);
    }

    /// The loader read `value` under `key` at open: it only fills a key the index does
    /// not have (a commit since the open put a newer entry).
    pub fn load(&mut self, key: &[u8], value: &[u8]) {
        self.add(key, value, false);
    }

    fn add(&mut self, key: &[u8], value: &[u8], replace: bool) {
        // A key that is not 16 bytes is no transaction id's: no lookup asks for it
        // (and one that did would be sent to RocksDB by `get`).
        let Some((fingerprint, rest)) = split(key) else {
            return;
        };
        let Ok(entry) = DedupEntry::decode(value) else {
            if replace || self.holds(fingerprint, rest).is_none() {
                self.remove(fingerprint, rest);
                self.ask.insert(whole(fingerprint, rest));
            }
            return;
        };
        self.add_entry(fingerprint, rest, &entry, replace);
    }

    /// A durable entry for `key` (a page's, at open): it replaces what the key held.
    pub fn put_entry(&mut self, key: [u8; 16], entry: &DedupEntry) {
        let (fingerprint, rest) = halves(&key);
        self.add_entry(fingerprint, rest, entry, true);
    }

    /// Room for `additional` more entries without growing (at open, before the pages
    /// are read: growing a table of millions rehashes and zeroes it each time, most of
    /// a restart's time with 9 M ids held).
    pub fn reserve(&mut self, additional: usize) {
        self.reserve_shards(additional, 0..SHARDS);
    }

    /// [`DedupIndex::reserve`] for the shards in `shards` only: room for their share of
    /// `additional` entries (a load that fills the shards on two threads reserves each
    /// half in the index that fills it).
    pub fn reserve_shards(&mut self, additional: usize, shards: std::ops::Range<usize>) {
        // Fingerprints are uniform: a sixteenth each, and a little over for the spread.
        let each = additional / SHARDS + additional / (SHARDS * 64) + 16;
        for i in shards {
            self.maps[i].reserve(each);
            self.note_buckets(i);
        }
    }

    /// Takes over what `other` holds, which must be entries of `shards` only, none of
    /// which `self` holds anything in (checked: `false`, and nothing taken, otherwise).
    /// Why: a load fills the two halves of the shards on two threads, each in an index
    /// of its own, and joins them here without moving an entry (a key's shard is fixed
    /// by its fingerprint, so the halves never share a key, nor a shared fingerprint).
    pub fn absorb(&mut self, mut other: DedupIndex, shards: std::ops::Range<usize>) -> bool {
        let outside = (0..SHARDS).filter(|i| !shards.contains(i));
        let disjoint = other.ask.is_empty()
            && outside.clone().all(|i| other.maps[i].is_empty())
            && shards.clone().all(|i| self.maps[i].is_empty())
            && other.shared.iter().all(|fp| shards.contains(&shard(*fp)))
            && self.shared.iter().all(|fp| !shards.contains(&shard(*fp)));
        if !disjoint {
            return false;
        }
        for i in shards {
            std::mem::swap(&mut self.maps[i], &mut other.maps[i]);
            self.buckets[i] = self.buckets[i].max(other.buckets[i]);
        }
        self.shared.extend(other.shared);
        self.shared_keys.extend(other.shared_keys);
        true
    }

    /// Right after an insert or a reserve, a map's capacity is its buckets' room.
    fn note_buckets(&mut self, i: usize) {
        self.buckets[i] = self.buckets[i].max(buckets(self.maps[i].capacity()));
    }

    fn add_entry(&mut self, fingerprint: u64, rest: u64, entry: &DedupEntry, replace: bool) {
        if !self.ask.is_empty() {
            let key = whole(fingerprint, rest);
            if self.ask.contains(&key) {
                if !replace {
                    return;
                }
                self.ask.remove(&key);
            }
        }
        let held = Held::new(rest, entry);
        if !self.shared.is_empty() && self.shared.contains(&fingerprint) {
            return Self::fill(
                &mut self.shared_keys,
                whole(fingerprint, rest),
                held,
                replace,
            );
        }
        let i = shard(fingerprint);
        match self.maps[i].entry(fingerprint) {
            Entry::Vacant(v) => {
                v.insert(held);
                self.note_buckets(i);
            }
            Entry::Occupied(mut o) if o.get().rest == rest => {
                if replace {
                    *o.get_mut() = held;
                }
            }
            Entry::Occupied(o) => {
                // A second key with these first 8 bytes: both are kept whole.
                let (_, first) = o.remove_entry();
                self.shared.insert(fingerprint);
                self.shared_keys
                    .insert(whole(fingerprint, first.rest), first);
                self.shared_keys.insert(whole(fingerprint, rest), held);
            }
        }
    }

    fn fill(keys: &mut HashMap<[u8; 16], Held>, key: [u8; 16], held: Held, replace: bool) {
        match keys.entry(key) {
            Entry::Vacant(v) => {
                v.insert(held);
            }
            Entry::Occupied(mut o) => {
                if replace {
                    *o.get_mut() = held;
                }
            }
        }
    }

    pub fn get(&self, key: &[u8]) -> DedupLookup {
        let Some((fingerprint, rest)) = split(key) else {
            return DedupLookup::Ask;
        };
        if !self.ask.is_empty() && self.ask.contains(&whole(fingerprint, rest)) {
            return DedupLookup::Ask;
        }
        match self.holds(fingerprint, rest) {
            Some(h) => DedupLookup::Held(h.entry()),
            None => DedupLookup::Absent,
        }
    }

    /// The entry held for the key (fingerprint, rest).
    fn holds(&self, fingerprint: u64, rest: u64) -> Option<&Held> {
        if !self.shared.is_empty() && self.shared.contains(&fingerprint) {
            return self.shared_keys.get(&whole(fingerprint, rest));
        }
        // Another key holding the fingerprint means this one is not stored (it would
        // have made the fingerprint a shared one).
        self.maps[shard(fingerprint)]
            .get(&fingerprint)
            .filter(|h| h.rest == rest)
    }

    /// Lets go of the key (fingerprint, rest), and of nothing else.
    fn remove(&mut self, fingerprint: u64, rest: u64) {
        if !self.shared.is_empty() && self.shared.contains(&fingerprint) {
            self.shared_keys.remove(&whole(fingerprint, rest));
        } else {
            let map = &mut self.maps[shard(fingerprint)];
            if map.get(&fingerprint).is_some_and(|h| h.rest == rest) {
                map.remove(&fingerprint);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum::<usize>() + self.shared_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing was ever put: no entry, no shared fingerprint, no key left to
    /// RocksDB. Only such an index is filled on two threads (see [`DedupIndex::absorb`]).
    pub fn is_pristine(&self) -> bool {
        self.maps.iter().all(HashMap::is_empty)
            && self.shared.is_empty()
            && self.shared_keys.is_empty()
            && self.ask.is_empty()
    }

    /// Bytes of memory the index takes (by its buckets: 56 bytes and a control byte
    /// each for the map).
    pub fn memory_bytes(&self) -> usize {
        self.buckets.iter().sum::<usize>() * (std::mem::size_of::<(u64, Held)>() + 1)
            + buckets(self.shared_keys.capacity()) * (std::mem::size_of::<([u8; 16], Held)>() + 1)
            + buckets(self.ask.capacity()) * 17
            + buckets(self.shared.capacity()) * 9
    }

    /// Lets go of every entry whose event time is expired by `retention` under its
    /// partition's horizon, as the compaction filter drops it. Returns how many.
    pub fn sweep(&mut self, retention_micros: i64, horizon: impl Fn(i32) -> i64) -> usize {
        let before = self.len();
        let alive =
            |h: &Held| !is_expired(h.event_time_micros, retention_micros, horizon(h.partition));
        for map in &mut self.maps {
            map.retain(|_, h| alive(h));
        }
        self.shared_keys.retain(|_, h| alive(h));
        before - self.len()
    }

    /// Lets go of every entry of the given partitions.
    pub fn forget(&mut self, partitions: &[i32]) {
        for map in &mut self.maps {
            map.retain(|_, h| !partitions.contains(&h.partition));
        }
        self.shared_keys
            .retain(|_, h| !partitions.contains(&h.partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    fn entry(t: i64, partition: i32) -> DedupEntry {
        DedupEntry {
            event_time_micros: t,
            content_hash: (7u128 << 64) | 9,
            partition,
            offset: t / 2,
        }
    }

    #[test]
    fn an_entry_comes_back_whole_and_a_later_put_replaces_it() {
        let mut r = DedupIndex::default();
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        r.put(&a, &entry(10, 0).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(10, 0)));
        assert_eq!(r.get(&b), DedupLookup::Absent);
        r.put(&a, &entry(20, 1).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(20, 1)));
        // The loader's (older) value never replaces a commit's.
        r.load(&a, &entry(10, 0).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(20, 1)));
        r.load(&b, &entry(5, 0).encode());
        assert_eq!(r.get(&b), DedupLookup::Held(entry(5, 0)));
        assert_eq!(std::mem::size_of::<(u64, Held)>(), 56);
        // A million ids: 2^21 buckets of 57 bytes.
        let mut big = DedupIndex::default();
        big.reserve(1_000_000);
        assert_eq!(big.memory_bytes(), (1 << 21) * 57);
    }

    /// A key whose fingerprint falls in `shard`, told apart by `rest`.
    fn key_in(shard: usize, low: u32, rest: u8) -> [u8; 16] {
        let fingerprint = ((shard as u64) << 32) | u64::from(low);
        whole(fingerprint, u64::from(rest))
    }

    #[test]
    fn two_halves_filled_apart_answer_as_one_index() {
        let (mut lower, mut upper) = (DedupIndex::default(), DedupIndex::default());
        let (a, b) = (key_in(3, 1, 0), key_in(12, 1, 0));
        // In each half, two keys sharing a fingerprint.
        let (a2, b2) = (key_in(3, 1, 1), key_in(12, 1, 1));
        for (k, t) in [(a, 10), (a2, 11)] {
            assert!(!in_upper_shards(&k));
            lower.put_entry(k, &entry(t, 0));
        }
        for (k, t) in [(b, 12), (b2, 13)] {
            assert!(in_upper_shards(&k));
            upper.put_entry(k, &entry(t, 1));
        }
        lower.reserve_shards(1_000, LOWER_SHARDS);
        upper.reserve_shards(1_000, UPPER_SHARDS);
        let memory = lower.memory_bytes() + upper.memory_bytes();
        assert!(lower.absorb(upper, UPPER_SHARDS));
        for (k, e) in [
            (a, entry(10, 0)),
            (a2, entry(11, 0)),
            (b, entry(12, 1)),
            (b2, entry(13, 1)),
        ] {
            assert_eq!(lower.get(&k), DedupLookup::Held(e));
        }
        assert_eq!(lower.get(&key_in(12, 1, 2)), DedupLookup::Absent);
        assert_eq!(lower.len(), 4);
        // Both halves' buckets are counted; the empty maps' few are gone.
        assert!(lower.memory_bytes() <= memory);
        assert!(lower.memory_bytes() > 0);
    }

    #[test]
    fn halves_that_overlap_are_refused_and_nothing_is_taken() {
        let mut lower = DedupIndex::default();
        lower.put_entry(key_in(12, 1, 0), &entry(10, 0));
        let mut upper = DedupIndex::default();
        upper.put_entry(key_in(12, 2, 0), &entry(11, 0));
        // `lower` already holds an upper shard's key.
        assert!(!lower.absorb(upper, UPPER_SHARDS));
        assert_eq!(lower.len(), 1);
        assert_eq!(lower.get(&key_in(12, 2, 0)), DedupLookup::Absent);
        // `other` holding a key outside the shards it hands over.
        let mut other = DedupIndex::default();
        other.put_entry(key_in(3, 2, 0), &entry(11, 0));
        let mut empty = DedupIndex::default();
        assert!(!empty.absorb(other, UPPER_SHARDS));
        assert!(empty.is_empty());
    }

    #[test]
    fn two_keys_sharing_a_fingerprint_are_both_answered_exactly() {
        let mut r = DedupIndex::default();
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&42u64.to_be_bytes());
        let mut b = a;
        b[15] = 1;
        let mut c = a;
        c[15] = 2;
        r.put(&a, &entry(10, 0).encode());
        // c is not stored, and the fingerprint's one key is a: c is absent.
        assert_eq!(r.get(&c), DedupLookup::Absent);
        r.put(&b, &entry(11, 1).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(10, 0)));
        assert_eq!(r.get(&b), DedupLookup::Held(entry(11, 1)));
        assert_eq!(r.get(&c), DedupLookup::Absent);
        assert_eq!(r.len(), 2);
        // Replaced by a commit, not by the loader; swept and forgotten like the rest.
        r.put(&a, &entry(12, 0).encode());
        r.load(&a, &entry(10, 0).encode());
        r.load(&c, &entry(13, 0).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(12, 0)));
        assert_eq!(r.get(&c), DedupLookup::Held(entry(13, 0)));
        assert_eq!(r.sweep(1, |p| if p == 0 { 14 } else { 0 }), 1);
        assert_eq!(r.get(&a), DedupLookup::Absent);
        r.forget(&[1]);
        assert_eq!(r.get(&b), DedupLookup::Absent);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_malformed_key_or_value_is_left_to_rocksdb() {
        let mut r = DedupIndex::default();
        let a = dedup_key("a");
        r.put(&a, &entry(10, 0).encode());
        r.put(&a, b"short");
        assert_eq!(r.get(&a), DedupLookup::Ask);
        assert_eq!(r.get(b"not sixteen"), DedupLookup::Ask);
        r.put(b"not sixteen bytes", &entry(10, 0).encode());
        assert_eq!(r.get(b"not sixteen bytes"), DedupLookup::Ask);
        // A commit's good entry for the key is held again.
        r.put(&a, &entry(11, 0).encode());
        assert_eq!(r.get(&a), DedupLookup::Held(entry(11, 0)));
    }

    /// A review found this: a malformed per-key row took its whole fingerprint to
    /// RocksDB, which does not hold the entries of pages, so a live id sharing those
    /// first 8 bytes was answered "absent". Only the malformed key itself is asked.
    #[test]
    fn a_malformed_row_hides_no_other_key_with_its_fingerprint() {
        let mut r = DedupIndex::default();
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&42u64.to_be_bytes());
        let mut b = a;
        b[15] = 1;
        // `a` from a page; the loader then finds `b` malformed in the per-key family.
        r.put(&a, &entry(10, 0).encode());
        r.load(&b, b"short");
        assert_eq!(r.get(&a), DedupLookup::Held(entry(10, 0)));
        assert_eq!(r.get(&b), DedupLookup::Ask);
        // And a key a page holds is not taken from memory by the loader's bad row.
        r.load(&a, b"short");
        assert_eq!(r.get(&a), DedupLookup::Held(entry(10, 0)));
    }

    #[test]
    fn sweeping_keeps_what_the_store_would_keep() {
        let mut r = DedupIndex::default();
        let (a, b, c) = (dedup_key("a"), dedup_key("b"), dedup_key("c"));
        r.put(&a, &entry(10_000_000, 0).encode()); // 10 s on partition 0
        r.put(&b, &entry(10_000_000, 1).encode()); // 10 s on partition 1
        r.put(&c, &entry(10_500_000, 0).encode()); // 10.5 s on partition 0
                                                   // Retention 5 s. Partition 0's horizon at 15 s: 10 s is at the boundary, alive.
        assert_eq!(
            r.sweep(5_000_000, |p| if p == 0 { 15_000_000 } else { 0 }),
            0
        );
        // At 15.2 s: 10 s is gone, 10.5 s is not; partition 1's horizon is behind.
        assert_eq!(
            r.sweep(5_000_000, |p| if p == 0 { 15_200_000 } else { 0 }),
            1
        );
        assert_eq!(r.get(&a), DedupLookup::Absent);
        assert_eq!(r.get(&b), DedupLookup::Held(entry(10_000_000, 1)));
        assert_eq!(r.get(&c), DedupLookup::Held(entry(10_500_000, 0)));
        r.forget(&[1]);
        assert_eq!(r.get(&b), DedupLookup::Absent);
        assert_eq!(r.len(), 1);
    }

    /// The memory reported is the tables' real size: it does not fall when entries go
    /// (a table never shrinks), and it is what the buckets take.
    #[test]
    fn memory_follows_the_tables_growth_not_their_entries() {
        let mut r = DedupIndex::default();
        for i in 0..100_000 {
            r.put(&dedup_key(&format!("k{i}")), &entry(i, 0).encode());
        }
        let grown = r.memory_bytes();
        let buckets: usize = r.maps.iter().map(|m| buckets(m.capacity())).sum();
        assert_eq!(grown, buckets * 57);
        assert_eq!(r.sweep(1, |_| 90_000), 89_999);
        assert_eq!(r.len(), 10_001);
        assert_eq!(r.memory_bytes(), grown);
    }
}
