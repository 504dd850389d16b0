//! Scheduled mode: which part of a live output is complete and delivered.
//!
//! On a live pipeline the output is never finished: the newest records are still being
//! consumed, each table's rows are delivered on their own stream (so the newest offsets
//! of `payments` and `dedup_audit` differ for a moment), and the newest windows are
//! open and have no `payment_metrics` row yet. Checking everything there fails
//! falsely. A scheduled run checks only what is *settled*, decided per partition from
//! the rows themselves:
//!
//! - A record is settled when it reached Kafka before the bound ([`Bound::settled_before`],
//!   `now − --settle`). The one assumption: the pipeline delivers every record's row
//!   within `--settle` of its Kafka timestamp (the delivery objective; the lag and
//!   delivery alerts watch it). Kafka offsets are in append order, so every record
//!   *before* a settled one was appended earlier still and is delivered too.
//! - **Offsets.** Of the accepted rows (`payments`, `dedup_audit`) with a settled Kafka
//!   timestamp and an event time from [`Bound::since`], a partition's lowest and
//!   highest offset bound its checked range. Every record in between is checked, in
//!   all four record tables, whatever its own timestamps: the range is settled as a
//!   whole. It starts at the lowest offset present, not 0, so offsets that expired from
//!   Kafka or the tables before the range do not fail it; a gap inside it does.
//! - **Windows.** A window `[s, s + w)` of a partition closes in the commit of the
//!   first record whose event time reaches `s + w + lateness` (the processor's rule:
//!   watermark = max event time − lateness, closed when `s + w <= watermark`). If a
//!   settled accepted row of the partition has such an event time, the window was
//!   closed, and its `payment_metrics` row committed, no later than that row — so it
//!   is delivered, and so are its payments, which came before the close. Windows from
//!   `since` up to that point are checked; a partition that went quiet keeps its last
//!   windows open and they are simply not checked yet.
//!
//! Reading rows by offset while the tables are partitioned by event time needs event
//! time bounds that hold every row of the range ([`Scope::fetch_since`],
//! [`Scope::fetch_until`]): an accepted record is never older than its partition's
//! watermark, and the watermark only moves forward, so between two accepted records
//! of event times `a` and `b` every accepted record lies in `[a − lateness, b +
//! lateness]`. Late and invalid records live in unpartitioned tables and are read by
//! offset alone.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use chrono::{DateTime, SecondsFormat, Utc};

/// The processor's settings the rule depends on, in microseconds (from the same
/// configuration as `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: i64,
    pub lateness: i64,
    pub future_tolerance: i64,
}

/// Why a bound cannot be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    #[error("--lookback-secs must be positive")]
    NoLookback,
    #[error("--window-secs must be positive")]
    NoWindow,
    #[error("the settled bound minus the lookback is before the epoch")]
    BeforeEpoch,
}

/// The time bound of a scheduled run, microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Records whose Kafka timestamp is before this are settled.
    pub settled_before: i64,
    /// Event times from here on are checked: `settled_before − lookback`, down to a
    /// window boundary (a window is wholly in or wholly out).
    pub since: i64,
    pub timing: Timing,
}

impl Bound {
    pub fn new(settled_before: i64, lookback: i64, timing: Timing) -> Result<Bound, BoundError> {
        if lookback <= 0 {
            return Err(BoundError::NoLookback);
        }
        if timing.window <= 0 {
            return Err(BoundError::NoWindow);
        }
        // Window starts are floored like the processor's `window_start`; the SQL floors
        // with MOD, which agrees only from the epoch on.
        let since = floor(settled_before.saturating_sub(lookback), timing.window);
        if since < 0 {
            return Err(BoundError::BeforeEpoch);
        }
        Ok(Bound {
            settled_before,
            since,
            timing,
        })
    }

    /// An accepted row can be evidence only below this event time: a valid record's
    /// event time is at most its Kafka timestamp plus the future tolerance. Bounds the
    /// evidence query's partition filter from above.
    pub fn evidence_until(&self) -> i64 {
        self.settled_before
            .saturating_add(self.timing.future_tolerance)
    }

    /// Whether an accepted row (payment or repeat) is evidence.
    pub fn is_evidence(&self, event_time: i64, kafka_timestamp: Option<i64>) -> bool {
        event_time >= self.since && kafka_timestamp.is_some_and(|k| k < self.settled_before)
    }
}

/// `t` down to a multiple of `w` (floor, like the processor's window starts).
pub fn floor(t: i64, w: i64) -> i64 {
    t.div_euclid(w) * w
}

/// The settled accepted rows of one partition, summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_event_time: i64,
}

