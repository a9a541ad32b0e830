//! Mint an RFC 9068 JWT access token.

use mayfly_crypto::SigningKey;
use mayfly_proto::ACCESS_TOKEN_TYP;
use serde::Serialize;

use crate::lease::{StatusSlot, status_claim};
use crate::{Denial, Grant, Settings};

/// What a token carries beside its grant: its status-list slot and its lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct MintExtras<'a> {
    /// Its place in a status list (the `status` claim).
    pub status: Option<StatusSlot>,
    /// The lease it lives under (the `lease` claim).
    pub lease: Option<&'a str>,
}

/// A signed token and the facts the audit event needs.
#[derive(Debug)]
pub struct MintedToken {
    /// The compact JWT. Never log it.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`.
    pub exp: i64,
    /// Its `iat`.
    pub iat: i64,
    /// The kid that signed it.
    pub kid: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    iat: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<&'a str>,
}

/// Sign `grant` with `key` at `now`; `jti` must be fresh and unique (128 random bits).
pub fn mint(
    settings: &Settings,
    grant: &Grant,
    key: &SigningKey,
    now: i64,
    jti: String,
    extras: MintExtras<'_>,
) -> Result<MintedToken, Denial> {
    let exp = now + grant.ttl;
    let claims = Claims {
        iss: &settings.issuer,
        sub: &grant.subject,
        aud: &grant.audience,
        client_id: &grant.client_id,
        scope: (!grant.scopes.is_empty()).then(|| grant.scopes.join(" ")),
        iat: now,
        exp,
        jti: &jti,
        act: grant.act.as_ref(),
        status: extras
            .status
            .map(|slot| status_claim(&settings.issuer, slot)),
        lease: extras.lease,
    };
    let token = key
        .sign_jwt(Some(ACCESS_TOKEN_TYP), &claims)
        .map_err(|_| Denial::Internal)?;
    Ok(MintedToken {
        token,
        jti,
        exp,
        iat: now,
        kid: key.kid().to_string(),
    })
}
