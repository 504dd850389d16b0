//! Event-time watermarks.
//!
//! A partition's watermark is the max event time it has seen minus the allowed lateness.
//! It only moves forward (a max never decreases) and is checkpointed with the batch.
//! An event is late when its time is *strictly* before the watermark: an event exactly
//! at the watermark is on time.
//!
//! Decisions use the record's own partition watermark, not the minimum over partitions:
//! a partition's records then meet the same watermarks whatever the interleaving of
//! partitions in a poll, so re-reading a partition after a crash reproduces exactly the
//! same late/on-time decisions. The processor-wide watermark (the minimum over active
//! partitions, idle ones excluded after a timeout) is for monitoring and for the state
//! store's expiry horizon.

/// Watermark of a partition whose max event time is `max_event`, or `None` before its
/// first valid event (nothing is late then).
pub fn watermark(max_event: Option<i64>, lateness_micros: i64) -> Option<i64> {
    max_event.map(|m| m.saturating_sub(lateness_micros))
}

/// Whether an event at `event_time` is late under `watermark`.
pub fn is_late(event_time: i64, watermark: Option<i64>) -> bool {
    watermark.is_some_and(|wm| event_time < wm)
}

/// The new max event time after an on-time event.
pub fn advance(max_event: Option<i64>, event_time: i64) -> Option<i64> {
    Some(max_event.map_or(event_time, |m| m.max(event_time)))
}

/// The processor-wide watermark: the minimum over partitions that are not idle.
/// `partitions` yields (watermark, idle). If every partition is idle, the maximum of
/// their watermarks (nothing holds time back). `None` until some partition has one.
pub fn combined(partitions: impl IntoIterator<Item = (Option<i64>, bool)>) -> Option<i64> {
    let mut active_min: Option<i64> = None;
    let mut idle_max: Option<i64> = None;
    for (wm, idle) in partitions {
        let Some(wm) = wm else {
            if !idle {
                // An active partition with no data yet holds everything back.
                return None;
            }
            continue;
        };
        if idle {
            idle_max = Some(idle_max.map_or(wm, |m| m.max(wm)));
        } else {
            active_min = Some(active_min.map_or(wm, |m| m.min(wm)));
        }
    }
    active_min.or(idle_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: i64 = 300;

    #[test]
    fn nothing_is_late_before_the_first_event() {
        assert_eq!(watermark(None, L), None);
        assert!(!is_late(i64::MIN, None));
    }

    #[test]
    fn exactly_at_the_boundary_is_on_time() {
        let wm = watermark(Some(1_000), L);
        assert_eq!(wm, Some(700));
        assert!(!is_late(700, wm));
        assert!(is_late(699, wm));
    }

    #[test]
    fn out_of_order_within_lateness_is_on_time_and_does_not_move_the_max() {
        let max = advance(None, 1_000);
        let wm = watermark(max, L);
        assert!(!is_late(800, wm));
        assert_eq!(advance(max, 800), Some(1_000));
    }

    #[test]
    fn equal_timestamps_keep_the_watermark() {
        let max = advance(advance(None, 1_000), 1_000);
        assert_eq!(watermark(max, L), Some(700));
    }

    #[test]
    fn watermark_is_monotonic() {
        let mut max = None;
        let mut last = i64::MIN;
        for t in [5, 3, 9, 1, 9, 12, 2] {
            max = advance(max, t);
            let wm = watermark(max, L).unwrap();
            assert!(wm >= last);
            last = wm;
        }
    }

    #[test]
    fn combined_is_min_over_active_and_skips_idle_partitions() {
        assert_eq!(combined([(Some(10), false), (Some(5), false)]), Some(5));
        // An idle partition stops holding the watermark back.
        assert_eq!(combined([(Some(10), false), (Some(5), true)]), Some(10));
        // An active partition with no data holds everything back.
        assert_eq!(combined([(Some(10), false), (None, false)]), None);
        // All idle: the furthest one.
        assert_eq!(combined([(Some(10), true), (Some(5), true)]), Some(10));
        assert_eq!(combined([(None, true)]), None);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(watermark(Some(i64::MIN + 1), L), Some(i64::MIN));
    }
}