impl Evidence {
    /// Summarises accepted rows `(partition, offset, event_time, kafka_timestamp)`,
    /// keeping those that are evidence under `bound`.
    pub fn of_rows(
        bound: &Bound,
        rows: impl IntoIterator<Item = (i32, i64, i64, Option<i64>)>,
    ) -> BTreeMap<i32, Evidence> {
        let mut out: BTreeMap<i32, Evidence> = BTreeMap::new();
        for (p, offset, event_time, kafka) in rows {
            if !bound.is_evidence(event_time, kafka) {
                continue;
            }
            out.entry(p)
                .and_modify(|e| {
                    e.first_offset = e.first_offset.min(offset);
                    e.last_offset = e.last_offset.max(offset);
                    e.max_event_time = e.max_event_time.max(event_time);
                })
                .or_insert(Evidence {
                    first_offset: offset,
                    last_offset: offset,
                    max_event_time: event_time,
                });
        }
        out
    }
}

/// The checked part of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Every record at these offsets is checked.
    pub offsets: RangeInclusive<i64>,
    /// Windows starting in `[since, windows_until)` are checked (empty when
    /// `windows_until <= since`).
    pub windows_until: i64,
    /// The highest settled event time (the evidence); bounds the offsets' event times.
    pub max_event_time: i64,
}

/// The settled range of a partition from its evidence.
pub fn settle(bound: &Bound, e: &Evidence) -> Settled {
    let t = bound.timing;
    // Window s is closed once some record reached s + w + lateness; the checked window
    // starts are those with s + w <= max_event_time − lateness, i.e. s < the floor.
    let closed_until = floor(e.max_event_time.saturating_sub(t.lateness), t.window);
    Settled {
        offsets: e.first_offset..=e.last_offset,
        windows_until: closed_until.max(bound.since),
        max_event_time: e.max_event_time,
    }
}

/// A scheduled run's scope: the bound and every settled partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub bound: Bound,
    pub partitions: BTreeMap<i32, Settled>,
}

impl Scope {
    pub fn new(bound: Bound, evidence: &BTreeMap<i32, Evidence>) -> Scope {
        Scope {
            bound,
            partitions: evidence
                .iter()
                .map(|(p, e)| (*p, settle(&bound, e)))
                .collect(),
        }
    }

    /// Whether the record at (partition, offset) is checked.
    pub fn has_record(&self, p: i32, offset: i64) -> bool {
        self.partitions
            .get(&p)
            .is_some_and(|s| s.offsets.contains(&offset))
    }

    /// Whether the partition's window starting at `start` is checked.
    pub fn has_window(&self, p: i32, start: i64) -> bool {
        self.partitions
            .get(&p)
            .is_some_and(|s| start >= self.bound.since && start < s.windows_until)
    }

    /// Whether a payment at `event_time` falls in a checked window of its partition.
    pub fn has_window_of(&self, p: i32, event_time: i64) -> bool {
        self.has_window(p, floor(event_time, self.bound.timing.window))
    }

    /// No accepted row of a checked offset range has an earlier event time (the
    /// range's first evidence row is at `since` or later; what follows it is on time).
    pub fn fetch_since(&self) -> i64 {
        self.bound.since.saturating_sub(self.bound.timing.lateness)
    }

    /// No accepted row of a checked offset range has this event time or a later one:
    /// the range's last evidence row was on time, so nothing before it was more than
    /// the lateness ahead of it.
    pub fn fetch_until(&self) -> i64 {
        let max = self.partitions.values().map(|s| s.max_event_time).max();
        max.unwrap_or(self.bound.since)
            .saturating_add(self.bound.timing.lateness)
            .saturating_add(1)
    }

    /// The end of the latest checked window over all partitions.
    pub fn windows_until(&self) -> i64 {
        let max = self.partitions.values().map(|s| s.windows_until).max();
        max.unwrap_or(self.bound.since)
    }

    /// A line that says what this run checked, for the report.
    pub fn describe(&self) -> String {
        let t = self.bound.timing;
        format!(
            "scheduled: records in Kafka before {}, event times from {} (window {} s, lateness {} s); {} partitions settled",
            rfc3339(self.bound.settled_before),
            rfc3339(self.bound.since),
            t.window / 1_000_000,
            t.lateness / 1_000_000,
            self.partitions.len(),
        )
    }
}

