//! A verifier's copies of an issuer's status lists: fetched from the URI a token names (only
//! URIs under `{issuer}/statuslists/`: a token must not make the verifier fetch anything else),
//! verified ([`verify_list_token`], signature by the issuer's key source), kept for the list's
//! `ttl` and fetched again after it.
//!
//! - Single flight: concurrent callers that need a list wait for one fetch of it.
//! - Bounded: at most [`StatusListOptions::max_lists`] lists and
//!   [`StatusListOptions::max_cached_bytes`] decompressed bytes are held; a response is read up
//!   to [`StatusListOptions::max_response_bytes`].
//! - Fail closed: a copy whose `exp` has passed is never used. When the list cannot be fetched
//!   or verified, an unexpired copy keeps answering; past its `exp`, the token is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;

use super::{StatusBits, StatusListError, StatusListRef, verify_list_token};
use crate::access::{AccessClaims, AccessTokenError, StatusRule, status_to_check};
use crate::keysource::{KeySource, fetchable};

/// The media type of a status list token.
pub const STATUS_LIST_MEDIA_TYPE: &str = "application/statuslist+jwt";

/// The rules of a verifier's status lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListOptions {
    /// The issuer identifier: lists are fetched only from `{issuer}/statuslists/{name}`.
    pub issuer: String,
    /// Seconds a copy is used before it is fetched again when the list has no `ttl`.
    pub default_ttl: i64,
    /// Least seconds a copy is used (bounds the fetch rate whatever `ttl` says).
    pub min_ttl: i64,
    /// Most seconds a copy is used before it is fetched again, whatever `ttl` says.
    pub max_ttl: i64,
    /// Least seconds before a failed fetch of a list is tried again.
    pub retry_after_error: i64,
    /// Seconds of clock skew allowed on the list's `iat`.
    pub skew: i64,
    /// Most lists held.
    pub max_lists: usize,
    /// Largest response read, in bytes.
    pub max_response_bytes: usize,
    /// Most decompressed list bytes held, all lists together.
    pub max_cached_bytes: usize,
    /// Deadline of one fetch (connect included).
    pub timeout: Duration,
}

impl StatusListOptions {
    /// The defaults for `issuer`: `ttl` 60 s when the list says none, between 1 s and 1 h,
    /// a failed fetch retried after 1 s, 30 s skew, 16 lists, 8 MiB per response, 64 MiB in
    /// all, 10 s per fetch.
    pub fn for_issuer(issuer: &str) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_string(),
            default_ttl: 60,
            min_ttl: 1,
            max_ttl: 3600,
            retry_after_error: 1,
            skew: 30,
            max_lists: 16,
            max_response_bytes: super::MAX_LIST_TOKEN_LEN,
            max_cached_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A token's status, as its list says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// The bit is clear.
    Valid,
    /// The bit is set: revoked.
    Revoked,
    /// The list does not cover the index.
    Unknown,
}

/// Why a list could not answer. Never carries token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusSourceError {
    /// The URI is not a status list of the configured issuer.
    #[error("the status list URI is not under {0}/statuslists/")]
    ForeignUri(String),
    /// The list cannot be fetched, and no unexpired copy is held.
    #[error("cannot fetch the status list {uri}: {reason}")]
    Unavailable {
        /// The list's URI.
        uri: String,
        /// What failed.
        reason: String,
    },
    /// The list was fetched but does not verify, and no unexpired copy is held.
    #[error("the status list {uri} is invalid: {error}")]
    Invalid {
        /// The list's URI.
        uri: String,
        /// Why.
        error: StatusListError,
    },
}

impl From<StatusSourceError> for AccessTokenError {
    fn from(e: StatusSourceError) -> Self {
        Self::StatusUnavailable(e.to_string())
    }
}

/// How one fetch of a list ended (the `result` label of a fetch metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// Fetched and verified.
    Ok,
    /// The issuer could not be reached, or answered an error status.
    Error,
    /// The answer did not verify.
    Invalid,
}

impl FetchResult {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Invalid => "invalid",
        }
    }
}

/// Called after every fetch (for metrics).
pub type StatusFetchHook = Box<dyn Fn(FetchResult) + Send + Sync>;

/// A verified copy of one list.
#[derive(Debug)]
struct Held {
    bits: Arc<StatusBits>,
    /// From then on the list is fetched again before it answers.
    fresh_until: i64,
    /// From then on the copy is never used.
    exp: i64,
}

