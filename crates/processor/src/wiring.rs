//! Wiring: builds a running [`Processor`] from a [`RunConfig`] and runs it.
//!
//! Order matters: the state store opens first (it holds the position); owned
//! partitions it holds nothing for but the sink holds rows for are rebuilt from the
//! sink (`restore`); the pipeline
//! loads its in-memory view from it, the consumer is assigned at the checkpointed
//! offsets (one record early, to check the log), state and sink are checked to agree
//! (`agreement`), the relay starts on whatever the outbox already holds, and only then
//! does `/readyz` turn ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use paydedup_event::DecodeLimits;
use paydedup_fraud::FraudConfig;
use paydedup_sink::{BigQuerySink, FileSink, Sink, SinkError};
use paydedup_state::{Forgotten, StateError, StateStore, StoreOptions, Table};

use crate::activity::PartitionActivity;
use crate::agreement::{self, AgreementError};
use crate::checkpoint::Checkpoint;
use crate::config::{RunConfig, SinkTarget};
use crate::health::{self, Readiness};
use crate::identity::{self, StateIdentity};
use crate::kafka::KafkaSource;
use crate::metrics::events::{
    DedupIndexMeasured, FraudLogMeasured, FraudMemoryMeasured, OwnershipChanged,
    PartitionsRestored, StateSizeMeasured,
};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::processor::{Exit, LoopSettings, Processor, RescaleWatch};
use crate::relay::{OutboxRelay, RelayConfig};
use crate::restore::{self, rebuild::RebuildConfig, RestoreError, RestoreReport};
use crate::shutdown::Shutdown;
use crate::topology::{owned_partitions, Topology};

