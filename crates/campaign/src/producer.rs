//! The producer: the real simulator, run chunk after chunk on a thread, each chunk
//! with its own seed and manifest, event times contiguous from chunk to chunk (so the
//! manifests add up to the ground truth of the whole topic). Broker faults pause it
//! between chunks: a record the broker acknowledged is then in the log exactly once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use chrono::{DateTime, Duration, Utc};
use paydedup_manifest::Manifest;
use paydedup_testkit::binary;

/// How many times the target production may go on while faults are still injected
/// (a slow machine injects slowly; the faults need traffic to land in).
const PRODUCTION_CAP: u64 = 6;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub brokers: String,
    pub topic: String,
    pub seed: u64,
    /// Produce at least this many records in all.
    pub events: u64,
    pub chunk: u64,
    /// Records per second sent (so production lasts while faults are injected).
    pub rate: u64,
    /// Payments per second of event time.
    pub event_rate: u64,
    /// The processor's dedup retention (the ground truth must expire ids as it does).
    pub retention_secs: i64,
    /// One payment sent this many times over the first chunks, if set.
    pub storm: Option<StormPlan>,
    /// Hours of event time the planned clock skews may add (each +1 h skew moves the
    /// stream an hour ahead; the stream must still end in the past).
    pub skew_hours_ahead: u32,
    pub dir: PathBuf,
}

/// A duplicate storm over consecutive chunks (so over processor restarts), long enough
/// in event time to cross the retention edge: the id expires and comes back.
#[derive(Debug, Clone)]
pub struct StormPlan {
    pub transaction_id: String,
    pub copies: u64,
    /// Chunk the storm starts in, and how many chunks it lasts.
    pub first_chunk: u64,
    pub chunks: u64,
}

#[derive(Default)]
struct Control {
    paused: bool,
    finishing: bool,
    busy: bool,
    produced: u64,
    manifests: Vec<Manifest>,
    /// Clock skews (seconds) the next chunks are produced with, one chunk each.
    skews: std::collections::VecDeque<i64>,
    error: Option<String>,
}

