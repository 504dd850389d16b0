//! `v_amount_reconciliation`: the aggregates agree with the rows they aggregate.
//!
//! `payment_metrics` is computed incrementally (one row per closed partition, window
//! and currency); `payments` holds the rows themselves. Re-aggregating the payments
//! into the same windows must give the same count and sum for every window, or a
//! payment was counted in the wrong window, twice, or not at all. Windows that saw only
//! duplicates have a metrics row with zero payments and no payments row: they are
//! left out.

use std::collections::BTreeMap;

use super::check::{Check, CheckKind};
use super::ledger::{Metrics, Payment};

/// (partition, window start micros, currency) → (payment count, amount sum).
type Windows = BTreeMap<(i32, i64, String), (u64, i128)>;

/// Windows whose payments and metrics disagree; expected none. `window_secs > 0`.
pub fn check(payments: &[Payment], metrics: &[Metrics], window_secs: i64) -> Check {
    let from_payments = payment_windows(payments, window_secs);
    let from_metrics = metric_windows(metrics);
    let differ = from_payments
        .iter()
        .filter(|(k, v)| from_metrics.get(*k) != Some(*v))
        .count();
    let only_metrics = from_metrics
        .keys()
        .filter(|k| !from_payments.contains_key(*k))
        .count();
    Check::equal(
        CheckKind::AmountReconciliation,
        "windows where payments sum != metrics sum",
        0,
        differ + only_metrics,
    )
}

/// The windows, re-aggregated from the payment rows.
fn payment_windows(payments: &[Payment], window_secs: i64) -> Windows {
    let window = window_secs * 1_000_000;
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
        let c = check(&payments, &closed, 60);
        assert!(c.pass, "{c:?}");
        assert_eq!(
            c.name(),
            "amounts: windows where payments sum != metrics sum"
        );
    }

    #[test]
    fn a_window_whose_sum_differs_fails() {
        let payments = [paid("a", 1, 100), paid("b", MIN, 7)];
        let c = check(&payments, &[metrics(0, 1, 101), metrics(MIN, 1, 7)], 60);
        assert!(!c.pass);
        assert_eq!(c.actual, "1");
    }

    #[test]
    fn a_payment_in_the_wrong_window_or_a_missing_window_fails() {
        // The payment at MIN belongs to the second window, not the first.
        let c = check(&[paid("a", MIN, 7)], &[metrics(0, 1, 7)], 60);
        assert_eq!(c.actual, "2");
        let c = check(&[], &[metrics(0, 1, 7)], 60);
        assert_eq!(c.actual, "1");
    }
}
