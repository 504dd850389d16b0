//! The ledger: the file sink's output, typed.
//!
//! One struct per table, holding only the columns the checks read; serde ignores the
//! rest. A row that lacks one of them, or holds the wrong type, is an error naming the
//! file and the line: a check must never pass because a field silently read as zero.
//! A table whose file does not exist is empty (a run without late events never
//! creates `late_events.jsonl`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::DateTime;
use paydedup_sink::Table;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::ground_truth::Observed;

/// Why the file sink's output cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} line {line}: {source}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// A row of `payments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Payment {
    pub transaction_id: String,
    /// Microseconds since the epoch (the file holds RFC 3339).
    #[serde(deserialize_with = "rfc3339_micros")]
    pub event_time: i64,
    pub amount_minor: i64,
    pub currency: String,
    /// When the record reached Kafka (microseconds), if it said: what scheduled mode
    /// calls settled.
    #[serde(default, deserialize_with = "rfc3339_micros_opt")]
    pub kafka_timestamp: Option<i64>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

/// What the dedup index said about a repeated transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    /// Same id, same content: a retry or a replay.
    Duplicate,
    /// Same id, different content.
    Conflict,
}

/// A row of `dedup_audit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Audit {
    pub kind: AuditKind,
    /// The repeat's own event time (microseconds): a repeat is on time, so it moved
    /// its partition's watermark like a payment.
    #[serde(deserialize_with = "rfc3339_micros")]
    pub event_time: i64,
    #[serde(default, deserialize_with = "rfc3339_micros_opt")]
    pub kafka_timestamp: Option<i64>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

/// A row of `late_events`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Late {
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

/// A row of `processing_errors`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProcessingError {
    pub error_code: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub outbox_seq: u64,
}

/// A row of `payment_metrics`: one closed (partition, window, currency).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Metrics {
    /// Microseconds since the epoch.
    #[serde(deserialize_with = "rfc3339_micros")]
    pub window_start: i64,
    /// Microseconds since the epoch: with `window_start`, the window size the
    /// processor used.
    #[serde(deserialize_with = "rfc3339_micros")]
    pub window_end: i64,
    pub currency: String,
    pub payment_count: u64,
    pub amount_minor_sum: i64,
    pub source_partition: i32,
    pub outbox_seq: u64,
}

fn rfc3339_micros<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = String::deserialize(d)?;
    parse_micros(&s).map_err(D::Error::custom)
}

/// A nullable timestamp (`kafka_timestamp` is null for a record without one).
fn rfc3339_micros_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_micros(&s).map_err(D::Error::custom))
        .transpose()
}

fn parse_micros(s: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("timestamp `{s}`: {e}"))
}

/// The columns every row carries: its partition and its place in that partition's
/// outbox sequence.
pub trait Row {
    fn partition(&self) -> i32;
    fn seq(&self) -> u64;
}

/// A row that stands for one input record, so it carries that record's offset.
pub trait Record: Row {
    fn offset(&self) -> i64;
}

macro_rules! impl_row {
    ($($t:ty),*) => {$(
        impl Row for $t {
            fn partition(&self) -> i32 {
                self.source_partition
            }
            fn seq(&self) -> u64 {
                self.outbox_seq
            }
        }
    )*};
}

macro_rules! impl_record {
    ($($t:ty),*) => {$(
        impl Record for $t {
            fn offset(&self) -> i64 {
                self.source_offset
            }
        }
    )*};
}

impl_row!(Payment, Audit, Late, ProcessingError, Metrics);
impl_record!(Payment, Audit, Late, ProcessingError);

fn offsets<T: Record>(rows: &[T]) -> impl Iterator<Item = (i32, i64)> + '_ {
    rows.iter().map(|r| (r.partition(), r.offset()))
}

fn seqs<T: Row>(rows: &[T]) -> Vec<(i32, u64)> {
    rows.iter().map(|r| (r.partition(), r.seq())).collect()
}

/// Everything the file sink delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub payments: Vec<Payment>,
    pub audit: Vec<Audit>,
    pub late: Vec<Late>,
    pub errors: Vec<ProcessingError>,
    pub metrics: Vec<Metrics>,
}

