//! One campaign: the parts started, the plan injected round by round while the
//! simulator produces, a clean bounded run at the end, then the verifier.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use paydedup_testkit::{Broker, Emulator};

use crate::corrupt::{copy_tree, corrupt};
use paydedup_manifest::{Manifest, StormTotals};

use crate::model::{compare, replay_topic, state_live_dedup, DedupModel};
use crate::plan::{schedule, skew_hours_ahead, Fault, FaultCounts, Misstart};
use crate::producer::{Producer, ProducerConfig, StormPlan};
use crate::supervisor::{set_flag, Ended, Supervisor, SIGABRT};
use crate::verify::{verify, Truth, Verdict};
use crate::volume::StateVolume;
use crate::warehouse::Warehouse;

const TOPIC: &str = "payments";
/// A second topic, for the wrong start that points the state at it.
const OTHER_TOPIC: &str = "payments-other";
const DATASET: &str = "campaign";
/// The processor's default `--allowed-lateness-secs`, which the campaign runs with.
const ALLOWED_LATENESS_SECS: i64 = 300;

#[derive(Debug, Clone)]
pub struct CampaignConfig {
    pub seed: u64,
    /// Records to produce (at least).
    pub events: u64,
    pub partitions: i32,
    pub rounds: usize,
    pub counts: FaultCounts,
    /// Records per simulator run.
    pub chunk: u64,
    /// Records per second produced.
    pub rate: u64,
    /// Payments per second of event time.
    pub event_rate: u64,
    /// Size of the state volume (MiB).
    pub volume_mib: u64,
    /// Dedup retention (processor and ground truth). Short, so that the duplicate
    /// storm outlives it: its id expires and comes back.
    pub retention_secs: i64,
    /// Copies of the duplicate storm's one payment.
    pub storm_copies: u64,
    /// Where the run's files go (logs, manifests, backups).
    pub dir: PathBuf,
}

impl CampaignConfig {
    /// The short campaign of the test suite: every fault, a few minutes.
    pub fn short(seed: u64, dir: &Path) -> CampaignConfig {
        CampaignConfig {
            seed,
            events: 60_000,
            partitions: 3,
            rounds: 3,
            counts: FaultCounts::short(),
            chunk: 3_000,
            rate: 1_500,
            event_rate: 100,
            volume_mib: 512,
            retention_secs: 600,
            storm_copies: 10_000,
            dir: dir.to_owned(),
        }
    }

    /// The storm: over enough chunks to span three retentions of event time (each chunk
    /// spans `chunk / event_rate` seconds and a minute's gap), from the second chunk.
    fn storm(&self) -> Option<StormPlan> {
        if self.storm_copies == 0 {
            return None;
        }
        let chunk_secs = self.chunk / self.event_rate.max(1) + 60;
        let chunks = (3 * self.retention_secs.max(1) as u64).div_ceil(chunk_secs.max(1));
        Some(StormPlan {
            transaction_id: format!("tx-storm-{:08x}", self.seed),
            copies: self.storm_copies,
            first_chunk: 1,
            chunks: chunks.max(2),
        })
    }
}

/// What a campaign did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub processor_runs: u32,
    pub planned: BTreeMap<&'static str, u32>,
    pub fired: BTreeMap<&'static str, u32>,
    /// Damaged state the processor refused (then restored from a backup) vs ran on.
    pub corruption_detected: u32,
    pub corruption_tolerated: u32,
    /// Dedup entries alive in the final state, and how it differs from a replay of the
    /// input through the dedup model (empty: the same).
    pub dedup_index_live: u64,
    pub dedup_index_differences: Vec<String>,
    /// The duplicate storm, summed over its chunks.
    pub storm: Option<StormTotals>,
    /// Things that went otherwise than planned but are not, by themselves, a failure.
    pub notes: Vec<String>,
    /// Failures besides the verdict (a SIGTERM that did not exit 0, …).
    pub failures: Vec<String>,
    pub verdict: Verdict,
}

