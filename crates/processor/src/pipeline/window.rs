//! Event-time tumbling windows (1 minute) per partition and currency.
//!
//! A window `[start, start + size)` of a partition closes when that partition's
//! watermark reaches its end. An on-time event always has `event_time >= watermark`, so
//! it can only land in a window that is still open; events for a closed window are late
//! by construction. Closed windows are emitted to `payment_metrics` in (start, currency)
//! order and their state is deleted.

use serde::{Deserialize, Serialize};

/// Aggregates of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAgg {
    pub payment_count: u64,
    /// i128: sums of i64 amounts never overflow.
    pub amount_minor_sum: i128,
    pub duplicate_count: u64,
    pub conflict_count: u64,
    pub flagged_count: u64,
}

impl WindowAgg {
    /// Counts a unique payment of `amount_minor`, flagged or not by fraud scoring.
    pub fn add_payment(&mut self, amount_minor: i64, flagged: bool) {
        self.payment_count += 1;
        self.amount_minor_sum += i128::from(amount_minor);
        self.flagged_count += u64::from(flagged);
    }

    /// The stored value of an open window (JSON; [`super::Pipeline::load`] reads it).
    pub fn encode(&self) -> Vec<u8> {
        // Only integers: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Start of the window containing `t` (floor, also for negative times).
pub fn window_start(t: i64, size: i64) -> i64 {
    t.div_euclid(size) * size
}

/// Whether the window starting at `start` is closed under `watermark`.
pub fn is_closed(start: i64, size: i64, watermark: Option<i64>) -> bool {
    watermark.is_some_and(|wm| start.saturating_add(size) <= wm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn start_is_the_floor() {
        assert_eq!(window_start(0, MIN), 0);
        assert_eq!(window_start(MIN - 1, MIN), 0);
        assert_eq!(window_start(MIN, MIN), MIN);
        assert_eq!(window_start(-1, MIN), -MIN);
    }

    #[test]
    fn closes_when_the_watermark_reaches_the_end() {
        assert!(!is_closed(0, MIN, None));
        assert!(!is_closed(0, MIN, Some(MIN - 1)));
        assert!(is_closed(0, MIN, Some(MIN)));
    }

    #[test]
    fn an_on_time_event_never_lands_in_a_closed_window() {
        for wm in [0, 59_999_999, 60_000_000, 123_456_789] {
            for t in wm..wm + 3 {
                assert!(!is_closed(window_start(t, MIN), MIN, Some(wm)));
            }
        }
    }
}
