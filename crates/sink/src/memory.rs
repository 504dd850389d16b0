//! [`MemorySink`]: a test double that keeps rows in memory, following the [`Sink`]
//! contract exactly. For fast unit tests of the relay; real behaviour is covered by the
//! file and BigQuery sinks running the same conformance suite.

use std::collections::{BTreeMap, BTreeSet};

use crate::{identity, plan_append, AppendOutcome, RowIdentity, Sink, SinkError, StoredRow, Table};

#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    pub rows: BTreeMap<(Table, i32), Vec<Vec<u8>>>,
    /// Fail this many upcoming appends with a transient error (fault injection).
    pub fail_next: usize,
    /// Refuse every append that holds one of these sequences, naming the first of them
    /// (fault injection: a row the sink finds invalid).
    pub reject_seqs: BTreeSet<u64>,
    /// Refuse every append as fenced, naming this holder (fault injection: a later
    /// owner claimed the partition).
    pub fenced_by: Option<String>,
    /// Next expected sequence per (table, partition), when a skip moved it past the
    /// rows stored.
    pub next: BTreeMap<(Table, i32), u64>,
}

impl Sink for MemorySink {
    fn append(
        &mut self,
        table: Table,
        partition: i32,
        first_seq: u64,
        rows: &[Vec<u8>],
    ) -> Result<AppendOutcome, SinkError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(SinkError::Transient("injected failure".into()));
        }
        if let Some(holder) = &self.fenced_by {
            return Err(SinkError::Fenced {
                partition,
                holder: holder.clone(),
            });
        }
        let expected = self.next_expected(table, partition);
        let skip = plan_append(table, partition, expected, first_seq, rows.len())?;
        if let Some(index) =
            (skip..rows.len()).find(|i| self.reject_seqs.contains(&(first_seq + *i as u64)))
        {
            return Err(SinkError::Rejected {
                index,
                reason: format!("injected rejection of seq {}", first_seq + index as u64),
            });
        }
        self.rows
            .entry((table, partition))
            .or_default()
            .extend(rows[skip..].iter().cloned());
        self.next
            .insert((table, partition), first_seq + rows.len() as u64);
        Ok(AppendOutcome {
            written: rows.len() - skip,
            already_present: skip,
        })
    }

    fn next_seq(&mut self, table: Table, partition: i32) -> Result<Option<u64>, SinkError> {
        Ok(Some(self.next_expected(table, partition)))
    }

    fn skip(&mut self, table: Table, partition: i32, through_seq: u64) -> Result<(), SinkError> {
        self.next.insert((table, partition), through_seq + 1);
        Ok(())
    }

    fn stored_identities(
        &mut self,
        table: Table,
        partition: i32,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, RowIdentity)>, SinkError> {
        let mut out = Vec::new();
        for row in self.rows.get(&(table, partition)).into_iter().flatten() {
            let v: serde_json::Value = serde_json::from_slice(row)
                .map_err(|e| SinkError::Fatal(format!("stored row is not JSON: {e}")))?;
            out.extend(
                identity::of_stored_row(table, partition, from.., &v).filter(|(s, _)| *s < to),
            );
        }
        Ok(out)
    }

    fn scan_rows(
        &mut self,
        table: Table,
        partitions: &[i32],
        _columns: &[&str],
        each: &mut dyn FnMut(&StoredRow) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        for p in partitions {
            for row in self.rows.get(&(table, *p)).into_iter().flatten() {
                let map = serde_json::from_slice(row)
                    .map_err(|e| SinkError::Fatal(format!("stored row is not JSON: {e}")))?;
                each(&StoredRow(map))?;
            }
        }
        Ok(())
    }
}

impl MemorySink {
    fn next_expected(&self, table: Table, partition: i32) -> u64 {
        self.next
            .get(&(table, partition))
            .copied()
            .unwrap_or_else(|| {
                self.rows
                    .get(&(table, partition))
                    .map_or(0, |r| r.len() as u64)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::conformance::run(MemorySink::default);
    }
}
