//! The Kafka loop: assign, poll a batch, process, commit, repeat.
//!
//! The source position lives in the state store, not in Kafka: on start the processor
//! reads its next offsets from RocksDB and `assign`s its partitions at exactly those
//! offsets (a partition it has never seen starts at the beginning). Offsets are also
//! committed to the consumer group after each batch, but only so lag can be monitored;
//! nothing ever reads them back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use paydedup_event::DecodeLimits;
use paydedup_fraud::FraudConfig;
use paydedup_sink::{BigQuerySink, FileSink, Sink};
use paydedup_state::{StateStore, StoreOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::{Settings, SinkSpec};
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::{watermark, InputRecord, Pipeline, PipelineConfig};
use crate::relay::{OutboxRelay, RelayConfig};
use crate::shutdown::Shutdown;

const SEC: i64 = 1_000_000;

/// Why the loop ended normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Signal,
    CaughtUp,
}

fn consumer(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A checkpointed offset outside the log (retention passed it, topic recreated)
        // must stop the processor, not silently jump to the end.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        .set("queued.min.messages", "20000");
    for (k, v) in &settings.kafka {
        cfg.set(k, v);
    }
    cfg.create().context("creating the Kafka consumer")
}

/// The partitions this instance owns: p with p mod count = index.
pub fn owned_partitions(partition_count: i32, index: i32, count: i32) -> Vec<i32> {
    (0..partition_count)
        .filter(|p| p % count == index)
        .collect()
}

fn topic_partitions(consumer: &BaseConsumer, settings: &Settings) -> anyhow::Result<i32> {
    let md = consumer
        .fetch_metadata(Some(&settings.topic), Duration::from_secs(15))
        .with_context(|| {
            format!(
                "cannot reach Kafka at {} (fetching metadata)",
                settings.brokers
            )
        })?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == settings.topic)
        .ok_or_else(|| {
            anyhow!(
                "topic `{}` not found on {}",
                settings.topic,
                settings.brokers
            )
        })?;
    if let Some(err) = topic.error() {
        bail!(
            "topic `{}` is not available on {}: {:?}",
            settings.topic,
            settings.brokers,
            err
        );
    }
    if topic.partitions().is_empty() {
        bail!(
            "topic `{}` does not exist on {}",
            settings.topic,
            settings.brokers
        );
    }
    Ok(topic.partitions().len() as i32)
}

fn open_sink(spec: &SinkSpec, store: &Arc<StateStore>) -> anyhow::Result<Box<dyn Sink>> {
    match spec {
        SinkSpec::File(dir) => {
            Ok(Box::new(FileSink::open(dir).with_context(|| {
                format!("opening the file sink at {}", dir.display())
            })?))
        }
        SinkSpec::BigQuery(cfg) => Ok(Box::new(
            BigQuerySink::open(cfg, store.clone()).with_context(|| {
                format!(
                    "opening BigQuery {}.{} at {}",
                    cfg.project, cfg.dataset, cfg.rest_url
                )
            })?,
        )),
    }
}

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

