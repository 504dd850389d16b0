//! Rescale under load: the instance count changed on a live stream, as an operator
//! changes a StatefulSet's `replicas`, with SIGKILLs during the hand-offs.
//!
//! The simulator produces throughout to a real tansu broker; every instance is a real
//! `paydedup-processor run --statefulset …` with its own state directory, delivering to
//! the real BigQuery emulator. The instance count comes from one place, the
//! StatefulSet's replicas, here served by a test double of the Kubernetes API
//! ([`KubernetesApiDouble`]) — exactly what `kubectl scale` changes. Like the
//! StatefulSet controller, the test starts the pods a larger count adds and SIGTERMs
//! the ones a smaller count removes (highest ordinal first); after each change it
//! SIGKILLs a random pod within the hand-off and restarts it if it is still wanted.
//!
//! After the first step down that keeps pod 1 (4 → 3), pod 1 loses its volume: it is
//! SIGKILLed, its state directory deleted, and it must restore from the warehouse.
//!
//! It measures the hand-off pause of every partition that moved: from the change of
//! `replicas` until its new owner reports a position beyond the last one reported
//! before. At the end a single instance catches up, the final dedup index is compared
//! with a replay of the topic, and the independent verifier checks the tables against
//! the simulator's manifests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use paydedup_testkit::{Broker, Emulator, KubernetesApiDouble};

use crate::model::{compare, replay_topic, state_live_dedup, DedupModel};
use crate::producer::{Producer, ProducerConfig};
use crate::supervisor::{next_offsets, Ended, Supervisor};
use crate::verify::{verify, Truth, Verdict};
use crate::warehouse::Warehouse;

const TOPIC: &str = "payments";
const DATASET: &str = "rescale";
const STATEFULSET: &str = "paydedup";
const NAMESPACE: &str = "payments";
const ALLOWED_LATENESS_SECS: i64 = 300;
/// How long a moved partition may stay paused before the run fails.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone)]
pub struct RescaleConfig {
    pub seed: u64,
    pub partitions: i32,
    /// The instance counts, in order (the first is where it starts).
    pub counts: Vec<u32>,
    /// Records to produce (at least); production runs through every step.
    pub events: u64,
    pub chunk: u64,
    pub rate: u64,
    pub event_rate: u64,
    pub retention_secs: i64,
    /// Load between two changes, after every moved partition resumed.
    pub settle: Duration,
    /// A SIGKILL inside every hand-off (off: to measure the pause alone).
    pub kills: bool,
    pub dir: PathBuf,
}

impl RescaleConfig {
    /// The test suite's run: 1 → 2 → 4 → 3 → 1 instances on 8 partitions.
    pub fn short(seed: u64, dir: &std::path::Path) -> RescaleConfig {
        RescaleConfig {
            seed,
            partitions: 8,
            counts: vec![1, 2, 4, 3, 1],
            events: 60_000,
            chunk: 3_000,
            rate: 800,
            event_rate: 100,
            retention_secs: 600,
            settle: Duration::from_secs(5),
            kills: true,
            dir: dir.to_owned(),
        }
    }
}

/// One change of the instance count.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub from: u32,
    pub to: u32,
    /// Partition → its pause (from the change until its new owner moved on).
    pub pauses: BTreeMap<i32, Duration>,
    /// Instances SIGKILLed during this hand-off.
    pub killed: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct RescaleReport {
    pub seed: u64,
    pub kills: bool,
    pub events: u64,
    pub elapsed: Duration,
    pub steps: Vec<Step>,
    pub processor_runs: u32,
    /// One instance's state directory was deleted mid-run and it restored itself.
    pub lost_volume: bool,
    pub dedup_index_live: u64,
    pub dedup_index_differences: Vec<String>,
    pub failures: Vec<String>,
    pub verdict: Verdict,
}

