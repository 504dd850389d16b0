//! Which owned partitions are active, for the processor-wide watermark.
//!
//! The processor-wide watermark is the minimum over partitions that received a record
//! within `idle_timeout`; an idle partition stops holding it back (see
//! [`watermark::combined`]). It is a monitoring value: decisions use each record's own
//! partition watermark, so wall-clock idleness never changes a row.

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

    /// The minimum watermark over active owned partitions.
    pub fn combined_watermark(&self, pipeline: &Pipeline, owned: &[i32]) -> Option<i64> {
        watermark::combined(
            owned
                .iter()
                .map(|&p| (pipeline.watermark(p), self.is_idle(p))),
        )
    }
}
