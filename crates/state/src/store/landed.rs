//! What a restored state must not send again: the records beyond its position whose
//! rows the sink already holds, and the windows the sink already holds closed (see
//! `paydedup-processor restore`).

use std::collections::BTreeMap;

use super::StateStore;
use crate::keys::{self, meta};
use crate::{StateError, Table};

/// The restore bookkeeping still pending in a state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandedAhead {
    /// Partition → offset → the table whose row for it the sink holds.
    pub records: BTreeMap<i32, BTreeMap<i64, Table>>,
    /// (partition, window start µs, currency) of windows held closed by the sink.
    pub windows: Vec<(i32, i64, String)>,
}

impl StateStore {
    pub fn landed_ahead(&self) -> Result<LandedAhead, StateError> {
        let mut out = LandedAhead::default();
        self.scan_meta(meta::LANDED_RECORD_PREFIX, |k, v| {
            let bad = || StateError::BadValue {
                what: "landed record",
                len: k.len(),
            };
            let p = keys::be_i32(k.get(..4).ok_or_else(bad)?).ok_or_else(bad)?;
            let o = keys::be_i64(k.get(4..12).ok_or_else(bad)?).ok_or_else(bad)?;
            let t = v
                .first()
                .and_then(|id| Table::from_id(*id))
                .ok_or_else(bad)?;
            out.records.entry(p).or_default().insert(o, t);
            Ok(())
        })?;
        self.scan_meta(meta::LANDED_WINDOW_PREFIX, |k, _| {
            let w = keys::parse_window_key(k).ok_or(StateError::BadValue {
                what: "landed window",
                len: k.len(),
            })?;
            out.windows.push(w);
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StateBatch, StoreOptions};

    #[test]
    fn marks_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = StateBatch::new();
        b.set_landed_record(1, 300, Table::DedupAudit);
        b.set_landed_record(1, 301, Table::Payments);
        b.set_landed_window(1, 60_000_000, "EUR");
        s.commit(b).unwrap();
        let l = s.landed_ahead().unwrap();
        assert_eq!(
            l.records[&1],
            BTreeMap::from([(300, Table::DedupAudit), (301, Table::Payments)])
        );
        assert_eq!(l.windows, vec![(1, 60_000_000, "EUR".to_owned())]);
        let mut b = StateBatch::new();
        b.clear_landed_record(1, 300);
        b.clear_landed_record(1, 301);
        b.clear_landed_window(1, 60_000_000, "EUR");
        s.commit(b).unwrap();
        assert_eq!(s.landed_ahead().unwrap(), LandedAhead::default());
    }
}
