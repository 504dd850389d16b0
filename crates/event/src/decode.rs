//! Bytes → [`PaymentEvent`], or a typed [`ValidationError`].
//!
//! Three paths, one answer. The flat-record scanner ([`flat`]) reads the one shape
//! producers write (fifteen fields, no escapes) in a single pass; it reads nothing serde
//! would read differently, and hands everything else on. serde then deserialises
//! straight into a borrowed wire struct (no allocation for unescaped strings). Only when
//! that fails does the slow path parse a `serde_json::Value` to find out *which* rule
//! the record broke (missing field, wrong type, …), so error rows carry a precise code
//! without slowing valid traffic down. All paths end in the same [`validate`] function,
//! so they cannot disagree about a record that parses.
//!
//! Nothing here panics: `serde_json` bounds recursion (deeply nested input is a
//! `malformed_json` error), payloads are size-checked before parsing, and all
//! arithmetic is checked.

use std::borrow::Cow;
use std::net::IpAddr;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payment::{PaymentMethod, SmolStr, TransactionId, SCHEMA_VERSION};
use crate::{CardFingerprint, Currency, PaymentEvent, ValidationError};

/// Bounds applied while decoding.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Larger payloads are rejected before parsing (`payload_too_large`).
    pub max_payload_bytes: usize,
    /// How far `event_time` may lie after the record's reference time (its Kafka
    /// timestamp) before it is `event_time_in_future`. Using the record's own timestamp,
    /// not the wall clock, keeps the decision the same when a record is re-read after a
    /// crash.
    pub future_tolerance: Duration,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_payload_bytes: 64 * 1024,
            future_tolerance: Duration::minutes(10),
        }
    }
}

/// Longest accepted free-text field (ids, region), in bytes.
const MAX_TEXT_LEN: usize = 64;

/// The JSON shape on the wire. Shared by the decoder's fast path and the encoder.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Wire<'a> {
    #[serde(borrow)]
    pub transaction_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
    pub amount_minor: i64,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    #[serde(borrow)]
    pub merchant_id: Cow<'a, str>,
    #[serde(borrow)]
    pub merchant_category: Cow<'a, str>,
    #[serde(borrow)]
    pub card_fingerprint: Cow<'a, str>,
    #[serde(borrow)]
    pub card_country: Cow<'a, str>,
    #[serde(borrow)]
    pub customer_id: Cow<'a, str>,
    #[serde(borrow)]
    pub ip_address: Cow<'a, str>,
    #[serde(borrow)]
    pub ip_country: Cow<'a, str>,
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    #[serde(borrow)]
    pub region: Cow<'a, str>,
    #[serde(borrow)]
    pub payment_method: Cow<'a, str>,
    pub schema_version: i64,
}

/// Field names in schema order; `amount_minor` and `schema_version` are integers, the
/// rest strings.
const FIELDS: [&str; 15] = [
    "transaction_id",
    "event_time",
    "amount_minor",
    "currency",
    "merchant_id",
    "merchant_category",
    "card_fingerprint",
    "card_country",
    "customer_id",
    "ip_address",
    "ip_country",
    "device_id",
    "region",
    "payment_method",
    "schema_version",
];

/// `amount_minor` and `schema_version`: the fields that are integers, not strings.
fn is_integer_field(field: &str) -> bool {
    field == "amount_minor" || field == "schema_version"
}

/// Decodes and validates one record.
///
/// `reference_time` is the record's own timestamp (Kafka CreateTime), against which
/// `event_time_in_future` is judged.
pub fn decode(
    bytes: &[u8],
    reference_time: DateTime<Utc>,
    limits: &DecodeLimits,
) -> Result<PaymentEvent, ValidationError> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(ValidationError::PayloadTooLarge {
            size: bytes.len(),
            limit: limits.max_payload_bytes,
        });
    }
    if let Some(wire) = flat::scan(bytes) {
        return validate(&wire, reference_time, limits);
    }
    match serde_json::from_slice::<Wire<'_>>(bytes) {
        Ok(wire) => validate(&wire, reference_time, limits),
        Err(fast_error) => Err(classify(bytes, &fast_error, reference_time, limits)),
    }
}

