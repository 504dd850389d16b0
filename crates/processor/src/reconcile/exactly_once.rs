//! `v_exactly_once`: every transaction id appears in `payments` at most once.
//!
//! Dedup's promise, stated on the output: however often a payment was sent, retried,
//! replayed or re-processed after a crash, one row. If two rows share an id, either the
//! dedup index forgot it too early or the relay delivered a row twice.

use std::collections::HashSet;

use super::check::{Check, CheckKind};
use super::ledger::Payment;

/// Rows in `payments` = distinct transaction ids among them.
pub fn check(payments: &[Payment]) -> Check {
    let distinct: HashSet<&str> = payments.iter().map(|p| p.transaction_id.as_str()).collect();
    judge(payments.len() as i64, distinct.len() as i64)
}

/// The check from the counts (the warehouse counts them in SQL).
pub fn judge(payment_rows: i64, distinct_ids: i64) -> Check {
    Check::equal(
        CheckKind::ExactlyOnce,
        "payments rows = distinct ids",
        distinct_ids,
        payment_rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ledger::test_payment as payment;

    #[test]
    fn distinct_ids_pass() {
        let c = check(&[payment("a", 0, 0), payment("b", 0, 1)]);
        assert!(c.pass, "{c:?}");
        assert_eq!(c.name(), "exactly_once: payments rows = distinct ids");
    }

    #[test]
    fn a_doubled_payment_fails() {
        let c = check(&[payment("a", 0, 0), payment("b", 0, 1), payment("a", 0, 0)]);
        assert!(!c.pass);
        assert_eq!((c.expected.as_str(), c.actual.as_str()), ("2", "3"));
    }
}
