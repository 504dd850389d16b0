//! Which owned partitions are active, for the processor-wide watermark.
//!
//! The processor-wide watermark is the minimum over partitions that received a record
//! within `idle_timeout`; an idle partition stops holding it back (see
//! [`watermark::combined`]). It is a monitoring value: decisions use each record's own
//! partition watermark. Wall-clock idleness changes a row in one place only: a
//! caught-up partition idle for the timeout has its watermark follow the slowest
//! active one ([`Pipeline::advance_idle`]), so its windows close; that step is committed
//! like a batch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::pipeline::{watermark, InputRecord, Pipeline};

pub struct PartitionActivity {
    last_record: HashMap<i32, Instant>,
    idle_timeout: Duration,
}

impl PartitionActivity {
    /// Every owned partition starts active (as if it had just received a record).
    pub fn new(owned: &[i32], idle_timeout: Duration) -> PartitionActivity {
        let now = Instant::now();
        PartitionActivity {
            last_record: owned.iter().map(|&p| (p, now)).collect(),
            idle_timeout,
        }
    }

    pub fn saw(&mut self, records: &[InputRecord<'_>]) {
        let now = Instant::now();
        for r in records {
            self.last_record.insert(r.partition, now);
        }
    }

    fn is_idle(&self, partition: i32) -> bool {
        self.last_record
            .get(&partition)
            .is_none_or(|t| t.elapsed() >= self.idle_timeout)
    }

    /// Owned partitions that received nothing for the idle timeout.
    pub fn idle(&self, owned: &[i32]) -> Vec<i32> {
        owned.iter().copied().filter(|&p| self.is_idle(p)).collect()
    }

    /// The slowest active partition's watermark (`None` when no active partition has
    /// one): where an idle partition's watermark may follow.
    pub fn slowest_active_watermark(&self, pipeline: &Pipeline, owned: &[i32]) -> Option<i64> {
        owned
            .iter()
            .filter(|&&p| !self.is_idle(p))
            .filter_map(|&p| pipeline.watermark(p))
            .min()
    }

    /// The minimum watermark over active owned partitions.
    pub fn combined_watermark(&self, pipeline: &Pipeline, owned: &[i32]) -> Option<i64> {
        watermark::combined(
            owned
                .iter()
                .map(|&p| (pipeline.watermark(p), self.is_idle(p))),
        )
    }
}
