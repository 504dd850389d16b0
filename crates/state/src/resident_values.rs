//! [`ResidentValues`]: a column family's keys *and values*, kept in memory, so that a
//! lookup never reaches RocksDB, whether the store holds the key or not.
//!
//! The fraud state is read for every valid payment (its card and its customer), and at
//! 10 M payments most of those reads are hits spread over ~6 M random keys: a set of
//! keys alone (what an earlier build kept) spares the misses only, and the hits cost a
//! `multi_get` through the block cache, and often a block read and decompression.
//!
//! **The invariant: for every key, [`ResidentValues::get`] answers what the store
//! holds, or [`Lookup::Ask`].** A held value is the last value a durable commit put
//! (for a key a fraud log page changed, the only copy RocksDB's lookups do not read:
//! see [`ResidentValues::put_held`]); an absent key is one the store does not hold.
//! `Ask` sends the lookup to RocksDB, which is right for every key no unfolded page
//! changed, and is the answer wherever memory cannot be sure:
//! - a key or value too long for an entry's header;
//! - a key deleted while the loader was still scanning: the loader's snapshot may hold
//!   the old value, which must not come back;
//! - once the memory budget was spent and a key was left out (see
//!   [`ResidentValues::bound`]), every key memory does not have.
//!
//! Two keys of one shard whose 32-bit tags are equal (a slot holds one key; the full
//! key is compared on every lookup, so a tag alone never answers) are both answered:
//! the slot keeps the key it had, the other is kept whole in the shard's `collided`
//! map, so a colliding pair costs no RocksDB read (by the birthday bound, ~130 of the
//! 5.9 M keys at 10 M payments collide, and each would be read from RocksDB at every
//! lookup). When memory holds every stored key, a key whose tag a slot gives another
//! key, and which is not among the collided ones, is not stored: `Absent`, not `Ask`.
//!
//! Expiry: a sweep drops values the TTL expired, by the compaction filter's rule, and
//! the store reads an expired value as absent wherever it finds it, so memory and
//! RocksDB never disagree on what a lookup returns.
//!
//! **Layout.** Entries live in 64 shards. A shard is an arena of fixed-size chunks
//! holding `[key length][value length: 2 bytes][key][value]`, and a table of 8-byte
//! slots, each a 32-bit tag of the key's fingerprint and the entry's offset, in one
//! flat array ([`crate::probe_table`]: a lookup misses the cache once, not twice). At
//! 10 M payments (5.9 M cards and customers) that took 455 MB, ~77 bytes a key
//! (measured; 454 MB with the `hashbrown` table before);
//! a heap allocation per key and value would take ~130 (estimated from the
//! allocator's size classes, not measured). A value rewritten at the same length
//! is overwritten in place; otherwise it is appended and the old entry becomes
//! garbage, and a shard whose garbage passes an eighth of its arena is rewritten.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::expiry::is_expired;
use crate::keys::value_time;
use crate::probe_table::{ProbeTable, Probed};

/// The offset that marks a slot "ask RocksDB" (see the module docs).
const ASK: u32 = u32::MAX;
const SHARDS: usize = 64;
const HEADER: usize = 3;
/// A shard's arena is rewritten once its garbage is at least this many bytes and an
/// eighth of the arena (small in tests, so they reach it).
const MIN_COMPACT_GARBAGE: usize = if cfg!(test) { 512 } else { 64 * 1024 };

/// Slots whose entries a compaction reads together before it copies them (a few
/// cache lines of slots; at the table's load, about a dozen entries).
const COMPACT_CHUNK_SLOTS: usize = 16;

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

/// A table slot: a 32-bit tag of the key's fingerprint (its low half; the shard comes
/// from the high half) and the entry's offset in the arena, in one `u64` (8 bytes a
/// slot, where a `hashbrown` map of fingerprint to offset took 16 and a control byte).
#[derive(Clone, Copy, PartialEq)]
struct Slot(u64);

