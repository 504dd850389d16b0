//! [`ProbeTable`]: a hash table whose entries are small `Copy` values holding their own
//! key, in one flat array (open addressing, linear probing), so that finding an entry
//! costs one cache miss where a `hashbrown` table costs two, and so that the miss can
//! be taken early, for many keys at once ([`ProbeTable::touch`]).
//!
//! Why: `crate::resident_values` looks up ~6 M random keys twice a payment at 10 M
//! payments (the loop reads a card and a customer, the commit thread puts them back),
//! and nine in ten are hits. In `hashbrown` a hit loads its control bytes, then its
//! bucket, which lives in another cache line: two misses, the second waiting for the
//! first, and nothing to load ahead since the bucket's address is private. Here an
//! entry holds its key and value together, at an address the key alone decides.
//! Measured with `cargo bench -p paydedup-processor --bench resident_values --
//! --bench` (5.9 M keys): a batched lookup 104–116 ns instead of 170–190
//! (docs/benchmarks.md, twenty-ninth step).
//!
//! Not for lookups that mostly miss: `hashbrown` answers a miss from its control
//! bytes alone (a byte a bucket), where this table reads a whole slot and more until
//! an empty one. The dedup index (nine in ten ids new) stays on `hashbrown` for that
//! (`cargo bench -p paydedup-processor --bench dedup_index`, 9 M ids: 45–57 ns a lookup
//! against 82 with its 16-byte slots here).
//!
//! **The invariant: an entry sits at its home position or after it, with no empty
//! slot between** (linear probing). A lookup walks from the home position to its key
//! or to an empty slot; a removal shifts the entries after it back (no tombstones), so
//! the invariant holds after it too. The table is at most three quarters full.

/// What a [`ProbeTable`] holds: an entry that carries its key, and one value that is
/// no entry (the empty slot).
pub trait Probed: Copy + PartialEq {
    type Key: Copy + PartialEq;
    /// The empty slot: no entry ever equals it.
    const EMPTY: Self;
    fn key(self) -> Self::Key;
    /// 64 well-spread bits of `key`: its home position is their top bits.
    fn spread(key: Self::Key) -> u64;
}

/// Fewest slots a table that holds anything has.
const MIN_SLOTS: usize = 16;

pub struct ProbeTable<S> {
    /// Empty, or a power of two of slots.
    slots: Vec<S>,
    len: usize,
}