/// The slow path: why did the fast path refuse these bytes?
fn classify(
    bytes: &[u8],
    fast_error: &serde_json::Error,
    reference_time: DateTime<Utc>,
    limits: &DecodeLimits,
) -> ValidationError {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return malformed(&e),
    };
    let Value::Object(map) = value else {
        return ValidationError::NotAnObject;
    };
    // The schema version decides what the other fields mean, so it is checked first.
    match map.get("schema_version") {
        None | Some(Value::Null) => {
            return ValidationError::MissingField {
                field: "schema_version",
            }
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v != SCHEMA_VERSION => {
                return ValidationError::UnsupportedSchemaVersion { version: v }
            }
            Some(_) => {}
            None => {
                return ValidationError::WrongType {
                    field: "schema_version",
                    expected: "integer",
                }
            }
        },
        Some(_) => {
            return ValidationError::WrongType {
                field: "schema_version",
                expected: "integer",
            }
        }
    }
    for field in FIELDS {
        let integer = is_integer_field(field);
        match map.get(field) {
            None | Some(Value::Null) => return ValidationError::MissingField { field },
            Some(Value::Number(n)) if integer => {
                if n.as_i64().is_none() {
                    // A positive integer beyond i64 is an absurd amount; a float is a
                    // type error (money is never a float).
                    return if n.is_u64() && field == "amount_minor" {
                        ValidationError::AmountTooLarge
                    } else {
                        ValidationError::WrongType {
                            field,
                            expected: "integer",
                        }
                    };
                }
            }
            Some(_) if integer => {
                return ValidationError::WrongType {
                    field,
                    expected: "integer",
                }
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return ValidationError::WrongType {
                    field,
                    expected: "string",
                }
            }
        }
    }
    // Every field is present with the right type, yet the fast path refused: for
    // example a duplicated key. Re-run the semantic checks so the more specific code
    // wins, else report the parse error.
    let s = |f: &str| -> Cow<'_, str> {
        match map.get(f) {
            Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
            _ => Cow::Borrowed(""),
        }
    };
    let i = |f: &str| map.get(f).and_then(Value::as_i64).unwrap_or_default();
    let wire = Wire {
        transaction_id: s("transaction_id"),
        event_time: s("event_time"),
        amount_minor: i("amount_minor"),
        currency: s("currency"),
        merchant_id: s("merchant_id"),
        merchant_category: s("merchant_category"),
        card_fingerprint: s("card_fingerprint"),
        card_country: s("card_country"),
        customer_id: s("customer_id"),
        ip_address: s("ip_address"),
        ip_country: s("ip_country"),
        device_id: s("device_id"),
        region: s("region"),
        payment_method: s("payment_method"),
        schema_version: i("schema_version"),
    };
    match validate(&wire, reference_time, limits) {
        Err(e) => e,
        Ok(_) => malformed(fast_error),
    }
}

fn malformed(e: &serde_json::Error) -> ValidationError {
    use serde_json::error::Category;
    // Only the category and position: serde's message can quote the input.
    let category = match e.classify() {
        Category::Io => "io",
        Category::Syntax => "syntax",
        Category::Data => "data",
        Category::Eof => "eof",
    };
    ValidationError::MalformedJson {
        category,
        line: e.line(),
        column: e.column(),
    }
}

