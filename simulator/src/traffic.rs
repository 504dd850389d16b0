//! The traffic generator: an iterator of records to produce, each with its ground-truth
//! [`Kind`]. Deterministic for a seed and a start time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use paydedup_event::{encode_json, PaymentEvent, TransactionId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::truth::{Kind, Resend, Truth};
use crate::world::World;

/// Fault and pattern rates (each in 0..=1).
#[derive(Debug, Clone)]
pub struct Rates {
    pub duplicate: f64,
    pub replay: f64,
    pub conflict: f64,
    pub out_of_order: f64,
    pub late: f64,
    pub malformed: f64,
    pub fraud: f64,
}

#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    pub partitions: usize,
    pub start_time: DateTime<Utc>,
    pub event_rate: f64,
    pub allowed_lateness_secs: i64,
    pub retention_secs: i64,
    pub merchants: usize,
    pub cards: usize,
    pub rates: Rates,
}

/// One record to send.
#[derive(Debug, Clone)]
pub struct SimRecord {
    pub partition: i32,
    pub key: String,
    pub payload: Vec<u8>,
    pub kind: Kind,
    /// The event, when the payload is a valid one.
    pub event: Option<PaymentEvent>,
}

/// Something due to be sent later, in event time.
#[derive(Debug)]
enum Scheduled {
    /// The same event again (retry, replay) or an altered one (conflict).
    Resend(Box<PaymentEvent>, Resend),
    /// A new payment by a given card (velocity bursts, impossible travel).
    Payment {
        card: usize,
        ip_country: Option<&'static str>,
    },
}

/// Malformed record shapes and the validation code each must produce.
pub const MALFORMED_KINDS: [&str; 10] = [
    "malformed_json",
    "missing_field",
    "unknown_currency",
    "non_positive_amount",
    "amount_too_large",
    "event_time_in_future",
    "card_number_detected",
    "id_too_long",
    "wrong_type",
    "unsupported_schema_version",
];

pub struct Traffic {
    cfg: TrafficConfig,
    rng: ChaCha8Rng,
    world: World,
    truth: Truth,
    clock_micros: i64,
    inter_arrival: Exp<f64>,
    next_id: u64,
    /// (due time, insertion sequence) → item; the sequence keeps the order stable.
    pending: BinaryHeap<Reverse<(i64, u64)>>,
    pending_items: std::collections::HashMap<u64, Scheduled>,
    pending_seq: u64,
    produced: u64,
}

/// splitmix64's finaliser: a bijection, so distinct counters give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The partition of a key: all versions of one payment land on one partition.
pub fn partition_of(key: &str, partitions: usize) -> i32 {
    (xxh3_64(key.as_bytes()) % partitions as u64) as i32
}

impl Traffic {
    pub fn new(cfg: TrafficConfig) -> Traffic {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let world = World::new(&mut rng, cfg.seed, cfg.merchants, cfg.cards);
        Traffic {
            truth: Truth::new(
                cfg.partitions,
                cfg.allowed_lateness_secs,
                cfg.retention_secs,
            ),
            clock_micros: cfg.start_time.timestamp_micros(),
            inter_arrival: Exp::new(cfg.event_rate).expect("event rate validated positive"),
            next_id: 0,
            pending: BinaryHeap::new(),
            pending_items: Default::default(),
            pending_seq: 0,
            produced: 0,
            world,
            rng,
            cfg,
        }
    }

    fn fresh_id(&mut self) -> TransactionId {
        let n = self.next_id;
        self.next_id += 1;
        TransactionId::new_unchecked(format!("tx-{:016x}", mix(self.cfg.seed ^ mix(n))))
    }

    fn schedule(&mut self, due: i64, item: Scheduled) {
        self.pending_seq += 1;
        self.pending.push(Reverse((due, self.pending_seq)));
        self.pending_items.insert(self.pending_seq, item);
    }

    fn at(&self, micros: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(micros).single().unwrap_or_default()
    }

