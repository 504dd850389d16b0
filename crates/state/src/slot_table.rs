//! [`SlotTable`]: a map from a 32-bit tag to a 32-bit offset, each entry one `u64`
//! word in one flat array (open addressing, linear probing), so that finding an entry
//! costs one cache miss where a `hashbrown` table costs two, and so that the miss can
//! be taken early, for many keys at once ([`SlotTable::touch`]).
//!
//! Why: [`crate::resident_values`] looks up ~6 M random keys twice a payment at 10 M
//! payments (the loop reads a card and a customer, the commit thread puts them back).
//! In `hashbrown` a lookup loads its control bytes, then its bucket, which lives in
//! another cache line: two misses, the second waiting for the first, and nothing to
//! load ahead since the bucket's address is private. Here a word holds the tag and the
//! offset together, at an address the tag alone decides.
//!
//! **The invariant: an entry sits at its home position or after it, with no empty
//! word between** (linear probing). A lookup walks from the home position to the tag
//! or to an empty word; a removal shifts the entries after it back (no tombstones), so
//! the invariant holds after it too. The table is at most three quarters full.
//!
//! The tag `u32::MAX` is not a tag (a word whose tag half is all ones is empty):
//! callers map their tags below it ([`tag`]).

/// An empty word: its tag half is `u32::MAX`, which [`tag`] never returns.
const EMPTY: u64 = u64::MAX;
/// Fewest words a table that holds anything has.
const MIN_WORDS: usize = 16;

/// The tag of a 32-bit hash: the hash itself, but for `u32::MAX` (the empty word's),
/// which becomes `u32::MAX - 1`. Two keys whose tags are equal are the caller's to
/// tell apart whatever their hashes, so merging two hash values costs nothing else.
pub fn tag(hash: u32) -> u32 {
    hash.min(u32::MAX - 1)
}

fn word(tag: u32, offset: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(offset)
}

fn tag_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn offset_of(word: u64) -> u32 {
    word as u32
}

#[derive(Default)]
pub struct SlotTable {
    /// Empty, or a power of two of words.
    words: Vec<u64>,
    len: usize,
}

impl SlotTable {
    /// The home position of `tag`: the top bits of a multiplicative hash (the tags of
    /// a test's colliding fingerprints are not spread; real ones are, either way).
    fn home(&self, tag: u32) -> usize {
        let bits = self.words.len().trailing_zeros();
        let spread = u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (spread >> (64 - bits)) as usize
    }

    fn mask(&self) -> usize {
        self.words.len() - 1
    }

