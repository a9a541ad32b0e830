//! Client authentication with an RFC 7523 JWT assertion (`private_key_jwt`, RFC 7521 §4.2).

use mayfly_crypto::{ASSERTION_ALGS, VerifyError};
use serde_json::Value;

use crate::{Client, Denial, Settings};

/// `typ` values a client assertion may carry (compared as media types): the generic JWT and
/// JOSE types, and the explicit type of draft-ietf-oauth-rfc7523bis. No `typ` is fine too.
const ASSERTION_TYPES: &[&str] = &["jwt", "jose", "client-authentication+jwt"];

/// Longest `jti` we store; longer ones are refused rather than truncated.
const MAX_JTI_LEN: usize = 256;

/// A client whose assertion verified. The caller must still consume `jti` (single use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedClient {
    /// The client_id.
    pub client_id: String,
    /// The assertion's `jti`.
    pub jti: String,
    /// The assertion's `exp`: the replay record must be kept at least until then (plus skew).
    pub assertion_exp: i64,
}

/// The client an assertion claims to be (its `sub`, else `iss`), read *without* verification so
/// the caller can look up the keys to verify it with. Never trust this value otherwise.
pub fn claimed_client_id(assertion: &str) -> Result<String, Denial> {
    #[derive(serde::Deserialize)]
    struct Claimed {
        sub: Option<String>,
        iss: Option<String>,
    }
    let claims: Claimed = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| Denial::MalformedAssertion)?;
    claims
        .sub
        .or(claims.iss)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or(Denial::MissingClaim("sub"))
}

/// The claims an assertion is checked on. Each is kept as raw JSON so that a claim of the wrong
/// type is reported by name; everything else in the payload is skipped, not stored. A claim
/// that appears twice makes the payload malformed.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
}

fn int_claim(claim: Option<&Value>, name: &'static str) -> Result<Option<i64>, Denial> {
    match claim {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(Denial::MissingClaim(name)),
    }
}

