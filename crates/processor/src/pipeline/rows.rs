//! Output rows, one struct per table. Column names are the BigQuery columns in `sql/`.
//!
//! Rows are a pure function of the input records, the checkpointed state and what the
//! pipeline decided; they never contain the wall clock, so a batch re-processed after a
//! crash yields byte-identical rows (the one clock-capped verdict is explained at
//! `RecordDecoder::decode_one`). That is why there is no `processed_at` column; `kafka_timestamp` says when the record arrived.
//! Every row carries `source_partition` and `outbox_seq`, the relay's idempotency key.
//!
//! One function per table renders a row from its record, what the pipeline decided
//! about it ([`super::outcome::Outcome`]'s fields) and its sequence, straight to the
//! bytes the outbox stores: JSON, or for the two rows nearly every event makes
//! (`payments`, `dedup_audit`) a compact row the relay renders as JSON
//! ([`super::compact_row`]). They only read: every state effect has happened before.

use base64::Engine;
use chrono::{SecondsFormat, TimeZone, Utc};
use paydedup_event::{Currency, PaymentEvent, ValidationError};
use paydedup_fraud::Assessment;
use paydedup_state::DedupEntry;
use serde::Serialize;

use super::compact_row::{CompactRow, DEDUP_AUDIT, PAYMENTS};
use super::window::WindowAgg;
use super::InputRecord;

/// RFC 3339 UTC with microseconds; the format BigQuery and the file sink read.
pub fn ts(micros: i64) -> String {
    Utc.timestamp_micros(micros)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The `payments` columns. [`payment`] writes them as a compact row, in this order; a
/// test holds its JSON rendering to this struct's serde rendering.
#[derive(Debug, Serialize)]
pub struct PaymentRow<'a> {
    pub transaction_id: &'a str,
    pub event_time: String,
    pub amount_minor: i64,
    /// Exact decimal in major units (NUMERIC), from the currency's exponent.
    pub amount: String,
    pub currency: &'a str,
    pub merchant_id: &'a str,
    pub merchant_category: String,
    pub card_fingerprint: &'a str,
    pub card_country: &'a str,
    pub customer_id: &'a str,
    pub ip_country: &'a str,
    pub device_id: &'a str,
    pub region: &'a str,
    pub payment_method: &'a str,
    pub schema_version: i64,
    pub content_hash: String,
    pub fraud_score: u8,
    pub fraud_flagged: bool,
    pub fraud_reasons: Vec<&'static str>,
    pub card_count_10m: u32,
    pub card_count_1h: u32,
    pub kafka_timestamp: Option<String>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

/// The `dedup_audit` columns, written as a compact row by [`dedup_audit`] (as [`PaymentRow`]).
#[derive(Debug, Serialize)]
pub struct DedupAuditRow<'a> {
    /// `duplicate` or `conflict`.
    pub kind: &'static str,
    pub transaction_id: &'a str,
    pub event_time: String,
    pub first_event_time: String,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub first_content_hash: String,
    pub repeat_content_hash: String,
    pub first_partition: i32,
    pub first_offset: i64,
    pub kafka_timestamp: Option<String>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct LateEventRow<'a> {
    pub transaction_id: &'a str,
    pub event_time: String,
    pub watermark: String,
    /// How far behind the watermark, in seconds.
    pub lateness_secs: f64,
    /// Whether the id was still in the dedup index (a late duplicate) or not.
    pub key_known: bool,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// The original record, base64, so it can be replayed by hand; card numbers in it
    /// are redacted.
    pub payload_base64: String,
    pub payload_redacted: bool,
    pub kafka_timestamp: Option<String>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct ProcessingErrorRow<'a> {
    pub error_code: &'static str,
    pub error_field: Option<&'static str>,
    pub error_message: String,
    /// The raw record, base64. Redacted when it carried a card number.
    pub payload_base64: String,
    pub payload_redacted: bool,
    pub payload_bytes: usize,
    pub kafka_key: Option<&'a str>,
    pub kafka_timestamp: Option<String>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct PaymentMetricsRow<'a> {
    pub window_start: String,
    pub window_end: String,
    pub currency: &'a str,
    pub payment_count: u64,
    pub amount_minor_sum: i64,
    pub amount_sum: String,
    pub duplicate_count: u64,
    pub conflict_count: u64,
    pub flagged_count: u64,
    pub source_partition: i32,
    pub outbox_seq: u64,
}