impl RescaleReport {
    pub fn check(&self) -> Result<(), String> {
        let mut problems = self.failures.clone();
        if !self.verdict.exact() {
            problems.push("the tables are not exact".into());
        }
        if !self.dedup_index_differences.is_empty() {
            problems.push("the final dedup index differs from a replay of the input".into());
        }
        if !self.lost_volume {
            problems.push("the lost volume was not restored from the warehouse".into());
        }
        if self.kills && self.steps.iter().all(|s| s.killed.is_empty()) {
            problems.push("no instance was killed during a hand-off".into());
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }
}

impl fmt::Display for RescaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rescale seed {}: {} records, {} processor runs, {:.0} s",
            self.seed,
            self.events,
            self.processor_runs,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "| change | partitions moved | SIGKILLed | pause p50 | pause max |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        for s in &self.steps {
            let mut p: Vec<Duration> = s.pauses.values().copied().collect();
            p.sort();
            let at = |q: f64| {
                p.get(((p.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
            };
            let secs =
                |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
            writeln!(
                f,
                "| {} → {} | {} | {:?} | {} | {} |",
                s.from,
                s.to,
                s.pauses.len(),
                s.killed,
                secs(at(0.5)),
                secs(at(1.0))
            )?;
        }
        writeln!(
            f,
            "lost volume (pod 1's state deleted mid-run): restored from the warehouse: {}",
            self.lost_volume
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
        write!(f, "{}", self.verdict)?;
        for x in &self.failures {
            writeln!(f, "  FAILURE: {x}")?;
        }
        Ok(())
    }
}

/// The pods of the StatefulSet, by ordinal.
struct Pods {
    pods: Vec<Supervisor>,
    args: Vec<String>,
    dir: PathBuf,
}

impl Pods {
    fn pod(&mut self, ordinal: u32) -> anyhow::Result<&mut Supervisor> {
        while self.pods.len() <= ordinal as usize {
            let i = self.pods.len();
            let mut args = self.args.clone();
            args.extend([
                "--instance-index".into(),
                i.to_string(),
                "--state-dir".into(),
                self.dir.join(format!("state-{i}")).display().to_string(),
            ]);
            self.pods
                .push(Supervisor::new(args, &self.dir.join(format!("logs-{i}")))?);
        }
        Ok(&mut self.pods[ordinal as usize])
    }

    /// Starts the pod if it is not running (as the StatefulSet controller would).
    fn ensure(&mut self, ordinal: u32) -> anyhow::Result<()> {
        let pod = self.pod(ordinal)?;
        if let Some(ended) = pod.reap() {
            eprintln!("rescale: pod {ordinal} ended {ended:?}; restarting it");
        }
        if !pod.running() {
            pod.start(None, &[])?;
        }
        Ok(())
    }

    /// Every running pod's `paydedup_next_offset` per partition.
    fn positions(&self) -> BTreeMap<u32, BTreeMap<i32, i64>> {
        self.pods
            .iter()
            .enumerate()
            .filter_map(|(i, pod)| Some((i as u32, next_offsets(&pod.metrics()?))))
            .collect()
    }

    fn runs(&self) -> u32 {
        self.pods.iter().map(Supervisor::runs).sum()
    }
}

/// Runs the whole scenario (check the report with [`RescaleReport::check`]).
pub fn run_rescale(cfg: &RescaleConfig) -> anyhow::Result<RescaleReport> {
    let started = Instant::now();
    anyhow::ensure!(cfg.counts.len() >= 2, "at least two instance counts");
    std::fs::create_dir_all(cfg.dir.join("manifests"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5ca1e);
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, cfg.partitions)?;
    let emulator = Emulator::start()?;
    let api = KubernetesApiDouble::start(NAMESPACE, STATEFULSET, cfg.counts[0])?;
    let warehouse = Warehouse {
        rest_url: emulator.rest_url(),
        project: emulator.project.clone(),
        dataset: DATASET.into(),
    };
    let mut pods = Pods {
        pods: Vec::new(),
        args: processor_args(&broker, &emulator, &api, cfg.retention_secs),
        dir: cfg.dir.clone(),
    };
    let mut report = RescaleReport {
        seed: cfg.seed,
        kills: cfg.kills,
        ..RescaleReport::default()
    };
    let producer = Producer::start(ProducerConfig {
        brokers: broker.bootstrap(),
        topic: TOPIC.into(),
        seed: cfg.seed,
        events: cfg.events,
        chunk: cfg.chunk,
        rate: cfg.rate,
        event_rate: cfg.event_rate,
        retention_secs: cfg.retention_secs,
        storm: None,
        skew_hours_ahead: 0,
        dir: cfg.dir.join("manifests"),
    });
    for i in 0..cfg.counts[0] {
        pods.ensure(i)?;
    }
    for i in 0..cfg.counts[0] {
        pods.pod(i)?.wait_ready(Duration::from_secs(120));
    }
    std::thread::sleep(cfg.settle);
    for pair in cfg.counts.windows(2) {
        let step = hand_off(&mut pods, &api, cfg, pair[0], pair[1], &mut rng)
            .with_context(|| format!("scaling {} → {}", pair[0], pair[1]))?;
        eprintln!(
            "rescale: {} → {} done after {:.0} s: {} partitions moved, killed {:?}",
            step.from,
            step.to,
            started.elapsed().as_secs_f64(),
            step.pauses.len(),
            step.killed
        );
        if step.pauses.len() < moved(cfg.partitions, step.from, step.to).len() {
            report.failures.push(format!(
                "{} → {}: only {} of {} moved partitions resumed within {HAND_OFF_TIMEOUT:?}",
                step.from,
                step.to,
                step.pauses.len(),
                moved(cfg.partitions, step.from, step.to).len()
            ));
        }
        report.steps.push(step);
        std::thread::sleep(cfg.settle);
        // At the widest count that keeps pod 1, one instance loses its volume mid-run.
        if !report.lost_volume && pair[1] >= 2 && pair[1] < pair[0] {
            lose_volume(&mut pods, 1, &cfg.dir)?;
            report.lost_volume = pods
                .pod(1)?
                .log()
                .contains("Restored the state from the sink");
            eprintln!(
                "rescale: pod 1 lost its volume; restored from the warehouse: {}",
                report.lost_volume
            );
            std::thread::sleep(cfg.settle);
        }
    }
    eprintln!("rescale: producing the rest");
    let manifests = producer.finish()?;
    let last = *cfg.counts.last().unwrap_or(&1);
    anyhow::ensure!(last == 1, "the scenario ends on one instance");
    // The one instance left catches up, its dedup index is compared with a replay of
    // the topic, and a last run drains the open windows.
    bounded_run(&mut pods, &["--exit-when-caught-up"])?;
    let mut model = DedupModel::new(ALLOWED_LATENESS_SECS, cfg.retention_secs);
    replay_topic(&broker.bootstrap(), TOPIC, cfg.partitions, &mut model)?;
    let state = state_live_dedup(&cfg.dir.join("state-0"))?;
    report.dedup_index_differences = compare(&model.live(), &state);
    report.dedup_index_live = state.values().map(|l| l.live).sum();
    bounded_run(&mut pods, &["--exit-when-caught-up", "--drain"])?;
    let mut truth = Truth::default();
    for m in &manifests {
        truth.add(m);
    }
    report.events = u64::try_from(truth.records()).unwrap_or(0);
    report.verdict = verify(&warehouse, &truth)?;
    report.processor_runs = pods.runs();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// SIGKILLs pod `ordinal`, deletes its state directory, starts it on an empty one and
/// waits until it is ready (it restores its partitions from the warehouse first).
fn lose_volume(pods: &mut Pods, ordinal: u32, dir: &std::path::Path) -> anyhow::Result<()> {
    let pod = pods.pod(ordinal)?;
    pod.kill();
    let state = dir.join(format!("state-{ordinal}"));
    std::fs::remove_dir_all(&state).with_context(|| format!("deleting {}", state.display()))?;
    pod.start(None, &[])?;
    pod.wait_ready(Duration::from_secs(240));
    Ok(())
}

/// The partitions whose owner differs between `from` and `to` instances.
fn moved(partitions: i32, from: u32, to: u32) -> Vec<i32> {
    (0..partitions)
        .filter(|p| (*p as u32) % from != (*p as u32) % to)
        .collect()
}

/// One change of `replicas`, its pods started or stopped, a SIGKILL inside it, and
/// the wait until every moved partition resumed at its new owner.
fn hand_off(
    pods: &mut Pods,
    api: &KubernetesApiDouble,
    cfg: &RescaleConfig,
    from: u32,
    to: u32,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Step> {
    let mut step = Step {
        from,
        to,
        ..Step::default()
    };
    let moving = moved(cfg.partitions, from, to);
    // The last position each partition reached before the change.
    let mut before: BTreeMap<i32, i64> = BTreeMap::new();
    for offsets in pods.positions().values() {
        for (&p, &o) in offsets {
            let e = before.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
    }
    let changed = Instant::now();
    api.set_replicas(to);
    for i in from..to {
        pods.ensure(i)?;
    }
    for i in to..from {
        pods.pod(i)?.signal_term()?;
    }
    // Within the hand-off: one pod killed, wanted ones restarted.
    let kill_at = changed + Duration::from_millis(rng.gen_range(300..4_000));
    let mut killed = !cfg.kills;
    while (step.pauses.len() < moving.len() || !killed) && changed.elapsed() < HAND_OFF_TIMEOUT {
        if !killed && Instant::now() >= kill_at {
            killed = true;
            // Any pod still running: an old owner, a new one, or one being removed.
            let running: Vec<u32> = (0..from.max(to))
                .filter(|&i| pods.pods.get(i as usize).is_some_and(Supervisor::running))
                .collect();
            if !running.is_empty() {
                let victim = running[(rng.gen::<u64>() % running.len() as u64) as usize];
                eprintln!("rescale: SIGKILL pod {victim} (running: {running:?})");
                if pods.pod(victim)?.kill().is_some() {
                    step.killed.push(victim);
                }
            }
        }
        for i in 0..to {
            pods.ensure(i)?;
        }
        let positions = pods.positions();
        for &p in &moving {
            let owner = (p as u32) % to;
            let now = positions.get(&owner).and_then(|o| o.get(&p)).copied();
            if !step.pauses.contains_key(&p) && now >= before.get(&p).copied().or(Some(-1)) {
                step.pauses.insert(p, changed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..to {
        pods.ensure(i)?;
        pods.pod(i)?.wait_ready(Duration::from_secs(120));
    }
    // The removed pods are gone (a pod that takes too long is killed, as Kubernetes
    // does after the grace period).
    for i in to..from {
        let pod = pods.pod(i)?;
        match pod.wait(Duration::from_secs(60)) {
            Some(ended) => eprintln!("rescale: pod {i} stopped: {ended:?}"),
            None => {
                pod.kill();
            }
        }
    }
    Ok(step)
}

/// Runs instance 0 alone until it exits 0 (a few tries).
fn bounded_run(pods: &mut Pods, flags: &[&str]) -> anyhow::Result<()> {
    for _ in 0..4 {
        let pod = pods.pod(0)?;
        pod.kill();
        pod.start(None, flags)?;
        match pod.wait(Duration::from_secs(1800)) {
            Some(Ended::Code(0)) => return Ok(()),
            other => eprintln!(
                "rescale: final run ended {other:?}: {}",
                pod.log().lines().last().unwrap_or("")
            ),
        }
    }
    bail!(
        "the final bounded run never succeeded; see {}",
        pods.pod(0)?.log_path().display()
    )
}

fn processor_args(
    broker: &Broker,
    emu: &Emulator,
    api: &KubernetesApiDouble,
    retention_secs: i64,
) -> Vec<String> {
    let mut a = crate::supervisor::processor_args(broker, emu, TOPIC, DATASET, retention_secs);
    a.extend(
        [
            "--statefulset",
            STATEFULSET,
            "--kube-api",
            &api.url(),
            "--kube-namespace",
            NAMESPACE,
            "--topology-check-secs",
            "1",
        ]
        .map(str::to_owned),
    );
    a
}

#[cfg(test)]
mod tests {
    use super::moved;

    #[test]
    fn moved_partitions_are_those_whose_owner_changes() {
        assert_eq!(moved(8, 1, 2), vec![1, 3, 5, 7]);
        assert_eq!(moved(8, 4, 3), vec![3, 4, 5, 6, 7]);
        assert_eq!(moved(8, 2, 2), Vec::<i32>::new());
    }
}
