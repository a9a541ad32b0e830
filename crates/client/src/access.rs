//! The one RFC 9068 access-token verifier: signature by a published key under an allow-listed
//! algorithm (EdDSA or ES256; never `none` or HMAC), `typ` `at+jwt` (or `application/at+jwt`),
//! the expected issuer, then per use the audience and the time claims with a skew. Required
//! claims are whatever the caller's claims type demands when it is deserialised.
//!
//! Pure: no I/O and no clock of its own (the caller passes `now`), so every refusal is a unit
//! test. Error messages never contain the token.

use jsonwebtoken::Algorithm;
use mayfly_crypto::{VerifyError, VerifyingKeys};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::{StatusClaim, StatusListRef};

/// Signature algorithms of mayfly access tokens.
pub const ACCESS_TOKEN_ALGS: &[Algorithm] = &[Algorithm::EdDSA, Algorithm::ES256];
/// Longest token accepted (bytes): far above any mayfly token, bounds the work per request.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why an access token was refused. Variants carry no token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessTokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the token is too long")]
    TooLong,
    /// Not a compact JWS, an algorithm outside the allow-list, or claims of the wrong shape
    /// (a required claim missing, for instance).
    #[error("the token is not a valid signed JWT of the issuer")]
    Malformed,
    /// No published key matches the token's `kid` and `alg`.
    #[error("the token is signed by a key the issuer does not publish")]
    UnknownKey,
    /// A matching key exists but the signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `typ` is not `at+jwt`.
    #[error("the token is not an access token (typ at+jwt)")]
    NotAccessToken,
    /// `iss` is not the expected issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not hold the expected audience.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `exp` has passed (beyond the skew).
    #[error("the token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the skew).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A claim the time check needs is absent.
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    /// The status check is required and the token names no status list (`status.status_list`).
    #[error("the token carries no status list reference (status.status_list)")]
    NoStatus,
    /// The token's bit in its status list is set: it is revoked.
    #[error("the token is revoked (its status list says INVALID)")]
    Revoked,
    /// The token's status list does not cover its index: it cannot be vouched for.
    #[error("the token's status list does not cover its index")]
    StatusUnknown,
    /// The token's status list cannot be fetched or verified, and no unexpired copy is held:
    /// the token is refused until it can be (fail closed).
    #[error("the token's status cannot be checked: {0}")]
    StatusUnavailable(String),
}

impl From<VerifyError> for AccessTokenError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::UnknownKey => Self::UnknownKey,
            VerifyError::BadSignature => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

/// What the checks read from a token's claims; each caller's claims type says which claims are
/// required by how it deserialises.
pub trait AccessClaims {
    /// `iss`.
    fn issuer(&self) -> Option<&str>;
    /// Whether `aud` is, or contains, `audience`.
    fn has_audience(&self, audience: &str) -> bool;
    /// `exp`.
    fn expires_at(&self) -> Option<i64>;
    /// `nbf`.
    fn not_before(&self) -> Option<i64>;
    /// `iat`.
    fn issued_at(&self) -> Option<i64>;
    /// `status.status_list`, when the token carries it (draft-ietf-oauth-status-list).
    fn status_list(&self) -> Option<StatusListRef> {
        None
    }
}

/// One audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl Audience {
    /// Whether this is, or contains, `audience`.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(v) => v.iter().any(|a| a == audience),
        }
    }
}

/// The RFC 9068 claims a resource server reads (`iss`, `sub`, `aud`, `exp` and `jti` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (the workload identity).
    pub sub: String,
    /// Audience.
    pub aud: Audience,
    /// Client the token was issued to.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// Expiry.
    pub exp: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Issued at.
    #[serde(default)]
    pub iat: Option<i64>,
    /// Token id.
    pub jti: String,
    /// Where the token's revocation status is published (draft-ietf-oauth-status-list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusClaim>,
}

