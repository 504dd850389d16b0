//! Rows read back from the sink, as the plain facts a restore needs.
//!
//! Every row of the four record tables says one record *landed*: its partition, its
//! offset, its table. `payments` rows also carry the payment itself (the dedup entry,
//! the window contribution, the fraud history), `dedup_audit` rows a repeat's event
//! time and currency (window counts), `payment_metrics` rows the windows already
//! closed. Nothing else is read.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{TimeZone, Utc};
use paydedup_event::{Currency, PaymentEvent, PaymentMethod, TransactionId};
use paydedup_sink::StoredRow;
use paydedup_state::Table;

use super::RestoreError;

/// One record that has its row in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landing {
    pub partition: i32,
    pub offset: i64,
    pub table: Table,
}

/// A unique payment, as `payments` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentFact {
    pub partition: i32,
    pub offset: i64,
    /// The payment (its raw IP address is not stored: fraud scoring does not use it).
    pub event: PaymentEvent,
    pub content_hash: u128,
    pub flagged: bool,
}

/// An on-time repeat, as `dedup_audit` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatFact {
    pub partition: i32,
    pub offset: i64,
    pub event_time: i64,
    pub currency: Currency,
    pub conflict: bool,
}

/// A window `payment_metrics` holds closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedWindow {
    pub partition: i32,
    pub start: i64,
    pub currency: Currency,
}

/// Everything read from the sink for the partitions being restored.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub landings: Vec<Landing>,
    pub payments: Vec<PaymentFact>,
    pub repeats: Vec<RepeatFact>,
    pub closed_windows: Vec<ClosedWindow>,
}

/// The columns read per table.
pub fn columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Payments => &[
            "transaction_id",
            "event_time",
            "amount_minor",
            "currency",
            "merchant_id",
            "merchant_category",
            "card_fingerprint",
            "card_country",
            "customer_id",
            "ip_country",
            "device_id",
            "region",
            "payment_method",
            "schema_version",
            "content_hash",
            "fraud_flagged",
            "source_partition",
            "source_offset",
        ],
        Table::DedupAudit => &[
            "kind",
            "event_time",
            "currency",
            "source_partition",
            "source_offset",
        ],
        Table::LateEvents | Table::ProcessingErrors => &["source_partition", "source_offset"],
        Table::PaymentMetrics => &["window_start", "currency", "source_partition"],
    }
}

fn need<T>(v: Option<T>, table: Table, column: &'static str) -> Result<T, RestoreError> {
    v.ok_or(RestoreError::BadRow { table, column })
}

fn currency(row: &StoredRow, table: Table) -> Result<Currency, RestoreError> {
    need(
        row.text("currency").and_then(Currency::from_code),
        table,
        "currency",
    )
}

impl Facts {
    /// Adds one stored row of `table`.
    pub fn add(&mut self, table: Table, row: &StoredRow) -> Result<(), RestoreError> {
        let partition = need(
            row.int("source_partition")
                .and_then(|p| i32::try_from(p).ok()),
            table,
            "source_partition",
        )?;
        if table == Table::PaymentMetrics {
            self.closed_windows.push(ClosedWindow {
                partition,
                start: need(row.micros("window_start"), table, "window_start")?,
                currency: currency(row, table)?,
            });
            return Ok(());
        }
        let offset = need(row.int("source_offset"), table, "source_offset")?;
        self.landings.push(Landing {
            partition,
            offset,
            table,
        });
        match table {
            Table::Payments => self.payments.push(PaymentFact {
                partition,
                offset,
                event: payment(row)?,
                content_hash: need(
                    row.text("content_hash")
                        .and_then(|h| u128::from_str_radix(h, 16).ok()),
                    table,
                    "content_hash",
                )?,
                flagged: row.flag("fraud_flagged").unwrap_or(false),
            }),
            Table::DedupAudit => self.repeats.push(RepeatFact {
                partition,
                offset,
                event_time: need(row.micros("event_time"), table, "event_time")?,
                currency: currency(row, table)?,
                conflict: row.text("kind") == Some("conflict"),
            }),
            _ => {}
        }
        Ok(())
    }
}

/// The payment a `payments` row records.
fn payment(row: &StoredRow) -> Result<PaymentEvent, RestoreError> {
    let t = Table::Payments;
    let text = |c: &'static str| need(row.text(c), t, c).map(str::to_owned);
    let micros = need(row.micros("event_time"), t, "event_time")?;
    Ok(PaymentEvent {
        transaction_id: TransactionId::new_unchecked(text("transaction_id")?),
        event_time: need(Utc.timestamp_micros(micros).single(), t, "event_time")?,
        amount_minor: need(row.int("amount_minor"), t, "amount_minor")?,
        currency: currency(row, t)?,
        merchant_id: text("merchant_id")?.into(),
        merchant_category: need(
            row.text("merchant_category")
                .and_then(|c| c.parse().ok())
                .or_else(|| {
                    row.int("merchant_category")
                        .and_then(|c| u16::try_from(c).ok())
                }),
            t,
            "merchant_category",
        )?,
        card_fingerprint: text("card_fingerprint")?.into(),
        card_country: text("card_country")?.into(),
        customer_id: text("customer_id")?.into(),
        ip_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ip_country: text("ip_country")?.into(),
        device_id: text("device_id")?.into(),
        region: text("region")?.into(),
        payment_method: need(
            row.text("payment_method").and_then(PaymentMethod::parse),
            t,
            "payment_method",
        )?,
        schema_version: need(row.int("schema_version"), t, "schema_version")?,
    })
}