impl Report {
    /// Fails unless the tables are exact, every planned fault fired, and nothing failed.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut problems = self.failures.clone();
        for (kind, planned) in &self.planned {
            let fired = self.fired.get(kind).copied().unwrap_or(0);
            if fired < *planned {
                problems.push(format!("{kind}: {fired} of {planned} fired"));
            }
        }
        problems.extend(self.dedup_index_differences.iter().cloned());
        if !self.verdict.exact() {
            problems.push(format!(
                "the tables are not exact: {} lost, {} doubled, {} invented; {}",
                self.verdict.lost,
                self.verdict.doubled,
                self.verdict.invented,
                self.verdict.mismatches.join("; ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "campaign seed {} failed:\n- {}",
                self.seed,
                problems.join("\n- ")
            )
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} records, {} processor runs, {:.0} s",
            self.seed,
            self.events,
            self.processor_runs,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "| fault | planned | fired |")?;
        writeln!(f, "|---|---|---|")?;
        for (kind, planned) in &self.planned {
            let fired = self.fired.get(kind).copied().unwrap_or(0);
            writeln!(f, "| {kind} | {planned} | {fired} |")?;
        }
        writeln!(
            f,
            "corruptions: {} refused by the processor (restored from a backup), {} ran on",
            self.corruption_detected, self.corruption_tolerated
        )?;
        writeln!(
            f,
            "dedup index: {} live entries, {} differences from a replay of the input",
            self.dedup_index_live,
            self.dedup_index_differences.len()
        )?;
        for d in &self.dedup_index_differences {
            writeln!(f, "  {d}")?;
        }
        if let Some(s) = &self.storm {
            writeln!(
                f,
                "duplicate storm {}: {} copies, {} new after expiry (in payments {} times), {} duplicates, {} late",
                s.transaction_id, s.copies, s.unique, s.unique, s.duplicate, s.late
            )?;
        }
        write!(f, "{}", self.verdict)?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        for x in &self.failures {
            writeln!(f, "  FAILURE: {x}")?;
        }
        Ok(())
    }
}

struct Campaign {
    rng: ChaCha8Rng,
    retention_secs: i64,
    dir: PathBuf,
    warehouse: Warehouse,
    broker: Broker,
    emulator: Emulator,
    volume: StateVolume,
    processor: Supervisor,
    backup: PathBuf,
    has_backup: bool,
    partitions: usize,
    /// Runs in a row that ended on their own, non-zero.
    failing_runs: u32,
    report: Report,
}

/// Runs a whole campaign and returns its report (check it with [`Report::check`]).
pub fn run(cfg: &CampaignConfig) -> anyhow::Result<Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.dir)?;
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, cfg.partitions)?;
    broker.create_topic(OTHER_TOPIC, cfg.partitions)?;
    let emulator = Emulator::start()?;
    let volume = StateVolume::new(&cfg.dir.join("volume"), cfg.volume_mib)?;
    let args = processor_args(&broker, &emulator, &volume.state_dir(), cfg.retention_secs);
    let processor = Supervisor::new(args, &cfg.dir.join("logs"))?;
    let plan = schedule(cfg.seed, &cfg.counts, cfg.rounds);
    let warehouse = Warehouse {
        rest_url: emulator.rest_url(),
        project: emulator.project.clone(),
        dataset: DATASET.into(),
    };
    let mut c = Campaign {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed),
        retention_secs: cfg.retention_secs,
        dir: cfg.dir.clone(),
        warehouse,
        broker,
        emulator,
        volume,
        processor,
        backup: cfg.dir.join("backup"),
        has_backup: false,
        partitions: usize::try_from(cfg.partitions).unwrap_or(1),
        failing_runs: 0,
        report: Report {
            seed: cfg.seed,
            ..Report::default()
        },
    };
    for f in plan.iter().flatten() {
        *c.report.planned.entry(f.kind()).or_default() += 1;
    }
    std::fs::create_dir_all(cfg.dir.join("manifests"))?;
    let producer = Producer::start(ProducerConfig {
        brokers: c.broker.bootstrap(),
        topic: TOPIC.into(),
        seed: cfg.seed,
        events: cfg.events,
        chunk: cfg.chunk,
        rate: cfg.rate,
        event_rate: cfg.event_rate,
        retention_secs: cfg.retention_secs,
        storm: cfg.storm(),
        skew_hours_ahead: skew_hours_ahead(&cfg.counts),
        dir: cfg.dir.join("manifests"),
    });
    c.processor.start(None, &[])?;
    for (i, round) in plan.iter().enumerate() {
        eprintln!(
            "campaign: round {}/{}: {} faults",
            i + 1,
            plan.len(),
            round.len()
        );
        for fault in round {
            if fault.needs_quiet_producer() {
                producer.pause();
            }
            c.ensure_running()?;
            // Faults land mid-stream, not in the start-up: wait until the processor
            // is ready (or gone), then let it work for a random while.
            c.processor.wait_ready(Duration::from_secs(60));
            let settle = c.rng.gen_range(300..2_000);
            std::thread::sleep(Duration::from_millis(settle));
            c.inject(fault, &producer)
                .with_context(|| format!("injecting {fault:?}"))?;
        }
        producer.resume();
        let fired: u32 = c.report.fired.values().sum();
        eprintln!(
            "campaign: round {} done after {:.0} s: {fired} faults fired, {} processor runs",
            i + 1,
            started.elapsed().as_secs_f64(),
            c.processor.runs()
        );
    }
    eprintln!("campaign: faults done; producing the rest");
    let manifests = producer.finish()?;
    c.finish()?;
    let mut truth = Truth::default();
    for m in &manifests {
        truth.add(m);
    }
    c.report.events = u64::try_from(truth.records()).unwrap_or(0);
    check_contiguous(&manifests, &mut c.report);
    c.check_storm_and_skews(cfg, &manifests);
    c.report.verdict = verify(&c.warehouse, &truth)?;
    c.report.processor_runs = c.processor.runs();
    c.report.elapsed = started.elapsed();
    Ok(c.report)
}

