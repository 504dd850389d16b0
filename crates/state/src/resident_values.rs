//! [`ResidentValues`]: a column family's keys *and values*, kept in memory, so that a
//! lookup never reaches RocksDB, whether the store holds the key or not.
//!
//! The fraud state is read for every valid payment (its card and its customer), and at
//! 10 M payments most of those reads are hits spread over ~6 M random keys: a set of
//! keys ([`crate::resident::ResidentKeys`]) spares the misses only, and the hits cost a
//! `multi_get` through the block cache, and often a block read and decompression.
//!
//! **The invariant: for every key, [`ResidentValues::get`] answers what the column
//! family holds, or [`Lookup::Ask`].** A held value is the last value a durable commit
//! put; an absent key is one the store does not hold (or one expired by the same rule
//! the compaction filter applies, which may drop it at any time anyway). `Ask` sends
//! the lookup to RocksDB, which is always right, and is the answer wherever memory
//! cannot be sure:
//! - two keys share a 64-bit fingerprint (the table holds one entry per fingerprint);
//! - a key or value too long for an entry's header;
//! - a key deleted while the loader was still scanning: the loader's snapshot may hold
//!   the old value, which must not come back.
//!
//! **Layout.** Entries live in 64 shards, each an append-only byte arena
//! (`[key length][value length: 2 bytes][key][value]`) and a table from fingerprint to
//! offset: about 50 bytes of arena and 26 of table per fraud key, instead of a heap
//! allocation per key and value (which took ~130 bytes). A value rewritten at the same
//! length is overwritten in place (most fraud updates: a count and a time); otherwise
//! it is appended and the old entry becomes garbage, and a shard whose garbage passes a
//! quarter of its arena is rewritten compactly.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use xxhash_rust::xxh3::xxh3_64;

use crate::expiry::is_expired;
use crate::keys::value_time;
use crate::resident::FingerprintHasher;

/// The table's marker for "ask RocksDB" (see the module docs).
const ASK: u32 = u32::MAX;
const SHARDS: usize = 64;
const HEADER: usize = 3;
/// A shard's arena is rewritten once its garbage is at least this many bytes and a
/// quarter of the arena (small in tests, so they reach it).
const MIN_COMPACT_GARBAGE: usize = if cfg!(test) { 512 } else { 64 * 1024 };

/// What memory knows of one key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The value the store holds.
    Held(&'a [u8]),
    /// The store does not hold the key.
    Absent,
    /// Memory cannot tell: read the store.
    Ask,
}

#[derive(Default)]
struct Shard {
    table: HashMap<u64, u32, BuildHasherDefault<FingerprintHasher>>,
    arena: Vec<u8>,
    /// Arena bytes no table entry points to.
    garbage: usize,
    /// Table entries that are `ASK` markers.
    asks: usize,
    /// How many times the arena was rewritten.
    compactions: u64,
}

/// An entry's (key, value) at `offset`.
fn entry(arena: &[u8], offset: u32) -> (&[u8], &[u8]) {
    let at = offset as usize;
    let klen = arena[at] as usize;
    let vlen = u16::from_le_bytes([arena[at + 1], arena[at + 2]]) as usize;
    let key = &arena[at + HEADER..at + HEADER + klen];
    let value = &arena[at + HEADER + klen..at + HEADER + klen + vlen];
    (key, value)
}

fn entry_len(arena: &[u8], offset: u32) -> usize {
    let (k, v) = entry(arena, offset);
    HEADER + k.len() + v.len()
}

/// Whether `key` and `value` fit an entry's header.
fn fits(key: &[u8], value: &[u8]) -> bool {
    key.len() <= usize::from(u8::MAX) && value.len() <= usize::from(u16::MAX)
}

impl Shard {
    /// Appends an entry (which must fit) and returns its offset, or `ASK` if the arena
    /// would pass `u32` offsets.
    fn append(&mut self, key: &[u8], value: &[u8]) -> u32 {
        let at = self.arena.len();
        let Ok(offset) = u32::try_from(at) else {
            return ASK;
        };
        if offset >= ASK - (HEADER + key.len() + value.len()) as u32 {
            return ASK;
        }
        // Grow by a quarter, not double: the arenas are most of this structure's memory.
        let need = HEADER + key.len() + value.len();
        if self.arena.capacity() - at < need {
            self.arena.reserve_exact((at / 4).max(need).max(4096));
        }
        self.arena.push(key.len() as u8);
        self.arena
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        offset
    }