fn enc<T: Serialize>(row: &T) -> Vec<u8> {
    // Row structs hold only strings, numbers and bools: serialisation cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// When the record reached Kafka, if it says.
fn kafka_timestamp(r: &InputRecord<'_>) -> Option<String> {
    kafka_timestamp_micros(r).map(ts)
}

/// When the record reached Kafka, in µs, if it says and the time fits a TIMESTAMP.
fn kafka_timestamp_micros(r: &InputRecord<'_>) -> Option<i64> {
    r.timestamp_ms
        .filter(|ms| kafka_timestamp_fits(*ms))
        .map(|ms| ms.saturating_mul(1000))
}

/// Whether a Kafka timestamp (ms) fits a warehouse TIMESTAMP: years 0001 to 9999.
pub fn kafka_timestamp_fits(ms: i64) -> bool {
    const MIN_MS: i64 = -62_135_596_800_000; // 0001-01-01T00:00:00Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    (MIN_MS..=MAX_MS).contains(&ms)
}

/// `processing_errors`: a record that did not decode or validate. A card number found
/// in it is redacted from the payload, and a Kafka key that carries one is dropped.
pub fn processing_error(r: &InputRecord<'_>, error: &ValidationError, seq: u64) -> Vec<u8> {
    // Whatever the error, the bytes kept are redacted: a card number can sit in a
    // payload that failed for any reason (malformed JSON, unknown currency, too large).
    let (payload, redacted) = redact_pans(r.payload);
    let key = r
        .key
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| k.len() <= 256 && !redact_pans(k.as_bytes()).1);
    enc(&ProcessingErrorRow {
        error_code: error.code(),
        error_field: error.field(),
        error_message: error.to_string(),
        payload_base64: b64(&payload),
        payload_redacted: redacted,
        payload_bytes: r.payload.len(),
        kafka_key: key,
        kafka_timestamp: kafka_timestamp(r),
        source_partition: r.partition,
        source_offset: r.offset,
        outbox_seq: seq,
    })
}

/// `late_events`: an event strictly before its partition's `watermark`.
pub fn late_event(
    r: &InputRecord<'_>,
    event: &PaymentEvent,
    watermark: i64,
    key_known: bool,
    seq: u64,
) -> Vec<u8> {
    let t = event.event_time_micros();
    // A valid event can still carry a card number in a field the schema ignores.
    let (payload, redacted) = redact_pans(r.payload);
    enc(&LateEventRow {
        transaction_id: event.transaction_id.as_str(),
        event_time: ts(t),
        watermark: ts(watermark),
        lateness_secs: (watermark - t) as f64 / 1e6,
        key_known,
        amount_minor: event.amount_minor,
        currency: event.currency.code(),
        payload_base64: b64(&payload),
        payload_redacted: redacted,
        kafka_timestamp: kafka_timestamp(r),
        source_partition: r.partition,
        source_offset: r.offset,
        outbox_seq: seq,
    })
}

