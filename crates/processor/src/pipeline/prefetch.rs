//! The state one batch reads, fetched in bulk before its first record.
//!
//! Records are routed one at a time, but their state is read all at once: every dedup
//! key in one `multi_get`, every fraud key in another. [`BatchState`] then serves the
//! records in order, and what a record writes (a dedup entry, fraud history) is what a
//! later record of the same batch reads, exactly as if each had been committed on its
//! own. That is why batch boundaries never change the output.
//!
//! Card and customer fraud state share a column family but never a type: each lives in
//! its own `FraudTable`, keyed by the id the event carries, and only the store key
//! (`CardState::key`, `CustomerState::key`) tells them apart.
//!
//! At the end, [`BatchState::into_deltas`] writes back only what the batch changed, and
//! keeps a copy of it ([`BatchWrites`]) for the batches after it: the checkpoint may
//! still be making this batch durable while the next ones are read (commits and
//! processing overlap on two threads), so later batches read what it wrote from that
//! copy first. [`InFlight`] holds the copies of the last [`COMMITS_IN_FLIGHT`] batches,
//! newest first in every lookup. A copy equals what the store holds once its commit
//! lands, so a read gives the same answer whether the commit has finished or not; and
//! only the last `COMMITS_IN_FLIGHT` batches can be in flight (the checkpoint waits for
//! the oldest commit before it starts one more), so a batch whose copy is dropped is
//! durable, and its writes are the store's.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Range;

use paydedup_event::{PaymentEvent, ValidationError};
use paydedup_fraud::{assess, Assessment, CardState, CustomerState, FraudConfig};
use paydedup_state::expiry::value_expired;
use paydedup_state::keys::dedup_key;
use paydedup_state::{DedupEntry, StateBatch, StateError, StateStore};