/// The semantic rules, in a fixed order (the first broken rule is reported).
pub(crate) fn validate(
    w: &Wire<'_>,
    reference_time: DateTime<Utc>,
    limits: &DecodeLimits,
) -> Result<PaymentEvent, ValidationError> {
    if w.schema_version != SCHEMA_VERSION {
        return Err(ValidationError::UnsupportedSchemaVersion {
            version: w.schema_version,
        });
    }
    let transaction_id = transaction_id(&w.transaction_id)?;
    let event_time = event_time(&w.event_time, reference_time, limits)?;
    let currency = Currency::from_code(&w.currency).ok_or(ValidationError::UnknownCurrency)?;
    if w.amount_minor <= 0 {
        return Err(ValidationError::NonPositiveAmount);
    }
    if w.amount_minor > currency.max_amount_minor() {
        return Err(ValidationError::AmountTooLarge);
    }
    let merchant_id = text("merchant_id", &w.merchant_id)?;
    let merchant_category = merchant_category(&w.merchant_category)?;
    let card_fingerprint = card_fingerprint(&w.card_fingerprint)?;
    let card_country = country("card_country", &w.card_country)?;
    let customer_id = text("customer_id", &w.customer_id)?;
    let ip_address: IpAddr = w
        .ip_address
        .parse()
        .map_err(|_| ValidationError::InvalidIpAddress)?;
    let ip_country = country("ip_country", &w.ip_country)?;
    let device_id = text("device_id", &w.device_id)?;
    let region = text("region", &w.region)?;
    let payment_method =
        PaymentMethod::parse(&w.payment_method).ok_or(ValidationError::InvalidPaymentMethod)?;
    Ok(PaymentEvent {
        transaction_id,
        event_time,
        amount_minor: w.amount_minor,
        currency,
        merchant_id,
        merchant_category,
        card_fingerprint,
        card_country,
        customer_id,
        ip_address,
        ip_country,
        device_id,
        region,
        payment_method,
        schema_version: w.schema_version,
    })
}

fn transaction_id(s: &str) -> Result<TransactionId, ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::EmptyField {
            field: "transaction_id",
        });
    }
    if s.len() > TransactionId::MAX_LEN {
        return Err(ValidationError::IdTooLong {
            len: s.len(),
            limit: TransactionId::MAX_LEN,
        });
    }
    // Every byte checked, no early exit: a loop the compiler vectorises (ids are valid
    // nearly always, so an early exit saves nothing; a loop with a branch per byte was
    // about a third of the validation's own samples in the decode bench).
    if !s.bytes().fold(true, |ok, b| ok & is_id_byte(b)) {
        return Err(ValidationError::InvalidCharacters {
            field: "transaction_id",
        });
    }
    Ok(TransactionId::new_unchecked(s))
}

/// 2000-01-01T00:00:00Z: an event time before it is refused (`EventTimeTooOld`).
const EVENT_TIME_FLOOR_MICROS: i64 = 946_684_800_000_000;

/// Whether a transaction id may hold `b`: an ASCII letter or digit, `-`, `_`, `.`, `:`.
/// Branch-free, so that a loop over an id vectorises.
fn is_id_byte(b: u8) -> bool {
    // `| 0x20` folds upper-case letters onto lower-case ones and maps no other byte
    // into `a..=z`.
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'_')
        | (b == b'.')
        | (b == b':')
}

fn event_time(
    s: &str,
    reference_time: DateTime<Utc>,
    limits: &DecodeLimits,
) -> Result<DateTime<Utc>, ValidationError> {
    // Truncated to microseconds: the precision of state and of BigQuery TIMESTAMP. The
    // producers' one shape is read directly, anything else by chrono (see `timestamp`).
    let micros = match timestamp::utc_micros(s) {
        Some(micros) => micros,
        None => DateTime::parse_from_rfc3339(s)
            .map_err(|_| ValidationError::InvalidTimestamp)?
            .timestamp_micros(),
    };
    let utc = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or(ValidationError::InvalidTimestamp)?;
    if micros < EVENT_TIME_FLOOR_MICROS {
        return Err(ValidationError::EventTimeTooOld);
    }
    // An offset can carry a local 9999-12-31 past the year 9999 in UTC, which no
    // warehouse TIMESTAMP holds (and `encode_json` could not read back).
    if utc.year() > 9999 {
        return Err(ValidationError::InvalidTimestamp);
    }
    match reference_time.checked_add_signed(limits.future_tolerance) {
        Some(limit) if utc > limit => Err(ValidationError::EventTimeInFuture {
            tolerance_secs: limits.future_tolerance.num_seconds(),
        }),
        _ => Ok(utc),
    }
}