    fn secs(&mut self, lo: f64, hi: f64) -> i64 {
        (self.rng.gen_range(lo..hi) * 1e6) as i64
    }

    /// The next record; the stream is unbounded.
    pub fn next_record(&mut self, wall_now: DateTime<Utc>) -> SimRecord {
        self.produced += 1;
        if self.produced.is_multiple_of(50_000) {
            self.truth.prune();
        }
        if let Some(&Reverse((due, seq))) = self.pending.peek() {
            if due <= self.clock_micros {
                self.pending.pop();
                if let Some(item) = self.pending_items.remove(&seq) {
                    return self.emit_scheduled(item, due);
                }
            }
        }
        self.clock_micros += (self.inter_arrival.sample(&mut self.rng) * 1e6) as i64;
        let roll: f64 = self.rng.gen();
        let rates = self.cfg.rates.clone();
        if roll < rates.malformed {
            return self.malformed(wall_now);
        }
        if roll < rates.malformed + rates.late {
            if let Some(record) = self.late() {
                return record;
            }
        }
        self.new_payment(rates)
    }

    fn new_payment(&mut self, rates: Rates) -> SimRecord {
        let card = self.world.pick_card(&mut self.rng);
        let merchant = self.world.pick_merchant(&mut self.rng);
        let mut time = self.clock_micros;
        if self.rng.gen_bool(rates.out_of_order) {
            time -= self.secs(1.0, 60.0);
        }
        let mut ip_country = None;
        if self.rng.gen_bool(rates.fraud) {
            let home = self.world.cards[card].country;
            match self.rng.gen_range(0..3) {
                // Card velocity burst: 5–9 more payments on this card within 2 minutes.
                0 => {
                    for _ in 0..self.rng.gen_range(5..10) {
                        let due = self.clock_micros + self.secs(2.0, 120.0);
                        self.schedule(
                            due,
                            Scheduled::Payment {
                                card,
                                ip_country: None,
                            },
                        );
                    }
                }
                // Geo mismatch: IP from another country than the card's.
                1 => ip_country = Some(World::other_country(&mut self.rng, home)),
                // Impossible travel: the same card abroad a few minutes later.
                _ => {
                    let due = self.clock_micros + self.secs(60.0, 300.0);
                    let abroad = World::other_country(&mut self.rng, home);
                    self.schedule(
                        due,
                        Scheduled::Payment {
                            card,
                            ip_country: Some(abroad),
                        },
                    );
                }
            }
        }
        let id = self.fresh_id();
        let at = self.at(time);
        let event = self
            .world
            .payment(&mut self.rng, id, at, card, merchant, ip_country);
        if self.rng.gen_bool(rates.duplicate) {
            let due = self.clock_micros + self.secs(1.0, 10.0);
            self.schedule(
                due,
                Scheduled::Resend(Box::new(event.clone()), Resend::Retry),
            );
        }
        if self.rng.gen_bool(rates.replay) {
            let due = self.clock_micros + self.secs(30.0, 120.0);
            self.schedule(
                due,
                Scheduled::Resend(Box::new(event.clone()), Resend::Replay),
            );
        }
        if self.rng.gen_bool(rates.conflict) {
            let mut altered = event.clone();
            altered.amount_minor = (altered.amount_minor + self.rng.gen_range(1..1000))
                .min(altered.currency.max_amount_minor() - 1)
                .max(1);
            if altered.amount_minor == event.amount_minor {
                altered.amount_minor += 1;
            }
            let due = self.clock_micros + self.secs(1.0, 90.0);
            self.schedule(due, Scheduled::Resend(Box::new(altered), Resend::Other));
        }
        self.valid(event, Resend::Other)
    }

    fn emit_scheduled(&mut self, item: Scheduled, due: i64) -> SimRecord {
        match item {
            Scheduled::Resend(event, resend) => self.valid(*event, resend),
            Scheduled::Payment { card, ip_country } => {
                let merchant = self.world.pick_merchant(&mut self.rng);
                let id = self.fresh_id();
                let at = self.at(due);
                let event = self
                    .world
                    .payment(&mut self.rng, id, at, card, merchant, ip_country);
                self.valid(event, Resend::Other)
            }
        }
    }

