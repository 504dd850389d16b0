//! Keyed fraud state and its bytes.
//!
//! Every encoded value starts with the 8-byte big-endian last-seen event time: the state
//! store's TTL compaction filter reads it to drop cards and customers not seen for the
//! configured TTL. The rest is a fixed binary layout ([`crate::codec`]): a card or
//! customer is read and written back for every unique payment, so its encoding is on
//! the hot path (JSON cost more than the fraud rules themselves). Values written as
//! JSON by earlier builds are still read.
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
    pub currency: String,
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
    pub last_ip_country: Option<String>,
    pub last_ip_country_micros: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    pub last_seen_micros: i64,
    /// Devices seen, oldest first.
    pub devices: Vec<String>,
}

/// A value that does not parse (written by an incompatible build, or damaged) is treated
/// as no history rather than failing the pipeline: fraud signals are advisory.
fn decode<T: for<'de> Deserialize<'de> + Default>(
    b: &[u8],
    binary: impl FnOnce(i64, &mut Reader<'_>) -> Option<T>,
) -> T {
    let Some(last_seen) = b.get(..8).and_then(|t| t.try_into().ok()) else {
        return T::default();
    };
    let last_seen = i64::from_be_bytes(last_seen);
    match b.get(8) {
        Some(&codec::TAG) => binary(last_seen, &mut Reader::new(&b[9..])).unwrap_or_default(),
        // `{`: a JSON value of an earlier build.
        Some(b'{') => serde_json::from_slice(&b[8..]).unwrap_or_default(),
        _ => T::default(),
    }
}

fn writer(last_seen: i64) -> Writer {
    let mut w = Writer::with_capacity(64);
    w.bytes(&last_seen.to_be_bytes());
    w.u8(codec::TAG);
    w
}

/// `t` rounded up to a multiple of `quantum` (saturating at the top of the range).
fn round_up(t: i64, quantum: i64) -> i64 {
    match t.rem_euclid(quantum) {
        0 => t,
        r => t.saturating_add(quantum - r),
    }
}

impl CardState {
    pub fn key(card_fingerprint: &str) -> Vec<u8> {
        let mut k = b"card/".to_vec();
        k.extend_from_slice(card_fingerprint.as_bytes());
        k
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = writer(self.last_seen_micros);
        let n = w.count(self.recent.len());
        for t in self.recent.iter().take(n) {
            w.i64(*t);
        }
        let n = w.count(self.amounts.len());
        for a in self.amounts.iter().take(n) {
            w.str(&a.currency);
            w.u64(a.n);
            w.f64(a.mean);
            w.f64(a.m2);
        }
        w.opt_str(self.last_ip_country.as_deref());
        w.i64(self.last_ip_country_micros);
        w.finish()
    }

    pub fn decode(b: &[u8]) -> CardState {
        decode(b, |last_seen_micros, r| {
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
        })
    }
}

impl CustomerState {
    pub fn key(customer_id: &str) -> Vec<u8> {
        let mut k = b"customer/".to_vec();
        k.extend_from_slice(customer_id.as_bytes());
        k
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = writer(round_up(
            self.last_seen_micros,
            CUSTOMER_LAST_SEEN_QUANTUM_MICROS,
        ));
        let n = w.count(self.devices.len());
        for d in self.devices.iter().take(n) {
            w.str(d);
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> CustomerState {
        decode(b, |last_seen_micros, r| {
            let devices = (0..r.count()?).map(|_| r.str()).collect::<Option<_>>()?;
            let state = CustomerState {
                last_seen_micros,
                devices,
            };
            r.end().then_some(state)
        })
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
}
