//! The Kafka side of the loop: which partitions this instance owns, where it resumes,
//! polling a batch, pausing, lag and progress reports.
//!
//! The source position lives in the state store, not in Kafka: on start the processor
//! reads its next offsets from RocksDB and `assign`s its partitions at exactly those
//! offsets (a partition it has never seen starts at the beginning). Offsets are also
//! committed to the consumer group, but only so lag can be monitored; nothing ever
//! reads them back. `assign` (not `subscribe`) also means no rebalance can move a
//! partition away mid-batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::identity::IdentityError;
use crate::log_end::{read_offsets, LogEndProbe};
use crate::pipeline::InputRecord;
use crate::shutdown::Shutdown;

/// Errors after which consuming cannot go on correctly: the topic or the checkpointed
/// position is gone. Anything else (a broker restarting) is retried by librdkafka.
fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownTopic)
            | Some(RDKafkaErrorCode::TopicAuthorizationFailed)
            | Some(RDKafkaErrorCode::Fatal)
            | Some(RDKafkaErrorCode::AutoOffsetReset)
            | Some(RDKafkaErrorCode::OffsetOutOfRange)
    )
}

/// The log under the topic's name is not the one the state consumed.
#[derive(Debug, thiserror::Error)]
pub enum LogMismatch {
    #[error(
        "partition {partition} holds another record at offset {offset} than the one the state consumed \
         there: the topic was deleted and re-created, or this is another cluster. Use a fresh state \
         directory for a new topic (and a fresh sink), or point at the original topic"
    )]
    OtherRecord { partition: i32, offset: i64 },
}

/// The consumer, the topic and the partitions this instance owns.
pub struct KafkaSource {
    consumer: BaseConsumer,
    topic: String,
    /// The topic's partition count at start.
    partitions: i32,
    owned: Vec<i32>,
    /// Partitions whose first polled record is the last one the state consumed, read
    /// back to check the log (see [`KafkaSource::assign`]).
    log_checks: std::cell::RefCell<BTreeMap<i32, (i64, u64)>>,
    /// The consumer's settings, for the log end probe's client.
    client_config: ClientConfig,
    /// Started by the first [`KafkaSource::lag`]; `None` inside if it could not start.
    log_end_probe: std::cell::OnceCell<Option<LogEndProbe>>,
}

/// How long the broker may hold a fetch that has no new records (librdkafka's
/// `fetch.wait.max.ms`; a `--kafka` property overrides it).
///
/// Why 25 ms, not librdkafka's 500 or the 100 paydedup had: Apache Kafka answers a
/// fetch as soon as it has records, so this only sets how often an idle consumer asks
/// (40 times a second). But tansu 0.6 holds every fetch for the whole wait, records or
/// not (its `fetch.rs` sleeps the remainder unconditionally), so there the wait is a
/// floor under every record's latency. Measured through tansu at 5,000 records/s
/// (`benches/e2e.rs`): Kafka timestamp → row in the sink's file p50/p99 103/164 ms at
/// 25 ms against 223/306 ms at 100; at 10 ms 81/136 ms. Catch-up throughput the same.
pub const FETCH_WAIT_MAX_MS: &str = "25";

