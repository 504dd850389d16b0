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
//! keeps a copy of it as the next batch's [`InFlight`]: the checkpoint may still be
//! making this batch durable while the next one is read (commit and processing overlap
//! on two threads), so the next batch reads what this one wrote from that copy first.
//! The copy equals what the store holds once the commit lands, so a read gives the same
//! answer whether the commit has finished or not; and only the last batch can be in
//! flight (the checkpoint waits for a commit before starting the next).

use std::collections::HashMap;

use paydedup_event::{PaymentEvent, ValidationError};
use paydedup_fraud::{assess, Assessment, CardState, CustomerState, FraudConfig};
use paydedup_state::keys::dedup_key;
use paydedup_state::{DedupEntry, StateBatch, StateError, StateStore};

/// The maps of one batch, hashed with foldhash: keys are transaction ids, card and
/// customer ids, a few thousand a batch, looked up several times per record. SipHash
/// (std's default) cost ~4 % of the pipeline thread on the peers' input. foldhash is
/// seeded per process, so a producer cannot pick ids that collide in advance; a batch's
/// maps live for one batch.
pub(super) type BatchMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The keys a batch reads, from its valid records: sorted, each once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchKeys<'a> {
    pub dedup: Vec<[u8; 16]>,
    /// Card fingerprints.
    pub cards: Vec<&'a str>,
    /// Customer ids.
    pub customers: Vec<&'a str>,
}

impl<'a> BatchKeys<'a> {
    pub fn of(decoded: &'a [Result<PaymentEvent, ValidationError>]) -> BatchKeys<'a> {
        let mut keys = BatchKeys::default();
        for e in decoded.iter().flatten() {
            keys.dedup.push(dedup_key(e.transaction_id.as_str()));
            keys.cards.push(&e.card_fingerprint);
            keys.customers.push(&e.customer_id);
        }
        for list in [&mut keys.cards, &mut keys.customers] {
            list.sort_unstable();
            list.dedup();
        }
        keys.dedup.sort_unstable();
        keys.dedup.dedup();
        keys
    }

    /// The fraud store keys: the cards', then the customers'.
    pub fn fraud_keys(&self) -> Vec<Vec<u8>> {
        let cards = self.cards.iter().map(|id| CardState::key(id));
        let customers = self.customers.iter().map(|id| CustomerState::key(id));
        cards.chain(customers).collect()
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

/// A kind of keyed fraud state: how its store key is built and its value read/written.
trait FraudState: Default {
    fn key(id: &str) -> Vec<u8>;
    fn decode(value: &[u8]) -> Self;
    fn encode(&self) -> Vec<u8>;
}

impl FraudState for CardState {
    fn key(id: &str) -> Vec<u8> {
        CardState::key(id)
    }
    fn decode(value: &[u8]) -> Self {
        CardState::decode(value)
    }
    fn encode(&self) -> Vec<u8> {
        CardState::encode(self)
    }
}

impl FraudState for CustomerState {
    fn key(id: &str) -> Vec<u8> {
        CustomerState::key(id)
    }
    fn decode(value: &[u8]) -> Self {
        CustomerState::decode(value)
    }
    fn encode(&self) -> Vec<u8> {
        CustomerState::encode(self)
    }
}

/// One kind of fraud state for a batch: a slot per id, in key order, each with its store
/// key, the value as read, and whether the batch touched it. Only touched slots whose
/// bytes changed are written back: a customer who pays again within the hour from a
/// known device encodes to the bytes already stored (see
/// `CUSTOMER_LAST_SEEN_QUANTUM_MICROS`), and writing them again would cost a put
/// through WAL, memtable and compaction for nothing.
struct FraudTable<'a, S> {
    index: BatchMap<&'a str, usize>,
    slots: Vec<Slot<S>>,
}

struct Slot<S> {
    key: Vec<u8>,
    state: S,
    /// The stored value the state was decoded from (`None`: no history).
    read: Option<Vec<u8>>,
    changed: bool,
}

impl<'a, S: FraudState> FraudTable<'a, S> {
    /// `ids`, their store keys and the values read for them, in the same order. A missing
    /// (or unreadable) value is an empty history.
    fn new(
        ids: Vec<&'a str>,
        keys: impl Iterator<Item = Vec<u8>>,
        values: impl Iterator<Item = Option<Vec<u8>>>,
    ) -> FraudTable<'a, S> {
        let mut index = BatchMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut slots = Vec::with_capacity(ids.len());
        for ((id, key), value) in ids.into_iter().zip(keys).zip(values) {
            index.insert(id, slots.len());
            let state = S::decode(value.as_deref().unwrap_or_default());
            slots.push(Slot {
                key,
                state,
                read: value,
                changed: false,
            });
        }
        FraudTable { index, slots }
    }

    /// The state of `id`, to be changed. Every valid record's ids were read up front,
    /// so the fallback (an empty history) only guards a caller that skipped the read.
    fn change(&mut self, id: &'a str) -> &mut S {
        let slots = &mut self.slots;
        let i = *self.index.entry(id).or_insert_with(|| {
            slots.push(Slot {
                key: S::key(id),
                state: S::default(),
                read: None,
                changed: false,
            });
            slots.len() - 1
        });
        let slot = &mut slots[i];
        slot.changed = true;
        &mut slot.state
    }

    fn into_deltas(self, batch: &mut StateBatch, in_flight: &mut BatchMap<Vec<u8>, Vec<u8>>) {
        for slot in self.slots.into_iter().filter(|s| s.changed) {
            let value = slot.state.encode();
            // Unchanged bytes are not written, and not in flight either: the next batch
            // reads them from the store, which holds them (the batch they came from,
            // if in flight itself, has committed by the time the next batch reads).
            if slot.read.as_ref() == Some(&value) {
                continue;
            }
            batch.put_fraud(&slot.key, &value);
            in_flight.insert(slot.key, value);
        }
    }
}

/// The dedup and fraud values the previous batch wrote (see the module docs).
#[derive(Debug, Default)]
pub struct InFlight {
    dedup: BatchMap<[u8; 16], DedupEntry>,
    fraud: BatchMap<Vec<u8>, Vec<u8>>,
}

impl InFlight {
    /// Answers `keys` from the in-flight values where it can; asks `store` for the rest,
    /// in one bulk read.
    fn read<K: std::hash::Hash + Eq, V: Clone, E>(
        in_flight: &BatchMap<K, V>,
        keys: &[K],
        store: impl FnOnce(&[&K]) -> Result<Vec<Option<V>>, E>,
    ) -> Result<Vec<Option<V>>, E> {
        let asked: Vec<&K> = keys.iter().filter(|k| !in_flight.contains_key(k)).collect();
        let mut answers = store(&asked)?.into_iter();
        Ok(keys
            .iter()
            .map(|k| match in_flight.get(k) {
                Some(v) => Some(v.clone()),
                None => answers.next().flatten(),
            })
            .collect())
    }
}

/// The state a batch reads and writes, between its bulk read and its commit.
pub struct BatchState<'a> {
    /// Dedup entries by key: as read, then as this batch wrote them.
    dedup: BatchMap<[u8; 16], Option<DedupEntry>>,
    /// Keys this batch wrote, in write order.
    dedup_written: Vec<[u8; 16]>,
    cards: FraudTable<'a, CardState>,
    customers: FraudTable<'a, CustomerState>,
}

