//! The ground-truth manifest: what the simulator produced, per partition and kind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::traffic::SimRecord;
use crate::truth::Kind;

/// Record counts by kind. `duplicate + replay` is what lands in `dedup_audit` as
/// `kind = duplicate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    pub records: u64,
    pub unique: u64,
    pub duplicate: u64,
    pub replay: u64,
    pub conflict: u64,
    pub late: u64,
    /// Late events whose transaction_id was still in the dedup index.
    pub late_key_known: u64,
    pub malformed: u64,
}

impl KindCounts {
    fn add(&mut self, kind: Kind) {
        self.records += 1;
        match kind {
            Kind::Unique => self.unique += 1,
            Kind::Duplicate => self.duplicate += 1,
            Kind::Replay => self.replay += 1,
            Kind::Conflict => self.conflict += 1,
            Kind::Late { key_known } => {
                self.late += 1;
                self.late_key_known += u64::from(key_known);
            }
            Kind::Malformed { .. } => self.malformed += 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    pub unique_count: u64,
    /// Sum of `amount_minor` over unique payments (i128: never overflows).
    pub unique_amount_minor: i128,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub topic: String,
    pub seed: u64,
    pub partitions: usize,
    pub start_time: DateTime<Utc>,
    pub allowed_lateness_secs: i64,
    pub retention_secs: i64,
    pub totals: KindCounts,
    /// Index = partition.
    pub by_partition: Vec<KindCounts>,
    pub malformed_by_code: BTreeMap<String, u64>,
    pub by_currency: BTreeMap<String, CurrencyTotals>,
    /// Kafka offset of each partition's first record from this run (the topic may hold
    /// earlier runs' records).
    pub first_offset: Vec<Option<i64>>,
    pub elapsed_secs: f64,
}

impl Manifest {
    pub fn new(
        topic: &str,
        seed: u64,
        partitions: usize,
        start_time: DateTime<Utc>,
        allowed_lateness_secs: i64,
        retention_secs: i64,
    ) -> Manifest {
        Manifest {
            topic: topic.to_owned(),
            seed,
            partitions,
            start_time,
            allowed_lateness_secs,
            retention_secs,
            totals: KindCounts::default(),
            by_partition: vec![KindCounts::default(); partitions],
            malformed_by_code: BTreeMap::new(),
            by_currency: BTreeMap::new(),
            first_offset: vec![None; partitions],
            elapsed_secs: 0.0,
        }
    }

    pub fn record(&mut self, r: &SimRecord) {
        self.totals.add(r.kind);
        if let Some(p) = self.by_partition.get_mut(r.partition as usize) {
            p.add(r.kind);
        }
        match (r.kind, &r.event) {
            (Kind::Malformed { code }, _) => {
                *self.malformed_by_code.entry(code.to_owned()).or_default() += 1;
            }
            (Kind::Unique, Some(e)) => {
                let c = self
                    .by_currency
                    .entry(e.currency.code().to_owned())
                    .or_default();
                c.unique_count += 1;
                c.unique_amount_minor += i128::from(e.amount_minor);
            }
            _ => {}
        }
    }
}
