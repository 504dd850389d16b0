//! [`StoredRow`]: a row read back from a sink, whatever the sink's way of storing it.
//!
//! The file sink keeps the JSON the processor wrote (numbers as numbers, timestamps as
//! RFC 3339); BigQuery's REST answers every cell as a string, TIMESTAMP as int64
//! microseconds. The helpers read both, so code that reads rows back (`restore`) does
//! not care which sink wrote them.

use chrono::DateTime;
use serde_json::{Map, Value};

/// Column name → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRow(pub Map<String, Value>);

impl StoredRow {
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.get(column).filter(|v| !v.is_null())
    }

    /// An integer column (a number, or a string of one).
    pub fn int(&self, column: &str) -> Option<i64> {
        match self.get(column)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A text column.
    pub fn text(&self, column: &str) -> Option<&str> {
        self.get(column)?.as_str()
    }

    /// A BOOL column (`true`, or BigQuery's `"true"`).
    pub fn flag(&self, column: &str) -> Option<bool> {
        match self.get(column)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A TIMESTAMP column as µs since the epoch (RFC 3339 text, or int64 µs).
    pub fn micros(&self, column: &str) -> Option<i64> {
        match self.get(column)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse::<i64>().ok().or_else(|| {
                DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp_micros())
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> StoredRow {
        StoredRow(v.as_object().unwrap().clone())
    }

    #[test]
    fn reads_the_file_sinks_json_and_bigquerys_strings_alike() {
        let file = row(
            json!({"source_offset": 7, "event_time": "1970-01-01T00:00:01.000002Z",
                              "fraud_flagged": true, "currency": "EUR", "kafka_timestamp": null}),
        );
        let bq = row(json!({"source_offset": "7", "event_time": "1000002",
                            "fraud_flagged": "true", "currency": "EUR"}));
        for r in [file, bq] {
            assert_eq!(r.int("source_offset"), Some(7));
            assert_eq!(r.micros("event_time"), Some(1_000_002));
            assert_eq!(r.flag("fraud_flagged"), Some(true));
            assert_eq!(r.text("currency"), Some("EUR"));
            assert_eq!(r.get("kafka_timestamp"), None);
        }
    }
}
