//! Keyed fraud state and its bytes.
//!
//! Every encoded value starts with the 8-byte big-endian last-seen event time: the state
//! store's TTL compaction filter reads it to drop cards and customers not seen for the
//! configured TTL. The rest is a compact binary layout ([`crate::codec`]): a card or
//! customer is read and written back for every unique payment, so its bytes are on the
//! hot path twice: encoding (JSON cost more than the fraud rules themselves) and size
//! (every byte goes through the write-ahead log, the memtable, a flush and
//! compactions). Values written by earlier builds (JSON, the v1 fixed-width layout)
//! are still read.
//!
//! Keys are short for the same reason ([`CardState::key`], [`CustomerState::key`]):
//! a card fingerprint's hex digits are stored packed, two to a byte. Earlier builds
//! used `card/…` and `customer/…`; [`current_key`] maps those to today's keys for
//! the one-time rewrite of an older state directory.
use paydedup_event::hex::{is_lower_hex, LOWER_HEX_VALUE};
use paydedup_event::SmolStr;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Reader, Writer};

/// How many event times per card are kept (enough for any sane velocity threshold).
pub const MAX_RECENT: usize = 64;
/// How many devices per customer are remembered.
pub const MAX_DEVICES: usize = 16;
/// How many currencies per card keep amount statistics.
pub const MAX_CURRENCIES: usize = 4;
/// A customer's last-seen time is stored rounded up to this (one hour, in µs).
///
/// A customer's state is otherwise its devices, which rarely change: stored to the
/// hour, a customer who pays again within the hour from a known device has the same
/// bytes as before, and the store writes only values whose bytes changed. The time
/// only decides expiry (the TTL is days), which it delays by at most the quantum,
/// never advances. Rounding is monotone, so the stored value is the rounded maximum
/// however the payments are split into batches.
pub const CUSTOMER_LAST_SEEN_QUANTUM_MICROS: i64 = 3_600 * 1_000_000;

/// Running amount statistics (Welford) of one card in one currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AmountStats {
    pub currency: SmolStr,
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardState {
    pub last_seen_micros: i64,
    /// Event times of recent payments, within the last hour of the card's max time.
    pub recent: Vec<i64>,
    pub amounts: Vec<AmountStats>,
    /// IP country and event time of the card's latest payment (for impossible travel).
    pub last_ip_country: Option<SmolStr>,
    pub last_ip_country_micros: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    pub last_seen_micros: i64,
    /// Devices seen, oldest first.
    pub devices: Vec<SmolStr>,
}