/// `payments`: a unique payment with its content `hash` and fraud assessment. A
/// compact row ([`CompactRow`]) of the columns of [`PaymentRow`], in its order,
/// written into `buf` (an earlier row's memory, see [`CompactRow::reusing`]).
pub fn payment(
    buf: Vec<u8>,
    r: &InputRecord<'_>,
    event: &PaymentEvent,
    hash: u128,
    fraud: &Assessment,
    seq: u64,
) -> Vec<u8> {
    let mut row = CompactRow::reusing(&PAYMENTS, buf, 192);
    let row = row
        .str("transaction_id", event.transaction_id.as_str())
        .ts("event_time", event.event_time_micros())
        .int("amount_minor", event.amount_minor)
        .str("amount", &event.currency.major(event.amount_minor))
        .str("currency", event.currency.code())
        .str("merchant_id", &event.merchant_id)
        .padded4("merchant_category", event.merchant_category)
        .str("card_fingerprint", &event.card_fingerprint)
        .str("card_country", &event.card_country)
        .str("customer_id", &event.customer_id)
        .str("ip_country", &event.ip_country)
        .str("device_id", &event.device_id)
        .str("region", &event.region)
        .str("payment_method", event.payment_method.as_str())
        .int("schema_version", event.schema_version)
        .hex128("content_hash", hash)
        .int("fraud_score", fraud.score)
        .bool("fraud_flagged", fraud.flagged)
        .str_list("fraud_reasons", fraud.reasons.iter().map(|r| r.as_str()))
        .int("card_count_10m", fraud.card_count_10m)
        .int("card_count_1h", fraud.card_count_1h);
    provenance(row, r, seq)
}

/// Which repeat a `dedup_audit` row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// Same id, same content as the first version.
    Duplicate,
    /// Same id, different content.
    Conflict,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Duplicate => "duplicate",
            AuditKind::Conflict => "conflict",
        }
    }
}

/// `dedup_audit`: an on-time repeat (content `hash`) of the `first` version of its id.
/// A compact row ([`CompactRow`]) of the columns of [`DedupAuditRow`], in its order.
pub fn dedup_audit(
    r: &InputRecord<'_>,
    kind: AuditKind,
    event: &PaymentEvent,
    hash: u128,
    first: &DedupEntry,
    seq: u64,
) -> Vec<u8> {
    let mut row = CompactRow::new(&DEDUP_AUDIT, 128);
    let row = row
        .str("kind", kind.as_str())
        .str("transaction_id", event.transaction_id.as_str())
        .ts("event_time", event.event_time_micros())
        .ts("first_event_time", first.event_time_micros)
        .int("amount_minor", event.amount_minor)
        .str("currency", event.currency.code())
        .hex128("first_content_hash", first.content_hash)
        .hex128("repeat_content_hash", hash)
        .int("first_partition", first.partition)
        .int("first_offset", first.offset);
    provenance(row, r, seq)
}

/// The columns every per-record row ends with: when and where the record came from,
/// and the row's sequence (the relay's idempotency key).
fn provenance(row: &mut CompactRow, r: &InputRecord<'_>, seq: u64) -> Vec<u8> {
    row.opt_ts("kafka_timestamp", kafka_timestamp_micros(r))
        .int("source_partition", r.partition)
        .int("source_offset", r.offset)
        .int("outbox_seq", seq)
        .finish()
}

/// `payment_metrics`: the aggregates of a closed window `[start, start + size)` of a
/// partition and currency.
pub fn payment_metrics(
    partition: i32,
    start: i64,
    size: i64,
    currency: &str,
    agg: &WindowAgg,
    seq: u64,
) -> Vec<u8> {
    let sum = i64::try_from(agg.amount_minor_sum).unwrap_or(i64::MAX);
    enc(&PaymentMetricsRow {
        window_start: ts(start),
        window_end: ts(start + size),
        currency,
        payment_count: agg.payment_count,
        amount_minor_sum: sum,
        amount_sum: Currency::from_code(currency)
            .map(|c| c.format_major(sum))
            .unwrap_or_default(),
        duplicate_count: agg.duplicate_count,
        conflict_count: agg.conflict_count,
        flagged_count: agg.flagged_count,
        source_partition: partition,
        outbox_seq: seq,
    })
}

