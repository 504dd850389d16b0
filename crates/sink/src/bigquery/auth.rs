//! Credentials for BigQuery and the access tokens sent with every call.
//!
//! The emulator needs none ([`Credentials::None`]). A bearer token can come from an
//! environment variable ([`Credentials::TokenFromEnv`]; it is never refreshed). In
//! production the token comes from Google ([`Credentials::Google`]): a credentials file
//! forced by `--bigquery-credentials`, or else Application Default Credentials, in the
//! order Google's own client libraries use ([`select`]):
//!
//! 1. `GOOGLE_APPLICATION_CREDENTIALS` names a JSON file;
//! 2. gcloud's ADC file (`gcloud auth application-default login`) exists;
//! 3. the GCE/GKE metadata server (`GCE_METADATA_HOST`, default
//!    `metadata.google.internal`): the node's service account on GCE, the Kubernetes
//!    service account's bound Google service account under GKE workload identity.
//!
//! A file is a service-account key (`"type": "service_account"`: a JWT signed with its
//! key is exchanged at its `token_uri`) or an `authorized_user` file (its refresh token
//! is exchanged). Anything else in it is refused at start ([`flow`]).
//!
//! Tokens are cached and replaced before they expire, every fetch has a timeout, and a
//! failed refresh keeps serving a token that is still valid ([`cache`]). Tokens and key
//! material are held in [`Secret`]s, whose `Debug` prints no secret, and no error
//! message carries one.

mod cache;
mod flow;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::SinkError;
use cache::TokenCache;
use flow::Flow;

/// The OAuth scope every token is requested for.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// The metadata server's host when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// How BigQuery calls authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No auth header (the emulator).
    None,
    /// A bearer token read once from an environment variable.
    TokenFromEnv(String),
    /// Tokens from Google: a forced credentials file or Application Default Credentials.
    Google(GoogleAuth),
}

/// Where Google tokens come from, and how long one fetch may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleAuth {
    /// A credentials file that overrides Application Default Credentials.
    pub key_file: Option<PathBuf>,
    /// Every token request (connect, send, answer) must finish within this.
    pub token_timeout: Duration,
}

/// The environment Application Default Credentials are chosen from, as plain values:
/// [`select`] reads nothing itself, so the order is testable without touching the
/// process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdcEnv {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub google_application_credentials: Option<OsString>,
    /// `GCE_METADATA_HOST`: `host` or `host:port` of the metadata server.
    pub gce_metadata_host: Option<String>,
    /// gcloud's ADC file, when it exists.
    pub gcloud_adc_file: Option<PathBuf>,
}

impl AdcEnv {
    /// Reads the variables and looks for gcloud's file (`$CLOUDSDK_CONFIG`, else
    /// `$HOME/.config/gcloud`, `application_default_credentials.json`).
    pub fn from_process() -> AdcEnv {
        let gcloud_dir = std::env::var_os("CLOUDSDK_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| Path::new(&h).join(".config").join("gcloud"))
            });
        AdcEnv {
            google_application_credentials: std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS"),
            gce_metadata_host: std::env::var("GCE_METADATA_HOST").ok(),
            gcloud_adc_file: gcloud_dir
                .map(|d| d.join("application_default_credentials.json"))
                .filter(|f| f.is_file()),
        }
    }
}

/// Why a credentials file was chosen (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// `--bigquery-credentials`.
    Flag,
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    Environment,
    /// gcloud's ADC file.
    Gcloud,
}

impl fmt::Display for FileOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileOrigin::Flag => "--bigquery-credentials",
            FileOrigin::Environment => "GOOGLE_APPLICATION_CREDENTIALS",
            FileOrigin::Gcloud => "gcloud application-default credentials",
        })
    }
}

/// Where a Google token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoogleSource {
    /// A JSON credentials file (service-account key or authorized_user).
    File { path: PathBuf, origin: FileOrigin },
    /// The metadata server at `host` (`host` or `host:port`).
    Metadata { host: String },
}

/// Application Default Credentials' order, with an explicit file first: the flag, then
/// `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's file, then the metadata server. An
/// empty variable counts as unset (as in Google's libraries); a variable naming a file
/// that cannot be read is an error at start, never a silent fall-through to the next.
pub fn select(explicit: Option<&Path>, env: &AdcEnv) -> GoogleSource {
    if let Some(path) = explicit {
        return GoogleSource::File {
            path: path.to_owned(),
            origin: FileOrigin::Flag,
        };
    }
    if let Some(path) = env
        .google_application_credentials
        .as_ref()
        .filter(|v| !v.is_empty())
    {
        return GoogleSource::File {
            path: PathBuf::from(path),
            origin: FileOrigin::Environment,
        };
    }
    if let Some(path) = &env.gcloud_adc_file {
        return GoogleSource::File {
            path: path.clone(),
            origin: FileOrigin::Gcloud,
        };
    }
    let host = env
        .gce_metadata_host
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_METADATA_HOST);
    GoogleSource::Metadata {
        host: host.to_owned(),
    }
}

