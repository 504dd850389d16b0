//! Table schemas for the Storage Write API, and JSON row → protobuf row encoding.
//!
//! The outbox holds rows as JSON (what the file sink writes). For BigQuery each row is
//! re-encoded as a protobuf message whose descriptor is built from the table's columns
//! here. The columns must match `sql/001_tables.sql` (a test checks it).
//!
//! Encoding rules (accepted by BigQuery and by the emulator): TIMESTAMP as int64 epoch
//! microseconds, NUMERIC as a decimal string, ARRAY<STRING> as a repeated string. Every
//! present value is written explicitly, zeros and `false` included: proto2 semantics
//! treat an absent field as NULL.

use chrono::DateTime;
use paydedup_state::Table;
use prost::encoding;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
    Numeric,
    StringArray,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

const fn c(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

use ColumnType::*;

const PAYMENTS: &[Column] = &[
    c("transaction_id", String),
    c("event_time", Timestamp),
    c("amount_minor", Int64),
    c("amount", Numeric),
    c("currency", String),
    c("merchant_id", String),
    c("merchant_category", String),
    c("card_fingerprint", String),
    c("card_country", String),
    c("customer_id", String),
    c("ip_country", String),
    c("device_id", String),
    c("region", String),
    c("payment_method", String),
    c("schema_version", Int64),
    c("content_hash", String),
    c("fraud_score", Int64),
    c("fraud_flagged", Bool),
    c("fraud_reasons", StringArray),
    c("card_count_10m", Int64),
    c("card_count_1h", Int64),
    c("kafka_timestamp", Timestamp),
    c("source_partition", Int64),
    c("source_offset", Int64),
    c("outbox_seq", Int64),
];

const DEDUP_AUDIT: &[Column] = &[
    c("kind", String),
    c("transaction_id", String),
    c("event_time", Timestamp),
    c("first_event_time", Timestamp),
    c("amount_minor", Int64),
    c("currency", String),
    c("first_content_hash", String),
    c("repeat_content_hash", String),
    c("first_partition", Int64),
    c("first_offset", Int64),
    c("kafka_timestamp", Timestamp),
    c("source_partition", Int64),
    c("source_offset", Int64),
    c("outbox_seq", Int64),
];

const LATE_EVENTS: &[Column] = &[
    c("transaction_id", String),
    c("event_time", Timestamp),
    c("watermark", Timestamp),
    c("lateness_secs", Float64),
    c("key_known", Bool),
    c("amount_minor", Int64),
    c("currency", String),
    c("payload_base64", String),
    c("payload_redacted", Bool),
    c("kafka_timestamp", Timestamp),
    c("source_partition", Int64),
    c("source_offset", Int64),
    c("outbox_seq", Int64),
];

const PROCESSING_ERRORS: &[Column] = &[
    c("error_code", String),
    c("error_field", String),
    c("error_message", String),
    c("payload_base64", String),
    c("payload_redacted", Bool),
    c("payload_bytes", Int64),
    c("kafka_key", String),
    c("kafka_timestamp", Timestamp),
    c("source_partition", Int64),
    c("source_offset", Int64),
    c("outbox_seq", Int64),
];

const PAYMENT_METRICS: &[Column] = &[
    c("window_start", Timestamp),
    c("window_end", Timestamp),
    c("currency", String),
    c("payment_count", Int64),
    c("amount_minor_sum", Int64),
    c("amount_sum", Numeric),
    c("duplicate_count", Int64),
    c("conflict_count", Int64),
    c("flagged_count", Int64),
    c("source_partition", Int64),
    c("outbox_seq", Int64),
];

pub fn columns(table: Table) -> &'static [Column] {
    match table {
        Table::Payments => PAYMENTS,
        Table::DedupAudit => DEDUP_AUDIT,
        Table::LateEvents => LATE_EVENTS,
        Table::ProcessingErrors => PROCESSING_ERRORS,
        Table::PaymentMetrics => PAYMENT_METRICS,
    }
}

/// The writer schema of a table: field numbers are column positions + 1.
pub fn descriptor(table: Table) -> DescriptorProto {
    let field = columns(table)
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let (ty, label) = match col.ty {
                String | Numeric => (Type::String, Label::Optional),
                Int64 | Timestamp => (Type::Int64, Label::Optional),
                Float64 => (Type::Double, Label::Optional),
                Bool => (Type::Bool, Label::Optional),
                StringArray => (Type::String, Label::Repeated),
            };
            FieldDescriptorProto {
                name: Some(col.name.to_owned()),
                number: Some(i as i32 + 1),
                label: Some(label as i32),
                r#type: Some(ty as i32),
                ..Default::default()
            }
        })
        .collect();
    DescriptorProto {
        name: Some(format!("{}_row", table.name())),
        field,
        ..Default::default()
    }
}