pub struct Producer {
    control: Arc<(Mutex<Control>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Producer {
    pub fn start(cfg: ProducerConfig) -> Producer {
        let control = Arc::new((Mutex::new(Control::default()), Condvar::new()));
        let shared = control.clone();
        let handle = std::thread::spawn(move || produce(&cfg, &shared));
        Producer {
            control,
            handle: Some(handle),
        }
    }

    /// Stops starting chunks and waits for the running one to end.
    pub fn pause(&self) {
        let (lock, cv) = &*self.control;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        c.paused = true;
        while c.busy {
            c = cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        let (lock, cv) = &*self.control;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        c.paused = false;
        cv.notify_all();
    }

    /// Produces the next chunk partly from a producer whose clock is `secs` off.
    pub fn skew_next_chunk(&self, secs: i64) {
        let (lock, cv) = &*self.control;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        c.skews.push_back(secs);
        cv.notify_all();
    }

    /// Whether production is going on now.
    pub fn busy(&self) -> bool {
        let (lock, _) = &*self.control;
        lock.lock().map(|c| c.busy).unwrap_or(false)
    }

    /// Produces what is left of the target and returns every chunk's manifest.
    pub fn finish(mut self) -> anyhow::Result<Vec<Manifest>> {
        {
            let (lock, cv) = &*self.control;
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            c.finishing = true;
            c.paused = false;
            cv.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let (lock, _) = &*self.control;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = c.error.take() {
            bail!("the simulator failed: {e}");
        }
        Ok(std::mem::take(&mut c.manifests))
    }
}

fn produce(cfg: &ProducerConfig, control: &(Mutex<Control>, Condvar)) {
    let (lock, cv) = control;
    // Event time runs from far enough back that the last chunk still ends in the past
    // (even if production goes on PRODUCTION_CAP times longer than planned while faults
    // are injected):
    // each chunk's events, the minute between chunks, the hours skews may add.
    let chunks = cfg.events / cfg.chunk.max(1) + 1;
    let span = Duration::seconds((cfg.events / cfg.event_rate.max(1) + chunks * 60) as i64);
    let mut start: DateTime<Utc> = Utc::now()
        - span * PRODUCTION_CAP as i32
        - Duration::hours(2 + i64::from(cfg.skew_hours_ahead));
    let mut index = 0u64;
    let mut storm_alive_since: Option<DateTime<Utc>> = None;
    loop {
        {
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if c.error.is_some() {
                    return;
                }
                // Before finishing, production goes on (faults need traffic), up to
                // PRODUCTION_CAP times the target; past it, it waits (not ends): a clock
                // skew planned later still gets its chunk.
                let target = if c.finishing {
                    cfg.events
                } else {
                    cfg.events * PRODUCTION_CAP
                };
                let capped = c.produced >= target && c.skews.is_empty();
                if capped && c.finishing {
                    return;
                }
                if !(capped || (c.paused && !c.finishing)) {
                    break;
                }
                c = cv.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            c.busy = true;
        }
        let skew = {
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            c.skews.pop_front()
        };
        let storm = cfg
            .storm
            .as_ref()
            .filter(|s| (s.first_chunk..s.first_chunk + s.chunks).contains(&index))
            .map(|s| {
                (
                    s.transaction_id.as_str(),
                    s.copies.div_ceil(s.chunks.max(1)),
                    storm_alive_since,
                )
            });
        let result = chunk(cfg, index, start, skew, storm);
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        c.busy = false;
        // The next chunk starts a minute of event time after this one ends (after its
        // largest event time, which a skewed clock may have moved an hour ahead).
        start += Duration::seconds((cfg.chunk / cfg.event_rate.max(1)) as i64 + 60);
        match result {
            Ok(m) => {
                if let Some(max) = m.max_event_time {
                    start = start.max(max + Duration::seconds(60));
                }
                if let Some(s) = &m.storm {
                    storm_alive_since = s.alive_since;
                }
                c.produced += m.totals.records;
                c.manifests.push(m);
            }
            Err(e) => c.error = Some(format!("{e:#}")),
        }
        cv.notify_all();
        drop(c);
        index += 1;
    }
}

fn chunk(
    cfg: &ProducerConfig,
    index: u64,
    start: DateTime<Utc>,
    skew: Option<i64>,
    storm: Option<(&str, u64, Option<DateTime<Utc>>)>,
) -> anyhow::Result<Manifest> {
    let manifest = cfg.dir.join(format!("manifest-{index:05}.json"));
    let mut cmd = Command::new(binary("paydedup-simulator")?);
    if let Some(secs) = skew {
        cmd.args([
            "--skew-rate",
            "0.002",
            "--clock-skew-secs",
            &secs.to_string(),
        ]);
    }
    if let Some((id, copies, alive_since)) = storm {
        cmd.args(["--storm-id", id, "--storm-copies", &copies.to_string()]);
        if let Some(t) = alive_since {
            cmd.args(["--storm-alive-since", &t.to_rfc3339()]);
        }
    }
    let out = cmd
        .args(["--brokers", &cfg.brokers, "--topic", &cfg.topic])
        .args(["--retention-secs", &cfg.retention_secs.to_string()])
        .args(["--count", &cfg.chunk.to_string()])
        .args([
            "--seed",
            &(cfg.seed.wrapping_mul(1_000_003) + index).to_string(),
        ])
        .args(["--start-time", &start.to_rfc3339()])
        .args(["--event-rate", &cfg.event_rate.to_string()])
        .args(["--rate", &cfg.rate.to_string()])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--quiet")
        .output()
        .context("running the simulator")?;
    if !out.status.success() {
        bail!(
            "chunk {index}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Manifest::load(&manifest)?)
}
