//! [`DedupIndex`]: where every stored dedup entry is, in memory: a transaction id's
//! fingerprint (the first 8 bytes of its 16-byte key) and a [`Locator`], the page
//! (`crate::dedup_page`) and slot that hold its entry. 16 bytes and a control byte an
//! id, against 57 when the index held every entry whole (9 M live ids: 285 MB, not
//! 956 MB); a restart zeroes and fills that much memory before its first batch, which
//! was most of its time (docs/benchmarks.md, nineteenth step).
//!
//! Why this is enough: nine in ten lookups are new ids, and for them the fingerprint
//! alone answers "absent" (no bucket holds it). The tenth, a retry or a replay, wants
//! its first version's entry: the locator says where it is, and the reader
//! (`store::resident`) compares the whole key there, so a fingerprint two ids share
//! never makes a new payment a duplicate.
//!
//! **The invariant: for every entry a page holds, the index holds its fingerprint with
//! that page's locator** (and, once the page is deleted or forgotten, may still hold
//! the locator until a [`DedupIndex::retain`] lets it go: a locator of a page that is
//! gone answers nothing). A fingerprint usually has one locator. When a second is put
//! while the first's page lives, both are kept, oldest first, in a small map beside the
//! tables: the same id written again after its entry expired (its older page still
//! lives), or two ids sharing 8 bytes (about one pair in 4·10^7 at a million ids). A
//! reader tries them newest first, so the latest entry of a key wins.
//!
//! Nothing here reads a page or RocksDB: what a locator points at is the caller's to
//! resolve (`crate::resident_pages`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Where an entry is: its page's sequence number (the store's, one per page) in the
/// high 40 bits, its slot in the page in the low 24.
pub type Locator = u64;

/// Bits of a [`Locator`] that number the slot.
const SLOT_BITS: u32 = 24;

/// The most entries one page may hold: a commit's entries beyond it start a new page
/// (`dedup_page::CommitPages`).
pub const MAX_PAGE_ENTRIES: usize = 1 << SLOT_BITS;

/// The highest page sequence a locator can name (2^40 − 1: at a thousand pages a
/// second, 35 years).
pub const MAX_PAGE_SEQ: u64 = (1 << (64 - SLOT_BITS)) - 1;

/// The locator of `slot` in page `seq` (`seq` ≤ [`MAX_PAGE_SEQ`], `slot` <
/// [`MAX_PAGE_ENTRIES`], both checked where pages are numbered and built).
pub fn locator(seq: u64, slot: usize) -> Locator {
    debug_assert!(seq <= MAX_PAGE_SEQ && slot < MAX_PAGE_ENTRIES);
    (seq << SLOT_BITS) | slot as u64
}

/// The page sequence of a locator.
pub fn page_of(loc: Locator) -> u64 {
    loc >> SLOT_BITS
}

/// The slot of a locator in its page.
pub fn slot_of(loc: Locator) -> usize {
    (loc & ((1 << SLOT_BITS) - 1)) as usize
}

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

/// A 16-byte key's fingerprint: its first 8 bytes, big-endian.
pub fn fingerprint(key: &[u8; 16]) -> u64 {
    let mut f = [0u8; 8];
    f.copy_from_slice(&key[..8]);
    u64::from_be_bytes(f)
}

/// How many tables the fingerprints are spread over, by four bits that neither a
/// table's bucket index (its low bits) nor its control byte (its top 7) uses. Why: one
/// table of millions doubles all at once, on the committing thread, holding the old and
/// the new table together; sixteen double one at a time, each a sixteenth of that.
const SHARDS: usize = 16;

fn shard(fingerprint: u64) -> usize {
    (fingerprint >> 32) as usize & (SHARDS - 1)
}

/// The shards a two-thread load fills on each thread (see [`DedupIndex::absorb`]).
pub const LOWER_SHARDS: std::ops::Range<usize> = 0..SHARDS / 2;
pub const UPPER_SHARDS: std::ops::Range<usize> = SHARDS / 2..SHARDS;

/// Whether a 16-byte key goes to one of [`UPPER_SHARDS`].
pub fn in_upper_shards(key: &[u8; 16]) -> bool {
    UPPER_SHARDS.contains(&shard(fingerprint(key)))
}