/// Verify a client assertion for `client` at time `now`. `client_id_param` is the request's
/// `client_id`, which must agree when present.
pub fn authenticate_assertion(
    settings: &Settings,
    client: &Client,
    assertion: &str,
    client_id_param: Option<&str>,
    now: i64,
) -> Result<AuthenticatedClient, Denial> {
    let verified = client
        .keys
        .verify::<AssertionClaims>(assertion, ASSERTION_ALGS)
        .map_err(|e| match e {
            VerifyError::AlgNotAllowed(a) => Denial::AlgorithmNotAllowed(a),
            VerifyError::UnknownKey => Denial::UnknownKey,
            VerifyError::BadSignature => Denial::BadSignature,
            VerifyError::Malformed | VerifyError::BadJwks(_) => Denial::MalformedAssertion,
            _ => Denial::MalformedAssertion,
        })?;
    // RFC 7515 §4.1.11: mayfly understands no JWS extension, so any `crit` is refused.
    if verified.header.crit.is_some() {
        return Err(Denial::UnsupportedCriticalHeader);
    }
    // RFC 8725 §3.11: an access token, a DPoP proof or any other typed JWT is not an assertion.
    if let Some(typ) = verified.header.typ.as_deref()
        && !ASSERTION_TYPES.contains(&crate::federation::media_type(typ).as_str())
    {
        return Err(Denial::AssertionWrongType(typ.chars().take(64).collect()));
    }
    let c = &verified.claims;
    let iss = c
        .iss
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(Denial::MissingClaim("iss"))?;
    let sub = c
        .sub
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(Denial::MissingClaim("sub"))?;
    if iss != client.id || sub != client.id {
        return Err(Denial::IssuerSubjectMismatch);
    }
    if client_id_param.is_some_and(|p| p != client.id) {
        return Err(Denial::ClientIdMismatch);
    }
    let aud_ok = match &c.aud {
        Some(Value::String(a)) => settings.accepted_assertion_audience(a),
        Some(Value::Array(list)) => {
            !list.is_empty()
                && list.iter().all(|a| {
                    a.as_str()
                        .is_some_and(|a| settings.accepted_assertion_audience(a))
                })
        }
        _ => false,
    };
    if !aud_ok {
        return Err(Denial::BadAudience);
    }
    let exp = int_claim(c.exp.as_ref(), "exp")?.ok_or(Denial::MissingClaim("exp"))?;
    let skew = settings.clock_skew;
    if exp.saturating_add(skew) <= now {
        return Err(Denial::AssertionExpired);
    }
    if exp
        > now
            .saturating_add(settings.max_assertion_lifetime)
            .saturating_add(skew)
    {
        return Err(Denial::AssertionLifetimeTooLong(
            settings.max_assertion_lifetime,
        ));
    }
    for (claim, name) in [(&c.nbf, "nbf"), (&c.iat, "iat")] {
        if int_claim(claim.as_ref(), name)?.is_some_and(|t| t > now + skew) {
            return Err(Denial::AssertionNotYetValid);
        }
    }
    let jti = c
        .jti
        .as_ref()
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(Denial::MissingClaim("jti"))?;
    Ok(AuthenticatedClient {
        client_id: client.id.clone(),
        jti: jti.to_string(),
        assertion_exp: exp,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};
    use serde_json::json;

    use super::*;

    fn setup() -> (Settings, Client, SigningKey) {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        let keys = VerifyingKeys::from_jwks(&json!({"keys": [k.public_jwk()]})).unwrap();
        let settings = Settings {
            issuer: "https://sts".into(),
            token_endpoint: "https://sts/oauth2/token".into(),
            default_ttl: 300,
            max_ttl: 3600,
            clock_skew: 30,
            max_assertion_lifetime: 300,
        };
        let client = Client {
            id: "svc".into(),
            keys: Arc::new(keys),
            audiences: vec![],
            scopes: vec![],
            max_ttl: 3600,
        };
        (settings, client, k)
    }

    /// An assertion signed by `k` with an arbitrary header (`typ`, `crit`).
    fn with_header(k: &SigningKey, header: jsonwebtoken::Header, now: i64) -> String {
        let der = k.to_pkcs8().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
        let claims =
            json!({"iss": "svc", "sub": "svc", "aud": "https://sts", "jti": "j", "exp": now + 60});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn header(k: &SigningKey, typ: Option<&str>) -> jsonwebtoken::Header {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(k.kid().to_string());
        h.typ = typ.map(str::to_string);
        h
    }

    /// RFC 7515 §4.1.11: a critical extension the server does not understand refuses the JWS.
    #[test]
    fn critical_header_extensions_are_refused() {
        let (s, c, k) = setup();
        let now = 1_800_000_000;
        let mut h = header(&k, Some("JWT"));
        h.crit = Some(vec!["exp".into()]);
        h.extras.insert("exp", now + 60);
        let a = with_header(&k, h, now);
        let d = authenticate_assertion(&s, &c, &a, None, now).unwrap_err();
        assert_eq!(d, Denial::UnsupportedCriticalHeader);
        assert_eq!(
            (d.code(), d.reason()),
            (mayfly_proto::ErrorCode::InvalidClient, "unsupported_crit")
        );
    }

    /// RFC 8725 §3.11: an access token (or a DPoP proof) is not a client assertion; an untyped
    /// or generically typed JWT, or the rfc7523bis type, is.
    #[test]
    fn typed_jwts_of_another_kind_are_not_assertions() {
        let (s, c, k) = setup();
        let now = 1_800_000_000;
        for typ in [
            "at+jwt",
            "application/at+jwt",
            "AT+JWT",
            "dpop+jwt",
            "secevent+jwt",
        ] {
            let a = with_header(&k, header(&k, Some(typ)), now);
            let d = authenticate_assertion(&s, &c, &a, None, now).unwrap_err();
            assert_eq!(d, Denial::AssertionWrongType(typ.into()), "{typ}");
            assert_eq!(
                (d.code(), d.reason()),
                (
                    mayfly_proto::ErrorCode::InvalidClient,
                    "assertion_wrong_type"
                )
            );
        }
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("application/jwt"),
            Some("JOSE"),
            Some("client-authentication+jwt"),
        ] {
            let a = with_header(&k, header(&k, typ), now);
            assert!(
                authenticate_assertion(&s, &c, &a, None, now).is_ok(),
                "{typ:?}"
            );
        }
    }

    /// Found by the `assertion` fuzz target: time arithmetic on hostile claims must not overflow.
    #[test]
    fn extreme_times_are_refused_not_overflowed() {
        let (s, c, k) = setup();
        let now = 1_800_000_000;
        for (exp, want) in [
            (json!(i64::MAX), Denial::AssertionLifetimeTooLong(300)),
            (json!(i64::MIN), Denial::AssertionExpired),
            (json!(1e300), Denial::AssertionLifetimeTooLong(300)),
            (json!("soon"), Denial::MissingClaim("exp")),
        ] {
            let a = k.sign_jwt(None, &json!({"iss": "svc", "sub": "svc", "aud": "https://sts", "jti": "j", "exp": exp})).unwrap();
            assert_eq!(
                authenticate_assertion(&s, &c, &a, None, now).unwrap_err(),
                want
            );
        }
        let a = k.sign_jwt(None, &json!({"iss": "svc", "sub": "svc", "aud": "https://sts", "jti": "j", "exp": now + 60, "nbf": i64::MAX})).unwrap();
        assert_eq!(
            authenticate_assertion(&s, &c, &a, None, now).unwrap_err(),
            Denial::AssertionNotYetValid
        );
    }
}
