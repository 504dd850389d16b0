//! Configuration of `run`: every setting declared once.
//!
//! Each setting is one field of the group for the component it configures ([`KafkaSettings`],
//! [`PipelineSettings`], [`StoreSettings`], [`RelaySettings`], [`BigQueryArgs`],
//! [`ProcessSettings`]), with its type, its one default, its flag, its `PAYDEDUP_*`
//! environment variable and its help text in the same place. The config file (`--config`,
//! TOML, see [`file`]) is read through the same declarations. Precedence: flag >
//! environment > file > default.
//!
//! Durations are [`Duration`]s; counts that must be positive are `NonZero*`; closed sets
//! are enums. Rules that relate two settings are in [`RunConfig::validate`].

pub mod bigquery;
pub mod file;
pub mod parse;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, FromArgMatches, ValueEnum};

pub use bigquery::BigQueryArgs;
pub use parse::SinkTarget;

/// Arguments of `state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The state directory (RocksDB).
    #[arg(long, env = "PAYDEDUP_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Compact the TTL column families first, so expired keys are physically gone
    /// (needs exclusive access: stop the processor first).
    #[arg(long)]
    pub compact: bool,
    /// Print, per partition, the dedup entries alive under its committed watermark: how
    /// many, and a digest of them (to compare the index with an independent replay of
    /// the input; see docs/reliability.md).
    #[arg(long)]
    pub live_dedup: bool,
}

/// Everything `run` is configured with.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// TOML config file: keys are the flag names with underscores, plus a `[kafka]` table
    /// of librdkafka properties. Flags and environment variables take precedence.
    #[arg(long, env = "PAYDEDUP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub instances: InstanceSettings,
    #[command(flatten)]
    pub pipeline: PipelineSettings,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub relay: RelaySettings,
    #[command(flatten)]
    pub bigquery: BigQueryArgs,
    #[command(flatten)]
    pub process: ProcessSettings,
}

/// The Kafka source: where to read, which partitions, how much per batch.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaSettings {
    /// Kafka bootstrap servers.
    #[arg(long, env = "PAYDEDUP_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Input topic.
    #[arg(long, env = "PAYDEDUP_TOPIC", default_value = "payments")]
    pub topic: String,
    /// Consumer group, used only to publish offsets for lag monitoring (the position
    /// that counts lives in the state store).
    #[arg(long, env = "PAYDEDUP_GROUP_ID", default_value = "paydedup")]
    pub group_id: String,
    /// Max records per batch (one atomic commit).
    #[arg(long, env = "PAYDEDUP_BATCH_SIZE", default_value = "5000")]
    pub batch_size: NonZeroUsize,
    /// Max time a poll waits for a batch's first record, milliseconds (when idle, how
    /// often the loop looks up from the consumer).
    #[arg(id = "batch_timeout_ms", long = "batch-timeout-ms", env = "PAYDEDUP_BATCH_TIMEOUT_MS",
          value_name = "MS", default_value = "100", value_parser = parse::millis)]
    pub batch_timeout: Duration,
    /// How long a batch's first record waits for more before the batch is committed,
    /// milliseconds (a full batch goes at once; after the linger the batch still takes
    /// what the consumer already holds). Bounds the synced commits a second at a low
    /// rate; each millisecond is added to a record's latency at most once.
    #[arg(id = "batch_linger_ms", long = "batch-linger-ms", env = "PAYDEDUP_BATCH_LINGER_MS",
          value_name = "MS", default_value = "10", value_parser = parse::millis)]
    pub batch_linger: Duration,
    /// librdkafka consumer property, KEY=VALUE, repeatable (the file's `[kafka]` table
    /// first, flags override).
    #[arg(id = "kafka", long = "kafka", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub properties: Vec<(String, String)>,
}