    /// A fresh payment whose event time is beyond the allowed lateness of its partition.
    fn late(&mut self) -> Option<SimRecord> {
        let id = self.fresh_id();
        let partition = partition_of(id.as_str(), self.cfg.partitions);
        let watermark = self.truth.watermark(partition as usize)?;
        let time = watermark - self.secs(30.0, 600.0);
        let card = self.world.pick_card(&mut self.rng);
        let merchant = self.world.pick_merchant(&mut self.rng);
        let at = self.at(time);
        let event = self
            .world
            .payment(&mut self.rng, id, at, card, merchant, None);
        Some(self.valid(event, Resend::Other))
    }

    fn valid(&mut self, event: PaymentEvent, resend: Resend) -> SimRecord {
        let key = event.transaction_id.as_str().to_owned();
        let partition = partition_of(&key, self.cfg.partitions);
        let kind = self.truth.observe(partition as usize, &event, resend);
        SimRecord {
            partition,
            key,
            payload: encode_json(&event),
            kind,
            event: Some(event),
        }
    }

    /// A broken record, of a kind whose validation code is known in advance.
    fn malformed(&mut self, wall_now: DateTime<Utc>) -> SimRecord {
        let card = self.world.pick_card(&mut self.rng);
        let merchant = self.world.pick_merchant(&mut self.rng);
        let id = self.fresh_id();
        let at = self.at(self.clock_micros);
        let event = self
            .world
            .payment(&mut self.rng, id, at, card, merchant, None);
        let key = event.transaction_id.as_str().to_owned();
        let code = MALFORMED_KINDS[self.rng.gen_range(0..MALFORMED_KINDS.len())];
        let payload = corrupt(&event, code, wall_now, &mut self.rng);
        SimRecord {
            partition: partition_of(&key, self.cfg.partitions),
            key,
            payload,
            kind: Kind::Malformed { code },
            event: None,
        }
    }
}

