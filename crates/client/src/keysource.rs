//! The one JWKS key source: a JWK Set fetched from a URL, or found through discovery (OpenID
//! Connect or RFC 8414 metadata → `jwks_uri`), and cached.
//!
//! - Single flight: concurrent callers that need a fetch share one; the others wait for it and
//!   reuse its result.
//! - Kept for the response's `Cache-Control: max-age`, clamped to the use's [`TtlRule`].
//! - An unknown `kid` refetches at most once per [`KeySourceOptions::unknown_kid_interval`]
//!   (and, after a failure, once per [`KeySourceOptions::retry_after_error`] if shorter), by
//!   the caller's clock (`now`), so a flood of forged `kid`s costs the issuer one request.
//! - Stale on error: the last good keys keep serving while the issuer is down.
//! - https only (plain http to a loopback host), redirects followed only within the origin,
//!   responses bounded in size and time.
//!
//! Every use (trusted issuers, `jwks_uri` clients, the proxy) passes its own options.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mayfly_crypto::VerifyingKeys;
use reqwest::Url;

mod http;
pub use http::fetchable;
use http::http_client;

/// How long fetched keys are kept, in seconds: the response's `Cache-Control: max-age`
/// clamped to `min..=max`, `default` when it says nothing usable, `min` for `no-store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlRule {
    /// Without a usable `Cache-Control`.
    pub default: i64,
    /// Least time kept.
    pub min: i64,
    /// Most time kept.
    pub max: i64,
}

impl TtlRule {
    /// Keys kept until an unknown `kid` asks for new ones, whatever the response says.
    pub const UNTIL_UNKNOWN_KID: Self = Self {
        default: i64::MAX,
        min: i64::MAX,
        max: i64::MAX,
    };

    /// The lifetime a response with this `Cache-Control` value gets.
    pub fn ttl(&self, cache_control: Option<&str>) -> i64 {
        use mayfly_proto::cache::{Freshness, freshness};
        match cache_control.map(freshness) {
            Some(Freshness::DoNotKeep) => self.min,
            Some(Freshness::MaxAge(n)) => i64::try_from(n)
                .unwrap_or(i64::MAX)
                .clamp(self.min, self.max),
            Some(Freshness::Unspecified) | None => self.default,
        }
    }
}

/// The rules of one use of a key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySourceOptions {
    /// Cache lifetime.
    pub ttl: TtlRule,
    /// Least seconds between two fetches asked for by an unknown `kid`.
    pub unknown_kid_interval: i64,
    /// Whether that interval runs from any fetch (`true`), or only from the last one an
    /// unknown `kid` asked for (`false`: a scheduled refresh does not delay learning a new key).
    pub interval_from_any_fetch: bool,
    /// Least seconds before a failed fetch is tried again.
    pub retry_after_error: i64,
    /// Most redirects followed (each within the origin of the first URL).
    pub max_redirects: usize,
    /// Largest document accepted, in bytes.
    pub max_bytes: usize,
    /// Deadline of one request (connect included).
    pub timeout: Duration,
}

