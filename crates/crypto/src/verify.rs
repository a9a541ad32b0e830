//! Verification of JWS signatures against a registered JWK Set, through `jsonwebtoken`, with an
//! algorithm allow-list that never includes `none` or HMAC.

use std::collections::HashSet;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

/// Algorithms accepted for client assertions.
pub const ASSERTION_ALGS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];

/// Why a JWS was not verified. Variants carry no token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a compact JWS with a JSON header and payload (this includes `alg: none`).
    #[error("not a well-formed signed JWT")]
    Malformed,
    /// The header names an algorithm outside the allow-list (HMAC, for instance).
    #[error("algorithm {0} is not accepted")]
    AlgNotAllowed(String),
    /// No registered key matches the header's kid and algorithm.
    #[error("no registered key matches the JWT's kid and alg")]
    UnknownKey,
    /// The signature does not verify with any matching key.
    #[error("signature does not verify")]
    BadSignature,
    /// The JWK Set itself is unusable.
    #[error("unusable JWK Set: {0}")]
    BadJwks(String),
}

/// A verified JWS: its header and its claims (not yet checked for time, audience or issuer).
#[derive(Debug)]
pub struct Verified<T = Value> {
    /// The protected header.
    pub header: Header,
    /// The payload, deserialised.
    pub claims: T,
}

/// Every algorithm a registered key may carry, each with the signature-only validation used
/// for it, built once: time and audience are the caller's to check, against its own clock.
fn validation(alg: Algorithm) -> Option<&'static Validation> {
    static ALL: std::sync::OnceLock<Vec<(Algorithm, Validation)>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        ASSERTION_ALGS
            .iter()
            .map(|&a| {
                let mut v = Validation::new(a);
                v.validate_exp = false;
                v.validate_nbf = false;
                v.validate_aud = false;
                v.required_spec_claims = HashSet::new();
                v.leeway = 0;
                (a, v)
            })
            .collect()
    })
    .iter()
    .find(|(a, _)| *a == alg)
    .map(|(_, v)| v)
}

struct Entry {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The public keys a party registered, ready for verification.
pub struct VerifyingKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self
            .entries
            .iter()
            .map(|e| e.kid.as_deref().unwrap_or("-"))
            .collect();
        write!(f, "VerifyingKeys({kids:?})")
    }
}

fn algs_for(jwk: &Value) -> Result<Vec<Algorithm>, VerifyError> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let by_type: Vec<Algorithm> = match (s("kty"), s("crv")) {
        (Some("EC"), Some("P-256")) => vec![Algorithm::ES256],
        (Some("EC"), Some("P-384")) => vec![Algorithm::ES384],
        (Some("OKP"), Some("Ed25519")) => vec![Algorithm::EdDSA],
        (Some("RSA"), _) => {
            let n = s("n")
                .and_then(|n| crate::unb64(n).ok())
                .ok_or(VerifyError::BadJwks("RSA key without n".into()))?;
            if n.len() < 256 {
                return Err(VerifyError::BadJwks(
                    "RSA keys must be at least 2048 bits".into(),
                ));
            }
            vec![Algorithm::RS256, Algorithm::PS256]
        }
        (kty, crv) => {
            return Err(VerifyError::BadJwks(format!(
                "unsupported key type {} {}; use EC P-256/P-384, OKP Ed25519 or RSA",
                kty.unwrap_or("?"),
                crv.unwrap_or("")
            )));
        }
    };
    match s("alg") {
        None => Ok(by_type),
        Some(a) => {
            let named = by_type.iter().find(|x| alg_name(**x) == a).copied();
            named.map(|x| vec![x]).ok_or_else(|| {
                VerifyError::BadJwks(format!("alg {a} is not allowed for this key type"))
            })
        }
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        _ => "other",
    }
}

