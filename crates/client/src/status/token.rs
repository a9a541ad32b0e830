//! The status list token (`typ: statuslist+jwt`) and the `status` claim of a referenced token:
//! parsing and verification, pure (no I/O, the caller's clock), so every refusal is a unit test
//! and a fuzz target.

use mayfly_crypto::{VerifyError, VerifyingKeys};
use serde::{Deserialize, Serialize};

use super::{StatusBits, StatusError};
use crate::access::ACCESS_TOKEN_ALGS;

/// Longest status list token accepted (bytes). A list of 2^20 entries is at most ~175 KB even
/// when nothing compresses; this leaves room for lists 40 times larger.
pub const MAX_LIST_TOKEN_LEN: usize = 8 * 1024 * 1024;

/// The `status` claim of a token (draft-ietf-oauth-status-list §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClaim {
    /// The Token Status List mechanism; absent when the token names another mechanism only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_list: Option<StatusListRef>,
}

/// `status.status_list`: where the token's status bit is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusListRef {
    /// The index of the token's status in the list.
    pub idx: u64,
    /// The URI of the status list token.
    pub uri: String,
}

/// Why a status list token was refused. Variants carry no token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusListError {
    /// Longer than [`MAX_LIST_TOKEN_LEN`].
    #[error("the status list token is too long")]
    TooLong,
    /// Not a compact JWS, an algorithm outside the allow-list, or claims of the wrong shape.
    #[error("the status list token is not a valid signed JWT of the issuer")]
    Malformed,
    /// No published key matches the token's `kid` and `alg`.
    #[error("the status list token is signed by a key the issuer does not publish")]
    UnknownKey,
    /// A matching key exists but the signature does not verify.
    #[error("the status list token's signature does not verify")]
    BadSignature,
    /// `typ` is not `statuslist+jwt`.
    #[error("the token is not a status list token (typ statuslist+jwt)")]
    NotStatusList,
    /// `sub` is not the URI the list was fetched from.
    #[error("the status list token is for another list (sub is not its URI)")]
    WrongSubject,
    /// `exp` has passed.
    #[error("the status list token has expired")]
    Expired,
    /// `iat` lies in the future (beyond the skew).
    #[error("the status list token is not valid yet")]
    NotYetValid,
    /// `status_list` cannot be read.
    #[error("{0}")]
    List(#[from] StatusError),
}

impl From<VerifyError> for StatusListError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::UnknownKey => Self::UnknownKey,
            VerifyError::BadSignature => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

#[derive(Deserialize)]
struct RawList {
    bits: u64,
    lst: String,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    ttl: Option<u64>,
    status_list: RawList,
}

/// A verified status list token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListToken {
    /// Its URI (`sub`).
    pub uri: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry: past it, this copy must not be used.
    pub exp: i64,
    /// Seconds a copy may be cached before it is fetched again, if the issuer says.
    pub ttl: Option<u64>,
    /// The statuses.
    pub bits: StatusBits,
}

