//! Closing windows: [`Pipeline::process`] closes those its watermarks have passed,
//! [`Pipeline::drain`] every window of the given partitions, [`Pipeline::advance_idle`]
//! those an idle partition's watermark passes when it follows the active ones. Both go through
//! [`Pipeline::close_window`]: one `payment_metrics` row, the window's state deleted.
//!
//! A window never reopens once closed. In a batch, a watermark that passed a window
//! makes every later event for it late (see [`super::window`]). A drain moves the
//! partition's max event time past the windows it closes, for the same effect.

use paydedup_state::keys::window_key;
use paydedup_state::{StateBatch, Table};

use super::window::{self, WindowAgg};
use super::{rows, watermark, Pipeline, WindowKey};

impl Pipeline {
    /// Closes the windows the watermarks have passed, in (partition, start, currency)
    /// order. Returns how many.
    pub(super) fn close_passed_windows(&mut self, batch: &mut StateBatch) -> u64 {
        let passed: Vec<WindowKey> = self
            .windows
            .keys()
            .filter(|(p, start, _)| {
                window::is_closed(*start, self.cfg.window_micros, self.watermark(*p))
            })
            .copied()
            .collect();
        let mut closed = 0;
        for key in passed {
            if self.close_window(key, batch) {
                closed += 1;
            }
        }
        closed
    }

    /// Closes one open window: its `payment_metrics` row, and its state deleted.
    /// Returns whether it was open. Shared by batches and [`Pipeline::drain`].
    fn close_window(&mut self, key: WindowKey, batch: &mut StateBatch) -> bool {
        let Some(agg) = self.windows.remove(&key) else {
            return false;
        };
        // A restored state's window whose row the sink already holds closes silently.
        if self.landed_windows.remove(&key) {
            batch.clear_landed_window(key.0, key.1, key.2);
        } else {
            self.emit_window(key, &agg, batch);
        }
        batch.delete_window(window_key(key.0, key.1, key.2));
        true
    }

    fn emit_window(&mut self, key: WindowKey, agg: &WindowAgg, batch: &mut StateBatch) {
        let (p, start, currency) = key;
        let seq = self.seq(Table::PaymentMetrics, p);
        let row = rows::payment_metrics(p, start, self.cfg.window_micros, currency, agg, seq);
        batch.put_outbox(Table::PaymentMetrics, p, seq, row);
    }

    /// Drains: closes every open window of the given partitions, as if their watermark
    /// had passed all of them (Flink's stop-with-drain). Used at the end of a bounded
    /// run so the metrics reconcile with the payments; later events for those windows
    /// would be late, because the partition's max event time moves past them.
    pub fn drain(&mut self, partitions: &[i32]) -> (StateBatch, u64) {
        let mut batch = StateBatch::new();
        let keys: Vec<WindowKey> = self
            .windows
            .keys()
            .filter(|(p, _, _)| partitions.contains(p))
            .copied()
            .collect();
        let mut closed = 0;
        let mut touched: Vec<i32> = Vec::new();
        for key in keys {
            if !self.close_window(key, &mut batch) {
                continue;
            }
            // Move the max event time past the window so nothing can reopen it.
            let end = key.1 + self.cfg.window_micros + self.cfg.allowed_lateness_micros;
            let progress = self.partitions.entry(key.0).or_default();
            progress.max_event_micros = watermark::advance(progress.max_event_micros, end);
            touched.push(key.0);
            closed += 1;
        }
        touched.sort_unstable();
        touched.dedup();
        self.flush_seqs(&mut batch);
        for p in touched {
            if let Some(m) = self.partitions[&p].max_event_micros {
                batch.set_max_event_time(p, m);
            }
        }
        (batch, closed)
    }

    /// Moves the watermark of each partition in `idle` up to `to` (the slowest active
    /// partition's), closing the windows it passes, like a batch would have.
    ///
    /// Event-time windows close by their partition's watermark, which only its own
    /// records move: a partition that went quiet would keep its open windows (and its
    /// dedup and fraud state) forever. The processor calls this for owned partitions
    /// that are caught up and received nothing for `--idle-timeout-secs` (Flink's
    /// idleness). The result is committed like any batch, so a restart resumes with
    /// the advanced watermark; a record that arrives later on such a partition with an
    /// older event time is late, as it would be on any partition behind the others.
    pub fn advance_idle(&mut self, idle: &[i32], to: i64) -> (StateBatch, u64) {
        let mut batch = StateBatch::new();
        let lateness = self.cfg.allowed_lateness_micros;
        for &p in idle {
            // A partition that never had an on-time record holds no window or state.
            if self.watermark(p).is_none_or(|wm| wm >= to) {
                continue;
            }
            let progress = self.partitions.entry(p).or_default();
            let max_event = to.saturating_add(lateness);
            progress.max_event_micros = watermark::advance(progress.max_event_micros, max_event);
            batch.set_max_event_time(p, max_event);
        }
        if batch.is_empty() {
            return (batch, 0);
        }
        let closed = self.close_passed_windows(&mut batch);
        self.flush_seqs(&mut batch);
        (batch, closed)
    }
}
