//! The ground-truth manifest: what the simulator produced, per partition and kind.
//!
//! The types live in `paydedup-manifest`, shared with `reconcile`, which reads the file
//! this crate writes. What is simulator-specific stays here: how one produced record is
//! tallied ([`ManifestExt::record`]).

pub use paydedup_manifest::{CurrencyTotals, KindCounts, Manifest, ManifestError, StormTotals};

use crate::traffic::SimRecord;
use crate::truth::Kind;

/// Tallying produced records into a [`Manifest`].
pub trait ManifestExt {
    /// Counts one produced record: its kind, its partition, and for a unique payment its
    /// currency and amount; for a malformed one its error code.
    fn record(&mut self, r: &SimRecord);
}

impl ManifestExt for Manifest {
    fn record(&mut self, r: &SimRecord) {
        add(&mut self.totals, r.kind);
        self.skewed_records += u64::from(r.clock_skew_ms != 0);
        if let Some(p) = self.by_partition.get_mut(r.partition as usize) {
            add(p, r.kind);
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

fn add(counts: &mut KindCounts, kind: Kind) {
    counts.records += 1;
    match kind {
        Kind::Unique => counts.unique += 1,
        Kind::Duplicate => counts.duplicate += 1,
        Kind::Replay => counts.replay += 1,
        Kind::Conflict => counts.conflict += 1,
        Kind::Late { key_known } => {
            counts.late += 1;
            counts.late_key_known += u64::from(key_known);
        }
        Kind::Malformed { .. } => counts.malformed += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn sim(partition: i32, kind: Kind) -> SimRecord {
        SimRecord {
            partition,
            key: String::new(),
            payload: Vec::new(),
            kind,
            event: None,
            clock_skew_ms: 0,
        }
    }

    #[test]
    fn record_tallies_totals_partitions_and_codes() {
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let mut m = Manifest::new("payments", 1, 2, start, 300, 3600);
        for kind in [
            Kind::Duplicate,
            Kind::Replay,
            Kind::Conflict,
            Kind::Late { key_known: true },
            Kind::Late { key_known: false },
            Kind::Malformed {
                code: "invalid_json",
            },
        ] {
            m.record(&sim(1, kind));
        }
        assert_eq!(m.totals.records, 6);
        assert_eq!(m.totals.audited_duplicates(), 2);
        assert_eq!((m.totals.late, m.totals.late_key_known), (2, 1));
        assert_eq!(m.by_partition[1], m.totals);
        assert_eq!(m.by_partition[0], KindCounts::default());
        assert_eq!(m.malformed_by_code["invalid_json"], 1);
    }
}