pub fn run(
    settings: &Settings,
    metrics: Metrics,
    ready: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<Exit> {
    let fraud = match &settings.fraud_config {
        Some(p) => FraudConfig::load(p)?,
        None => FraudConfig::default(),
    };
    let store = Arc::new(
        StateStore::open(
            &settings.state_dir,
            &StoreOptions {
                sync: settings.sync,
                dedup_retention_micros: Some(settings.retention_secs * SEC),
                ..StoreOptions::default()
            },
        )
        .with_context(|| {
            format!(
                "opening the state store at {}",
                settings.state_dir.display()
            )
        })?,
    );
    let mut pipeline = Pipeline::load(
        PipelineConfig {
            allowed_lateness_micros: settings.allowed_lateness_secs * SEC,
            retention_micros: settings.retention_secs * SEC,
            window_micros: settings.window_secs * SEC,
            decode: DecodeLimits {
                future_tolerance: chrono::Duration::seconds(settings.future_tolerance_secs),
                ..DecodeLimits::default()
            },
            fraud,
        },
        &store,
    )?;

    let consumer = consumer(settings)?;
    let partition_count = topic_partitions(&consumer, settings)?;
    let owned = owned_partitions(
        partition_count,
        settings.instance_index,
        settings.instance_count,
    );
    if owned.is_empty() {
        bail!(
            "instance {} of {} owns no partitions of `{}` ({} partitions)",
            settings.instance_index,
            settings.instance_count,
            settings.topic,
            partition_count
        );
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &owned {
        let offset = pipeline
            .next_offset(p)
            .map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(&settings.topic, p, offset)?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    tracing::info!(topic = %settings.topic, partitions = ?owned, "Assigned partitions at checkpointed offsets.");

    let relay = OutboxRelay::spawn(
        store.clone(),
        open_sink(&settings.sink, &store)?,
        RelayConfig {
            batch_rows: settings.relay_batch,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(settings.sink_max_backoff_ms),
            give_up_after: Duration::from_secs(settings.sink_give_up_secs),
            dead_letter_dir: settings.state_dir.join("dead-letter"),
        },
        metrics.clone(),
    )?;
    spawn_ttl_compaction(store.clone(), settings.ttl_compaction_secs);
    ready.set(true);

    let result = consume(
        settings,
        &consumer,
        &store,
        &mut pipeline,
        &relay,
        &owned,
        &metrics,
        &shutdown,
    );
    ready.set(false);
    let result = result.and_then(|exit| {
        // Deliver what is committed before exiting; a later start would anyway.
        relay
            .flush(Duration::from_secs(settings.sink_give_up_secs.max(30)))
            .map_err(|e| anyhow!("delivering the outbox before exit: {e}"))?;
        Ok(exit)
    });
    relay.stop();
    result
}

#[allow(clippy::too_many_arguments)]
fn consume(
    settings: &Settings,
    consumer: &BaseConsumer,
    store: &StateStore,
    pipeline: &mut Pipeline,
    relay: &OutboxRelay,
    owned: &[i32],
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Exit> {
    let batch_timeout = Duration::from_millis(settings.batch_timeout_ms);
    let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
    let mut last_record: HashMap<i32, Instant> =
        owned.iter().map(|&p| (p, Instant::now())).collect();
    let mut paused = false;
    let mut last_group_commit = Instant::now();
    let mut last_caught_up_check = Instant::now();

    loop {
        if shutdown.requested() {
            tracing::info!("Shutdown requested; the last batch is committed.");
            return Ok(Exit::Signal);
        }
        if let Some(failure) = relay.failure() {
            bail!("the outbox relay stopped: {failure}");
        }

        // Backpressure: stop consuming while the outbox is over its bound.
        let depth = relay.depth();
        if !paused && depth >= settings.outbox_bound {
            consumer.pause(&assignment(settings, owned)?)?;
            paused = true;
            metrics.paused.set(1);
            tracing::warn!(
                outbox_depth = depth,
                bound = settings.outbox_bound,
                "Outbox full; pausing consumption."
            );
        } else if paused && depth < settings.outbox_bound / 2 {
            consumer.resume(&assignment(settings, owned)?)?;
            paused = false;
            metrics.paused.set(0);
            tracing::info!(
                outbox_depth = depth,
                "Outbox drained; resuming consumption."
            );
        }

        // Fill a batch, bounded by count and time.
        let started = Instant::now();
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::with_capacity(settings.batch_size);
        while messages.len() < settings.batch_size {
            let left = batch_timeout.saturating_sub(started.elapsed());
            if left.is_zero() || shutdown.requested() {
                break;
            }
            match consumer.poll(left) {
                None => break,
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) if is_fatal(&e) => return Err(e).context("consuming from Kafka"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying.");
                    break;
                }
            }
        }

        if messages.is_empty() {
            if paused {
                continue;
            }
            if last_caught_up_check.elapsed() >= Duration::from_millis(500) {
                last_caught_up_check = Instant::now();
                let caught_up = update_lag(consumer, settings, pipeline, owned, metrics)?;
                if caught_up && settings.exit_when_caught_up {
                    if settings.drain && pipeline.open_windows() > 0 {
                        let (batch, closed) = pipeline.drain(owned);
                        let rows = batch.outbox_rows();
                        store.commit(batch)?;
                        relay.committed(rows);
                        tracing::info!(
                            windows = closed,
                            "Drained open windows at the end of the input."
                        );
                    }
                    if relay.depth() == 0 {
                        tracing::info!("Caught up and delivered; exiting.");
                        return Ok(Exit::CaughtUp);
                    }
                }
            }
            publish_watermarks(pipeline, owned, &last_record, idle_timeout, metrics);
            continue;
        }

        let records: Vec<InputRecord<'_>> = messages
            .iter()
            .map(|m| InputRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                payload: m.payload().unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis(),
            })
            .collect();
        for r in &records {
            last_record.insert(r.partition, Instant::now());
        }
        let (mut batch, stats) = pipeline.process(&records, store)?;
        // The compaction filter may only use watermarks that are committed.
        // NOTE: the minimum over *all* owned partitions, idle ones included: an idle
        // partition's keys are still alive under its own watermark.
        let horizon = owned.iter().filter_map(|p| pipeline.watermark(*p)).min();
        if let Some(h) = horizon {
            batch.set_horizon(h);
        }
        let rows = batch.outbox_rows();
        let commit_started = Instant::now();
        store
            .commit(batch)
            .context("committing the batch to the state store")?;
        let commit_secs = commit_started.elapsed().as_secs_f64();
        if let Some(h) = horizon {
            store.horizon().advance(h);
        }
        relay.committed(rows);
        metrics.batch_processed(&stats, started.elapsed().as_secs_f64(), commit_secs);
        publish_watermarks(pipeline, owned, &last_record, idle_timeout, metrics);
        drop(records);
        drop(messages);

        // Progress for lag monitoring only; the real position is in the state store.
        if last_group_commit.elapsed() >= Duration::from_secs(1) {
            last_group_commit = Instant::now();
            let mut tpl = TopicPartitionList::new();
            for &p in owned {
                if let Some(o) = pipeline.next_offset(p) {
                    tpl.add_partition_offset(&settings.topic, p, Offset::Offset(o))?;
                }
            }
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!(error = %e, "Group offset commit (monitoring only) failed.");
                }
            }
        }
    }
}

