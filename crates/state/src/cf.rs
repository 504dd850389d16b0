//! Column families. Each holds one kind of state, so each can have its own options
//! (bloom filters for point lookups, a compaction filter for TTL) and its own size in
//! the `state` report.

/// `transaction_id` hash → [`crate::DedupEntry`]. Expired by the compaction filter.
pub const CF_DEDUP: &str = "dedup";
/// Dedup entries written since pages replaced per-key puts: (partition, page sequence)
/// → the page (`crate::dedup_page`). Pages are deleted whole once expired.
pub const CF_DEDUP_PAGES: &str = "dedup_pages";
/// Fraud keyed state (per card, per customer). Values start with a last-seen time and
/// expire like dedup keys, with their own TTL.
pub const CF_FRAUD: &str = "fraud";
/// Fraud changes not yet folded into `fraud`: commit number → the commit's fraud puts
/// as one page (`crate::fraud_log_page`; see `store::fraud_log`). Folded and deleted
/// in runs of pages.
pub const CF_FRAUD_LOG: &str = "fraud_log";
/// Open event-time windows: (partition, window start, currency) → aggregate.
pub const CF_WINDOW: &str = "window";
/// Rows waiting for delivery: (table, partition, seq) → row bytes.
pub const CF_OUTBOX: &str = "outbox";
/// Small bookkeeping: next offsets, watermarks, sequence counters, sink positions.
pub const CF_META: &str = "meta";

pub const ALL: [&str; 7] = [
    CF_DEDUP,
    CF_DEDUP_PAGES,
    CF_FRAUD,
    CF_FRAUD_LOG,
    CF_WINDOW,
    CF_OUTBOX,
    CF_META,
];
