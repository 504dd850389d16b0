//! The traffic generator: an iterator of records to produce, each with its ground-truth
//! [`Kind`]. Deterministic for a seed and a start time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use paydedup_event::{content_hash, encode_json, PaymentEvent, TransactionId};
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
    /// Payments from a producer whose clock is off by [`TrafficConfig::clock_skew_secs`].
    pub skewed: f64,
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
    /// How far the skewed producer's clock is off (either sign).
    pub clock_skew_secs: i64,
    /// The processor's `--future-tolerance-secs`.
    pub future_tolerance_secs: i64,
    /// A duplicate storm, if any.
    pub storm: Option<StormConfig>,
}

/// A duplicate storm: one payment re-sent again and again (a client stuck in a retry
/// loop), over one run or, with the same id, over several.
#[derive(Debug, Clone)]
pub struct StormConfig {
    pub transaction_id: String,
    /// Copies to send in this run.
    pub copies: u64,
    /// One copy every this many records.
    pub every: u64,
    /// Continuing a storm: event time (µs) the occurrence of the id an earlier run left
    /// in the dedup index was first seen.
    pub alive_since_micros: Option<i64>,
}

/// What a storm did in one run, for the manifest.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    pub transaction_id: String,
    pub partition: i32,
    pub copies: u64,
    pub unique: u64,
    pub duplicate: u64,
    pub late: u64,
    /// Event time the occurrence of the id still remembered at the end was first seen.
    pub alive_since_micros: Option<i64>,
}