fn assignment(settings: &Settings, owned: &[i32]) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for &p in owned {
        tpl.add_partition(&settings.topic, p);
    }
    Ok(tpl)
}

fn combined_watermark(
    pipeline: &Pipeline,
    owned: &[i32],
    last_record: &HashMap<i32, Instant>,
    idle_timeout: Duration,
) -> Option<i64> {
    watermark::combined(owned.iter().map(|p| {
        let idle = last_record
            .get(p)
            .is_none_or(|t| t.elapsed() >= idle_timeout);
        (pipeline.watermark(*p), idle)
    }))
}

fn publish_watermarks(
    pipeline: &Pipeline,
    owned: &[i32],
    last_record: &HashMap<i32, Instant>,
    idle_timeout: Duration,
    metrics: &Metrics,
) {
    for &p in owned {
        if let Some(wm) = pipeline.watermark(p) {
            metrics
                .watermark
                .with_label_values(&[&p.to_string()])
                .set(wm / SEC);
        }
        if let Some(o) = pipeline.next_offset(p) {
            metrics
                .next_offset
                .with_label_values(&[&p.to_string()])
                .set(o);
        }
    }
    if let Some(wm) = combined_watermark(pipeline, owned, last_record, idle_timeout) {
        metrics.combined_watermark.set(wm / SEC);
    }
}

/// Updates the lag gauges; true when every owned partition is caught up.
fn update_lag(
    consumer: &BaseConsumer,
    settings: &Settings,
    pipeline: &Pipeline,
    owned: &[i32],
    metrics: &Metrics,
) -> anyhow::Result<bool> {
    let mut caught_up = true;
    for &p in owned {
        let (low, high) =
            match consumer.fetch_watermarks(&settings.topic, p, Duration::from_secs(5)) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "Could not fetch watermarks.");
                    return Ok(false);
                }
            };
        let next = pipeline.next_offset(p).unwrap_or(low);
        let lag = (high - next).max(0);
        metrics.lag.with_label_values(&[&p.to_string()]).set(lag);
        if lag > 0 {
            caught_up = false;
        }
    }
    Ok(caught_up)
}

/// Runs a full compaction of the TTL column families periodically, so expired keys
/// leave the disk even when the write rate is too low to trigger compactions.
fn spawn_ttl_compaction(store: Arc<StateStore>, every_secs: u64) {
    if every_secs == 0 {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ttl-compaction".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(every_secs));
            if Arc::strong_count(&store) == 1 {
                return;
            }
            if let Err(e) = store.compact() {
                tracing::warn!(error = %e, "TTL compaction failed.");
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ownership_splits_partitions() {
        assert_eq!(owned_partitions(4, 0, 1), vec![0, 1, 2, 3]);
        assert_eq!(owned_partitions(5, 1, 2), vec![1, 3]);
        assert_eq!(owned_partitions(1, 1, 2), Vec::<i32>::new());
    }
}
