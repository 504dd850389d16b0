//! The behaviour every [`Sink`] must have. Call [`run`] from a sink's tests with a
//! factory that gives a fresh, empty sink.

use crate::{Sink, SinkError, Table};

fn rows(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|s| format!("{{\"source_partition\":0,\"outbox_seq\":{s}}}").into_bytes())
        .collect()
}

/// Panics (as a test failure) on the first broken rule.
pub fn run<S: Sink>(mut fresh: impl FnMut() -> S) {
    // Appends in order are stored.
    let mut s = fresh();
    let out = s.append(Table::Payments, 0, 0, &rows(0..3)).unwrap();
    assert_eq!((out.written, out.already_present), (3, 0));
    assert_eq!(s.next_seq(Table::Payments, 0).unwrap(), Some(3));

    // A full resend is acknowledged and stores nothing.
    let out = s.append(Table::Payments, 0, 0, &rows(0..3)).unwrap();
    assert_eq!((out.written, out.already_present), (0, 3));

    // A partial overlap stores only the new tail.
    let out = s.append(Table::Payments, 0, 2, &rows(2..5)).unwrap();
    assert_eq!((out.written, out.already_present), (2, 1));
    assert_eq!(s.next_seq(Table::Payments, 0).unwrap(), Some(5));

    // A gap is refused.
    match s.append(Table::Payments, 0, 7, &rows(7..8)) {
        Err(SinkError::Gap {
            expected: 5,
            got: 7,
            ..
        }) => {}
        other => panic!("expected a gap error, got {other:?}"),
    }

    // Partitions and tables are independent sequences.
    let out = s.append(Table::Payments, 1, 0, &rows(0..1)).unwrap();
    assert_eq!(out.written, 1);
    let out = s.append(Table::DedupAudit, 0, 0, &rows(0..2)).unwrap();
    assert_eq!(out.written, 2);
    assert_eq!(s.next_seq(Table::Payments, 0).unwrap(), Some(5));
    assert_eq!(s.next_seq(Table::LateEvents, 0).unwrap().unwrap_or(0), 0);
}