/// A duration as i64 microseconds (the pipeline's unit). Settings are bounded far
/// below the overflow (see `config::parse`).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Runs the processor until a signal, the end of a bounded run, or an error.
///
/// With a count that follows a StatefulSet, one process runs one [`Processor`] per
/// instance count it sees: when the count changes the processor stops (delivering what
/// it can), and the next one starts on the new set of partitions — forgetting those it
/// handed over, restoring those it took over from the sink.
pub fn run(config: &RunConfig) -> anyhow::Result<Exit> {
    let shutdown = Shutdown::install()?;
    let metrics = Metrics::new();
    let ready = Readiness::default();
    let addr = health::serve(config.process.metrics_addr, metrics.clone(), ready.clone())?;
    let topology = Topology::from_settings(&config.instances)?;
    tracing::info!(metrics = %addr, brokers = %config.kafka.brokers, topic = %config.kafka.topic,
        instance = topology.index, instances = topology.count.get(), "Processor starting.");
    let flush_timeout = config.relay.sink_give_up.max(Duration::from_secs(30));
    let mut handing_off = false;
    loop {
        let count = topology.count.get();
        let built = build(
            config,
            &topology,
            count,
            handing_off,
            metrics.clone(),
            shutdown.clone(),
        )?;
        handing_off = true;
        let Some(mut processor) = built else {
            if config.instances.statefulset.is_none() {
                anyhow::bail!(
                    "instance {} of {count} owns no partitions of `{}`",
                    topology.index,
                    config.kafka.topic
                );
            }
            // Scaled below this instance's index (it is about to be stopped), or more
            // instances than partitions: wait to own something.
            tracing::warn!(
                instance = topology.index,
                instances = count,
                "This instance owns no partitions; waiting for the instance count to change."
            );
            ready.set(true);
            while topology.count.get() == count {
                if shutdown.requested() {
                    return Ok(Exit::Signal);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            ready.set(false);
            continue;
        };
        ready.set(true);
        let result = processor.run();
        ready.set(false);
        match processor.finish(result, flush_timeout)? {
            Exit::Rescaled { from, to } => {
                tracing::warn!(from, to, "Starting again under the new instance count.");
            }
            exit => return Ok(exit),
        }
    }
}

/// Builds the processor for the partitions instance `topology.index` owns among
/// `count` instances; `None` when that is none.
fn build(
    config: &RunConfig,
    topology: &Topology,
    count: u32,
    handing_off: bool,
    metrics: Metrics,
    shutdown: Shutdown,
) -> anyhow::Result<Option<Processor>> {
    let store = Arc::new(if handing_off {
        reopen_store(config)?
    } else {
        open_store(config)?
    });
    let weak = Arc::downgrade(&store);
    metrics.on_render("state_size", move |m| {
        let Some(store) = weak.upgrade() else {
            return;
        };
        if let Ok(bytes) = store.size_bytes() {
            m.emit(StateSizeMeasured { bytes });
        }
        if let Some((bytes, complete)) = store.fraud_memory() {
            m.emit(FraudMemoryMeasured { bytes, complete });
        }
        m.emit(FraudLogMeasured {
            pages: store.fraud_log_pages(),
        });
        if let (Some((entries, _)), Some((bytes, _))) =
            (store.resident_keys(), store.resident_bytes())
        {
            m.emit(DedupIndexMeasured {
                entries,
                bytes,
                page_reads: StateStore::dedup_page_reads(),
            });
        }
    });
    let source = KafkaSource::connect(&config.kafka, &config.kafka_properties(), |n| {
        owned_partitions(n, topology.index, count)
    })?;
    // Owning nothing (a mistyped count, or a pod about to be removed) forgets nothing:
    // state is dropped only by an instance that owns partitions, for those it does not.
    if source.owned().is_empty() {
        metrics.emit(OwnershipChanged {
            instance: topology.index,
            count,
            owned: &[],
            lost: &[],
            forgotten: Forgotten::default(),
        });
        return Ok(None);
    }
    let (lost, forgotten) = forget_unowned(config, &store, source.owned())?;
    metrics.emit(OwnershipChanged {
        instance: topology.index,
        count,
        owned: source.owned(),
        lost: &lost,
        forgotten,
    });
    let mut sink = open_sink(config, &store, source.owned())?;
    // A lost volume, or partitions taken over: owned partitions the state holds
    // nothing for but the sink holds rows for are rebuilt from the sink (unless told to
    // stop; the start-up agreement below then refuses them).
    if !config.store.no_auto_restore {
        let unpositioned = restore::unpositioned(&store, source.owned())?;
        let missing = retry_while_unavailable(config, SinkError::is_retryable, || {
            restore::partitions_with_rows(sink.as_mut(), &unpositioned)
        })?;
        if !missing.is_empty() {
            tracing::warn!(state_dir = %config.store.state_dir.display(), partitions = ?missing, "The state holds nothing for partitions the sink holds rows for: restoring them from the sink.");
            let report = restore_into(config, &store, sink.as_mut(), &source, &missing)?;
            metrics.emit(PartitionsRestored { report: &report });
        }
    }
    let pipeline = Pipeline::load(pipeline_config(config)?, &store)?;
    identity::bind(&store, &state_identity(config, &source))
        .with_context(|| format!("starting on {}", config.store.state_dir.display()))?;
    source.assign(|p| pipeline.next_offset(p), &store.last_records()?)?;
    let mut relay_config = relay_config(config);
    relay_config.verify_resent_below =
        agree_with_sink(config, &store, sink.as_mut(), source.owned())?;
    let relay = OutboxRelay::spawn(store.clone(), sink, relay_config, metrics.clone())?;
    spawn_ttl_compaction(Arc::downgrade(&store), config.store.ttl_compaction_every);
    let owned = source.owned().to_vec();
    let mut processor = Processor::new(
        source,
        pipeline,
        Checkpoint::new(store, relay, metrics.clone(), owned.clone()),
        PartitionActivity::new(&owned, config.pipeline.idle_timeout),
        LoopSettings {
            batch_size: config.kafka.batch_size.get(),
            batch_timeout: config.kafka.batch_timeout,
            batch_linger: config.kafka.batch_linger,
            outbox_bound: config.relay.outbox_bound.get(),
            exit_when_caught_up: config.process.exit_when_caught_up,
            drain: config.process.drain,
        },
        metrics,
        shutdown,
    );
    if config.instances.statefulset.is_some() {
        processor.rescale = Some(RescaleWatch {
            count: topology.count.clone(),
            built_with: count,
            fenced_grace: config.instances.topology_check_every * 3,
        });
    }
    Ok(Some(processor))
}

/// Drops the state of partitions this instance held but no longer owns (see
/// `StateStore::forget_partitions`): handed over to another instance, they come back,
/// if ever, restored from the sink as it then stands.
fn forget_unowned(
    config: &RunConfig,
    store: &StateStore,
    owned: &[i32],
) -> anyhow::Result<(Vec<i32>, Forgotten)> {
    let lost: Vec<i32> = store
        .partitions_held()?
        .into_iter()
        .filter(|p| !owned.contains(p))
        .collect();
    let gone = store.forget_partitions(&lost).with_context(|| {
        format!(
            "forgetting partitions {lost:?} in {}",
            config.store.state_dir.display()
        )
    })?;
    Ok((lost, gone))
}

fn state_identity(config: &RunConfig, source: &KafkaSource) -> StateIdentity {
    StateIdentity {
        topic: source.topic().to_owned(),
        partitions: source.partition_count(),
        allowed_lateness_secs: config.pipeline.allowed_lateness.as_secs(),
        window_secs: config.pipeline.window.as_secs(),
    }
}

/// `paydedup-processor restore`: rebuilds the (empty) state directory of this
/// instance's partitions from the sink, and binds it to the topic and settings.
pub fn restore(config: &RunConfig) -> anyhow::Result<RestoreReport> {
    let store = Arc::new(open_store(config)?);
    let topology = Topology::from_settings(&config.instances)?;
    let source = KafkaSource::connect(&config.kafka, &config.kafka_properties(), |n| {
        topology.owned(n)
    })?;
    if source.owned().is_empty() {
        anyhow::bail!(
            "instance {} of {} owns no partitions of `{}`: nothing to restore",
            topology.index,
            topology.count.get(),
            config.kafka.topic
        );
    }
    let mut sink = open_sink(config, &store, source.owned())?;
    restore_into(config, &store, sink.as_mut(), &source, source.owned())
}

fn restore_into(
    config: &RunConfig,
    store: &StateStore,
    sink: &mut dyn Sink,
    source: &KafkaSource,
    partitions: &[i32],
) -> anyhow::Result<RestoreReport> {
    let p = pipeline_config(config)?;
    let cfg = RebuildConfig::of(&p, StoreOptions::default().fraud_ttl_micros);
    let log_end = source.log_ends()?;
    let report = retry_while_unavailable(
        config,
        |e: &RestoreError| matches!(e, RestoreError::Sink { source, .. } if source.is_retryable()),
        || restore::restore(store, &mut *sink, partitions, &log_end, &cfg),
    )
    .with_context(|| {
        format!(
            "restoring {} from the sink",
            config.store.state_dir.display()
        )
    })?;
    identity::bind(store, &state_identity(config, source))
        .with_context(|| format!("binding {}", config.store.state_dir.display()))?;
    Ok(report)
}

/// Opens the store, waiting out this process's own TTL compaction thread, which may
/// still hold the previous processor's handle for the length of one compaction.
fn reopen_store(config: &RunConfig) -> anyhow::Result<StateStore> {
    let started = std::time::Instant::now();
    loop {
        match open_store(config) {
            Err(e)
                if started.elapsed() < Duration::from_secs(300)
                    && matches!(e.downcast_ref(), Some(StateError::Locked { .. })) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn open_store(config: &RunConfig) -> anyhow::Result<StateStore> {
    let dir = &config.store.state_dir;
    let store = StateStore::open(
        dir,
        &StoreOptions {
            sync: config.store.sync,
            dedup_retention_micros: Some(micros(config.pipeline.retention)),
            fraud_memory_bytes: config.store.fraud_memory_mib.saturating_mul(1 << 20),
            dedup_page_memory_bytes: config.store.dedup_page_memory_mib.saturating_mul(1 << 20),
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("opening the state store at {}", dir.display()))?;
    // Fraud history written by a build before the short keys: renamed once, so it keeps
    // shaping scores (unrenamed, it would be unread until its TTL dropped it).
    let started = std::time::Instant::now();
    let rewritten = crate::pipeline::prefetch::rename_legacy_fraud_keys(&store)
        .with_context(|| format!("rewriting the fraud keys of {}", dir.display()))?;
    if rewritten > 0 {
        tracing::info!(state_dir = %dir.display(), keys = rewritten, secs = started.elapsed().as_secs_f64(), "Rewrote fraud state keys written by an earlier build to the current layout.");
    }
    Ok(store)
}

fn pipeline_config(config: &RunConfig) -> anyhow::Result<PipelineConfig> {
    let p = &config.pipeline;
    let fraud = match &p.fraud_config {
        Some(path) => FraudConfig::load(path)?,
        None => FraudConfig::default(),
    };
    Ok(PipelineConfig {
        allowed_lateness_micros: micros(p.allowed_lateness),
        retention_micros: micros(p.retention),
        window_micros: micros(p.window),
        decode: DecodeLimits {
            future_tolerance: chrono::Duration::microseconds(micros(p.future_tolerance)),
            ..DecodeLimits::default()
        },
        fraud,
    })
}

/// The start-up agreement of state and sink (`agreement`), waiting out a sink that is
/// briefly unavailable.
fn agree_with_sink(
    config: &RunConfig,
    store: &StateStore,
    sink: &mut dyn Sink,
    owned: &[i32],
) -> anyhow::Result<BTreeMap<(Table, i32), u64>> {
    retry_while_unavailable(
        config,
        |e| matches!(e, AgreementError::Sink { source, .. } if source.is_retryable()),
        || agreement::check(store, &mut *sink, owned),
    )
    .with_context(|| {
        format!(
            "checking that the state at {} and the sink agree",
            config.store.state_dir.display()
        )
    })
}

/// Retries `attempt` while it fails transiently (`transient`), with backoff, up to
/// `--sink-give-up-secs`: a sink that is down for a moment at start-up is waited for,
/// as the relay waits for it later, instead of failing the start.
fn retry_while_unavailable<T, E: std::fmt::Display>(
    config: &RunConfig,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt() {
            Err(e) if transient(&e) && started.elapsed() < config.relay.sink_give_up => {
                tracing::warn!(error = %e, retry_in = ?backoff, "The sink is unavailable at start-up; retrying.");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(config.relay.sink_max_backoff);
            }
            other => return other,
        }
    }
}

fn relay_config(config: &RunConfig) -> RelayConfig {
    let r = &config.relay;
    RelayConfig {
        batch_rows: r.relay_batch.get(),
        initial_backoff: Duration::from_millis(100),
        max_backoff: r.sink_max_backoff,
        give_up_after: r.sink_give_up,
        dead_letter_dir: config.store.state_dir.join("dead-letter"),
        verify_resent_below: BTreeMap::new(),
    }
}

fn open_sink(
    config: &RunConfig,
    store: &Arc<StateStore>,
    owned: &[i32],
) -> anyhow::Result<Box<dyn Sink>> {
    match &config.relay.sink {
        SinkTarget::File(dir) => Ok(Box::new(
            FileSink::open_owned(dir, owned)
                .with_context(|| format!("opening the file sink at {}", dir.display()))?,
        )),
        SinkTarget::BigQuery { target } => {
            let cfg = config.bigquery.config(target)?;
            let sink = retry_while_unavailable(config, SinkError::is_retryable, || {
                BigQuerySink::open(&cfg, store.clone(), owned)
            })
            .with_context(|| {
                format!(
                    "opening BigQuery {}.{} at {}",
                    cfg.project, cfg.dataset, cfg.rest_url
                )
            })?;
            Ok(Box::new(sink))
        }
    }
}

/// Runs a full compaction of the TTL column families periodically, so expired keys
/// leave the disk even when the write rate is too low to trigger compactions.
/// Holds the store weakly: once the processor is gone (a hand-off reopens the store),
/// the thread ends at its next turn instead of keeping the directory's lock.
fn spawn_ttl_compaction(store: Weak<StateStore>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ttl-compaction".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(store) = store.upgrade() else { return };
            // Not `compact`: folding the fraud log is the commit thread's (its error
            // must stop the processor at the next commit, not end up in this log).
            if let Err(e) = store.compact_families() {
                tracing::warn!(error = %e, "TTL compaction failed.");
            }
        });
}
