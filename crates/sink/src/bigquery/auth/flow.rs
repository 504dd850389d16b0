//! How one access token is fetched: from the metadata server, with a service-account
//! key (a signed JWT exchanged at the key's `token_uri`, RFC 7523), or with an
//! `authorized_user` file's refresh token (RFC 6749 §6).
//!
//! Implemented here rather than through `yup_oauth2` (which `gcp-bigquery-client`
//! brings) because that crate hard-codes the metadata host (no `GCE_METADATA_HOST`),
//! keeps its own cache with its own refresh rule, and its `ServiceAccountKey` prints
//! the private key in `Debug`. The three flows are one HTTP request each.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

use super::{AuthError, FileOrigin, GoogleSource, Secret, SCOPE};

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Where Google's authorized_user files are exchanged (gcloud's files name none).
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's token path for the instance's (or pod's) service account.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// A signed JWT asks for a token this long; Google's maximum.
const JWT_LIFETIME_SECS: u64 = 3600;
/// When an answer omits `expires_in` (Google's always carry it): assume a short life,
/// so a wrong guess costs an early refresh, not calls with an expired token.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// An error answer's OAuth fields are quoted up to this many characters.
const MAX_DETAIL: usize = 200;

/// A token and how long it lives, counted from when the request was sent.
pub(super) struct Fetched {
    pub token: Secret,
    pub lifetime: Duration,
}

pub(super) struct ServiceAccount {
    client_email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: String,
}

pub(super) struct AuthorizedUser {
    client_id: String,
    client_secret: Secret,
    refresh_token: Secret,
    token_uri: String,
}

pub(super) enum Kind {
    Metadata,
    ServiceAccount(Box<ServiceAccount>),
    AuthorizedUser(AuthorizedUser),
}

/// One way to fetch a token, with its HTTP client.
pub(super) struct Flow {
    kind: Kind,
    /// The token URL (no secret in it: credentials travel in headers and bodies).
    endpoint: String,
    /// Where the credentials came from, for the start-up log line.
    origin: String,
    http: reqwest::Client,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what `describe` says: the key, the refresh token and the client secret
        // are never printed.
        f.debug_struct("Flow")
            .field("credentials", &self.describe())
            .finish_non_exhaustive()
    }
}

/// A file-level error: the reason is fixed text or a parser position, never content.
fn bad_file(path: &Path, origin: FileOrigin, reason: impl Into<String>) -> AuthError {
    AuthError::BadFile {
        path: path.to_owned(),
        origin,
        reason: reason.into(),
    }
}

fn client(no_proxy: bool) -> Result<reqwest::Client, AuthError> {
    let b = reqwest::Client::builder();
    // The metadata server is link-local: a proxy from the environment would not reach
    // it (Google's libraries bypass proxies for it too). Token URIs honour proxies.
    let b = if no_proxy { b.no_proxy() } else { b };
    b.build().map_err(|e| AuthError::Client(e.to_string()))
}

impl Flow {
    /// Reads and checks the credentials now, so a malformed file fails at start.
    pub(super) fn new(source: &GoogleSource) -> Result<Flow, AuthError> {
        match source {
            GoogleSource::Metadata { host } => Ok(Flow {
                kind: Kind::Metadata,
                endpoint: format!("http://{host}{METADATA_TOKEN_PATH}"),
                origin: format!(
                    "the metadata server at {host} (no credentials file: GKE workload identity or the GCE service account)"
                ),
                http: client(true)?,
            }),
            GoogleSource::File { path, origin } => Flow::from_file(path, *origin),
        }
    }