impl AccessClaims for Claims {
    fn issuer(&self) -> Option<&str> {
        Some(&self.iss)
    }
    fn has_audience(&self, audience: &str) -> bool {
        self.aud.contains(audience)
    }
    fn expires_at(&self) -> Option<i64> {
        Some(self.exp)
    }
    fn not_before(&self) -> Option<i64> {
        self.nbf
    }
    fn issued_at(&self) -> Option<i64> {
        self.iat
    }
    fn status_list(&self) -> Option<StatusListRef> {
        self.status.as_ref().and_then(|s| s.status_list.clone())
    }
}

impl AccessClaims for Value {
    fn issuer(&self) -> Option<&str> {
        self.get("iss").and_then(Value::as_str)
    }
    fn has_audience(&self, audience: &str) -> bool {
        serde_json::from_value::<Audience>(self.get("aud").cloned().unwrap_or(Value::Null))
            .is_ok_and(|a| a.contains(audience))
    }
    fn expires_at(&self) -> Option<i64> {
        self.get("exp").and_then(Value::as_i64)
    }
    fn not_before(&self) -> Option<i64> {
        self.get("nbf").and_then(Value::as_i64)
    }
    fn issued_at(&self) -> Option<i64> {
        self.get("iat").and_then(Value::as_i64)
    }
    fn status_list(&self) -> Option<StatusListRef> {
        let r = self.get("status")?.get("status_list")?;
        serde_json::from_value(r.clone()).ok()
    }
}

/// The time rule of one use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRule {
    /// The caller's clock (Unix seconds).
    pub now: i64,
    /// Seconds of clock skew allowed on `exp` (and, when checked, `nbf`/`iat`).
    pub skew: i64,
    /// Whether a future `nbf` or `iat` refuses the token.
    pub not_before: bool,
}

/// What one use expects of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect<'a> {
    /// The issuer identifier, exactly as tokens carry it.
    pub issuer: &'a str,
    /// The audience the token must be for; `None`: any.
    pub audience: Option<&'a str>,
    /// The time rule; `None`: expiry is the caller's to report (a tool showing a token).
    pub time: Option<TimeRule>,
}

/// The checks that do not depend on the use: length, signature, `typ`, issuer. A caller that
/// remembers verified tokens caches this result and runs [`check_claims`] on every use.
pub fn verify_signed<T: DeserializeOwned + AccessClaims>(
    keys: &VerifyingKeys,
    token: &str,
    issuer: &str,
) -> Result<T, AccessTokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AccessTokenError::TooLong);
    }
    let verified = keys.verify::<T>(token, ACCESS_TOKEN_ALGS)?;
    let typ = verified.header.typ.as_deref().unwrap_or("");
    if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
        return Err(AccessTokenError::NotAccessToken);
    }
    if verified.claims.issuer() != Some(issuer) {
        return Err(AccessTokenError::WrongIssuer);
    }
    Ok(verified.claims)
}

/// The checks of one use: audience, then time.
pub fn check_claims<T: AccessClaims>(
    claims: &T,
    audience: Option<&str>,
    time: Option<TimeRule>,
) -> Result<(), AccessTokenError> {
    if audience.is_some_and(|a| !claims.has_audience(a)) {
        return Err(AccessTokenError::WrongAudience);
    }
    let Some(t) = time else {
        return Ok(());
    };
    let exp = claims
        .expires_at()
        .ok_or(AccessTokenError::MissingClaim("exp"))?;
    if t.now >= exp.saturating_add(t.skew) {
        return Err(AccessTokenError::Expired);
    }
    let future = |c: Option<i64>| c.is_some_and(|c| c > t.now.saturating_add(t.skew));
    if t.not_before && (future(claims.not_before()) || future(claims.issued_at())) {
        return Err(AccessTokenError::NotYetValid);
    }
    Ok(())
}

/// Whether a use checks the token's status list (revocation without introspection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusRule {
    /// The `status` claim is not looked at.
    #[default]
    Ignore,
    /// The token must name its status list; the caller then checks the bit
    /// (`mayfly_client::status::StatusLists` with feature `fetch`).
    Require,
}