/// Breaks a valid event so that decoding it fails with exactly `code`.
pub fn corrupt(
    event: &PaymentEvent,
    code: &str,
    wall_now: DateTime<Utc>,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let bytes = encode_json(event);
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match code {
        "malformed_json" => {
            if rng.gen_bool(0.5) {
                // A truncated write: cut the object short.
                return bytes[..bytes.len() / 2].to_vec();
            }
            // Binary garbage that is not UTF-8.
            let mut garbage = vec![0xff, 0xfe];
            garbage.extend((0..rng.gen_range(8..64)).map(|_| rng.gen::<u8>()));
            return garbage;
        }
        "missing_field" => {
            let fields = [
                "event_time",
                "amount_minor",
                "currency",
                "merchant_id",
                "card_fingerprint",
                "customer_id",
            ];
            if let Some(obj) = v.as_object_mut() {
                obj.remove(fields[rng.gen_range(0..fields.len())]);
            }
        }
        "unknown_currency" => v["currency"] = Value::from("XBT"),
        "non_positive_amount" => {
            v["amount_minor"] = Value::from(-rng.gen_range(0..10_000_i64));
        }
        "amount_too_large" => v["amount_minor"] = Value::from(i64::MAX / 2),
        "event_time_in_future" => {
            let future = wall_now + Duration::days(2);
            v["event_time"] = Value::from(future.to_rfc3339());
        }
        "card_number_detected" => {
            // A well-known test PAN, as a buggy producer would send a real one.
            v["card_fingerprint"] = Value::from("4111111111111111");
        }
        "id_too_long" => {
            v["transaction_id"] =
                Value::from(format!("{}-{}", event.transaction_id, "x".repeat(80)));
        }
        "wrong_type" => v["amount_minor"] = Value::from(format!("{}", event.amount_minor)),
        "unsupported_schema_version" => v["schema_version"] = Value::from(2),
        _ => {}
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use paydedup_event::{decode, DecodeLimits};

    use super::*;

    fn config(seed: u64) -> TrafficConfig {
        TrafficConfig {
            seed,
            partitions: 4,
            start_time: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            event_rate: 100.0,
            allowed_lateness_secs: 300,
            retention_secs: 3600,
            merchants: 200,
            cards: 2000,
            rates: Rates {
                duplicate: 0.05,
                replay: 0.02,
                conflict: 0.01,
                out_of_order: 0.1,
                late: 0.01,
                malformed: 0.02,
                fraud: 0.02,
            },
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    #[test]
    fn same_seed_same_records() {
        let mut a = Traffic::new(config(7));
        let mut b = Traffic::new(config(7));
        for _ in 0..5000 {
            let (ra, rb) = (a.next_record(now()), b.next_record(now()));
            assert_eq!(ra.payload, rb.payload);
            assert_eq!(ra.partition, rb.partition);
        }
        let mut c = Traffic::new(config(8));
        assert_ne!(a.next_record(now()).payload, c.next_record(now()).payload);
    }

    #[test]
    fn malformed_records_fail_with_their_code_and_valid_ones_decode() {
        let mut t = Traffic::new(config(3));
        let mut seen = std::collections::HashSet::new();
        let limits = DecodeLimits::default();
        for _ in 0..20_000 {
            let r = t.next_record(now());
            let decoded = decode(&r.payload, now(), &limits);
            match r.kind {
                Kind::Malformed { code } => {
                    assert_eq!(decoded.map(|_| ()).unwrap_err().code(), code);
                    seen.insert(code);
                }
                _ => assert_eq!(decoded.as_ref().ok(), r.event.as_ref()),
            }
            assert_eq!(r.partition, partition_of(&r.key, 4));
        }
        assert_eq!(
            seen.len(),
            MALFORMED_KINDS.len(),
            "every malformed kind occurs"
        );
    }

    #[test]
    fn every_kind_occurs_and_amounts_are_positive() {
        let mut t = Traffic::new(config(11));
        let mut kinds = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let r = t.next_record(now());
            let name = match r.kind {
                Kind::Unique => "unique",
                Kind::Duplicate => "duplicate",
                Kind::Replay => "replay",
                Kind::Conflict => "conflict",
                Kind::Late { .. } => "late",
                Kind::Malformed { .. } => "malformed",
            };
            *kinds.entry(name).or_insert(0) += 1;
            if let Some(e) = r.event {
                assert!(e.amount_minor > 0);
                assert!(e.amount_minor <= e.currency.max_amount_minor());
            }
        }
        for k in [
            "unique",
            "duplicate",
            "replay",
            "conflict",
            "late",
            "malformed",
        ] {
            assert!(
                kinds.get(k).copied().unwrap_or(0) > 0,
                "{k} missing: {kinds:?}"
            );
        }
        assert!(kinds["unique"] > 15_000);
    }

    #[test]
    fn truth_boundary_exactly_at_watermark_is_not_late() {
        let mut truth = Truth::new(1, 300, 3600);
        let mut t = Traffic::new(config(1));
        let mut e = t
            .next_record(now())
            .event
            .unwrap_or_else(|| t.next_record(now()).event.unwrap());
        let base = e.event_time;
        assert_eq!(truth.observe(0, &e, Resend::Other), Kind::Unique);
        let mut at_wm = e.clone();
        at_wm.transaction_id = TransactionId::new_unchecked("tx-at-wm");
        at_wm.event_time = base - Duration::seconds(300);
        assert_eq!(truth.observe(0, &at_wm, Resend::Other), Kind::Unique);
        let mut before = e.clone();
        before.transaction_id = TransactionId::new_unchecked("tx-before");
        before.event_time = base - Duration::seconds(300) - Duration::microseconds(1);
        assert_eq!(
            truth.observe(0, &before, Resend::Other),
            Kind::Late { key_known: false }
        );
        e.amount_minor += 1;
        assert_eq!(truth.observe(0, &e, Resend::Other), Kind::Conflict);
    }
}