impl Slot {
    fn new(tag: u32, offset: u32) -> Slot {
        Slot((u64::from(tag) << 32) | u64::from(offset))
    }
    fn offset(self) -> u32 {
        self.0 as u32
    }
}

impl Probed for Slot {
    type Key = u32;
    /// A tag half of all ones: [`tag`] never returns `u32::MAX`.
    const EMPTY: Slot = Slot(u64::MAX);
    fn key(self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn spread(tag: u32) -> u64 {
        u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// The tag of a fingerprint's low half: itself, but for `u32::MAX` (the empty slot's),
/// which becomes `u32::MAX - 1`. Two keys whose tags are equal are told apart by their
/// whole keys whatever their fingerprints, so merging two values costs nothing else.
fn tag(low: u32) -> u32 {
    low.min(u32::MAX - 1)
}

#[derive(Default)]
struct Shard {
    table: ProbeTable<Slot>,
    arena: Arena,
    /// Arena bytes no table slot points to.
    garbage: usize,
    /// How many times the arena was rewritten.
    compactions: u64,
    /// Keys whose tag a slot gave another key when they were added, kept whole (see
    /// the module docs). A key stays here until it is deleted or swept, even once its
    /// slot is freed, given to a third key or marked `ASK`; lookups look here whenever
    /// the slot does not hold them. A key is in the table or here, never both.
    collided: BTreeMap<Box<[u8]>, Box<[u8]>>,
}

/// An arena's chunk size (a power of two): every chunk is allocated once at this size
/// and never grows, so a growing arena never copies itself into a bigger buffer (with
/// one growing buffer per shard, the old and new copies raised the 10 M run's peak RSS
/// by ~100 MiB). Small in tests, so they span many chunks.
const CHUNK_BITS: u32 = if cfg!(test) { 12 } else { 18 };
const CHUNK: usize = 1 << CHUNK_BITS;

/// Entries appended to fixed-size chunks; an offset is the chunk's index and the
/// position in it. An entry never spans two chunks.
#[derive(Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
    /// Bytes of entries appended (the unused tail of a full chunk not counted).
    len: usize,
}

impl Arena {
    fn split(offset: u32) -> (usize, usize) {
        (
            (offset >> CHUNK_BITS) as usize,
            offset as usize & (CHUNK - 1),
        )
    }

    /// The entry's (key, value) at `offset`.
    fn entry(&self, offset: u32) -> (&[u8], &[u8]) {
        let (chunk, at) = Arena::split(offset);
        let bytes = &self.chunks[chunk][at..];
        let klen = bytes[0] as usize;
        let vlen = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
        let key = &bytes[HEADER..HEADER + klen];
        let value = &bytes[HEADER + klen..HEADER + klen + vlen];
        (key, value)
    }

    /// The first byte of the entry at `offset`.
    fn first_byte(&self, offset: u32) -> u8 {
        let (chunk, at) = Arena::split(offset);
        self.chunks[chunk][at]
    }

    fn entry_len(&self, offset: u32) -> usize {
        let (k, v) = self.entry(offset);
        HEADER + k.len() + v.len()
    }

    /// The value bytes of the entry at `offset`, to overwrite at the same length.
    fn value_mut(&mut self, offset: u32) -> &mut [u8] {
        let (chunk, at) = Arena::split(offset);
        let bytes = &mut self.chunks[chunk][at..];
        let klen = bytes[0] as usize;
        let vlen = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
        &mut bytes[HEADER + klen..HEADER + klen + vlen]
    }

    /// Appends an entry (which must fit a chunk) and returns its offset; `None` once
    /// the chunk indexes would pass a `u32` offset.
    fn append(&mut self, key: &[u8], value: &[u8]) -> Option<u32> {
        let need = HEADER + key.len() + value.len();
        let room = self.chunks.last().map_or(0, |c| CHUNK - c.len());
        if room < need {
            if self.chunks.len() >= 1 << (32 - CHUNK_BITS) {
                return None;
            }
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let offset = ((index as u32) << CHUNK_BITS) | chunk.len() as u32;
        chunk.push(key.len() as u8);
        chunk.extend_from_slice(&(value.len() as u16).to_le_bytes());
        chunk.extend_from_slice(key);
        chunk.extend_from_slice(value);
        self.len += need;
        Some(offset)
    }

    fn memory_bytes(&self) -> usize {
        self.chunks.len() * CHUNK
    }
}

/// Whether `key` and `value` fit an entry's header and a chunk: memory can hold them.
/// (Stricter than a fraud log page's limits, which the store checks it implies.)
pub fn fits(key: &[u8], value: &[u8]) -> bool {
    key.len() <= usize::from(u8::MAX)
        && value.len() <= usize::from(u16::MAX)
        && HEADER + key.len() + value.len() <= CHUNK
}

impl Shard {
    /// The offset in the slot tagged `tag`, if there is one.
    fn offset(&self, tag: u32) -> Option<u32> {
        self.table.get(tag).map(Slot::offset)
    }

    /// Points the slot tagged `tag` at `offset`, adding the slot if there is none.
    fn set(&mut self, tag: u32, offset: u32) {
        self.table.set(Slot::new(tag, offset));
    }

    /// Appends an entry and points the slot tagged `tag` at it.
    fn add(&mut self, tag: u32, key: &[u8], value: &[u8]) {
        let offset = self.arena.append(key, value).unwrap_or(ASK);
        self.set(tag, offset);
    }

    /// Makes the slot tagged `tag` an `ASK` marker, letting go of any entry there.
    fn mark_ask(&mut self, tag: u32) {
        match self.offset(tag) {
            Some(ASK) => {}
            Some(offset) => {
                self.garbage += self.arena.entry_len(offset);
                self.set(tag, ASK);
            }
            None => self.set(tag, ASK),
        }
    }

    /// Removes the slot tagged `tag`.
    fn remove(&mut self, tag: u32) {
        if let Some(offset) = self
            .table
            .remove(tag)
            .map(Slot::offset)
            .filter(|o| *o != ASK)
        {
            self.garbage += self.arena.entry_len(offset);
        }
    }

    /// Rewrites the arena without its garbage once that is an eighth of it.
    ///
    /// The live entries are copied in slot order, which is random in the old arena: a
    /// cache miss each, one after another (the next copy's place depends on the last
    /// one's length). So a chunk of slots' entries are read first, together, their
    /// misses overlapping, and then copied from the cache.
    fn compact_if_due(&mut self) {
        if self.garbage < MIN_COMPACT_GARBAGE || self.garbage * 8 < self.arena.len {
            return;
        }
        let mut arena = Arena::default();
        let old = &self.arena;
        let look = |slots: &mut dyn Iterator<Item = Slot>| {
            let mut seen = 0u8;
            for slot in slots.filter(|s| s.offset() != ASK) {
                seen ^= old.first_byte(slot.offset());
            }
            std::hint::black_box(seen);
        };
        self.table
            .update_chunked(COMPACT_CHUNK_SLOTS, look, |slot| {
                if slot.offset() == ASK {
                    return slot;
                }
                let (k, v) = old.entry(slot.offset());
                // The live entries fitted the old arena's offsets, so they fit the new one.
                Slot::new(slot.key(), arena.append(k, v).unwrap_or(ASK))
            });
        self.arena = arena;
        self.garbage = 0;
        self.compactions += 1;
    }
}

/// Whether a key memory does not hold yet may be added (see `ResidentValues::bound`).
struct NewKeys<'a> {
    full: bool,
    complete: &'a mut bool,
}

impl NewKeys<'_> {
    /// Adds the key to `shard`, unless the budget is spent.
    fn add(self, shard: &mut Shard, tag: u32, key: &[u8], value: &[u8]) {
        if self.full {
            *self.complete = false;
        } else {
            shard.add(tag, key, value);
        }
    }

    /// Adds the key to `shard`'s collided keys, unless the budget is spent.
    fn add_collided(self, shard: &mut Shard, key: &[u8], value: &[u8]) {
        if self.full {
            *self.complete = false;
        } else {
            shard.collided.insert(key.into(), value.into());
        }
    }
}

/// See the module docs.
pub struct ResidentValues {
    shards: Vec<Shard>,
    /// A key's fingerprint: `xxh3_64`, or a test's deliberately colliding hash.
    fingerprint: fn(&[u8]) -> u64,
    /// Set (by [`ResidentValues::bound`]) while memory is over its budget: keys not
    /// already held are then not added.
    full: bool,
    /// Whether every key the store holds is here. Once a key was not added (the budget
    /// was spent), a key memory does not have may still be stored: [`Lookup::Absent`]
    /// becomes [`Lookup::Ask`], for good (until the store is opened again).
    complete: bool,
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
            full: false,
            complete: true,
        }
    }

    /// Checks memory against `budget_bytes`: over it, keys not already held stop being
    /// added (see `complete`). Called once per commit, so memory passes the budget by at
    /// most one batch's new keys. Returns whether memory still holds every stored key.
    pub fn bound(&mut self, budget_bytes: usize) -> bool {
        self.full = self.memory_bytes() >= budget_bytes;
        self.complete
    }

    /// Whether memory was over its budget at the last [`ResidentValues::bound`]: new
    /// keys are then not added (except by [`ResidentValues::put_held`]).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Whether memory holds every key the store holds (see `complete`).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The tag of `key` and its shard: the fingerprint's high half picks the shard,
    /// its low half is the tag within it.
    fn locate(&mut self, key: &[u8]) -> (u32, &mut Shard) {
        let (tag, shard, _) = self.locate_new(key);
        (tag, shard)
    }

    /// As [`ResidentValues::locate`], with what adding a new key needs.
    fn locate_new(&mut self, key: &[u8]) -> (u32, &mut Shard, NewKeys<'_>) {
        let (shard, tag) = self.shard_and_tag(key);
        let new = NewKeys {
            full: self.full,
            complete: &mut self.complete,
        };
        (tag, &mut self.shards[shard], new)
    }

    /// The shard of `key` (its fingerprint's high half) and its tag there (the low half).
    fn shard_and_tag(&self, key: &[u8]) -> (usize, u32) {
        let fingerprint = (self.fingerprint)(key);
        let shard = (fingerprint >> 32) as usize % SHARDS;
        (shard, tag(fingerprint as u32))
    }

    /// What memory knows of `key`.
    pub fn get(&self, key: &[u8]) -> Lookup<'_> {
        let (shard, slot) = self.slot(key);
        self.answer(&self.shards[shard], key, slot)
    }

    /// What memory knows of each of `keys`: [`ResidentValues::get`]'s answers, read in
    /// passes over the batch so that the cache misses of different keys overlap.
    ///
    /// Why: the values are hundreds of MB of random keys, so each lookup misses the
    /// cache twice, on its table slot and then on its entry in the arena, the second
    /// waiting for the first. One key after another, the CPU overlaps little of that.
    /// Here one pass touches every key's table word, the next finds every key's slot
    /// (from the cache), the next touches every entry's first byte (independent loads
    /// again), and the last compares keys and answers, from the cache.
    pub fn get_many<'a, K: AsRef<[u8]>>(&'a self, keys: &[K]) -> Vec<Lookup<'a>> {
        let slots = self.slots(keys.iter().map(AsRef::as_ref));
        self.touch(&slots);
        keys.iter()
            .zip(slots)
            .map(|(k, (shard, slot))| self.answer(&self.shards[shard], k.as_ref(), slot))
            .collect()
    }

    /// Brings into the cache what a put or delete of each of `keys` reads first (its
    /// table slot, its entry), for keys a commit applies right after. Why: the commit
    /// thread's puts missed the cache twice a key, one key after another (~4 s of a
    /// 10 M run's commit thread); here the loads of different keys are independent, so
    /// their misses overlap, as in [`ResidentValues::get_many`].
    pub fn prefetch<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let slots = self.slots(keys);
        self.touch(&slots);
    }

    /// The shard of `key` and the offset its tag's slot holds, if any.
    fn slot(&self, key: &[u8]) -> (usize, Option<u32>) {
        let (shard, tag) = self.shard_and_tag(key);
        (shard, self.shards[shard].offset(tag))
    }

    /// [`ResidentValues::slot`] of each of `keys`, in two passes: the first reads every
    /// key's table word (independent loads, whose misses overlap), the second finds the
    /// slots in what the first brought into the cache.
    fn slots<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Vec<(usize, Option<u32>)> {
        let located: Vec<(usize, u32)> = keys.map(|k| self.shard_and_tag(k)).collect();
        let mut seen = 0u64;
        for (shard, tag) in &located {
            seen ^= self.shards[*shard].table.touch(*tag).map_or(0, |s| s.0);
        }
        std::hint::black_box(seen);
        located
            .into_iter()
            .map(|(shard, tag)| (shard, self.shards[shard].offset(tag)))
            .collect()
    }

    /// Reads the first byte of every entry `slots` point to (the read itself is the
    /// point: the loads are independent, so their misses overlap).
    fn touch(&self, slots: &[(usize, Option<u32>)]) {
        let mut seen = 0u8;
        for (shard, slot) in slots {
            if let Some(offset) = slot.filter(|o| *o != ASK) {
                seen ^= self.shards[*shard].arena.first_byte(offset);
            }
        }
        std::hint::black_box(seen);
    }

    /// The answer for `key`, whose tag's slot in `shard` holds `slot`.
    fn answer<'a>(&'a self, shard: &'a Shard, key: &[u8], slot: Option<u32>) -> Lookup<'a> {
        if let Some(offset) = slot.filter(|o| *o != ASK) {
            let (k, v) = shard.arena.entry(offset);
            if k == key {
                return Lookup::Held(v);
            }
        }
        // Not in the slot for its tag: among the collided keys, or not held.
        if let Some(v) = shard.collided.get(key) {
            return Lookup::Held(v);
        }
        match slot {
            Some(ASK) => Lookup::Ask,
            _ if self.complete => Lookup::Absent,
            _ => Lookup::Ask,
        }
    }

    /// A durable commit put `key` = `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.put_with(key, value, false);
    }

    /// A durable commit put `key` = `value`, and memory must hold it whatever the
    /// budget and whatever else shares its tag: the only copy outside memory is a page
    /// of the fraud log, which RocksDB's lookups do not read (`store::fraud_log`). A
    /// key whose tag's slot is `ASK` is held whole beside the slot (in `collided`, which
    /// every lookup checks before the slot's `ASK`). The caller checked that it fits
    /// (`fraud_log_page::fits`; a longer one is left to RocksDB as by `put`).
    pub fn put_held(&mut self, key: &[u8], value: &[u8]) {
        self.put_with(key, value, true);
    }

    fn put_with(&mut self, key: &[u8], value: &[u8], held: bool) {
        let (tag, shard, mut new) = self.locate_new(key);
        if held {
            new.full = false;
        }
        if !fits(key, value) {
            shard.collided.remove(key);
            shard.mark_ask(tag);
            return;
        }
        if let Some(v) = shard.collided.get_mut(key) {
            *v = value.into();
            return;
        }
        match shard.offset(tag) {
            Some(ASK) if held => new.add_collided(shard, key, value),
            Some(ASK) => {}
            Some(offset) => {
                let (k, v) = shard.arena.entry(offset);
                if k != key {
                    // Two keys, one tag: the slot keeps its key.
                    new.add_collided(shard, key, value);
                } else if v.len() == value.len() {
                    shard.arena.value_mut(offset).copy_from_slice(value);
                } else {
                    shard.garbage += HEADER + k.len() + v.len();
                    shard.add(tag, key, value);
                    shard.compact_if_due();
                }
            }
            None => new.add(shard, tag, key, value),
        }
    }

    /// A durable commit deleted `key`. While the loader is still scanning
    /// (`loading`), its snapshot may hold the old value: the key is then left to RocksDB
    /// (see [`ResidentValues::load`]).
    pub fn delete(&mut self, key: &[u8], loading: bool) {
        let (tag, shard) = self.locate(key);
        let was_collided = shard.collided.remove(key).is_some();
        if loading {
            shard.mark_ask(tag);
            return;
        }
        if was_collided {
            return;
        }
        match shard.offset(tag) {
            None | Some(ASK) => {}
            Some(offset) => {
                if shard.arena.entry(offset).0 == key {
                    shard.remove(tag);
                    shard.compact_if_due();
                }
                // Another key with this tag is held: it stays.
            }
        }
    }

    /// The loader read `key` = `value` from a snapshot taken when the store opened.
    /// Anything a commit did to the key since is newer, so an existing entry wins; a
    /// different key with the same tag keeps its slot and this one goes beside it (if
    /// this entry is too long for the arena, the slot becomes `ASK` and the held key
    /// goes beside it instead).
    ///
    /// Once memory is incomplete, nothing is added: a commit's put that the budget
    /// left out leaves no trace here, and the snapshot's older value of that key must
    /// not come back when memory is under the budget again.
    pub fn load(&mut self, key: &[u8], value: &[u8]) {
        if !self.complete {
            return;
        }
        let (tag, shard, new) = self.locate_new(key);
        if shard.collided.contains_key(key) {
            return;
        }
        match shard.offset(tag) {
            Some(ASK) => {}
            Some(offset) => {
                let (k, v) = shard.arena.entry(offset);
                if k != key {
                    if fits(key, value) {
                        new.add_collided(shard, key, value);
                    } else {
                        // The held key stays held, beside the slot: it may be one a
                        // fraud log page changed, which RocksDB cannot answer for.
                        let held = (Box::<[u8]>::from(k), Box::<[u8]>::from(v));
                        shard.collided.insert(held.0, held.1);
                        shard.mark_ask(tag);
                    }
                }
            }
            None if !fits(key, value) => shard.mark_ask(tag),
            None => new.add(shard, tag, key, value),
        }
    }

    /// Lets go of every value whose time (its first 8 bytes, as the compaction filter
    /// reads it) is expired by `ttl` under `horizon`. Returns how many were let go.
    pub fn sweep(&mut self, ttl_micros: i64, horizon: i64) -> usize {
        let mut gone = 0;
        for shard in &mut self.shards {
            let arena = &shard.arena;
            let mut freed = 0;
            shard.table.retain(|slot| {
                let offset = slot.offset();
                if offset == ASK {
                    return true;
                }
                let (k, v) = arena.entry(offset);
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
            shard.collided.retain(|_, v| {
                let keep = !is_expired(value_time(v).unwrap_or(i64::MAX), ttl_micros, horizon);
                gone += usize::from(!keep);
                keep
            });
        }
        gone
    }

    /// How many keys are held (with their values) or marked `ASK`.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.table.len() + s.collided.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many slots are left to RocksDB (`ASK`): a walk over every slot.
    pub fn asks(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.table.iter().filter(|slot| slot.offset() == ASK).count())
            .sum()
    }

    /// Bytes of memory the arenas and tables take (by their capacities).
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let collided: usize = s.collided.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
                s.arena.memory_bytes() + s.table.memory_bytes() + collided
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fingerprint whose low half is all ones (the empty slot's tag half) is an
    /// ordinary key: its tag is the one below, for every path alike.
    #[test]
    fn a_fingerprint_whose_tag_would_be_the_empty_slots_is_an_ordinary_key() {
        fn all_ones(key: &[u8]) -> u64 {
            (u64::from(key.first().copied().unwrap_or(0)) << 32) | 0xFFFF_FFFF
        }
        let mut r = ResidentValues::with_fingerprint(all_ones);
        r.put(b"a", &value(1, b"x"));
        r.put(b"b", &value(2, b"y"));
        assert_eq!(r.get(b"a"), Lookup::Held(&value(1, b"x")));
        assert_eq!(r.get(b"b"), Lookup::Held(&value(2, b"y")));
        assert_eq!(r.get(b"c"), Lookup::Absent);
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        let one: Vec<Lookup<'_>> = keys.iter().map(|k| r.get(k)).collect();
        assert_eq!(r.get_many(&keys), one);
        r.delete(b"a", false);
        assert_eq!(r.get(b"a"), Lookup::Absent);
        assert_eq!(r.len(), 1);
        // An entry too long for memory marks its slot `ASK` (offset all ones too):
        // without the tag below all ones, that slot would be the empty one, and the
        // key would be answered `Absent` although the store holds it.
        let long = value(3, &vec![b'z'; 70_000]);
        r.put(b"d", &long);
        assert_eq!(r.get(b"d"), Lookup::Ask);
        assert_eq!(r.asks(), 1);
    }

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
    fn keys_sharing_a_fingerprint_are_both_answered() {
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"a1", b"one");
        r.put(b"a2", b"two");
        r.put(b"a3", b"three");
        assert_eq!(r.get(b"a1"), Lookup::Held(b"one"));
        assert_eq!(r.get(b"a2"), Lookup::Held(b"two"));
        r.put(b"a2", b"two, again");
        assert_eq!(r.get(b"a2"), Lookup::Held(b"two, again"));
        assert_eq!(r.len(), 3);
        // A delete of one leaves the others.
        r.delete(b"a1", false);
        assert_eq!(r.get(b"a1"), Lookup::Absent);
        assert_eq!(r.get(b"a2"), Lookup::Held(b"two, again"));
        r.delete(b"a2", false);
        assert_eq!(r.get(b"a2"), Lookup::Absent);
        assert_eq!(r.get(b"a3"), Lookup::Held(b"three"));
        // The slot is free again; the collided key is still found.
        r.put(b"a4", b"four");
        assert_eq!(r.get(b"a3"), Lookup::Held(b"three"));
        assert_eq!(r.get(b"a4"), Lookup::Held(b"four"));
        // A key never put, whose fingerprint another key holds, is absent.
        assert_eq!(r.get(b"a9"), Lookup::Absent);
        assert_eq!(r.asks(), 0);
        // Swept like the rest.
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"x1", &value(10, b"a"));
        r.put(b"x2", &value(10, b"b"));
        assert_eq!(r.sweep(5, 16), 2);
        assert!(r.is_empty());
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
        // A loaded key colliding with a committed one is kept beside it; a collided
        // key committed before the loader reads it keeps the committed value.
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"x1", b"new");
        r.put(b"x3", b"new");
        r.load(b"x2", b"old");
        r.load(b"x3", b"old");
        assert_eq!(r.get(b"x1"), Lookup::Held(b"new"));
        assert_eq!(r.get(b"x2"), Lookup::Held(b"old"));
        assert_eq!(r.get(b"x3"), Lookup::Held(b"new"));
        // Deleted while loading, a collided key is left to the store.
        r.delete(b"x2", true);
        assert_eq!(r.get(b"x2"), Lookup::Ask);
        r.load(b"x2", b"old");
        assert_eq!(r.get(b"x2"), Lookup::Ask);
    }

    /// Past its budget, memory keeps serving and updating what it holds, stops adding
    /// keys, and from then on sends a key it does not have to RocksDB (it may be stored).
    #[test]
    fn past_its_budget_memory_stops_adding_keys_and_asks_for_the_rest() {
        let mut r = ResidentValues::default();
        r.put(b"held", b"1");
        assert!(r.bound(usize::MAX));
        assert_eq!(r.get(b"never-put"), Lookup::Absent);
        // Over the budget (any memory at all is over a budget of 0 bytes).
        assert!(r.bound(0));
        r.put(b"held", b"2");
        r.put(b"new", b"x");
        r.load(b"loaded", b"y");
        assert_eq!(r.get(b"held"), Lookup::Held(b"2"));
        assert_eq!(r.get(b"new"), Lookup::Ask);
        assert_eq!(r.get(b"loaded"), Lookup::Ask);
        assert_eq!(r.get(b"never-put"), Lookup::Ask);
        // Under the budget again, keys are added again, but a key that was left out may
        // still be stored: "absent" is never answered again.
        assert!(!r.bound(usize::MAX));
        r.put(b"later", b"z");
        assert_eq!(r.get(b"later"), Lookup::Held(b"z"));
        assert_eq!(r.get(b"never-put"), Lookup::Ask);
    }

    /// A commit's put the budget left out, then memory under the budget again while
    /// the loader still scans: the snapshot's older value must not be answered.
    #[test]
    fn a_put_left_out_over_budget_never_comes_back_older_from_the_loader() {
        let mut r = ResidentValues::default();
        assert!(r.bound(0));
        r.put(b"k", b"new");
        assert!(!r.bound(usize::MAX));
        r.load(b"k", b"old");
        assert_eq!(r.get(b"k"), Lookup::Ask);
        // The same through a collided key.
        let mut r = ResidentValues::with_fingerprint(colliding);
        r.put(b"x1", b"a");
        assert!(r.bound(0));
        r.put(b"x2", b"new");
        assert!(!r.bound(usize::MAX));
        r.load(b"x2", b"old");
        assert_eq!(r.get(b"x2"), Lookup::Ask);
        assert_eq!(r.get(b"x1"), Lookup::Held(b"a"));
    }

    /// A fraud log page's key has no other copy RocksDB reads: held past the budget,
    /// beside a slot that asks, and kept when the loader marks its slot as asking.
    #[test]
    fn a_held_put_is_answered_whatever_the_budget_and_the_slot() {
        let mut r = ResidentValues::with_fingerprint(colliding);
        assert!(r.bound(0));
        r.put_held(b"p1", b"paged");
        assert_eq!(r.get(b"p1"), Lookup::Held(b"paged"));
        assert!(r.is_complete(), "nothing was left out");
        // A key too long for memory made its tag's slot ask; a held put of another
        // key with that tag is answered beside it, and the long key still asks.
        let long = [b"q".as_slice(), &[0u8; 300]].concat();
        r.put(&long, b"v");
        r.put_held(b"q1", b"paged");
        assert_eq!(r.get(b"q1"), Lookup::Held(b"paged"));
        assert_eq!(r.get(&long), Lookup::Ask);
        // The loader reads a too-long entry whose tag a held key's slot has: the slot
        // asks for the long key, the held key moves beside it.
        r.put_held(b"s1", b"paged");
        r.load(&[b"s".as_slice(), &[0u8; 300]].concat(), b"stored");
        assert_eq!(r.get(b"s1"), Lookup::Held(b"paged"));
        assert_eq!(r.get(&[b"s".as_slice(), &[0u8; 300]].concat()), Lookup::Ask);
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
        // The batched lookup answers exactly as one key at a time.
        let keys: Vec<[u8; 2]> = (0..4_000u16).map(u16::to_be_bytes).collect();
        let one_by_one: Vec<Lookup<'_>> = keys.iter().map(|k| r.get(k)).collect();
        assert_eq!(r.get_many(&keys), one_by_one);
        // Collisions and deletions while loading are few: most keys are answered.
        assert!(r.asks() < 200, "{} asks", r.asks());
        // The arenas were rewritten along the way (offsets moved under the table).
        assert!(r.shards.iter().all(|s| s.compactions > 0));
    }
}