/// The status list reference a use must check: `Ok(None)` under [`StatusRule::Ignore`],
/// [`AccessTokenError::NoStatus`] under [`StatusRule::Require`] for a token without one.
pub fn status_to_check<T: AccessClaims>(
    claims: &T,
    rule: StatusRule,
) -> Result<Option<StatusListRef>, AccessTokenError> {
    match rule {
        StatusRule::Ignore => Ok(None),
        StatusRule::Require => claims
            .status_list()
            .map(Some)
            .ok_or(AccessTokenError::NoStatus),
    }
}

/// Verify an access token for one use: [`verify_signed`] then [`check_claims`].
pub fn verify<T: DeserializeOwned + AccessClaims>(
    keys: &VerifyingKeys,
    token: &str,
    expect: &Expect<'_>,
) -> Result<T, AccessTokenError> {
    let claims = verify_signed::<T>(keys, token, expect.issuer)?;
    check_claims(&claims, expect.audience, expect.time)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_crypto::{KeyAlg, SigningKey};
    use serde_json::json;

    const ISS: &str = "https://sts.example.test";
    const AUD: &str = "https://api.example.test";
    const NOW: i64 = 1_800_000_000;

    fn key(alg: KeyAlg, kid: &str) -> SigningKey {
        SigningKey::generate(alg, Some(kid)).unwrap()
    }

    fn keys(k: &SigningKey) -> VerifyingKeys {
        VerifyingKeys::from_jwks(&json!({"keys": [k.public_jwk()]})).unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "spiffe://x/y", "aud": AUD, "client_id": "c", "scope": "read",
               "iat": NOW, "exp": NOW + 300, "jti": "j1"})
    }

    fn expect(now: i64) -> Expect<'static> {
        Expect {
            issuer: ISS,
            audience: Some(AUD),
            time: Some(TimeRule {
                now,
                skew: 30,
                not_before: true,
            }),
        }
    }

    fn check(
        keys: &VerifyingKeys,
        token: &str,
        e: &Expect<'_>,
    ) -> Result<Claims, AccessTokenError> {
        verify::<Claims>(keys, token, e)
    }

    #[test]
    fn a_good_token_verifies_with_either_algorithm_and_either_typ() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let k = key(alg, "k1");
            for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
                let t = k.sign_jwt(Some(typ), &claims()).unwrap();
                let c = check(&keys(&k), &t, &expect(NOW)).unwrap();
                assert_eq!(c.sub, "spiffe://x/y");
                assert_eq!(c.aud, Audience::One(AUD.into()));
            }
        }
    }

    #[test]
    fn an_algorithm_outside_the_list_is_malformed() {
        let k = key(KeyAlg::ES384, "k1");
        let t = k.sign_jwt(Some("at+jwt"), &claims()).unwrap();
        assert_eq!(
            check(&keys(&k), &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::Malformed
        );
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let k = key(KeyAlg::ES256, "k1");
        let b64 = |v: &Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let body = b64(&claims());
        for alg in ["none", "HS256"] {
            let h = b64(&json!({"alg": alg, "typ": "at+jwt", "kid": "k1"}));
            let t = format!("{h}.{body}.AAAA");
            assert_eq!(
                check(&keys(&k), &t, &expect(NOW)).unwrap_err(),
                AccessTokenError::Malformed,
                "{alg}"
            );
        }
    }

    #[test]
    fn unknown_key_bad_signature_and_garbage() {
        let k = key(KeyAlg::ES256, "k1");
        let other_kid = key(KeyAlg::ES256, "k2");
        let same_kid = key(KeyAlg::ES256, "k1");
        let t = other_kid.sign_jwt(Some("at+jwt"), &claims()).unwrap();
        assert_eq!(
            check(&keys(&k), &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::UnknownKey
        );
        let t = same_kid.sign_jwt(Some("at+jwt"), &claims()).unwrap();
        assert_eq!(
            check(&keys(&k), &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::BadSignature
        );
        assert_eq!(
            check(&keys(&k), "not.a.jwt", &expect(NOW)).unwrap_err(),
            AccessTokenError::Malformed
        );
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            check(&keys(&k), &long, &expect(NOW)).unwrap_err(),
            AccessTokenError::TooLong
        );
    }

    #[test]
    fn typ_issuer_audience_and_required_claims() {
        let k = key(KeyAlg::EdDSA, "k1");
        let ks = keys(&k);
        for typ in [None, Some("JWT"), Some("at+jwt2")] {
            let t = k.sign_jwt(typ, &claims()).unwrap();
            assert_eq!(
                check(&ks, &t, &expect(NOW)).unwrap_err(),
                AccessTokenError::NotAccessToken
            );
        }
        let mut c = claims();
        c["iss"] = json!("https://evil.test");
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            check(&ks, &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::WrongIssuer
        );
        let mut c = claims();
        c["aud"] = json!("https://other.test");
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            check(&ks, &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::WrongAudience
        );
        let any = Expect {
            audience: None,
            ..expect(NOW)
        };
        assert!(check(&ks, &t, &any).is_ok());
        c["aud"] = json!(["https://other.test", AUD]);
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert!(check(&ks, &t, &expect(NOW)).is_ok());
        let mut c = claims();
        c.as_object_mut().unwrap().remove("jti");
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            check(&ks, &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::Malformed
        );
        // The same token read as plain JSON: the time check needs `exp`.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            verify::<Value>(&ks, &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::MissingClaim("exp")
        );
    }

    #[test]
    fn time_with_skew() {
        let k = key(KeyAlg::ES256, "k1");
        let ks = keys(&k);
        let t = k.sign_jwt(Some("at+jwt"), &claims()).unwrap();
        assert!(check(&ks, &t, &expect(NOW + 329)).is_ok());
        assert_eq!(
            check(&ks, &t, &expect(NOW + 330)).unwrap_err(),
            AccessTokenError::Expired
        );
        // Without skew: expired from `exp` on.
        let strict = |now| Expect {
            time: Some(TimeRule {
                now,
                skew: 0,
                not_before: false,
            }),
            ..expect(now)
        };
        assert!(check(&ks, &t, &strict(NOW + 299)).is_ok());
        assert_eq!(
            check(&ks, &t, &strict(NOW + 300)).unwrap_err(),
            AccessTokenError::Expired
        );
        // Not yet valid: nbf or iat beyond the skew.
        assert!(check(&ks, &t, &expect(NOW - 30)).is_ok());
        assert_eq!(
            check(&ks, &t, &expect(NOW - 31)).unwrap_err(),
            AccessTokenError::NotYetValid
        );
        assert!(check(&ks, &t, &strict(NOW - 31)).is_ok());
        let mut c = claims();
        c["nbf"] = json!(NOW + 100);
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            check(&ks, &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::NotYetValid
        );
        // No time rule: an expired token still verifies (a tool shows it).
        let untimed = Expect {
            time: None,
            ..expect(NOW)
        };
        assert!(check(&ks, &t, &untimed).is_ok());
    }

    #[test]
    fn a_required_status_needs_a_status_list_reference() {
        let k = key(KeyAlg::EdDSA, "k1");
        let mut c = claims();
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        let plain = check(&keys(&k), &t, &expect(NOW)).unwrap();
        assert_eq!(status_to_check(&plain, StatusRule::Ignore), Ok(None));
        assert_eq!(
            status_to_check(&plain, StatusRule::Require),
            Err(AccessTokenError::NoStatus)
        );
        let uri = format!("{ISS}/statuslists/3");
        c["status"] = json!({"status_list": {"idx": 42, "uri": uri}});
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        let want = Some(StatusListRef { idx: 42, uri });
        let typed = check(&keys(&k), &t, &expect(NOW)).unwrap();
        assert_eq!(
            status_to_check(&typed, StatusRule::Require),
            Ok(want.clone())
        );
        let json = verify::<Value>(&keys(&k), &t, &expect(NOW)).unwrap();
        assert_eq!(status_to_check(&json, StatusRule::Require), Ok(want));
        // A `status` claim of the wrong shape is a malformed token, not a missing status.
        c["status"] = json!({"status_list": {"idx": "x", "uri": 1}});
        let t = k.sign_jwt(Some("at+jwt"), &c).unwrap();
        assert_eq!(
            check(&keys(&k), &t, &expect(NOW)).unwrap_err(),
            AccessTokenError::Malformed
        );
    }
}
