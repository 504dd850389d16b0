//! A lost volume: the processor is SIGKILLed mid-stream and its state directory
//! deleted, again and again; each restart rebuilds the state from the sink (`restore`)
//! and goes on. The final output equals an uninterrupted run's, each row once.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::*;
use paydedup_testkit::{free_port, Broker};
use rand::{Rng, SeedableRng};

/// Columns a restore may change: fraud history is rebuilt in event-time order (and is
/// cross-partition anyway), and rows of records whose rows were lost with the state
/// are sent again under new sequences.
const VARYING: [&str; 7] = [
    CROSS_PARTITION_COLUMNS[0],
    CROSS_PARTITION_COLUMNS[1],
    CROSS_PARTITION_COLUMNS[2],
    CROSS_PARTITION_COLUMNS[3],
    CROSS_PARTITION_COLUMNS[4],
    CROSS_PARTITION_COLUMNS[5],
    "outbox_seq",
];

/// Every table's rows without the varying columns, as sorted JSON text.
fn contents(output: &std::path::Path) -> Vec<(String, Vec<String>)> {
    canonical_output(output, &[])
        .into_iter()
        .map(|(table, per)| {
            let mut rows: Vec<String> = per
                .into_values()
                .flatten()
                .map(|mut r| {
                    if let Some(o) = r.as_object_mut() {
                        for c in VARYING {
                            o.remove(c);
                        }
                    }
                    r.to_string()
                })
                .collect();
            rows.sort();
            (table, rows)
        })
        .collect()
}

/// Checks each (table, partition)'s sequences are 0..n with none twice.
fn assert_dense(output: &std::path::Path) {
    for (table, per) in canonical_output(output, &[]) {
        for (p, rows) in per {
            let seqs: Vec<u64> = rows
                .iter()
                .map(|r| r["outbox_seq"].as_u64().unwrap())
                .collect();
            let want: Vec<u64> = (0..seqs.len() as u64).collect();
            assert_eq!(seqs, want, "{table} partition {p}: sequences not dense");
        }
    }
}

#[test]
fn a_lost_volume_is_restored_from_the_sink_and_the_output_stays_exact() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(&broker, "payments", 3, 120_000, 8, &[], dir.path());
    // Small relay appends and a slow relay batch: rows wait in the outbox, so a lost
    // state loses undelivered rows (their records must be read again).
    let tuning = [
        "--batch-size",
        "200",
        "--relay-batch",
        "150",
        "--batch-timeout-ms",
        "20",
    ];
    let reference = reference_run(&broker, "payments", dir.path(), &tuning, &manifest);

    let out = dir.path().join("restored");
    let state = dir.path().join("state");
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let total = manifest["totals"]["records"].as_i64().unwrap();
    let (mut lost, mut lost_with_undelivered) = (0, 0);
    for _ in 0..60 {
        // Kills land after start-up (which includes the restore), mid-stream.
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let mut run = tuning.to_vec();
        run.extend(["--metrics-addr", addr.as_str()]);
        let mut child = spawn_processor(&broker, "payments", &state, &out, &run);
        let started = std::time::Instant::now();
        while http_get(&addr, "/readyz").as_deref() != Some("ready\n") {
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The scenario needs kills with rows still in the outbox. Whether a random
        // instant finds some depends on how far the relay lags, so once they are
        // wanted, the kill waits (up to a few seconds) for the depth gauge to show some.
        let want_undelivered = lost >= 3 && lost_with_undelivered < 2;
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
        let waiting = std::time::Instant::now();
        while want_undelivered
            && metric(&addr, "paydedup_outbox_depth_rows").unwrap_or(0.0) < 1.0
            && waiting.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the processor exited on its own"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let (consumed, undelivered) = progress(&state);
        if consumed >= total {
            break;
        }
        // Every other kill the volume is lost with it (always, once undelivered rows
        // are still missing from the plan).
        if rng.gen_bool(0.5) || (want_undelivered && undelivered > 0) {
            std::fs::remove_dir_all(&state).unwrap();
            lost += 1;
            lost_with_undelivered += u32::from(undelivered > 0);
            eprintln!(
                "lost the state at {consumed}/{total} consumed, {undelivered} rows undelivered"
            );
        }
        if lost >= 3 && lost_with_undelivered >= 2 && rng.gen_bool(0.3) {
            break;
        }
    }
    assert!(lost >= 3, "only {lost} volumes lost mid-stream");
    assert!(
        lost_with_undelivered >= 2,
        "only {lost_with_undelivered} lost with rows undelivered"
    );
    // And once more at the very end.
    std::fs::remove_dir_all(&state).ok();
    process_to_end(&broker, "payments", &state, &out, &tuning);

    assert_matches_manifest(&out, &manifest);
    assert_dense(&out);
    assert!(
        contents(&out) == contents(&reference),
        "the restored runs' output differs from the uninterrupted run's"
    );
}
