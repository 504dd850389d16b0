//! What a state directory is the state *of*.
//!
//! Offsets, windows and dedup entries only mean something for the log they were read
//! from and the settings they were decided under. So the first start records a
//! [`StateIdentity`] in the directory — the topic, its partition count, the allowed
//! lateness and the window size (the dedup retention is guarded by the state store
//! itself) — and every later start compares. Anything else stops with a clear error:
//! resuming `payments`' offsets on another topic would skip or re-read records, a new
//! window size would re-open windows already emitted (a second `payment_metrics` row),
//! a new lateness would re-judge records already routed. Never silently.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use paydedup_state::{StateError, StateStore};

/// The facts a state directory is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateIdentity {
    pub topic: String,
    pub partitions: i32,
    pub allowed_lateness_secs: u64,
    pub window_secs: u64,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("this state directory holds the state of topic `{stored}`, not `{requested}`: its offsets mean nothing there (use that topic, or another --state-dir)")]
    Topic { stored: String, requested: String },
    #[error("topic `{topic}` had {stored} partitions when this state was written and has {requested} now: transaction ids may have moved partition, so deduplication cannot continue across the change (start a new pipeline, or repartition into a new topic)")]
    Partitions {
        topic: String,
        stored: i32,
        requested: i32,
    },
    #[error("this state was written with {flag} {stored}, not {requested}: refusing to change it on existing state, it would change decisions already delivered (keep {stored}, or start a new state directory with new output tables)")]
    Setting {
        flag: &'static str,
        stored: u64,
        requested: u64,
    },
    #[error(
        "the state directory's identity record is unreadable ({0}); the directory may be corrupt"
    )]
    Unreadable(serde_json::Error),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Compares the recorded identity with the one this start would run under.
pub fn check(stored: &StateIdentity, requested: &StateIdentity) -> Result<(), IdentityError> {
    if stored.topic != requested.topic {
        return Err(IdentityError::Topic {
            stored: stored.topic.clone(),
            requested: requested.topic.clone(),
        });
    }
    if stored.partitions != requested.partitions {
        return Err(IdentityError::Partitions {
            topic: stored.topic.clone(),
            stored: stored.partitions,
            requested: requested.partitions,
        });
    }
    for (flag, s, r) in [
        (
            "--allowed-lateness-secs",
            stored.allowed_lateness_secs,
            requested.allowed_lateness_secs,
        ),
        ("--window-secs", stored.window_secs, requested.window_secs),
    ] {
        if s != r {
            return Err(IdentityError::Setting {
                flag,
                stored: s,
                requested: r,
            });
        }
    }
    Ok(())
}

/// Binds `store` to `requested`: records it on the first start, checks it on every
/// later one.
pub fn bind(store: &StateStore, requested: &StateIdentity) -> Result<(), IdentityError> {
    match store.identity()? {
        Some(bytes) => {
            let stored: StateIdentity =
                serde_json::from_slice(&bytes).map_err(IdentityError::Unreadable)?;
            check(&stored, requested)
        }
        None => {
            // A directory from before identities were recorded is adopted as it is.
            let bytes = serde_json::to_vec(requested).map_err(IdentityError::Unreadable)?;
            store.set_identity(&bytes)?;
            tracing::info!(topic = %requested.topic, partitions = requested.partitions, "Recorded the state directory's identity.");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> StateIdentity {
        StateIdentity {
            topic: "payments".into(),
            partitions: 4,
            allowed_lateness_secs: 300,
            window_secs: 60,
        }
    }

    #[test]
    fn the_same_identity_passes() {
        assert!(check(&id(), &id()).is_ok());
    }

    #[test]
    fn another_topic_or_partition_count_is_refused() {
        let other = StateIdentity {
            topic: "other".into(),
            ..id()
        };
        let e = check(&id(), &other).unwrap_err().to_string();
        assert!(e.contains("state of topic `payments`, not `other`"), "{e}");
        let grown = StateIdentity {
            partitions: 8,
            ..id()
        };
        let e = check(&id(), &grown).unwrap_err().to_string();
        assert!(
            e.contains("had 4 partitions") && e.contains("has 8 now"),
            "{e}"
        );
    }

    #[test]
    fn each_changed_decision_setting_is_refused_by_its_flag() {
        let late = StateIdentity {
            allowed_lateness_secs: 60,
            ..id()
        };
        let e = check(&id(), &late).unwrap_err().to_string();
        assert!(e.contains("--allowed-lateness-secs 300, not 60"), "{e}");
        let window = StateIdentity {
            window_secs: 30,
            ..id()
        };
        let e = check(&id(), &window).unwrap_err().to_string();
        assert!(e.contains("--window-secs 60, not 30"), "{e}");
    }

    #[test]
    fn the_first_start_records_and_later_starts_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), &paydedup_state::StoreOptions::default()).unwrap();
        bind(&store, &id()).unwrap();
        bind(&store, &id()).unwrap();
        let other = StateIdentity {
            topic: "other".into(),
            ..id()
        };
        assert!(matches!(
            bind(&store, &other),
            Err(IdentityError::Topic { .. })
        ));
    }
}