/// The locators to try for a key, newest first.
#[derive(Debug, Clone, Copy)]
pub enum Candidates<'a> {
    None,
    One(Locator),
    /// Oldest first, as stored: read in reverse.
    Many(&'a [Locator]),
}

impl Iterator for Candidates<'_> {
    type Item = Locator;

    fn next(&mut self) -> Option<Locator> {
        match *self {
            Candidates::None => None,
            Candidates::One(l) => {
                *self = Candidates::None;
                Some(l)
            }
            Candidates::Many(ls) => {
                let (last, rest) = ls.split_last()?;
                *self = Candidates::Many(rest);
                Some(*last)
            }
        }
    }
}

#[derive(Default)]
pub struct DedupIndex {
    maps: Vec<Fingerprints<Locator>>,
    /// The buckets each map has grown to. A table never shrinks, but after removals
    /// its `capacity()` may (a removed slot can stay a tombstone, counted in neither
    /// its items nor its room), so the memory is read off the growth instead.
    buckets: Vec<usize>,
    /// Fingerprints with more than one live locator, oldest first (see the module
    /// docs); such a fingerprint is in no map.
    shared: Fingerprints<Vec<Locator>>,
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

/// How many fingerprints each shard reserves room for, of `additional` in all:
/// fingerprints are uniform, so a sixteenth each, and a little over for the spread.
fn per_shard(additional: usize) -> usize {
    additional / SHARDS + additional / (SHARDS * 64) + 16
}

impl DedupIndex {
    fn ensure_shards(&mut self) {
        if self.maps.is_empty() {
            self.maps = (0..SHARDS).map(|_| Fingerprints::default()).collect();
            self.buckets = vec![0; SHARDS];
        }
    }