/// How many instances run and which one this is (see `topology`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Instances")]
pub struct InstanceSettings {
    /// This instance's index: it owns the partitions p with p mod count = index.
    /// Default 0, or with --statefulset the pod's ordinal (HOSTNAME `name-N`).
    #[arg(long, env = "PAYDEDUP_INSTANCE_INDEX")]
    pub instance_index: Option<u32>,
    /// Number of instances, fixed for the life of the process (default 1).
    #[arg(long, env = "PAYDEDUP_INSTANCE_COUNT", conflicts_with = "statefulset")]
    pub instance_count: Option<NonZeroU32>,
    /// Kubernetes: the instance count is this StatefulSet's `spec.replicas`, followed
    /// while running; a changed count hands partitions over (docs/operations.md).
    #[arg(long, env = "PAYDEDUP_STATEFULSET")]
    pub statefulset: Option<String>,
    /// With --statefulset: the Kubernetes API server's URL (default: in-cluster,
    /// with the pod's service account).
    #[arg(long, env = "PAYDEDUP_KUBE_API", requires = "statefulset")]
    pub kube_api: Option<String>,
    /// With --statefulset: the StatefulSet's namespace (default: POD_NAMESPACE, then
    /// the service account's).
    #[arg(long, env = "PAYDEDUP_KUBE_NAMESPACE", requires = "statefulset")]
    pub kube_namespace: Option<String>,
    /// With --statefulset: how often to read the instance count, seconds.
    #[arg(id = "topology_check_secs", long = "topology-check-secs", env = "PAYDEDUP_TOPOLOGY_CHECK_SECS",
          value_name = "SECS", default_value = "10", value_parser = parse::seconds)]
    pub topology_check_every: Duration,
}

/// The pipeline's decisions: lateness, retention, windows, validation, fraud.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pipeline")]
pub struct PipelineSettings {
    /// Allowed lateness, seconds: events older than a partition's max event time minus
    /// this are late.
    #[arg(id = "allowed_lateness_secs", long = "allowed-lateness-secs", env = "PAYDEDUP_ALLOWED_LATENESS_SECS",
          value_name = "SECS", default_value = "300", value_parser = parse::seconds)]
    pub allowed_lateness: Duration,
    /// Dedup retention, seconds: an id is remembered until event_time + retention < watermark.
    #[arg(id = "retention_secs", long = "retention-secs", env = "PAYDEDUP_RETENTION_SECS",
          value_name = "SECS", default_value = "3600", value_parser = parse::seconds)]
    pub retention: Duration,
    /// Event-time window size for payment_metrics, seconds.
    #[arg(id = "window_secs", long = "window-secs", env = "PAYDEDUP_WINDOW_SECS",
          value_name = "SECS", default_value = "60", value_parser = parse::seconds)]
    pub window: Duration,
    /// Event times more than this many seconds after the record's Kafka timestamp (or the
    /// processor's clock, if that is earlier) are invalid.
    #[arg(id = "future_tolerance_secs", long = "future-tolerance-secs", env = "PAYDEDUP_FUTURE_TOLERANCE_SECS",
          value_name = "SECS", default_value = "600", value_parser = parse::seconds)]
    pub future_tolerance: Duration,
    /// A partition with no records for this many seconds stops holding the combined
    /// watermark back.
    #[arg(id = "idle_timeout_secs", long = "idle-timeout-secs", env = "PAYDEDUP_IDLE_TIMEOUT_SECS",
          value_name = "SECS", default_value = "30", value_parser = parse::seconds)]
    pub idle_timeout: Duration,
    /// Fraud thresholds and weights (TOML); built-in defaults when unset.
    #[arg(long, env = "PAYDEDUP_FRAUD_CONFIG")]
    pub fraud_config: Option<PathBuf>,
}

