//! [`MemorySink`]: a test double that keeps rows in memory, following the [`Sink`]
//! contract exactly. For fast unit tests of the relay; real behaviour is covered by the
//! file and BigQuery sinks running the same conformance suite.

use std::collections::BTreeMap;

use crate::{plan_append, AppendOutcome, Sink, SinkError, Table};

#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    pub rows: BTreeMap<(Table, i32), Vec<Vec<u8>>>,
    /// Fail this many upcoming appends with a transient error (fault injection).
    pub fail_next: usize,
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
        let stored = self.rows.entry((table, partition)).or_default();
        let skip = plan_append(table, partition, stored.len() as u64, first_seq, rows.len())?;
        stored.extend(rows[skip..].iter().cloned());
        Ok(AppendOutcome {
            written: rows.len() - skip,
            already_present: skip,
        })
    }

    fn next_seq(&mut self, table: Table, partition: i32) -> Result<Option<u64>, SinkError> {
        Ok(Some(
            self.rows
                .get(&(table, partition))
                .map_or(0, |r| r.len() as u64),
        ))
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
