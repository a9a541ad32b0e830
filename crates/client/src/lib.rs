//! What workloads and resource servers link: build `private_key_jwt` client assertions, get
//! tokens from a mayfly issuer (discovered from its RFC 8414 metadata), and verify access
//! tokens against the issuer's JWKS.
//!
//! Not here: caching and refresh loops (a later issue adds a token source that refreshes).
#![forbid(unsafe_code)]

use std::time::Duration;

use jsonwebtoken::Algorithm;
use mayfly_crypto::{SigningKey, VerifyingKeys};
use mayfly_proto::{
    ACCESS_TOKEN_TYP, ErrorResponse, JWT_BEARER_ASSERTION_TYPE, ServerMetadata, TokenResponse,
};
use serde_json::{Value, json};

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
    let md = discover(http, issuer).await?;
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
    let resp = http
        .post(&md.token_endpoint)
        .form(&form)
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

/// Fetch the issuer's JWKS.
pub async fn fetch_keys(
    http: &reqwest::Client,
    md: &ServerMetadata,
) -> Result<VerifyingKeys, ClientError> {
    let resp = http
        .get(&md.jwks_uri)
        .send()
        .await
        .map_err(|e| ClientError::Http(format!("cannot reach {}: {e}", md.jwks_uri)))?;
    let set: Value = resp
        .json()
        .await
        .map_err(|e| ClientError::Http(format!("{}: not a JWK Set: {e}", md.jwks_uri)))?;
    VerifyingKeys::from_jwks(&set).map_err(|e| ClientError::Http(e.to_string()))
}

/// Verify an RFC 9068 access token: signature by one of `keys`, `typ: at+jwt`, issuer, and
/// (when given) audience. Returns the claims; expiry is reported, not enforced, so a caller can
/// show a stale token's contents.
pub fn verify_access_token(
    keys: &VerifyingKeys,
    token: &str,
    issuer: &str,
    audience: Option<&str>,
) -> Result<Value, ClientError> {
    let v = keys
        .verify::<Value>(token, &[Algorithm::EdDSA, Algorithm::ES256])
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    if v.header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(ClientError::Invalid("typ is not at+jwt".into()));
    }
    if v.claims.get("iss").and_then(Value::as_str) != Some(issuer.trim_end_matches('/')) {
        return Err(ClientError::Invalid("issued by another issuer".into()));
    }
    if audience.is_some_and(|a| v.claims.get("aud").and_then(Value::as_str) != Some(a)) {
        return Err(ClientError::Invalid("audience does not match".into()));
    }
    Ok(v.claims)
}
