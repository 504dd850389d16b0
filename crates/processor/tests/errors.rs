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