/// The maps of one batch, hashed with foldhash: keys are transaction ids, card and
/// customer ids, a few thousand a batch, looked up several times per record. SipHash
/// (std's default) cost ~4 % of the pipeline thread on the peers' input. foldhash is
/// seeded per process, so a producer cannot pick ids that collide in advance; a batch's
/// maps live for one batch.
pub(super) type BatchMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A fraud key's hash, by the one hasher of fraud keys for the process's life (the
/// only way to make one is [`FraudKeyHash::of`], so a table of fraud keys is never
/// searched with another hasher's hash, which would miss silently).
///
/// Why one hasher: a key's hash is worked out once, where its batch is decoded
/// ([`FraudKeys::slot`], beside the loop thread), and every table that holds fraud
/// keys afterwards is searched with it: the batch's own, and the in-flight writes of
/// the batches before it ([`InFlightValues`]), which with a hasher each hashed every
/// key of the batch again, once per batch in flight, on the loop thread. The seed is
/// random per process, as the batch maps' are ([`BatchMap`]); it is not renewed per
/// batch, so keys a producer found to collide would keep colliding for the process's
/// life (foldhash's fast hasher resists that little either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FraudKeyHash(u64);

impl FraudKeyHash {
    fn of(key: &[u8]) -> FraudKeyHash {
        static HASHER: std::sync::OnceLock<foldhash::fast::RandomState> =
            std::sync::OnceLock::new();
        FraudKeyHash(HASHER.get_or_init(Default::default).hash_one(key))
    }
}

/// Renames the fraud state an earlier build wrote under `card/…` and `customer/…` to
/// today's keys (once: a later start finds none), so it is read again. Returns how
/// many keys were renamed.
pub fn rename_legacy_fraud_keys(store: &StateStore) -> Result<u64, StateError> {
    store.rekey_fraud(
        &paydedup_fraud::state::LEGACY_KEY_PREFIXES,
        paydedup_fraud::state::current_key,
    )
}

/// A kind of keyed fraud state: how its value is read and written.
trait FraudState: Default {
    /// Becomes the state `value` holds (an empty history for an empty or unreadable
    /// one), reusing its own memory.
    fn decode_into(&mut self, value: &[u8]);
    fn encode_into(&self, out: &mut Vec<u8>);
}

impl FraudState for CardState {
    fn decode_into(&mut self, value: &[u8]) {
        CardState::decode_into(self, value)
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        CardState::encode_into(self, out)
    }
}

impl FraudState for CustomerState {
    fn decode_into(&mut self, value: &[u8]) {
        CustomerState::decode_into(self, value)
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        CustomerState::encode_into(self, out)
    }
}

/// The store keys of one kind of fraud state for a batch, a slot per id in the order
/// the ids first appear. All keys share one buffer: a batch has thousands, and one
/// allocation each cost more than building them.
#[derive(Default)]
struct FraudKeys {
    /// Each slot, found by its key's hash and bytes.
    index: hashbrown::HashTable<usize>,
    bytes: Vec<u8>,
    ranges: Vec<Range<usize>>,
    /// Each key's hash, kept so that neither a lookup nor the table's growth, nor a
    /// later batch searching its in-flight writes, hashes the key again.
    hashes: Vec<FraudKeyHash>,
    /// Each key's first 16 bytes as a big-endian number (zero-padded): keys sort as
    /// these do, but for ties, and a number compares in one instruction where a slice
    /// comparison calls `memcmp` (which showed in the loop thread's profile when the
    /// batch's keys were sorted as slices).
    prefixes: Vec<u128>,
}

impl FraudKeys {
    fn with_capacity(n: usize) -> FraudKeys {
        FraudKeys {
            index: hashbrown::HashTable::with_capacity(n),
            bytes: Vec::with_capacity(24 * n),
            ranges: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            prefixes: Vec::with_capacity(n),
        }
    }

    /// The slot of `id`'s store key (built by `key_into`), added if new.
    fn slot(&mut self, id: &str, key_into: fn(&str, &mut Vec<u8>)) -> usize {
        let FraudKeys {
            index,
            bytes,
            ranges,
            hashes,
            prefixes,
        } = self;
        let start = bytes.len();
        key_into(id, bytes);
        let key = &bytes[start..];
        let hash = FraudKeyHash::of(key);
        if let Some(&slot) = index.find(hash.0, |&s| {
            hashes[s] == hash && &bytes[ranges[s].clone()] == key
        }) {
            bytes.truncate(start);
            return slot;
        }
        let mut prefix = [0; 16];
        let n = key.len().min(16);
        prefix[..n].copy_from_slice(&key[..n]);
        prefixes.push(u128::from_be_bytes(prefix));
        ranges.push(start..bytes.len());
        hashes.push(hash);
        let slot = ranges.len() - 1;
        index.insert_unique(hash.0, slot, |&s| hashes[s].0);
        slot
    }

    /// `slots` (each with what goes with it) in the order of their keys.
    fn sorted<T>(&self, slots: impl Iterator<Item = (usize, T)>) -> Vec<(usize, T)> {
        // Sized for every key, an upper bound (a filtered iterator's collect grows from
        // nothing, by doubling: new memory, page faults, a few times a batch).
        let mut by_prefix: Vec<(u128, (usize, T))> = Vec::with_capacity(self.len());
        by_prefix.extend(slots.map(|s| (self.prefixes[s.0], s)));
        by_prefix.sort_unstable_by(|(pa, (a, _)), (pb, (b, _))| {
            pa.cmp(pb).then_with(|| self.get(*a).cmp(self.get(*b)))
        });
        by_prefix.into_iter().map(|(_, s)| s).collect()
    }

    fn get(&self, slot: usize) -> &[u8] {
        &self.bytes[self.ranges[slot].clone()]
    }

    /// The hash of `slot`'s key.
    fn hash(&self, slot: usize) -> FraudKeyHash {
        self.hashes[slot]
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// The values of one kind of state for a batch, slot by slot as in its [`FraudKeys`]:
/// the bytes each was read from, and the bytes it encodes to after the batch's last
/// change of it.
///
/// No slot keeps a decoded state. A change decodes the slot's current bytes into one
/// state kept for all slots ([`FraudTable::change`]), lets the caller change it, and
/// encodes it again at once: the state, its lists' memory and the bytes are all hot
/// then. Decoding every slot when the batch was read, and encoding the changed ones
/// when its writes were gathered in key order, touched each state three times far
/// apart, and a state's fields (and its lists on the heap) had left the cache by the
/// end: ~200 ns a state to encode, ~13 % of the loop thread's time at 10 M payments,
/// besides an allocation or two a slot (docs/benchmarks.md, thirtieth step).
struct FraudValues<S> {
    /// Where in `read` each slot's stored value is (`None`: no history).
    read_at: Vec<Option<Range<usize>>>,
    /// The stored values of the slots, one after another.
    read: Vec<u8>,
    /// Where in `written` each slot's bytes after its last change are, if they differ
    /// from what it was read from (`None`: unchanged, or changed back to the same
    /// bytes).
    written_at: Vec<Option<Range<usize>>>,
    /// Encoded states, appended at each change whose bytes differ from the slot's
    /// read ones (a slot changed twice may have two; its `written_at` names the last).
    written: Vec<u8>,
    /// The state being changed.
    state: S,
}

impl<S: FraudState> FraudValues<S> {
    /// `value` is the stored value of `slot`'s key, kept (a copy into one buffer: the
    /// store may lend it under a lock its commit thread takes).
    fn fill(&mut self, slot: usize, value: Option<&[u8]>) {
        self.read_at[slot] = value.map(|v| {
            let start = self.read.len();
            self.read.extend_from_slice(v);
            start..self.read.len()
        });
    }

    /// The bytes `slot`'s state was read from (empty: no history).
    fn read_bytes(&self, slot: usize) -> &[u8] {
        self.read_at[slot]
            .clone()
            .map_or(&[][..], |r| &self.read[r])
    }

    /// The bytes of `slot`'s state as the batch has it now: as last changed, else as
    /// read.
    fn current(&self, slot: usize) -> &[u8] {
        match &self.written_at[slot] {
            Some(w) => &self.written[w.clone()],
            None => self.read_bytes(slot),
        }
    }
}

/// One kind of fraud state for a batch: keys and values. Only changed slots whose bytes
/// changed are written back: a customer who pays again within the hour from a known
/// device encodes to the bytes already stored (see `CUSTOMER_LAST_SEEN_QUANTUM_MICROS`),
/// and writing them again would cost a put through WAL, memtable and compaction for
/// nothing.
struct FraudTable<S> {
    keys: FraudKeys,
    values: FraudValues<S>,
}

impl<S: FraudState> FraudTable<S> {
    /// A slot per key, each with no history until filled.
    fn new(keys: FraudKeys) -> FraudTable<S> {
        let n = keys.len();
        FraudTable {
            keys,
            values: FraudValues {
                read_at: vec![None; n],
                read: Vec::with_capacity(48 * n),
                written_at: vec![None; n],
                written: Vec::with_capacity(48 * n),
                state: S::default(),
            },
        }
    }

    /// Fills the slots whose keys a batch in flight wrote (`in_flight`), judged by
    /// `expiry` as a stored value is; returns the others, to be read from the store. An
    /// expired copy is not asked of the store either: the store can only hold an older
    /// value of the key, expired too.
    fn fill_in_flight(&mut self, in_flight: &InFlight, expiry: FraudExpiry) -> Vec<usize> {
        let mut asked = Vec::with_capacity(self.keys.len());
        for slot in 0..self.keys.len() {
            match in_flight.fraud_hashed(self.keys.get(slot), self.keys.hash(slot)) {
                Some(v) => self.values.fill(slot, expiry.live(v)),
                None => asked.push(slot),
            }
        }
        asked
    }

    /// Changes the state in `slot` (one of the batch's [`BatchKeys`]) by `f`: its
    /// bytes after, if they differ from what it was read from, are what the batch
    /// writes for it (unless a later change replaces them). A value that does not
    /// parse is an empty history (fraud signals are advisory).
    ///
    /// Decoding what an earlier change in the batch encoded gives the state that
    /// change left, but for a customer's last-seen time, stored rounded up to the hour:
    /// a later change starts from the rounded time, as it would in a later batch. The
    /// rounded maximum is the same either way (see
    /// `paydedup_fraud::state::CUSTOMER_LAST_SEEN_QUANTUM_MICROS`), so the bytes written
    /// are too, and no fraud rule reads that time (only expiry does), so the scores are.
    fn change<R>(&mut self, slot: usize, f: impl FnOnce(&mut S) -> R) -> R {
        let values = &mut self.values;
        let mut state = std::mem::take(&mut values.state);
        state.decode_into(values.current(slot));
        let out = f(&mut state);
        let start = values.written.len();
        state.encode_into(&mut values.written);
        values.state = state;
        values.written_at[slot] = if values.written[start..] == *values.read_bytes(slot) {
            // Unchanged bytes are not written, and not in flight either: a later batch
            // reads them where this one did, from the store or from the copy of the
            // batch that wrote them, which is kept as long as that batch may be in
            // flight (`InFlight`).
            values.written.truncate(start);
            None
        } else {
            Some(start..values.written.len())
        };
        out
    }

    /// The state in `slot` as the batch has it now.
    #[cfg(test)]
    fn state(&self, slot: usize) -> S {
        let mut state = S::default();
        state.decode_into(self.values.current(slot));
        state
    }

    /// How many slots the batch writes.
    fn writes(&self) -> usize {
        self.values
            .written_at
            .iter()
            .filter(|w| w.is_some())
            .count()
    }

    /// Writes the slots whose bytes changed, in key order, and keeps them as in flight.
    fn into_deltas(self, batch: &mut StateBatch, in_flight: &mut InFlightValues) {
        let FraudTable { keys, values } = self;
        let written = keys.sorted(values.written_at.iter().enumerate().filter_map(|(i, w)| {
            let w = w.as_ref()?;
            Some((i, w.clone()))
        }));
        for (i, at) in written {
            let key = keys.get(i);
            let value = &values.written[at];
            batch.put_fraud(key, value);
            in_flight.insert_hashed(key, value, keys.hash(i));
        }
    }
}

/// How many processed batches may be on their way to disk at once: the checkpoint
/// keeps at most this many commits in flight (one being made durable, the next written
/// beside it),
/// and the pipeline keeps the writes of its last this many batches ([`InFlight`]).
///
/// Why two: with one, the pipeline waited for every commit before it handed over the
/// next batch, and a slow commit (an fsync behind a flush's writes, a RocksDB write
/// delay) left the pipeline idle while a fast one left the commit thread idle; at 10 M
/// events the pipeline waited 7–9 s of a 42 s run for commits that took ~30 s in all.
/// A second slot lets the pipeline run one batch ahead through a slow commit.
pub const COMMITS_IN_FLIGHT: usize = 2;

/// The fraud values a batch wrote, by key: keys and values in one buffer, found through
/// a table of where each lies (a few allocations a batch, where a map of `Vec`s took
/// two a value, each freed a batch later). Each entry keeps its key's [`FraudKeyHash`],
/// so a batch searches these with the hashes its decode worked out.
#[derive(Default)]
struct InFlightValues {
    bytes: Vec<u8>,
    table: hashbrown::HashTable<InFlightEntry>,
}

/// Where one value of [`InFlightValues`] is, and its key's hash.
///
/// Why the hash: nearly every lookup misses (a batch's cards and customers are rarely
/// among the few thousand the two batches before it wrote), and a miss still compared
/// the key's bytes wherever the table's 7-bit tag matched, a cache miss into `bytes`
/// each time; the whole hash rules those out first.
#[derive(Clone, Copy)]
struct InFlightEntry {
    start: usize,
    key_len: usize,
    value_len: usize,
    hash: FraudKeyHash,
}

impl InFlightValues {
    fn entry(&self, e: InFlightEntry) -> (&[u8], &[u8]) {
        let key_end = e.start + e.key_len;
        (
            &self.bytes[e.start..key_end],
            &self.bytes[key_end..key_end + e.value_len],
        )
    }

    /// The value of `key`, whose hash is `hash`.
    fn get_hashed(&self, key: &[u8], hash: FraudKeyHash) -> Option<&[u8]> {
        let found = self
            .table
            .find(hash.0, |&e| e.hash == hash && self.entry(e).0 == key)?;
        Some(self.entry(*found).1)
    }

    #[cfg(test)]
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.get_hashed(key, FraudKeyHash::of(key))
    }

    /// Room for `n` more values (keys and values of ~64 bytes together).
    fn reserve(&mut self, n: usize) {
        self.bytes.reserve(64 * n);
        self.table.reserve(n, |e| e.hash.0);
    }

    /// Sets `key`, whose hash is `hash`, to `value` (a later value of the same key
    /// replaces the earlier one).
    fn insert_hashed(&mut self, key: &[u8], value: &[u8], hash: FraudKeyHash) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        let at = InFlightEntry {
            start,
            key_len: key.len(),
            value_len: value.len(),
            hash,
        };
        let bytes = &self.bytes;
        let key_of = |e: &InFlightEntry| &bytes[e.start..e.start + e.key_len];
        match self
            .table
            .entry(hash.0, |e| e.hash == hash && key_of(e) == key, |e| e.hash.0)
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = at,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(at);
            }
        }
    }

    #[cfg(test)]
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.insert_hashed(key, value, FraudKeyHash::of(key));
    }

    /// Every (key, value).
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.iter().map(|e| self.entry(*e))
    }
}

