//! Trusted issuers of subject tokens and their keys, each held by the one JWKS key source
//! ([`mayfly_client::keysource`]) under these rules: fetched over https (http only on
//! loopback), at most [`MAX_BYTES`] within [`FETCH_TIMEOUT`], redirects followed only within the
//! origin, cached for the issuer's `Cache-Control: max-age` clamped to [`TTL_RANGE`], refreshed
//! on an unknown `kid` at most once per [`MIN_REFRESH`] however many requests ask (one fetch;
//! the others wait for it and reuse it), and kept serving when the issuer is briefly down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use mayfly_client::keysource::{KeyLocation, KeySource, KeySourceOptions, TtlRule};
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
pub const TTL_RANGE: (i64, i64) = (60, 24 * 3600);
/// Largest key document accepted.
pub const MAX_BYTES: usize = 256 * 1024;
/// Per-fetch deadline.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed, each within the origin of the configured URL.
const MAX_REDIRECTS: usize = 2;

/// The key-source rules of a trusted issuer.
const KEY_OPTIONS: KeySourceOptions = KeySourceOptions {
    ttl: TtlRule {
        default: DEFAULT_TTL,
        min: TTL_RANGE.0,
        max: TTL_RANGE.1,
    },
    unknown_kid_interval: MIN_REFRESH,
    interval_from_any_fetch: true,
    retry_after_error: MIN_REFRESH,
    max_redirects: MAX_REDIRECTS,
    max_bytes: MAX_BYTES,
    timeout: FETCH_TIMEOUT,
};

/// A trusted issuer that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("issuers: `{name}`: {problem}")]
pub struct IssuerError {
    /// The issuer's name.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

/// One trusted issuer: the engine's view of it, and its key cache.
pub(crate) struct Issuer {
    pub trusted: TrustedIssuer,
    keys: KeySource,
}

/// All trusted issuers, by `iss`.
pub(crate) struct Issuers {
    by_iss: HashMap<String, Arc<Issuer>>,
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
        ci: c
            .preset
            .as_deref()
            .and_then(mayfly_sts::CiProvider::from_preset),
    })
}

/// How long to keep fetched keys, from the response's `Cache-Control`, clamped to [`TTL_RANGE`].
pub fn cache_ttl(header: Option<&str>) -> i64 {
    KEY_OPTIONS.ttl.ttl(header)
}

/// The key source of one configured issuer.
fn key_source(c: &IssuerConfig) -> Result<KeySource, IssuerError> {
    let err = |problem: String| IssuerError {
        name: c.name.clone(),
        problem,
    };
    let location = match &c.keys {
        IssuerKeys::Static(set) => {
            let keys = VerifyingKeys::from_jwks(set).map_err(|e| err(e.to_string()))?;
            return Ok(KeySource::fixed(c.name.clone(), keys));
        }
        IssuerKeys::Uri(u) => KeyLocation::JwkSet(u.clone()),
        IssuerKeys::Discovery(issuer) => KeyLocation::OpenIdDiscovery(issuer.to_string()),
    };
    let source =
        KeySource::new(c.name.clone(), location, KEY_OPTIONS).map_err(|e| err(e.to_string()))?;
    Ok(source.with_fetch_hook(Box::new(|name, ok| {
        let result = if ok { "ok" } else { "error" };
        metrics::counter!("mayfly_issuer_key_fetches_total", "issuer" => name.to_string(), "result" => result).increment(1);
    })))
}

impl Issuers {
    /// Set up every configured issuer. Static key sets are checked now; fetched ones on first use.
    pub(crate) fn new(configs: &[IssuerConfig], global_max_ttl: i64) -> Result<Self, IssuerError> {
        let mut by_iss = HashMap::with_capacity(configs.len());
        for c in configs {
            let issuer = Issuer {
                trusted: trusted(c, global_max_ttl)?,
                keys: key_source(c)?,
            };
            by_iss.insert(c.issuer.clone(), Arc::new(issuer));
        }
        Ok(Self { by_iss })
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

    /// Run `verify` with the issuer's keys at `now`; when it finds the token's `kid` unknown,
    /// refetch once (at most once per [`MIN_REFRESH`]) and run it again.
    /// Keys never fetched and not fetchable now are [`Denial::Unavailable`]: the issuer is
    /// unreachable, not the token wrong.
    pub(crate) async fn verify<T>(
        &self,
        i: &Issuer,
        now: i64,
        verify: impl Fn(&VerifyingKeys) -> Result<T, Denial>,
    ) -> Result<T, Denial> {
        i.keys
            .verify_with(now, verify, |d| matches!(d, Denial::SubjectUnknownKey))
            .await
            .map_err(|d| d.unwrap_or(Denial::Unavailable))
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