/// Encodes one JSON row as a protobuf message of [`descriptor`]. `Err` names the
/// column that does not fit (the row is then dead-lettered, not dropped).
pub fn encode_row(table: Table, row: &[u8]) -> Result<Vec<u8>, std::string::String> {
    let v: Value = serde_json::from_slice(row).map_err(|e| format!("row is not JSON: {e}"))?;
    let mut buf = Vec::with_capacity(row.len());
    for (i, col) in columns(table).iter().enumerate() {
        let tag = i as u32 + 1;
        let value = &v[col.name];
        if value.is_null() {
            continue;
        }
        let bad = || {
            format!(
                "column {} of {} has an unexpected value",
                col.name,
                table.name()
            )
        };
        match col.ty {
            String => {
                let s = value.as_str().ok_or_else(bad)?.to_owned();
                encoding::string::encode(tag, &s, &mut buf);
            }
            Numeric => {
                let s = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(bad()),
                };
                encoding::string::encode(tag, &s, &mut buf);
            }
            Int64 => {
                let n = value.as_i64().ok_or_else(bad)?;
                encoding::int64::encode(tag, &n, &mut buf);
            }
            Float64 => {
                let f = value.as_f64().ok_or_else(bad)?;
                encoding::double::encode(tag, &f, &mut buf);
            }
            Bool => {
                let b = value.as_bool().ok_or_else(bad)?;
                encoding::bool::encode(tag, &b, &mut buf);
            }
            Timestamp => {
                let micros = match value {
                    Value::String(s) => DateTime::parse_from_rfc3339(s)
                        .map_err(|_| bad())?
                        .timestamp_micros(),
                    Value::Number(n) => n.as_i64().ok_or_else(bad)?,
                    _ => return Err(bad()),
                };
                encoding::int64::encode(tag, &micros, &mut buf);
            }
            StringArray => {
                let items: Vec<std::string::String> = value
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| x.as_str().map(str::to_owned).ok_or_else(bad))
                    .collect::<Result<_, _>>()?;
                encoding::string::encode_repeated(tag, &items, &mut buf);
            }
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column names per table as written in sql/001_tables.sql.
    fn ddl_columns() -> Vec<(std::string::String, Vec<std::string::String>)> {
        let sql = include_str!("../../../../sql/001_tables.sql");
        let mut out = Vec::new();
        for stmt in sql.split("CREATE TABLE IF NOT EXISTS").skip(1) {
            let name = stmt
                .split('.')
                .nth(1)
                .unwrap()
                .split('`')
                .next()
                .unwrap()
                .to_owned();
            let body = stmt.split_once('(').unwrap().1;
            let cols = body
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with(')'))
                .filter(|l| !l.is_empty() && !l.starts_with("--"))
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .collect();
            out.push((name, cols));
        }
        out
    }

    #[test]
    fn schemas_match_the_ddl() {
        let ddl = ddl_columns();
        assert_eq!(ddl.len(), Table::ALL.len());
        for (name, cols) in ddl {
            let table = Table::from_name(&name).unwrap();
            let ours: Vec<&str> = columns(table).iter().map(|c| c.name).collect();
            assert_eq!(ours, cols, "{name}");
        }
    }

    #[test]
    fn encodes_zeros_explicitly_and_converts_timestamps() {
        let row = br#"{"window_start":"1970-01-01T00:00:01.000001Z","window_end":"1970-01-01T00:01:00Z",
            "currency":"USD","payment_count":0,"amount_minor_sum":0,"amount_sum":"0.00","duplicate_count":0,
            "conflict_count":0,"flagged_count":0,"source_partition":0,"outbox_seq":0}"#;
        let bytes = encode_row(Table::PaymentMetrics, row).unwrap();
        // field 1 (varint) = 1_000_001 µs: tag byte 0x08.
        assert_eq!(bytes[0], 0x08);
        // Eleven fields are present, zeros included: count the tags.
        let mut n = 0;
        let mut b = &bytes[..];
        while !b.is_empty() {
            let (tag, wire) = encoding::decode_key(&mut b).unwrap();
            n += 1;
            assert_eq!(tag, n);
            encoding::skip_field(wire, tag, &mut b, encoding::DecodeContext::default()).unwrap();
        }
        assert_eq!(n, 11);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_naming_the_column() {
        let err = encode_row(Table::PaymentMetrics, br#"{"payment_count":"x"}"#).unwrap_err();
        assert!(err.contains("payment_count"));
    }
}