impl std::fmt::Debug for InFlightValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InFlightValues({} values)", self.table.len())
    }
}

/// The dedup and fraud values one batch wrote.
#[derive(Debug, Default)]
pub struct BatchWrites {
    dedup: BatchMap<[u8; 16], DedupEntry>,
    fraud: InFlightValues,
}

/// The writes of the last [`COMMITS_IN_FLIGHT`] batches, which may not be durable yet
/// (see the module docs).
#[derive(Debug, Default)]
pub struct InFlight {
    /// Oldest first.
    batches: std::collections::VecDeque<BatchWrites>,
}

impl InFlight {
    /// Keeps `writes`, the batch just processed, and lets go of the writes of a batch
    /// that is durable by the time the next batch is read.
    pub fn push(&mut self, writes: BatchWrites) {
        self.batches.push_back(writes);
        while self.batches.len() > COMMITS_IN_FLIGHT {
            self.batches.pop_front();
        }
    }

    /// The dedup entry the newest in-flight batch that wrote `key` wrote.
    fn dedup(&self, key: &[u8; 16]) -> Option<&DedupEntry> {
        self.batches.iter().rev().find_map(|b| b.dedup.get(key))
    }

    /// The fraud value the newest in-flight batch that wrote `key` wrote.
    #[cfg(test)]
    fn fraud(&self, key: &[u8]) -> Option<&[u8]> {
        self.fraud_hashed(key, FraudKeyHash::of(key))
    }

    /// The fraud value the newest in-flight batch that wrote `key` wrote; `hash` is
    /// the key's.
    fn fraud_hashed(&self, key: &[u8], hash: FraudKeyHash) -> Option<&[u8]> {
        self.batches
            .iter()
            .rev()
            .find_map(|b| b.fraud.get_hashed(key, hash))
    }

    /// Answers dedup `keys` from the in-flight writes where it can; asks `store` for the
    /// rest, in one bulk read.
    fn read_dedup<E>(
        &self,
        keys: &[[u8; 16]],
        store: impl FnOnce(&[&[u8; 16]]) -> Result<Vec<Option<DedupEntry>>, E>,
    ) -> Result<Vec<Option<DedupEntry>>, E> {
        let held: Vec<Option<DedupEntry>> = keys.iter().map(|k| self.dedup(k).copied()).collect();
        let asked: Vec<&[u8; 16]> = keys
            .iter()
            .zip(&held)
            .filter(|(_, h)| h.is_none())
            .map(|(k, _)| k)
            .collect();
        let mut answers = store(&asked)?.into_iter();
        Ok(held
            .into_iter()
            .map(|h| h.or_else(|| answers.next().flatten()))
            .collect())
    }
}

