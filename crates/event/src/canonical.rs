//! Canonical bytes and the content hash.
//!
//! Two records with the same `transaction_id` are a *duplicate* when their content hash
//! is equal and a *conflict* when it differs. The hash is computed over a canonical
//! encoding, so field order, whitespace, escapes and timestamp offsets in the input do
//! not matter; only the values do.
//!
//! What the hash covers: the payment's business content — id, amount, currency,
//! merchant, card, customer, payment method, IP, device, region. What it leaves out:
//! `event_time` and `schema_version`. A client retry that a gateway re-stamps with a new
//! time is still the same payment (counting it twice is exactly the bug paydedup
//! prevents), and a schema upgrade does not change what was paid.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;

use chrono::SecondsFormat;
use xxhash_rust::xxh3::xxh3_128;

use crate::decode::Wire;
use crate::PaymentEvent;

/// 128-bit content hash (XXH3-128 of the canonical content bytes). Not a security
/// boundary: it tells retries from conflicts, where a collision chance of 2^-64 at a
/// billion ids per key is irrelevant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub u128);

impl ContentHash {
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(b: [u8; 16]) -> Self {
        ContentHash(u128::from_be_bytes(b))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The canonical content bytes: fixed field order, one separator, no JSON escaping
/// ambiguity (each value is length-prefixed).
pub fn canonical_content(event: &PaymentEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let o = &mut out;
    field(o, event.transaction_id.as_str().as_bytes());
    field(o, &event.amount_minor.to_be_bytes());
    field(o, event.currency.code().as_bytes());
    field(o, event.merchant_id.as_bytes());
    field(o, &event.merchant_category.to_be_bytes());
    field(o, event.card_fingerprint.as_bytes());
    field(o, event.card_country.as_bytes());
    field(o, event.customer_id.as_bytes());
    ip_field(o, &event.ip_address);
    field(o, event.ip_country.as_bytes());
    field(o, event.device_id.as_bytes());
    field(o, event.region.as_bytes());
    field(o, event.payment_method.as_str().as_bytes());
    out
}

/// `v`, prefixed with its length (4 bytes, big-endian).
fn field(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// `v` as `Display` writes it, length-prefixed like [`field`]: formatted in place (no
/// `String` per event), the prefix patched once the text is written.
fn displayed_field(out: &mut Vec<u8>, v: &impl fmt::Display) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "{v}");
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// `ip` as its `Display` writes it, length-prefixed like [`field`]; an IPv4 address by
/// hand (nearly every payment's: `Display` through the formatter cost more than the
/// rest of the canonical bytes).
fn ip_field(out: &mut Vec<u8>, ip: &IpAddr) {
    let IpAddr::V4(v4) = ip else {
        return displayed_field(out, ip);
    };
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The content hash of an event (see the module doc for what it covers).
pub fn content_hash(event: &PaymentEvent) -> ContentHash {
    ContentHash(xxh3_128(&canonical_content(event)))
}

/// The wire encoding paydedup's simulator writes: one JSON object, fields in schema
/// order, `event_time` as RFC 3339 UTC with microseconds. [`crate::decode`] reads it back
/// to the same event.
pub fn encode_json(event: &PaymentEvent) -> Vec<u8> {
    let wire = Wire {
        transaction_id: Cow::Borrowed(event.transaction_id.as_str()),
        event_time: Cow::Owned(
            event
                .event_time
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
        amount_minor: event.amount_minor,
        currency: Cow::Borrowed(event.currency.code()),
        merchant_id: Cow::Borrowed(&event.merchant_id),
        merchant_category: Cow::Owned(format!("{:04}", event.merchant_category)),
        card_fingerprint: Cow::Borrowed(&event.card_fingerprint),
        card_country: Cow::Borrowed(&event.card_country),
        customer_id: Cow::Borrowed(&event.customer_id),
        ip_address: Cow::Owned(event.ip_address.to_string()),
        ip_country: Cow::Borrowed(&event.ip_country),
        device_id: Cow::Borrowed(&event.device_id),
        region: Cow::Borrowed(&event.region),
        payment_method: Cow::Borrowed(event.payment_method.as_str()),
        schema_version: event.schema_version,
    };
    // A struct of strings and integers always serialises.
    serde_json::to_vec(&wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Currency, PaymentMethod, TransactionId};
    use chrono::{TimeZone, Utc};

    /// The canonical bytes are stored (as hashes) and compared across versions: pinned
    /// here field by field, for an IPv4 and an IPv6 address, from an event built
    /// directly (not through the decoder).
    #[test]
    fn canonical_bytes_are_pinned() {
        for (ip, ip_text) in [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ] {
            let event = PaymentEvent {
                transaction_id: TransactionId::new_unchecked("tx-1"),
                event_time: Utc.with_ymd_and_hms(2026, 11, 23, 11, 59, 0).unwrap(),
                amount_minor: 1999,
                currency: Currency::from_code("USD").unwrap(),
                merchant_id: "m-42".into(),
                merchant_category: 5411,
                card_fingerprint: "9f86d081884c7d659a2feaa0c55ad015".into(),
                card_country: "US".into(),
                customer_id: "c-7".into(),
                ip_address: ip.parse().unwrap(),
                ip_country: "US".into(),
                device_id: "d-1".into(),
                region: "us-east".into(),
                payment_method: PaymentMethod::Card,
                schema_version: 1,
            };
            let mut expected = Vec::new();
            let mut field = |v: &[u8]| {
                expected.extend_from_slice(&(v.len() as u32).to_be_bytes());
                expected.extend_from_slice(v);
            };
            field(b"tx-1");
            field(&1999_i64.to_be_bytes());
            field(b"USD");
            field(b"m-42");
            field(&5411_u16.to_be_bytes());
            field(b"9f86d081884c7d659a2feaa0c55ad015");
            field(b"US");
            field(b"c-7");
            field(ip_text.as_bytes());
            field(b"US");
            field(b"d-1");
            field(b"us-east");
            field(b"card");
            assert_eq!(canonical_content(&event), expected, "{ip}");
        }
    }

    #[test]
    fn an_ipv4_address_is_written_as_display_writes_it() {
        let octets = [0, 1, 9, 10, 42, 99, 100, 101, 110, 199, 200, 250, 255];
        for a in octets {
            for b in octets {
                let ip = IpAddr::from([a, b, 255 - b, 255 - a]);
                let (mut by_hand, mut displayed) = (Vec::new(), Vec::new());
                ip_field(&mut by_hand, &ip);
                displayed_field(&mut displayed, &ip);
                assert_eq!(by_hand, displayed, "{ip}");
            }
        }
    }
}
