//! `paydedup-campaign`: runs a seeded fault campaign and prints its report.
//!
//! Needs the workspace's binaries built with fail points, and the broker and emulator
//! installed (`scripts/campaign.sh` does both, then runs this).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use paydedup_campaign::plan::FaultCounts;
use paydedup_campaign::rescale::{run_rescale, RescaleConfig};
use paydedup_campaign::{run, CampaignConfig};

/// Inject faults on a schedule drawn from a seed while payments flow from the
/// simulator through tansu and the processor into the BigQuery emulator; then check
/// the tables against the simulator's manifests with an independent verifier.
#[derive(Parser)]
struct Args {
    /// The seed: the same seed gives the same fault plan and the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Records to produce (at least).
    #[arg(long, default_value_t = 60_000)]
    events: u64,
    /// The long campaign's fault counts (≥ 200 kills, ≥ 20 per fail point, …); the
    /// short one's otherwise.
    #[arg(long)]
    long: bool,
    /// Rounds the faults are spread over.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Partitions of the topic (default 3; 8 with --rescale).
    #[arg(long)]
    partitions: Option<i32>,
    /// Records per simulator run.
    #[arg(long, default_value_t = 3_000)]
    chunk: u64,
    /// Records produced per second.
    #[arg(long, default_value_t = 1_500)]
    rate: u64,
    /// Payments per second of event time.
    #[arg(long, default_value_t = 100)]
    event_rate: u64,
    /// Size of the state volume in MiB (a tmpfs; needs root).
    #[arg(long, default_value_t = 512)]
    volume_mib: u64,
    /// Dedup retention of the processor and the ground truth, in seconds.
    #[arg(long, default_value_t = 600)]
    retention_secs: i64,
    /// Copies of the duplicate storm's one payment (0: no storm).
    #[arg(long, default_value_t = 10_000)]
    storm_copies: u64,
    /// Instead of the fault campaign: change the instance count through these counts
    /// under load (e.g. `1,2,4,3,1`; the last must be 1), a SIGKILL inside each
    /// hand-off, then the same verifier; prints the hand-off pauses.
    #[arg(long, value_delimiter = ',')]
    rescale: Vec<u32>,
    /// With --rescale: no SIGKILLs (to measure the hand-off pause alone).
    #[arg(long)]
    no_kills: bool,
    /// With --rescale: seconds of load between two changes.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Where logs, manifests and backups go (kept).
    #[arg(long, default_value = "campaign-run")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if !a.rescale.is_empty() {
        return rescale(&a);
    }
    let cfg = CampaignConfig {
        seed: a.seed,
        events: a.events,
        partitions: a.partitions.unwrap_or(3),
        rounds: a.rounds,
        counts: if a.long {
            FaultCounts::long()
        } else {
            FaultCounts::short()
        },
        chunk: a.chunk,
        rate: a.rate,
        event_rate: a.event_rate,
        volume_mib: a.volume_mib,
        retention_secs: a.retention_secs,
        storm_copies: a.storm_copies,
        dir: a.dir.clone(),
    };
    let result = run(&cfg).map(|r| {
        let verdict = r.check().map_err(|e| e.to_string());
        (r.to_string(), verdict)
    });
    conclude("campaign", cfg.seed, result)
}

/// Prints a report and its verdict; the exit code says PASS or not.
fn conclude(
    what: &str,
    seed: u64,
    result: anyhow::Result<(String, Result<(), String>)>,
) -> ExitCode {
    match result {
        Ok((report, verdict)) => {
            println!("{report}");
            match verdict {
                Ok(()) => {
                    println!("PASS");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("{what} seed {seed} could not run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rescale(a: &Args) -> ExitCode {
    let cfg = RescaleConfig {
        seed: a.seed,
        partitions: a.partitions.unwrap_or(8),
        counts: a.rescale.clone(),
        events: a.events,
        chunk: a.chunk,
        rate: a.rate,
        event_rate: a.event_rate,
        retention_secs: a.retention_secs,
        settle: std::time::Duration::from_secs(a.settle_secs),
        kills: !a.no_kills,
        dir: a.dir.clone(),
    };
    let result = run_rescale(&cfg).map(|r| {
        let verdict = r.check();
        (r.to_string(), verdict)
    });
    conclude("rescale", cfg.seed, result)
}
