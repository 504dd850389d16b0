//! Topology: how many instances run, which one this is, and so which partitions it owns.
//!
//! Ownership is static — instance `i` of `n` owns the partitions `p` with
//! `p mod n = i` — but `n` is not a second number an operator types: in Kubernetes it is
//! the StatefulSet's `spec.replicas` ([`kubernetes`]), read at start and watched while
//! running, and `i` is the pod's ordinal. When the count changes, every instance finds
//! its new set of partitions; the processor stops (draining what it can), forgets the
//! partitions it no longer owns, and starts again on the new set, restoring the ones it
//! gained from the warehouse (`wiring`). Exactness across the hand-off does not depend
//! on the instances noticing at the same moment: the sink's fence lets only the latest
//! claimant of a partition deliver, and a claimant restores from what the sink holds.

pub mod kubernetes;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::InstanceSettings;
use kubernetes::StatefulSetReplicas;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("--statefulset needs the pod's ordinal: HOSTNAME `{0}` does not end in `-N` (set --instance-index)")]
    NoOrdinal(String),
    #[error("--statefulset needs the pod's ordinal: HOSTNAME is not set (set --instance-index)")]
    NoHostname,
    #[error("--instance-index must be in 0..{count}, got {index}")]
    IndexOutOfRange { index: u32, count: u32 },
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

/// The partitions instance `index` of `count` owns: `p mod count = index`. None when
/// there are no instances (a StatefulSet scaled to zero).
pub fn owned_partitions(partition_count: i32, index: u32, count: u32) -> Vec<i32> {
    if count == 0 {
        return Vec::new();
    }
    (0..partition_count)
        .filter(|p| (*p as u32) % count == index)
        .collect()
}

/// The ordinal of a StatefulSet pod from its host name (`paydedup-3` → 3).
pub fn hostname_ordinal(hostname: &str) -> Option<u32> {
    let (_, n) = hostname.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Where the instance count comes from.
pub enum CountSource {
    /// `--instance-count`: fixed for the life of the process.
    Fixed(NonZeroU32),
    /// `--statefulset`: the StatefulSet's `spec.replicas`, followed while running.
    StatefulSet(StatefulSetReplicas),
}

impl CountSource {
    pub fn from_settings(s: &InstanceSettings) -> Result<CountSource, TopologyError> {
        Ok(match &s.statefulset {
            Some(name) => CountSource::StatefulSet(StatefulSetReplicas::new(
                name,
                s.kube_api.as_deref(),
                s.kube_namespace.as_deref(),
            )?),
            None => CountSource::Fixed(s.instance_count.unwrap_or(NonZeroU32::MIN)),
        })
    }

    fn read(&self) -> Result<u32, TopologyError> {
        match self {
            CountSource::Fixed(n) => Ok(n.get()),
            CountSource::StatefulSet(s) => Ok(s.read()?),
        }
    }

    fn follows(&self) -> bool {
        matches!(self, CountSource::StatefulSet(_))
    }
}

/// This instance's index: `--instance-index`, else (with `--statefulset`) the pod's
/// ordinal, else 0.
pub fn instance_index(s: &InstanceSettings) -> Result<u32, TopologyError> {
    if let Some(i) = s.instance_index {
        return Ok(i);
    }
    if s.statefulset.is_none() {
        return Ok(0);
    }
    let host = std::env::var("HOSTNAME").map_err(|_| TopologyError::NoHostname)?;
    hostname_ordinal(&host).ok_or(TopologyError::NoOrdinal(host))
}

/// The instance count as last read, shared with a thread that re-reads it every
/// `every` (only for a source that can change).
#[derive(Clone)]
pub struct InstanceCount {
    current: Arc<AtomicU32>,
}

impl InstanceCount {
    /// Reads the count once (failing the start if it cannot), then follows it.
    pub fn start(source: CountSource, every: Duration) -> Result<InstanceCount, TopologyError> {
        let first = source.read()?;
        let current = Arc::new(AtomicU32::new(first));
        if source.follows() {
            let weak = Arc::downgrade(&current);
            let _ = std::thread::Builder::new()
                .name("instance-count".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    let Some(current) = weak.upgrade() else { return };
                    match source.read() {
                        Ok(n) => {
                            let was = current.swap(n, Ordering::AcqRel);
                            if was != n {
                                tracing::warn!(from = was, to = n, "The instance count changed.");
                            }
                        }
                        // Keep the last known count: ownership must not flap because the
                        // API server is briefly away.
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not read the instance count; keeping the last one.")
                        }
                    }
                });
        }
        Ok(InstanceCount { current })
    }

    pub fn get(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }
}

/// Which instance this is, and how many there are right now.
#[derive(Clone)]
pub struct Topology {
    pub index: u32,
    pub count: InstanceCount,
}

impl Topology {
    pub fn from_settings(s: &InstanceSettings) -> Result<Topology, TopologyError> {
        let index = instance_index(s)?;
        let count = InstanceCount::start(CountSource::from_settings(s)?, s.topology_check_every)?;
        if s.statefulset.is_none() && index >= count.get() {
            return Err(TopologyError::IndexOutOfRange {
                index,
                count: count.get(),
            });
        }
        Ok(Topology { index, count })
    }

    /// The partitions owned under the current count.
    pub fn owned(&self, partition_count: i32) -> Vec<i32> {
        owned_partitions(partition_count, self.index, self.count.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ownership_splits_partitions() {
        assert_eq!(owned_partitions(4, 0, 1), vec![0, 1, 2, 3]);
        assert_eq!(owned_partitions(5, 1, 2), vec![1, 3]);
        assert_eq!(owned_partitions(1, 1, 2), Vec::<i32>::new());
        assert_eq!(owned_partitions(4, 0, 0), Vec::<i32>::new());
    }

    /// Every partition has exactly one owner at every count.
    #[test]
    fn every_partition_has_one_owner_at_every_count() {
        for count in 1..=9u32 {
            let mut owners = vec![0; 8];
            for index in 0..count {
                for p in owned_partitions(8, index, count) {
                    owners[p as usize] += 1;
                }
            }
            assert!(owners.iter().all(|&n| n == 1), "count {count}: {owners:?}");
        }
    }

    #[test]
    fn the_ordinal_is_the_number_after_the_last_dash() {
        assert_eq!(hostname_ordinal("paydedup-processor-3"), Some(3));
        assert_eq!(hostname_ordinal("paydedup-0"), Some(0));
        assert_eq!(hostname_ordinal("paydedup"), None);
        assert_eq!(hostname_ordinal("paydedup-"), None);
        assert_eq!(hostname_ordinal("paydedup-x1"), None);
        assert_eq!(hostname_ordinal("paydedup-+1"), None);
    }
}
