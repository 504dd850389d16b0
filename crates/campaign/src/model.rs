//! The dedup model: the whole topic read back with a plain consumer and replayed
//! through the dedup rule as the spec states it (ARCHITECTURE.md, "Dedup semantics"),
//! then compared with the index the processor's state holds at the end.
//!
//! Per partition, in offset order: a record that does not decode changes nothing; a
//! valid event older than `watermark = max event time − lateness` is late and changes
//! nothing; otherwise an id with no entry alive (`first + retention >= watermark`) gets
//! one (its event time, content hash, partition, offset), and the max event time
//! advances. The entries alive at the end, in the state's byte layout, are counted and
//! digested exactly as `paydedup-processor state --live-dedup` does; equal digests mean
//! the index that survived every fault is the one an uninterrupted replay builds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use paydedup_event::{content_hash, decode, DecodeLimits};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// One partition's live dedup entries: (watermark, count, digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveIndex {
    pub watermark: Option<i64>,
    pub live: u64,
    pub digest: u64,
}

#[derive(Default)]
struct PartitionModel {
    max_event: Option<i64>,
    /// Dedup key → (first event time, content hash, offset).
    seen: HashMap<[u8; 16], (i64, u128, i64)>,
}

pub struct DedupModel {
    lateness: i64,
    retention: i64,
    limits: DecodeLimits,
    /// What "now" was for the processor's future check: any time after production.
    now: DateTime<Utc>,
    partitions: BTreeMap<i32, PartitionModel>,
}

impl DedupModel {
    pub fn new(lateness_secs: i64, retention_secs: i64) -> DedupModel {
        DedupModel {
            lateness: lateness_secs * 1_000_000,
            retention: retention_secs * 1_000_000,
            limits: DecodeLimits::default(),
            now: Utc::now(),
            partitions: BTreeMap::new(),
        }
    }

    fn watermark(&self, m: &PartitionModel) -> Option<i64> {
        m.max_event.map(|t| t - self.lateness)
    }

    /// One record, in offset order within its partition.
    pub fn observe(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
    ) {
        // The processor judges "in the future" against min(Kafka timestamp, its clock).
        let reference = timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map_or(self.now, |t| t.min(self.now));
        let Ok(event) = decode(payload, reference, &self.limits) else {
            return;
        };
        let (lateness, retention) = (self.lateness, self.retention);
        let m = self.partitions.entry(partition).or_default();
        let t = event.event_time_micros();
        let wm = m.max_event.map(|x| x - lateness);
        if wm.is_some_and(|w| t < w) {
            return;
        }
        let key = xxh3_128(event.transaction_id.as_str().as_bytes()).to_be_bytes();
        let alive = m
            .seen
            .get(&key)
            .is_some_and(|(first, _, _)| wm.is_none_or(|w| first + retention >= w));
        if !alive {
            m.seen.insert(key, (t, content_hash(&event).0, offset));
        }
        m.max_event = Some(m.max_event.map_or(t, |x| x.max(t)));
        if m.seen.len() > 2_000_000 {
            // Expired stays expired (the watermark only grows): forget those.
            if let Some(w) = m.max_event.map(|x| x - lateness) {
                m.seen.retain(|_, (first, _, _)| *first + retention >= w);
            }
        }
    }

    /// The entries alive at the end, per partition.
    pub fn live(&self) -> BTreeMap<i32, LiveIndex> {
        let mut out = BTreeMap::new();
        for (p, m) in &self.partitions {
            let wm = self.watermark(m);
            let mut idx = LiveIndex {
                watermark: wm,
                live: 0,
                digest: 0,
            };
            for (key, (first, hash, offset)) in &m.seen {
                if wm.is_some_and(|w| first + self.retention < w) {
                    continue;
                }
                // The state's layout: 16-byte key, then time, hash, partition, offset
                // (big-endian).
                let mut b = Vec::with_capacity(52);
                b.extend_from_slice(key);
                b.extend_from_slice(&first.to_be_bytes());
                b.extend_from_slice(&hash.to_be_bytes());
                b.extend_from_slice(&p.to_be_bytes());
                b.extend_from_slice(&offset.to_be_bytes());
                idx.live += 1;
                idx.digest = idx.digest.wrapping_add(xxh3_64(&b));
            }
            out.insert(*p, idx);
        }
        out
    }
}

