//! Why an input record is not a valid payment event.
//!
//! Every variant has a stable machine code ([`ValidationError::code`]) that lands in
//! `processing_errors.error_code` and in a bounded metric label. Messages name the field
//! but never echo its value: a value could be a card number or personal data.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("payload is {size} bytes, above the {limit}-byte limit")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("payload is not valid JSON ({category} at line {line}, column {column})")]
    MalformedJson {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("payload is JSON but not an object")]
    NotAnObject,
    #[error("required field `{field}` is missing or null")]
    MissingField { field: &'static str },
    #[error("field `{field}` has the wrong type (expected {expected})")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    // The value is kept for code, not echoed: a card number typed into the field
    // would otherwise reach the warehouse in the message.
    #[error("schema_version is not supported (this build reads version 1)")]
    UnsupportedSchemaVersion { version: i64 },
    #[error("field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error("field `{field}` is {len} bytes, above the {limit}-byte limit")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("transaction_id is {len} bytes, above the {limit}-byte limit")]
    IdTooLong { len: usize, limit: usize },
    #[error("field `{field}` contains characters outside the allowed set")]
    InvalidCharacters { field: &'static str },
    #[error("event_time is not an RFC 3339 timestamp")]
    InvalidTimestamp,
    #[error("event_time is more than {tolerance_secs} s after the record's reference time")]
    EventTimeInFuture { tolerance_secs: i64 },
    #[error("event_time is before 2000-01-01")]
    EventTimeTooOld,
    #[error("currency is not an accepted ISO 4217 code")]
    UnknownCurrency,
    #[error("amount_minor must be positive")]
    NonPositiveAmount,
    #[error("amount_minor is above the maximum for its currency")]
    AmountTooLarge,
    #[error("merchant_category is not a 4-digit MCC")]
    InvalidMerchantCategory,
    #[error("card_fingerprint is not a hex hash")]
    InvalidCardFingerprint,
    #[error("field `{field}` looks like a card number (redacted)")]
    CardNumberDetected { field: &'static str },
    #[error("field `{field}` is not an ISO 3166-1 alpha-2 country code")]
    InvalidCountry { field: &'static str },
    #[error("ip_address is not an IPv4 or IPv6 address")]
    InvalidIpAddress,
    #[error("payment_method is not one of card, wallet, bank_transfer")]
    InvalidPaymentMethod,
    /// The record's Kafka timestamp (CreateTime) is outside 0001..=9999, the range a
    /// warehouse TIMESTAMP holds: typically a producer stamping micro- or nanoseconds.
    #[error("the record's Kafka timestamp is outside years 0001-9999 (a producer stamping microseconds?)")]
    KafkaTimestampOutOfRange,
}

impl ValidationError {
    /// A stable, machine-readable code; safe as a metric label (bounded set).
    pub fn code(&self) -> &'static str {
        use ValidationError::*;
        match self {
            PayloadTooLarge { .. } => "payload_too_large",
            MalformedJson { .. } => "malformed_json",
            NotAnObject => "not_an_object",
            MissingField { .. } => "missing_field",
            WrongType { .. } => "wrong_type",
            UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            EmptyField { .. } => "empty_field",
            FieldTooLong { .. } => "field_too_long",
            IdTooLong { .. } => "id_too_long",
            InvalidCharacters { .. } => "invalid_characters",
            InvalidTimestamp => "invalid_timestamp",
            EventTimeInFuture { .. } => "event_time_in_future",
            EventTimeTooOld => "event_time_too_old",
            UnknownCurrency => "unknown_currency",
            NonPositiveAmount => "non_positive_amount",
            AmountTooLarge => "amount_too_large",
            InvalidMerchantCategory => "invalid_merchant_category",
            InvalidCardFingerprint => "invalid_card_fingerprint",
            CardNumberDetected { .. } => "card_number_detected",
            InvalidCountry { .. } => "invalid_country",
            InvalidIpAddress => "invalid_ip_address",
            InvalidPaymentMethod => "invalid_payment_method",
            KafkaTimestampOutOfRange => "kafka_timestamp_out_of_range",
        }
    }

    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        use ValidationError::*;
        match self {
            MissingField { field }
            | WrongType { field, .. }
            | EmptyField { field }
            | FieldTooLong { field, .. }
            | InvalidCharacters { field }
            | CardNumberDetected { field }
            | InvalidCountry { field } => Some(field),
            IdTooLong { .. } => Some("transaction_id"),
            InvalidTimestamp | EventTimeInFuture { .. } | EventTimeTooOld => Some("event_time"),
            UnknownCurrency => Some("currency"),
            NonPositiveAmount | AmountTooLarge => Some("amount_minor"),
            InvalidMerchantCategory => Some("merchant_category"),
            InvalidCardFingerprint => Some("card_fingerprint"),
            InvalidIpAddress => Some("ip_address"),
            InvalidPaymentMethod => Some("payment_method"),
            KafkaTimestampOutOfRange => Some("kafka_timestamp"),
            UnsupportedSchemaVersion { .. } => Some("schema_version"),
            PayloadTooLarge { .. } | MalformedJson { .. } | NotAnObject => None,
        }
    }
}
