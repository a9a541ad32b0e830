//! The HTTP half of the key source: the https rule, the same-origin redirect policy, and
//! bounded GETs of the JWK Set and of discovery metadata.

use mayfly_crypto::VerifyingKeys;
use reqwest::Url;
use serde_json::Value;

use super::{KeyLocation, KeySource, KeySourceError, KeySourceOptions};

/// Plain http is for this machine only.
pub fn fetchable(url: &Url) -> bool {
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    url.scheme() == "https" || (url.scheme() == "http" && loopback)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(super) fn http_client(o: &KeySourceOptions) -> Result<reqwest::Client, KeySourceError> {
    let max = o.max_redirects;
    reqwest::Client::builder()
        .timeout(o.timeout)
        .connect_timeout(o.timeout)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` starts with the first URL: a redirect elsewhere leaves the trust
            // that URL was configured with.
            let same = attempt
                .previous()
                .first()
                .is_some_and(|first| same_origin(first, attempt.url()));
            if same && attempt.previous().len() <= max {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()
        .map_err(|e| KeySourceError::Unreachable {
            url: "-".into(),
            reason: format!("cannot build the HTTP client: {e}"),
        })
}

impl KeySource {
    /// The keys, their lifetime, and the discovered `jwks_uri` (to remember) if any.
    pub(super) async fn fetch_keys(
        &self,
        cached_uri: Option<Url>,
    ) -> Result<(VerifyingKeys, i64, Option<Url>), KeySourceError> {
        let (url, discovered) = match (&self.location, cached_uri) {
            (None, _) => return Err(KeySourceError::Fixed),
            (Some(KeyLocation::JwkSet(u)), _) => (u.clone(), false),
            (Some(_), Some(u)) => (u, true),
            (Some(KeyLocation::OpenIdDiscovery(i)), None) => {
                (self.discover(i, "openid-configuration").await?, true)
            }
            (Some(KeyLocation::OAuthDiscovery(i)), None) => {
                (self.discover(i, "oauth-authorization-server").await?, true)
            }
        };
        let (set, cache_control) = self.get_json(&url).await?;
        let keys = VerifyingKeys::from_jwks(&set).map_err(|e| KeySourceError::Invalid {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let ttl = self.options.ttl.ttl(cache_control.as_deref());
        Ok((keys, ttl, discovered.then_some(url)))
    }

    /// The `jwks_uri` named by `{issuer}/.well-known/{doc}`, which must name the same issuer.
    async fn discover(&self, issuer: &str, doc: &str) -> Result<Url, KeySourceError> {
        let base = issuer.trim_end_matches('/');
        let text = format!("{base}/.well-known/{doc}");
        let invalid = |reason: String| KeySourceError::Invalid {
            url: text.clone(),
            reason,
        };
        let md_url = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
        let (md, _) = self.get_json(&md_url).await?;
        let named = md.get("issuer").and_then(Value::as_str);
        if named.map(|s| s.trim_end_matches('/')) != Some(base) {
            return Err(invalid("the metadata names another issuer".into()));
        }
        let jwks_uri = md
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no jwks_uri".into()))?;
        Url::parse(jwks_uri).map_err(|e| invalid(format!("bad jwks_uri: {e}")))
    }

    /// GET a JSON document, bounded in size; returns it and its `Cache-Control`.
    async fn get_json(&self, url: &Url) -> Result<(Value, Option<String>), KeySourceError> {
        if !fetchable(url) {
            return Err(KeySourceError::NotHttps(url.to_string()));
        }
        let http = self.http.as_ref().ok_or(KeySourceError::Fixed)?;
        let unreachable = |e: reqwest::Error| KeySourceError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let mut resp = http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(KeySourceError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let max = self.options.max_bytes;
        let too_large = || KeySourceError::TooLarge {
            url: url.to_string(),
            max,
        };
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(too_large());
        }
        let cache_control = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let v = serde_json::from_slice(&body).map_err(|e| KeySourceError::Invalid {
            url: url.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        Ok((v, cache_control))
    }
}
