//! `ceiling`: what one core can do if a token request cost nothing but its cryptography.
//!
//! Per iteration: one ES256 client-assertion verification through `jsonwebtoken::decode` (the
//! crate, backend and validation the server uses: signature, exp, aud, iss) and one Ed25519 JWS
//! signature over a typical RFC 9068 access token, through an aws-lc-rs `Ed25519KeyPair` parsed
//! once (as the server's signer holds it), including the claims' JSON and base64url encoding.
//! Assertions are signed beforehand. No HTTP, no storage, no policy: an upper bound.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use crate::claims::{AccessClaims, AssertionClaims};
use crate::keys::{ClientKey, unix_now};

const CLIENT: &str = "bench-client";
const ISSUER: &str = "http://127.0.0.1:8080";

fn measure(seconds: f64, mut op: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    // Warm up caches and the allocator for a tenth of the time, then count.
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 10.0);
    let mut i = 0u64;
    while Instant::now() < warm {
        op(i)?;
        i += 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            op(i)?;
            i += 1;
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub fn ceiling(seconds: f64) -> anyhow::Result<()> {
    let rng = SystemRandom::new();
    let dir = std::env::temp_dir().join(format!("mayfly-ceiling-{}", std::process::id()));
    crate::keys::keygen(&dir)?;
    let client = ClientKey::load(&dir)?;
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(crate::keys::JWKS_FILE))?)?;
    let _ = std::fs::remove_dir_all(&dir);
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).context("client JWK")?;
    let decoding = DecodingKey::from_jwk(&jwk)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[ISSUER]);
    validation.set_issuer(&[CLIENT]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);

    // 4096 distinct assertions, cycled: distinct inputs without signing inside the timed loop.
    let now = unix_now();
    let assertions: Vec<String> = (0..4096)
        .map(|i| client.assertion(CLIENT, ISSUER, &format!("ceiling-{i}"), now))
        .collect::<anyhow::Result<_>>()?;

    let ed_pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("Ed25519 keygen"))?;
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("Ed25519 key: {e}"))?;
    let header_b64 = B64.encode(serde_json::to_vec(
        &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "ceiling-ed25519"}),
    )?);

    let verify = |i: u64| -> anyhow::Result<()> {
        let a = &assertions[(i % 4096) as usize];
        let data = jsonwebtoken::decode::<AssertionClaims>(a, &decoding, &validation)?;
        black_box(data);
        Ok(())
    };
    let sign = |i: u64| -> anyhow::Result<()> {
        let claims = AccessClaims {
            iss: ISSUER,
            sub: CLIENT,
            aud: "https://api.example.test",
            client_id: CLIENT,
            scope: "read",
            jti: format!("tok-{i}"),
            iat: now,
            exp: now + 300,
        };
        let mut token = String::with_capacity(320);
        token.push_str(&header_b64);
        token.push('.');
        B64.encode_string(serde_json::to_vec(&claims)?, &mut token);
        let sig = ed.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(sig.as_ref(), &mut token);
        black_box(token);
        Ok(())
    };
    // Also the raw ECDSA verify without JWT parsing, to show jsonwebtoken's share.
    let es_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("P-256 keygen"))?;
    let es = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, es_pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("P-256 key: {e}"))?;
    let msg = b"header.payload-of-typical-length-for-a-client-assertion-0123456789";
    let es_sig = es
        .sign(&rng, msg)
        .map_err(|_| anyhow::anyhow!("ES256 sign"))?;
    let es_pub = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        aws_lc_rs::signature::KeyPair::public_key(&es)
            .as_ref()
            .to_vec(),
    );
    let es_parsed = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        aws_lc_rs::signature::KeyPair::public_key(&es).as_ref(),
    )
    .map_err(|_| anyhow::anyhow!("P-256 public key"))?;
    let parsed_verify = |_: u64| -> anyhow::Result<()> {
        es_parsed
            .verify_sig(msg, es_sig.as_ref())
            .map_err(|_| anyhow::anyhow!("parsed verify"))?;
        Ok(())
    };
    let raw_verify = |_: u64| -> anyhow::Result<()> {
        es_pub
            .verify(msg, es_sig.as_ref())
            .map_err(|_| anyhow::anyhow!("raw verify"))?;
        Ok(())
    };

    eprintln!("measuring {seconds}s each: verify+sign, verify, sign, raw P-256 verify");
    let both = measure(seconds, |i| {
        verify(i)?;
        sign(i)
    })?;
    let v = measure(seconds, verify)?;
    let s = measure(seconds, sign)?;
    let raw = measure(seconds, raw_verify)?;
    let parsed = measure(seconds, parsed_verify)?;
    let report = json!({
        "ceiling_ops_per_s": both.round(),
        "es256_verify_jsonwebtoken_per_s": v.round(),
        "eddsa_token_sign_per_s": s.round(),
        "p256_verify_raw_aws_lc_per_s": raw.round(),
        "p256_verify_parsed_key_aws_lc_per_s": parsed.round(),
        "us_per_op": {
            "verify_plus_sign": 1e6 / both,
            "verify": 1e6 / v,
            "sign": 1e6 / s,
            "raw_p256_verify": 1e6 / raw,
            "parsed_key_p256_verify": 1e6 / parsed,
        },
        "seconds_each": seconds,
        "threads": 1,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("ceiling: {both:.0} ops/s per core (verify {v:.0}/s, sign {s:.0}/s)");
    Ok(())
}