/// The RocksDB state store.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "State store")]
pub struct StoreSettings {
    /// RocksDB state directory, one per instance.
    #[arg(long, env = "PAYDEDUP_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// fsync every commit (true), or leave it to the OS (false: survives a process
    /// crash, not a power loss).
    #[arg(long, env = "PAYDEDUP_SYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub sync: bool,
    /// Memory for the fraud state held in memory, MiB (~80 bytes a card or customer:
    /// 5.9 M of them took 454 MB). Past it, new cards and customers stay in RocksDB only
    /// and lookups memory cannot answer read RocksDB: correct, slower (logged once).
    #[arg(long, env = "PAYDEDUP_FRAUD_MEMORY_MIB", default_value = "768")]
    pub fraud_memory_mib: usize,
    /// Memory for the newest dedup pages' entries, MiB (52 bytes an id: 128 MiB holds
    /// the last ~2.6 M; after a start, filled in the background). A retry or replay
    /// of an id on an older page reads that page from RocksDB: correct, slower. Raise
    /// it when repeats come later than the pages it holds
    /// (`paydedup_dedup_page_reads_total` counts those reads).
    #[arg(long, env = "PAYDEDUP_DEDUP_PAGE_MEMORY_MIB", default_value = "128")]
    pub dedup_page_memory_mib: usize,
    /// Compact the TTL column families this often, seconds; 0 = only RocksDB's own compactions.
    #[arg(id = "ttl_compaction_secs", long = "ttl-compaction-secs", env = "PAYDEDUP_TTL_COMPACTION_SECS",
          value_name = "SECS", default_value = "600", value_parser = parse::seconds)]
    pub ttl_compaction_every: Duration,
    /// Stop, instead of rebuilding it from the sink (`restore`), when the state
    /// directory is empty and the sink holds rows for the owned partitions (a lost
    /// volume).
    #[arg(long, env = "PAYDEDUP_NO_AUTO_RESTORE")]
    pub no_auto_restore: bool,
}

/// The outbox relay and the sink it delivers to.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Relay and sink")]
pub struct RelaySettings {
    /// Sink: `file:DIR` (JSON lines per table) or `bigquery:PROJECT.DATASET`.
    #[arg(long, env = "PAYDEDUP_SINK", default_value = "file:output")]
    pub sink: SinkTarget,
    /// Rows per sink append.
    #[arg(long, env = "PAYDEDUP_RELAY_BATCH", default_value = "5000")]
    pub relay_batch: NonZeroUsize,
    /// Pause consumption while more rows than this await delivery; resume below half.
    #[arg(long, env = "PAYDEDUP_OUTBOX_BOUND", default_value = "500000")]
    pub outbox_bound: NonZeroU64,
    /// Give up (exit non-zero) after the sink failed continuously this many seconds.
    #[arg(id = "sink_give_up_secs", long = "sink-give-up-secs", env = "PAYDEDUP_SINK_GIVE_UP_SECS",
          value_name = "SECS", default_value = "300", value_parser = parse::seconds)]
    pub sink_give_up: Duration,
    /// Ceiling of the retry backoff, milliseconds.
    #[arg(id = "sink_max_backoff_ms", long = "sink-max-backoff-ms", env = "PAYDEDUP_SINK_MAX_BACKOFF_MS",
          value_name = "MS", default_value = "10000", value_parser = parse::millis)]
    pub sink_max_backoff: Duration,
}

/// How the process runs and ends: endpoints, logs, bounded runs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Process")]
pub struct ProcessSettings {
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "PAYDEDUP_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "PAYDEDUP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Exit 0 once every owned partition is caught up and every row is delivered.
    #[arg(long, env = "PAYDEDUP_EXIT_WHEN_CAUGHT_UP")]
    pub exit_when_caught_up: bool,
    /// With --exit-when-caught-up: close all open windows first (a bounded run's end).
    #[arg(long, env = "PAYDEDUP_DRAIN")]
    pub drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable lines.
    Text,
}

/// librdkafka properties paydedup sets itself: offsets live in the state store.
const MANAGED_KAFKA_PROPERTIES: [&str; 3] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// `run` as its own command, for parsing its arguments alone.
fn run_command() -> clap::Command {
    RunConfig::augment_args(clap::Command::new("paydedup-processor run").no_binary_name(true))
}

