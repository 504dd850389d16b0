//! `v_amount_reconciliation`: the aggregates agree with the rows they aggregate.
//!
//! `payment_metrics` is computed incrementally (one row per closed partition, window
//! and currency); `payments` holds the rows themselves. Re-aggregating the payments
//! into the same windows must give the same count and sum for every window, or a
//! payment was counted in the wrong window, twice, or not at all. Windows that saw only
//! duplicates have a metrics row with zero payments and no payments row: they are
//! left out.
//!
//! Re-aggregating needs the processor's window size. It comes from the processor's own
//! configuration (`--window-secs`, `PAYDEDUP_WINDOW_SECS`, the config file), and
//! [`same_window`] refuses to judge when the rows were closed with another size: a
//! wrong size would fail every window and say nothing about the output.

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};
use super::ledger::{Metrics, Payment};

/// (partition, window start micros, currency) → (payment count, amount sum).
type Windows = BTreeMap<(i32, i64, String), (u64, i128)>;

/// The configured window size is not the one `payment_metrics` was closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment_metrics holds windows of {} s but the configuration says {} s (--window-secs): reconcile with the processor's own configuration", secs(*found), secs(*configured))]
pub struct WindowMismatch {
    pub configured: i64,
    pub found: i64,
}

fn secs(micros: i64) -> String {
    if micros % 1_000_000 == 0 {
        (micros / 1_000_000).to_string()
    } else {
        format!("{:.6}", micros as f64 / 1e6)
    }
}

/// Every size in `found` (window_end − window_start of metrics rows, microseconds) is
/// the configured one.
pub fn same_window(
    configured: i64,
    found: impl IntoIterator<Item = i64>,
) -> Result<(), WindowMismatch> {
    match found.into_iter().find(|f| *f != configured) {
        Some(found) => Err(WindowMismatch { configured, found }),
        None => Ok(()),
    }
}

/// Windows whose payments and metrics disagree; expected none. `window` (microseconds)
/// is positive.
pub fn check(payments: &[Payment], metrics: &[Metrics], window: i64) -> Check {
    let (_, differ) = compare(payments, metrics, window);
    judge(differ)
}

/// (aggregates compared, aggregates that differ): one per (partition, window, currency)
/// found on either side.
pub fn compare(payments: &[Payment], metrics: &[Metrics], window: i64) -> (u64, u64) {
    let from_payments = payment_windows(payments, window);
    let from_metrics = metric_windows(metrics);
    let differ = from_payments
        .iter()
        .filter(|(k, v)| from_metrics.get(*k) != Some(*v))
        .count();
    let only_metrics = from_metrics
        .keys()
        .filter(|k| !from_payments.contains_key(*k))
        .count();
    let compared = from_payments.len() + only_metrics;
    (compared as u64, (differ + only_metrics) as u64)
}

/// The check, from the number of aggregates that differ (the warehouse counts them in
/// SQL).
pub fn judge(differ: u64) -> Check {
    Check::equal(
        CheckKind::AmountReconciliation,
        "windows where payments sum != metrics sum",
        0,
        differ,
    )
}

/// The windows, re-aggregated from the payment rows.
fn payment_windows(payments: &[Payment], window: i64) -> Windows {
    let mut out = Windows::new();
    for r in payments {
        let start = r.event_time.div_euclid(window) * window;
        let e = out
            .entry((r.source_partition, start, r.currency.clone()))
            .or_default();
        e.0 += 1;
        e.1 += i128::from(r.amount_minor);
    }
    out
}

/// The windows as the processor aggregated them, without duplicate-only windows.
fn metric_windows(metrics: &[Metrics]) -> Windows {
    let mut out = Windows::new();
    for r in metrics {
        let e = out
            .entry((r.source_partition, r.window_start, r.currency.clone()))
            .or_default();
        e.0 += r.payment_count;
        e.1 += i128::from(r.amount_minor_sum);
    }
    out.retain(|_, v| v.0 != 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ledger::{test_metrics as metrics, test_payment as payment};

    const MIN: i64 = 60_000_000;

    fn paid(id: &str, time: i64, amount: i64) -> Payment {
        Payment {
            event_time: time,
            amount_minor: amount,
            ..payment(id, 0, 0)
        }
    }

    #[test]
    fn equal_sums_per_window_pass() {
        let payments = [paid("a", 1, 100), paid("b", MIN - 1, 50), paid("c", MIN, 7)];
        let closed = [
            metrics(0, 2, 150),
            metrics(MIN, 1, 7),
            // Only duplicates in this window: no payment, zero count.
            metrics(5 * MIN, 0, 0),
        ];
        let c = check(&payments, &closed, MIN);
        assert!(c.pass, "{c:?}");
        assert_eq!(
            c.name(),
            "amounts: windows where payments sum != metrics sum"
        );
    }

    #[test]
    fn a_window_whose_sum_differs_fails() {
        let payments = [paid("a", 1, 100), paid("b", MIN, 7)];
        let c = check(&payments, &[metrics(0, 1, 101), metrics(MIN, 1, 7)], MIN);
        assert!(!c.pass);
        assert_eq!(c.actual, "1");
    }

    #[test]
    fn a_payment_in_the_wrong_window_or_a_missing_window_fails() {
        // The payment at MIN belongs to the second window, not the first.
        let c = check(&[paid("a", MIN, 7)], &[metrics(0, 1, 7)], MIN);
        assert_eq!(c.actual, "2");
        let c = check(&[], &[metrics(0, 1, 7)], MIN);
        assert_eq!(c.actual, "1");
    }

    #[test]
    fn another_window_size_is_refused_not_judged() {
        assert_eq!(same_window(MIN, [MIN, MIN]), Ok(()));
        assert_eq!(same_window(MIN, []), Ok(()));
        let e = same_window(MIN, [MIN, 5_000_000]).unwrap_err();
        assert_eq!(
            e,
            WindowMismatch {
                configured: MIN,
                found: 5_000_000
            }
        );
        assert!(e.to_string().contains("windows of 5 s"), "{e}");
        assert!(e.to_string().contains("says 60 s"), "{e}");
    }
}
