//! Status list tokens (`typ: statuslist+jwt`) as a verifier fetches them: the signature check,
//! then, validly signed, fuzzed claims through every claim rule and the list decoder; and the
//! `status` claim of access tokens.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mayfly_client::access::{AccessClaims, Claims, StatusRule, status_to_check};
use mayfly_client::status::{StatusClaim, verify_list_token};
use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};

const URI: &str = "https://sts.example/statuslists/1";
const NOW: i64 = 1_800_000_000;

struct Ctx {
    keys: VerifyingKeys,
    signer: SigningKey,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let k = SigningKey::generate(KeyAlg::EdDSA, Some("k")).expect("key");
        let set = serde_json::json!({"keys": [k.public_jwk()]});
        Ctx { keys: VerifyingKeys::from_jwks(&set).expect("jwks"), signer: k }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = ctx();
    let _ = verify_list_token(&c.keys, text, URI, NOW, 30);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
    if let Ok(signed) = c.signer.sign_jwt(Some("statuslist+jwt"), &v) {
        if let Ok(t) = verify_list_token(&c.keys, &signed, URI, NOW, 30) {
            assert_eq!(t.uri, URI);
            assert!(NOW < t.exp);
        }
    }
    let _ = serde_json::from_value::<StatusClaim>(v.clone());
    let _ = status_to_check(&v, StatusRule::Require);
    let _ = v.status_list();
    if let Ok(claims) = serde_json::from_value::<Claims>(v) {
        let _ = status_to_check(&claims, StatusRule::Require);
    }
});