#[derive(Debug, Default)]
struct SlotState {
    held: Option<Held>,
    last_attempt: Option<i64>,
    last_failed: bool,
    /// Bumped by every successful fetch: a waiter that sees it changed reuses that fetch.
    generation: u64,
}

/// One list: its copy and the lock its fetches take turns on.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    fetch: tokio::sync::Mutex<()>,
}

/// An issuer's status lists as one verifier holds them.
pub struct StatusLists {
    options: StatusListOptions,
    /// `{issuer}/statuslists/`.
    prefix: String,
    keys: Arc<KeySource>,
    http: reqwest::Client,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    fetches: AtomicU64,
    hook: Option<StatusFetchHook>,
}

impl std::fmt::Debug for StatusLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusLists")
            .field("issuer", &self.options.issuer)
            .finish()
    }
}

/// The copy's answer for `idx` at `now`, if it may still be used.
fn answer(held: Option<&Held>, idx: u64, now: i64) -> Option<TokenStatus> {
    let h = held.filter(|h| now < h.exp)?;
    let status = match usize::try_from(idx).ok().and_then(|i| h.bits.get(i)) {
        None => TokenStatus::Unknown,
        Some(true) => TokenStatus::Revoked,
        Some(false) => TokenStatus::Valid,
    };
    Some(status)
}

