//! The manifest: the simulator's ground truth, as one typed contract.
//!
//! The simulator knows what every record it produced *must* become (it keeps an
//! independent model of dedup, lateness and validation, see `paydedup-simulator`'s
//! `truth`), and writes the sums as a JSON file next to the topic. `paydedup-processor
//! reconcile --manifest M` then checks the delivered output against it. Both sides use
//! these types, so a field renamed on one side is a compile error on the other, not a
//! check that silently compares against zero.
//!
//! What each number must equal in the output:
//!
//! | manifest                             | output                                          |
//! |--------------------------------------|-------------------------------------------------|
//! | `totals.unique`                      | rows in `payments`                              |
//! | `totals.duplicate + totals.replay`   | `dedup_audit` rows with `kind = duplicate`      |
//! | `totals.conflict`                    | `dedup_audit` rows with `kind = conflict`       |
//! | `totals.late`                        | rows in `late_events`                           |
//! | `totals.malformed`                   | rows in `processing_errors`                     |
//! | `malformed_by_code[c]`               | `processing_errors` rows with `error_code = c`  |
//! | `by_partition[p].records`            | rows of partition `p` in the four record tables |
//! | `by_currency[c].unique_amount_minor` | sum of `payments.amount_minor` in currency `c`  |
//!
//! A retry and a replay are both "the same event again" to the processor, which is why
//! they land in the same audit kind; the simulator counts them apart because it made
//! them for different reasons.
//!
//! The JSON is the serde form of [`Manifest`]; field names and order are the file
//! format (manifests written by earlier runs must keep loading).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// The `dedup_audit` rows of `kind = duplicate` these records must produce.
    pub fn audited_duplicates(&self) -> u64 {
        self.duplicate + self.replay
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
    /// The largest event time of a valid, non-late record (where a run that follows
    /// this one must start its event time to continue the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<DateTime<Utc>>,
    /// The duplicate storm of this run, if there was one (its copies are also counted
    /// in the totals above, by kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormTotals>,
    /// Records sent by a producer with a skewed clock (`--skew-rate`), of any kind.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skewed_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One payment sent again and again: what its copies became.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormTotals {
    pub transaction_id: String,
    pub partition: usize,
    pub copies: u64,
    /// Copies that arrived after the previous occurrence expired from the dedup index
    /// (or the very first): each is a row in `payments`, so this id is in `payments`
    /// this many times.
    pub unique: u64,
    pub duplicate: u64,
    pub late: u64,
    /// Event time the occurrence still remembered at the end of the run was first
    /// seen; a run continuing the storm passes it on (`--storm-alive-since`).
    pub alive_since: Option<DateTime<Utc>>,
}

/// Why a manifest could not be loaded (the I/O or JSON error is the `source`).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading manifest {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing manifest {}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl Manifest {
    /// An empty manifest: every count zero, one entry per partition.
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
            max_event_time: None,
            storm: None,
            skewed_records: 0,
        }
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Manifest {
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let mut m = Manifest::new("payments", 7, 2, start, 300, 3600);
        m.totals = KindCounts {
            records: 10,
            unique: 5,
            duplicate: 1,
            replay: 1,
            conflict: 1,
            late: 1,
            late_key_known: 0,
            malformed: 1,
        };
        m.by_partition[1].records = 10;
        m.malformed_by_code.insert("invalid_json".into(), 1);
        m.by_currency.insert(
            "EUR".into(),
            CurrencyTotals {
                unique_count: 5,
                unique_amount_minor: i128::from(i64::MAX) * 3,
            },
        );
        m.first_offset[0] = Some(42);
        m
    }

    #[test]
    fn json_field_names_and_order_are_the_file_format() {
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let mut m = Manifest::new("payments", 7, 1, start, 300, 3600);
        m.totals.unique = 2;
        m.totals.replay = 1;
        m.by_partition[0].records = 3;
        m.malformed_by_code.insert("invalid_json".into(), 1);
        m.by_currency.insert(
            "EUR".into(),
            CurrencyTotals {
                unique_count: 2,
                unique_amount_minor: 250,
            },
        );
        m.first_offset[0] = Some(42);
        m.elapsed_secs = 1.5;
        let counts = |records, unique, replay| {
            format!(
                r#"{{"records":{records},"unique":{unique},"duplicate":0,"replay":{replay},"conflict":0,"late":0,"late_key_known":0,"malformed":0}}"#
            )
        };
        let expected = format!(
            concat!(
                r#"{{"topic":"payments","seed":7,"partitions":1,"start_time":"2024-05-01T12:00:00Z","#,
                r#""allowed_lateness_secs":300,"retention_secs":3600,"totals":{},"by_partition":[{}],"#,
                r#""malformed_by_code":{{"invalid_json":1}},"#,
                r#""by_currency":{{"EUR":{{"unique_count":2,"unique_amount_minor":250}}}},"#,
                r#""first_offset":[42],"elapsed_secs":1.5}}"#
            ),
            counts(0, 2, 1),
            counts(3, 0, 0)
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), expected);
        // A manifest written before the storm and skew fields still loads.
        assert_eq!(serde_json::from_str::<Manifest>(&expected).unwrap(), m);
    }

    #[test]
    fn load_round_trips_and_keeps_i128_sums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&sample()).unwrap()).unwrap();
        let m = Manifest::load(&path).unwrap();
        assert_eq!(m, sample());
        assert_eq!(m.totals.audited_duplicates(), 2);
        assert_eq!(
            m.by_currency["EUR"].unique_amount_minor,
            i128::from(i64::MAX) * 3
        );
    }

    #[test]
    fn load_errors_name_the_file_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Manifest::load(&missing).unwrap_err();
        assert!(matches!(e, ManifestError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.json"), "{e}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"topic": "payments", "totals": {}}"#).unwrap();
        let e = Manifest::load(&bad).unwrap_err();
        assert!(matches!(e, ManifestError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("bad.json"), "{e}");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("missing field"), "{cause}");
    }
}
