//! Output rows, one struct per table. Column names are the BigQuery columns in `sql/`.
//!
//! Rows are a pure function of the input records and the checkpointed state, never of
//! the wall clock: a batch re-processed after a crash yields byte-identical rows. That is
//! why there is no `processed_at` column; `kafka_timestamp` says when the record arrived.
//! Every row carries `source_partition` and `outbox_seq`, the relay's idempotency key.

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;

/// RFC 3339 UTC with microseconds; the format BigQuery and the file sink read.
pub fn ts(micros: i64) -> String {
    Utc.timestamp_micros(micros)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

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
    /// The original record, base64, so it can be replayed by hand.
    pub payload_base64: String,
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

    #[test]
    fn timestamps_have_microseconds() {
        assert_eq!(ts(1_000_001), "1970-01-01T00:00:01.000001Z");
    }
}