    /// Makes the fingerprint's slot an `ASK` marker, letting go of any entry there.
    fn mark_ask(&mut self, fingerprint: u64) {
        let previous = self.table.insert(fingerprint, ASK);
        match previous {
            Some(ASK) => {}
            Some(offset) => {
                self.garbage += entry_len(&self.arena, offset);
                self.asks += 1;
            }
            None => self.asks += 1,
        }
    }

    fn remove(&mut self, fingerprint: u64) {
        match self.table.remove(&fingerprint) {
            Some(ASK) => self.asks -= 1,
            Some(offset) => self.garbage += entry_len(&self.arena, offset),
            None => {}
        }
    }

    /// Rewrites the arena without its garbage once that is a quarter of it.
    fn compact_if_due(&mut self) {
        if self.garbage < MIN_COMPACT_GARBAGE || self.garbage * 4 < self.arena.len() {
            return;
        }
        let live = self.arena.len() - self.garbage;
        let mut arena = Vec::with_capacity(live + live / 8);
        for offset in self.table.values_mut() {
            if *offset == ASK {
                continue;
            }
            let at = *offset as usize;
            let len = entry_len(&self.arena, *offset);
            // Live bytes never exceed the old arena, whose offsets fitted in u32.
            *offset = arena.len() as u32;
            arena.extend_from_slice(&self.arena[at..at + len]);
        }
        self.arena = arena;
        self.garbage = 0;
        self.compactions += 1;
    }
}

/// See the module docs.
pub struct ResidentValues {
    shards: Vec<Shard>,
    /// A key's fingerprint: `xxh3_64`, or a test's deliberately colliding hash.
    fingerprint: fn(&[u8]) -> u64,
}

impl Default for ResidentValues {
    fn default() -> Self {
        ResidentValues::with_fingerprint(xxh3_64)
    }
}

impl ResidentValues {
    fn with_fingerprint(fingerprint: fn(&[u8]) -> u64) -> ResidentValues {
        ResidentValues {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            fingerprint,
        }
    }

    /// The fingerprint of `key` and its shard. The table's hash function is the
    /// fingerprint itself, whose low bits pick the bucket and high bits tag it, so the
    /// shard takes bits from the middle.
    fn locate(&mut self, key: &[u8]) -> (u64, &mut Shard) {
        let fingerprint = (self.fingerprint)(key);
        let shard = (fingerprint >> 32) as usize % SHARDS;
        (fingerprint, &mut self.shards[shard])
    }

