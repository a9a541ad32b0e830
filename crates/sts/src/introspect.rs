//! Check one of our own access tokens (for introspection and revocation).

use jsonwebtoken::Algorithm;
use mayfly_crypto::VerifyingKeys;
use mayfly_proto::ACCESS_TOKEN_TYP;
use serde::{Deserialize, Serialize};

use crate::Settings;

/// The claims of an access token we issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessTokenClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience (one).
    pub aud: String,
    /// Client.
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Delegation chain (RFC 8693 §4.1), when the token was issued to an actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

/// Verify that `token` is a live access token we issued: our signature (`keys` = our published
/// keys), `typ: at+jwt`, our issuer, not expired at `now`. Anything else yields `None`
/// (introspection answers `active: false` without saying why). Revocation is the caller's check.
pub fn check_access_token(
    settings: &Settings,
    keys: &VerifyingKeys,
    token: &str,
    now: i64,
) -> Option<AccessTokenClaims> {
    let verified = keys
        .verify::<AccessTokenClaims>(token, &[Algorithm::EdDSA, Algorithm::ES256])
        .ok()?;
    if verified.header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return None;
    }
    let claims = verified.claims;
    if claims.iss != settings.issuer || claims.exp <= now {
        return None;
    }
    Some(claims)
}
