//! Two processors configured to own one partition never both deliver it: the second
//! is fenced at start. Ownership then moves between differently sized instance sets
//! through the warehouse (a processor with an empty state for partitions the warehouse
//! holds restores them), and the output stays exact.
#![cfg(feature = "integration")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use paydedup_testkit::Broker;

#[test]
fn a_second_owner_is_fenced_and_partitions_move_between_instances_exactly() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let manifest = simulate(&broker, "payments", 4, 40_000, 12, &[], d);
    let out = d.join("out");
    let tuning = ["--batch-size", "200", "--relay-batch", "300"];

    // A owns every partition (instance 0 of 1) and is delivering.
    let mut a = spawn_processor(&broker, "payments", &d.join("state-a"), &out, &tuning);
    let started = Instant::now();
    while progress(&d.join("state-a")).0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // B is configured to own partitions 1 and 3 as well: fenced, exit 1, nothing sent.
    let mut b_flags = tuning.to_vec();
    b_flags.extend(["--instance-index", "1", "--instance-count", "2"]);
    let b = processor_command(&broker, "payments", &d.join("state-b"), &out, &b_flags)
        .args(["--exit-when-caught-up", "--drain"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(!b.status.success(), "a second owner started: {err}");
    assert!(
        err.contains("partition 1 is delivered by another processor"),
        "{err}"
    );
    assert!(a.try_wait().unwrap().is_none(), "A stopped");

    // A dies; B takes partitions 1 and 3 over (restoring them from the warehouse) and
    // delivers them to the end; then A comes back for all four, behind the warehouse
    // on 1 and 3 (its replay there is checked row by row), and finishes.
    a.kill().unwrap();
    a.wait().unwrap();
    process_to_end(&broker, "payments", &d.join("state-b"), &out, &b_flags);
    process_to_end(&broker, "payments", &d.join("state-a"), &out, &tuning);

    assert_matches_manifest(&out, &manifest);
}