impl StatusLists {
    /// Lists of `options.issuer`, verified with the keys of `keys` (the same source that
    /// verifies the issuer's access tokens). Nothing is fetched until first use.
    pub fn new(
        options: StatusListOptions,
        keys: Arc<KeySource>,
    ) -> Result<Self, StatusSourceError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // The URI is the issuer's own: a redirect would leave the prefix that was checked.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StatusSourceError::Unavailable {
                uri: "-".into(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            prefix: format!("{}/statuslists/", options.issuer),
            options,
            keys,
            http,
            slots: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            hook: None,
        })
    }

    /// Call `hook` after every fetch (metrics).
    pub fn with_fetch_hook(mut self, hook: StatusFetchHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Fetches made so far (successful or not).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The checks of one use of a verified token under `rule`: with [`StatusRule::Require`],
    /// a token without `status.status_list` is refused, a set bit is
    /// [`AccessTokenError::Revoked`], an index the list does not cover
    /// [`AccessTokenError::StatusUnknown`], a list that cannot be had
    /// [`AccessTokenError::StatusUnavailable`].
    pub async fn check<T: AccessClaims>(
        &self,
        claims: &T,
        rule: StatusRule,
        now: i64,
    ) -> Result<(), AccessTokenError> {
        let Some(r) = status_to_check(claims, rule)? else {
            return Ok(());
        };
        match self.status(&r, now).await? {
            TokenStatus::Valid => Ok(()),
            TokenStatus::Revoked => Err(AccessTokenError::Revoked),
            TokenStatus::Unknown => Err(AccessTokenError::StatusUnknown),
        }
    }

    /// The status of entry `r.idx` of list `r.uri` at `now` (Unix seconds), fetching the list
    /// when no fresh copy is held.
    pub async fn status(
        &self,
        r: &StatusListRef,
        now: i64,
    ) -> Result<TokenStatus, StatusSourceError> {
        let slot = self.slot(&r.uri, now)?;
        let seen = {
            let s = lock(&slot.state);
            let fresh = s.held.as_ref().filter(|h| now < h.fresh_until);
            if let Some(st) = answer(fresh, r.idx, now) {
                return Ok(st);
            }
            s.generation
        };
        // One fetch per list at a time; whoever waited behind it reuses its result.
        let _one = slot.fetch.lock().await;
        let due = {
            let s = lock(&slot.state);
            // Another caller's fetch just ended: its copy answers.
            let fetched = s.held.as_ref().filter(|_| s.generation != seen);
            if let Some(st) = answer(fetched, r.idx, now) {
                return Ok(st);
            }
            !s.last_failed
                || s.last_attempt
                    .is_none_or(|t| now.saturating_sub(t) >= self.options.retry_after_error)
                || s.generation != seen
        };
        let failure = if due {
            lock(&slot.state).last_attempt = Some(now);
            match self.fetch(&r.uri, self.list_url(&r.uri)?, now).await {
                Ok(bits) => {
                    self.install(&slot, bits, now);
                    None
                }
                Err(e) => {
                    let mut s = lock(&slot.state);
                    s.last_failed = true;
                    Some(e)
                }
            }
        } else {
            None
        };
        let s = lock(&slot.state);
        if let Some(st) = answer(s.held.as_ref(), r.idx, now) {
            if let Some(e) = &failure {
                tracing::warn!(error = %e, "status list fetch failed; the unexpired copy keeps answering");
            }
            return Ok(st);
        }
        Err(failure.unwrap_or_else(|| StatusSourceError::Unavailable {
            uri: r.uri.clone(),
            reason: "the last fetch failed and no unexpired copy is held".into(),
        }))
    }

    /// The URI as a URL, if it names one of the issuer's lists.
    fn list_url(&self, uri: &str) -> Result<Url, StatusSourceError> {
        let foreign = || StatusSourceError::ForeignUri(self.options.issuer.clone());
        let name = uri.strip_prefix(&self.prefix).ok_or_else(foreign)?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(foreign());
        }
        let url = Url::parse(uri).map_err(|_| foreign())?;
        if !fetchable(&url) {
            return Err(foreign());
        }
        Ok(url)
    }

    /// The slot of `uri`, made room for when new (lists whose copy expired go first, then the
    /// one that goes stale soonest). A new URI is checked first ([`Self::list_url`]): only
    /// the issuer's lists get a slot, so a known one needs no check (the per-call path).
    fn slot(&self, uri: &str, now: i64) -> Result<Arc<Slot>, StatusSourceError> {
        if let Some(s) = lock(&self.slots).get(uri) {
            return Ok(s.clone());
        }
        self.list_url(uri)?;
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(uri) {
            return Ok(s.clone());
        }
        if slots.len() >= self.options.max_lists.max(1) {
            let until = |s: &Arc<Slot>| {
                lock(&s.state)
                    .held
                    .as_ref()
                    .filter(|h| now < h.exp)
                    .map_or(i64::MIN, |h| h.fresh_until)
            };
            if let Some(victim) = slots
                .iter()
                .min_by_key(|(_, s)| until(s))
                .map(|(k, _)| k.clone())
            {
                slots.remove(&victim);
            }
        }
        let s = Arc::new(Slot::default());
        slots.insert(uri.to_string(), s.clone());
        Ok(s)
    }

    /// Install a fresh copy, dropping other lists' copies if the byte budget needs it.
    fn install(&self, slot: &Arc<Slot>, t: super::StatusListToken, now: i64) {
        let o = &self.options;
        let ttl = t
            .ttl
            .map_or(o.default_ttl, |t| i64::try_from(t).unwrap_or(i64::MAX))
            .clamp(o.min_ttl, o.max_ttl.max(o.min_ttl));
        let size = t.bits.len() / 8;
        {
            let slots = lock(&self.slots);
            let mut total = size;
            for other in slots.values().filter(|s| !Arc::ptr_eq(s, slot)) {
                let mut st = lock(&other.state);
                let held = st.held.as_ref().map_or(0, |h| h.bits.len() / 8);
                if total + held > o.max_cached_bytes {
                    st.held = None;
                } else {
                    total += held;
                }
            }
        }
        let mut s = lock(&slot.state);
        s.held = Some(Held {
            bits: Arc::new(t.bits),
            fresh_until: now.saturating_add(ttl).min(t.exp),
            exp: t.exp,
        });
        s.last_failed = false;
        s.generation += 1;
    }

    /// Fetch and verify one list; the caller holds its slot's fetch lock.
    async fn fetch(
        &self,
        uri: &str,
        url: Url,
        now: i64,
    ) -> Result<super::StatusListToken, StatusSourceError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_inner(uri, url, now).await;
        let label = match &result {
            Ok(_) => FetchResult::Ok,
            Err(StatusSourceError::Invalid { .. }) => FetchResult::Invalid,
            Err(_) => FetchResult::Error,
        };
        if let Some(hook) = &self.hook {
            hook(label);
        }
        match &result {
            Ok(t) => tracing::debug!(uri, entries = t.bits.len(), "fetched a status list"),
            Err(e) => tracing::warn!(error = %e, "cannot use the status list"),
        }
        result
    }

    async fn fetch_inner(
        &self,
        uri: &str,
        url: Url,
        now: i64,
    ) -> Result<super::StatusListToken, StatusSourceError> {
        let unavailable = |reason: String| StatusSourceError::Unavailable {
            uri: uri.to_string(),
            reason,
        };
        let invalid = |error: StatusListError| StatusSourceError::Invalid {
            uri: uri.to_string(),
            error,
        };
        let mut resp = self
            .http
            .get(url)
            .header("accept", STATUS_LIST_MEDIA_TYPE)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("answered {}", resp.status())));
        }
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !media.is_some_and(|m| m.eq_ignore_ascii_case(STATUS_LIST_MEDIA_TYPE)) {
            return Err(invalid(StatusListError::NotStatusList));
        }
        let max = self.options.max_response_bytes;
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(invalid(StatusListError::TooLong));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > max {
                return Err(invalid(StatusListError::TooLong));
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body).map_err(|_| invalid(StatusListError::Malformed))?;
        let skew = self.options.skew;
        let verified = self
            .keys
            .verify_with(
                now,
                |keys| verify_list_token(keys, text.trim(), uri, now, skew),
                |e| *e == StatusListError::UnknownKey,
            )
            .await
            .map_err(|e| match e {
                Some(e) => invalid(e),
                None => unavailable("the issuer's keys cannot be fetched".into()),
            })?;
        if verified.bits.len() / 8 > self.options.max_cached_bytes {
            return Err(invalid(StatusListError::List(super::StatusError::TooLarge)));
        }
        Ok(verified)
    }
}

