//! The output tables. Every input record ends in exactly one of the first four;
//! `PaymentMetrics` holds closed windows.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Payments,
    DedupAudit,
    LateEvents,
    ProcessingErrors,
    PaymentMetrics,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Payments,
        Table::DedupAudit,
        Table::LateEvents,
        Table::ProcessingErrors,
        Table::PaymentMetrics,
    ];

    /// The table's name in the warehouse (and the file sink's file stem).
    pub fn name(self) -> &'static str {
        match self {
            Table::Payments => "payments",
            Table::DedupAudit => "dedup_audit",
            Table::LateEvents => "late_events",
            Table::ProcessingErrors => "processing_errors",
            Table::PaymentMetrics => "payment_metrics",
        }
    }

    /// The one-byte id used in outbox and meta keys. Stable: never renumber.
    pub fn id(self) -> u8 {
        match self {
            Table::Payments => 1,
            Table::DedupAudit => 2,
            Table::LateEvents => 3,
            Table::ProcessingErrors => 4,
            Table::PaymentMetrics => 5,
        }
    }

    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
