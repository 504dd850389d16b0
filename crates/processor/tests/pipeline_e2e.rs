//! Simulator → tansu → processor → file sink; the output matches the manifest exactly.
#![cfg(feature = "integration")]

mod common;

use common::*;
use paydedup_testkit::Broker;

#[test]
fn output_matches_the_manifest() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = simulate(
        &broker,
        "payments",
        4,
        30_000,
        11,
        &["--late-rate", "0.01", "--malformed-rate", "0.02"],
        dir.path(),
    );
    let output = dir.path().join("out");
    process_to_end(&broker, "payments", &dir.path().join("state"), &output, &[]);
    assert_matches_manifest(&output, &manifest);

    // A second run over the same state finds nothing new and writes nothing twice.
    process_to_end(&broker, "payments", &dir.path().join("state"), &output, &[]);
    assert_matches_manifest(&output, &manifest);
}

#[test]
fn reconcile_passes_on_real_output_and_fails_naming_the_broken_check() {
    use paydedup_testkit::binary;
    use std::process::Command;

    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    simulate(&broker, "payments", 2, 5_000, 4, &[], dir.path());
    let output = dir.path().join("out");
    process_to_end(&broker, "payments", &dir.path().join("state"), &output, &[]);
    let manifest = dir.path().join("manifest-payments.json");
    let reconcile = || {
        Command::new(binary("paydedup-processor").unwrap())
            .args([
                "reconcile",
                "--output",
                &format!("file:{}", output.display()),
            ])
            .arg("--manifest")
            .arg(&manifest)
            .output()
            .unwrap()
    };
    let ok = reconcile();
    let table = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{table}");
    assert!(table.contains("PASS: all"), "{table}");

    // Insert a duplicate payment by hand: reconcile must fail and name the check.
    let path = output.join("payments.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    std::fs::write(&path, format!("{text}{first}\n")).unwrap();
    let bad = reconcile();
    let table = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success());
    let failing: Vec<&str> = table.lines().filter(|l| l.ends_with("FAIL")).collect();
    assert!(
        failing.iter().any(|l| l.starts_with("exactly_once")),
        "{table}"
    );
}
