//! Crash test: the processor is SIGKILLed at random moments (mid-batch, mid-relay) and
//! restarted; the final output equals an uninterrupted run's, with no gap or repeat in
//! any sequence.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::*;
use paydedup_testkit::Broker;
use rand::{Rng, SeedableRng};

/// Fraud columns depend on the order in which *different* partitions' records reach the
/// processor (card state spans partitions), which no two runs share; every other column
/// is a function of each partition's own record order and must be identical.
const CROSS_PARTITION_COLUMNS: [&str; 6] = [
    "fraud_score",
    "fraud_flagged",
    "fraud_reasons",
    "card_count_10m",
    "card_count_1h",
    "flagged_count",
];

#[test]
fn sigkill_at_random_moments_changes_nothing() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(&broker, "payments", 3, 40_000, 5, &[], dir.path());
    // Small batches and relay appends: many commits, many moments to die in.
    let tuning = ["--batch-size", "500", "--relay-batch", "700", "--batch-timeout-ms", "20"];

    let reference = dir.path().join("reference");
    process_to_end(&broker, "payments", &dir.path().join("state-ref"), &reference, &tuning);
    assert_matches_manifest(&reference, &manifest);

    let crashed = dir.path().join("crashed");
    let state = dir.path().join("state-crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = spawn_processor(&broker, "payments", &state, &crashed, &tuning);
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..1200)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 10, "only {kills} kills landed while the processor ran");
    process_to_end(&broker, "payments", &state, &crashed, &tuning);

    assert_matches_manifest(&crashed, &manifest);
    assert_eq!(
        canonical_output(&crashed, &CROSS_PARTITION_COLUMNS),
        canonical_output(&reference, &CROSS_PARTITION_COLUMNS),
        "the crashed run's output differs from the uninterrupted run's"
    );
}
