//! Fixture keys, JWKS documents and client assertions (RFC 7523) as the tests build them.

use std::path::Path;

use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::{Value, json};

/// A fresh key pair of `alg` with key id `kid`.
pub fn key(alg: KeyAlg, kid: &str) -> SigningKey {
    SigningKey::generate(alg, Some(kid)).expect("generate a key pair")
}

/// A fresh ES256 key pair with key id `kid`.
pub fn es256(kid: &str) -> SigningKey {
    key(KeyAlg::ES256, kid)
}

/// A fresh EdDSA key pair with key id `kid`.
pub fn eddsa(kid: &str) -> SigningKey {
    key(KeyAlg::EdDSA, kid)
}

/// The JWKS document publishing the public halves of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
}

/// Write [`jwks`] of `keys` to `path`.
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    std::fs::write(path, jwks(keys).to_string()).expect("write a JWKS file");
}

/// A fresh random `jti`.
pub fn jti() -> String {
    mayfly_crypto::random_id().expect("random id")
}

/// Valid client-assertion claims: `client` as `iss` and `sub`, audience `aud`, a fresh `jti`,
/// issued at `now`, expiring a minute later.
pub fn assertion_claims(client: &str, aud: &str, now: i64) -> Value {
    json!({"iss": client, "sub": client, "aud": aud, "jti": jti(), "iat": now, "exp": now + 60})
}

/// A client assertion by `client`, signed with `key`, for the server at `aud`, at `now`.
pub fn assertion(key: &SigningKey, client: &str, aud: &str, now: i64) -> String {
    sign(key, &assertion_claims(client, aud, now))
}

/// `claims` signed with `key` (header `typ` JWT).
pub fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign_jwt(None, claims).expect("sign a JWT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{peek, peek_header};

    #[test]
    fn assertions_name_the_client_and_carry_a_fresh_jti() {
        let k = es256("k1");
        let a = assertion(&k, "svc", "http://127.0.0.1:1", 1_000);
        let b = assertion(&k, "svc", "http://127.0.0.1:1", 1_000);
        let c = peek(&a);
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some("svc"), Some("svc"))
        );
        assert_eq!(c["exp"], 1_060);
        assert_ne!(c["jti"], peek(&b)["jti"]);
        assert_eq!(peek_header(&a)["kid"], "k1");
        let keys = mayfly_crypto::VerifyingKeys::from_jwks(&jwks(&[&k])).unwrap();
        assert!(keys.len() == 1);
    }
}
