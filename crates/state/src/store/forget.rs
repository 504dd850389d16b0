//! Forgetting partitions: what an instance does with the state of partitions it no
//! longer owns (a changed instance count moved them to another instance).
//!
//! Everything the state holds *for* a partition goes in one atomic write: its position
//! (next offset, last record, max event time, committed watermark), its sequences, its
//! undelivered outbox rows, its open windows, its restore bookkeeping and the dedup
//! entries of ids it saw first. The new owner re-derives every undelivered row from
//! Kafka (it restores from the sink, whose first missing row is its position), so
//! nothing is lost by dropping them here — and nothing stale is left behind: were this
//! instance to own the partition again, it finds no position and restores the
//! partition from the sink as it then stands, never resuming from a state the other
//! owner has moved past. One write, so a crash leaves the partition either whole or
//! gone, never half-forgotten (a position without its dedup entries would let
//! duplicates through).
//!
//! Kept: fraud history (it belongs to no partition, only shapes scores, and expires by
//! TTL) and the sink's own bookkeeping (`sink/…`: a new claim replaces it).

use rocksdb::{IteratorMode, WriteBatch};

use super::StateStore;
use crate::cf::{CF_DEDUP, CF_META, CF_OUTBOX, CF_WINDOW};
use crate::keys::{self, meta, DedupEntry};
use crate::{StateError, Table};

/// How much of the forgotten partitions' state was dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub dedup_entries: u64,
    pub outbox_rows: u64,
    pub windows: u64,
}

impl StateStore {
    /// The partitions this state holds a position, sequences, outbox rows or windows
    /// for.
    pub fn partitions_held(&self) -> Result<Vec<i32>, StateError> {
        let mut held: Vec<i32> = self.next_offsets()?.into_keys().collect();
        held.extend(self.next_seqs()?.into_keys().map(|(_, p)| p));
        held.extend(self.outbox_depths()?.into_keys().map(|(_, p)| p));
        for (k, _) in self.windows()? {
            if let Some((p, _, _)) = keys::parse_window_key(&k) {
                held.push(p);
            }
        }
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    /// Drops everything held for `partitions`, in one atomic write.
    pub fn forget_partitions(&self, partitions: &[i32]) -> Result<Forgotten, StateError> {
        let mut out = Forgotten::default();
        if partitions.is_empty() {
            return Ok(out);
        }
        let mut wb = WriteBatch::default();
        let meta_cf = self.cf(CF_META)?;
        let depths = self.outbox_depths()?;
        for &p in partitions {
            for key in [
                meta::next_offset(p),
                meta::last_record(p),
                meta::max_event_time(p),
                meta::horizon(p),
            ] {
                wb.delete_cf(meta_cf, key);
            }
            for table in Table::ALL {
                wb.delete_cf(meta_cf, meta::next_seq(table, p));
                wb.delete_cf(meta_cf, meta::outbox_floor(table, p));
            }
            let mut landed = meta::LANDED_RECORD_PREFIX.to_vec();
            landed.extend_from_slice(&p.to_be_bytes());
            let mut landed_windows = meta::LANDED_WINDOW_PREFIX.to_vec();
            landed_windows.extend_from_slice(&p.to_be_bytes());
            for prefix in [landed, landed_windows] {
                self.scan_prefix(CF_META, &prefix, |k, _| {
                    wb.delete_cf(meta_cf, k);
                    Ok(())
                })?;
            }
            let window_cf = self.cf(CF_WINDOW)?;
            self.scan_prefix(CF_WINDOW, &p.to_be_bytes(), |k, _| {
                out.windows += 1;
                wb.delete_cf(window_cf, k);
                Ok(())
            })?;
            let outbox_cf = self.cf(CF_OUTBOX)?;
            for table in Table::ALL {
                out.outbox_rows += depths.get(&(table, p)).copied().unwrap_or(0);
                self.scan_prefix(CF_OUTBOX, &keys::outbox_prefix(table, p), |k, _| {
                    wb.delete_cf(outbox_cf, k);
                    Ok(())
                })?;
            }
        }
        let dedup_cf = self.cf(CF_DEDUP)?;
        for item in self.db.iterator_cf(dedup_cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if partitions.contains(&DedupEntry::decode(&v)?.partition) {
                out.dedup_entries += 1;
                wb.delete_cf(dedup_cf, k);
            }
        }
        out.dedup_entries += self.forget_dedup_pages(partitions, &mut wb)?;
        self.db
            .write_opt(wb, &self.write_options)
            .map_err(|e| self.rocks(e))?;
        self.dedup_pages_forgotten(partitions);
        super::resident::lock(&self.outbox_scan_from).forget(partitions);
        self.forget_resident(partitions);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StateBatch, StoreOptions};

    fn entry(partition: i32, offset: i64) -> DedupEntry {
        DedupEntry {
            event_time_micros: 1_000,
            content_hash: 7,
            partition,
            offset,
        }
    }

    /// Writes the same shape of state for partitions 0 and 1.
    fn two_partitions() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = StateBatch::new();
        for p in [0, 1] {
            for i in 0..10 {
                b.put_dedup(keys::dedup_key(&format!("tx-{p}-{i}")), &entry(p, i));
            }
            b.put_outbox(Table::Payments, p, 3, b"{}");
            b.set_next_seq(Table::Payments, p, 4);
            b.set_next_offset(p, 10);
            b.set_last_record(p, 9, 42);
            b.set_max_event_time(p, 5_000);
            b.set_partition_horizon(p, 4_000);
            b.put_window(keys::window_key(p, 60_000_000, "EUR"), b"{}");
            b.set_landed_record(p, 12, Table::Payments);
            b.set_landed_window(p, 60_000_000, "EUR");
        }
        b.put_fraud(b"card/x", vec![0; 8]);
        s.commit(b).unwrap();
        (dir, s)
    }

    #[test]
    fn forgetting_a_partition_drops_all_of_it_and_nothing_else() {
        let (_dir, s) = two_partitions();
        assert_eq!(s.partitions_held().unwrap(), vec![0, 1]);
        let before = s.live_dedup().unwrap();
        let gone = s.forget_partitions(&[1]).unwrap();
        assert_eq!(
            gone,
            Forgotten {
                dedup_entries: 10,
                outbox_rows: 1,
                windows: 1
            }
        );
        assert_eq!(s.partitions_held().unwrap(), vec![0]);
        assert_eq!(
            s.next_offsets()
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![0]
        );
        assert!(s.last_records().unwrap().keys().all(|&p| p == 0));
        assert!(s.max_event_times().unwrap().keys().all(|&p| p == 0));
        assert!(s.next_seqs().unwrap().keys().all(|&(_, p)| p == 0));
        assert!(s.outbox_depths().unwrap().keys().all(|&(_, p)| p == 0));
        let landed = s.landed_ahead().unwrap();
        assert_eq!(landed.records.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert!(landed.windows.iter().all(|w| w.0 == 0));
        let after = s.live_dedup().unwrap();
        assert_eq!(after.get(&0), before.get(&0), "partition 0 untouched");
        assert!(!after.contains_key(&1));
        assert!(
            s.get_fraud(b"card/x").unwrap().is_some(),
            "fraud history kept"
        );
        // Forgetting again finds nothing.
        assert_eq!(s.forget_partitions(&[1]).unwrap(), Forgotten::default());
    }
}