    /// What memory knows of `key`.
    pub fn get(&self, key: &[u8]) -> Lookup<'_> {
        let fingerprint = (self.fingerprint)(key);
        let shard = &self.shards[(fingerprint >> 32) as usize % SHARDS];
        match shard.table.get(&fingerprint) {
            None => Lookup::Absent,
            Some(&ASK) => Lookup::Ask,
            Some(&offset) => match entry(&shard.arena, offset) {
                (k, v) if k == key => Lookup::Held(v),
                // Another key with this fingerprint is held; whether this one is stored
                // memory cannot say.
                _ => Lookup::Ask,
            },
        }
    }

    /// A durable commit put `key` = `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let (fingerprint, shard) = self.locate(key);
        if !fits(key, value) {
            shard.mark_ask(fingerprint);
            return;
        }
        match shard.table.get(&fingerprint).copied() {
            Some(ASK) => {}
            Some(offset) => {
                let (k, v) = entry(&shard.arena, offset);
                if k != key {
                    // Two keys, one fingerprint: RocksDB answers for both from now on.
                    shard.mark_ask(fingerprint);
                } else if v.len() == value.len() {
                    let at = offset as usize + HEADER + key.len();
                    shard.arena[at..at + value.len()].copy_from_slice(value);
                } else {
                    shard.garbage += HEADER + k.len() + v.len();
                    let new = shard.append(key, value);
                    if new == ASK {
                        shard.asks += 1;
                    }
                    shard.table.insert(fingerprint, new);
                    shard.compact_if_due();
                }
            }
            None => {
                let new = shard.append(key, value);
                if new == ASK {
                    shard.asks += 1;
                }
                shard.table.insert(fingerprint, new);
            }
        }
    }

    /// A durable commit deleted `key`. While the loader is still scanning
    /// (`loading`), its snapshot may hold the old value: the key is then left to RocksDB
    /// (see [`ResidentValues::load`]).
    pub fn delete(&mut self, key: &[u8], loading: bool) {
        let (fingerprint, shard) = self.locate(key);
        if loading {
            shard.mark_ask(fingerprint);
            return;
        }
        match shard.table.get(&fingerprint).copied() {
            None | Some(ASK) => {}
            Some(offset) => {
                if entry(&shard.arena, offset).0 == key {
                    shard.remove(fingerprint);
                    shard.compact_if_due();
                }
                // Another key with this fingerprint is held: it stays.
            }
        }
    }

    /// The loader read `key` = `value` from a snapshot taken when the store opened.
    /// Anything a commit did to the key since is newer, so an existing entry wins; and
    /// a different key with the same fingerprint makes both `ASK`.
    pub fn load(&mut self, key: &[u8], value: &[u8]) {
        let (fingerprint, shard) = self.locate(key);
        match shard.table.get(&fingerprint).copied() {
            Some(ASK) => {}
            Some(offset) => {
                if entry(&shard.arena, offset).0 != key {
                    shard.mark_ask(fingerprint);
                }
            }
            None if !fits(key, value) => shard.mark_ask(fingerprint),
            None => {
                let new = shard.append(key, value);
                if new == ASK {
                    shard.asks += 1;
                }
                shard.table.insert(fingerprint, new);
            }
        }
    }

    /// Lets go of every value whose time (its first 8 bytes, as the compaction filter
    /// reads it) is expired by `ttl` under `horizon`. Returns how many were let go.
    pub fn sweep(&mut self, ttl_micros: i64, horizon: i64) -> usize {
        let mut gone = 0;
        for shard in &mut self.shards {
            let arena = &shard.arena;
            let mut freed = 0;
            shard.table.retain(|_, offset| {
                if *offset == ASK {
                    return true;
                }
                let (k, v) = entry(arena, *offset);
                let time = value_time(v).unwrap_or(i64::MAX);
                let keep = !is_expired(time, ttl_micros, horizon);
                if !keep {
                    freed += HEADER + k.len() + v.len();
                    gone += 1;
                }
                keep
            });
            shard.garbage += freed;
            shard.compact_if_due();
        }
        gone
    }

    /// How many keys are held (with their values) or marked `ASK`.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many fingerprints are left to RocksDB (`ASK`).
    pub fn asks(&self) -> usize {
        self.shards.iter().map(|s| s.asks).sum()
    }

    /// Bytes of memory the arenas and tables take (by their capacities).
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.arena.capacity() + s.table.capacity() * 17)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every key whose first byte is the same shares a fingerprint.
    fn colliding(key: &[u8]) -> u64 {
        u64::from(key.first().copied().unwrap_or(0)) << 33
    }

    fn value(time: i64, tail: &[u8]) -> Vec<u8> {
        [time.to_be_bytes().as_slice(), tail].concat()
    }

    #[test]
    fn puts_overwrite_and_deletes_remove() {
        let mut r = ResidentValues::default();
        assert_eq!(r.get(b"card"), Lookup::Absent);
        r.put(b"card", &value(1, b"ab"));
        assert_eq!(r.get(b"card"), Lookup::Held(&value(1, b"ab")));
        // Same length: in place, no garbage.
        r.put(b"card", &value(2, b"cd"));
        assert_eq!(r.get(b"card"), Lookup::Held(&value(2, b"cd")));
        assert_eq!(r.shards.iter().map(|s| s.garbage).sum::<usize>(), 0);
        // Another length: appended.
        r.put(b"card", &value(3, b"longer"));
        assert_eq!(r.get(b"card"), Lookup::Held(&value(3, b"longer")));
        assert_eq!(r.len(), 1);
        r.delete(b"card", false);
        assert_eq!(r.get(b"card"), Lookup::Absent);
        assert!(r.is_empty());
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_left_to_the_store() {
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"a1", b"one");
        r.put(b"a2", b"two");
        assert_eq!(r.get(b"a1"), Lookup::Ask);
        assert_eq!(r.get(b"a2"), Lookup::Ask);
        // Not even a delete of one may claim the other is absent.
        r.delete(b"a1", false);
        assert_eq!(r.get(b"a2"), Lookup::Ask);
        // A key never put, whose fingerprint another key holds, is asked too.
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"b1", b"one");
        assert_eq!(r.get(b"b2"), Lookup::Ask);
        assert_eq!(r.get(b"c"), Lookup::Absent);
        assert_eq!(r.asks(), 0);
    }

    #[test]
    fn the_loader_never_brings_back_an_older_value() {
        let mut r = ResidentValues::default();
        // Committed after the loader's snapshot was taken: newer than what it reads.
        r.put(b"put", b"new");
        r.delete(b"deleted", true);
        r.load(b"put", b"old");
        r.load(b"deleted", b"old");
        r.load(b"only-stored", b"kept");
        assert_eq!(r.get(b"put"), Lookup::Held(b"new"));
        assert_eq!(r.get(b"deleted"), Lookup::Ask);
        assert_eq!(r.get(b"only-stored"), Lookup::Held(b"kept"));
        // A loaded key colliding with a committed one.
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"x1", b"new");
        r.load(b"x2", b"old");
        assert_eq!(r.get(b"x1"), Lookup::Ask);
        assert_eq!(r.get(b"x2"), Lookup::Ask);
    }

    #[test]
    fn entries_too_long_for_the_header_are_asked() {
        let mut r = ResidentValues::default();
        let long_key = vec![b'k'; 256];
        r.put(&long_key, b"v");
        assert_eq!(r.get(&long_key), Lookup::Ask);
        r.put(b"k", &vec![0; 70_000]);
        assert_eq!(r.get(b"k"), Lookup::Ask);
    }

    #[test]
    fn sweeping_drops_what_the_compaction_filter_would() {
        let mut r = ResidentValues::default();
        r.put(b"old", &value(10, b"x"));
        r.put(b"new", &value(20, b"x"));
        r.put(b"timeless", b"abc");
        // ttl 5: horizon 16 expires 10 (10 + 5 < 16) but not 20.
        assert_eq!(r.sweep(5, 16), 1);
        assert_eq!(r.get(b"old"), Lookup::Absent);
        assert_eq!(r.get(b"new"), Lookup::Held(&value(20, b"x")));
        assert_eq!(r.get(b"timeless"), Lookup::Held(b"abc"));
    }

    /// Random puts, deletes, loads and sweeps against a plain map of what the store
    /// holds, through arena compactions and fingerprint collisions: memory answers
    /// the store's value or `Ask`, never anything else.
    #[test]
    fn memory_answers_what_the_store_holds_or_asks() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Fingerprints collide for keys 0..4000 that agree modulo 3,989 (a few pairs).
        fn fp(key: &[u8]) -> u64 {
            let n = u64::from(u16::from_be_bytes([key[0], key[1]]));
            xxh3_64(&(n % 3_989).to_be_bytes())
        }
        let mut r = ResidentValues::with_fingerprint(fp);
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut loading = true;
        // The loader's snapshot: the store as it was when it opened.
        let snapshot: Vec<(Vec<u8>, Vec<u8>)> = (0..2_000u16)
            .map(|k| (k.to_be_bytes().to_vec(), value(i64::from(k), b"snap")))
            .collect();
        store.extend(snapshot.iter().cloned());
        let mut loaded = 0;
        for step in 0..200_000u64 {
            let key = (next(4_000) as u16).to_be_bytes().to_vec();
            match next(10) {
                0..=5 => {
                    let tail = vec![b'v'; next(40) as usize];
                    let v = value(step as i64, &tail);
                    r.put(&key, &v);
                    store.insert(key.clone(), v);
                }
                6 => {
                    r.delete(&key, loading);
                    store.remove(&key);
                }
                7 if loading => {
                    for (k, v) in snapshot.iter().skip(loaded).take(50) {
                        r.load(k, v);
                    }
                    loaded += 50;
                    loading = loaded < snapshot.len();
                }
                8 if !loading && step % 1_000 == 0 => {
                    let horizon = step as i64 - 20_000;
                    r.sweep(10_000, horizon);
                    store.retain(|_, v| {
                        !is_expired(value_time(v).unwrap_or(i64::MAX), 10_000, horizon)
                    });
                }
                _ => {}
            }
            if !loading {
                match r.get(&key) {
                    Lookup::Held(v) => assert_eq!(Some(v), store.get(&key).map(|v| &v[..])),
                    Lookup::Absent => assert_eq!(store.get(&key), None, "step {step}"),
                    Lookup::Ask => {}
                }
            }
        }
        assert!(!loading);
        for k in 0..4_000u16 {
            let key = k.to_be_bytes();
            match r.get(&key) {
                Lookup::Held(v) => assert_eq!(Some(v), store.get(&key[..]).map(|v| &v[..])),
                Lookup::Absent => assert_eq!(store.get(&key[..]), None),
                Lookup::Ask => {}
            }
        }
        // Collisions and deletions while loading are few: most keys are answered.
        assert!(r.asks() < 200, "{} asks", r.asks());
        // The arenas were rewritten along the way (offsets moved under the table).
        assert!(r.shards.iter().all(|s| s.compactions > 0));
    }
}