/// Replays every record of `topic` (partitions `0..partitions`) through the model.
pub fn replay_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    model: &mut DedupModel,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "paydedup-campaign-model")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the model's consumer")?;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .with_context(|| format!("reading the end of partition {p}"))?;
        if high > 0 {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut read = 0u64;
    let mut idle = 0;
    while next.iter().any(|(p, n)| *n < ends[p]) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(msg)) => {
                idle = 0;
                let (p, o) = (msg.partition(), msg.offset());
                if next.get(&p) != Some(&o) {
                    bail!(
                        "partition {p}: read offset {o}, expected {:?}",
                        next.get(&p)
                    );
                }
                model.observe(
                    p,
                    o,
                    msg.timestamp().to_millis(),
                    msg.payload().unwrap_or(&[]),
                );
                next.insert(p, o + 1);
                read += 1;
            }
            Some(Err(e)) => bail!("reading the topic back: {e}"),
            None => {
                idle += 1;
                if idle > 120 {
                    bail!("reading the topic back stalled at {next:?} of {ends:?}");
                }
            }
        }
    }
    Ok(read)
}

/// The processor's own account (`state --live-dedup --json`).
pub fn state_live_dedup(state_dir: &std::path::Path) -> anyhow::Result<BTreeMap<i32, LiveIndex>> {
    let out = std::process::Command::new(paydedup_testkit::binary("paydedup-processor")?)
        .args(["state", "--live-dedup", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .context("running `state --live-dedup`")?;
    if !out.status.success() {
        bail!(
            "`state --live-dedup` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing `state --live-dedup`")?;
    let mut res = BTreeMap::new();
    for (p, l) in v
        .as_object()
        .context("`state --live-dedup` printed no object")?
    {
        res.insert(
            p.parse::<i32>().context("partition")?,
            LiveIndex {
                watermark: l["watermark"].as_i64(),
                live: l["live"].as_u64().unwrap_or(0),
                digest: l["digest"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(res)
}

/// Every difference between the model and the state, in words.
pub fn compare(model: &BTreeMap<i32, LiveIndex>, state: &BTreeMap<i32, LiveIndex>) -> Vec<String> {
    let mut out = Vec::new();
    for p in model
        .keys()
        .chain(state.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (m, s) = (model.get(p), state.get(p));
        if m != s {
            out.push(format!(
                "dedup index of partition {p}: the state holds {s:?}, a replay of the input gives {m:?}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str, secs: i64) -> Vec<u8> {
        let t = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        serde_json::to_vec(&serde_json::json!({
            "transaction_id": id,
            "event_time": t.to_rfc3339(),
            "amount_minor": 1999,
            "currency": "USD",
            "merchant_id": "m-42",
            "merchant_category": "5411",
            "card_fingerprint": "9f86d081884c7d659a2feaa0c55ad015",
            "card_country": "US",
            "customer_id": "c-7",
            "ip_address": "203.0.113.7",
            "ip_country": "US",
            "device_id": "d-1",
            "region": "us-east",
            "payment_method": "card",
            "schema_version": 1
        }))
        .unwrap()
    }

    #[test]
    fn an_id_expires_after_the_retention_and_late_records_change_nothing() {
        let mut m = DedupModel::new(300, 600);
        m.observe(0, 0, None, &payment("a", 0));
        m.observe(0, 1, None, &payment("a", 10)); // duplicate: no new entry
        m.observe(0, 2, None, b"{not json");
        m.observe(0, 3, None, &payment("b", 1_000)); // wm 700: "a" (0 + 600 < 700) expired
        m.observe(0, 4, None, &payment("late", 100)); // late: no entry
        let live = m.live();
        assert_eq!(live[&0].live, 1);
        assert_eq!(
            live[&0].watermark,
            Some((1_700_000_000 + 1_000 - 300) * 1_000_000)
        );
        m.observe(0, 5, None, &payment("a", 1_001)); // new again, at offset 5
        assert_eq!(m.live()[&0].live, 2);
        assert_ne!(m.live()[&0].digest, live[&0].digest);
    }
}
