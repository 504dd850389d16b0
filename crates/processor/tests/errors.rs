//! Operational errors: a clear message and a non-zero exit, never a panic or a hang.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::*;
use paydedup_testkit::{binary, Broker};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary("paydedup-processor").unwrap())
        .args(["run", "--brokers", "127.0.0.1:1", "--log-format", "text"])
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("cannot reach Kafka"),
        "{}",
        stderr_of(&out)
    );
    assert!(!stderr_of(&out).contains("panicked"));
}

#[test]
fn unknown_topic_locked_and_corrupt_state() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = processor_command(
        &broker,
        "no-such-topic",
        &dir.path().join("s1"),
        &dir.path().join("o"),
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no-such-topic"),
        "{}",
        stderr_of(&out)
    );

    simulate(&broker, "payments", 1, 100, 1, &[], dir.path());
    let state = dir.path().join("s2");
    let mut first = spawn_processor(&broker, "payments", &state, &dir.path().join("o2"), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = processor_command(&broker, "payments", &state, &dir.path().join("o3"), &[])
        .output()
        .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("locked"), "{}", stderr_of(&out));

    std::fs::write(state.join("CURRENT"), b"garbage\n").unwrap();
    let out = processor_command(&broker, "payments", &state, &dir.path().join("o4"), &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("state store") && stderr_of(&out).contains("is corrupt"),
        "{}",
        stderr_of(&out)
    );
    assert!(!stderr_of(&out).contains("panicked"));
}

#[test]
fn sigterm_finishes_the_batch_and_exits_zero() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(&broker, "payments", 2, 5_000, 2, &[], dir.path());
    let state = dir.path().join("state");
    let output = dir.path().join("out");
    let mut child = spawn_processor(&broker, "payments", &state, &output, &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "SIGTERM must exit 0, got {exit}");
    // Whatever was committed was delivered before exit: finishing the run is exact.
    process_to_end(&broker, "payments", &state, &output, &[]);
    assert_matches_manifest(&output, &manifest);
}

/// Issue 9, holes 2 and 9: a state directory is the state *of* one topic, under one set
/// of decision settings. Started against another topic, or with a setting that would
/// change decisions already delivered, the processor stops with a clear error instead
/// of reusing offsets, re-opening emitted windows or forgetting ids still alive.
#[test]
fn state_is_bound_to_its_topic_and_decision_settings() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    simulate(&broker, "payments", 2, 500, 3, &[], dir.path());
    simulate(&broker, "other", 2, 800, 4, &[], dir.path());
    let state = dir.path().join("state");
    process_to_end(&broker, "payments", &state, &dir.path().join("o1"), &[]);
    let run = |topic: &str, extra: &[&str], out: &str| {
        processor_command(&broker, topic, &state, &dir.path().join(out), extra)
            .arg("--exit-when-caught-up")
            .output()
            .unwrap()
    };
    // Another topic: the offsets checkpointed for `payments` mean nothing on `other`.
    let out = run("other", &[], "o2");
    assert!(!out.status.success(), "resumed on another topic");
    assert!(
        stderr_of(&out).contains("state of topic `payments`"),
        "{}",
        stderr_of(&out)
    );
    // Changed decision settings: each is refused by name.
    for (flag, value) in [
        ("--window-secs", "30"),
        ("--allowed-lateness-secs", "60"),
        ("--retention-secs", "7200"),
    ] {
        let out = run("payments", &[flag, value], "o3");
        assert!(!out.status.success(), "{flag} changed silently");
        assert!(
            stderr_of(&out).contains(flag),
            "{flag}: {}",
            stderr_of(&out)
        );
        assert!(!stderr_of(&out).contains("panicked"));
    }
    // The same settings and the same sink still resume (and find nothing new to do).
    // (Another, empty sink would be refused: the state saw its rows acknowledged.)
    let out = run("payments", &[], "o1");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// A mistyped instance count that leaves this instance owning nothing stops with a
/// clear error — and leaves the state alone: the state of partitions is dropped only
/// by an instance that owns others (a real hand-off), never by a start that fails.
#[test]
fn an_instance_that_owns_nothing_stops_and_keeps_its_state() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    simulate(&broker, "payments", 1, 200, 3, &[], dir.path());
    let (state, output) = (dir.path().join("state"), dir.path().join("out"));
    process_to_end(&broker, "payments", &state, &output, &[]);
    let positions = || {
        let out = std::process::Command::new(binary("paydedup-processor").unwrap())
            .args(["state", "--json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["next_offsets"].clone()
    };
    let before = positions();
    assert_eq!(before["0"], serde_json::json!(200), "{before}");
    let out = processor_command(
        &broker,
        "payments",
        &state,
        &output,
        &["--instance-index", "1", "--instance-count", "2"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("owns no partitions"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        positions(),
        before,
        "the failed start must not forget the state"
    );
}