struct Storm {
    cfg: StormConfig,
    /// The payment every copy repeats (event time aside).
    event: PaymentEvent,
    partition: i32,
    report: StormReport,
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
    /// Added to the producer's wall clock for the Kafka timestamp (a skewed producer).
    pub clock_skew_ms: i64,
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
    storm: Option<Storm>,
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
        let mut truth = Truth::new(
            cfg.partitions,
            cfg.allowed_lateness_secs,
            cfg.retention_secs,
        );
        let storm = cfg.storm.clone().map(|s| Storm::new(s, &cfg, &mut truth));
        Traffic {
            storm,
            truth,
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
        if let Some(record) = self.storm_copy() {
            return record;
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
        self.new_payment(rates, wall_now)
    }

    /// The largest event time of a valid, non-late record so far.
    pub fn max_event_time(&self) -> Option<DateTime<Utc>> {
        self.truth.max_event_micros().map(|m| self.at(m))
    }

    /// What the storm did so far.
    pub fn storm_report(&self) -> Option<StormReport> {
        let s = self.storm.as_ref()?;
        let mut r = s.report.clone();
        r.alive_since_micros = self
            .truth
            .first_seen(s.partition as usize, &s.cfg.transaction_id);
        Some(r)
    }

    /// A copy of the storm's payment, when one is due. Copies wait until the storm's
    /// partition has a watermark in this run (so an earlier run's occurrence is judged
    /// alive or expired against the same watermark the processor holds). Most copies
    /// are re-stamped with the stream's clock (a gateway retrying); one in ten keeps
    /// the remembered occurrence's own time (a replayer re-sending the original),
    /// which turns late once the watermark passes it.
    fn storm_copy(&mut self) -> Option<SimRecord> {
        let storm = self.storm.as_ref()?;
        // Due at every `every`-th record; a copy that had to wait is sent late, so
        // the run sends them all.
        let due = (storm.report.copies + 1).saturating_mul(storm.cfg.every);
        if storm.report.copies >= storm.cfg.copies || self.produced < due {
            return None;
        }
        let partition = storm.partition;
        self.truth.watermark(partition as usize)?;
        let original = self
            .truth
            .first_seen(partition as usize, &storm.cfg.transaction_id);
        let mut event = storm.event.clone();
        let time = match original {
            Some(t) if self.rng.gen_bool(0.1) => t,
            _ => self.clock_micros,
        };
        event.event_time = self.at(time);
        let record = self.valid(event, Resend::Other);
        if let Some(s) = self.storm.as_mut() {
            s.count(record.kind);
        }
        Some(record)
    }

    fn new_payment(&mut self, rates: Rates, wall_now: DateTime<Utc>) -> SimRecord {
        let card = self.world.pick_card(&mut self.rng);
        let merchant = self.world.pick_merchant(&mut self.rng);
        let mut time = self.clock_micros;
        if self.rng.gen_bool(rates.out_of_order) {
            time -= self.secs(1.0, 60.0);
        }
        // A producer with a skewed clock stamps its event time and its Kafka timestamp
        // by that clock. Only where the processor's verdict on it is certain: a
        // record that may or may not be "in the future" depending on when it is read
        // has no ground truth.
        let wall_ms = wall_now.timestamp_millis();
        let mut skew = None;
        if rates.skewed > 0.0 && self.rng.gen_bool(rates.skewed) {
            let skew_ms = self.cfg.clock_skew_secs * 1_000;
            let skewed = time + skew_ms * 1_000;
            let tolerance = self.cfg.future_tolerance_secs;
            if let Some(future) = future_verdict(skewed, wall_ms, skew_ms, tolerance) {
                time = skewed;
                skew = Some((skew_ms, future));
            }
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
        match skew {
            None => self.valid(event, Resend::Other),
            Some((skew_ms, future)) => {
                let mut record = if future {
                    let key = event.transaction_id.as_str().to_owned();
                    SimRecord {
                        partition: partition_of(&key, self.cfg.partitions),
                        key,
                        payload: encode_json(&event),
                        kind: Kind::Malformed {
                            code: "event_time_in_future",
                        },
                        event: None,
                        clock_skew_ms: 0,
                    }
                } else {
                    self.valid(event, Resend::Other)
                };
                record.clock_skew_ms = skew_ms;
                record
            }
        }
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
            clock_skew_ms: 0,
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
            clock_skew_ms: 0,
        }
    }
}

/// Whether a record whose event time is `event_micros` and whose Kafka timestamp is the
/// producer's wall clock plus `skew_ms` is `event_time_in_future` to a processor that
/// judges against `min(Kafka timestamp, its own clock) + tolerance`. The processor's
/// clock reads at least the producer's wall clock (it reads the record later), so the
/// verdict is certain only outside that band (with a minute's margin): `None` means it
/// depends on when the record is read.
pub fn future_verdict(
    event_micros: i64,
    wall_ms: i64,
    skew_ms: i64,
    tolerance_secs: i64,
) -> Option<bool> {
    let tolerance = tolerance_secs * 1_000_000;
    // The lowest and highest reference the processor can judge against (µs).
    let low = (wall_ms + skew_ms.min(0)) * 1_000;
    let high = (wall_ms + skew_ms) * 1_000;
    let margin = 60_000_000;
    if event_micros > high + tolerance + margin {
        Some(true)
    } else if event_micros + margin <= low + tolerance {
        Some(false)
    } else {
        None
    }
}

impl Storm {
    /// The storm's payment is a function of its id alone, so every run that continues
    /// the storm sends the same content (what makes a copy a duplicate).
    fn new(cfg: StormConfig, traffic: &TrafficConfig, truth: &mut Truth) -> Storm {
        let seed = xxh3_64(cfg.transaction_id.as_bytes());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let world = World::new(&mut rng, seed, traffic.merchants, traffic.cards);
        let event = world.payment(
            &mut rng,
            TransactionId::new_unchecked(cfg.transaction_id.clone()),
            traffic.start_time,
            0,
            0,
            None,
        );
        let partition = partition_of(&cfg.transaction_id, traffic.partitions);
        if let Some(since) = cfg.alive_since_micros {
            truth.remember(
                partition as usize,
                &cfg.transaction_id,
                since,
                content_hash(&event).0,
            );
        }
        Storm {
            report: StormReport {
                transaction_id: cfg.transaction_id.clone(),
                partition,
                ..StormReport::default()
            },
            cfg,
            event,
            partition,
        }
    }

