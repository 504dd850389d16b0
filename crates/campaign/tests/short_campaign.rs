//! The short fixed-seed fault campaign, on every run of the test suite: every fault of
//! the plan injected at least once against the real broker, processor and emulator,
//! then the independent verifier. A failure prints the seed and keeps the run's
//! folder (logs, manifests) for replay with `scripts/campaign.sh`.
#![cfg(feature = "integration")]

use paydedup_campaign::{run, CampaignConfig};

#[test]
fn short_campaign_seed_7_loses_doubles_and_invents_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("paydedup-campaign-")
        .tempdir()
        .unwrap();
    let cfg = CampaignConfig::short(7, dir.path());
    let report = match run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            let kept = dir.keep();
            panic!(
                "campaign could not run: {e:#}; its folder is kept at {}",
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
