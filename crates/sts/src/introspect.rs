//! Check one of our own access tokens (for introspection and revocation).

use mayfly_client::access::{AccessClaims, Expect, TimeRule, verify};
use mayfly_crypto::VerifyingKeys;
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
    /// The lease the token lives under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Its status-list entry (draft-ietf-oauth-status-list `status` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl AccessClaims for AccessTokenClaims {
    fn issuer(&self) -> Option<&str> {
        Some(&self.iss)
    }
    fn has_audience(&self, audience: &str) -> bool {
        self.aud == audience
    }
    fn expires_at(&self) -> Option<i64> {
        Some(self.exp)
    }
    fn not_before(&self) -> Option<i64> {
        None
    }
    fn issued_at(&self) -> Option<i64> {
        Some(self.iat)
    }
}

/// Verify that `token` is a live access token we issued: our signature (`keys` = our published
/// keys), `typ: at+jwt`, our issuer, not expired at `now` (no skew: our own clock minted it).
/// Anything else yields `None` (introspection answers `active: false` without saying why).
/// Revocation is the caller's check. The checks are the one access-token verifier's
/// ([`mayfly_client::access`]).
pub fn check_access_token(
    settings: &Settings,
    keys: &VerifyingKeys,
    token: &str,
    now: i64,
) -> Option<AccessTokenClaims> {
    let expect = Expect {
        issuer: &settings.issuer,
        audience: None,
        time: Some(TimeRule {
            now,
            skew: 0,
            not_before: false,
        }),
    };
    verify::<AccessTokenClaims>(keys, token, &expect).ok()
}