impl<S> Default for ProbeTable<S> {
    fn default() -> Self {
        ProbeTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<S: Probed> ProbeTable<S> {
    /// The home position of `key` in a table of `slots` slots (a power of two).
    fn home_in(slots: usize, key: S::Key) -> usize {
        let bits = slots.trailing_zeros();
        (S::spread(key) >> (64 - bits)) as usize
    }

    fn home(&self, key: S::Key) -> usize {
        Self::home_in(self.slots.len(), key)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where `key`'s entry is, or `None`.
    fn position(&self, key: S::Key) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s == S::EMPTY {
                return None;
            }
            if s.key() == key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// `key`'s entry, if there is one.
    pub fn get(&self, key: S::Key) -> Option<S> {
        self.position(key).map(|i| self.slots[i])
    }

    /// The slot at `key`'s home position, read only to bring it into the cache: a
    /// caller touches a batch's keys first, then looks them up (the loads of
    /// different keys are independent, so their misses overlap).
    pub fn touch(&self, key: S::Key) -> Option<S> {
        (!self.slots.is_empty()).then(|| self.slots[self.home(key)])
    }

    /// Puts `entry`, replacing the entry of its key if there is one.
    pub fn set(&mut self, entry: S) {
        debug_assert!(entry != S::EMPTY, "not an entry");
        if let Some(i) = self.position(entry.key()) {
            self.slots[i] = entry;
            return;
        }
        self.reserve(1);
        Self::place(&mut self.slots, entry);
        self.len += 1;
    }

    /// Puts an entry whose key is not in `slots` at the first empty slot from its home.
    fn place(slots: &mut [S], entry: S) {
        let mask = slots.len() - 1;
        let mut i = Self::home_in(slots.len(), entry.key());
        while slots[i] != S::EMPTY {
            i = (i + 1) & mask;
        }
        slots[i] = entry;
    }

    /// How many slots hold `entries` at most three quarters full.
    fn slots_for(entries: usize) -> usize {
        (entries.div_ceil(3) * 4).next_power_of_two().max(MIN_SLOTS)
    }

    /// Room for `additional` more entries without growing. Every slot of a new table
    /// is written (an empty slot is not zero), so its memory is touched here.
    pub fn reserve(&mut self, additional: usize) {
        if (self.len + additional) * 4 > self.slots.len() * 3 {
            self.rebuild(Self::slots_for(self.len + additional), |_| true);
        }
    }

    /// How many entries fit before the table grows.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// Places the entries `keep` keeps into a table of `slots` slots.
    fn rebuild(&mut self, slots: usize, mut keep: impl FnMut(S) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![S::EMPTY; slots]);
        self.len = 0;
        for s in old {
            if s != S::EMPTY && keep(s) {
                Self::place(&mut self.slots, s);
                self.len += 1;
            }
        }
    }

    /// Removes `key`'s entry and returns it.
    pub fn remove(&mut self, key: S::Key) -> Option<S> {
        let mut hole = self.position(key)?;
        let removed = self.slots[hole];
        let mask = self.mask();
        // Shift back each entry after the hole that may sit there: one whose home is
        // not after the hole (cyclically) up to its position.
        let mut j = (hole + 1) & mask;
        loop {
            let s = self.slots[j];
            if s == S::EMPTY {
                break;
            }
            let home = self.home(s.key());
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = S::EMPTY;
        self.len -= 1;
        Some(removed)
    }

    /// Keeps the entries `keep` keeps (a rebuild at the same size).
    pub fn retain(&mut self, keep: impl FnMut(S) -> bool) {
        if !self.slots.is_empty() {
            self.rebuild(self.slots.len(), keep);
        }
    }

    /// Replaces every entry by what `f` makes of it, which must keep its key, `chunk`
    /// slots at a time: `look` sees each chunk's entries before `f` replaces them (to
    /// bring what they point to into the cache at once, so that its misses overlap).
    pub fn update_chunked(
        &mut self,
        chunk: usize,
        mut look: impl FnMut(&mut dyn Iterator<Item = S>),
        mut f: impl FnMut(S) -> S,
    ) {
        for slots in self.slots.chunks_mut(chunk.max(1)) {
            look(&mut slots.iter().copied().filter(|s| *s != S::EMPTY));
            for s in slots.iter_mut().filter(|s| **s != S::EMPTY) {
                let new = f(*s);
                debug_assert!(new.key() == s.key(), "an update moved a key");
                *s = new;
            }
        }
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = S> + '_ {
        self.slots.iter().copied().filter(|s| *s != S::EMPTY)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table takes.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<S>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A test entry: a key and a value, `u32::MAX` as the key of the empty slot.
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct E(u32, u32);

    impl Probed for E {
        type Key = u32;
        const EMPTY: E = E(u32::MAX, 0);
        fn key(self) -> u32 {
            self.0
        }
        fn spread(key: u32) -> u64 {
            u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
    }

    /// A tiny deterministic generator (xorshift), so the test needs no crate.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    fn value(t: &ProbeTable<E>, key: u32) -> Option<u32> {
        t.get(key).map(|e| e.1)
    }

    /// The table agrees with a `HashMap` through random sets, updates and removals,
    /// over few keys (so probe runs wrap and shifts cross the array's end) and many.
    #[test]
    fn agrees_with_a_map_through_sets_and_removals() {
        for (keys, rounds) in [(40u64, 20_000), (5_000, 60_000)] {
            let mut next = rng(keys);
            let mut table = ProbeTable::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for round in 0..rounds {
                let k = (next() % keys) as u32;
                match next() % 3 {
                    0 => assert_eq!(
                        table.remove(k).map(|e: E| e.1),
                        model.remove(&k),
                        "round {round}"
                    ),
                    _ => {
                        let v = next() as u32;
                        table.set(E(k, v));
                        model.insert(k, v);
                    }
                }
                assert_eq!(table.len(), model.len());
                if round % 997 == 0 {
                    for k in 0..keys as u32 {
                        assert_eq!(value(&table, k), model.get(&k).copied(), "key {k}");
                    }
                }
            }
            let mut values: Vec<u32> = table.iter().map(|e| e.1).collect();
            let mut expected: Vec<u32> = model.values().copied().collect();
            values.sort_unstable();
            expected.sort_unstable();
            assert_eq!(values, expected);
            assert!(table.len() <= table.capacity(), "at most 3/4 full");
        }
    }

    #[test]
    fn keys_that_share_a_home_are_found_after_one_of_them_goes() {
        let mut table = ProbeTable::default();
        table.set(E(1, 10));
        // Keys whose home is 1's, in a 16-slot table (found by search, so the test
        // does not depend on the hash's constants).
        let same: Vec<u32> = (2..u32::MAX)
            .filter(|k| table.home(*k) == table.home(1))
            .take(3)
            .collect();
        for (i, k) in same.iter().enumerate() {
            table.set(E(*k, 20 + i as u32));
        }
        assert_eq!(table.remove(1), Some(E(1, 10)));
        for (i, k) in same.iter().enumerate() {
            assert_eq!(value(&table, *k), Some(20 + i as u32));
        }
        assert_eq!(table.get(1), None);
    }

    #[test]
    fn retain_update_and_reserve_keep_every_key_findable() {
        let mut table = ProbeTable::default();
        for k in 0..1000 {
            table.set(E(k, k * 2));
        }
        table.retain(|e| e.1 % 4 == 0);
        assert_eq!(table.len(), 500);
        let mut looked = Vec::new();
        table.update_chunked(
            7,
            |chunk| looked.extend(chunk.map(|e| e.0)),
            |e| E(e.0, e.1 + 1),
        );
        // Each entry seen once before its update, none that is not there.
        looked.sort_unstable();
        assert_eq!(looked, (0..1000).step_by(2).collect::<Vec<u32>>());
        for k in 0..1000 {
            let expected = (k % 2 == 0).then_some(k * 2 + 1);
            assert_eq!(value(&table, k), expected);
        }
        // Reserved room is room: no growth until it is used.
        table.reserve(10_000);
        let memory = table.memory_bytes();
        assert!(table.capacity() >= 10_500);
        for k in 1000..11_000 {
            table.set(E(k, k));
        }
        assert_eq!(table.memory_bytes(), memory);
        assert_eq!(value(&table, 10_999), Some(10_999));
        assert_eq!(table.touch(3).is_some(), !table.is_empty());
    }
}