/// The consumer's librdkafka settings: paydedup's own, then `properties` (the config
/// file's `[kafka]` table and `--kafka` flags), which override them.
fn consumer_config(
    settings: &KafkaSettings,
    properties: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A checkpointed offset outside the log (retention passed it, topic
        // recreated) must stop the processor, not silently jump to the end.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("queued.min.messages", "20000");
    for (k, v) in properties {
        cfg.set(k, v);
    }
    cfg
}

impl KafkaSource {
    /// Creates the consumer and works out the owned partitions from the topic's
    /// partition count (`owned_of`; see `topology`). The set may be empty: the caller
    /// decides what an instance that owns nothing does.
    pub fn connect(
        settings: &KafkaSettings,
        properties: &std::collections::BTreeMap<String, String>,
        owned_of: impl FnOnce(i32) -> Vec<i32>,
    ) -> anyhow::Result<KafkaSource> {
        let cfg = consumer_config(settings, properties);
        let consumer: BaseConsumer = cfg.create().context("creating the Kafka consumer")?;
        let partition_count = partition_count(&consumer, settings)?;
        let owned = owned_of(partition_count);
        Ok(KafkaSource {
            consumer,
            topic: settings.topic.clone(),
            partitions: partition_count,
            owned,
            log_checks: Default::default(),
            client_config: cfg,
            log_end_probe: Default::default(),
        })
    }

    pub fn owned(&self) -> &[i32] {
        &self.owned
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions
    }

    /// Assigns every owned partition where it resumes: one record *before* its
    /// checkpointed next offset when the checkpoint names the last record consumed
    /// (`last`: offset and fingerprint), at the next offset otherwise, at the
    /// beginning for a partition never read.
    ///
    /// That one record is read back and compared, not processed ([`Self::poll_batch`]):
    /// a topic deleted and re-created under the same name and partition count would
    /// otherwise be read from the old offsets in a new log, silently skipping its first
    /// records. Folding the check into the first fetch costs no start-up round trip.
    pub fn assign(
        &self,
        next_offset: impl Fn(i32) -> Option<i64>,
        last: &BTreeMap<i32, (i64, u64)>,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut checks = self.log_checks.borrow_mut();
        for &p in &self.owned {
            let next = next_offset(p);
            let offset = match (next, last.get(&p)) {
                (Some(n), Some(&(at, fingerprint))) if at + 1 == n => {
                    checks.insert(p, (at, fingerprint));
                    Offset::Offset(at)
                }
                (Some(n), _) => Offset::Offset(n),
                (None, _) => Offset::Beginning,
            };
            tpl.add_partition_offset(&self.topic, p, offset)?;
        }
        self.consumer.assign(&tpl).context("assigning partitions")?;
        tracing::info!(topic = %self.topic, partitions = ?self.owned, "Assigned partitions at checkpointed offsets.");
        Ok(())
    }

    /// The first record polled on a partition with a pending log check: it must be the
    /// last record the state consumed. Returns whether `m` was that record (consumed by
    /// the check, not to be processed).
    fn check_log(&self, m: &BorrowedMessage<'_>) -> Result<bool, LogMismatch> {
        let mut checks = self.log_checks.borrow_mut();
        let Some(&(offset, fingerprint)) = checks.get(&m.partition()) else {
            return Ok(false);
        };
        checks.remove(&m.partition());
        if m.offset() != offset || input_record(m).fingerprint() != fingerprint {
            return Err(LogMismatch::OtherRecord {
                partition: m.partition(),
                offset,
            });
        }
        Ok(true)
    }

    /// Polls up to `max` records: waits at most `timeout` for the first (less if a
    /// shutdown is requested), then up to `linger` from the first for more, then takes
    /// only what the consumer already holds. Records of one partition come in offset
    /// order.
    ///
    /// A batch does not wait to fill: under load the consumer holds more than `max`
    /// and batches are full at once; at a lower rate a batch is what arrived within
    /// the linger, committed then. (Waiting for `max` or `timeout` put up to `timeout`
    /// on every record's latency at a moderate rate: docs/benchmarks.md, thirty-sixth
    /// step.) The linger only bounds how many synced commits a second a slow stream
    /// makes (on a broker that answers every fetch at once, a batch per record).
    pub fn poll_batch(
        &self,
        max: usize,
        timeout: Duration,
        linger: Duration,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Vec<BorrowedMessage<'_>>> {
        // Until the first record: the poll's timeout; from it: the linger.
        let mut deadline = Instant::now() + timeout;
        let mut lingering = false;
        let mut messages = Vec::with_capacity(max);
        while messages.len() < max && !shutdown.requested() {
            let left = deadline.saturating_duration_since(Instant::now());
            // A linger longer than the timeout still looks up for a shutdown as often.
            match self.consumer.poll(left.min(timeout)) {
                // No record in time; when lingering, one more look (a zero wait) takes
                // what arrived meanwhile, and the batch ends with the first empty one.
                None if !lingering || left.is_zero() => break,
                None => {}
                Some(Ok(m)) => {
                    if !lingering {
                        lingering = true;
                        deadline = Instant::now() + linger;
                    }
                    if !self.check_log(&m)? {
                        messages.push(m);
                    }
                }
                Some(Err(e)) if is_fatal(&e) && !self.log_checks.borrow().is_empty() => {
                    let pending: Vec<(i32, i64)> = self
                        .log_checks
                        .borrow()
                        .iter()
                        .map(|(p, (o, _))| (*p, *o))
                        .collect();
                    return Err(e).context(format!(
                        "consuming from Kafka; the last records the state consumed (partition, offset) {pending:?} \
                         are not in the log: the topic was deleted and re-created, retention passed them, or \
                         this is another cluster"
                    ));
                }
                Some(Err(e)) if is_fatal(&e) => return Err(e).context("consuming from Kafka"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying.");
                    break;
                }
            }
        }
        Ok(messages)
    }

    /// Fails when the topic no longer has the partition count it had at start.
    ///
    /// Producers that key by `transaction_id` place an id at `hash mod N`; when N
    /// changes, ids move partition and per-partition deduplication cannot continue
    /// across the change. Partitions added while running would otherwise be silently
    /// left out: not consumed, not in the lag, and a bounded run would exit "caught up"
    /// without them. A metadata request that fails is only logged (the broker may be
    /// restarting); the next check asks again.
    pub fn check_partition_count(&self) -> Result<(), IdentityError> {
        let md = match self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
        {
            Ok(md) => md,
            Err(e) => {
                tracing::warn!(error = %e, "Could not fetch the topic's metadata.");
                return Ok(());
            }
        };
        let now = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32);
        match now {
            Some(n) if n != self.partitions => Err(IdentityError::Partitions {
                topic: self.topic.clone(),
                stored: self.partitions,
                requested: n,
            }),
            _ => Ok(()),
        }
    }

    /// Stops fetching from every owned partition (backpressure).
    pub fn pause(&self) -> anyhow::Result<()> {
        Ok(self.consumer.pause(&self.assignment())?)
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        Ok(self.consumer.resume(&self.assignment())?)
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.owned {
            tpl.add_partition(&self.topic, p);
        }
        tpl
    }

    /// The log end offset (high watermark) of every owned partition.
    pub fn log_ends(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let offsets = read_offsets(
            &self.consumer,
            &self.topic,
            &self.owned,
            Duration::from_secs(30),
        )
        .map_err(|(p, e)| {
            anyhow::Error::from(e).context(format!("reading the end of partition {p}"))
        })?;
        Ok(offsets.into_iter().map(|(p, _, high)| (p, high)).collect())
    }

    /// Lag per owned partition (high watermark minus the checkpointed next offset) from
    /// the log end probe's latest measurement, without waiting for the broker; `None`
    /// before the first measurement and when the broker did not answer for some
    /// partition. The first call starts the probe, measuring every `period`.
    pub fn lag(
        &self,
        period: Duration,
        next_offset: impl Fn(i32) -> Option<i64>,
    ) -> Option<Vec<(i32, i64)>> {
        let probe = self.log_end_probe.get_or_init(|| {
            let client = self.client_config.create().map_err(anyhow::Error::from);
            let probe = client.and_then(|c| {
                LogEndProbe::start(c, self.topic.clone(), self.owned.clone(), period)
                    .map_err(anyhow::Error::from)
            });
            probe
                .inspect_err(|e| {
                    tracing::error!(error = %format!("{e:#}"), "Could not start the log end probe; lag is not measured.");
                })
                .ok()
        });
        let offsets = probe.as_ref()?.latest()?.offsets?;
        Some(
            offsets
                .into_iter()
                .map(|(p, low, high)| (p, (high - next_offset(p).unwrap_or(low)).max(0)))
                .collect(),
        )
    }

    /// Publishes the checkpointed offsets to the consumer group, for lag monitoring only.
    pub fn report_progress(&self, next_offset: impl Fn(i32) -> Option<i64>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.owned {
            if let Some(o) = next_offset(p) {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Group offset commit (monitoring only) failed.");
            }
        }
        Ok(())
    }
}