    fn from_file(path: &Path, origin: FileOrigin) -> Result<Flow, AuthError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad_file(path, origin, e.to_string()))?;
        // Parsed as a Value, then field by field: serde's type errors quote the
        // offending value, which could be the key.
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            bad_file(
                path,
                origin,
                format!("not JSON (line {}, column {})", e.line(), e.column()),
            )
        })?;
        let field = |name: &str| -> Result<String, AuthError> {
            v.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| bad_file(path, origin, format!("no `{name}` string")))
        };
        let optional = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let (kind, endpoint, who) = match v.get("type").and_then(Value::as_str) {
            Some("service_account") => {
                let der = pem_private_key(&field("private_key")?)
                    .map_err(|reason| bad_file(path, origin, format!("private_key: {reason}")))?;
                let key = match der.kind {
                    PemKind::Pkcs8 => RsaKeyPair::from_pkcs8(&der.bytes),
                    PemKind::Pkcs1 => RsaKeyPair::from_der(&der.bytes),
                }
                .map_err(|e| {
                    bad_file(
                        path,
                        origin,
                        format!("private_key is not a usable RSA key ({e})"),
                    )
                })?;
                let sa = ServiceAccount {
                    client_email: field("client_email")?,
                    key_id: optional("private_key_id").map(str::to_owned),
                    key,
                    token_uri: field("token_uri")?,
                };
                let who = format!("service account {}", sa.client_email);
                let endpoint = sa.token_uri.clone();
                (Kind::ServiceAccount(Box::new(sa)), endpoint, who)
            }
            Some("authorized_user") => {
                let user = AuthorizedUser {
                    client_id: field("client_id")?,
                    client_secret: Secret::new(field("client_secret")?),
                    refresh_token: Secret::new(field("refresh_token")?),
                    token_uri: optional("token_uri").unwrap_or(GOOGLE_TOKEN_URI).to_owned(),
                };
                let endpoint = user.token_uri.clone();
                (
                    Kind::AuthorizedUser(user),
                    endpoint,
                    "authorized user (refresh token)".to_owned(),
                )
            }
            Some(other) => {
                // The type is not secret; quoted short so a garbage file cannot flood.
                let other: String = other.chars().take(40).collect();
                return Err(bad_file(
                    path,
                    origin,
                    format!("type `{other}` is not supported (service_account or authorized_user)"),
                ));
            }
            None => {
                return Err(bad_file(
                    path,
                    origin,
                    "no `type` (service_account or authorized_user)",
                ))
            }
        };
        Ok(Flow {
            kind,
            endpoint,
            origin: format!("{who} from {} ({origin})", path.display()),
            http: client(false)?,
        })
    }

    /// Where the credentials come from, for logs (no secret).
    pub(super) fn describe(&self) -> &str {
        &self.origin
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One token request. The caller bounds it with the timeout.
    pub(super) async fn fetch(&self) -> Result<Fetched, AuthError> {
        let req = match &self.kind {
            Kind::Metadata => self
                .http
                .get(&self.endpoint)
                .header("Metadata-Flavor", "Google"),
            Kind::ServiceAccount(sa) => {
                let assertion = sa.assertion()?;
                self.http
                    .post(&self.endpoint)
                    .form(&[("grant_type", JWT_GRANT), ("assertion", assertion.expose())])
            }
            Kind::AuthorizedUser(u) => self.http.post(&self.endpoint).form(&[
                ("grant_type", "refresh_token"),
                ("client_id", u.client_id.as_str()),
                ("client_secret", u.client_secret.expose()),
                ("refresh_token", u.refresh_token.expose()),
            ]),
        };
        let resp = req.send().await.map_err(|e| self.request_error(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.request_error(&e))?;
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(AuthError::Refused {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                detail: answer.as_ref().map(oauth_error).unwrap_or_default(),
            });
        }
        let bad = |reason: &str| AuthError::BadAnswer {
            endpoint: self.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let answer = answer.ok_or_else(|| bad("not JSON"))?;
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        if let Some(t) = answer.get("token_type").and_then(Value::as_str) {
            if !t.eq_ignore_ascii_case("bearer") {
                return Err(bad("token_type is not Bearer"));
            }
        }
        let lifetime = match answer.get("expires_in") {
            None | Some(Value::Null) => DEFAULT_LIFETIME,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|&s| s > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| bad("expires_in is not a positive number of seconds"))?,
        };
        Ok(Fetched {
            token: Secret::new(token),
            lifetime,
        })
    }

    fn request_error(&self, e: &reqwest::Error) -> AuthError {
        // reqwest's own text is one line ("error sending request for url (…)"); the
        // cause (refused, DNS, reset) is in its sources. None of them holds a body.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        AuthError::Request {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

/// `error: error_description` of an OAuth error answer (or the metadata server's).
fn oauth_error(v: &Value) -> String {
    let part = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(MAX_DETAIL).collect::<String>())
    };
    match (part("error"), part("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e,
        (None, Some(d)) => d,
        (None, None) => String::new(),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl ServiceAccount {
    /// A JWT asking `token_uri` for a BigQuery token, signed RS256 with the key.
    fn assertion(&self) -> Result<Secret, AuthError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuthError::Sign("the system clock is before 1970".to_owned()))?
            .as_secs();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECS,
        });
        let mut jwt = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| AuthError::Sign("RSA signing failed".to_owned()))?;
        jwt.push('.');
        jwt.push_str(&b64url(&signature));
        Ok(Secret::new(jwt))
    }
}

enum PemKind {
    /// `PRIVATE KEY` (what Google issues).
    Pkcs8,
    /// `RSA PRIVATE KEY`.
    Pkcs1,
}

struct Der {
    kind: PemKind,
    bytes: Vec<u8>,
}

/// The DER inside a PEM private key. Errors are fixed texts: the input is key material.
fn pem_private_key(pem: &str) -> Result<Der, &'static str> {
    let (kind, begin, end) = if pem.contains("-----BEGIN PRIVATE KEY-----") {
        (
            PemKind::Pkcs8,
            "-----BEGIN PRIVATE KEY-----",
            "-----END PRIVATE KEY-----",
        )
    } else if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        (
            PemKind::Pkcs1,
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
        )
    } else {
        return Err("no PEM `PRIVATE KEY` block");
    };
    let body = pem
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(body, _)| body)
        .ok_or("the PEM block has no END line")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the PEM block is not base64")?;
    Ok(Der { kind, bytes })
}