/// A bulk read of fraud values: `answer(i, value)` for `keys[i]`, each once.
type FraudAnswer<'f> = &'f mut dyn FnMut(usize, Option<&[u8]>);

/// How a batch judges the fraud values it reads: a value whose time plus the TTL is
/// before `horizon` is no history at all.
///
/// **The invariant: whether a value counts depends on the records processed and the
/// state committed before them, never on when commits land.** The store expires values
/// by the horizon its *committed* batches published (the most advanced watermark of any
/// partition), and with commits in flight that lags the pipeline by a batch or two: a
/// card's history read from the store, or from the copy of a batch in flight (which the
/// store does not judge at all), could count or not by the commit timing alone. So the
/// pipeline judges every value, from either source, by its own horizon as the batch
/// begins (`Pipeline::fraud_horizon`): the same rule the store applies, by a horizon
/// never behind the store's (the store's as the pipeline loaded, raised by the
/// pipeline's own watermarks, which are what its commits publish). What the store has
/// already let go of is expired under this horizon too.
///
/// (The horizon is taken once per batch and is a maximum over partitions, so where a
/// value sits at the edge of its TTL, how records fall into batches and how partitions
/// interleave still matter, as they do for any state shared across partitions; what
/// a batch decides, it decides before its commit, and only its durable commit lets
/// the decision out.)
#[derive(Debug, Clone, Copy)]
pub struct FraudExpiry {
    pub ttl_micros: i64,
    /// The most advanced watermark of any partition; `None` before the first.
    pub horizon: Option<i64>,
}

impl FraudExpiry {
    /// `value` if it is still history.
    fn live(self, value: &[u8]) -> Option<&[u8]> {
        match self.horizon {
            Some(h) if value_expired(value, self.ttl_micros, h) => None,
            _ => Some(value),
        }
    }
}

/// The keys a batch's state lives under, worked out from its decoded events alone: the
/// distinct dedup keys in byte order, the card and customer keys, and which of them
/// each valid record names. Built where the batch is decoded (`decode_ahead::Decoded`),
/// record by record, beside the loop thread instead of on it (the loop built these in
/// ~2 s of its ~29 s a 10 M run, docs/benchmarks.md, twenty-eighth step).
#[derive(Default)]
pub struct BatchKeys {
    /// The batch's distinct dedup keys, in byte order (the bulk read's order).
    dedup_keys: Vec<[u8; 16]>,
    /// Per record of the batch (`None`: an invalid record).
    records: Vec<Option<RecordKeys>>,
    cards: FraudKeys,
    customers: FraudKeys,
}

/// Where one valid record's keys are in its [`BatchKeys`].
#[derive(Debug, Clone, Copy)]
struct RecordKeys {
    /// Index into `dedup_keys`.
    dedup: usize,
    /// Slots of the cards' and the customers' keys.
    card: usize,
    customer: usize,
}

impl BatchKeys {
    /// The keys of every valid record of `decoded` (the decode builds them record by
    /// record instead, [`BatchKeysBuilder`]).
    #[cfg(test)]
    pub fn of(decoded: &[Result<PaymentEvent, ValidationError>]) -> BatchKeys {
        let mut keys = BatchKeysBuilder::with_capacity(decoded.len());
        for d in decoded {
            keys.add(d.as_ref().ok());
        }
        keys.finish()
    }

    /// How many records the keys were worked out for.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// [`BatchKeys`], a record at a time (the decode adds each record as it decodes it,
/// while its ids are in the cache).
pub struct BatchKeysBuilder {
    /// Room for the batch's distinct dedup keys, filled by [`BatchKeysBuilder::finish`].
    dedup_keys: Vec<[u8; 16]>,
    cards: FraudKeys,
    customers: FraudKeys,
    /// Each valid record's slots, with its dedup key: where that key lands among the
    /// batch's keys is known once they are sorted.
    found: Vec<Option<([u8; 16], usize, usize)>>,
}

impl BatchKeysBuilder {
    pub fn with_capacity(n: usize) -> BatchKeysBuilder {
        BatchKeysBuilder {
            dedup_keys: Vec::with_capacity(n),
            cards: FraudKeys::with_capacity(n),
            customers: FraudKeys::with_capacity(n),
            found: Vec::with_capacity(n),
        }
    }

    /// The next record: its event, `None` for an invalid record.
    pub fn add(&mut self, event: Option<&PaymentEvent>) {
        self.found.push(event.map(|event| {
            let key = dedup_key(event.transaction_id.as_str());
            let card = self
                .cards
                .slot(&event.card_fingerprint, CardState::key_into);
            let customer = self
                .customers
                .slot(&event.customer_id, CustomerState::key_into);
            (key, card, customer)
        }));
    }

    pub fn finish(self) -> BatchKeys {
        let BatchKeysBuilder {
            mut dedup_keys,
            cards,
            customers,
            found,
        } = self;
        // Each valid record's key with the record's index, sorted once: a record's
        // key lands beside its equals, so one pass gives the batch's distinct keys in
        // byte order (compared as numbers: a byte array's comparison calls `memcmp`)
        // and each record its position among them. (A binary search per record after
        // sorting the keys took as long as the sort, on the decode thread.)
        let mut by_key: Vec<(u128, usize)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.map(|(key, _, _)| (u128::from_be_bytes(key), i)))
            .collect();
        by_key.sort_unstable();
        dedup_keys.clear();
        let mut position = vec![0; found.len()];
        for (key, i) in by_key {
            if dedup_keys.last().map(|k| u128::from_be_bytes(*k)) != Some(key) {
                dedup_keys.push(key.to_be_bytes());
            }
            position[i] = dedup_keys.len() - 1;
        }
        let records = found
            .into_iter()
            .zip(position)
            .map(|(f, dedup)| {
                f.map(|(_, card, customer)| RecordKeys {
                    dedup,
                    card,
                    customer,
                })
            })
            .collect();
        BatchKeys {
            dedup_keys,
            records,
            cards,
            customers,
        }
    }
}

impl std::fmt::Debug for BatchKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BatchKeys({} records, {} ids, {} cards, {} customers)",
            self.records.len(),
            self.dedup_keys.len(),
            self.cards.len(),
            self.customers.len()
        )
    }
}