/// Replaces every run of 12–19 digits (optionally spaced) with `[REDACTED]`, so a card
/// number a producer sent by mistake never reaches the warehouse.
pub fn redact_pans(payload: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(payload.len());
    let mut redacted = false;
    let mut i = 0;
    while i < payload.len() {
        if payload[i].is_ascii_digit() {
            let start = i;
            let mut digits = 0;
            let mut end = i;
            while i < payload.len()
                && (payload[i].is_ascii_digit() || payload[i] == b' ' || payload[i] == b'-')
            {
                if payload[i].is_ascii_digit() {
                    digits += 1;
                    end = i + 1;
                }
                i += 1;
            }
            if (12..=19).contains(&digits) {
                out.extend_from_slice(b"[REDACTED]");
                redacted = true;
            } else {
                out.extend_from_slice(&payload[start..end]);
            }
            out.extend_from_slice(&payload[end..i]);
        } else {
            out.push(payload[i]);
            i += 1;
        }
    }
    (out, redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_card_numbers_only() {
        let (out, r) =
            redact_pans(br#"{"card_fingerprint":"4111111111111111","amount_minor":1999}"#);
        assert!(r);
        assert_eq!(
            out,
            br#"{"card_fingerprint":"[REDACTED]","amount_minor":1999}"#.to_vec()
        );
        let (out, r) = redact_pans(b"4111 1111 1111 1111");
        assert!(r);
        assert_eq!(out, b"[REDACTED]".to_vec());
        let (out, r) = redact_pans(br#"{"t":"2026-11-23T10:00:00Z","n":12345}"#);
        assert!(!r);
        assert_eq!(out, br#"{"t":"2026-11-23T10:00:00Z","n":12345}"#.to_vec());
    }

    fn record<'a>(key: &'a [u8], payload: &'a [u8]) -> InputRecord<'a> {
        InputRecord {
            partition: 1,
            offset: 7,
            key: Some(key),
            payload,
            timestamp_ms: Some(1_000),
        }
    }

    fn error_row(key: &[u8], payload: &[u8], error: &ValidationError) -> serde_json::Value {
        serde_json::from_slice(&processing_error(&record(key, payload), error, 5)).unwrap()
    }

    fn payload_of(row: &serde_json::Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(row["payload_base64"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn a_card_number_error_redacts_the_payload_and_a_card_number_key() {
        let payload = br#"{"card_fingerprint":"4111111111111111"}"#;
        let error = ValidationError::CardNumberDetected {
            field: "card_fingerprint",
        };
        let row = error_row(b"4111111111111111", payload, &error);
        assert_eq!(row["error_code"], "card_number_detected");
        assert_eq!(row["error_field"], "card_fingerprint");
        assert_eq!(row["payload_redacted"], true);
        assert_eq!(payload_of(&row), br#"{"card_fingerprint":"[REDACTED]"}"#);
        assert_eq!(row["payload_bytes"], payload.len());
        assert_eq!(row["kafka_key"], serde_json::Value::Null);
        assert_eq!(row["kafka_timestamp"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(
            (
                &row["source_partition"],
                &row["source_offset"],
                &row["outbox_seq"]
            ),
            (&1.into(), &7.into(), &5.into())
        );
        // A key without a card number is kept.
        assert_eq!(error_row(b"k-1", payload, &error)["kafka_key"], "k-1");
    }

    #[test]
    fn other_errors_keep_the_payload_and_a_short_utf8_key() {
        let payload = b"[1, 2]";
        let row = error_row(b"k-1", payload, &ValidationError::NotAnObject);
        assert_eq!(row["error_code"], "not_an_object");
        assert_eq!(row["error_field"], serde_json::Value::Null);
        assert_eq!(row["payload_redacted"], false);
        assert_eq!(payload_of(&row), payload);
        assert_eq!(row["kafka_key"], "k-1");
        // Keys longer than 256 bytes, or not UTF-8, are not copied into the row.
        let long = vec![b'k'; 257];
        let row = error_row(&long, payload, &ValidationError::NotAnObject);
        assert_eq!(row["kafka_key"], serde_json::Value::Null);
        let row = error_row(&[0xff], payload, &ValidationError::NotAnObject);
        assert_eq!(row["kafka_key"], serde_json::Value::Null);
    }

    /// The compact rows render as the bytes serde writes for their row structs: odd
    /// strings (escapes, non-ASCII), a missing and a present Kafka timestamp, reasons.
    #[test]
    fn compact_rows_render_as_the_bytes_of_their_serde_structs() {
        use super::super::compact_row::to_json;
        use super::super::fixtures::payment as event;
        use paydedup_fraud::Reason;
        let odd = PaymentEvent {
            merchant_id: "m-\"quoted\"\\\n\u{1}".into(),
            customer_id: "c-é漢".into(),
            merchant_category: 42,
            ..event("tx-1", 7, -1999)
        };
        let fraud = Assessment {
            score: 73,
            reasons: vec![Reason::Velocity10m, Reason::NewDevice],
            flagged: true,
            card_count_10m: 3,
            card_count_1h: 9,
        };
        let first = DedupEntry {
            event_time_micros: 1_700_000_000_123_456,
            content_hash: 0xabc,
            partition: 2,
            offset: 11,
        };
        for timestamp_ms in [None, Some(1_764_000_000_123), Some(i64::MAX)] {
            let r = InputRecord {
                timestamp_ms,
                ..record(b"k", b"{}")
            };
            for e in [event("tx-2", 0, 100), odd.clone()] {
                let hash = u128::MAX / 3;
                let expected = enc(&PaymentRow {
                    transaction_id: e.transaction_id.as_str(),
                    event_time: ts(e.event_time_micros()),
                    amount_minor: e.amount_minor,
                    amount: e.currency.format_major(e.amount_minor),
                    currency: e.currency.code(),
                    merchant_id: &e.merchant_id,
                    merchant_category: format!("{:04}", e.merchant_category),
                    card_fingerprint: &e.card_fingerprint,
                    card_country: &e.card_country,
                    customer_id: &e.customer_id,
                    ip_country: &e.ip_country,
                    device_id: &e.device_id,
                    region: &e.region,
                    payment_method: e.payment_method.as_str(),
                    schema_version: e.schema_version,
                    content_hash: format!("{hash:032x}"),
                    fraud_score: fraud.score,
                    fraud_flagged: fraud.flagged,
                    fraud_reasons: fraud.reasons.iter().map(|r| r.as_str()).collect(),
                    card_count_10m: fraud.card_count_10m,
                    card_count_1h: fraud.card_count_1h,
                    kafka_timestamp: kafka_timestamp(&r),
                    source_partition: r.partition,
                    source_offset: r.offset,
                    outbox_seq: 99,
                });
                assert_eq!(
                    // Written into an earlier, longer row's buffer: none of its bytes remain.
                    String::from_utf8(
                        to_json(&payment(vec![0xab; 4096], &r, &e, hash, &fraud, 99)).unwrap()
                    )
                    .unwrap(),
                    String::from_utf8(expected).unwrap()
                );
                let expected = enc(&DedupAuditRow {
                    kind: AuditKind::Conflict.as_str(),
                    transaction_id: e.transaction_id.as_str(),
                    event_time: ts(e.event_time_micros()),
                    first_event_time: ts(first.event_time_micros),
                    amount_minor: e.amount_minor,
                    currency: e.currency.code(),
                    first_content_hash: format!("{:032x}", first.content_hash),
                    repeat_content_hash: format!("{hash:032x}"),
                    first_partition: first.partition,
                    first_offset: first.offset,
                    kafka_timestamp: kafka_timestamp(&r),
                    source_partition: r.partition,
                    source_offset: r.offset,
                    outbox_seq: 98,
                });
                let row = dedup_audit(&r, AuditKind::Conflict, &e, hash, &first, 98);
                assert_eq!(
                    String::from_utf8(to_json(&row).unwrap()).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }

    #[test]
    fn timestamps_have_microseconds() {
        assert_eq!(ts(1_000_001), "1970-01-01T00:00:01.000001Z");
    }
}