fn processor_args(
    broker: &Broker,
    emu: &Emulator,
    state: &Path,
    retention_secs: i64,
) -> Vec<String> {
    let mut a = crate::supervisor::processor_args(broker, emu, TOPIC, DATASET, retention_secs);
    a.push("--state-dir".into());
    a.push(state.display().to_string());
    a
}

/// Each chunk's first offsets must follow the chunks before it: the log holds what the
/// manifests say, once (a producer retry that doubled a record would show here).
fn check_contiguous(manifests: &[paydedup_manifest::Manifest], report: &mut Report) {
    let mut next: Vec<i64> = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        next.resize(m.partitions.max(next.len()), 0);
        for (p, counts) in m.by_partition.iter().enumerate() {
            if counts.records == 0 {
                continue;
            }
            if m.first_offset.get(p).copied().flatten() != Some(next[p]) {
                report.failures.push(format!(
                    "chunk {i} partition {p}: first offset {:?}, expected {}",
                    m.first_offset.get(p),
                    next[p]
                ));
            }
            next[p] += counts.records as i64;
        }
    }
}

/// How many partitions a stopped processor's state has a position for (`state --json`).
fn positioned_partitions(state: &Path) -> usize {
    let Ok(bin) = paydedup_testkit::binary("paydedup-processor") else {
        return 0;
    };
    let Ok(out) = std::process::Command::new(bin)
        .args(["state", "--json", "--state-dir"])
        .arg(state)
        .output()
    else {
        return 0;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["next_offsets"].as_object().map(|o| o.len()))
        .unwrap_or(0)
}

/// The processor refused a state that faces rows it never wrote: a campaign bug (a
/// backup restored from before a partition's first record), not a processor fault.
fn refused_unrelated_state(log: &str) -> bool {
    log.contains("this state holds nothing for the partition")
}

/// Log lines that say the state store is damaged.
fn looks_like_state_damage(log: &str) -> bool {
    [
        "Corruption",
        "corrupt",
        "checksum",
        "truncated",
        "MANIFEST",
        "opening the state store",
    ]
    .iter()
    .any(|m| log.contains(m))
}

impl Campaign {
    fn fired(&mut self, kind: &'static str) {
        *self.report.fired.entry(kind).or_default() += 1;
    }

