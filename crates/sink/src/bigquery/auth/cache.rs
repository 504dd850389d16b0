//! The token cache: one token at a time, replaced before it expires.
//!
//! - A token is served until its refresh point, `expires_in − margin` after the request
//!   for it was sent (not after the answer came: the lifetime runs from the server's
//!   clock, and the request's own latency is on the safe side this way).
//! - Concurrent callers share one refresh: one fetches, the others wait for it (or, with
//!   a still-valid token in hand, do not wait at all), and take its outcome, success or
//!   failure, instead of fetching again.
//! - A failed refresh while the old token is still valid logs a warning and keeps
//!   serving the old token; the next attempt waits [`RETRY_AFTER_FAILURE`] (never past
//!   expiry), so a hung endpoint costs a caller at most one timeout per interval.
//! - A failed fetch with no valid token is an error (transient for the sink).
//! - Every fetch is bounded by the timeout, whatever hangs: DNS, connect, the answer.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::flow::Flow;
use super::{AuthError, Secret};

/// The shortest margin: a call that read the token just before its refresh point still
/// has a minute to reach BigQuery, and a failing refresh gets a few retries before the
/// token expires.
const MIN_MARGIN: Duration = Duration::from_secs(60);

/// After a failed refresh with a still-valid token, the next attempt waits this long.
/// With Google's one-hour tokens the margin is 6 minutes: about 18 attempts before the
/// token expires, and a hung endpoint blocks a caller for at most a third of the time.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(20);

/// How long before expiry a token of `lifetime` is replaced: a tenth of its lifetime,
/// at least [`MIN_MARGIN`] (6 minutes for Google's one-hour tokens, so an outage of the
/// token endpoint shorter than that goes unnoticed), but at most half of it, so a
/// short-lived token (a metadata server hands out its cached token with whatever
/// lifetime is left) is still used for a while instead of being re-fetched on every call.
pub(super) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_MARGIN).min(lifetime / 2)
}

struct Cached {
    token: Secret,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// Completed fetch attempts: a caller that waited for another's refresh sees it
    /// change and shares that refresh's outcome.
    attempts: u64,
    /// The last attempt's error, if it failed.
    last_error: Option<AuthError>,
}

impl State {
    fn valid(&self, now: Instant) -> Option<Secret> {
        self.current
            .as_ref()
            .filter(|c| now < c.expires_at)
            .map(|c| c.token.clone())
    }

    fn fresh(&self, now: Instant) -> Option<Secret> {
        self.current
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.token.clone())
    }
}

pub struct TokenCache {
    flow: Flow,
    timeout: Duration,
    state: Mutex<State>,
    /// Held by the one caller fetching.
    refreshing: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The flow's own Debug redacts its keys; the token is left out entirely.
        f.debug_struct("TokenCache")
            .field("flow", &self.flow)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(super) fn new(flow: Flow, timeout: Duration) -> TokenCache {
        TokenCache {
            flow,
            timeout,
            state: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a plain assignment: a panic elsewhere cannot
        // leave it half-written, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token valid now, fetching one if the cached one reached its refresh point.
    pub(super) async fn token(&self) -> Result<Secret, AuthError> {
        let seen = {
            let s = self.state();
            if let Some(t) = s.fresh(Instant::now()) {
                return Ok(t);
            }
            s.attempts
        };
        let _refreshing = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another caller is fetching: a still-valid token serves meanwhile.
                if let Some(t) = self.state().valid(Instant::now()) {
                    return Ok(t);
                }
                self.refreshing.lock().await
            }
        };
        {
            let s = self.state();
            if s.attempts != seen {
                // A refresh finished since this call looked: share its outcome.
                if let Some(t) = s.valid(Instant::now()) {
                    return Ok(t);
                }
                if let Some(e) = &s.last_error {
                    return Err(e.clone());
                }
            }
        }
        let sent = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.flow.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(AuthError::Timeout {
                endpoint: self.flow.endpoint().to_owned(),
                after: self.timeout,
            }),
        };
        let now = Instant::now();
        let mut s = self.state();
        s.attempts += 1;
        match result {
            Ok(fetched) => {
                let expires_at = sent + fetched.lifetime;
                s.current = Some(Cached {
                    token: fetched.token.clone(),
                    expires_at,
                    refresh_at: expires_at - refresh_margin(fetched.lifetime),
                });
                s.last_error = None;
                Ok(fetched.token)
            }
            Err(e) => {
                s.last_error = Some(e.clone());
                match s.current.as_mut().filter(|c| now < c.expires_at) {
                    Some(c) => {
                        tracing::warn!(
                            error = %e,
                            valid_for = ?c.expires_at - now,
                            "Refreshing the BigQuery access token failed; the current one is used until it expires"
                        );
                        c.refresh_at = (now + RETRY_AFTER_FAILURE).min(c.expires_at);
                        Ok(c.token.clone())
                    }
                    None => Err(e),
                }
            }
        }
    }
}
