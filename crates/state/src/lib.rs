//! `paydedup-state`: the processor's durable state in one RocksDB database.
//!
//! A tour of the crate:
//! - [`cf`]: the column families and what each holds.
//! - [`keys`]: byte layouts of keys and values (big-endian, so iteration is ordered).
//! - [`outbox_page`]: a batch's rows of one (table, partition) as one compressed value.
//! - [`table`]: the output tables rows are written for.
//! - [`batch`]: [`StateBatch`], everything one processed batch changes.
//! - [`store`]: [`StateStore`], whose single [`StateStore::commit`] makes a batch durable
//!   atomically: the effects of offsets `[a, b)` and `next_offset = b` are on disk
//!   together or not at all (in two steps, [`StateStore::write_commit`] and
//!   [`StateStore::make_durable`], for a caller that overlaps them).
//! - [`dedup_index`]: [`dedup_index::DedupIndex`], where each dedup entry is (a
//!   fingerprint and its page's slot), in memory, so dedup lookups of new ids never
//!   reach RocksDB; [`resident_pages`], the pages and the newest ones' bytes, which
//!   answer a repeat; [`legacy_dedup`], an earlier build's per-key entries;
//!   [`resident_values`], the fraud values; [`fraud_log_page`], a commit's fraud
//!   changes as one value, until they are folded into the per-key family.
//! - [`expiry`]: the time-to-live of dedup and fraud keys, enforced by a compaction filter.
//! - [`error`]: the error type, [`StateError`].
//! - [`fail_point`]: named places where a test build can die on demand.

pub mod batch;
pub mod cf;
pub mod dedup_index;
pub mod dedup_page;
pub mod error;
pub mod expiry;
pub mod fail_point;
pub mod fraud_log_page;
pub mod keys;
pub mod legacy_dedup;
pub mod outbox_page;
mod probe_table;
pub mod resident_pages;
pub mod resident_values;
pub mod store;
pub mod table;

pub use batch::StateBatch;
pub use error::StateError;
pub use expiry::ExpiryHorizon;
pub use keys::DedupEntry;
pub use store::{
    entry_digest, Forgotten, LandedAhead, LiveDedup, StateStats, StateStore, StoreOptions,
    WrittenCommit,
};
pub use table::Table;