/// Where the keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// A JWK Set URL.
    JwkSet(Url),
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`.
    OpenIdDiscovery(String),
    /// `{issuer}/.well-known/oauth-authorization-server` (RFC 8414) names the `jwks_uri`.
    OAuthDiscovery(String),
}

/// Why a fetch failed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySourceError {
    /// A URL that is neither https nor http to a loopback host.
    #[error("{0}: keys are fetched over https only (plain http on loopback only)")]
    NotHttps(String),
    /// The request failed (connection, timeout, a redirect refused).
    #[error("cannot fetch {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A status other than success (a redirect not followed is one).
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document is larger than the cap.
    #[error("{url} is larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        max: usize,
    },
    /// The document is not the JSON expected (metadata naming another issuer, no `jwks_uri`,
    /// an unusable JWK Set).
    #[error("{url}: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Keys given at start-up are never fetched.
    #[error("fixed keys are not fetched")]
    Fixed,
    /// The cache's lock was poisoned by a panic elsewhere.
    #[error("the key cache is unusable")]
    Poisoned,
}

/// Called after every fetch with the source's name and whether it succeeded (for metrics).
pub type FetchHook = Box<dyn Fn(&str, bool) + Send + Sync>;

struct State {
    keys: Option<Arc<VerifyingKeys>>,
    /// Unix time from which the keys are stale.
    fresh_until: i64,
    /// Unix time of the last fetch attempt.
    last_attempt: i64,
    /// Unix time of the last fetch attempt an unknown `kid` asked for.
    last_kid_attempt: i64,
    last_failed: bool,
    /// Bumped by every successful fetch: a waiter that sees it changed reuses that fetch.
    generation: u64,
    /// The `jwks_uri` discovery found, until a fetch fails.
    jwks_uri: Option<Url>,
}

/// A cached JWK Set, fetched under one use's [`KeySourceOptions`].
pub struct KeySource {
    name: String,
    /// `None`: fixed keys.
    location: Option<KeyLocation>,
    options: KeySourceOptions,
    http: Option<reqwest::Client>,
    state: RwLock<State>,
    fetch: tokio::sync::Mutex<()>,
    hook: Option<FetchHook>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish()
    }
}

impl KeySource {
    /// A source named `name` (in logs and the fetch hook) for keys at `location`. Nothing is
    /// fetched until first use.
    pub fn new(
        name: impl Into<String>,
        location: KeyLocation,
        options: KeySourceOptions,
    ) -> Result<Self, KeySourceError> {
        let http = http_client(&options)?;
        Ok(Self::build(
            name.into(),
            Some(location),
            options,
            Some(http),
            None,
        ))
    }

    /// Keys given at start-up: never fetched, never stale.
    pub fn fixed(name: impl Into<String>, keys: VerifyingKeys) -> Self {
        let options = KeySourceOptions {
            ttl: TtlRule::UNTIL_UNKNOWN_KID,
            unknown_kid_interval: i64::MAX,
            interval_from_any_fetch: true,
            retry_after_error: i64::MAX,
            max_redirects: 0,
            max_bytes: 0,
            timeout: Duration::ZERO,
        };
        Self::build(name.into(), None, options, None, Some(Arc::new(keys)))
    }

    fn build(
        name: String,
        location: Option<KeyLocation>,
        options: KeySourceOptions,
        http: Option<reqwest::Client>,
        keys: Option<Arc<VerifyingKeys>>,
    ) -> Self {
        let fixed = keys.is_some();
        Self {
            name,
            location,
            options,
            http,
            state: RwLock::new(State {
                keys,
                fresh_until: if fixed { i64::MAX } else { i64::MIN },
                last_attempt: i64::MIN / 2,
                last_kid_attempt: i64::MIN / 2,
                last_failed: false,
                generation: 0,
                jwks_uri: None,
            }),
            fetch: tokio::sync::Mutex::new(()),
            hook: None,
        }
    }

    /// Call `hook` after every fetch (metrics).
    pub fn with_fetch_hook(mut self, hook: FetchHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys held now, fetching nothing.
    pub fn current(&self) -> Option<Arc<VerifyingKeys>> {
        self.state.read().ok().and_then(|s| s.keys.clone())
    }

    /// Bumped by every successful fetch.
    pub fn generation(&self) -> u64 {
        self.state.read().map_or(0, |s| s.generation)
    }

    /// The keys at `now`, refetched first when stale (a failed refetch keeps the old keys).
    /// `None` only when no keys were ever fetched.
    pub async fn keys(&self, now: i64) -> Option<Arc<VerifyingKeys>> {
        self.refresh_if_stale(now).await;
        self.current()
    }

    /// Refetch if the keys are stale at `now` (and a failed attempt is not too recent).
    /// Returns whether new keys were installed.
    pub async fn refresh_if_stale(&self, now: i64) -> bool {
        let seen = self.generation();
        self.refresh(now, seen, Trigger::Stale).await
    }

    /// A token named a `kid` the keys of generation `seen` lack: refetch, rate-limited.
    /// Returns whether keys newer than `seen` are installed (by this call or a concurrent one).
    pub async fn refresh_unknown_kid(&self, now: i64, seen: u64) -> bool {
        self.refresh(now, seen, Trigger::UnknownKid).await
    }

    /// Run `verify` with the keys at `now`; when the keys lack the token's `kid` (as
    /// `unknown_kid` tells) or there are none yet, refetch once (rate-limited) and run it again.
    /// `Err(None)`: no keys were ever fetched and none can be now (the issuer is unreachable).
    pub async fn verify_with<T, E>(
        &self,
        now: i64,
        verify: impl Fn(&VerifyingKeys) -> Result<T, E>,
        unknown_kid: impl Fn(&E) -> bool,
    ) -> Result<T, Option<E>> {
        let seen = self.generation();
        match self.keys(now).await.map(|k| verify(&k)) {
            Some(Err(e)) if unknown_kid(&e) => {}
            None => {}
            Some(done) => return done.map_err(Some),
        }
        self.refresh_unknown_kid(now, seen).await;
        let keys = self.current().ok_or(None)?;
        verify(&keys).map_err(Some)
    }

    /// Fetch now, whatever the rate limits say, and install the keys (start-up).
    pub async fn fetch_now(&self, now: i64) -> Result<Arc<VerifyingKeys>, KeySourceError> {
        let _one = self.fetch.lock().await;
        self.fetch_and_install(now).await
    }

    async fn refresh(&self, now: i64, seen: u64, trigger: Trigger) -> bool {
        if self.location.is_none() {
            return false;
        }
        // One fetch at a time; whoever waited behind it reuses its result.
        let _one = self.fetch.lock().await;
        {
            let Ok(mut s) = self.state.write() else {
                return false;
            };
            if s.generation != seen {
                return true;
            }
            let o = &self.options;
            let due = match trigger {
                Trigger::Stale => {
                    now >= s.fresh_until
                        && (!s.last_failed
                            || now.saturating_sub(s.last_attempt) >= o.retry_after_error)
                }
                Trigger::UnknownKid => {
                    let from = if o.interval_from_any_fetch {
                        s.last_attempt
                    } else {
                        s.last_kid_attempt
                    };
                    let wait = if s.last_failed {
                        o.retry_after_error.min(o.unknown_kid_interval)
                    } else {
                        o.unknown_kid_interval
                    };
                    now.saturating_sub(from) >= wait
                }
            };
            if !due {
                return false;
            }
            if matches!(trigger, Trigger::UnknownKid) {
                s.last_kid_attempt = now;
            }
        }
        self.fetch_and_install(now).await.is_ok()
    }

    /// Fetch and install; the caller holds `self.fetch`.
    async fn fetch_and_install(&self, now: i64) -> Result<Arc<VerifyingKeys>, KeySourceError> {
        let cached_uri = match self.state.write() {
            Ok(mut s) => {
                s.last_attempt = now;
                s.jwks_uri.clone()
            }
            Err(_) => None,
        };
        let result = self.fetch_keys(cached_uri).await;
        if let Some(hook) = &self.hook {
            hook(&self.name, result.is_ok());
        }
        let Ok(mut s) = self.state.write() else {
            return Err(KeySourceError::Poisoned);
        };
        match result {
            Ok((keys, ttl, uri)) => {
                tracing::info!(source = %self.name, keys = keys.len(), "fetched the JWK Set");
                let keys = Arc::new(keys);
                s.keys = Some(keys.clone());
                s.fresh_until = now.saturating_add(ttl);
                s.last_failed = false;
                s.generation += 1;
                s.jwks_uri = uri;
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "cannot fetch the JWK Set; the cached keys (if any) keep serving");
                s.last_failed = true;
                s.jwks_uri = None;
                Err(e)
            }
        }
    }
}

/// What asks for a fetch.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// The keys' lifetime ran out.
    Stale,
    /// A token named a `kid` the keys lack.
    UnknownKid,
}