/// A value that does not parse (written by an incompatible build, or damaged) is treated
/// as no history rather than failing the pipeline: fraud signals are advisory.
fn decode<T: for<'de> Deserialize<'de> + Default>(
    b: &[u8],
    v2: impl FnOnce(i64, &mut Reader<'_>) -> Option<T>,
    v1: impl FnOnce(i64, &mut Reader<'_>) -> Option<T>,
) -> T {
    let Some(last_seen) = b.get(..8).and_then(|t| t.try_into().ok()) else {
        return T::default();
    };
    let last_seen = i64::from_be_bytes(last_seen);
    match b.get(8) {
        Some(&codec::TAG_V2) => v2(last_seen, &mut Reader::new(&b[9..])).unwrap_or_default(),
        Some(&codec::TAG) => v1(last_seen, &mut Reader::new(&b[9..])).unwrap_or_default(),
        // `{`: a JSON value of an earlier build.
        Some(b'{') => serde_json::from_slice(&b[8..]).unwrap_or_default(),
        _ => T::default(),
    }
}

/// The last-seen time and the reader after the tag of a value in today's layout
/// ([`codec::TAG_V2`]); `None` for any other value (an earlier layout, damaged).
fn v2_body(b: &[u8]) -> Option<(i64, Reader<'_>)> {
    let (last_seen, rest) = b.split_first_chunk::<8>()?;
    match rest.split_first() {
        Some((&codec::TAG_V2, body)) => Some((i64::from_be_bytes(*last_seen), Reader::new(body))),
        _ => None,
    }
}

/// A writer appending a value to `buf`, its header written.
fn writer(buf: Vec<u8>, last_seen: i64) -> Writer {
    let mut w = Writer::appending_to(buf);
    w.bytes(&last_seen.to_be_bytes());
    w.u8(codec::TAG_V2);
    w
}

/// First byte of a card key whose fingerprint is lowercase hex (every validated one):
/// then its digit count (one byte) and the digits packed two to a byte, an odd last
/// digit in the high half. 32 digits: 18 bytes, where `card/…` took 37.
const CARD_HEX: u8 = 0x01;
/// First byte of a card key whose fingerprint is not lowercase hex, or longer than
/// 255: the fingerprint's bytes as they are.
const CARD_RAW: u8 = 0x02;
/// First byte of a customer key: the id's bytes follow.
const CUSTOMER: u8 = 0x03;

/// Today's key for a key written by an earlier build (`card/…`, `customer/…`), or
/// `None` for a key that is not one.
pub fn current_key(legacy: &[u8]) -> Option<Vec<u8>> {
    if let Some(id) = legacy.strip_prefix(b"card/") {
        return std::str::from_utf8(id).ok().map(CardState::key);
    }
    if let Some(id) = legacy.strip_prefix(b"customer/") {
        return std::str::from_utf8(id).ok().map(CustomerState::key);
    }
    None
}

/// The key prefixes earlier builds wrote (see [`current_key`]).
pub const LEGACY_KEY_PREFIXES: [&[u8]; 2] = [b"card/", b"customer/"];

/// `t` rounded up to a multiple of `quantum` (saturating at the top of the range).
fn round_up(t: i64, quantum: i64) -> i64 {
    match t.rem_euclid(quantum) {
        0 => t,
        r => t.saturating_add(quantum - r),
    }
}

impl CardState {
    /// The key of a card: packed when its fingerprint is lowercase hex, raw otherwise
    /// (the two forms start with different bytes, so they never meet).
    pub fn key(fingerprint: &str) -> Vec<u8> {
        let mut k = Vec::new();
        CardState::key_into(fingerprint, &mut k);
        k
    }

    /// [`CardState::key`], appended to `out` (the pipeline keeps a batch's keys in one
    /// buffer).
    pub fn key_into(fingerprint: &str, out: &mut Vec<u8>) {
        let hex = fingerprint.as_bytes();
        let packable = u8::try_from(hex.len())
            .ok()
            .filter(|_| hex.iter().copied().all(is_lower_hex));
        let Some(len) = packable else {
            out.reserve(1 + hex.len());
            out.push(CARD_RAW);
            out.extend_from_slice(hex);
            return;
        };
        out.reserve(2 + hex.len().div_ceil(2));
        out.push(CARD_HEX);
        out.push(len);
        let digit = |b: &u8| LOWER_HEX_VALUE[usize::from(*b)];
        let mut pairs = hex.chunks_exact(2);
        out.extend(pairs.by_ref().map(|p| digit(&p[0]) << 4 | digit(&p[1])));
        if let [last] = pairs.remainder() {
            out.push(digit(last) << 4);
        }
    }

    /// Times are zigzag deltas back from `last_seen_micros` (wrapping, so any `i64`
    /// round-trips): the recent ones are within the hour, a few bytes each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        self.encode_into(&mut out);
        out
    }

    /// [`CardState::encode`], appended to `out` (no allocation once `out` is large
    /// enough: the pipeline encodes thousands a batch).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let last = self.last_seen_micros;
        let mut w = writer(std::mem::take(out), last);
        let n = w.count(self.recent.len());
        for t in self.recent.iter().take(n) {
            w.zigzag(last.wrapping_sub(*t));
        }
        let n = w.count(self.amounts.len());
        for a in self.amounts.iter().take(n) {
            w.vstr(&a.currency);
            w.varint(a.n);
            w.f64(a.mean);
            w.f64(a.m2);
        }
        match self.last_ip_country.as_deref() {
            Some(c) => {
                w.u8(1);
                w.vstr(c);
            }
            None => w.u8(0),
        }
        w.zigzag(last.wrapping_sub(self.last_ip_country_micros));
        *out = w.finish();
    }

    pub fn decode(b: &[u8]) -> CardState {
        decode(b, Self::decode_v2, Self::decode_v1)
    }

    /// `self` becomes what [`CardState::decode`] would answer for `b`, in the memory of
    /// its lists when `b` is in today's layout: the pipeline decodes a card for every
    /// payment into one state, so this allocates nothing once its lists have grown.
    pub fn decode_into(&mut self, b: &[u8]) {
        let read = v2_body(b).and_then(|(last, mut r)| self.read_v2(last, &mut r));
        if read.is_none() {
            *self = CardState::decode(b);
        }
    }

    /// The v2 fields after the tag into `self` (whose lists are cleared first); `None`
    /// if they do not parse (`self` is then partly overwritten).
    fn read_v2(&mut self, last: i64, r: &mut Reader<'_>) -> Option<()> {
        self.last_seen_micros = last;
        self.recent.clear();
        for _ in 0..r.count()? {
            self.recent.push(last.wrapping_sub(r.zigzag()?));
        }
        self.amounts.clear();
        for _ in 0..r.count()? {
            self.amounts.push(AmountStats {
                currency: r.vstr()?,
                n: r.varint()?,
                mean: r.f64()?,
                m2: r.f64()?,
            });
        }
        self.last_ip_country = match r.count()? {
            0 => None,
            1 => Some(r.vstr()?),
            _ => return None,
        };
        self.last_ip_country_micros = last.wrapping_sub(r.zigzag()?);
        r.end().then_some(())
    }

    fn decode_v2(last: i64, r: &mut Reader<'_>) -> Option<CardState> {
        let mut state = CardState::default();
        state.read_v2(last, r)?;
        Some(state)
    }

    fn decode_v1(last_seen_micros: i64, r: &mut Reader<'_>) -> Option<CardState> {
        let recent = (0..r.count()?).map(|_| r.i64()).collect::<Option<_>>()?;
        let amounts = (0..r.count()?)
            .map(|_| {
                Some(AmountStats {
                    currency: r.str()?,
                    n: r.u64()?,
                    mean: r.f64()?,
                    m2: r.f64()?,
                })
            })
            .collect::<Option<_>>()?;
        let state = CardState {
            last_seen_micros,
            recent,
            amounts,
            last_ip_country: r.opt_str()?,
            last_ip_country_micros: r.i64()?,
        };
        r.end().then_some(state)
    }
}

