//! [`ResidentPages`]: the dedup pages the store holds, by sequence number, and the
//! bytes of the newest of them, so that a repeat (a retry, a replay) finds its first
//! version's entry in memory. The index (`crate::dedup_index`) only says where an entry
//! is; this says whether that page still lives and, for a recent one, what it holds.
//!
//! Why only the newest pages' bytes: entries are 52 bytes an id (9 M live ids: 470 MB,
//! all zeroed and filled before a restart's first batch), and nearly every repeat
//! comes soon after its first version (the peers' input: within 120 s; retries in
//! general within minutes). A repeat of an id whose page is older is read from
//! RocksDB (one page, by its key): slower, never wrong. The budget is memory the
//! operator sets (`StoreOptions::dedup_page_memory_bytes`); the pages kept are the
//! newest: commits' pages come in sequence order and the oldest is let go first, and
//! a restart's, kept after its open newest first, only while no newer page's bytes
//! have been let go (see [`ResidentPages::keep`]).
//!
//! **Invariant: a page is here exactly while the store holds it** (added once its
//! commit is durable, or at open; removed once the commit deleting it is durable, or
//! its partition forgotten). So a locator whose page is not here answers nothing.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::dedup_index::{page_of, slot_of, Locator};
use crate::dedup_page::entry_at;

/// One page: its partition (half of its RocksDB key) and, while kept, its bytes.
struct Page {
    partition: i32,
    bytes: Option<Box<[u8]>>,
}

/// What a locator points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEntry<'a> {
    /// The entry, in memory: its 16-byte key and its encoded [`DedupEntry`].
    Held { key: &'a [u8], entry: &'a [u8] },
    /// The page lives but its bytes are not kept: read it from RocksDB.
    Stored {
        partition: i32,
        seq: u64,
        slot: usize,
    },
    /// The page is gone (expired and deleted, or forgotten), or holds no such slot.
    Gone,
}

