//! The independent verifier against the real BigQuery emulator: exact tables pass, and
//! a doubled, an invented and a lost record are each counted as such. Without this,
//! a verifier that always said "exact" would make every campaign pass.
#![cfg(feature = "integration")]

use paydedup_campaign::verify::{verify, Truth};
use paydedup_campaign::warehouse::Warehouse;
use paydedup_testkit::Emulator;

/// Only the columns the verifier reads.
const TABLES: [&str; 5] = [
    "CREATE TABLE `${dataset}.payments` (transaction_id STRING, currency STRING, amount_minor INT64, source_partition INT64, source_offset INT64, outbox_seq INT64)",
    "CREATE TABLE `${dataset}.dedup_audit` (kind STRING, source_partition INT64, source_offset INT64, outbox_seq INT64)",
    "CREATE TABLE `${dataset}.late_events` (key_known BOOL, source_partition INT64, source_offset INT64, outbox_seq INT64)",
    "CREATE TABLE `${dataset}.processing_errors` (error_code STRING, source_partition INT64, source_offset INT64, outbox_seq INT64)",
    "CREATE TABLE `${dataset}.payment_metrics` (currency STRING, payment_count INT64, amount_minor_sum INT64, source_partition INT64, outbox_seq INT64)",
];

/// Four records on partition 0: two payments, a duplicate, a malformed record.
fn truth(records: i128) -> Truth {
    let mut t = Truth {
        records_per_partition: vec![records],
        unique: 2,
        duplicate: 1,
        ..Truth::default()
    };
    t.malformed_by_code.insert("malformed_json".into(), 1);
    t.by_currency.insert("USD".into(), (2, 300));
    t
}

#[test]
fn the_verifier_counts_lost_doubled_and_invented_records() {
    let emu = Emulator::start().unwrap();
    let wh = Warehouse {
        rest_url: emu.rest_url(),
        project: emu.project.clone(),
        dataset: "verifier".into(),
    };
    wh.create_dataset().unwrap();
    for ddl in TABLES {
        wh.query(ddl).unwrap();
    }
    for sql in [
        "INSERT INTO `${dataset}.payments` VALUES ('a', 'USD', 100, 0, 0, 0), ('b', 'USD', 200, 0, 1, 1)",
        "INSERT INTO `${dataset}.dedup_audit` VALUES ('duplicate', 0, 2, 0)",
        "INSERT INTO `${dataset}.processing_errors` VALUES ('malformed_json', 0, 3, 0)",
        "INSERT INTO `${dataset}.payment_metrics` VALUES ('USD', 2, 300, 0, 0)",
    ] {
        wh.query(sql).unwrap();
    }
    let exact = verify(&wh, &truth(4)).unwrap();
    assert!(exact.exact(), "{exact:?}");

    // One more record was produced than landed: lost.
    let lost = verify(&wh, &truth(5)).unwrap();
    assert_eq!((lost.lost, lost.doubled, lost.invented), (1, 0, 0));

    // Offset 1 landed twice (as a duplicate audit row too), offset 9 was never produced.
    wh.query(
        "INSERT INTO `${dataset}.dedup_audit` VALUES ('duplicate', 0, 1, 1), ('conflict', 0, 9, 2)",
    )
    .unwrap();
    let bad = verify(&wh, &truth(4)).unwrap();
    assert_eq!((bad.lost, bad.doubled, bad.invented), (0, 1, 1), "{bad:?}");
    assert!(
        bad.mismatches.iter().any(|m| m.contains("duplicates")),
        "{:?}",
        bad.mismatches
    );
}