/// Verify a status list token fetched from `uri`: length, signature by one of `keys` under the
/// access-token algorithms (EdDSA, ES256), `typ` `statuslist+jwt`, `sub` == `uri`, `exp` not
/// passed at `now`, `iat` not beyond `now + skew`, then the list itself (`bits: 1`, bounded
/// decompression). `exp` and `iat` are required: a copy without an end could be replayed
/// forever.
pub fn verify_list_token(
    keys: &VerifyingKeys,
    token: &str,
    uri: &str,
    now: i64,
    skew: i64,
) -> Result<StatusListToken, StatusListError> {
    if token.len() > MAX_LIST_TOKEN_LEN {
        return Err(StatusListError::TooLong);
    }
    let verified = keys.verify::<RawClaims>(token, ACCESS_TOKEN_ALGS)?;
    let typ = verified.header.typ.as_deref().unwrap_or("");
    if !typ.eq_ignore_ascii_case("statuslist+jwt")
        && !typ.eq_ignore_ascii_case("application/statuslist+jwt")
    {
        return Err(StatusListError::NotStatusList);
    }
    let c = verified.claims;
    if c.sub != uri {
        return Err(StatusListError::WrongSubject);
    }
    if now >= c.exp {
        return Err(StatusListError::Expired);
    }
    if c.iat > now.saturating_add(skew) {
        return Err(StatusListError::NotYetValid);
    }
    let bits = StatusBits::decode_lst(&c.status_list.lst, c.status_list.bits)?;
    Ok(StatusListToken {
        uri: c.sub,
        iat: c.iat,
        exp: c.exp,
        ttl: c.ttl,
        bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_crypto::{KeyAlg, SigningKey};
    use serde_json::{Value, json};

    const URI: &str = "https://sts.example.test/statuslists/1";
    const NOW: i64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::generate(KeyAlg::EdDSA, Some("k1")).unwrap()
    }

    fn keys(k: &SigningKey) -> VerifyingKeys {
        VerifyingKeys::from_jwks(&json!({"keys": [k.public_jwk()]})).unwrap()
    }

    fn claims(bits: &StatusBits) -> Value {
        json!({"sub": URI, "iat": NOW, "exp": NOW + 120, "ttl": 60,
               "status_list": {"bits": 1, "lst": bits.encode_lst()}})
    }

    fn list() -> StatusBits {
        let mut b = StatusBits::new(1024);
        b.set(3);
        b
    }

    #[test]
    fn a_good_list_verifies() {
        let k = key();
        let t = k
            .sign_jwt(Some("statuslist+jwt"), &claims(&list()))
            .unwrap();
        let v = verify_list_token(&keys(&k), &t, URI, NOW, 30).unwrap();
        assert_eq!(v.bits.get(3), Some(true));
        assert_eq!(v.bits.get(4), Some(false));
        assert_eq!((v.iat, v.exp, v.ttl), (NOW, NOW + 120, Some(60)));
        let t = k
            .sign_jwt(Some("application/statuslist+jwt"), &claims(&list()))
            .unwrap();
        assert!(verify_list_token(&keys(&k), &t, URI, NOW, 30).is_ok());
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let k = key();
        let ks = keys(&k);
        let check = |t: &str, now| verify_list_token(&ks, t, URI, now, 30).unwrap_err();
        let good = k
            .sign_jwt(Some("statuslist+jwt"), &claims(&list()))
            .unwrap();
        assert_eq!(check(&good, NOW + 120), StatusListError::Expired);
        assert_eq!(check(&good, NOW - 31), StatusListError::NotYetValid);
        assert_eq!(
            verify_list_token(
                &ks,
                &good,
                "https://sts.example.test/statuslists/2",
                NOW,
                30
            )
            .unwrap_err(),
            StatusListError::WrongSubject
        );
        for typ in [None, Some("at+jwt"), Some("JWT")] {
            let t = k.sign_jwt(typ, &claims(&list())).unwrap();
            assert_eq!(check(&t, NOW), StatusListError::NotStatusList);
        }
        let other = SigningKey::generate(KeyAlg::EdDSA, Some("k2")).unwrap();
        let t = other
            .sign_jwt(Some("statuslist+jwt"), &claims(&list()))
            .unwrap();
        assert_eq!(check(&t, NOW), StatusListError::UnknownKey);
        let same_kid = key();
        let t = same_kid
            .sign_jwt(Some("statuslist+jwt"), &claims(&list()))
            .unwrap();
        assert_eq!(check(&t, NOW), StatusListError::BadSignature);
        let es384 = SigningKey::generate(KeyAlg::ES384, Some("k1")).unwrap();
        let t = es384
            .sign_jwt(Some("statuslist+jwt"), &claims(&list()))
            .unwrap();
        assert_eq!(
            verify_list_token(&keys(&es384), &t, URI, NOW, 30).unwrap_err(),
            StatusListError::Malformed
        );
        for missing in ["exp", "iat", "sub", "status_list"] {
            let mut c = claims(&list());
            c.as_object_mut().unwrap().remove(missing);
            let t = k.sign_jwt(Some("statuslist+jwt"), &c).unwrap();
            assert_eq!(check(&t, NOW), StatusListError::Malformed, "{missing}");
        }
        let mut c = claims(&list());
        c["status_list"]["bits"] = json!(2);
        let t = k.sign_jwt(Some("statuslist+jwt"), &c).unwrap();
        assert_eq!(check(&t, NOW), StatusListError::List(StatusError::Bits(2)));
        c["status_list"] = json!({"bits": 1, "lst": "AAAA"});
        let t = k.sign_jwt(Some("statuslist+jwt"), &c).unwrap();
        assert_eq!(check(&t, NOW), StatusListError::List(StatusError::Zlib));
        assert_eq!(
            check(&"a".repeat(MAX_LIST_TOKEN_LEN + 1), NOW),
            StatusListError::TooLong
        );
        assert_eq!(check("not.a.jwt", NOW), StatusListError::Malformed);
    }

    #[test]
    fn the_status_claim_reads_as_the_draft_writes_it() {
        let c: StatusClaim = serde_json::from_value(
            json!({"status_list": {"idx": 7, "uri": URI}, "other_mechanism": {}}),
        )
        .unwrap();
        assert_eq!(
            c.status_list,
            Some(StatusListRef {
                idx: 7,
                uri: URI.into()
            })
        );
        let c: StatusClaim = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c.status_list, None);
    }
}