/// A poisoned lock still holds consistent data here (every update is one assignment).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Claims;
    use axum::extract::{Path, State};
    use axum::response::IntoResponse;
    use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    /// What the test issuer serves at `/statuslists/{n}`.
    #[derive(Clone)]
    enum Serve {
        /// A list of 1024 entries with these set, this `ttl` and `exp`.
        List { set: Vec<usize>, ttl: u64, exp: i64 },
        /// A list signed by another key with the same `kid`.
        Forged,
        /// A list served as `application/json`.
        WrongType,
        /// 500.
        Down,
    }

    #[derive(Clone)]
    struct Issuer {
        key: Arc<SigningKey>,
        base: Arc<Mutex<String>>,
        serve: Arc<Mutex<Serve>>,
        hits: Arc<AtomicU64>,
        delay: Duration,
    }

    fn list_token(key: &SigningKey, uri: &str, set: &[usize], ttl: u64, exp: i64) -> String {
        let mut bits = StatusBits::new(1024);
        for &i in set {
            bits.set(i);
        }
        let c = json!({"sub": uri, "iat": NOW, "exp": exp, "ttl": ttl,
                       "status_list": {"bits": 1, "lst": bits.encode_lst()}});
        key.sign_jwt(Some("statuslist+jwt"), &c).unwrap()
    }

    async fn serve(State(i): State<Issuer>, Path(n): Path<String>) -> axum::response::Response {
        i.hits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(i.delay).await;
        let uri = format!("{}/statuslists/{n}", lock(&i.base));
        let serve = lock(&i.serve).clone();
        let ct = [("content-type", STATUS_LIST_MEDIA_TYPE)];
        match serve {
            Serve::List { set, ttl, exp } => {
                (ct, list_token(&i.key, &uri, &set, ttl, exp)).into_response()
            }
            Serve::Forged => {
                let other = SigningKey::generate(KeyAlg::EdDSA, Some("k1")).unwrap();
                (ct, list_token(&other, &uri, &[], 60, NOW + 600)).into_response()
            }
            Serve::WrongType => (
                [("content-type", "application/json")],
                list_token(&i.key, &uri, &[], 60, NOW + 600),
            )
                .into_response(),
            Serve::Down => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }

    async fn issuer(serve_: Serve, delay: Duration) -> (Issuer, StatusLists) {
        let key = SigningKey::generate(KeyAlg::EdDSA, Some("k1")).unwrap();
        let keys = VerifyingKeys::from_jwks(&json!({"keys": [key.public_jwk()]})).unwrap();
        let i = Issuer {
            key: Arc::new(key),
            base: Arc::default(),
            serve: Arc::new(Mutex::new(serve_)),
            hits: Arc::default(),
            delay,
        };
        let app = axum::Router::new()
            .route("/statuslists/{n}", axum::routing::get(serve))
            .with_state(i.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        *lock(&i.base) = base.clone();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let lists = StatusLists::new(
            StatusListOptions::for_issuer(&base),
            Arc::new(KeySource::fixed("test", keys)),
        )
        .unwrap();
        (i, lists)
    }

    fn at(i: &Issuer, list: &str, idx: u64) -> StatusListRef {
        StatusListRef {
            idx,
            uri: format!("{}/statuslists/{list}", lock(&i.base)),
        }
    }

    #[tokio::test]
    async fn a_list_is_fetched_once_per_ttl_and_answers_each_index() {
        let (i, lists) = issuer(
            Serve::List {
                set: vec![3],
                ttl: 60,
                exp: NOW + 600,
            },
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            lists.status(&at(&i, "1", 3), NOW).await,
            Ok(TokenStatus::Revoked)
        );
        assert_eq!(
            lists.status(&at(&i, "1", 4), NOW).await,
            Ok(TokenStatus::Valid)
        );
        assert_eq!(
            lists.status(&at(&i, "1", 1 << 20), NOW + 59).await,
            Ok(TokenStatus::Unknown)
        );
        assert_eq!((lists.fetches(), i.hits.load(Ordering::SeqCst)), (1, 1));
        // Past the ttl the list is fetched again and the new bit is seen.
        *lock(&i.serve) = Serve::List {
            set: vec![3, 4],
            ttl: 60,
            exp: NOW + 600,
        };
        assert_eq!(
            lists.status(&at(&i, "1", 4), NOW + 60).await,
            Ok(TokenStatus::Revoked)
        );
        assert_eq!(lists.fetches(), 2);
        // Another list is another fetch.
        assert_eq!(
            lists.status(&at(&i, "2", 4), NOW + 60).await,
            Ok(TokenStatus::Revoked)
        );
        assert_eq!(lists.fetches(), 3);
    }

    #[tokio::test]
    async fn concurrent_callers_wait_for_one_fetch() {
        let (i, lists) = issuer(
            Serve::List {
                set: vec![7],
                ttl: 60,
                exp: NOW + 600,
            },
            Duration::from_millis(200),
        )
        .await;
        let lists = Arc::new(lists);
        let calls: Vec<_> = (0..32u64)
            .map(|n| {
                let lists = lists.clone();
                let r = at(&i, "1", n % 8);
                tokio::spawn(async move { lists.status(&r, NOW).await })
            })
            .collect();
        let mut revoked = 0;
        for c in calls {
            if c.await.unwrap().unwrap() == TokenStatus::Revoked {
                revoked += 1;
            }
        }
        assert_eq!(revoked, 4);
        assert_eq!(i.hits.load(Ordering::SeqCst), 1);
        assert_eq!(lists.fetches(), 1);
    }

    #[tokio::test]
    async fn only_the_issuers_lists_are_fetched() {
        let (i, lists) = issuer(
            Serve::List {
                set: vec![],
                ttl: 60,
                exp: NOW + 600,
            },
            Duration::ZERO,
        )
        .await;
        let base = lock(&i.base).clone();
        for uri in [
            "https://elsewhere.example.test/statuslists/1".to_string(),
            format!("{base}/statuslists/"),
            format!("{base}/statuslists/../jwks.json"),
            format!("{base}/statuslists/1?x=1"),
            format!("{base}/statuslists/1/2"),
            format!("{base}/statuslists/%2e%2e"),
            format!("{base}/other/1"),
            format!("{base}.evil.test/statuslists/1"),
            format!("{base}/statuslists/{}", "a".repeat(65)),
        ] {
            let r = StatusListRef { idx: 0, uri };
            assert_eq!(
                lists.status(&r, NOW).await,
                Err(StatusSourceError::ForeignUri(base.clone())),
                "{}",
                r.uri
            );
        }
        assert_eq!(i.hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_unexpired_copy_serves_while_the_issuer_is_down_then_tokens_are_refused() {
        let (i, lists) = issuer(
            Serve::List {
                set: vec![1],
                ttl: 10,
                exp: NOW + 120,
            },
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            lists.status(&at(&i, "1", 0), NOW).await,
            Ok(TokenStatus::Valid)
        );
        *lock(&i.serve) = Serve::Down;
        // Stale but unexpired: the fetch fails, the copy answers.
        assert_eq!(
            lists.status(&at(&i, "1", 1), NOW + 11).await,
            Ok(TokenStatus::Revoked)
        );
        assert_eq!(lists.fetches(), 2);
        // Within retry_after_error (1 s) no new attempt.
        assert_eq!(
            lists.status(&at(&i, "1", 0), NOW + 11).await,
            Ok(TokenStatus::Valid)
        );
        assert_eq!(lists.fetches(), 2);
        // At its exp the copy is no longer used: refused, with the reason.
        let e = lists.status(&at(&i, "1", 0), NOW + 120).await.unwrap_err();
        assert!(
            matches!(&e, StatusSourceError::Unavailable { reason, .. } if reason.contains("500")),
            "{e}"
        );
        // A forged list or one of the wrong media type is invalid, never used.
        for (list, serve_, error) in [
            ("8", Serve::Forged, StatusListError::BadSignature),
            ("9", Serve::WrongType, StatusListError::NotStatusList),
        ] {
            *lock(&i.serve) = serve_;
            let e = lists.status(&at(&i, list, 0), NOW).await.unwrap_err();
            assert_eq!(
                e,
                StatusSourceError::Invalid {
                    uri: at(&i, list, 0).uri,
                    error
                }
            );
            let e = lists.status(&at(&i, list, 0), NOW + 2).await.unwrap_err();
            assert!(matches!(e, StatusSourceError::Invalid { .. }), "{e}");
        }
        // The issuer back: the next attempt (a second later) succeeds.
        *lock(&i.serve) = Serve::List {
            set: vec![],
            ttl: 10,
            exp: NOW + 600,
        };
        assert_eq!(
            lists.status(&at(&i, "1", 1), NOW + 121).await,
            Ok(TokenStatus::Valid)
        );
    }

    #[tokio::test]
    async fn the_check_of_a_use_refuses_revoked_unknown_and_unlisted_tokens() {
        let (i, lists) = issuer(
            Serve::List {
                set: vec![5],
                ttl: 60,
                exp: NOW + 600,
            },
            Duration::ZERO,
        )
        .await;
        let claims = |status: Option<serde_json::Value>| -> Claims {
            let mut c = json!({"iss": "x", "sub": "s", "aud": "a", "exp": NOW + 60, "jti": "j"});
            if let Some(s) = status {
                c["status"] = s;
            }
            serde_json::from_value(c).unwrap()
        };
        let with = |idx: u64| {
            claims(Some(
                json!({"status_list": {"idx": idx, "uri": at(&i, "1", 0).uri}}),
            ))
        };
        let req = StatusRule::Require;
        assert_eq!(lists.check(&with(4), req, NOW).await, Ok(()));
        assert_eq!(
            lists.check(&with(5), req, NOW).await,
            Err(AccessTokenError::Revoked)
        );
        assert_eq!(
            lists.check(&with(5000), req, NOW).await,
            Err(AccessTokenError::StatusUnknown)
        );
        assert_eq!(
            lists.check(&claims(None), req, NOW).await,
            Err(AccessTokenError::NoStatus)
        );
        assert_eq!(
            lists.check(&claims(Some(json!({}))), req, NOW).await,
            Err(AccessTokenError::NoStatus)
        );
        // Ignored: nothing is looked at, even a revoked bit.
        assert_eq!(lists.check(&with(5), StatusRule::Ignore, NOW).await, Ok(()));
        // The same through plain JSON claims.
        let v = serde_json::to_value(with(5)).unwrap();
        assert_eq!(
            lists.check(&v, req, NOW).await,
            Err(AccessTokenError::Revoked)
        );
        *lock(&i.serve) = Serve::Down;
        let e = lists.check(&with(4), req, NOW + 700).await.unwrap_err();
        assert!(matches!(e, AccessTokenError::StatusUnavailable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn the_number_of_lists_held_is_bounded() {
        let (i, mut lists) = issuer(
            Serve::List {
                set: vec![],
                ttl: 60,
                exp: NOW + 600,
            },
            Duration::ZERO,
        )
        .await;
        lists.options.max_lists = 2;
        for n in 0..5 {
            lists.status(&at(&i, &n.to_string(), 0), NOW).await.unwrap();
            assert!(lock(&lists.slots).len() <= 2);
        }
        // The byte budget: room for one 128-byte list only.
        lists.options.max_cached_bytes = 200;
        lists.status(&at(&i, "a", 0), NOW).await.unwrap();
        lists.status(&at(&i, "b", 0), NOW).await.unwrap();
        let held: usize = lock(&lists.slots)
            .values()
            .filter(|s| lock(&s.state).held.is_some())
            .count();
        assert_eq!(held, 1);
    }
}
