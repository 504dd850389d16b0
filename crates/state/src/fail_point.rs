//! Fail points: named places where a test makes the process die at once.
//!
//! A crash at a random moment rarely lands exactly between two steps whose order
//! matters, e.g. between a sink's acknowledgement and the outbox delete. A fail point
//! names such a place; the fault campaign sets `PAYDEDUP_FAIL_POINT=NAME:N` and the
//! process aborts on the N-th time it passes `NAME` (no destructor runs, nothing is
//! flushed: what a SIGKILL at that instant leaves behind).
//!
//! Compiled in only with the `fail-points` feature (the test builds turn it on); in
//! any other build [`hit`] is an empty inline function, and the variable is ignored.
//!
//! The places, in the order one batch passes them:
//! - [`COMMIT_BEFORE_WRITE`]: the batch is built and counted, nothing is on disk;
//! - [`COMMIT_INSIDE`]: the batch is written to RocksDB's log, not yet synced (hit on
//!   the thread that makes it durable, which may be after the next batch's write);
//! - [`COMMIT_AFTER`]: the commit is durable, the relay has not been told;
//! - [`RELAY_AFTER_ACK`]: the sink acknowledged rows that are still in the outbox;
//! - [`RELAY_AFTER_DELETE`]: the delivered rows left the outbox.
//!
//! And off the batch's path, on the fraud log's fold thread (`store::fraud_log`), not
//! among [`ALL`] (the fault campaign's runs are too short to fold):
//! - [`FOLD_BEFORE_INGEST`]: a fold's file is written, RocksDB has not taken it;
//! - [`FOLD_AFTER_INGEST`]: a fold's file is in the fraud family, its pages are not yet
//!   deleted.

pub const COMMIT_BEFORE_WRITE: &str = "commit.before_write";
pub const COMMIT_INSIDE: &str = "commit.inside";
pub const COMMIT_AFTER: &str = "commit.after";
pub const RELAY_AFTER_ACK: &str = "relay.after_ack";
pub const RELAY_AFTER_DELETE: &str = "relay.after_delete";
pub const FOLD_BEFORE_INGEST: &str = "fraud_log.before_ingest";
pub const FOLD_AFTER_INGEST: &str = "fraud_log.after_ingest";

/// Every fail point, for the campaign to choose from.
pub const ALL: [&str; 5] = [
    COMMIT_BEFORE_WRITE,
    COMMIT_INSIDE,
    COMMIT_AFTER,
    RELAY_AFTER_ACK,
    RELAY_AFTER_DELETE,
];

/// The environment variable that arms one fail point: `NAME:N` (N ≥ 1).
pub const ENV: &str = "PAYDEDUP_FAIL_POINT";

/// Passes the fail point `name`: aborts the process if it is armed and this is its
/// N-th pass.
#[cfg(feature = "fail-points")]
pub fn hit(name: &str) {
    armed::hit(name)
}

#[cfg(not(feature = "fail-points"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Whether this build has fail points (the campaign refuses to run without them).
pub const COMPILED_IN: bool = cfg!(feature = "fail-points");

#[cfg(feature = "fail-points")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// (name, N) from the environment, read once.
    fn armed() -> Option<&'static (String, u64)> {
        static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let v = std::env::var(super::ENV).ok()?;
                let (name, n) = v.rsplit_once(':')?;
                Some((name.to_owned(), n.parse().ok().filter(|n| *n > 0)?))
            })
            .as_ref()
    }

    pub(super) fn hit(name: &str) {
        static PASSES: AtomicU64 = AtomicU64::new(0);
        let Some((armed, n)) = armed() else { return };
        if armed != name {
            return;
        }
        if PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // One line the campaign greps for, then die like a SIGKILL would.
            eprintln!("paydedup fail point {name} reached (pass {n}); aborting");
            std::process::abort();
        }
    }
}
