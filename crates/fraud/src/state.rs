//! Keyed fraud state and its bytes.
//!
//! Every encoded value starts with the 8-byte big-endian last-seen event time: the state
//! store's TTL compaction filter reads it to drop cards and customers not seen for the
//! configured TTL. The rest is JSON: small, versionable, easy to inspect.

use serde::{Deserialize, Serialize};

/// How many event times per card are kept (enough for any sane velocity threshold).
pub const MAX_RECENT: usize = 64;
/// How many devices per customer are remembered.
pub const MAX_DEVICES: usize = 16;
/// How many currencies per card keep amount statistics.
pub const MAX_CURRENCIES: usize = 4;

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

fn encode<T: Serialize>(last_seen: i64, v: &T) -> Vec<u8> {
    let mut out = last_seen.to_be_bytes().to_vec();
    // Serialising plain structs of numbers and strings cannot fail.
    out.extend(serde_json::to_vec(v).unwrap_or_default());
    out
}

fn decode<T: for<'de> Deserialize<'de> + Default>(b: &[u8]) -> T {
    // A value that does not parse (written by an incompatible build) is treated as no
    // history rather than failing the pipeline: fraud signals are advisory.
    b.get(8..)
        .and_then(|json| serde_json::from_slice(json).ok())
        .unwrap_or_default()
}

impl CardState {
    pub fn key(card_fingerprint: &str) -> Vec<u8> {
        let mut k = b"card/".to_vec();
        k.extend_from_slice(card_fingerprint.as_bytes());
        k
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self.last_seen_micros, self)
    }

    pub fn decode(b: &[u8]) -> CardState {
        decode(b)
    }
}

impl CustomerState {
    pub fn key(customer_id: &str) -> Vec<u8> {
        let mut k = b"customer/".to_vec();
        k.extend_from_slice(customer_id.as_bytes());
        k
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self.last_seen_micros, self)
    }

    pub fn decode(b: &[u8]) -> CustomerState {
        decode(b)
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
}