impl RunConfig {
    /// Parses `run`'s arguments (those after `run`), layers the config file under them
    /// and validates the result.
    pub fn parse_layered<I, T>(args: I) -> anyhow::Result<RunConfig>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = run_command();
        let given = command.clone().try_get_matches_from(&args)?;
        let mut config = RunConfig::from_arg_matches(&given)?;
        if let Some(path) = &config.config {
            let mut layered = file::file_args(path, &command, &given)?;
            layered.extend(args);
            let matches = command.try_get_matches_from(layered)?;
            config = RunConfig::from_arg_matches(&matches)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// The rules that relate settings to each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        let k = &self.kafka;
        let i = &self.instances;
        if let (Some(index), None) = (i.instance_index, &i.statefulset) {
            let count = i.instance_count.unwrap_or(NonZeroU32::MIN);
            if index >= count.get() {
                bail!("--instance-index must be in 0..{count}, got {index}");
            }
        }
        if i.topology_check_every.is_zero() {
            bail!("--topology-check-secs must be positive");
        }
        let p = &self.pipeline;
        if p.retention < p.allowed_lateness {
            bail!("--retention-secs must be at least --allowed-lateness-secs (ids must outlive the lateness window)");
        }
        if p.window.is_zero() {
            bail!("--window-secs must be positive");
        }
        if let Some(key) = MANAGED_KAFKA_PROPERTIES
            .iter()
            .find(|key| k.properties.iter().any(|(k, _)| k == *key))
        {
            bail!("kafka property {key} is managed by paydedup (offsets live in the state store)");
        }
        if let SinkTarget::BigQuery { target } = &self.relay.sink {
            self.bigquery.config(target)?;
        }
        Ok(())
    }

    /// librdkafka properties: the file's `[kafka]` table first, flags override.
    pub fn kafka_properties(&self) -> BTreeMap<String, String> {
        self.kafka.properties.iter().cloned().collect()
    }
}

/// Checks the declarations themselves (clap's debug asserts), for the tests.
#[cfg(test)]
fn assert_declarations() {
    run_command().debug_assert();
    <crate::cli::Cli as clap::CommandFactory>::command().debug_assert();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<RunConfig> {
        RunConfig::parse_layered(args.iter().copied())
    }

    #[test]
    fn declarations_are_consistent() {
        assert_declarations();
    }

    #[test]
    fn defaults_are_declared_once_and_typed() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.batch_size.get(), 5000);
        assert_eq!(c.kafka.batch_timeout, Duration::from_millis(100));
        assert_eq!(c.kafka.batch_linger, Duration::from_millis(10));
        assert_eq!(c.pipeline.retention, Duration::from_secs(3600));
        assert_eq!(c.pipeline.allowed_lateness, Duration::from_secs(300));
        assert_eq!(c.relay.sink, SinkTarget::File("output".into()));
        assert_eq!(c.process.log_format, LogFormat::Json);
        assert!(c.store.sync);
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "topic = \"from-file\"\nbatch_size = 7\nsync = false\ndrain = true\n[kafka]\n\"fetch.min.bytes\" = \"1\"\n",
        )
        .unwrap();
        let s = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--batch-size",
            "9",
            "--kafka",
            "client.id=x",
        ])
        .unwrap();
        assert_eq!(s.kafka.topic, "from-file");
        assert_eq!(s.kafka.batch_size.get(), 9);
        assert_eq!(s.pipeline.retention, Duration::from_secs(3600));
        assert!(!s.store.sync);
        assert!(s.process.drain);
        let kafka = s.kafka_properties();
        assert_eq!(kafka.get("fetch.min.bytes").map(String::as_str), Some("1"));
        assert_eq!(kafka.get("client.id").map(String::as_str), Some("x"));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let bad = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(
            bad(&["--instance-index", "2", "--instance-count", "2"]).contains("--instance-index")
        );
        assert!(bad(&["--retention-secs", "10"]).contains("--retention-secs"));
        assert!(bad(&["--sink", "s3:bucket"]).contains("unknown sink"));
        assert!(bad(&["--kafka", "enable.auto.commit=true"]).contains("managed by paydedup"));
        assert!(bad(&["--batch-size", "0"]).contains("--batch-size"));
        assert!(bad(&[
            "--sink",
            "bigquery:p.d",
            "--bigquery-token-timeout-secs",
            "0"
        ])
        .contains("--bigquery-token-timeout-secs"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(bad(&["--config", path.to_str().unwrap()]).contains("parsing config file"));
        // A file value goes through the same parser as the flag.
        std::fs::write(&path, "batch_timeout_ms = \"soon\"\n").unwrap();
        assert!(bad(&["--config", path.to_str().unwrap()]).contains("--batch-timeout-ms"));
    }
}