impl VerifyingKeys {
    /// From a JWK Set (`{"keys": [...]}`). Keys marked `use: enc` are skipped.
    pub fn from_jwks(set: &Value) -> Result<Self, VerifyError> {
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(VerifyError::BadJwks("no `keys` array".into()))?;
        let mut entries = Vec::with_capacity(keys.len());
        for k in keys {
            if ["d", "p", "q", "dp", "dq", "qi", "k"]
                .iter()
                .any(|m| k.get(m).is_some())
            {
                return Err(VerifyError::BadJwks(
                    "the set holds private or symmetric key material; register only public keys"
                        .into(),
                ));
            }
            if k.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let algs = algs_for(k)?;
            let jwk: Jwk = serde_json::from_value(k.clone())
                .map_err(|e| VerifyError::BadJwks(e.to_string()))?;
            let key =
                DecodingKey::from_jwk(&jwk).map_err(|e| VerifyError::BadJwks(e.to_string()))?;
            entries.push(Entry {
                kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                algs,
                key,
            });
        }
        if entries.is_empty() {
            return Err(VerifyError::BadJwks("no signature keys".into()));
        }
        Ok(Self { entries })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Verify a compact JWS whose algorithm is in `allowed`. Time and audience claims are the
    /// caller's to check, against its own clock.
    pub fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        allowed: &[Algorithm],
    ) -> Result<Verified<T>, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !allowed.contains(&header.alg) {
            return Err(VerifyError::AlgNotAllowed(format!("{:?}", header.alg)));
        }
        let validation = validation(header.alg)
            .ok_or_else(|| VerifyError::AlgNotAllowed(format!("{:?}", header.alg)))?;
        let mut matched = false;
        for e in &self.entries {
            let kid_differs =
                matches!((&header.kid, &e.kid), (Some(want), Some(have)) if want != have);
            if !e.algs.contains(&header.alg) || kid_differs {
                continue;
            }
            matched = true;
            match jsonwebtoken::decode::<T>(token, &e.key, validation) {
                Ok(data) => {
                    return Ok(Verified {
                        header: data.header,
                        claims: data.claims,
                    });
                }
                Err(err) => match err.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    _ => return Err(VerifyError::Malformed),
                },
            }
        }
        Err(if matched {
            VerifyError::BadSignature
        } else {
            VerifyError::UnknownKey
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyAlg, SigningKey};
    use serde_json::json;

    fn set(keys: &[&SigningKey]) -> VerifyingKeys {
        VerifyingKeys::from_jwks(
            &json!({"keys": keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()}),
        )
        .unwrap()
    }

    #[test]
    fn sign_verify_roundtrip_all_algs() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::ES384] {
            let k = SigningKey::generate(alg, None).unwrap();
            let t = k.sign_jwt(Some("at+jwt"), &json!({"sub": "x"})).unwrap();
            let v = set(&[&k]).verify::<Value>(&t, ASSERTION_ALGS).unwrap();
            assert_eq!(v.claims["sub"], "x");
            assert_eq!(v.header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(v.header.kid.as_deref(), Some(k.kid()));
        }
    }

    #[test]
    fn other_key_and_tamper_fail() {
        let a = SigningKey::generate(KeyAlg::ES256, Some("a")).unwrap();
        let b = SigningKey::generate(KeyAlg::ES256, Some("a")).unwrap();
        let t = b.sign_jwt(None, &json!({"sub": "x"})).unwrap();
        assert_eq!(
            set(&[&a]).verify::<Value>(&t, ASSERTION_ALGS).unwrap_err(),
            VerifyError::BadSignature
        );
        let c = SigningKey::generate(KeyAlg::ES256, Some("c")).unwrap();
        let t = c.sign_jwt(None, &json!({"sub": "x"})).unwrap();
        assert_eq!(
            set(&[&a]).verify::<Value>(&t, ASSERTION_ALGS).unwrap_err(),
            VerifyError::UnknownKey
        );
    }

    #[test]
    fn private_jwk_roundtrip() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::ES384] {
            let k = SigningKey::generate(alg, Some("k")).unwrap();
            let text = k.to_private_jwk().unwrap();
            let back = SigningKey::from_private_jwk(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back.public_jwk(), k.public_jwk());
            let der = k.to_pkcs8().unwrap();
            let again = SigningKey::from_pkcs8(alg, "k", &der).unwrap();
            assert_eq!(again.public_jwk(), k.public_jwk());
        }
    }

    #[test]
    fn private_material_in_registered_set_is_not_needed() {
        let bad = json!({"keys": [{"kty": "oct", "k": "AAAA"}]});
        assert!(matches!(
            VerifyingKeys::from_jwks(&bad),
            Err(VerifyError::BadJwks(_))
        ));
    }
}
