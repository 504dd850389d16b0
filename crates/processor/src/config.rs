//! Configuration: flags, environment variables, a TOML file, defaults — in that order of
//! precedence. Every flag has a `PAYDEDUP_*` environment variable; the file uses the
//! flag names with underscores, plus a `[kafka]` table passed through to librdkafka.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use paydedup_sink::bigquery::Credentials;
use paydedup_sink::BigQueryConfig;
use serde::Deserialize;

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
}

/// Flags of `run`. Unset flags fall back to the config file, then to the defaults.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// TOML config file (keys as the flag names with underscores; `[kafka]` table).
    #[arg(long, env = "PAYDEDUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "PAYDEDUP_BROKERS")]
    pub brokers: Option<String>,
    /// Input topic [default: payments].
    #[arg(long, env = "PAYDEDUP_TOPIC")]
    pub topic: Option<String>,
    /// Consumer group, used only to publish offsets for lag monitoring [default: paydedup].
    #[arg(long, env = "PAYDEDUP_GROUP_ID")]
    pub group_id: Option<String>,
    /// RocksDB state directory, one per instance [default: ./state].
    #[arg(long, env = "PAYDEDUP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Sink: `file:DIR` (JSON lines per table) or `bigquery:PROJECT.DATASET` [default: file:./output].
    #[arg(long, env = "PAYDEDUP_SINK")]
    pub sink: Option<String>,
    /// This instance's index; it owns partitions p with p mod count = index [default: 0].
    #[arg(long, env = "PAYDEDUP_INSTANCE_INDEX")]
    pub instance_index: Option<i32>,
    /// Number of instances [default: 1].
    #[arg(long, env = "PAYDEDUP_INSTANCE_COUNT")]
    pub instance_count: Option<i32>,
    /// Allowed lateness: events older than max event time minus this are late [default: 300].
    #[arg(long, env = "PAYDEDUP_ALLOWED_LATENESS_SECS")]
    pub allowed_lateness_secs: Option<i64>,
    /// Dedup retention: an id is remembered until event_time + retention < watermark [default: 3600].
    #[arg(long, env = "PAYDEDUP_RETENTION_SECS")]
    pub retention_secs: Option<i64>,
    /// Event-time window size for payment_metrics [default: 60].
    #[arg(long, env = "PAYDEDUP_WINDOW_SECS")]
    pub window_secs: Option<i64>,
    /// Event times more than this after the record's Kafka timestamp are invalid [default: 600].
    #[arg(long, env = "PAYDEDUP_FUTURE_TOLERANCE_SECS")]
    pub future_tolerance_secs: Option<i64>,
    /// Max records per batch (one atomic commit) [default: 5000].
    #[arg(long, env = "PAYDEDUP_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Max time to fill a batch, ms [default: 100].
    #[arg(long, env = "PAYDEDUP_BATCH_TIMEOUT_MS")]
    pub batch_timeout_ms: Option<u64>,
    /// Pause consumption while more rows than this await delivery [default: 500000].
    #[arg(long, env = "PAYDEDUP_OUTBOX_BOUND")]
    pub outbox_bound: Option<u64>,
    /// Rows per sink append [default: 5000].
    #[arg(long, env = "PAYDEDUP_RELAY_BATCH")]
    pub relay_batch: Option<usize>,
    /// Give up (exit non-zero) after the sink failed continuously this long [default: 300].
    #[arg(long, env = "PAYDEDUP_SINK_GIVE_UP_SECS")]
    pub sink_give_up_secs: Option<u64>,
    /// Ceiling of the retry backoff, ms [default: 10000].
    #[arg(long, env = "PAYDEDUP_SINK_MAX_BACKOFF_MS")]
    pub sink_max_backoff_ms: Option<u64>,
    /// fsync every commit (true), or leave it to the OS (false: survives a process
    /// crash, not a power loss) [default: true].
    #[arg(long, env = "PAYDEDUP_SYNC")]
    pub sync: Option<bool>,
    /// Fraud thresholds and weights (TOML); defaults when unset.
    #[arg(long, env = "PAYDEDUP_FRAUD_CONFIG")]
    pub fraud_config: Option<PathBuf>,
    /// Address of /metrics, /healthz, /readyz [default: 127.0.0.1:9464].
    #[arg(long, env = "PAYDEDUP_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// A partition with no records for this long stops holding the combined watermark back [default: 30].
    #[arg(long, env = "PAYDEDUP_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Exit 0 once every owned partition is caught up and every row is delivered.
    #[arg(long, env = "PAYDEDUP_EXIT_WHEN_CAUGHT_UP")]
    pub exit_when_caught_up: bool,
    /// With --exit-when-caught-up: close all open windows first (a bounded run's end).
    #[arg(long, env = "PAYDEDUP_DRAIN")]
    pub drain: bool,
    /// Compact the TTL column families this often, seconds; 0 = only RocksDB's own [default: 600].
    #[arg(long, env = "PAYDEDUP_TTL_COMPACTION_SECS")]
    pub ttl_compaction_secs: Option<u64>,
    #[command(flatten)]
    pub bigquery: BigQueryArgs,
    /// librdkafka consumer property, KEY=VALUE, repeatable.
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka: Vec<(String, String)>,
    /// Log format: json or text [default: json].
    #[arg(long, env = "PAYDEDUP_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Where BigQuery is and how to authenticate (used by `run` and `reconcile`).
