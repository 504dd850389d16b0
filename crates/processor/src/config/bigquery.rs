//! Where BigQuery is and how to authenticate; used by `run` and by `reconcile`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use paydedup_sink::bigquery::Credentials;
use paydedup_sink::BigQueryConfig;

/// BigQuery endpoints and credentials.
#[derive(Debug, Args, Default, Clone)]
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
            rest_url: self.bigquery_rest_url.clone(),
            grpc_url: self.bigquery_grpc_url.clone(),
            credentials,
        })
    }
}