/// A token, a private key or a refresh token: `Debug` prints no part of it, and there is
/// no `Display`, so it cannot end up in a log line or an error by formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place it is sent (a header, a request body).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why no token could be had. The texts name files, endpoints and HTTP statuses, never a
/// token or key material.
#[derive(Debug, Clone, Error)]
pub enum AuthError {
    /// The credentials file is missing, unreadable or not a usable credentials file.
    #[error("credentials file {} ({origin}): {reason}", path.display())]
    BadFile {
        path: PathBuf,
        origin: FileOrigin,
        reason: String,
    },
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("building the HTTP client for tokens: {0}")]
    Client(String),
    /// Connecting or sending failed.
    #[error("token request to {endpoint}: {reason}")]
    Request { endpoint: String, reason: String },
    #[error("token request to {endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The endpoint answered with an error status (the OAuth `error` fields, if any).
    #[error("token endpoint {endpoint} answered HTTP {status}: {detail}")]
    Refused {
        endpoint: String,
        status: u16,
        detail: String,
    },
    #[error("token endpoint {endpoint} answered without a usable token: {reason}")]
    BadAnswer { endpoint: String, reason: String },
    #[error("signing the token request: {0}")]
    Sign(String),
}

impl AuthError {
    /// Retrying will not help: the configuration is wrong. Only what is checked at start
    /// (the file, the variable, the client) is permanent. A refused token request is
    /// not: `invalid_grant` also answers a JWT signed by a node whose clock is off, and
    /// a metadata server answers 404 while workload identity is still being set up;
    /// the relay retries those until `--sink-give-up-secs`, and the error is in its log.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            AuthError::BadFile { .. } | AuthError::EnvUnset(_) | AuthError::Client(_)
        )
    }
}

impl From<AuthError> for SinkError {
    fn from(e: AuthError) -> SinkError {
        if e.is_permanent() {
            SinkError::Fatal(format!("BigQuery credentials: {e}"))
        } else {
            SinkError::Transient(format!("BigQuery access token: {e}"))
        }
    }
}

/// The token to send, shared by the REST and the Storage Write clients.
#[derive(Clone)]
pub enum TokenSource {
    None,
    Static(Secret),
    Google(Arc<TokenCache>),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::None => f.write_str("TokenSource::None"),
            TokenSource::Static(s) => f.debug_tuple("TokenSource::Static").field(s).finish(),
            TokenSource::Google(c) => f.debug_tuple("TokenSource::Google").field(c).finish(),
        }
    }
}

impl TokenSource {
    /// Reads the credentials; a missing or malformed file is [`SinkError::Fatal`]. No
    /// token is fetched yet: the first call to [`TokenSource::token`] does.
    pub async fn new(c: &Credentials) -> Result<TokenSource, SinkError> {
        match c {
            Credentials::None => Ok(TokenSource::None),
            Credentials::TokenFromEnv(var) => std::env::var(var)
                .map(|t| TokenSource::Static(Secret::new(t)))
                .map_err(|_| AuthError::EnvUnset(var.clone()).into()),
            Credentials::Google(g) => TokenSource::google(g, &AdcEnv::from_process()),
        }
    }

    /// Google tokens from `g`'s file, else from Application Default Credentials chosen
    /// in `env`.
    pub fn google(g: &GoogleAuth, env: &AdcEnv) -> Result<TokenSource, SinkError> {
        let source = select(g.key_file.as_deref(), env);
        let flow = Flow::new(&source)?;
        tracing::info!(credentials = %flow.describe(), timeout = ?g.token_timeout, "BigQuery credentials");
        Ok(TokenSource::Google(Arc::new(TokenCache::new(
            flow,
            g.token_timeout,
        ))))
    }

    /// The current access token: cached, refreshed before it expires. A token that
    /// cannot be had is [`SinkError::Transient`] (the relay retries with backoff).
    pub async fn token(&self) -> Result<Option<String>, SinkError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.expose().to_owned())),
            TokenSource::Google(c) => {
                let t = c.token().await?;
                // The callers put it in a header; it leaves the Secret only here.
                Ok(Some(t.expose().to_owned()))
            }
        }
    }
}