/// Page sequences hashed by one multiplication: a sweep asks whether the page of every
/// locator lives (~a million asks at the 10 M bench's retention, a sweep every 150 s of
/// event time), and SipHash, the default, took ~0.45 s of that run's commit thread
/// (perf samples of `hash_one` and SipHash's rounds, beside 0.7 s in `retain`).
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this keeps the trait total.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, seq: u64) {
        // Odd multiplier: distinct sequences stay distinct, and their entropy reaches
        // the high bits that pick a table's control bytes.
        self.0 = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub struct ResidentPages {
    pages: HashMap<u64, Page, BuildHasherDefault<SeqHasher>>,
    /// Sequences of the pages whose bytes are kept (a page removed leaves it too: a
    /// review found a queue of them growing by a sequence a page for good while the
    /// pages fitted the budget).
    kept: BTreeSet<u64>,
    kept_bytes: usize,
    budget: usize,
    /// The newest page whose bytes were let go for the budget: no older page's bytes
    /// may be kept after it (they would be kept while a newer page's are not).
    let_go_newest: Option<u64>,
}

impl Default for ResidentPages {
    /// No bytes kept: every repeat reads its page from RocksDB.
    fn default() -> ResidentPages {
        ResidentPages::new(0)
    }
}

impl ResidentPages {
    pub fn new(budget: usize) -> ResidentPages {
        ResidentPages {
            pages: HashMap::default(),
            kept: BTreeSet::new(),
            kept_bytes: 0,
            budget,
            let_go_newest: None,
        }
    }

    /// A page the store now holds (pages come in sequence order), with its bytes if
    /// they are to be kept (see [`ResidentPages::keep`]).
    pub fn add(&mut self, seq: u64, partition: i32, bytes: Option<Box<[u8]>>) {
        self.pages.insert(
            seq,
            Page {
                partition,
                bytes: None,
            },
        );
        if let Some(b) = bytes {
            self.keep(seq, b);
        }
    }

    /// Keeps the bytes of page `seq`, added before (a page not held keeps nothing);
    /// then the oldest kept ones go while the budget is exceeded.
    ///
    /// The pages kept are always the newest ones (a reader relies on it: a page whose
    /// bytes are not kept is older than every kept one): a page too large for the whole
    /// budget goes itself, but only after every older one. The bytes of a page older
    /// than one whose bytes were let go (a restart's pages, kept after the open while
    /// commits add newer ones) are refused, and those of a page older than every kept
    /// one are kept only while the budget has room for them.
    ///
    /// Returns whether the page's bytes are kept now.
    pub fn keep(&mut self, seq: u64, bytes: Box<[u8]>) -> bool {
        if self.let_go_newest.is_some_and(|newest| seq < newest) {
            return false;
        }
        let Some(page) = self.pages.get_mut(&seq) else {
            return false;
        };
        self.kept_bytes += bytes.len();
        if let Some(old) = page.bytes.replace(bytes) {
            self.kept_bytes -= old.len();
        }
        self.kept.insert(seq);
        while self.kept_bytes > self.budget {
            let Some(oldest) = self.kept.pop_first() else {
                break;
            };
            if let Some(b) = self.pages.get_mut(&oldest).and_then(|p| p.bytes.take()) {
                self.kept_bytes -= b.len();
            }
            self.let_go_newest = self.let_go_newest.max(Some(oldest));
        }
        self.kept.contains(&seq)
    }

    /// Keeps the bytes of a page read back after a restart's open (those come newest
    /// first, after commits' newer pages): returns whether an older one could still be
    /// kept, i.e. this one was kept, or is gone (expired or forgotten meanwhile) and
    /// tells nothing. Once one is refused, every older one would be too.
    pub fn keep_restored(&mut self, seq: u64, bytes: Box<[u8]>) -> bool {
        self.keep(seq, bytes) || !self.lives(seq)
    }

    /// The sequences of the pages whose bytes are kept, oldest first.
    #[cfg(test)]
    pub fn kept(&self) -> Vec<u64> {
        self.kept.iter().copied().collect()
    }

    /// The budget for kept bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The store deleted page `seq`.
    pub fn remove(&mut self, seq: u64) {
        if let Some(b) = self.pages.remove(&seq).and_then(|p| p.bytes) {
            self.kept_bytes -= b.len();
            self.kept.remove(&seq);
        }
    }

    /// The store forgot every page of `partitions`.
    pub fn forget(&mut self, partitions: &[i32]) {
        let gone: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| partitions.contains(&p.partition))
            .map(|(s, _)| *s)
            .collect();
        for seq in gone {
            self.remove(seq);
        }
    }

    pub fn lives(&self, seq: u64) -> bool {
        self.pages.contains_key(&seq)
    }

    /// What `loc` points at.
    pub fn entry(&self, loc: Locator) -> PageEntry<'_> {
        let (seq, slot) = (page_of(loc), slot_of(loc));
        match self.pages.get(&seq) {
            None => PageEntry::Gone,
            Some(Page { bytes: Some(b), .. }) => match entry_at(b, slot) {
                Some((key, entry)) => PageEntry::Held { key, entry },
                None => PageEntry::Gone,
            },
            Some(Page {
                partition,
                bytes: None,
            }) => PageEntry::Stored {
                partition: *partition,
                seq,
                slot,
            },
        }
    }

    /// How many pages the store holds.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Bytes of memory: the kept pages' bytes, the table of pages and (roughly) the
    /// set of kept sequences.
    pub fn memory_bytes(&self) -> usize {
        self.kept_bytes
            + self.pages.capacity() * (std::mem::size_of::<(u64, Page)>() + 1)
            + self.kept.len() * 2 * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup_index::locator;
    use crate::dedup_page;
    use crate::keys::{dedup_key, DedupEntry};

    fn entry(t: i64) -> DedupEntry {
        DedupEntry {
            event_time_micros: t,
            content_hash: 5,
            partition: 0,
            offset: t,
        }
    }

    fn page(ids: &[&str]) -> Box<[u8]> {
        let keys: Vec<_> = ids.iter().map(|i| dedup_key(i)).collect();
        let entries: Vec<_> = (0..ids.len()).map(|i| entry(i as i64)).collect();
        dedup_page::encode(keys.iter().zip(&entries)).into_boxed_slice()
    }

    #[test]
    fn a_locator_reads_its_entry_while_kept_and_its_page_key_once_let_go() {
        let one = page(&["a", "b"]);
        let size = one.len();
        // Room for two such pages.
        let mut p = ResidentPages::new(2 * size);
        p.add(1, 7, Some(one));
        p.add(2, 7, Some(page(&["c"])));
        let PageEntry::Held { key, entry: e } = p.entry(locator(1, 1)) else {
            panic!("page 1 is kept");
        };
        assert_eq!(key, dedup_key("b"));
        assert_eq!(DedupEntry::decode(e).unwrap(), entry(1));
        assert_eq!(p.entry(locator(1, 2)), PageEntry::Gone);
        // A third page: the oldest's bytes go, the page stays.
        p.add(3, 8, Some(page(&["d", "e"])));
        assert_eq!(
            p.entry(locator(1, 0)),
            PageEntry::Stored {
                partition: 7,
                seq: 1,
                slot: 0
            }
        );
        assert!(matches!(p.entry(locator(3, 0)), PageEntry::Held { .. }));
        assert!(p.memory_bytes() >= p.kept_bytes);
        assert!(p.kept_bytes <= 2 * size);
        // Deleted, forgotten: gone.
        p.remove(2);
        assert_eq!(p.entry(locator(2, 0)), PageEntry::Gone);
        assert!(!p.kept.contains(&2));
        p.forget(&[7]);
        assert_eq!(p.entry(locator(1, 0)), PageEntry::Gone);
        assert!(p.lives(3));
        assert_eq!(p.len(), 1);
        // A page larger than the whole budget lets the older kept ones go too: the
        // kept pages are always the newest.
        p.add(4, 8, Some(vec![0u8; 3 * size].into_boxed_slice()));
        assert!(matches!(p.entry(locator(3, 0)), PageEntry::Stored { .. }));
        assert_eq!(p.kept_bytes, 0);
        assert!(p.kept.is_empty());
    }

    /// A restart's pages are added without bytes, commits then add newer ones with
    /// theirs, and the restart's are kept afterwards, newest first: each is kept only
    /// while the budget has room, so the kept pages stay the newest.
    #[test]
    fn bytes_kept_after_newer_pages_are_kept_only_while_they_fit() {
        let one = page(&["a"]);
        let mut p = ResidentPages::new(3 * one.len());
        for seq in 1..=3 {
            p.add(seq, 0, None);
        }
        p.add(4, 0, Some(page(&["d"])));
        assert_eq!(p.kept(), vec![4]);
        assert!(p.keep(3, page(&["c"])));
        assert!(p.keep(2, page(&["b"])));
        // No room left: page 1 is older than every kept one, so its bytes go at once.
        assert!(!p.keep(1, page(&["a"])));
        assert_eq!(p.kept(), vec![2, 3, 4]);
        assert!(matches!(p.entry(locator(1, 0)), PageEntry::Stored { .. }));
        // A page gone meanwhile keeps nothing.
        p.remove(3);
        assert!(!p.keep(3, page(&["c"])));
        assert!(!p.lives(3));
        // ... and a restart's loader goes on past it to older pages.
        assert!(p.keep_restored(3, page(&["c"])));
        // A commit's newer page lets the oldest kept one go.
        p.add(5, 0, Some(page(&["e"])));
        p.add(6, 0, Some(page(&["f"])));
        assert_eq!(p.kept(), vec![4, 5, 6]);
    }

    /// A commit lets go of a restart's page the loader kept: an older one must not be
    /// kept after it, even with room, or a lookup would take the older page's entry for
    /// a key the newer one holds again (a review's finding).
    #[test]
    fn no_bytes_are_kept_older_than_a_page_whose_bytes_were_let_go() {
        let one = page(&["a"]).len();
        let three = page(&["a", "b", "c"]).len();
        let mut p = ResidentPages::new(2 * one + three);
        for seq in 1..=3 {
            p.add(seq, 0, None);
        }
        assert!(p.keep(3, page(&["c"])));
        assert!(p.keep(2, page(&["x", "y", "z"])));
        // A commit's page lets page 2 go (the oldest kept), leaving room for one more.
        p.add(4, 0, Some(page(&["d", "e", "f"])));
        assert_eq!(p.kept(), vec![3, 4]);
        assert!(!p.keep(1, page(&["a"])));
        // The loader stops there: page 1 lives, refused.
        assert!(!p.keep_restored(1, page(&["a"])));
        assert_eq!(p.kept(), vec![3, 4]);
        assert!(matches!(p.entry(locator(1, 0)), PageEntry::Stored { .. }));
    }
}
