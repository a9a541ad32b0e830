//! Trusted issuers of subject tokens and their keys. Keys are fetched over https (http only on
//! loopback), bounded in size and time, never across a redirect to another host, cached for the
//! issuer's `Cache-Control: max-age` (clamped), refreshed on an unknown `kid` at most once per
//! [`MIN_REFRESH`] however many requests ask (one fetch; the others wait for it and reuse it),
//! and kept serving when the issuer is briefly down.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use mayfly_config::{IssuerConfig, IssuerKeys};
use mayfly_crypto::VerifyingKeys;
use mayfly_sts::Denial;
use mayfly_sts::federation::{ClientAuthRule, TrustedIssuer, preset};
use mayfly_sts::identity::IdentityTemplate;

/// An unknown `kid` triggers at most one fetch per issuer in this many seconds.
pub const MIN_REFRESH: i64 = 30;
/// Cache lifetime when the issuer sends no usable `Cache-Control`.
const DEFAULT_TTL: i64 = 300;
/// Bounds on the cache lifetime an issuer may ask for.
const TTL_RANGE: (i64, i64) = (60, 24 * 3600);
/// Largest key document accepted.
const MAX_BYTES: usize = 256 * 1024;
/// Per-fetch deadline.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A trusted issuer that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("issuers: `{name}`: {problem}")]
pub struct IssuerError {
    /// The issuer's name.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

#[derive(Default)]
struct KeyState {
    keys: Option<Arc<VerifyingKeys>>,
    /// Unix time after which the keys should be refetched.
    fresh_until: i64,
    /// Last fetch attempt (success or not).
    last_attempt: i64,
    /// Bumped by each successful fetch: a waiter that sees it changed reuses that fetch.
    generation: u64,
}

/// One trusted issuer: the engine's view of it, and its key cache.
pub(crate) struct Issuer {
    pub trusted: TrustedIssuer,
    source: IssuerKeys,
    state: RwLock<KeyState>,
    fetch: tokio::sync::Mutex<()>,
}

/// All trusted issuers, by `iss`.
pub(crate) struct Issuers {
    by_iss: HashMap<String, Arc<Issuer>>,
    http: reqwest::Client,
}

fn alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The engine's view of one configured issuer (presets filled in, template parsed).
fn trusted(c: &IssuerConfig, global_max_ttl: i64) -> Result<TrustedIssuer, IssuerError> {
    let err = |problem: String| IssuerError {
        name: c.name.clone(),
        problem,
    };
    let p = c.preset.as_deref().and_then(preset);
    let template_text = c
        .identity
        .as_deref()
        .or(p.as_ref().map(|p| p.identity))
        .ok_or_else(|| err("no identity template and no preset".into()))?;
    let identity = IdentityTemplate::parse(template_text).map_err(|e| err(e.to_string()))?;
    let algorithms: Vec<Algorithm> = match (&c.algorithms, &p) {
        (Some(list), _) => list.iter().filter_map(|a| alg(a)).collect(),
        (None, Some(p)) => p.algorithms.to_vec(),
        (None, None) => vec![Algorithm::RS256, Algorithm::ES256],
    };
    let mut attributes: Vec<(String, String)> = p
        .as_ref()
        .map(|p| {
            p.attributes
                .iter()
                .map(|(n, ptr)| (n.to_string(), ptr.to_string()))
                .collect()
        })
        .unwrap_or_default();
    for (n, ptr) in &c.attributes {
        attributes.retain(|(x, _)| x != n);
        attributes.push((n.clone(), ptr.clone()));
    }
    Ok(TrustedIssuer {
        name: c.name.clone(),
        issuer: c.issuer.clone(),
        audiences: c.audiences.clone(),
        algorithms,
        max_token_age: c.max_token_age.as_secs() as i64,
        trust_domain: c.trust_domain.clone(),
        identity,
        attributes,
        one_time_use: c.one_time_use,
        client_auth: if c.client_auth_required {
            ClientAuthRule::Required
        } else {
            ClientAuthRule::Optional
        },
        max_ttl: c
            .max_ttl
            .map_or(global_max_ttl, |t| (t.as_secs() as i64).min(global_max_ttl)),
    })
}

/// How long to keep fetched keys, from the response's `Cache-Control`, clamped to [`TTL_RANGE`].
pub fn cache_ttl(header: Option<&str>) -> i64 {
    use mayfly_proto::cache::{Freshness, freshness};
    match header.map(freshness) {
        Some(Freshness::DoNotKeep) => TTL_RANGE.0,
        Some(Freshness::MaxAge(n)) => {
            (n.min(i64::MAX as u64) as i64).clamp(TTL_RANGE.0, TTL_RANGE.1)
        }
        Some(Freshness::Unspecified) | None => DEFAULT_TTL,
    }
}

impl Issuers {
    /// Set up every configured issuer. Static key sets are checked now; fetched ones on first use.
    pub(crate) fn new(configs: &[IssuerConfig], global_max_ttl: i64) -> Result<Self, IssuerError> {
        let mut by_iss = HashMap::with_capacity(configs.len());
        for c in configs {
            let trusted = trusted(c, global_max_ttl)?;
            let mut state = KeyState::default();
            if let IssuerKeys::Static(set) = &c.keys {
                let keys = VerifyingKeys::from_jwks(set).map_err(|e| IssuerError {
                    name: c.name.clone(),
                    problem: e.to_string(),
                })?;
                state.keys = Some(Arc::new(keys));
                state.fresh_until = i64::MAX;
            }
            by_iss.insert(
                c.issuer.clone(),
                Arc::new(Issuer {
                    trusted,
                    source: c.keys.clone(),
                    state: RwLock::new(state),
                    fetch: tokio::sync::Mutex::new(()),
                }),
            );
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // Follow a redirect only within the same origin, and only a few.
                let same = attempt.previous().first().is_some_and(|first| {
                    first.scheme() == attempt.url().scheme()
                        && first.host_str() == attempt.url().host_str()
                        && first.port_or_known_default() == attempt.url().port_or_known_default()
                });
                if same && attempt.previous().len() < 3 {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .build()
            .map_err(|e| IssuerError {
                name: "-".into(),
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { by_iss, http })
    }

    /// The issuer configured under `name`.
    pub(crate) fn find_by_name(&self, name: &str) -> Option<Arc<Issuer>> {
        self.by_iss
            .values()
            .find(|i| i.trusted.name == name)
            .cloned()
    }

    /// The issuer whose tokens carry this `iss`.
    pub(crate) fn find(&self, iss: &str) -> Option<Arc<Issuer>> {
        self.by_iss.get(iss).cloned()
    }

    /// The issuer's keys at `now`, refetched first when stale (rate-limited). `None` only when
    /// no keys were ever fetched.
    pub(crate) async fn keys(&self, i: &Issuer, now: i64) -> Option<Arc<VerifyingKeys>> {
        let (keys, stale, generation) = {
            let s = i.state.read().ok()?;
            (s.keys.clone(), now >= s.fresh_until, s.generation)
        };
        if stale {
            self.refresh(i, now, generation).await;
            return i.state.read().ok()?.keys.clone().or(keys);
        }
        keys
    }

    /// Run `verify` with the issuer's keys at `now`; when it finds the token's `kid` unknown,
    /// refetch once (rate-limited, see [`Issuers::refresh_on_unknown_kid`]) and run it again.
    /// Keys never fetched and not fetchable now are [`Denial::Unavailable`]: the issuer is
    /// unreachable, not the token wrong.
    pub(crate) async fn verify<T>(
        &self,
        i: &Issuer,
        now: i64,
        verify: impl Fn(&VerifyingKeys) -> Result<T, Denial>,
    ) -> Result<T, Denial> {
        let keys = self.keys(i, now).await;
        let first = match &keys {
            Some(k) => verify(k),
            None => Err(Denial::SubjectUnknownKey),
        };
        match first {
            Err(Denial::SubjectUnknownKey) => {
                if !self.refresh_on_unknown_kid(i, now).await {
                    return Err(match keys {
                        Some(_) => Denial::SubjectUnknownKey,
                        None => Denial::Unavailable,
                    });
                }
                let keys = self.keys(i, now).await.ok_or(Denial::Unavailable)?;
                verify(&keys)
            }
            other => other,
        }
    }

    /// A token named a `kid` the cached keys lack: refetch, at most once per [`MIN_REFRESH`].
    /// Returns whether new keys are installed.
    pub(crate) async fn refresh_on_unknown_kid(&self, i: &Issuer, now: i64) -> bool {
        let generation = match i.state.read() {
            Ok(s) => s.generation,
            Err(_) => return false,
        };
        self.refresh(i, now, generation).await;
        i.state.read().is_ok_and(|s| s.generation != generation)
    }

    async fn refresh(&self, i: &Issuer, now: i64, seen_generation: u64) {
        if matches!(i.source, IssuerKeys::Static(_)) {
            return;
        }
        // One fetch at a time; whoever waited behind it reuses its result.
        let _guard = i.fetch.lock().await;
        {
            let Ok(mut s) = i.state.write() else {
                return;
            };
            if s.generation != seen_generation || now - s.last_attempt < MIN_REFRESH {
                return;
            }
            s.last_attempt = now;
        }
        let name = i.trusted.name.as_str();
        match self.fetch_keys(&i.source).await {
            Ok((keys, ttl)) => {
                metrics::counter!("mayfly_issuer_key_fetches_total", "issuer" => name.to_string(), "result" => "ok").increment(1);
                if let Ok(mut s) = i.state.write() {
                    s.keys = Some(Arc::new(keys));
                    s.fresh_until = now + ttl;
                    s.generation += 1;
                }
            }
            Err(e) => {
                metrics::counter!("mayfly_issuer_key_fetches_total", "issuer" => name.to_string(), "result" => "error").increment(1);
                tracing::warn!(issuer = %name, error = %e, "cannot fetch the issuer's keys; the cached keys (if any) keep serving");
            }
        }
    }

    async fn fetch_keys(&self, source: &IssuerKeys) -> Result<(VerifyingKeys, i64), String> {
        let url = match source {
            IssuerKeys::Static(_) => return Err("static keys are not fetched".into()),
            IssuerKeys::Uri(u) => u.clone(),
            IssuerKeys::Discovery(issuer) => {
                let base = issuer.as_str().trim_end_matches('/');
                let md_url = url::Url::parse(&format!("{base}/.well-known/openid-configuration"))
                    .map_err(|e| e.to_string())?;
                let (md, _) = self.fetch_json(&md_url).await?;
                if md
                    .get("issuer")
                    .and_then(|v| v.as_str())
                    .map(|s| s.trim_end_matches('/'))
                    != Some(base)
                {
                    return Err(format!("{md_url} names another issuer"));
                }
                let jwks_uri = md
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{md_url} has no jwks_uri"))?;
                let u = url::Url::parse(jwks_uri).map_err(|e| format!("bad jwks_uri: {e}"))?;
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                    return Err("the discovered jwks_uri is not https".into());
                }
                u
            }
        };
        let (set, ttl) = self.fetch_json(&url).await?;
        let keys = VerifyingKeys::from_jwks(&set).map_err(|e| format!("{url}: {e}"))?;
        Ok((keys, ttl))
    }

    /// GET a JSON document, bounded in size; returns it and its cache lifetime.
    async fn fetch_json(&self, url: &url::Url) -> Result<(serde_json::Value, i64), String> {
        let mut resp = self
            .http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|l| l > MAX_BYTES as u64) {
            return Err(format!("{url} is larger than {MAX_BYTES} bytes"));
        }
        let ttl = cache_ttl(
            resp.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
        );
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(format!("{url} is larger than {MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let v = serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))?;
        Ok((v, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(cache_ttl(None), DEFAULT_TTL);
        assert_eq!(cache_ttl(Some("public, max-age=3600")), 3600);
        assert_eq!(cache_ttl(Some("max-age=5")), 60);
        assert_eq!(cache_ttl(Some("max-age=999999999")), 24 * 3600);
        assert_eq!(cache_ttl(Some("no-store")), 60);
        assert_eq!(cache_ttl(Some("max-age=x")), DEFAULT_TTL);
    }
}
