//! Revocation, one of two ways (`proxy.revocation`):
//! - introspection: RFC 7662 at the issuer, authenticated with `private_key_jwt` (a fresh
//!   assertion per call), "active" answers cached per `jti` for `revocation_cache`. One
//!   introspection per `jti` at a time; the cache is bounded.
//! - status list: offline, the token's bit in the issuer's Token Status List
//!   ([`mayfly_client::status::StatusLists`]: each list fetched once per its `ttl`, verified
//!   with the issuer's keys). A token without a `status` claim is refused.
//!
//! Both fail closed: an issuer (or list) that cannot be had means 503, never a forwarded call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_client::status::{StatusLists, StatusSourceError, TokenStatus};
use mayfly_crypto::SigningKey;
use mayfly_proto::{IntrospectionResponse, JWT_BEARER_ASSERTION_TYPE};

use crate::error::Refusal;
use crate::verify::{Caller, Issuer};

/// Most cached answers.
const MAX_ENTRIES: usize = 100_000;

/// How this proxy finds revoked tokens.
#[derive(Debug)]
pub enum RevocationCheck {
    /// Introspection at the issuer.
    Introspection(Revocation),
    /// The issuer's status lists.
    StatusList(StatusLists),
}

impl RevocationCheck {
    /// Whether the verified token (`caller`, from `token`) is still active.
    pub async fn check(&self, token: &str, caller: &Caller, now: i64) -> Result<(), Refusal> {
        match self {
            Self::Introspection(r) => r.check(token, caller, now).await,
            Self::StatusList(lists) => check_status(lists, caller, now).await,
        }
    }
}

/// The caller's bit in its status list.
async fn check_status(lists: &StatusLists, caller: &Caller, now: i64) -> Result<(), Refusal> {
    let Some(r) = &caller.status else {
        return Err(Refusal::InvalidToken(
            "the token carries no status list reference (status.status_list), which this proxy requires".into(),
        ));
    };
    match lists.status(r, now).await {
        Ok(TokenStatus::Valid) => Ok(()),
        Ok(TokenStatus::Revoked) => {
            tracing::info!(jti = %caller.jti, "the issuer's status list says the token is revoked");
            Err(Refusal::InvalidToken(
                "the token is revoked (its status list says INVALID)".into(),
            ))
        }
        Ok(TokenStatus::Unknown) => Err(Refusal::InvalidToken(
            "the token's status list does not cover its index".into(),
        )),
        Err(StatusSourceError::ForeignUri(_)) => Err(Refusal::InvalidToken(
            "the token's status list is not one of the issuer's".into(),
        )),
        Err(e) => {
            tracing::warn!(jti = %caller.jti, error = %e, "cannot check the token's status list; refusing calls meanwhile");
            Err(Refusal::IssuerUnavailable)
        }
    }
}

/// The cache and the proxy's client credentials.
pub struct Revocation {
    issuer: Arc<Issuer>,
    client_id: String,
    signer: SigningKey,
    ttl: Duration,
    active: Mutex<HashMap<String, Instant>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("client_id", &self.client_id)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Removes a jti's in-flight lock when its introspection ends (also on cancellation).
struct Inflight<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    jti: &'a str,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(self.jti);
        }
    }
}

impl Revocation {
    /// For the proxy's client `client_id`, signing assertions with `signer`.
    pub fn new(issuer: Arc<Issuer>, client_id: String, signer: SigningKey, ttl: Duration) -> Self {
        Self {
            issuer,
            client_id,
            signer,
            ttl,
            active: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, jti: &str) -> bool {
        self.active
            .lock()
            .ok()
            .and_then(|m| m.get(jti).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    fn remember(&self, jti: &str) {
        let Ok(mut m) = self.active.lock() else {
            return;
        };
        let now = Instant::now();
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, until| *until > now);
        }
        if m.len() >= MAX_ENTRIES {
            // All live: drop the oldest half (all share one lifetime, so the earliest ends).
            let mut ends: Vec<Instant> = m.values().copied().collect();
            ends.sort_unstable();
            let cut = ends[ends.len() / 2];
            m.retain(|_, until| *until > cut);
        }
        m.insert(jti.to_string(), now + self.ttl);
    }

    /// Whether the verified token (`caller`, from `token`) is still active at the issuer.
    pub async fn check(&self, token: &str, caller: &Caller, now: i64) -> Result<(), Refusal> {
        if self.ttl > Duration::ZERO && self.cached(&caller.jti) {
            return Ok(());
        }
        let lock = {
            let Ok(mut m) = self.inflight.lock() else {
                return Err(Refusal::IssuerUnavailable);
            };
            m.entry(caller.jti.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        let _cleanup = Inflight {
            map: &self.inflight,
            jti: &caller.jti,
        };
        if self.ttl > Duration::ZERO && self.cached(&caller.jti) {
            return Ok(());
        }
        metrics::counter!("mayfly_proxy_introspections_total").increment(1);
        let active = self.introspect(token, now).await?;
        if !active {
            tracing::info!(jti = %caller.jti, "the issuer says the token is not active (revoked)");
            return Err(Refusal::InvalidToken(
                "the token is not active at the issuer (revoked)".into(),
            ));
        }
        self.remember(&caller.jti);
        Ok(())
    }

    async fn introspect(&self, token: &str, now: i64) -> Result<bool, Refusal> {
        let unavailable = |what: &str| {
            tracing::warn!(
                problem = what,
                "cannot check revocation with the issuer; refusing calls meanwhile"
            );
            Refusal::IssuerUnavailable
        };
        let md = self
            .issuer
            .metadata()
            .await
            .map_err(|_| unavailable("discovery failed"))?;
        let assertion =
            mayfly_client::build_assertion(&self.signer, &self.client_id, &md.issuer, now)
                .map_err(|_| unavailable("cannot sign the client assertion"))?;
        let form = [
            ("token", token),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        let resp = self
            .issuer
            .http()
            .post(&md.introspection_endpoint)
            .form(&form)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                self.issuer.forget().await;
                return Err(unavailable("the introspection endpoint cannot be reached"));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            tracing::warn!(%status, client_id = %self.client_id, "the issuer refused the proxy's introspection request (is proxy.client_id registered with this key?)");
            return Err(Refusal::IssuerUnavailable);
        }
        let body: IntrospectionResponse = resp
            .json()
            .await
            .map_err(|_| unavailable("the introspection answer is not JSON"))?;
        Ok(body.active)
    }
}