/// Microseconds as RFC 3339 (UTC), for reports and SQL literals.
pub fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{micros} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_780_000_020 * S; // 2026-05-28T20:27:00Z, a minute boundary
    const TIMING: Timing = Timing {
        window: 60 * S,
        lateness: 300 * S,
        future_tolerance: 600 * S,
    };

    fn bound() -> Bound {
        // Settled: Kafka time before T0 + 3 h 30 s; lookback 2 h.
        Bound::new(T0 + 3 * 3600 * S + 30 * S, 2 * 3600 * S, TIMING).unwrap()
    }

    #[test]
    fn the_bound_starts_on_a_window_boundary_and_needs_a_lookback() {
        let b = bound();
        assert_eq!(b.since, T0 + 3600 * S, "floored to the minute");
        assert_eq!(b.evidence_until(), b.settled_before + 600 * S);
        assert_eq!(
            Bound::new(T0, 0, TIMING).unwrap_err(),
            BoundError::NoLookback
        );
        let no_window = Timing {
            window: 0,
            ..TIMING
        };
        assert_eq!(
            Bound::new(T0, S, no_window).unwrap_err(),
            BoundError::NoWindow
        );
        assert_eq!(
            Bound::new(S, 2 * S, TIMING).unwrap_err(),
            BoundError::BeforeEpoch
        );
    }

    #[test]
    fn only_accepted_rows_in_kafka_before_the_bound_and_in_the_lookback_are_evidence() {
        let b = bound();
        let inside = b.since + 10 * S;
        assert!(b.is_evidence(inside, Some(b.settled_before - 1)));
        // Reached Kafka at or after the bound: may still be in flight.
        assert!(!b.is_evidence(inside, Some(b.settled_before)));
        // No Kafka timestamp: nothing says when it arrived.
        assert!(!b.is_evidence(inside, None));
        // Event time before the lookback.
        assert!(!b.is_evidence(b.since - 1, Some(b.since)));
    }

    #[test]
    fn offsets_run_from_the_lowest_to_the_highest_settled_record() {
        let b = bound();
        let k = b.settled_before;
        let t = b.since + 3600 * S;
        let rows = [
            (0, 500, t, Some(k - 10)),
            // Partition 0 starts at 500 in range (earlier offsets expired or are
            // before the lookback), not at 0.
            (0, 507, t + 5 * S, Some(k - 1)),
            // In flight: its Kafka timestamp is after the bound.
            (0, 530, t + 9 * S, Some(k + 1)),
            // Before the lookback.
            (0, 20, b.since - S, Some(b.since - 2 * S)),
            (1, 7, t, Some(k - 1)),
        ];
        let ev = Evidence::of_rows(&b, rows);
        assert_eq!(
            ev[&0],
            Evidence {
                first_offset: 500,
                last_offset: 507,
                max_event_time: t + 5 * S
            }
        );
        let scope = Scope::new(b, &ev);
        assert!(scope.has_record(0, 500) && scope.has_record(0, 503) && scope.has_record(0, 507));
        assert!(!scope.has_record(0, 499) && !scope.has_record(0, 508));
        assert!(!scope.has_record(2, 0), "a partition with no evidence");
        assert_eq!(scope.partitions[&1].offsets, 7..=7);
    }

    #[test]
    fn a_window_is_checked_once_a_settled_record_closed_it() {
        let b = bound();
        let w = TIMING.window;
        // Some window in range; the settled max event time reaches exactly s + w +
        // lateness: s is closed, the next window is not.
        let s = b.since + 10 * w;
        let e = Evidence {
            first_offset: 0,
            last_offset: 9,
            max_event_time: s + w + TIMING.lateness,
        };
        let scope = Scope::new(b, &BTreeMap::from([(0, e)]));
        assert!(scope.has_window(0, s));
        assert!(!scope.has_window(0, s + w));
        assert!(scope.has_window(0, b.since));
        assert!(!scope.has_window(0, b.since - w), "before the lookback");
        assert!(scope.has_window_of(0, s + w - 1));
        assert!(!scope.has_window_of(0, s + w));
        // One microsecond short: the window is still open.
        let e = Evidence {
            max_event_time: s + w + TIMING.lateness - 1,
            ..e
        };
        let scope = Scope::new(b, &BTreeMap::from([(0, e)]));
        assert!(!scope.has_window(0, s));
        assert!(scope.has_window(0, s - w));
        // Nothing closed since the lookback began: no window, not a negative range.
        let e = Evidence {
            max_event_time: b.since,
            ..e
        };
        let scope = Scope::new(b, &BTreeMap::from([(0, e)]));
        assert_eq!(scope.partitions[&0].windows_until, b.since);
        assert!(!scope.has_window(0, b.since));
    }

    #[test]
    fn the_fetch_bounds_hold_every_accepted_row_of_the_ranges() {
        let b = bound();
        let e = |max| Evidence {
            first_offset: 0,
            last_offset: 1,
            max_event_time: max,
        };
        let scope = Scope::new(
            b,
            &BTreeMap::from([(0, e(b.since + 50 * S)), (1, e(b.since + 70 * S))]),
        );
        assert_eq!(scope.fetch_since(), b.since - TIMING.lateness);
        assert_eq!(scope.fetch_until(), b.since + 70 * S + TIMING.lateness + 1);
        let empty = Scope::new(b, &BTreeMap::new());
        assert_eq!(empty.windows_until(), b.since);
    }
}
