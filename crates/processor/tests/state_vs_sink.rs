//! Issue 9, hole 1: a state that starts empty or stale while the sink already holds
//! rows. Sinks acknowledge a row below their position as present without storing it;
//! these tests hold that this never drops a row silently.
#![cfg(feature = "integration")]

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use paydedup_testkit::Broker;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn run(broker: &Broker, state: &Path, output: &Path) -> Output {
    processor_command(broker, "payments", state, output, &[])
        .args(["--exit-when-caught-up", "--drain"])
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_empty_or_foreign_state_never_has_rows_dropped_as_present() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start().unwrap();
    let out = d.join("out");
    let state = d.join("state");

    // Half the stream, then a copy of the state: the "older backup".
    simulate(&broker, "payments", 2, 3_000, 1, &[], d);
    assert!(run(&broker, &state, &out).status.success());
    copy_dir(&state, &d.join("backup"));
    simulate(&broker, "payments", 2, 3_000, 2, &[], d);
    assert!(run(&broker, &state, &out).status.success());
    let delivered = canonical_output(&out, &[]);

    // An empty state facing that sink, told not to restore: stops before sending
    // anything, naming the way out.
    let empty = processor_command(
        &broker,
        "payments",
        &d.join("empty"),
        &out,
        &["--no-auto-restore"],
    )
    .args(["--exit-when-caught-up", "--drain"])
    .output()
    .unwrap();
    assert!(
        !empty.status.success(),
        "an empty state started against a full sink"
    );
    assert!(
        stderr(&empty).contains("this state holds nothing for the partition")
            && stderr(&empty).contains("paydedup-processor restore"),
        "{}",
        stderr(&empty)
    );
    assert_eq!(canonical_output(&out, &[]), delivered, "the sink changed");

    // Without the flag it rebuilds itself from the sink, which already holds
    // everything: nothing to send, nothing sent.
    let restored = run(&broker, &d.join("empty-2"), &out);
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert_eq!(canonical_output(&out, &[]), delivered, "the sink changed");

    // The older backup replays the second half: the same rows, verified one by one
    // against the sink's, then acknowledged. Nothing added, nothing lost.
    let replay = run(&broker, &copied(d, "backup", "backup-1"), &out);
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(
        canonical_output(&out, &[]),
        delivered,
        "the replay changed the sink"
    );

    // The same backup against another log under the same topic name and partition
    // count (a topic deleted and re-created, longer than before): the record at the
    // last consumed offset is not the one the state consumed.
    let other = Broker::start().unwrap();
    simulate(&other, "payments", 2, 8_000, 3, &[], d);
    let recreated = run(&other, &copied(d, "backup", "backup-2"), &out);
    assert!(
        !recreated.status.success(),
        "a re-created topic was resumed"
    );
    assert!(
        stderr(&recreated).contains("holds another record at offset"),
        "{}",
        stderr(&recreated)
    );
    assert_eq!(canonical_output(&out, &[]), delivered, "the sink changed");

    // The backup on its own log, but facing a sink another stream filled: its replay
    // makes other rows at the sink's sequences, which must stop the relay, not be
    // acknowledged as present.
    let foreign_out = d.join("foreign-out");
    assert!(run(&other, &d.join("state-other"), &foreign_out)
        .status
        .success());
    let foreign_rows = canonical_output(&foreign_out, &[]);
    let foreign = run(&broker, &copied(d, "backup", "backup-3"), &foreign_out);
    assert!(
        !foreign.status.success(),
        "a replay into a foreign sink was acknowledged"
    );
    assert!(
        stderr(&foreign).contains("the replay made a different row than the sink holds"),
        "{}",
        stderr(&foreign)
    );
    assert_eq!(
        canonical_output(&foreign_out, &[]),
        foreign_rows,
        "the sink changed"
    );
}

fn copied(d: &Path, from: &str, to: &str) -> std::path::PathBuf {
    copy_dir(&d.join(from), &d.join(to));
    d.join(to)
}
