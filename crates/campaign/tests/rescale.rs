//! Rescale under load: 1 → 2 → 4 → 3 → 1 instances while the simulator produces, the
//! count changed where an operator changes it (the StatefulSet's replicas), a SIGKILL
//! inside every hand-off; then the independent verifier (manifests against the tables)
//! and the final dedup index against a replay of the topic. The run's folder is kept
//! when it fails.
#![cfg(feature = "integration")]

use paydedup_campaign::rescale::{run_rescale, RescaleConfig};

#[test]
fn rescaling_one_two_four_three_one_under_load_loses_doubles_and_invents_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("paydedup-rescale-")
        .tempdir()
        .unwrap();
    let cfg = RescaleConfig::short(11, dir.path());
    let report = match run_rescale(&cfg) {
        Ok(r) => r,
        Err(e) => {
            let kept = dir.keep();
            panic!(
                "the rescale run could not complete: {e:#}; its folder is kept at {}",
                kept.display()
            )
        }
    };
    eprintln!("{report}");
    if let Err(e) = report.check() {
        let kept = dir.keep();
        panic!(
            "{e}\n{report}\nthe run's folder is kept at {}",
            kept.display()
        );
    }
}