    /// Restarts the processor if its run ended; a run that ended on damaged state is
    /// replaced by the last backup first (an older state: its replay is checked
    /// against the sink, row by row).
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(ended) = self.processor.reap() {
            if ended != Ended::Code(0) {
                self.failing_runs += 1;
                let log = self.processor.log();
                if refused_unrelated_state(&log) {
                    bail!(
                        "the restored backup predates a partition's first record; see {}",
                        self.processor.log_path().display()
                    );
                }
                if looks_like_state_damage(&log) {
                    self.restore_backup()?;
                } else {
                    let last = log.lines().last().unwrap_or("").to_owned();
                    self.report.notes.push(format!(
                        "run {} ended {ended:?} on its own: {last}",
                        self.processor.runs()
                    ));
                }
                if self.failing_runs > 10 {
                    bail!(
                        "the processor fails again and again; see {}",
                        self.processor.log_path().display()
                    );
                }
            }
        }
        if !self.processor.running() {
            self.processor.start(None, &[])?;
        }
        Ok(())
    }

    fn restore_backup(&mut self) -> anyhow::Result<()> {
        if !self.has_backup {
            bail!(
                "the state is damaged and there is no backup; see {}",
                self.processor.log_path().display()
            );
        }
        copy_tree(&self.backup, &self.volume.state_dir())
    }

    /// Copies the stopped processor's state (a consistent backup), sometimes: a
    /// restore then replays from an older point. Only a state that has consumed from
    /// every partition is a backup: an older one restored would face a sink holding
    /// rows for a partition it never saw, which the processor rightly refuses (that
    /// case needs a restore from the warehouse).
    fn maybe_backup(&mut self) -> anyhow::Result<()> {
        let state = self.volume.state_dir();
        if !state.exists() || (self.has_backup && !self.rng.gen_bool(0.3)) {
            return Ok(());
        }
        if positioned_partitions(&state) < self.partitions {
            return Ok(());
        }
        copy_tree(&state, &self.backup)?;
        self.has_backup = true;
        Ok(())
    }

    /// Makes sure a usable backup exists before state is damaged (it is what an
    /// operator restores): lets the processor run until its state qualifies. Leaves
    /// the processor stopped.
    fn ensure_backup(&mut self) -> anyhow::Result<()> {
        for _ in 0..60 {
            self.maybe_backup()?;
            if self.has_backup {
                return Ok(());
            }
            self.processor.start(None, &[])?;
            self.processor.wait_ready(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(1_500));
            self.kill_running();
        }
        bail!("no state with a position on every partition after 90 s; is anything produced?")
    }

    /// A run that lived through its start-up and is now killed counts as one.
    fn kill_running(&mut self) -> bool {
        let was_up =
            self.processor.running() && self.processor.uptime() > Duration::from_millis(200);
        let ended = self.processor.kill();
        if ended.is_some_and(|e| e != Ended::Signal(crate::supervisor::SIGKILL)) {
            self.failing_runs += 1;
        } else {
            self.failing_runs = 0;
        }
        was_up
    }

    fn inject(&mut self, fault: &Fault, producer: &Producer) -> anyhow::Result<()> {
        match fault {
            Fault::Misstart(m) => self.misstart(*m)?,
            Fault::LostVolume => self.lost_volume()?,
            Fault::ClockSkew { secs } => producer.skew_next_chunk(*secs),
            Fault::Kill => {
                if self.kill_running() {
                    self.fired(fault.kind());
                }
                self.maybe_backup()?;
            }
            Fault::FailPoint { name, pass } => self.fail_point(name, *pass)?,
            Fault::Term => match self.processor.terminate(Duration::from_secs(90))? {
                Some(Ended::Code(0)) => self.fired(fault.kind()),
                other => self.report.failures.push(format!(
                    "SIGTERM ended run {} with {other:?}, not a clean exit; see {}",
                    self.processor.runs(),
                    self.processor.log_path().display()
                )),
            },
            Fault::BrokerKill => {
                self.broker.restart()?;
                self.fired(fault.kind());
            }
            Fault::BrokerPause { millis } => {
                self.broker.pause()?;
                std::thread::sleep(Duration::from_millis(*millis));
                self.broker.resume()?;
                self.fired(fault.kind());
            }
            Fault::EmulatorOutage { millis } => {
                self.emulator.stop();
                std::thread::sleep(Duration::from_millis(*millis));
                self.emulator.restart()?;
                self.fired(fault.kind());
            }
            Fault::DiskFull => self.disk_full()?,
            Fault::Corruption { file, seed } => {
                self.kill_running();
                self.ensure_backup()?;
                let Some(what) = corrupt(&self.volume.state_dir(), *file, *seed)? else {
                    self.report
                        .notes
                        .push("corruption: no state file yet".into());
                    return Ok(());
                };
                self.fired(fault.kind());
                self.processor.start(None, &[])?;
                // Still running after 20 s counts as tolerated only if it serves: a
                // processor stuck opening the damaged state (RocksDB once looped
                // forever on a flipped record type) would otherwise pass here and
                // stall every later run on the same state.
                let ended = match self.processor.wait(Duration::from_secs(20)) {
                    None if self.processor.wait_ready(Duration::from_secs(60)) => None,
                    None => match self.processor.wait(Duration::from_secs(1)) {
                        Some(ended) => Some(ended),
                        None => bail!(
                            "after {what}: the processor neither failed nor became ready \
                             in 81 s (stuck opening the damaged state?); see {}",
                            self.processor.log_path().display()
                        ),
                    },
                    ended => ended,
                };
                match ended {
                    None => self.report.corruption_tolerated += 1,
                    Some(ended) => {
                        // Damage RocksDB recovers from by dropping a WAL tail leaves
                        // a state behind the sink; one behind every row is refused
                        // by the start-up agreement instead.
                        let log = self.processor.log();
                        if ended != Ended::Code(0)
                            && (looks_like_state_damage(&log) || refused_unrelated_state(&log))
                        {
                            self.report.corruption_detected += 1;
                        } else {
                            self.report.notes.push(format!(
                                "after {what}: run ended {ended:?} without naming damage"
                            ));
                        }
                        self.restore_backup()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the processor the wrong way on the live state and sink; it must refuse
    /// with an error that names the problem and exit non-zero, before touching
    /// anything (the final verdict would show a row it wrote).
    fn misstart(&mut self, m: Misstart) -> anyhow::Result<()> {
        if m == Misstart::EmptyState {
            // Refused only once the sink holds rows; before, an empty state is a first
            // start. Let the processor deliver some first.
            for _ in 0..120 {
                let rows = self
                    .warehouse
                    .query("SELECT COUNT(*) FROM `${dataset}.payments`")
                    .ok()
                    .and_then(|r| {
                        r.first()
                            .and_then(|row| crate::warehouse::int(&row[0]).ok())
                    });
                if rows.unwrap_or(0) > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        self.kill_running();
        let empty = self
            .dir
            .join(format!("misstart-{}", self.processor.runs() + 1));
        // What must be refused, and the one flag that makes the start wrong.
        let (expected, flag, value) = match m {
            Misstart::EmptyState => (
                "this state holds nothing for the partition",
                "--state-dir",
                empty.display().to_string(),
            ),
            Misstart::OtherTopic => ("holds the state of topic", "--topic", OTHER_TOPIC.into()),
            Misstart::Retention => (
                "was written with --retention-secs",
                "--retention-secs",
                (self.retention_secs + 60).to_string(),
            ),
            Misstart::Window => (
                "was written with --window-secs",
                "--window-secs",
                "7".into(),
            ),
            Misstart::Lateness => (
                "was written with --allowed-lateness-secs",
                "--allowed-lateness-secs",
                "301".into(),
            ),
        };
        self.processor.start_edited(|a| {
            set_flag(a, flag, &value);
            if m == Misstart::EmptyState {
                // Told not to rebuild itself from the sink (the lost-volume fault
                // covers that): it must refuse.
                a.push("--no-auto-restore".into());
            }
        })?;
        let ended = self.processor.wait(Duration::from_secs(90));
        let log = self.processor.log();
        match ended {
            Some(Ended::Code(c)) if c != 0 && log.contains(expected) => self.fired("misstart"),
            other => {
                self.processor.kill();
                self.report.failures.push(format!(
                    "wrong start {m:?}: ended {other:?}, expected a refusal naming `{expected}`; see {}",
                    self.processor.log_path().display()
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&empty);
        Ok(())
    }

    /// Kills the processor and deletes its state directory (a lost volume); the next
    /// start must rebuild the state from the warehouse and go on.
    fn lost_volume(&mut self) -> anyhow::Result<()> {
        self.kill_running();
        let state = self.volume.state_dir();
        if state.exists() {
            std::fs::remove_dir_all(&state)?;
        }
        self.processor.start(None, &[])?;
        self.processor.wait_ready(Duration::from_secs(120));
        let log = self.processor.log();
        if log.contains("Restored the state from the sink") {
            self.fired("lost_volume");
        } else {
            self.report.notes.push(format!(
                "lost volume: run {} did not restore (nothing delivered yet?): {}",
                self.processor.runs(),
                log.lines().last().unwrap_or("")
            ));
        }
        Ok(())
    }

    /// The storm and the skewed chunks happened as planned: every planned copy sent,
    /// the id expired and came back at least once (so it crossed the retention edge),
    /// and each planned skew produced skewed records.
    fn check_storm_and_skews(&mut self, cfg: &CampaignConfig, manifests: &[Manifest]) {
        let mut storm: Option<StormTotals> = None;
        for s in manifests.iter().filter_map(|m| m.storm.as_ref()) {
            let t = storm.get_or_insert_with(|| StormTotals {
                transaction_id: s.transaction_id.clone(),
                partition: s.partition,
                ..StormTotals::default()
            });
            t.copies += s.copies;
            t.unique += s.unique;
            t.duplicate += s.duplicate;
            t.late += s.late;
        }
        if let Some(plan) = cfg.storm() {
            let sent = storm.as_ref().map_or(0, |s| s.copies);
            let per_chunk = plan.copies.div_ceil(plan.chunks);
            if sent < per_chunk * plan.chunks {
                self.report.failures.push(format!(
                    "duplicate storm: {sent} copies sent, {} planned",
                    per_chunk * plan.chunks
                ));
            } else {
                self.fired("duplicate_storm");
            }
            if storm.as_ref().map_or(0, |s| s.unique) < 2 {
                self.report.failures.push(format!(
                    "duplicate storm: its id never expired and came back ({storm:?})"
                ));
            }
            *self.report.planned.entry("duplicate_storm").or_default() += 1;
        }
        let skewed_chunks = manifests.iter().filter(|m| m.skewed_records > 0).count();
        *self.report.fired.entry("clock_skew").or_default() =
            u32::try_from(skewed_chunks).unwrap_or(u32::MAX);
        self.report.storm = storm;
    }

    /// Restarts armed with the fail point and waits for it to abort the run.
    fn fail_point(&mut self, name: &'static str, pass: u32) -> anyhow::Result<()> {
        self.kill_running();
        self.processor.start(Some((name, pass)), &[])?;
        match self.processor.wait(Duration::from_secs(45)) {
            Some(Ended::Signal(SIGABRT))
                if self
                    .processor
                    .log()
                    .contains(&format!("paydedup fail point {name} reached")) =>
            {
                self.fired(name);
            }
            Some(other) => self.report.notes.push(format!(
                "fail point {name}:{pass}: the run ended {other:?} before reaching it"
            )),
            None => {
                self.report
                    .notes
                    .push(format!("fail point {name}:{pass}: not reached in 45 s"));
                self.processor.kill();
            }
        }
        Ok(())
    }

    /// Fills the state volume until the processor fails, then gives the space back.
    fn disk_full(&mut self) -> anyhow::Result<()> {
        if !self.volume.mounted() {
            self.report
                .notes
                .push("disk full: the state volume could not be mounted (needs root)".into());
            return Ok(());
        }
        self.volume.fill()?;
        let ended = self.processor.wait(Duration::from_secs(45));
        self.volume.free();
        match ended {
            Some(e) if e != Ended::Code(0) && self.processor.log().contains("No space") => {
                self.fired("disk_full");
            }
            Some(e) => self
                .report
                .notes
                .push(format!("disk full: the run ended {e:?} without saying so")),
            None => self
                .report
                .notes
                .push("disk full: the processor did not fail in 45 s".into()),
        }
        Ok(())
    }

    /// Ends whatever runs, then a clean bounded run delivers everything. Before the
    /// drain (which moves watermarks past the open windows), the dedup index the
    /// state ended with is compared with an independent replay of the whole topic.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.bounded_run(&["--exit-when-caught-up"])?;
        self.check_dedup_index()?;
        self.bounded_run(&["--exit-when-caught-up", "--drain"])
    }

    fn check_dedup_index(&mut self) -> anyhow::Result<()> {
        let mut model = DedupModel::new(ALLOWED_LATENESS_SECS, self.retention_secs);
        let read = replay_topic(
            &self.broker.bootstrap(),
            TOPIC,
            i32::try_from(self.partitions).unwrap_or(1),
            &mut model,
        )?;
        let state = state_live_dedup(&self.volume.state_dir())?;
        let differences = compare(&model.live(), &state);
        let live: u64 = state.values().map(|l| l.live).sum();
        eprintln!(
            "campaign: dedup index: {live} live entries; replay of {read} records: {} differences",
            differences.len()
        );
        self.report.dedup_index_live = live;
        self.report.dedup_index_differences = differences;
        Ok(())
    }

    fn bounded_run(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        for _ in 0..8 {
            self.processor.kill();
            self.processor.start(None, flags)?;
            match self.processor.wait(Duration::from_secs(3600)) {
                Some(Ended::Code(0)) => return Ok(()),
                other => {
                    let log = self.processor.log();
                    self.report.notes.push(format!(
                        "final run ended {other:?}: {}",
                        log.lines().last().unwrap_or("")
                    ));
                    if looks_like_state_damage(&log) {
                        self.restore_backup()?;
                    }
                }
            }
        }
        bail!(
            "the final bounded run never succeeded; see {}",
            self.processor.log_path().display()
        )
    }
}