impl Ledger {
    /// Reads `<dir>/<table>.jsonl` for every table.
    pub fn read(dir: &Path) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            payments: read_table(dir, Table::Payments)?,
            audit: read_table(dir, Table::DedupAudit)?,
            late: read_table(dir, Table::LateEvents)?,
            errors: read_table(dir, Table::ProcessingErrors)?,
            metrics: read_table(dir, Table::PaymentMetrics)?,
        })
    }

    /// `(partition, offset)` of every row that stands for one input record: the four
    /// record tables (`payment_metrics` rows are aggregates, not records).
    pub fn source_offsets(&self) -> Vec<(i32, i64)> {
        let payments = offsets(&self.payments);
        let audit = offsets(&self.audit);
        let (late, errors) = (offsets(&self.late), offsets(&self.errors));
        payments.chain(audit).chain(late).chain(errors).collect()
    }

    /// `(partition, offset, event_time, kafka_timestamp)` of the accepted records
    /// (`payments` and `dedup_audit`: on time, so each moved its partition's
    /// watermark): what scheduled mode settles by (`super::settled`).
    pub fn accepted_rows(&self) -> impl Iterator<Item = (i32, i64, i64, Option<i64>)> + '_ {
        let payments = self.payments.iter().map(|r| {
            (
                r.source_partition,
                r.source_offset,
                r.event_time,
                r.kafka_timestamp,
            )
        });
        let audit = self.audit.iter().map(|r| {
            (
                r.source_partition,
                r.source_offset,
                r.event_time,
                r.kafka_timestamp,
            )
        });
        payments.chain(audit)
    }

    /// The rows kept by `record` (the four record tables, by partition and offset)
    /// and `window` (`payment_metrics`, by partition and window start).
    pub fn filtered(
        &self,
        record: impl Fn(i32, i64) -> bool,
        window: impl Fn(i32, i64) -> bool,
    ) -> Ledger {
        fn keep<T: Record + Clone>(rows: &[T], f: &impl Fn(i32, i64) -> bool) -> Vec<T> {
            rows.iter()
                .filter(|r| f(r.partition(), r.offset()))
                .cloned()
                .collect()
        }
        Ledger {
            payments: keep(&self.payments, &record),
            audit: keep(&self.audit, &record),
            late: keep(&self.late, &record),
            errors: keep(&self.errors, &record),
            metrics: self
                .metrics
                .iter()
                .filter(|m| window(m.source_partition, m.window_start))
                .cloned()
                .collect(),
        }
    }

    /// `(partition, outbox_seq)` of every row, per table, in [`Table::ALL`] order.
    pub fn sequences(&self) -> [(Table, Vec<(i32, u64)>); 5] {
        [
            (Table::Payments, seqs(&self.payments)),
            (Table::DedupAudit, seqs(&self.audit)),
            (Table::LateEvents, seqs(&self.late)),
            (Table::ProcessingErrors, seqs(&self.errors)),
            (Table::PaymentMetrics, seqs(&self.metrics)),
        ]
    }

    /// The output in the manifest's terms.
    pub fn observed(&self) -> Observed {
        let count = |kind| self.audit.iter().filter(|r| r.kind == kind).count() as i64;
        let mut o = Observed {
            payments: self.payments.len() as i64,
            duplicates: count(AuditKind::Duplicate),
            conflicts: count(AuditKind::Conflict),
            late: self.late.len() as i64,
            invalid: self.errors.len() as i64,
            ..Observed::default()
        };
        for e in &self.errors {
            *o.invalid_by_code.entry(e.error_code.clone()).or_default() += 1;
        }
        for (p, _) in self.source_offsets() {
            *o.records_by_partition.entry(i64::from(p)).or_default() += 1;
        }
        for r in &self.payments {
            *o.amount_by_currency.entry(r.currency.clone()).or_default() +=
                i128::from(r.amount_minor);
        }
        o
    }
}

