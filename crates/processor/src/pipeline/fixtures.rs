//! Test fixtures shared by the pipeline's unit tests.

use chrono::{Duration, TimeZone, Utc};
use paydedup_event::{Currency, DecodeLimits, PaymentEvent, PaymentMethod, TransactionId};
use paydedup_fraud::FraudConfig;

use super::PipelineConfig;

pub const MIN: i64 = 60_000_000;

/// 5 minutes of lateness, 60 of retention, 1-minute windows, default limits and fraud.
pub fn config() -> PipelineConfig {
    PipelineConfig {
        allowed_lateness_micros: 5 * MIN,
        retention_micros: 60 * MIN,
        window_micros: MIN,
        decode: DecodeLimits::default(),
        fraud: FraudConfig::default(),
    }
}

/// A valid USD card payment `secs` after 2026-11-23 10:00:00 UTC, by card `ab…ab` and
/// customer `c-1`; override fields with struct update syntax.
pub fn payment(id: &str, secs: i64, amount_minor: i64) -> PaymentEvent {
    PaymentEvent {
        transaction_id: TransactionId::new_unchecked(id),
        event_time: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap() + Duration::seconds(secs),
        amount_minor,
        currency: Currency::from_code("USD").unwrap(),
        merchant_id: "m-1".into(),
        merchant_category: 5411,
        card_fingerprint: "ab".repeat(16).into(),
        card_country: "US".into(),
        customer_id: "c-1".into(),
        ip_address: "20.0.0.1".parse().unwrap(),
        ip_country: "US".into(),
        device_id: "d-1".into(),
        region: "us-east".into(),
        payment_method: PaymentMethod::Card,
        schema_version: 1,
    }
}