    fn count(&mut self, kind: Kind) {
        let r = &mut self.report;
        r.copies += 1;
        match kind {
            Kind::Unique => r.unique += 1,
            Kind::Duplicate | Kind::Replay => r.duplicate += 1,
            Kind::Late { .. } => r.late += 1,
            Kind::Conflict | Kind::Malformed { .. } => {}
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
                skewed: 0.0,
            },
            clock_skew_secs: 3600,
            future_tolerance_secs: 600,
            storm: None,
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

    fn storm(copies: u64, every: u64, alive_since_micros: Option<i64>) -> StormConfig {
        StormConfig {
            transaction_id: "tx-storm-test".into(),
            copies,
            every,
            alive_since_micros,
        }
    }

    #[test]
    fn a_storm_repeats_one_payment_and_crosses_the_retention_edge() {
        // 10 payments per second of event time, 600 s retention: 20,000 records span
        // about 2,000 s, so the storm's id expires and comes back at least twice.
        let mut cfg = config(5);
        cfg.event_rate = 10.0;
        cfg.retention_secs = 600;
        cfg.storm = Some(storm(1_000, 20, None));
        let mut t = Traffic::new(cfg.clone());
        let limits = DecodeLimits::default();
        let mut hashes = std::collections::HashSet::new();
        let mut kinds = Vec::new();
        for _ in 0..20_000 {
            let r = t.next_record(now());
            if r.key == "tx-storm-test" {
                let e = decode(&r.payload, now(), &limits).expect("a storm copy is valid");
                hashes.insert(content_hash(&e).0);
                assert_eq!(r.partition, partition_of("tx-storm-test", 4));
                kinds.push(r.kind);
            }
        }
        let report = t.storm_report().unwrap();
        assert_eq!(report.copies, 1_000);
        assert_eq!(kinds.len(), 1_000);
        assert_eq!(hashes.len(), 1, "every copy has the same content");
        let count = |f: fn(&Kind) -> bool| kinds.iter().filter(|k| f(k)).count() as u64;
        assert_eq!(count(|k| *k == Kind::Unique), report.unique);
        assert!(report.unique >= 2, "expired and seen anew: {report:?}");
        assert!(report.duplicate > 900, "{report:?}");
        assert!(
            report.late > 0,
            "original-time copies turn late: {report:?}"
        );
        assert_eq!(report.unique + report.duplicate + report.late, 1_000);
        assert!(report.alive_since_micros.is_some());

        // A second run continues the storm: its first copies are duplicates of the
        // occurrence the first run left alive.
        let mut next = cfg.clone();
        next.seed = 6;
        next.start_time = t.max_event_time().unwrap() + Duration::seconds(60);
        next.storm = Some(storm(50, 20, report.alive_since_micros));
        let mut t2 = Traffic::new(next);
        let first = (0..2_000)
            .map(|_| t2.next_record(now()))
            .find(|r| r.key == "tx-storm-test")
            .unwrap();
        assert!(
            matches!(first.kind, Kind::Duplicate | Kind::Late { key_known: true }),
            "{:?}",
            first.kind
        );
    }

    #[test]
    fn a_skewed_producer_moves_its_partition_or_is_late() {
        // Event times two days before the wall clock, as in the fault campaign: an hour
        // ahead is still in the past, so the verdict is certain.
        let wall = now() + Duration::days(2);
        for (skew, want_late_after) in [(3600, true), (-3600, false)] {
            let mut cfg = config(9);
            cfg.rates.skewed = 0.01;
            cfg.clock_skew_secs = skew;
            let mut t = Traffic::new(cfg);
            let (mut skewed, mut skewed_late) = (0, 0);
            for _ in 0..20_000 {
                let r = t.next_record(wall);
                if r.clock_skew_ms != 0 {
                    assert_eq!(r.clock_skew_ms, skew * 1_000);
                    skewed += 1;
                    skewed_late += u32::from(matches!(r.kind, Kind::Late { .. }));
                }
            }
            assert!(skewed > 100, "{skewed}");
            if want_late_after {
                // An hour ahead moves the watermark: most later payments are late.
                let start = config(9).start_time.timestamp_micros();
                for p in 0..4 {
                    assert!(t.truth.watermark(p).unwrap() > start + 3_000_000_000);
                }
            } else {
                assert!(skewed_late > skewed * 9 / 10, "{skewed_late} of {skewed}");
            }
        }
    }

    #[test]
    fn a_skewed_record_whose_verdict_depends_on_the_reader_is_not_sent() {
        let wall_ms = now().timestamp_millis();
        let us = |secs: i64| (wall_ms + secs * 1_000) * 1_000;
        // Behind: the Kafka timestamp is the reference, exactly.
        assert_eq!(
            future_verdict(us(-3600), wall_ms, -3_600_000, 600),
            Some(false)
        );
        assert_eq!(
            future_verdict(us(-3600 + 700), wall_ms, -3_600_000, 600),
            Some(true)
        );
        assert_eq!(
            future_verdict(us(-3600 + 610), wall_ms, -3_600_000, 600),
            None
        );
        // Ahead: anywhere between the wall clock and the skewed timestamp.
        assert_eq!(future_verdict(us(3600), wall_ms, 3_600_000, 600), None);
        assert_eq!(
            future_verdict(us(-7200), wall_ms, 3_600_000, 600),
            Some(false)
        );
        assert_eq!(
            future_verdict(us(3600 + 700), wall_ms, 3_600_000, 600),
            Some(true)
        );
        // Near real time an hour ahead has no certain verdict: sent unskewed.
        let mut cfg = config(2);
        cfg.start_time = now();
        cfg.rates.skewed = 0.05;
        let mut t = Traffic::new(cfg);
        assert!((0..5_000).all(|_| t.next_record(now()).clock_skew_ms == 0));
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