/// One table's rows; none if its file does not exist.
fn read_table<T: DeserializeOwned>(dir: &Path, table: Table) -> Result<Vec<T>, LedgerError> {
    let path = dir.join(format!("{}.jsonl", table.name()));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LedgerError::Read { path, source }),
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(source) => return Err(LedgerError::Read { path, source }),
        };
        match serde_json::from_str(&line) {
            Ok(row) => rows.push(row),
            Err(source) => {
                return Err(LedgerError::Row {
                    path,
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(rows)
}

/// A payment row for the checks' tests: EUR, 100 minor units at time 0.
#[cfg(test)]
pub fn test_payment(id: &str, partition: i32, offset: i64) -> Payment {
    Payment {
        transaction_id: id.to_owned(),
        event_time: 0,
        amount_minor: 100,
        currency: "EUR".to_owned(),
        kafka_timestamp: None,
        source_partition: partition,
        source_offset: offset,
        outbox_seq: 0,
    }
}

/// A partition-0 EUR metrics row of a 60 s window, for the checks' tests.
#[cfg(test)]
pub fn test_metrics(window_start: i64, payment_count: u64, amount_minor_sum: i64) -> Metrics {
    Metrics {
        window_start,
        window_end: window_start + 60_000_000,
        currency: "EUR".to_owned(),
        payment_count,
        amount_minor_sum,
        source_partition: 0,
        outbox_seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYMENT: &str = r#"{"transaction_id":"t1","event_time":"2024-05-01T12:00:30.000001Z","amount_minor":1250,"amount":"12.50","currency":"EUR","kafka_timestamp":"2024-05-01T12:00:30.123Z","source_partition":1,"source_offset":7,"outbox_seq":0,"fraud_score":3}"#;

    #[test]
    fn reads_the_columns_it_needs_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("payments.jsonl"), format!("{PAYMENT}\n")).unwrap();
        std::fs::write(
            dir.path().join("dedup_audit.jsonl"),
            "{\"kind\":\"conflict\",\"event_time\":\"2024-05-01T12:00:31Z\",\"kafka_timestamp\":null,\"source_partition\":1,\"source_offset\":8,\"outbox_seq\":0}\n",
        )
        .unwrap();
        let ledger = Ledger::read(dir.path()).unwrap();
        assert_eq!(
            ledger.payments,
            vec![Payment {
                transaction_id: "t1".into(),
                event_time: 1_714_564_830_000_001,
                amount_minor: 1250,
                currency: "EUR".into(),
                kafka_timestamp: Some(1_714_564_830_123_000),
                source_partition: 1,
                source_offset: 7,
                outbox_seq: 0,
            }]
        );
        assert_eq!(ledger.audit[0].kind, AuditKind::Conflict);
        assert_eq!(ledger.audit[0].event_time, 1_714_564_831_000_000);
        assert_eq!(ledger.audit[0].kafka_timestamp, None);
        assert!(ledger.late.is_empty() && ledger.metrics.is_empty());
        assert_eq!(ledger.source_offsets(), vec![(1, 7), (1, 8)]);
        let o = ledger.observed();
        assert_eq!((o.payments, o.conflicts, o.duplicates), (1, 1, 0));
        assert_eq!(o.records_by_partition.get(&1), Some(&2));
        assert_eq!(o.amount_by_currency.get("EUR"), Some(&1250));
    }

    #[test]
    fn a_missing_or_mistyped_field_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let no_amount = PAYMENT.replace(r#""amount_minor":1250,"#, "");
        std::fs::write(
            dir.path().join("payments.jsonl"),
            format!("{PAYMENT}\n{no_amount}\n"),
        )
        .unwrap();
        let e = format!("{:#}", Ledger::read(dir.path()).unwrap_err());
        assert!(e.contains("payments.jsonl line 2"), "{e}");
        assert!(e.contains("amount_minor"), "{e}");

        let bad_time = PAYMENT.replace("2024-05-01T12:00:30.000001Z", "yesterday");
        std::fs::write(dir.path().join("payments.jsonl"), format!("{bad_time}\n")).unwrap();
        let e = format!("{:#}", Ledger::read(dir.path()).unwrap_err());
        assert!(
            e.contains("payments.jsonl line 1") && e.contains("yesterday"),
            "{e}"
        );

        std::fs::remove_file(dir.path().join("payments.jsonl")).unwrap();
        std::fs::write(
            dir.path().join("dedup_audit.jsonl"),
            "{\"kind\":\"maybe\",\"event_time\":\"2024-05-01T12:00:31Z\",\"source_partition\":0,\"source_offset\":0,\"outbox_seq\":0}\n",
        )
        .unwrap();
        let e = format!("{:#}", Ledger::read(dir.path()).unwrap_err());
        assert!(
            e.contains("dedup_audit.jsonl line 1") && e.contains("maybe"),
            "{e}"
        );
    }
}