#[derive(Debug, Args, Default, Clone)]
pub struct BigQueryArgs {
    /// BigQuery REST root [default: https://bigquery.googleapis.com].
    #[arg(long, env = "PAYDEDUP_BIGQUERY_REST_URL")]
    pub bigquery_rest_url: Option<String>,
    /// BigQuery Storage Write gRPC endpoint [default: https://bigquerystorage.googleapis.com].
    #[arg(long, env = "PAYDEDUP_BIGQUERY_GRPC_URL")]
    pub bigquery_grpc_url: Option<String>,
    /// Service-account key file (JSON) for BigQuery.
    #[arg(long, env = "PAYDEDUP_BIGQUERY_CREDENTIALS")]
    pub bigquery_credentials: Option<PathBuf>,
    /// Read a bearer token for BigQuery from this environment variable instead.
    #[arg(long, env = "PAYDEDUP_BIGQUERY_TOKEN_ENV")]
    pub bigquery_token_env: Option<String>,
    /// Talk to a local emulator: no credentials.
    #[arg(long, env = "PAYDEDUP_BIGQUERY_NO_AUTH")]
    pub bigquery_no_auth: bool,
}

impl BigQueryArgs {
    /// The sink configuration for `PROJECT.DATASET`.
    pub fn config(&self, target: &str) -> anyhow::Result<BigQueryConfig> {
        let (project, dataset) = BigQueryConfig::parse_target(target)?;
        let credentials = match (&self.bigquery_credentials, &self.bigquery_token_env, self.bigquery_no_auth) {
            (_, _, true) => Credentials::None,
            (Some(p), _, _) => Credentials::ServiceAccountKey(p.clone()),
            (None, Some(v), _) => Credentials::TokenFromEnv(v.clone()),
            (None, None, false) => bail!(
                "BigQuery needs credentials: --bigquery-credentials FILE, --bigquery-token-env VAR, or --bigquery-no-auth for an emulator"
            ),
        };
        Ok(BigQueryConfig {
            project,
            dataset,
            rest_url: self
                .bigquery_rest_url
                .clone()
                .unwrap_or_else(|| "https://bigquery.googleapis.com".into()),
            grpc_url: self
                .bigquery_grpc_url
                .clone()
                .unwrap_or_else(|| "https://bigquerystorage.googleapis.com".into()),
            credentials,
        })
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// The config file. Same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    brokers: Option<String>,
    topic: Option<String>,
    group_id: Option<String>,
    state_dir: Option<PathBuf>,
    sink: Option<String>,
    instance_index: Option<i32>,
    instance_count: Option<i32>,
    allowed_lateness_secs: Option<i64>,
    retention_secs: Option<i64>,
    window_secs: Option<i64>,
    future_tolerance_secs: Option<i64>,
    batch_size: Option<usize>,
    batch_timeout_ms: Option<u64>,
    outbox_bound: Option<u64>,
    relay_batch: Option<usize>,
    sink_give_up_secs: Option<u64>,
    sink_max_backoff_ms: Option<u64>,
    sync: Option<bool>,
    fraud_config: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    idle_timeout_secs: Option<u64>,
    ttl_compaction_secs: Option<u64>,
    log_format: Option<String>,
    #[serde(default)]
    kafka: BTreeMap<String, String>,
}

/// Where rows go.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    File(PathBuf),
    BigQuery(BigQueryConfig),
}

/// The resolved configuration of `run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub state_dir: PathBuf,
    pub sink: SinkSpec,
    pub instance_index: i32,
    pub instance_count: i32,
    pub allowed_lateness_secs: i64,
    pub retention_secs: i64,
    pub window_secs: i64,
    pub future_tolerance_secs: i64,
    pub batch_size: usize,
    pub batch_timeout_ms: u64,
    pub outbox_bound: u64,
    pub relay_batch: usize,
    pub sink_give_up_secs: u64,
    pub sink_max_backoff_ms: u64,
    pub sync: bool,
    pub fraud_config: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub idle_timeout_secs: u64,
    pub exit_when_caught_up: bool,
    pub drain: bool,
    pub ttl_compaction_secs: u64,
    /// librdkafka properties: file `[kafka]` first, flags override.
    pub kafka: BTreeMap<String, String>,
    pub log_format: String,
}