fn text(field: &'static str, s: &str) -> Result<SmolStr, ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::EmptyField { field });
    }
    if s.len() > MAX_TEXT_LEN {
        return Err(ValidationError::FieldTooLong {
            field,
            len: s.len(),
            limit: MAX_TEXT_LEN,
        });
    }
    if has_control(s) {
        return Err(ValidationError::InvalidCharacters { field });
    }
    if looks_like_pan(s) {
        return Err(ValidationError::CardNumberDetected { field });
    }
    Ok(SmolStr::new(s))
}

/// Whether `s` holds a control character. Text is nearly always ASCII, whose control
/// characters are the bytes below 0x20 and DEL: one pass over bytes, no char decoding.
fn has_control(s: &str) -> bool {
    if s.is_ascii() {
        // No early exit: a loop the compiler vectorises (see `transaction_id`).
        s.bytes()
            .fold(false, |found, b| found | (b < 0x20) | (b == 0x7f))
    } else {
        s.chars().any(char::is_control)
    }
}

fn merchant_category(s: &str) -> Result<u16, ValidationError> {
    if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::InvalidMerchantCategory);
    }
    s.parse()
        .map_err(|_| ValidationError::InvalidMerchantCategory)
}

fn card_fingerprint(s: &str) -> Result<CardFingerprint, ValidationError> {
    // A raw card number where a hash belongs is the worst input we can receive: say so
    // (without echoing it) so the producer gets fixed.
    // Three passes, each without early exits or branches, which the compiler
    // vectorises (a fingerprint is 16–128 bytes, 32 on the peers' input, checked for
    // every payment).
    let b = s.as_bytes();
    let digit_count = b
        .iter()
        .fold(0usize, |n, c| n + usize::from(c.is_ascii_digit()));
    let digits_only = !b.is_empty()
        && b.iter()
            .fold(true, |ok, c| ok & (c.is_ascii_digit() | (*c == b' ')));
    let hex = b
        .iter()
        .fold(true, |ok, c| ok & crate::hex::is_lower_hex(*c));
    if digits_only && (12..=19).contains(&digit_count) {
        return Err(ValidationError::CardNumberDetected {
            field: "card_fingerprint",
        });
    }
    if !(16..=128).contains(&s.len()) || !hex {
        return Err(ValidationError::InvalidCardFingerprint);
    }
    Ok(CardFingerprint::new(s))
}

fn country(field: &'static str, s: &str) -> Result<SmolStr, ValidationError> {
    if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ValidationError::InvalidCountry { field });
    }
    Ok(SmolStr::new(s))
}

/// Whether `s` holds a primary account number anywhere: a run of 13–19 digits, alone
/// or separated by single spaces or dashes (`4111 1111 1111 1111`), that passes the
/// Luhn check. Text fields are ids and names, so a card number typed into one (or
/// pasted into a note) is caught wherever it sits, not only when it is the whole value.
fn looks_like_pan(s: &str) -> bool {
    let b = s.as_bytes();
    // Fewer than 13 digits in all cannot hold one: most text stops at this one pass.
    if b.iter()
        .fold(0usize, |n, c| n + usize::from(c.is_ascii_digit()))
        < 13
    {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A maximal run: digits, with single separators between digits. Only its
        // length and, when it can be a card number, its digits are kept (no
        // allocation: this runs on every text field of every event).
        let mut digits = [0u8; 19];
        let mut len = 0usize;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                if len < digits.len() {
                    digits[len] = b[i] - b'0';
                }
                len += 1;
                i += 1;
            } else if (b[i] == b' ' || b[i] == b'-')
                && len > 0
                && b.get(i + 1).is_some_and(u8::is_ascii_digit)
            {
                i += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&len) && luhn(&digits[..len]) {
            return true;
        }
    }
    false
}

/// The Luhn checksum over decimal digits (most significant first).
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

mod flat;
mod timestamp;

#[cfg(test)]
mod tests;
