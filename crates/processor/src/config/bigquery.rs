//! Where BigQuery is and how to authenticate; used by `run` and by `reconcile`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use paydedup_sink::bigquery::auth::GoogleAuth;
use paydedup_sink::bigquery::Credentials;
use paydedup_sink::BigQueryConfig;

use super::parse;

/// The token-request timeout when none is given.
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// BigQuery endpoints and credentials.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "BigQuery")]
pub struct BigQueryArgs {
    /// BigQuery REST root.
    #[arg(
        long,
        env = "PAYDEDUP_BIGQUERY_REST_URL",
        default_value = "https://bigquery.googleapis.com"
    )]
    pub bigquery_rest_url: String,
    /// BigQuery Storage Write gRPC endpoint.
    #[arg(
        long,
        env = "PAYDEDUP_BIGQUERY_GRPC_URL",
        default_value = "https://bigquerystorage.googleapis.com"
    )]
    pub bigquery_grpc_url: String,
    /// Google credentials file (JSON: a service-account key, or an authorized_user file
    /// from `gcloud auth application-default login`). Overrides Application Default
    /// Credentials, which are used without this flag: the file named by
    /// GOOGLE_APPLICATION_CREDENTIALS, else gcloud's file, else the GCE/GKE metadata
    /// server (GKE workload identity; GCE_METADATA_HOST to use another host).
    #[arg(long, env = "PAYDEDUP_BIGQUERY_CREDENTIALS")]
    pub bigquery_credentials: Option<PathBuf>,
    /// Read a bearer token for BigQuery from this environment variable instead (read
    /// once, never refreshed: for short runs).
    #[arg(long, env = "PAYDEDUP_BIGQUERY_TOKEN_ENV")]
    pub bigquery_token_env: Option<String>,
    /// Talk to a local emulator: no credentials.
    #[arg(long, env = "PAYDEDUP_BIGQUERY_NO_AUTH")]
    pub bigquery_no_auth: bool,
    /// Give up on one access-token request (metadata server or token endpoint) after
    /// this many seconds; the sink retries it with backoff like any transient failure.
    #[arg(id = "bigquery_token_timeout_secs", long = "bigquery-token-timeout-secs",
          env = "PAYDEDUP_BIGQUERY_TOKEN_TIMEOUT_SECS", value_name = "SECS",
          default_value = "10", value_parser = parse::seconds)]
    pub bigquery_token_timeout: Duration,
}

impl Default for BigQueryArgs {
    fn default() -> Self {
        BigQueryArgs {
            bigquery_rest_url: "https://bigquery.googleapis.com".to_owned(),
            bigquery_grpc_url: "https://bigquerystorage.googleapis.com".to_owned(),
            bigquery_credentials: None,
            bigquery_token_env: None,
            bigquery_no_auth: false,
            bigquery_token_timeout: DEFAULT_TOKEN_TIMEOUT,
        }
    }
}

impl BigQueryArgs {
    /// The sink configuration for `PROJECT.DATASET`.
    pub fn config(&self, target: &str) -> anyhow::Result<BigQueryConfig> {
        let (project, dataset) = BigQueryConfig::parse_target(target)?;
        if self.bigquery_token_timeout.is_zero() {
            bail!("--bigquery-token-timeout-secs must be positive");
        }
        let google = |key_file: Option<&PathBuf>| {
            Credentials::Google(GoogleAuth {
                key_file: key_file.cloned(),
                token_timeout: self.bigquery_token_timeout,
            })
        };
        // An explicit choice first; without one, Application Default Credentials.
        let credentials = match (
            &self.bigquery_credentials,
            &self.bigquery_token_env,
            self.bigquery_no_auth,
        ) {
            (_, _, true) => Credentials::None,
            (Some(p), _, _) => google(Some(p)),
            (None, Some(v), _) => Credentials::TokenFromEnv(v.clone()),
            (None, None, false) => google(None),
        };
        Ok(BigQueryConfig {
            project,
            dataset,
            rest_url: self.bigquery_rest_url.clone(),
            grpc_url: self.bigquery_grpc_url.clone(),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct Cli {
        #[command(flatten)]
        bigquery: BigQueryArgs,
    }

    fn credentials(args: &[&str]) -> anyhow::Result<Credentials> {
        let cli = Cli::try_parse_from(args)?;
        Ok(cli.bigquery.config("p.d")?.credentials)
    }

    fn google(key_file: Option<&str>, secs: u64) -> Credentials {
        Credentials::Google(GoogleAuth {
            key_file: key_file.map(PathBuf::from),
            token_timeout: Duration::from_secs(secs),
        })
    }

    #[test]
    fn credentials_default_to_application_default_credentials() {
        assert_eq!(credentials(&[]).unwrap(), google(None, 10));
        assert_eq!(
            credentials(&["--bigquery-token-timeout-secs", "3"]).unwrap(),
            google(None, 3)
        );
        assert_eq!(
            credentials(&["--bigquery-credentials", "k.json"]).unwrap(),
            google(Some("k.json"), 10)
        );
        assert_eq!(
            credentials(&["--bigquery-token-env", "T"]).unwrap(),
            Credentials::TokenFromEnv("T".to_owned())
        );
        assert_eq!(
            credentials(&["--bigquery-no-auth", "--bigquery-credentials", "k.json"]).unwrap(),
            Credentials::None
        );
        assert_eq!(
            BigQueryArgs::default().config("p.d").unwrap().credentials,
            google(None, 10)
        );
        let zero = credentials(&["--bigquery-token-timeout-secs", "0"]).unwrap_err();
        assert!(zero.to_string().contains("--bigquery-token-timeout-secs"));
    }
}
