//! [`RowIdentity`]: the columns that say *which* row a delivered row is.
//!
//! A replay regenerates the rows of a (table, partition) at the same sequences, so
//! when a state restarts behind its sink (restored from an older copy), the rows it
//! sends again are acknowledged as "already present" — and that is only true if they
//! are the *same* rows. A stale state from another topic, or a sink that holds another
//! run's rows, would otherwise have its rows silently dropped as present. The relay
//! compares these columns of each resent row with the sink's row at that sequence.
//!
//! Only columns that a replay of the same partition reproduces exactly: the source
//! offset and the id (fraud columns depend on how *other* partitions interleave, so
//! they differ between runs and are left out), and for closed windows their counts and
//! sums. INT64 and STRING columns only, so a row read back from any sink compares as
//! text without knowing how that sink formats timestamps.

use serde_json::Value;

use crate::{SinkError, Table};

/// The identity columns' values, as text, in [`columns`] order.
pub type RowIdentity = Vec<String>;

/// The identity columns of a table.
pub fn columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Payments | Table::LateEvents => &["source_offset", "transaction_id"],
        Table::DedupAudit => &["source_offset", "transaction_id", "kind"],
        Table::ProcessingErrors => &["source_offset", "error_code"],
        Table::PaymentMetrics => &[
            "currency",
            "payment_count",
            "amount_minor_sum",
            "duplicate_count",
            "conflict_count",
        ],
    }
}

/// One cell as text: a string as itself, a number in decimal, a missing value `null`.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "null".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// The identity of an outbox row (a JSON object).
pub fn of_json_row(table: Table, row: &[u8]) -> Result<RowIdentity, SinkError> {
    let v: Value = serde_json::from_slice(row)
        .map_err(|e| SinkError::Fatal(format!("a {table} row is not JSON: {e}")))?;
    Ok(of_value(table, &v))
}

/// For a stored row (parsed JSON carrying `source_partition` and `outbox_seq`): its
/// sequence and identity when it belongs to `partition` and `seqs`. Shared by the sinks
/// that read their own rows back (file, memory).
pub fn of_stored_row(
    table: Table,
    partition: i32,
    seqs: std::ops::RangeFrom<u64>,
    row: &Value,
) -> Option<(u64, RowIdentity)> {
    let seq = row["outbox_seq"].as_u64()?;
    (row["source_partition"].as_i64() == Some(i64::from(partition)) && seqs.contains(&seq))
        .then(|| (seq, of_value(table, row)))
}

/// The identity of a row already parsed.
pub fn of_value(table: Table, row: &Value) -> RowIdentity {
    columns(table).iter().map(|c| cell(row.get(*c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_compare_as_text_whatever_the_sink_returns() {
        let from_outbox = of_json_row(
            Table::Payments,
            br#"{"transaction_id":"t1","source_offset":42,"fraud_score":3}"#,
        )
        .unwrap();
        // BigQuery's REST API returns every cell as a string.
        let from_warehouse = of_value(
            Table::Payments,
            &serde_json::json!({"source_offset": "42", "transaction_id": "t1"}),
        );
        assert_eq!(from_outbox, vec!["42", "t1"]);
        assert_eq!(from_outbox, from_warehouse);
    }

    #[test]
    fn a_different_offset_or_id_is_a_different_row() {
        let a = of_json_row(
            Table::DedupAudit,
            br#"{"source_offset":1,"transaction_id":"x","kind":"duplicate"}"#,
        )
        .unwrap();
        let b = of_json_row(
            Table::DedupAudit,
            br#"{"source_offset":1,"transaction_id":"x","kind":"conflict"}"#,
        )
        .unwrap();
        let c = of_json_row(
            Table::DedupAudit,
            br#"{"source_offset":2,"transaction_id":"x","kind":"duplicate"}"#,
        )
        .unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_row_that_is_not_json_is_an_error() {
        assert!(of_json_row(Table::Payments, b"not json").is_err());
    }
}
