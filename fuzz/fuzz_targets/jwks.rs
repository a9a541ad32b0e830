//! Registered JWK Sets (config, `client add`, jwks_uri) and private JWK files (`token get`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = mayfly_crypto::VerifyingKeys::from_jwks(&v);
    let _ = mayfly_crypto::SigningKey::from_private_jwk(&v);
});
