//! Fuzz target for `paydedup_event::decode`.
//!
//! Input layout (see ../README.md):
//! - byte 0, `mode % 4`, picks the reference time (the record's Kafka CreateTime):
//!   - 0: fixed 2026-11-23T12:00:00Z; the payload is `data[1..]`.
//!   - 1: i64 LE milliseconds from `data[1..9]`, folded into 0001..=9999 (the range the
//!     processor lets through to `decode`); the payload is `data[9..]`.
//!   - 2: i64 LE milliseconds from `data[1..9]`, anything chrono can represent
//!     (else its min/max); the payload is `data[9..]`.
//!   - 3: i64 LE microseconds from `data[1..9]`, as in mode 2; the payload is `data[9..]`.
//! - An empty input is decoded as an empty payload with the fixed reference time.
//!
//! `decode` takes no Kafka key (its signature is bytes, reference time, limits), so
//! none is derived.
//!
//! Invariants, for every input:
//! - `decode` never panics (libFuzzer reports any panic).
//! - `Err(e)`: `e.code()` is non-empty ASCII snake_case, `e.field()` (if any) too, and
//!   `e.to_string()` contains no run of >= 13 ASCII digits that also occurs in the payload.
//! - `Ok(ev)`: `decode(encode_json(&ev))` with the same reference time and limits is
//!   `Ok` and equal to `ev` (`PaymentEvent: PartialEq`), with an equal content hash.
//!
//! Known findings can be tolerated, one by one and only when asked, with the
//! environment variable `PAYDEDUP_FUZZ_KNOWN` (comma-separated ids, see README):
//! - `schema_version_echo`: `UnsupportedSchemaVersion` prints the input's version.
//! - `year_10000_roundtrip`: an accepted event_time in year 10000 does not round-trip.
//!
//! Unset (the default), every invariant is enforced.

#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use paydedup_event::{content_hash, decode, encode_json, DecodeLimits, ValidationError};

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in ms (as the processor's
/// `kafka_timestamp_fits`).
const KAFKA_MIN_MS: i64 = -62_135_596_800_000;
const KAFKA_MAX_MS: i64 = 253_402_300_799_999;

struct Known {
    schema_version_echo: bool,
    year_10000_roundtrip: bool,
}

fn known() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let v = std::env::var("PAYDEDUP_FUZZ_KNOWN").unwrap_or_default();
        let has = |id: &str| v.split(',').any(|s| s.trim() == id);
        Known {
            schema_version_echo: has("schema_version_echo"),
            year_10000_roundtrip: has("year_10000_roundtrip"),
        }
    })
}

fn fixed_reference() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn clamp_or_extreme(t: Option<DateTime<Utc>>, raw: i64) -> DateTime<Utc> {
    t.unwrap_or(if raw < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// Splits the input into (reference time, payload).
fn split(data: &[u8]) -> (DateTime<Utc>, &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return (fixed_reference(), data);
    };
    if mode % 4 == 0 {
        return (fixed_reference(), rest);
    }
    let mut raw = [0u8; 8];
    let n = rest.len().min(8);
    raw[..n].copy_from_slice(&rest[..n]);
    let raw = i64::from_le_bytes(raw);
    let payload = &rest[n..];
    let reference = match mode % 4 {
        1 => {
            let span = (KAFKA_MAX_MS - KAFKA_MIN_MS) + 1;
            let ms = KAFKA_MIN_MS + raw.rem_euclid(span);
            Utc.timestamp_millis_opt(ms).single().unwrap()
        }
        2 => clamp_or_extreme(Utc.timestamp_millis_opt(raw).single(), raw),
        _ => clamp_or_extreme(Utc.timestamp_micros(raw).single(), raw),
    };
    (reference, payload)
}

fn is_snake_case(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !s.contains("__")
}

/// The first window of 13 consecutive ASCII digits in `msg` that also occurs in `input`.
fn echoed_digits<'m>(msg: &'m str, input: &[u8]) -> Option<&'m str> {
    const RUN: usize = 13;
    let m = msg.as_bytes();
    let mut i = 0;
    while i < m.len() {
        if !m[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < m.len() && m[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= RUN {
            for w in start..=i - RUN {
                let window = &m[w..w + RUN];
                if input.windows(RUN).any(|x| x == window) {
                    return Some(&msg[w..w + RUN]);
                }
            }
        }
    }
    None
}

fn check_error(e: &ValidationError, payload: &[u8]) {
    let code = e.code();
    assert!(is_snake_case(code), "code {code:?} is not snake_case ({e:?})");
    if let Some(field) = e.field() {
        assert!(is_snake_case(field), "field {field:?} is not snake_case ({e:?})");
    }
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty message for {code}");
    if let Some(digits) = echoed_digits(&msg, payload) {
        let tolerated = known().schema_version_echo
            && matches!(e, ValidationError::UnsupportedSchemaVersion { .. });
        assert!(
            tolerated,
            "error message echoes the input digit run {digits}: code={code} msg={msg:?}"
        );
    }
}

fn check_roundtrip(ev: &paydedup_event::PaymentEvent, reference: DateTime<Utc>, limits: &DecodeLimits) {
    let encoded = encode_json(ev);
    assert!(!encoded.is_empty(), "encode_json returned no bytes for {ev:?}");
    match decode(&encoded, reference, limits) {
        Ok(again) => {
            assert_eq!(&again, ev, "round trip changed the event");
            assert_eq!(content_hash(&again), content_hash(ev));
        }
        Err(e) => {
            let tolerated = known().year_10000_roundtrip && ev.event_time.year() > 9999;
            assert!(
                tolerated,
                "re-decoding encode_json output failed: {} ({e}); event={ev:?}; encoded={}",
                e.code(),
                String::from_utf8_lossy(&encoded)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (reference, payload) = split(data);
    let limits = DecodeLimits::default();
    match decode(payload, reference, &limits) {
        Err(e) => check_error(&e, payload),
        Ok(ev) => {
            assert!(ev.amount_minor > 0, "accepted non-positive amount: {ev:?}");
            check_roundtrip(&ev, reference, &limits);
        }
    }
});