impl CustomerState {
    pub fn key(customer_id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        CustomerState::key_into(customer_id, &mut k);
        k
    }

    /// [`CustomerState::key`], appended to `out`.
    pub fn key_into(customer_id: &str, out: &mut Vec<u8>) {
        out.reserve(1 + customer_id.len());
        out.push(CUSTOMER);
        out.extend_from_slice(customer_id.as_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        self.encode_into(&mut out);
        out
    }

    /// [`CustomerState::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let last_seen = round_up(self.last_seen_micros, CUSTOMER_LAST_SEEN_QUANTUM_MICROS);
        let mut w = writer(std::mem::take(out), last_seen);
        let n = w.count(self.devices.len());
        for d in self.devices.iter().take(n) {
            w.vstr(d);
        }
        *out = w.finish();
    }

    pub fn decode(b: &[u8]) -> CustomerState {
        decode(
            b,
            |last_seen, r| Self::read(last_seen, r, |r| r.vstr()),
            |last_seen, r| Self::read(last_seen, r, |r| r.str()),
        )
    }

    /// `self` becomes what [`CustomerState::decode`] would answer for `b`, in the
    /// memory of its device list when `b` is in today's layout (see
    /// [`CardState::decode_into`]).
    pub fn decode_into(&mut self, b: &[u8]) {
        let read = v2_body(b).and_then(|(last_seen, mut r)| {
            self.last_seen_micros = last_seen;
            self.devices.clear();
            for _ in 0..r.count()? {
                self.devices.push(r.vstr()?);
            }
            r.end().then_some(())
        });
        if read.is_none() {
            *self = CustomerState::decode(b);
        }
    }

