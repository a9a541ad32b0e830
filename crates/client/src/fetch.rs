//! Talking to an issuer: assertions, discovery, token requests, a one-off JWKS fetch.

use std::sync::Arc;
use std::time::Duration;

use mayfly_crypto::{SigningKey, VerifyingKeys};
use mayfly_proto::{ErrorResponse, JWT_BEARER_ASSERTION_TYPE, ServerMetadata, TokenResponse};
use serde_json::{Value, json};

use crate::access::{Expect, verify};
use crate::keysource::{KeyLocation, KeySource, KeySourceOptions, TtlRule};

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The issuer could not be reached or answered garbage.
    #[error("{0}")]
    Http(String),
    /// The issuer refused, with an RFC 6749 error.
    #[error("the issuer refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// Error code.
        error: String,
        /// Description.
        description: Option<String>,
    },
    /// A crypto step failed.
    #[error("{0}")]
    Crypto(#[from] mayfly_crypto::CryptoError),
    /// The token did not verify.
    #[error("token rejected: {0}")]
    Invalid(String),
}

/// A `private_key_jwt` client assertion (RFC 7523 §3): iss = sub = client_id, aud = issuer,
/// a fresh jti, 60 s lifetime.
pub fn build_assertion(
    key: &SigningKey,
    client_id: &str,
    audience: &str,
    now: i64,
) -> Result<String, ClientError> {
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": mayfly_crypto::random_id()?,
        "iat": now,
        "exp": now + 60,
    });
    Ok(key.sign_jwt(None, &claims)?)
}

/// An HTTP client with timeouts and no redirects (a token request must not be bounced).
pub fn http() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))
}

/// Fetch the issuer's metadata and check it names the same issuer.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, ClientError> {
    let issuer = issuer.trim_end_matches('/');
    let url = format!("{issuer}/.well-known/oauth-authorization-server");
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| ClientError::Http(format!("cannot reach {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ClientError::Http(format!(
            "{url} answered {}",
            resp.status()
        )));
    }
    let md: ServerMetadata = resp
        .json()
        .await
        .map_err(|e| ClientError::Http(format!("{url}: not metadata: {e}")))?;
    if md.issuer != issuer {
        return Err(ClientError::Http(format!(
            "metadata names issuer {} but we asked {issuer}",
            md.issuer
        )));
    }
    Ok(md)
}

/// What to ask for.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// The audience (sent as RFC 8707 `resource`).
    pub audience: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Requested lifetime in seconds (can only shorten).
    pub expires_in: Option<u64>,
}

/// Get a token with the client credentials grant and `private_key_jwt`.
pub async fn get_token(
    http: &reqwest::Client,
    issuer: &str,
    client_id: &str,
    key: &SigningKey,
    req: &TokenRequest,
    now: i64,
) -> Result<TokenResponse, ClientError> {
    let md = &discover(http, issuer).await?;
    let assertion = build_assertion(key, client_id, &md.issuer, now)?;
    let mut form: Vec<(&str, String)> = vec![
        ("grant_type", "client_credentials".into()),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
        ("client_assertion", assertion),
    ];
    if let Some(a) = &req.audience {
        form.push(("resource", a.clone()));
    }
    if let Some(s) = &req.scope {
        form.push(("scope", s.clone()));
    }
    if let Some(t) = req.expires_in {
        form.push(("expires_in", t.to_string()));
    }
    post_token_form(http, md, &form).await
}

/// POST `form` to the issuer's token endpoint (any grant, built by the caller): the token
/// response, or the issuer's RFC 6749 refusal as [`ClientError::Refused`].
pub async fn post_token_form(
    http: &reqwest::Client,
    md: &ServerMetadata,
    form: &[(&str, String)],
) -> Result<TokenResponse, ClientError> {
    let resp = http
        .post(&md.token_endpoint)
        .form(form)
        .send()
        .await
        .map_err(|e| ClientError::Http(format!("cannot reach {}: {e}", md.token_endpoint)))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    if status.is_success() {
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Http(format!("bad token response: {e}")))
    } else {
        match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(e) => Err(ClientError::Refused {
                error: e.error.as_str().to_string(),
                description: e.error_description,
            }),
            Err(_) => Err(ClientError::Http(format!(
                "{} answered {status}",
                md.token_endpoint
            ))),
        }
    }
}

/// How a one-off tool fetches a JWK Set: no cache to speak of, no redirects, 15 s, 256 KiB.
const ONE_SHOT: KeySourceOptions = KeySourceOptions {
    ttl: TtlRule::UNTIL_UNKNOWN_KID,
    unknown_kid_interval: 0,
    interval_from_any_fetch: true,
    retry_after_error: 0,
    max_redirects: 0,
    max_bytes: 256 * 1024,
    timeout: Duration::from_secs(15),
};

/// Fetch the issuer's JWKS once (through the key source, so under its https and size rules).
pub async fn fetch_keys(md: &ServerMetadata) -> Result<Arc<VerifyingKeys>, ClientError> {
    let url = reqwest::Url::parse(&md.jwks_uri)
        .map_err(|e| ClientError::Http(format!("bad jwks_uri {}: {e}", md.jwks_uri)))?;
    let source = KeySource::new(&md.issuer, KeyLocation::JwkSet(url), ONE_SHOT)
        .map_err(|e| ClientError::Http(e.to_string()))?;
    source
        .fetch_now(0)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}

/// Verify an RFC 9068 access token (the one verifier, [`crate::access`]): signature by one
/// of `keys`, `typ: at+jwt`, issuer, and (when given) audience. Returns the claims; expiry is
/// reported, not enforced, so a caller can show a stale token's contents.
pub fn verify_access_token(
    keys: &VerifyingKeys,
    token: &str,
    issuer: &str,
    audience: Option<&str>,
) -> Result<Value, ClientError> {
    let expect = Expect {
        issuer: issuer.trim_end_matches('/'),
        audience,
        time: None,
    };
    verify::<Value>(keys, token, &expect).map_err(|e| ClientError::Invalid(e.to_string()))
}