    /// Where `tag`'s entry is, or `None`.
    fn position(&self, tag: u32) -> Option<usize> {
        debug_assert_ne!(tag, u32::MAX, "not a tag");
        if self.words.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            let w = self.words[i];
            if w == EMPTY {
                return None;
            }
            if tag_of(w) == tag {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The offset of `tag`'s entry, if there is one.
    pub fn get(&self, tag: u32) -> Option<u32> {
        self.position(tag).map(|i| offset_of(self.words[i]))
    }

    /// The word at `tag`'s home position, read only to bring it into the cache: a
    /// caller touches a batch's tags first, then looks them up (the loads of different
    /// tags are independent, so their misses overlap).
    pub fn touch(&self, tag: u32) -> u64 {
        if self.words.is_empty() {
            return 0;
        }
        self.words[self.home(tag)]
    }

    /// Points `tag` at `offset`, adding the entry if there is none.
    pub fn set(&mut self, tag: u32, offset: u32) {
        if let Some(i) = self.position(tag) {
            self.words[i] = word(tag, offset);
            return;
        }
        if (self.len + 1) * 4 > self.words.len() * 3 {
            self.grow();
        }
        self.place(word(tag, offset));
        self.len += 1;
    }

    /// Puts a word whose tag is not in the table at the first empty position from its
    /// home.
    fn place(&mut self, w: u64) {
        let mask = self.mask();
        let mut i = self.home(tag_of(w));
        while self.words[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.words[i] = w;
    }

    fn grow(&mut self) {
        let words = (self.words.len() * 2).max(MIN_WORDS);
        self.rebuild(words, |_| true);
    }

    /// Places the entries `keep` keeps into a table of `words` words.
    fn rebuild(&mut self, words: usize, mut keep: impl FnMut(u32) -> bool) {
        let old = std::mem::replace(&mut self.words, vec![EMPTY; words]);
        self.len = 0;
        for w in old {
            if w != EMPTY && keep(offset_of(w)) {
                self.place(w);
                self.len += 1;
            }
        }
    }

    /// Removes `tag`'s entry; returns its offset.
    pub fn remove(&mut self, tag: u32) -> Option<u32> {
        let mut hole = self.position(tag)?;
        let removed = offset_of(self.words[hole]);
        let mask = self.mask();
        // Shift back each entry after the hole that may sit there: one whose home is
        // not after the hole (cyclically) up to its position.
        let mut j = (hole + 1) & mask;
        loop {
            let w = self.words[j];
            if w == EMPTY {
                break;
            }
            let home = self.home(tag_of(w));
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.words[hole] = w;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.words[hole] = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    /// Keeps the entries whose offset `keep` keeps (a rebuild at the same size).
    pub fn retain(&mut self, keep: impl FnMut(u32) -> bool) {
        self.rebuild(self.words.len(), keep);
    }

    /// Replaces every entry's offset by what `f` makes of it (tags stay where they are).
    pub fn update_offsets(&mut self, mut f: impl FnMut(u32) -> u32) {
        for w in self.words.iter_mut().filter(|w| **w != EMPTY) {
            *w = word(tag_of(*w), f(offset_of(*w)));
        }
    }

    /// Every entry's offset, in no order.
    pub fn offsets(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .filter(|w| **w != EMPTY)
            .map(|w| offset_of(*w))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the table takes.
    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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

    /// The table agrees with a `HashMap` through random sets, updates and removals,
    /// over few tags (so probe runs wrap and shifts cross the array's end) and many.
    #[test]
    fn agrees_with_a_map_through_sets_and_removals() {
        for (tags, rounds) in [(40u64, 20_000), (5_000, 60_000)] {
            let mut next = rng(tags);
            let mut table = SlotTable::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for round in 0..rounds {
                let t = tag((next() % tags) as u32);
                match next() % 3 {
                    0 => assert_eq!(table.remove(t), model.remove(&t), "round {round}"),
                    _ => {
                        let offset = next() as u32;
                        table.set(t, offset);
                        model.insert(t, offset);
                    }
                }
                assert_eq!(table.len(), model.len());
                if round % 997 == 0 {
                    for t in 0..tags as u32 {
                        assert_eq!(table.get(t), model.get(&t).copied(), "tag {t}");
                    }
                }
            }
            let mut offsets: Vec<u32> = table.offsets().collect();
            let mut expected: Vec<u32> = model.values().copied().collect();
            offsets.sort_unstable();
            expected.sort_unstable();
            assert_eq!(offsets, expected);
            assert!(
                table.len() * 4 <= table.memory_bytes() / 8 * 3,
                "at most 3/4 full"
            );
        }
    }

    #[test]
    fn tags_that_share_a_home_are_found_after_one_of_them_goes() {
        let mut table = SlotTable::default();
        table.set(1, 10);
        // Tags whose home is 1's, in a 16-word table (found by search, so the test
        // does not depend on the hash's constants).
        let same: Vec<u32> = (2..u32::MAX)
            .filter(|t| table.home(*t) == table.home(1))
            .take(3)
            .collect();
        for (i, t) in same.iter().enumerate() {
            table.set(*t, 20 + i as u32);
        }
        assert_eq!(table.remove(1), Some(10));
        for (i, t) in same.iter().enumerate() {
            assert_eq!(table.get(*t), Some(20 + i as u32));
        }
        assert_eq!(table.get(1), None);
    }

    #[test]
    fn retain_and_update_offsets_keep_every_tag_findable() {
        let mut table = SlotTable::default();
        for t in 0..1000 {
            table.set(t, t * 2);
        }
        table.retain(|offset| offset % 4 == 0);
        assert_eq!(table.len(), 500);
        table.update_offsets(|offset| offset + 1);
        for t in 0..1000 {
            let expected = (t % 2 == 0).then_some(t * 2 + 1);
            assert_eq!(table.get(t), expected);
        }
        // The largest tag and the largest offset are ordinary.
        table.set(tag(u32::MAX), u32::MAX);
        assert_eq!(table.get(u32::MAX - 1), Some(u32::MAX));
        assert_eq!(table.touch(3), table.touch(3));
    }
}