/// The state a batch reads and writes, between its bulk read and its commit.
///
/// Records name their state by position: the bulk read finds each valid record's dedup
/// entry, card and customer once (`RecordState`), and every later step reaches them
/// by the record's index in the batch. (Found again by id at each step, the same ids
/// were hashed and looked up three more times a payment: ~9 % of the loop thread on
/// the peers' input.)
pub struct BatchState<'a> {
    /// The batch's distinct dedup keys, in byte order (the bulk read's order).
    dedup_keys: Vec<[u8; 16]>,
    /// Each key's entry: as read, then as this batch wrote it.
    dedup_values: Vec<Option<DedupEntry>>,
    /// Indexes into `dedup_keys` this batch wrote, in write order.
    dedup_written: Vec<usize>,
    /// Per record of the batch: where its state is (`None`: an invalid record).
    records: Vec<Option<RecordState<'a>>>,
    cards: FraudTable<CardState>,
    customers: FraudTable<CustomerState>,
}

/// One valid record, and where its state is in its [`BatchState`].
#[derive(Debug, Clone, Copy)]
struct RecordState<'a> {
    event: &'a PaymentEvent,
    /// Index into `dedup_keys` and `dedup_values`.
    dedup: usize,
    /// Slots in the cards' and the customers' tables.
    card: usize,
    customer: usize,
}

