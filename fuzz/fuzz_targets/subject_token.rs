//! Subject tokens from trusted issuers (token exchange, JWT bearer): the unverified peek at
//! `iss`, signature verification, every claim rule, and the identity template filled from
//! hostile claims; plus identity templates themselves (operator input) and SPIFFE IDs.
#![no_main]
use std::sync::OnceLock;

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};
use mayfly_sts::Settings;
use mayfly_sts::federation::{ClientAuthRule, TrustedIssuer, claimed_issuer, preset, verify_subject_token};
use mayfly_proto::SpiffeId;
use mayfly_sts::identity::IdentityTemplate;

struct Ctx {
    settings: Settings,
    issuers: Vec<TrustedIssuer>,
    keys: VerifyingKeys,
    signer: SigningKey,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).expect("key");
        let keys = VerifyingKeys::from_jwks(&serde_json::json!({"keys": [k.public_jwk()]})).expect("jwks");
        let settings = Settings {
            issuer: "https://sts.example".into(),
            token_endpoint: "https://sts.example/oauth2/token".into(),
            default_ttl: 300,
            max_ttl: 3600,
            clock_skew: 30,
            max_assertion_lifetime: 300,
        };
        let issuers = ["kubernetes", "github-actions", "gitlab-ci", "spiffe-jwt-svid"]
            .iter()
            .map(|name| {
                let p = preset(name).expect("preset");
                TrustedIssuer {
                    name: (*name).into(),
                    issuer: "https://idp.example".into(),
                    audiences: vec!["mayfly".into()],
                    algorithms: vec![Algorithm::ES256],
                    max_token_age: 3600,
                    trust_domain: "example.org".into(),
                    identity: IdentityTemplate::parse(p.identity).expect("template"),
                    attributes: p.attributes.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
                    one_time_use: true,
                    client_auth: ClientAuthRule::Optional,
                    max_ttl: 3600,
                    // The CI presets also read the run's claims (the job's lease).
                    ci: mayfly_sts::CiProvider::from_preset(name),
                }
            })
            .collect();
        Ctx { settings, issuers, keys, signer: k }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = ctx();
    let now = 1_800_000_000;
    let _ = claimed_issuer(text);
    let _ = SpiffeId::validate(text);
    if let Ok(t) = IdentityTemplate::parse(text) {
        let _ = t.render(&serde_json::json!({"sub": "x", "a": {"b": "c"}}), "example.org");
    }
    for i in &c.issuers {
        let _ = verify_subject_token(&c.settings, i, &c.keys, text, now);
    }
    // Past the signature: fuzzed claims, validly signed, through every claim rule and template.
    if let Ok(mut claims) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(o) = claims.as_object_mut() {
            o.entry("iss").or_insert("https://idp.example".into());
            o.entry("aud").or_insert("mayfly".into());
            o.entry("exp").or_insert((now + 60).into());
        }
        if let Ok(signed) = c.signer.sign_jwt(None, &claims) {
            for i in &c.issuers {
                let _ = verify_subject_token(&c.settings, i, &c.keys, &signed, now);
            }
        }
    }
});
