//! Crash test: the processor is SIGKILLed at random moments (mid-batch, mid-relay) and
//! restarted; the final output equals an uninterrupted run's, with no gap or repeat in
//! any sequence.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::*;
use paydedup_testkit::Broker;
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_at_random_moments_changes_nothing() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(&broker, "payments", 3, 150_000, 5, &[], dir.path());
    // Small batches and relay appends: many commits, many moments to die in. The relay
    // appends a quarter of a batch at a time (each append a synced file write), so it
    // trails the commits and a kill often finds rows committed but undelivered (with
    // appends larger than a batch, a fast relay emptied the outbox between kills, and
    // too few kills landed mid-relay).
    let tuning = [
        "--batch-size",
        "200",
        "--relay-batch",
        "50",
        "--batch-timeout-ms",
        "20",
    ];

    let reference = reference_run(&broker, "payments", dir.path(), &tuning, &manifest);

    let crashed = dir.path().join("crashed");
    let state = dir.path().join("state-crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let total = manifest["totals"]["records"].as_i64().unwrap();
    let (mut mid_stream, mut mid_relay) = (0, 0);
    let mut consumed_before = 0;
    // Kill until the stream is consumed (at most 40 times), then once more after.
    for _ in 0..40 {
        let mut child = spawn_processor(&broker, "payments", &state, &crashed, &tuning);
        // Die after a random amount of progress, then a random moment more, not at a
        // random time after the start: how fast a run starts and consumes is the
        // machine's. On a slow one every kill 250-700 ms after the start found nothing
        // consumed; on a fast one 0-450 ms after the first commit let each run consume
        // a tenth of the stream, and fewer than ten kills landed mid-stream.
        let target = consumed_before + rng.gen_range(1..=total / 60);
        wait_for_progress_beyond(&state, target.min(total - 1));
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..60)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the processor exited on its own"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Where did it die? The state subcommand reads the directory read-only.
        let (consumed, outbox) = progress(&state);
        eprintln!("killed at {consumed}/{total} records consumed, {outbox} rows undelivered");
        consumed_before = consumed;
        if outbox > 0 {
            mid_relay += 1;
        }
        if consumed < total {
            mid_stream += 1;
        } else {
            break;
        }
    }
    assert!(
        mid_stream >= 10,
        "only {mid_stream} kills landed mid-stream"
    );
    assert!(
        mid_relay >= 3,
        "only {mid_relay} kills landed with rows undelivered"
    );
    process_to_end(&broker, "payments", &state, &crashed, &tuning);

    assert_matches_manifest(&crashed, &manifest);
    assert_eq!(
        canonical_output(&crashed, &CROSS_PARTITION_COLUMNS),
        canonical_output(&reference, &CROSS_PARTITION_COLUMNS),
        "the crashed run's output differs from the uninterrupted run's"
    );
}

/// The fraud log's fold dies for real (the fail point aborts the process, as a
/// SIGKILL there would): before RocksDB takes its file (the pages are the only copy of
/// their changes, which the restart must read back into memory), and between the
/// ingest and the pages' deletion (the restart reads them back and folds them again).
/// On one partition the fraud columns are a function of the record order too, so the
/// output, fraud scores and card counts included, must equal an uninterrupted run's:
/// a fraud change lost or an older one brought back would change a count.
#[test]
fn a_kill_in_a_fraud_log_fold_changes_no_score() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(&broker, "payments", 1, 30_000, 11, &[], dir.path());
    // 300 commits: several folds of 64 pages each.
    let tuning = ["--batch-size", "100", "--batch-timeout-ms", "20"];

    let reference = reference_run(&broker, "payments", dir.path(), &tuning, &manifest);
    let total = manifest["totals"]["records"].as_i64().unwrap();

    for point in ["fraud_log.before_ingest", "fraud_log.after_ingest"] {
        let crashed = dir.path().join(format!("crashed-{point}"));
        let state = dir.path().join(format!("state-{point}"));
        // Dies in the second fold: the first one's file is in `fraud` already.
        let out = processor_command(&broker, "payments", &state, &crashed, &tuning)
            .env("PAYDEDUP_FAIL_POINT", format!("{point}:2"))
            .args(["--exit-when-caught-up", "--drain"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("fail point {point} reached")),
            "the processor did not die at {point}: {stderr}"
        );
        let (consumed, _) = progress(&state);
        assert!(
            consumed < total,
            "{point}: died mid-stream ({consumed}/{total})"
        );
        process_to_end(&broker, "payments", &state, &crashed, &tuning);

        assert_matches_manifest(&crashed, &manifest);
        assert_eq!(
            canonical_output(&crashed, &[]),
            canonical_output(&reference, &[]),
            "the output after a kill at {point} differs from the uninterrupted run's"
        );
    }
}

/// Waits (up to a minute) until the state at `state` has consumed more than `before`
/// records: the running processor has made its first commit.
fn wait_for_progress_beyond(state: &std::path::Path, before: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress(state).0 <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the processor committed nothing in a minute"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