impl<'a> BatchState<'a> {
    /// Reads, in two bulk reads, the dedup and fraud state of every valid record: the
    /// previous batch's writes from `in_flight`, the rest from `store`.
    pub fn read(
        decoded: &'a [Result<PaymentEvent, ValidationError>],
        in_flight: &InFlight,
        store: &StateStore,
    ) -> Result<BatchState<'a>, StateError> {
        let keys = BatchKeys::of(decoded);
        let dedup_values = InFlight::read(&in_flight.dedup, &keys.dedup, |asked| {
            store.get_dedup_many(asked)
        })?;
        // One read for both kinds; the two id lists split the answer again.
        let fraud_keys = keys.fraud_keys();
        let fraud_values = InFlight::read(&in_flight.fraud, &fraud_keys, |asked| {
            store.get_fraud_many(asked)
        })?;
        Ok(BatchState::from_reads(
            keys,
            dedup_values,
            fraud_keys,
            fraud_values,
        ))
    }

    /// Assembles the state from what was read: `dedup_values` in the order of
    /// `keys.dedup`, `fraud_keys`/`fraud_values` the cards' then the customers'.
    pub fn from_reads(
        keys: BatchKeys<'a>,
        dedup_values: Vec<Option<DedupEntry>>,
        fraud_keys: Vec<Vec<u8>>,
        fraud_values: Vec<Option<Vec<u8>>>,
    ) -> BatchState<'a> {
        let dedup = keys.dedup.into_iter().zip(dedup_values).collect();
        let n_cards = keys.cards.len();
        let mut fraud_keys = fraud_keys.into_iter();
        let mut fraud_values = fraud_values.into_iter();
        let cards = FraudTable::new(
            keys.cards,
            fraud_keys.by_ref().take(n_cards),
            fraud_values.by_ref().take(n_cards),
        );
        let customers = FraudTable::new(keys.customers, fraud_keys, fraud_values);
        BatchState {
            dedup,
            dedup_written: Vec::new(),
            cards,
            customers,
        }
    }

    /// The dedup entry of `event`'s id as this batch sees it.
    pub fn dedup_entry(&self, event: &PaymentEvent) -> Option<DedupEntry> {
        self.dedup
            .get(&dedup_key(event.transaction_id.as_str()))
            .copied()
            .flatten()
    }

    /// Records `entry` as the first version of `event`'s id.
    pub fn insert_dedup(&mut self, event: &PaymentEvent, entry: DedupEntry) {
        let key = dedup_key(event.transaction_id.as_str());
        self.dedup.insert(key, Some(entry));
        self.dedup_written.push(key);
    }

    /// Scores a unique payment against its card's and customer's history and folds it
    /// into both.
    pub fn assess(&mut self, event: &'a PaymentEvent, cfg: &FraudConfig) -> Assessment {
        let card = self.cards.change(&event.card_fingerprint);
        let customer = self.customers.change(&event.customer_id);
        assess(event, card, customer, cfg)
    }

    /// Writes what the batch changed: dedup entries, card and customer state, each in
    /// key order; returns the same values as the next batch's [`InFlight`].
    ///
    /// Key order matters for speed, not meaning (each key is written once per batch):
    /// RocksDB's memtable inserts a run of ascending keys by walking forward from the
    /// previous one, instead of descending its skiplist from the top for each random key.
    pub fn into_deltas(mut self, batch: &mut StateBatch) -> InFlight {
        let mut in_flight = InFlight::default();
        self.dedup_written.sort_unstable();
        for key in self.dedup_written {
            if let Some(Some(entry)) = self.dedup.get(&key) {
                batch.put_dedup(key, entry);
                in_flight.dedup.insert(key, *entry);
            }
        }
        self.cards.into_deltas(batch, &mut in_flight.fraud);
        self.customers.into_deltas(batch, &mut in_flight.fraud);
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::payment;
    use super::*;

    fn event(id: &str, card: &str, customer: &str) -> PaymentEvent {
        PaymentEvent {
            card_fingerprint: card.into(),
            customer_id: customer.into(),
            ..payment(id, 0, 100)
        }
    }

    /// The state of `decoded` as if the store were empty.
    fn empty_state(decoded: &[Result<PaymentEvent, ValidationError>]) -> BatchState<'_> {
        let keys = BatchKeys::of(decoded);
        let dedup_values = vec![None; keys.dedup.len()];
        let fraud_keys = keys.fraud_keys();
        let fraud_values = vec![None; fraud_keys.len()];
        BatchState::from_reads(keys, dedup_values, fraud_keys, fraud_values)
    }

    #[test]
    fn keys_are_sorted_unique_and_card_and_customer_ids_stay_apart() {
        let decoded = vec![
            Ok(event("b", "same", "c-2")),
            Err(ValidationError::NotAnObject),
            Ok(event("a", "k-1", "same")),
            Ok(event("b", "k-1", "c-2")),
        ];
        let keys = BatchKeys::of(&decoded);
        assert_eq!(keys.cards, vec!["k-1", "same"]);
        assert_eq!(keys.customers, vec!["c-2", "same"]);
        let mut dedup = vec![dedup_key("a"), dedup_key("b")];
        dedup.sort_unstable();
        assert_eq!(keys.dedup, dedup);
    }

    #[test]
    fn an_id_shared_by_a_card_and_a_customer_is_two_states() {
        // "same" is a card fingerprint and a customer id: their states must not merge.
        let decoded = vec![Ok(event("a", "same", "same"))];
        let mut state = empty_state(&decoded);
        let Ok(e) = &decoded[0] else { unreachable!() };
        state.assess(e, &FraudConfig::default());
        assert_eq!(state.cards.slots.len(), 1);
        assert_eq!(state.customers.slots.len(), 1);
        assert_eq!(state.cards.slots[0].key, CardState::key("same"));
        assert_eq!(state.customers.slots[0].key, CustomerState::key("same"));
        assert_ne!(CardState::key("same"), CustomerState::key("same"));
        assert_eq!(state.cards.slots[0].state.recent.len(), 1);
        assert_eq!(state.customers.slots[0].state.devices, vec!["d-1"]);
    }

    #[test]
    fn a_write_is_seen_by_later_records_and_only_changes_become_deltas() {
        let decoded = vec![Ok(event("a", "k-1", "c-1")), Ok(event("b", "k-2", "c-2"))];
        let mut state = empty_state(&decoded);
        let Ok(a) = &decoded[0] else { unreachable!() };
        assert_eq!(state.dedup_entry(a), None);
        let entry = DedupEntry {
            event_time_micros: a.event_time_micros(),
            content_hash: 7,
            partition: 0,
            offset: 0,
        };
        state.insert_dedup(a, entry);
        assert_eq!(state.dedup_entry(a), Some(entry));
        state.assess(a, &FraudConfig::default());
        // Only a's dedup entry, card and customer are written; b's state was only read.
        let mut batch = StateBatch::new();
        state.into_deltas(&mut batch);
        assert_eq!(batch.len(), 3);
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
            let keys = BatchKeys::of(one);
            let fraud_keys = keys.fraud_keys();
            let fraud_values = fraud_keys.iter().map(|k| stored.get(k).cloned()).collect();
            let dedup_values = vec![None; keys.dedup.len()];
            let mut state = BatchState::from_reads(keys, dedup_values, fraud_keys, fraud_values);
            let Ok(e) = d else { unreachable!() };
            state.assess(e, &cfg);
            let mut batch = StateBatch::new();
            let in_flight = state.into_deltas(&mut batch);
            let mut keys: Vec<Vec<u8>> = in_flight.fraud.keys().cloned().collect();
            keys.sort();
            written.push(keys);
            stored.extend(in_flight.fraud);
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
