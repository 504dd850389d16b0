//! Replaying past a restored state's position.
//!
//! `restore` rebuilds a state from the rows the sink holds, as of the first offset of
//! each partition that has no row in any table (its *position*). The sink may hold rows
//! for records beyond it (the relay delivers each table on its own): those records are
//! read again and go through the pipeline like any other — so the dedup index, windows
//! and watermark evolve exactly as they did the first time — but their rows are not
//! sent again.
//!
//! If the replay puts a landed record in another table than the sink holds it in, the
//! record stays where it is (it is in the warehouse once) and the disagreement is
//! counted and logged: the restored state decided differently than the lost one.

use paydedup_state::{StateBatch, Table};

use super::{BatchStats, InputRecord, Pipeline};

impl Pipeline {
    /// Whether the sink already holds `r`'s row (and in which table); clears the mark.
    pub(super) fn take_landed(
        &mut self,
        r: &InputRecord<'_>,
        batch: &mut StateBatch,
    ) -> Option<Table> {
        let marks = self.landed.get_mut(&r.partition)?;
        // Marks below the record were skipped over (cannot happen in offset order, but
        // must not linger): drop them with the one taken.
        let below: Vec<i64> = marks.range(..r.offset).map(|(o, _)| *o).collect();
        for o in below {
            marks.remove(&o);
            batch.clear_landed_record(r.partition, o);
        }
        let held = marks.remove(&r.offset);
        if held.is_some() {
            batch.clear_landed_record(r.partition, r.offset);
        }
        if marks.is_empty() {
            self.landed.remove(&r.partition);
        }
        held
    }

    pub(super) fn check_landed(
        &self,
        r: &InputRecord<'_>,
        decided: Table,
        held: Table,
        stats: &mut BatchStats,
    ) {
        if decided != held {
            stats.landed_disagreements += 1;
            tracing::warn!(
                partition = r.partition,
                offset = r.offset,
                decided = %decided,
                held = %held,
                "The restored state decided a record the sink already holds differently; the sink's row stands."
            );
        }
    }
}