fn parse_sink(s: &str, bq: &BigQueryArgs) -> anyhow::Result<SinkSpec> {
    match s.split_once(':') {
        Some(("file", dir)) if !dir.is_empty() => Ok(SinkSpec::File(PathBuf::from(dir))),
        Some(("bigquery", target)) => Ok(SinkSpec::BigQuery(bq.config(target)?)),
        _ => bail!("unknown sink `{s}`: expected file:DIR or bigquery:PROJECT.DATASET"),
    }
}

impl Settings {
    pub fn resolve(args: &RunArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                args.$field
                    .clone()
                    .or(file.$field.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let mut kafka = file.kafka.clone();
        kafka.extend(args.kafka.iter().cloned());
        let s = Settings {
            brokers: pick!(brokers, "127.0.0.1:9092".into()),
            topic: pick!(topic, "payments".into()),
            group_id: pick!(group_id, "paydedup".into()),
            state_dir: pick!(state_dir, PathBuf::from("state")),
            sink: parse_sink(&pick!(sink, "file:output".into()), &args.bigquery)?,
            instance_index: pick!(instance_index, 0),
            instance_count: pick!(instance_count, 1),
            allowed_lateness_secs: pick!(allowed_lateness_secs, 300),
            retention_secs: pick!(retention_secs, 3600),
            window_secs: pick!(window_secs, 60),
            future_tolerance_secs: pick!(future_tolerance_secs, 600),
            batch_size: pick!(batch_size, 5000),
            batch_timeout_ms: pick!(batch_timeout_ms, 100),
            outbox_bound: pick!(outbox_bound, 500_000),
            relay_batch: pick!(relay_batch, 5000),
            sink_give_up_secs: pick!(sink_give_up_secs, 300),
            sink_max_backoff_ms: pick!(sink_max_backoff_ms, 10_000),
            sync: pick!(sync, true),
            fraud_config: args.fraud_config.clone().or(file.fraud_config.clone()),
            metrics_addr: pick!(metrics_addr, SocketAddr::from(([127, 0, 0, 1], 9464))),
            idle_timeout_secs: pick!(idle_timeout_secs, 30),
            exit_when_caught_up: args.exit_when_caught_up,
            drain: args.drain,
            ttl_compaction_secs: pick!(ttl_compaction_secs, 600),
            kafka,
            log_format: pick!(log_format, "json".into()),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.instance_count < 1 {
            bail!(
                "--instance-count must be at least 1, got {}",
                self.instance_count
            );
        }
        if !(0..self.instance_count).contains(&self.instance_index) {
            bail!(
                "--instance-index must be in 0..{}, got {}",
                self.instance_count,
                self.instance_index
            );
        }
        if self.allowed_lateness_secs < 0 {
            bail!("--allowed-lateness-secs must not be negative");
        }
        if self.retention_secs < self.allowed_lateness_secs {
            bail!("--retention-secs must be at least --allowed-lateness-secs (ids must outlive the lateness window)");
        }
        if self.window_secs <= 0 {
            bail!("--window-secs must be positive");
        }
        if self.batch_size == 0 || self.relay_batch == 0 {
            bail!("--batch-size and --relay-batch must be positive");
        }
        if self.outbox_bound == 0 {
            bail!("--outbox-bound must be positive");
        }
        if self.log_format != "json" && self.log_format != "text" {
            bail!("--log-format must be json or text, got {}", self.log_format);
        }
        for key in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "auto.offset.reset",
        ] {
            if self.kafka.contains_key(key) {
                bail!(
                    "kafka property {key} is managed by paydedup (offsets live in the state store)"
                );
            }
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "topic = \"from-file\"\nbatch_size = 7\n[kafka]\n\"fetch.min.bytes\" = \"1\"\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path),
            batch_size: Some(9),
            kafka: vec![("client.id".into(), "x".into())],
            ..RunArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.topic, "from-file");
        assert_eq!(s.batch_size, 9);
        assert_eq!(s.retention_secs, 3600);
        assert_eq!(
            s.kafka.get("fetch.min.bytes").map(String::as_str),
            Some("1")
        );
        assert_eq!(s.kafka.get("client.id").map(String::as_str), Some("x"));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let bad = |args: RunArgs| Settings::resolve(&args).unwrap_err().to_string();
        assert!(bad(RunArgs {
            instance_index: Some(2),
            instance_count: Some(2),
            ..RunArgs::default()
        })
        .contains("--instance-index"));
        assert!(bad(RunArgs {
            retention_secs: Some(10),
            ..RunArgs::default()
        })
        .contains("--retention-secs"));
        assert!(bad(RunArgs {
            sink: Some("s3:bucket".into()),
            ..RunArgs::default()
        })
        .contains("unknown sink"));
        assert!(bad(RunArgs {
            kafka: vec![("enable.auto.commit".into(), "true".into())],
            ..RunArgs::default()
        })
        .contains("managed by paydedup"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(bad(RunArgs {
            config: Some(path),
            ..RunArgs::default()
        })
        .contains("parsing config file"));
    }
}