    /// A page put the entry of `key` at `loc` (a later page than any put before it):
    /// `page_lives(seq)` says whether the page of a locator already held lives, since
    /// a locator of a page that is gone is replaced, not kept beside the new one.
    pub fn put(&mut self, key: &[u8; 16], loc: Locator, page_lives: impl Fn(u64) -> bool) {
        self.ensure_shards();
        let fp = fingerprint(key);
        if let Some(held) = self.shared.get_mut(&fp) {
            held.retain(|l| page_lives(page_of(*l)));
            held.push(loc);
            return;
        }
        let i = shard(fp);
        match self.maps[i].entry(fp) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
                self.note_buckets(i);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let held = *o.get();
                if page_lives(page_of(held)) {
                    o.remove();
                    self.shared.insert(fp, vec![held, loc]);
                } else {
                    *o.get_mut() = loc;
                }
            }
        }
    }

    /// The locators to try for `key`, newest first.
    pub fn candidates(&self, key: &[u8; 16]) -> Candidates<'_> {
        if self.maps.is_empty() {
            return Candidates::None;
        }
        let fp = fingerprint(key);
        if !self.shared.is_empty() {
            if let Some(held) = self.shared.get(&fp) {
                return Candidates::Many(held);
            }
        }
        match self.maps[shard(fp)].get(&fp) {
            Some(l) => Candidates::One(*l),
            None => Candidates::None,
        }
    }

    /// Room for `additional` more fingerprints without growing (at open, before the
    /// pages are read: growing a table of millions rehashes and zeroes it each time).
    pub fn reserve(&mut self, additional: usize) {
        self.reserve_shards(additional, 0..SHARDS);
    }

    /// [`DedupIndex::reserve`] for the shards in `shards` only: room for their share of
    /// `additional` (a load that fills the shards on two threads reserves each half in
    /// the index that fills it).
    pub fn reserve_shards(&mut self, additional: usize, shards: std::ops::Range<usize>) {
        self.ensure_shards();
        let each = per_shard(additional);
        for i in shards {
            self.maps[i].reserve(each);
            self.note_buckets(i);
        }
    }

    /// An index reserved as [`DedupIndex::reserve_shards`] would reserve it, whose
    /// tables' memory has been touched, shard by shard, until `stop` is set.
    ///
    /// Why: a fresh table's memory is zeroed by the kernel when first written, and at
    /// a restart with 9 M ids that zeroing (~285 MB) was more than half of the load's
    /// time on this kind of virtual machine (docs/benchmarks.md, twenty-second step).
    /// Done here, on a thread of its own while RocksDB replays its log on one core,
    /// the load then only inserts. Touching is inserting one fingerprint per 4 KB of
    /// buckets (fingerprints are their own hash, so one whose low bits are `n` lands
    /// in bucket `n` of an empty table) and clearing the table, which keeps its
    /// memory: if a table placed them otherwise, fewer pages would be touched early,
    /// nothing else.
    pub(crate) fn warmed(
        additional: usize,
        shards: std::ops::Range<usize>,
        stop: &std::sync::atomic::AtomicBool,
    ) -> DedupIndex {
        let mut index = DedupIndex::default();
        index.reserve_shards(additional, shards.clone());
        // 4 KB of 16-byte buckets.
        const BUCKETS_PER_PAGE: usize = 4096 / std::mem::size_of::<(u64, Locator)>();
        for i in shards {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let map = &mut index.maps[i];
            // The shard's own fingerprints (as a lookup would find them, were any
            // left), in bucket `n` for the `n` in their low bits.
            for bucket in (0..index.buckets[i]).step_by(BUCKETS_PER_PAGE) {
                map.insert(((i as u64) << 32) | bucket as u64, 0);
            }
            map.clear();
        }
        index
    }

    /// Whether the shards in `shards` have exactly the buckets a
    /// [`DedupIndex::reserve_shards`]`(additional, shards)` of a pristine index gives
    /// (an index warmed for a stale estimate of the ids is used only if it is the
    /// size the load would make: never more memory than without it).
    pub(crate) fn fits(&self, additional: usize, shards: std::ops::Range<usize>) -> bool {
        let each = per_shard(additional);
        // Room for them, in the smallest table that has it: half as many buckets
        // (filled to 7 in 8) would not.
        !self.maps.is_empty()
            && shards
                .into_iter()
                .all(|i| self.maps[i].capacity() >= each && self.buckets[i] / 2 * 7 / 8 < each)
    }

    /// Takes over what `other` holds, which must be fingerprints of `shards` only, none
    /// of which `self` holds anything in (checked: `false`, and nothing taken,
    /// otherwise). Why: a load fills the two halves of the shards on two threads, each
    /// in an index of its own, and joins them here without moving a bucket (a key's
    /// shard is fixed by its fingerprint, so the halves never share one).
    pub fn absorb(&mut self, mut other: DedupIndex, shards: std::ops::Range<usize>) -> bool {
        self.ensure_shards();
        other.ensure_shards();
        let outside = (0..SHARDS).filter(|i| !shards.contains(i));
        let disjoint = outside.clone().all(|i| other.maps[i].is_empty())
            && shards.clone().all(|i| self.maps[i].is_empty())
            && other.shared.keys().all(|fp| shards.contains(&shard(*fp)))
            && self.shared.keys().all(|fp| !shards.contains(&shard(*fp)));
        if !disjoint {
            return false;
        }
        for i in shards {
            std::mem::swap(&mut self.maps[i], &mut other.maps[i]);
            self.buckets[i] = self.buckets[i].max(other.buckets[i]);
        }
        self.shared.extend(other.shared);
        true
    }

    /// Right after an insert or a reserve, a map's capacity is its buckets' room.
    fn note_buckets(&mut self, i: usize) {
        self.buckets[i] = self.buckets[i].max(buckets(self.maps[i].capacity()));
    }

    /// How many locators the index holds (those of pages gone until a `retain`).
    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum::<usize>()
            + self.shared.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing was ever put. Only such an index is filled on two threads (see
    /// [`DedupIndex::absorb`]).
    pub fn is_pristine(&self) -> bool {
        self.maps.iter().all(HashMap::is_empty) && self.shared.is_empty()
    }

    /// Bytes of memory the index takes (by its buckets: 16 bytes and a control byte
    /// each for the maps).
    pub fn memory_bytes(&self) -> usize {
        self.buckets.iter().sum::<usize>() * (std::mem::size_of::<(u64, Locator)>() + 1)
            + buckets(self.shared.capacity()) * (std::mem::size_of::<(u64, Vec<Locator>)>() + 1)
            + self
                .shared
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<Locator>())
                .sum::<usize>()
    }

    /// Lets go of every locator whose page does not live (`page_lives(seq)` false):
    /// pages deleted once expired, or forgotten. Returns how many.
    pub fn retain(&mut self, page_lives: impl Fn(u64) -> bool) -> usize {
        let before = self.len();
        for map in &mut self.maps {
            map.retain(|_, l| page_lives(page_of(*l)));
        }
        self.shared.retain(|_, held| {
            held.retain(|l| page_lives(page_of(*l)));
            !held.is_empty()
        });
        before - self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::dedup_key;

    /// A key with the given fingerprint, told apart by `rest`.
    fn key_with(fingerprint: u64, rest: u8) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&fingerprint.to_be_bytes());
        k[15] = rest;
        k
    }

    fn all(c: Candidates<'_>) -> Vec<Locator> {
        c.collect()
    }

    #[test]
    fn a_locator_names_its_page_and_slot() {
        let l = locator(MAX_PAGE_SEQ, MAX_PAGE_ENTRIES - 1);
        assert_eq!(page_of(l), MAX_PAGE_SEQ);
        assert_eq!(slot_of(l), MAX_PAGE_ENTRIES - 1);
        assert_eq!((page_of(locator(7, 3)), slot_of(locator(7, 3))), (7, 3));
        assert_eq!(std::mem::size_of::<(u64, Locator)>(), 16);
    }

    #[test]
    fn a_key_is_found_at_its_locator_and_a_new_key_finds_nothing() {
        let mut r = DedupIndex::default();
        let (a, b) = (dedup_key("a"), dedup_key("b"));
        r.put(&a, locator(1, 0), |_| true);
        assert_eq!(all(r.candidates(&a)), vec![locator(1, 0)]);
        assert!(all(r.candidates(&b)).is_empty());
        assert_eq!(r.len(), 1);
        // A million ids: 2^21 buckets of 17 bytes.
        let mut big = DedupIndex::default();
        big.reserve(1_000_000);
        assert_eq!(big.memory_bytes(), (1 << 21) * 17);
    }

    #[test]
    fn a_second_locator_for_a_fingerprint_is_kept_while_the_first_page_lives() {
        let mut r = DedupIndex::default();
        let (a, b) = (key_with(42, 0), key_with(42, 1));
        r.put(&a, locator(1, 0), |_| true);
        r.put(&b, locator(2, 5), |_| true);
        // Both, newest first, for either key: the reader compares the whole key.
        assert_eq!(all(r.candidates(&a)), vec![locator(2, 5), locator(1, 0)]);
        assert_eq!(all(r.candidates(&key_with(42, 9))).len(), 2);
        assert_eq!(r.len(), 2);
        // A third, once page 1 is gone: its locator is dropped on the way.
        r.put(&a, locator(3, 0), |seq| seq != 1);
        assert_eq!(all(r.candidates(&a)), vec![locator(3, 0), locator(2, 5)]);
        // And retain drops the gone pages' locators everywhere.
        assert_eq!(r.retain(|seq| seq == 3), 1);
        assert_eq!(all(r.candidates(&b)), vec![locator(3, 0)]);
        assert_eq!(r.retain(|_| false), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn a_locator_of_a_page_gone_is_replaced_not_kept() {
        let mut r = DedupIndex::default();
        let a = dedup_key("a");
        r.put(&a, locator(1, 0), |_| true);
        r.put(&a, locator(9, 2), |seq| seq != 1);
        assert_eq!(all(r.candidates(&a)), vec![locator(9, 2)]);
        assert_eq!(r.len(), 1);
    }

    /// A key whose fingerprint falls in `shard`.
    fn key_in(shard: usize, low: u32, rest: u8) -> [u8; 16] {
        key_with(((shard as u64) << 32) | u64::from(low), rest)
    }

    #[test]
    fn a_warmed_index_is_empty_and_reserved_as_a_load_reserves() {
        let ids = 100_000;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut warm = DedupIndex::warmed(ids, UPPER_SHARDS, &stop);
        let mut plain = DedupIndex::default();
        plain.reserve_shards(ids, UPPER_SHARDS);
        // The touching fingerprints are gone; the room is the load's, not more.
        assert!(warm.is_pristine());
        assert_eq!(warm.memory_bytes(), plain.memory_bytes());
        assert!(warm.fits(ids, UPPER_SHARDS) && plain.fits(ids, UPPER_SHARDS));
        assert!(
            !warm.fits(ids, LOWER_SHARDS),
            "the other half was not reserved"
        );
        assert!(!warm.fits(4 * ids, UPPER_SHARDS) && !warm.fits(ids / 4, UPPER_SHARDS));
        // Fingerprints that are where the touching ones were answer as usual.
        let k = key_in(12, 256, 0);
        warm.put(&k, locator(7, 1), |_| true);
        assert_eq!(all(warm.candidates(&k)), vec![locator(7, 1)]);
        assert!(all(warm.candidates(&key_in(12, 512, 0))).is_empty());
        assert_eq!(warm.len(), 1);
        // Stopped before the first shard: reserved all the same, nothing touched.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let stopped = DedupIndex::warmed(ids, UPPER_SHARDS, &stop);
        assert!(stopped.is_pristine() && stopped.fits(ids, UPPER_SHARDS));
    }

    #[test]
    fn two_halves_filled_apart_answer_as_one_index() {
        let (mut lower, mut upper) = (DedupIndex::default(), DedupIndex::default());
        let (a, b) = (key_in(3, 1, 0), key_in(12, 1, 0));
        let (a2, b2) = (key_in(3, 1, 1), key_in(12, 1, 1));
        for (k, l) in [(a, locator(1, 0)), (a2, locator(2, 0))] {
            assert!(!in_upper_shards(&k));
            lower.put(&k, l, |_| true);
        }
        for (k, l) in [(b, locator(1, 1)), (b2, locator(2, 1))] {
            assert!(in_upper_shards(&k));
            upper.put(&k, l, |_| true);
        }
        lower.reserve_shards(1_000, LOWER_SHARDS);
        upper.reserve_shards(1_000, UPPER_SHARDS);
        let memory = lower.memory_bytes() + upper.memory_bytes();
        assert!(lower.absorb(upper, UPPER_SHARDS));
        assert_eq!(
            all(lower.candidates(&a)),
            vec![locator(2, 0), locator(1, 0)]
        );
        assert_eq!(
            all(lower.candidates(&b)),
            vec![locator(2, 1), locator(1, 1)]
        );
        assert!(all(lower.candidates(&key_in(12, 2, 0))).is_empty());
        assert_eq!(lower.len(), 4);
        assert!(lower.memory_bytes() <= memory);
        assert!(lower.memory_bytes() > 0);
    }

    #[test]
    fn halves_that_overlap_are_refused_and_nothing_is_taken() {
        let mut lower = DedupIndex::default();
        lower.put(&key_in(12, 1, 0), locator(1, 0), |_| true);
        let mut upper = DedupIndex::default();
        upper.put(&key_in(12, 2, 0), locator(1, 1), |_| true);
        assert!(!lower.absorb(upper, UPPER_SHARDS));
        assert_eq!(lower.len(), 1);
        assert!(all(lower.candidates(&key_in(12, 2, 0))).is_empty());
        let mut other = DedupIndex::default();
        other.put(&key_in(3, 2, 0), locator(1, 0), |_| true);
        let mut empty = DedupIndex::default();
        assert!(!empty.absorb(other, UPPER_SHARDS));
        assert!(empty.is_empty());
    }

    /// The memory reported is the tables' real size: it does not fall when locators go
    /// (a table never shrinks), and it is what the buckets take.
    #[test]
    fn memory_follows_the_tables_growth_not_their_entries() {
        let mut r = DedupIndex::default();
        for i in 0..100_000 {
            r.put(&dedup_key(&format!("k{i}")), locator(i / 1000, 0), |_| true);
        }
        let grown = r.memory_bytes();
        let buckets: usize = r.maps.iter().map(|m| buckets(m.capacity())).sum();
        assert_eq!(grown, buckets * 17);
        assert_eq!(r.retain(|seq| seq >= 90), 90_000);
        assert_eq!(r.len(), 10_000);
        assert_eq!(r.memory_bytes(), grown);
    }
}