impl<'a> BatchState<'a> {
    /// Reads, in two bulk reads, the dedup and fraud state of every valid record of
    /// `decoded` (whose keys are `keys`, [`BatchKeys::of`] it): the writes of the
    /// batches in flight from `in_flight`, the rest from `store`; fraud values judged by
    /// `expiry`.
    pub fn read(
        decoded: &'a [Result<PaymentEvent, ValidationError>],
        keys: BatchKeys,
        in_flight: &InFlight,
        store: &StateStore,
        expiry: FraudExpiry,
    ) -> Result<BatchState<'a>, StateError> {
        BatchState::read_from(
            decoded,
            keys,
            in_flight,
            expiry,
            |asked| store.get_dedup_many(asked),
            |keys, answer| store.read_fraud_many(keys, answer),
        )
    }

    /// [`BatchState::read`] from any source: `dedup_many` answers dedup keys in order,
    /// `fraud_many` answers fraud keys through its callback.
    fn read_from<E>(
        decoded: &'a [Result<PaymentEvent, ValidationError>],
        keys: BatchKeys,
        in_flight: &InFlight,
        expiry: FraudExpiry,
        dedup_many: impl FnOnce(&[&[u8; 16]]) -> Result<Vec<Option<DedupEntry>>, E>,
        fraud_many: impl FnOnce(&[&[u8]], FraudAnswer<'_>) -> Result<(), E>,
    ) -> Result<BatchState<'a>, E> {
        // A caller's bug, never input: the keys of another batch would read and write
        // other records' state.
        assert_eq!(keys.len(), decoded.len(), "the keys of this batch");
        let BatchKeys {
            dedup_keys,
            records,
            cards,
            customers,
        } = keys;
        let mut cards = FraudTable::<CardState>::new(cards);
        let mut customers = FraudTable::<CustomerState>::new(customers);
        let dedup_values = in_flight.read_dedup(&dedup_keys, dedup_many)?;
        let records = records
            .into_iter()
            .zip(decoded)
            .map(|(k, d)| match (k, d) {
                (Some(k), Ok(event)) => Some(RecordState {
                    event,
                    dedup: k.dedup,
                    card: k.card,
                    customer: k.customer,
                }),
                (None, Err(_)) => None,
                // A caller's bug: keys worked out from other events.
                _ => panic!("the batch's keys do not match its events"),
            })
            .collect();

        // One read for both kinds: the cards' keys, then the customers'.
        let card_asked = cards.fill_in_flight(in_flight, expiry);
        let customer_asked = customers.fill_in_flight(in_flight, expiry);
        let keys: Vec<&[u8]> = card_asked
            .iter()
            .map(|&slot| cards.keys.get(slot))
            .chain(customer_asked.iter().map(|&slot| customers.keys.get(slot)))
            .collect();
        let (card_values, customer_values) = (&mut cards.values, &mut customers.values);
        fraud_many(&keys, &mut |i, value| {
            let value = value.and_then(|v| expiry.live(v));
            match card_asked.get(i) {
                Some(&slot) => card_values.fill(slot, value),
                None => customer_values.fill(customer_asked[i - card_asked.len()], value),
            }
        })?;
        Ok(BatchState {
            dedup_keys,
            dedup_values,
            dedup_written: Vec::new(),
            records,
            cards,
            customers,
        })
    }

    /// Where the valid record at `record` (its index in the batch) has its state.
    ///
    /// Panics for an invalid record or an index past the batch: only a unique payment
    /// of the batch it read changes state (a caller's bug, not bad input).
    fn at(&self, record: usize) -> RecordState<'a> {
        self.records[record].expect("state is changed only for a valid record of the batch")
    }

    /// The dedup entry of the id of the record at `record`, as this batch sees it (a
    /// record earlier in the batch may have written it); none for an invalid record.
    pub fn dedup_entry(&self, record: usize) -> Option<DedupEntry> {
        self.records[record].and_then(|at| self.dedup_values[at.dedup])
    }

    /// Records `entry` as the first version of the id of the valid record at `record`.
    pub fn insert_dedup(&mut self, record: usize, entry: DedupEntry) {
        let i = self.at(record).dedup;
        self.dedup_values[i] = Some(entry);
        self.dedup_written.push(i);
    }

    /// Scores the unique payment at `record` against its card's and customer's history
    /// and folds it into both.
    pub fn assess(&mut self, record: usize, cfg: &FraudConfig) -> Assessment {
        let at = self.at(record);
        let customers = &mut self.customers;
        self.cards.change(at.card, |card| {
            customers.change(at.customer, |customer| {
                assess(at.event, card, customer, cfg)
            })
        })
    }

    /// Writes what the batch changed: dedup entries, card and customer state, each in
    /// key order; returns the same values, for [`InFlight`].
    ///
    /// Key order matters for speed, not meaning (each key is written once per batch):
    /// RocksDB's memtable inserts a run of ascending keys by walking forward from the
    /// previous one, instead of descending its skiplist from the top for each random key;
    /// and a fraud log page of sorted runs makes its fold's sort cheap (unsorted, a 10 M
    /// run's folds took 12.5–14.2 s of wall clock instead of 7.5–9.3 s, and the loop's
    /// saving went to them: docs/benchmarks.md, twenty-eighth step).
    pub fn into_deltas(mut self, batch: &mut StateBatch) -> BatchWrites {
        let mut in_flight = BatchWrites::default();
        in_flight.dedup.reserve(self.dedup_written.len());
        // `dedup_keys` is in byte order, so its indexes are too.
        self.dedup_written.sort_unstable();
        for i in self.dedup_written {
            if let Some(entry) = &self.dedup_values[i] {
                batch.put_dedup(self.dedup_keys[i], entry);
                in_flight.dedup.insert(self.dedup_keys[i], *entry);
            }
        }
        in_flight
            .fraud
            .reserve(self.cards.writes() + self.customers.writes());
        self.cards.into_deltas(batch, &mut in_flight.fraud);
        self.customers.into_deltas(batch, &mut in_flight.fraud);
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::payment;
    use super::*;
    use std::convert::Infallible;

    fn event(id: &str, card: &str, customer: &str) -> PaymentEvent {
        PaymentEvent {
            card_fingerprint: card.into(),
            customer_id: customer.into(),
            ..payment(id, 0, 100)
        }
    }

    /// The state of `decoded` read from `stored` fraud values (a map standing in for the
    /// store; the pipeline's tests read a real one) after `in_flight`, no dedup entries;
    /// also the fraud keys the store was asked for.
    fn state_from<'a>(
        decoded: &'a [Result<PaymentEvent, ValidationError>],
        in_flight: &InFlight,
        stored: &BatchMap<Vec<u8>, Vec<u8>>,
    ) -> (BatchState<'a>, Vec<Vec<u8>>) {
        let mut asked = Vec::new();
        let state = BatchState::read_from(
            decoded,
            BatchKeys::of(decoded),
            in_flight,
            FraudExpiry {
                ttl_micros: i64::MAX,
                horizon: None,
            },
            |keys| Ok::<_, Infallible>(vec![None; keys.len()]),
            |keys, answer| {
                for (i, k) in keys.iter().enumerate() {
                    asked.push(k.to_vec());
                    answer(i, stored.get(*k).map(Vec::as_slice));
                }
                Ok(())
            },
        );
        let Ok(state) = state;
        (state, asked)
    }

    /// The state of `decoded` as if the store were empty.
    fn empty_state(decoded: &[Result<PaymentEvent, ValidationError>]) -> BatchState<'_> {
        state_from(decoded, &InFlight::default(), &BatchMap::default()).0
    }

    /// Many records, ids repeated and invalid records between them: the batch's keys
    /// come out distinct and in byte order, and each record's position names its own id.
    #[test]
    fn every_record_finds_its_own_id_among_the_batchs_distinct_keys() {
        let ids: Vec<String> = (0..3_000u32)
            .map(|i| format!("tx-{}", (i * 7_919) % 1_000))
            .collect();
        let decoded: Vec<Result<PaymentEvent, ValidationError>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| match i % 11 {
                5 => Err(ValidationError::NotAnObject),
                _ => Ok(event(id, "card", "c-1")),
            })
            .collect();
        let keys = BatchKeys::of(&decoded);
        assert_eq!(keys.len(), decoded.len());
        let mut expected: Vec<[u8; 16]> = decoded
            .iter()
            .zip(&ids)
            .filter(|(d, _)| d.is_ok())
            .map(|(_, id)| dedup_key(id))
            .collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(keys.dedup_keys, expected);
        for ((d, id), r) in decoded.iter().zip(&ids).zip(&keys.records) {
            assert_eq!(r.is_some(), d.is_ok(), "{id}");
            if let Some(r) = r {
                assert_eq!(keys.dedup_keys[r.dedup], dedup_key(id), "{id}");
            }
        }
    }

    #[test]
    fn each_id_is_read_once_and_card_and_customer_ids_stay_apart() {
        let decoded = vec![
            Ok(event("b", "same", "c-2")),
            Err(ValidationError::NotAnObject),
            Ok(event("a", "k-1", "same")),
            Ok(event("b", "k-1", "c-2")),
        ];
        let (mut state, mut asked) =
            state_from(&decoded, &InFlight::default(), &BatchMap::default());
        asked.sort();
        let mut expected = vec![
            CardState::key("same"),
            CardState::key("k-1"),
            CustomerState::key("c-2"),
            CustomerState::key("same"),
        ];
        expected.sort();
        assert_eq!(asked, expected);
        let mut dedup = vec![dedup_key("a"), dedup_key("b")];
        dedup.sort_unstable();
        assert_eq!(state.dedup_keys, dedup);
        // Each record reaches its own id's, card's and customer's state: the two
        // records of "b" one dedup entry, the two payments of card "k-1" one card.
        let at = |i: usize| state.records[i].unwrap();
        assert!(state.records[1].is_none());
        assert_eq!(at(0).dedup, at(3).dedup);
        assert_ne!(at(0).dedup, at(2).dedup);
        assert_eq!(state.dedup_keys[at(2).dedup], dedup_key("a"));
        assert_eq!(at(2).card, at(3).card);
        assert_ne!(at(0).card, at(2).card);
        assert_eq!(at(0).customer, at(3).customer);
        let entry = DedupEntry {
            event_time_micros: 1,
            content_hash: 2,
            partition: 0,
            offset: 0,
        };
        state.insert_dedup(0, entry);
        assert_eq!(state.dedup_entry(3), Some(entry));
        assert_eq!(state.dedup_entry(2), None);
    }

    #[test]
    fn in_flight_answers_from_the_newest_batch_that_wrote_a_key_and_forgets_durable_ones() {
        let entry = |offset| DedupEntry {
            event_time_micros: 0,
            content_hash: 7,
            partition: 0,
            offset,
        };
        let writes = |fraud: &[(&str, &str)], dedup: &[(&str, i64)]| {
            let mut w = BatchWrites::default();
            for (k, v) in fraud {
                w.fraud.insert(k.as_bytes(), v.as_bytes());
            }
            for (id, offset) in dedup {
                w.dedup.insert(dedup_key(id), entry(*offset));
            }
            w
        };
        let mut in_flight = InFlight::default();
        in_flight.push(writes(&[("a", "1"), ("b", "1")], &[("x", 1)]));
        in_flight.push(writes(&[("a", "2")], &[]));
        // `b` and `x` come from the older batch, `a` from the newer.
        assert_eq!(in_flight.fraud(b"a"), Some(&b"2"[..]));
        assert_eq!(in_flight.fraud(b"b"), Some(&b"1"[..]));
        assert_eq!(in_flight.dedup(&dedup_key("x")), Some(&entry(1)));
        let read = in_flight.read_dedup(&[dedup_key("y"), dedup_key("x")], |asked| {
            assert_eq!(asked, [&dedup_key("y")]);
            Ok::<_, Infallible>(vec![Some(entry(9))])
        });
        assert_eq!(read, Ok(vec![Some(entry(9)), Some(entry(1))]));
        // A third batch: the first is durable by now (the checkpoint holds at most
        // `COMMITS_IN_FLIGHT`), and the store answers for it.
        assert_eq!(COMMITS_IN_FLIGHT, 2);
        in_flight.push(writes(&[("c", "3")], &[]));
        assert_eq!(in_flight.fraud(b"b"), None);
        assert_eq!(in_flight.dedup(&dedup_key("x")), None);
        assert_eq!(in_flight.fraud(b"a"), Some(&b"2"[..]));
        assert_eq!(in_flight.fraud(b"c"), Some(&b"3"[..]));
    }

    /// Keys whose hashes are equal (made so here; by chance, or by a producer that
    /// found them, in production) are told apart by their bytes: the kept hash only
    /// rules out keys, it never answers for one.
    #[test]
    fn in_flight_values_with_equal_hashes_answer_by_key() {
        let mut v = InFlightValues::default();
        let same = FraudKeyHash(7);
        v.insert_hashed(b"card-a", b"1", same);
        v.insert_hashed(b"card-b", b"2", same);
        v.insert_hashed(b"card-a", b"3", same);
        assert_eq!(v.get_hashed(b"card-a", same), Some(&b"3"[..]));
        assert_eq!(v.get_hashed(b"card-b", same), Some(&b"2"[..]));
        assert_eq!(v.get_hashed(b"card-c", same), None);
        // The right key with another hash is not found: every table of fraud keys is
        // searched with `FraudKeyHash::of`'s hash, which is why it is the only maker.
        assert_eq!(v.get_hashed(b"card-a", FraudKeyHash(8)), None);
        let mut in_flight = InFlight::default();
        in_flight.push(BatchWrites {
            fraud: v,
            ..BatchWrites::default()
        });
        assert_eq!(in_flight.fraud_hashed(b"card-b", same), Some(&b"2"[..]));
        assert_eq!(in_flight.fraud_hashed(b"card-c", same), None);
    }

    #[test]
    fn in_flight_values_answer_each_keys_last_value() {
        let mut v = InFlightValues::default();
        assert_eq!(v.get(b"a"), None);
        v.insert(b"a", b"1");
        v.insert(b"ab", b"22");
        v.insert(b"a", b"333");
        assert_eq!(v.get(b"a"), Some(&b"333"[..]));
        assert_eq!(v.get(b"ab"), Some(&b"22"[..]));
        assert_eq!(v.get(b"b"), None);
        // Enough keys to grow the table several times (its entries placed again by
        // their kept hashes).
        for i in 0..2_000u32 {
            v.insert(format!("k{i}").as_bytes(), &i.to_le_bytes());
        }
        for i in 0..2_000u32 {
            assert_eq!(
                v.get(format!("k{i}").as_bytes()),
                Some(&i.to_le_bytes()[..])
            );
        }
        assert_eq!(v.iter().count(), 2_002);
    }

    /// `finish` orders dedup keys as big-endian numbers: byte order, edge keys included.
    #[test]
    fn dedup_keys_sort_in_byte_order() {
        let mut keys: Vec<[u8; 16]> = (0..500u32)
            .map(|i| dedup_key(&format!("tx-{i}")))
            .chain([[0; 16], [0xff; 16], [1; 16]])
            .collect();
        let mut by_bytes = keys.clone();
        by_bytes.sort_unstable();
        keys.sort_unstable_by_key(|k| u128::from_be_bytes(*k));
        assert_eq!(keys, by_bytes);
    }

    #[test]
    fn fraud_keys_sort_in_byte_order_whatever_their_lengths() {
        // Ids whose keys share their first 16 bytes (the numeric prefix) and differ in
        // length after it, ids shorter than 16 bytes, and one that is a prefix of
        // another: the order must be the keys' byte order all the same.
        let ids: Vec<String> = [
            "customer-with-a-long-id-9",
            "customer-with-a-long-id-10",
            "c",
            "c-",
            "c-1",
        ]
        .into_iter()
        .map(String::from)
        .chain((0..300).map(|i| format!("customer-with-a-long-id-{}", i * 7919 % 1000)))
        .chain((0..50).map(|i| format!("{:x}", i * 104_729)))
        .collect();
        let mut keys = FraudKeys::with_capacity(ids.len());
        for id in &ids {
            keys.slot(id, CustomerState::key_into);
        }
        let order: Vec<Vec<u8>> = keys
            .sorted((0..keys.len()).map(|slot| (slot, ())))
            .into_iter()
            .map(|(slot, ())| keys.get(slot).to_vec())
            .collect();
        let mut by_bytes: Vec<Vec<u8>> = (0..keys.len())
            .map(|slot| keys.get(slot).to_vec())
            .collect();
        by_bytes.sort();
        assert_eq!(order, by_bytes);
        assert!(by_bytes.iter().any(|k| k.len() > 16));
    }

    #[test]
    fn an_id_shared_by_a_card_and_a_customer_is_two_states() {
        // "same" is a card fingerprint and a customer id: their states must not merge.
        let decoded = vec![Ok(event("a", "same", "same"))];
        let mut state = empty_state(&decoded);
        state.assess(0, &FraudConfig::default());
        assert_eq!(state.cards.keys.len(), 1);
        assert_eq!(state.customers.keys.len(), 1);
        assert_eq!(state.cards.keys.get(0), CardState::key("same"));
        assert_eq!(state.customers.keys.get(0), CustomerState::key("same"));
        assert_ne!(CardState::key("same"), CustomerState::key("same"));
        assert_eq!(state.cards.state(0).recent.len(), 1);
        assert_eq!(state.customers.state(0).devices, vec!["d-1"]);
    }

    #[test]
    fn a_write_is_seen_by_later_records_and_only_changes_become_deltas() {
        let decoded = vec![Ok(event("a", "k-1", "c-1")), Ok(event("b", "k-2", "c-2"))];
        let mut state = empty_state(&decoded);
        let Ok(a) = &decoded[0] else { unreachable!() };
        assert_eq!(state.dedup_entry(0), None);
        let entry = DedupEntry {
            event_time_micros: a.event_time_micros(),
            content_hash: 7,
            partition: 0,
            offset: 0,
        };
        state.insert_dedup(0, entry);
        assert_eq!(state.dedup_entry(0), Some(entry));
        assert_eq!(state.dedup_entry(1), None);
        state.assess(0, &FraudConfig::default());
        // Only a's dedup entry, card and customer are written; b's state was only read.
        let mut batch = StateBatch::new();
        state.into_deltas(&mut batch);
        assert_eq!(batch.len(), 3);
    }

    #[test]
    fn states_are_read_from_in_flight_first_then_the_store_and_written_in_key_order() {
        // Cards whose keys sort in another order than the records name them, and
        // customers whose keys differ only past their first 16 bytes.
        let cards = ["ff01", "0a02", "k-3", "7c04"];
        let customer = |i: usize| format!("customer-with-a-long-id-{i}");
        let decoded: Vec<_> = cards
            .iter()
            .enumerate()
            .map(|(i, card)| Ok(event(&format!("t{i}"), card, &customer([7, 9, 6, 8][i]))))
            .collect();
        let cfg = FraudConfig::default();
        // Every card has history: two in the store, one in flight, one in both (the
        // in-flight value is the newer, so it must win).
        let Ok(first) = &decoded[0] else {
            unreachable!()
        };
        let t = first.event_time_micros();
        let history = |recent: usize| {
            CardState {
                last_seen_micros: t,
                recent: vec![t; recent],
                ..CardState::default()
            }
            .encode()
        };
        let mut stored = BatchMap::default();
        stored.insert(CardState::key("ff01"), history(1));
        stored.insert(CardState::key("0a02"), history(2));
        stored.insert(CardState::key("7c04"), history(3));
        let mut in_flight = InFlight::default();
        let mut writes = BatchWrites::default();
        writes.fraud.insert(&CardState::key("k-3"), &history(4));
        writes.fraud.insert(&CardState::key("7c04"), &history(5));
        in_flight.push(writes);
        let (mut state, asked) = state_from(&decoded, &in_flight, &stored);
        assert!(!asked.contains(&CardState::key("k-3")));
        assert!(!asked.contains(&CardState::key("7c04")));
        for i in 0..decoded.len() {
            state.assess(i, &cfg);
        }
        // Each card's history as read, plus the payment just assessed.
        let read: Vec<usize> = cards
            .iter()
            .map(|c| {
                let key = CardState::key(c);
                let keys = &state.cards.keys;
                let slot = (0..keys.len()).find(|&s| keys.get(s) == key).unwrap();
                state.cards.state(slot).recent.len()
            })
            .collect();
        assert_eq!(read, vec![2, 3, 5, 6]);
        let mut batch = StateBatch::new();
        let written = state.into_deltas(&mut batch);
        let mut keys: Vec<Vec<u8>> = written.fraud.iter().map(|(k, _)| k.to_vec()).collect();
        keys.sort();
        let mut expected: Vec<Vec<u8>> = cards.iter().map(|c| CardState::key(c)).collect();
        expected.extend((6..=9).map(|i| CustomerState::key(&customer(i))));
        expected.sort();
        assert_eq!(keys, expected);
        let puts = batch.fraud_puts();
        let (card_puts, customer_puts) = puts.split_at(4);
        assert!(card_puts.is_sorted() && customer_puts.is_sorted());
    }

    #[test]
    fn a_state_changed_several_times_in_a_batch_is_written_once_as_after_its_last_change() {
        // Stored: a card's and a customer's history after a payment at 10:00:01 on
        // device d-1 (the customer's time stored as 11:00). Then one batch: 10:20 on d-1
        // (the customer's bytes are the stored ones: no write on its own), 10:40 on a
        // new device d-2 (a write), 10:50 on d-2. Each state is decoded and encoded at
        // every change; the batch must score each payment and write each key as a
        // plain fold of `assess` over the payments does.
        let at = |id: &str, secs: i64, device: &str| PaymentEvent {
            card_fingerprint: "k-1".into(),
            customer_id: "c-1".into(),
            device_id: device.into(),
            ..payment(id, secs, 100 + secs)
        };
        let cfg = FraudConfig::default();
        let (mut card, mut customer) = (CardState::default(), CustomerState::default());
        assess(&at("a", 1, "d-1"), &mut card, &mut customer, &cfg);
        let (card_key, customer_key) = (CardState::key("k-1"), CustomerState::key("c-1"));
        let stored: BatchMap<Vec<u8>, Vec<u8>> = [
            (card_key.clone(), card.encode()),
            (customer_key.clone(), customer.encode()),
        ]
        .into_iter()
        .collect();
        let decoded = vec![
            Ok(at("b", 20 * 60, "d-1")),
            Ok(at("c", 40 * 60, "d-2")),
            Ok(at("d", 50 * 60, "d-2")),
        ];
        let (mut state, _) = state_from(&decoded, &InFlight::default(), &stored);
        for (i, d) in decoded.iter().enumerate() {
            let Ok(event) = d else { unreachable!() };
            let expected = assess(event, &mut card, &mut customer, &cfg);
            assert_eq!(state.assess(i, &cfg), expected, "payment {i}");
            if i == 0 {
                assert!(
                    state.customers.values.written_at[0].is_none(),
                    "the customer's bytes are the stored ones"
                );
            }
        }
        assert_eq!(customer.devices, vec!["d-1", "d-2"]);
        let mut batch = StateBatch::new();
        let in_flight = state.into_deltas(&mut batch);
        // One put per key (no dedup entries were inserted).
        assert_eq!(batch.len(), 2);
        let mut values: Vec<(Vec<u8>, Vec<u8>)> = in_flight
            .fraud
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        values.sort();
        let mut expected = vec![(card_key, card.encode()), (customer_key, customer.encode())];
        expected.sort();
        assert_eq!(values, expected);
    }

    #[test]
    fn a_customer_back_within_the_hour_on_a_known_device_is_not_rewritten() {
        // 10:00:01 and 10:20:00 (both stored as 11:00), then 11:00:01.
        let at = |id: &str, secs: i64| PaymentEvent {
            card_fingerprint: "k-1".into(),
            customer_id: "c-1".into(),
            ..payment(id, secs, 100)
        };
        let decoded = vec![Ok(at("a", 1)), Ok(at("b", 20 * 60)), Ok(at("c", 3_601))];
        let cfg = FraudConfig::default();
        // Each record in a batch of its own, reading what the one before wrote.
        let mut stored: BatchMap<Vec<u8>, Vec<u8>> = BatchMap::default();
        let mut written = Vec::new();
        for d in &decoded {
            let one = std::slice::from_ref(d);
            let (mut state, _) = state_from(one, &InFlight::default(), &stored);
            state.assess(0, &cfg);
            let mut batch = StateBatch::new();
            let in_flight = state.into_deltas(&mut batch);
            let mut keys: Vec<Vec<u8>> = in_flight.fraud.iter().map(|(k, _)| k.to_vec()).collect();
            keys.sort();
            written.push(keys);
            stored.extend(
                in_flight
                    .fraud
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec())),
            );
        }
        let (card, customer) = (CardState::key("k-1"), CustomerState::key("c-1"));
        let mut both = vec![card.clone(), customer.clone()];
        both.sort();
        assert_eq!(written[0], both);
        // The card changes with every payment; the customer's bytes did not.
        assert_eq!(written[1], vec![card.clone()]);
        // A new hour: the customer's last-seen time moves, so it is written.
        assert_eq!(written[2], both);
    }
}
