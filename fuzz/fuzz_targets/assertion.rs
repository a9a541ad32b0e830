//! Client assertions (and access tokens presented for introspection): the unverified peek at the
//! claimed client, signature verification, claim checks.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};
use mayfly_sts::{Client, Settings};

struct Ctx {
    settings: Settings,
    client: Client,
    keys: VerifyingKeys,
    signer: SigningKey,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).expect("key");
        let e = SigningKey::generate(KeyAlg::EdDSA, Some("e")).expect("key");
        let set = serde_json::json!({"keys": [k.public_jwk(), e.public_jwk()]});
        let keys = VerifyingKeys::from_jwks(&set).expect("jwks");
        let settings = Settings {
            issuer: "https://sts.example".into(),
            token_endpoint: "https://sts.example/oauth2/token".into(),
            default_ttl: 300,
            max_ttl: 3600,
            clock_skew: 30,
            max_assertion_lifetime: 300,
        };
        let client = Client {
            id: "svc".into(),
            keys: Arc::new(VerifyingKeys::from_jwks(&set).expect("jwks")),
            audiences: vec!["https://api".into()],
            scopes: vec!["read".into()],
            max_ttl: 3600,
        };
        Ctx { settings, client, keys, signer: k }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = ctx();
    let _ = mayfly_sts::claimed_client_id(text);
    let _ = mayfly_sts::authenticate_assertion(&c.settings, &c.client, text, Some("svc"), 1_800_000_000);
    let _ = mayfly_sts::check_access_token(&c.settings, &c.keys, text, 1_800_000_000);
    // Past the signature: fuzzed claims, validly signed, through every claim rule.
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        if let Ok(signed) = c.signer.sign_jwt(None, &claims) {
            let _ = mayfly_sts::authenticate_assertion(&c.settings, &c.client, &signed, None, 1_800_000_000);
        }
    }
});