    /// The devices after the tag; v1 and v2 differ only in how a string's length is
    /// written (`device`).
    fn read(
        last_seen_micros: i64,
        r: &mut Reader<'_>,
        device: fn(&mut Reader<'_>) -> Option<SmolStr>,
    ) -> Option<CustomerState> {
        let devices = (0..r.count()?).map(|_| device(r)).collect::<Option<_>>()?;
        let state = CustomerState {
            last_seen_micros,
            devices,
        };
        r.end().then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_with_last_seen_and_round_trip() {
        let c = CardState {
            last_seen_micros: 123,
            recent: vec![1, 2],
            ..CardState::default()
        };
        let b = c.encode();
        assert_eq!(i64::from_be_bytes(b[..8].try_into().unwrap()), 123);
        assert_eq!(CardState::decode(&b), c);
        assert_eq!(CardState::decode(b"short"), CardState::default());
    }

    fn card() -> CardState {
        CardState {
            last_seen_micros: 1_700_000_000_000_000,
            recent: vec![1_699_999_000_000_000, 1_700_000_000_000_000],
            amounts: vec![AmountStats {
                currency: "EUR".into(),
                n: 3,
                mean: 1234.5,
                m2: 0.25,
            }],
            last_ip_country: Some("DE".into()),
            last_ip_country_micros: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn every_field_round_trips_and_a_customer_too() {
        let c = card();
        assert_eq!(CardState::decode(&c.encode()), c);
        // Encoding into a buffer appends the same bytes.
        let customer = CustomerState {
            last_seen_micros: 7,
            devices: vec!["d-1".into()],
        };
        let mut out = b"pre".to_vec();
        c.encode_into(&mut out);
        customer.encode_into(&mut out);
        assert_eq!(out, [&b"pre"[..], &c.encode(), &customer.encode()].concat());
        let no_country = CardState {
            last_ip_country: None,
            ..card()
        };
        assert_eq!(CardState::decode(&no_country.encode()), no_country);
        let cu = CustomerState {
            last_seen_micros: -5 * CUSTOMER_LAST_SEEN_QUANTUM_MICROS,
            devices: vec!["d-1".into(), "".into(), "ü-2".into()],
        };
        assert_eq!(CustomerState::decode(&cu.encode()), cu);
    }

    #[test]
    fn a_customer_is_stored_to_the_hour_rounded_up_whatever_the_batches() {
        const H: i64 = CUSTOMER_LAST_SEEN_QUANTUM_MICROS;
        let at = |t: i64| CustomerState {
            last_seen_micros: t,
            devices: vec!["d-1".into()],
        };
        let stored = |t: i64| CustomerState::decode(&at(t).encode()).last_seen_micros;
        // Up, never down: expiry is late by at most the quantum, never early.
        assert_eq!(stored(10 * H + 1), 11 * H);
        assert_eq!(stored(10 * H), 10 * H);
        assert_eq!(stored(-H - 1), -H);
        assert_eq!(stored(i64::MAX - 1), i64::MAX);
        // Within the hour the bytes do not change (so the store skips the write).
        assert_eq!(at(10 * H + 1).encode(), at(11 * H).encode());
        assert_ne!(at(10 * H + 1).encode(), at(11 * H + 1).encode());
        // Seen at 10h+1, 10h+50m and 11h+1 in one batch or one at a time: stored the same.
        let times = [10 * H + 1, 10 * H + 50 * 60_000_000, 11 * H + 1];
        let together = stored(*times.iter().max().unwrap());
        let mut one_by_one = 0;
        for t in times {
            one_by_one = stored(one_by_one.max(t));
        }
        assert_eq!(together, one_by_one);
    }

    #[test]
    fn json_values_of_earlier_builds_are_still_read() {
        let c = card();
        let mut old = c.last_seen_micros.to_be_bytes().to_vec();
        old.extend(serde_json::to_vec(&c).unwrap());
        assert_eq!(CardState::decode(&old), c);
    }

    #[test]
    fn a_damaged_value_is_no_history_not_a_panic() {
        let b = card().encode();
        // Every truncation, and trailing garbage, decode to the empty state.
        for n in 0..b.len() {
            assert_eq!(
                CardState::decode(&b[..n]),
                CardState::default(),
                "cut at {n}"
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(CardState::decode(&longer), CardState::default());
        // A length that claims more than the value holds.
        let mut lying = card().encode();
        lying[9] = 255;
        assert_eq!(CardState::decode(&lying), CardState::default());
    }

    #[test]
    fn decoding_into_a_used_state_answers_what_decode_does() {
        let c = card();
        let mut json = c.last_seen_micros.to_be_bytes().to_vec();
        json.extend(serde_json::to_vec(&c).unwrap());
        let bigger = CardState {
            recent: (0..40).collect(),
            amounts: vec![card().amounts[0].clone(); 3],
            ..card()
        };
        let mut values = vec![
            c.encode(),
            CardState::default().encode(),
            CardState {
                last_ip_country: None,
                ..card()
            }
            .encode(),
            bigger.encode(),
            v1_card(&c),
            json,
            Vec::new(),
        ];
        // Damaged: every truncation of a v2 value, and trailing garbage.
        let b = c.encode();
        values.extend((0..b.len()).map(|n| b[..n].to_vec()));
        values.push([&b[..], &[0]].concat());
        // Each into a state that held something else (longer lists, a country).
        let mut into = bigger.clone();
        for v in &values {
            into.decode_into(v);
            assert_eq!(into, CardState::decode(v), "{v:?}");
            into = bigger.clone();
            into.decode_into(v);
            assert_eq!(into, CardState::decode(v), "{v:?}");
        }
        let customers = [
            CustomerState {
                last_seen_micros: 7,
                devices: vec!["d-1".into(), "d-2".into()],
            },
            CustomerState::default(),
        ];
        let used = CustomerState {
            last_seen_micros: 1,
            devices: vec!["x".into(); 5],
        };
        for c in &customers {
            let b = c.encode();
            for v in (0..=b.len())
                .map(|n| &b[..n])
                .chain([&[&b[..], &[0]].concat()[..]])
            {
                let mut into = used.clone();
                into.decode_into(v);
                assert_eq!(into, CustomerState::decode(v), "{v:?}");
            }
        }
    }

    /// `c` as an earlier build wrote it: the v1 fixed-width layout.
    fn v1_card(c: &CardState) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.bytes(&c.last_seen_micros.to_be_bytes());
        w.u8(codec::TAG);
        w.count(c.recent.len());
        for t in &c.recent {
            w.i64(*t);
        }
        w.count(c.amounts.len());
        for a in &c.amounts {
            w.str(&a.currency);
            w.u64(a.n);
            w.f64(a.mean);
            w.f64(a.m2);
        }
        w.opt_str(c.last_ip_country.as_deref());
        w.i64(c.last_ip_country_micros);
        w.finish()
    }

    #[test]
    fn v1_values_of_earlier_builds_are_still_read_and_v2_is_smaller() {
        let c = card();
        let v1 = v1_card(&c);
        assert_eq!(CardState::decode(&v1), c);
        let mut w = Writer::with_capacity(32);
        w.bytes(&7i64.to_be_bytes());
        w.u8(codec::TAG);
        w.count(2);
        w.str("d-1");
        w.str("d-2");
        let customer = CustomerState {
            last_seen_micros: 7,
            devices: vec!["d-1".into(), "d-2".into()],
        };
        assert_eq!(CustomerState::decode(&w.finish()), customer);
        // Written today: v2, and much shorter (a typical card: 1 recent time, 1
        // currency, a country).
        let v2 = c.encode();
        assert_eq!(v2[8], codec::TAG_V2);
        let typical = CardState {
            recent: vec![c.last_seen_micros],
            ..card()
        };
        assert_eq!(v1_card(&typical).len(), 61);
        assert_eq!(typical.encode().len(), 38);
    }

    #[test]
    fn extreme_times_round_trip_through_the_deltas() {
        let c = CardState {
            last_seen_micros: i64::MIN,
            recent: vec![i64::MAX, 0, i64::MIN, -1],
            amounts: vec![AmountStats {
                currency: "JPY".into(),
                n: u64::MAX,
                mean: f64::MAX,
                m2: -0.0,
            }],
            last_ip_country: Some("".into()),
            last_ip_country_micros: i64::MAX,
        };
        assert_eq!(CardState::decode(&c.encode()), c);
        let c = CardState {
            last_seen_micros: i64::MAX,
            last_ip_country_micros: i64::MIN,
            ..c
        };
        assert_eq!(CardState::decode(&c.encode()), c);
    }

    #[test]
    fn card_keys_pack_hex_and_never_collide_with_other_forms() {
        let hex32 = "603432320813988518e9a6fd5882a6d3";
        let k = CardState::key(hex32);
        assert_eq!(k.len(), 18);
        assert_eq!(&k[..4], &[CARD_HEX, 32, 0x60, 0x34]);
        // An odd digit count keeps its length, so "abc" and "abc0" differ.
        assert_eq!(CardState::key("abc"), vec![CARD_HEX, 3, 0xab, 0xc0]);
        // Every digit packs to its value.
        assert_eq!(
            CardState::key("0123456789abcdef"),
            vec![CARD_HEX, 16, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        // Appending keeps what the buffer held: a batch's keys share one buffer.
        let mut out = b"xy".to_vec();
        CardState::key_into(hex32, &mut out);
        CustomerState::key_into("c-1", &mut out);
        assert_eq!(out, [&b"xy"[..], &k, b"\x03c-1"].concat());
        assert_ne!(CardState::key("abc"), CardState::key("abc0"));
        // Anything not lowercase hex is stored raw, under another first byte.
        assert_eq!(CardState::key("ABC"), b"\x02ABC".to_vec());
        assert_eq!(CardState::key("k-1")[0], CARD_RAW);
        let long = "a".repeat(256);
        assert_eq!(CardState::key(&long)[0], CARD_RAW);
        // A card and a customer with the same id are two keys.
        assert_ne!(CardState::key("abc"), CustomerState::key("abc"));
        assert_eq!(CustomerState::key("c-1"), b"\x03c-1".to_vec());
        // Distinct fingerprints, distinct keys (a sample of lengths and digits).
        let mut seen = std::collections::HashSet::from([CardState::key("")]);
        for len in 1..40 {
            for d in ["0", "f", "9", "a", "A"] {
                assert!(seen.insert(CardState::key(&d.repeat(len))));
            }
        }
    }

    #[test]
    fn keys_of_earlier_builds_map_to_todays() {
        let hex32 = "603432320813988518e9a6fd5882a6d3";
        assert_eq!(
            current_key(format!("card/{hex32}").as_bytes()),
            Some(CardState::key(hex32))
        );
        assert_eq!(
            current_key(b"customer/c-00073158"),
            Some(CustomerState::key("c-00073158"))
        );
        assert_eq!(current_key(&CardState::key(hex32)), None);
        assert_eq!(current_key(b"other/x"), None);
        for prefix in LEGACY_KEY_PREFIXES {
            let mut k = prefix.to_vec();
            k.extend_from_slice(b"ab");
            assert!(current_key(&k).is_some());
        }
    }
}