/// Borrows the pipeline's view of each polled record.
pub fn input_records<'a>(messages: &'a [BorrowedMessage<'_>]) -> Vec<InputRecord<'a>> {
    messages.iter().map(input_record).collect()
}

fn input_record<'a>(m: &'a BorrowedMessage<'_>) -> InputRecord<'a> {
    InputRecord {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        payload: m.payload().unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

fn partition_count(consumer: &BaseConsumer, settings: &KafkaSettings) -> anyhow::Result<i32> {
    let (topic, brokers) = (&settings.topic, &settings.brokers);
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .with_context(|| format!("cannot reach Kafka at {brokers} (fetching metadata)"))?;
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic `{topic}` not found on {brokers}"))?;
    if let Some(err) = found.error() {
        bail!("topic `{topic}` is not available on {brokers}: {err:?}");
    }
    if found.partitions().is_empty() {
        bail!("topic `{topic}` does not exist on {brokers}");
    }
    Ok(found.partitions().len() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;

    fn config(args: &[&str]) -> ClientConfig {
        let c = RunConfig::parse_layered(args.iter().copied()).unwrap();
        consumer_config(&c.kafka, &c.kafka_properties())
    }

    /// The fetch wait is paydedup's (a floor under every record's latency on tansu),
    /// and an operator's `--kafka` setting of it wins.
    #[test]
    fn the_fetch_wait_is_25_ms_unless_a_kafka_property_sets_it() {
        assert_eq!(config(&[]).get("fetch.wait.max.ms"), Some("25"));
        let set = config(&["--kafka", "fetch.wait.max.ms=10"]);
        assert_eq!(set.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(set.get("auto.offset.reset"), Some("error"));
    }
}
