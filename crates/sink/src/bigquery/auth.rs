//! Credentials for BigQuery. The emulator needs none; production uses a service-account
//! key (`--bigquery-credentials FILE`), or a bearer token from the environment.

use std::path::PathBuf;
use std::sync::Arc;

use gcp_bigquery_client::yup_oauth2;

use crate::SinkError;

const SCOPES: &[&str] = &["https://www.googleapis.com/auth/bigquery"];

#[derive(Debug, Clone)]
pub enum Credentials {
    /// No auth header (the emulator).
    None,
    /// A service-account key file (JSON).
    ServiceAccountKey(PathBuf),
    /// A bearer token read once from an environment variable.
    TokenFromEnv(String),
}

#[derive(Clone)]
pub enum TokenSource {
    None,
    Static(String),
    ServiceAccount(Arc<yup_oauth2::authenticator::DefaultAuthenticator>),
}

impl TokenSource {
    pub async fn new(c: &Credentials) -> Result<TokenSource, SinkError> {
        match c {
            Credentials::None => Ok(TokenSource::None),
            Credentials::TokenFromEnv(var) => std::env::var(var)
                .map(TokenSource::Static)
                .map_err(|_| SinkError::Fatal(format!("environment variable {var} is not set"))),
            Credentials::ServiceAccountKey(path) => {
                let key = yup_oauth2::read_service_account_key(path)
                    .await
                    .map_err(|e| {
                        SinkError::Fatal(format!(
                            "reading service-account key {}: {e}",
                            path.display()
                        ))
                    })?;
                let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await
                    .map_err(|e| SinkError::Fatal(format!("building the authenticator: {e}")))?;
                Ok(TokenSource::ServiceAccount(Arc::new(auth)))
            }
        }
    }

    /// The current access token (refreshed by the authenticator when needed).
    pub async fn token(&self) -> Result<Option<String>, SinkError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::ServiceAccount(a) => {
                let t = a
                    .token(SCOPES)
                    .await
                    .map_err(|e| SinkError::Transient(format!("fetching an access token: {e}")))?;
                Ok(t.token().map(str::to_owned))
            }
        }
    }
}
