//! Every rejection path of the token endpoint, with the exact RFC error code.

use jsonwebtoken::{EncodingKey, Header};
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::json;

use crate::fixture::*;

#[tokio::test]
async fn rejections_with_exact_error_codes() {
    let f = Fixture::start(&[]);
    let iss = f.issuer();

    // Positive control: the fixture's assertion is accepted, so every refusal below is for
    // the one thing each case changes.
    let ok = f
        .token_with(&f.assertion(), &[("scope", "read"), ("resource", AUD)])
        .await;
    assert_eq!(ok.0, 200, "{}", ok.1);

    // Bad signature: a valid assertion with its payload swapped.
    let good = f.assertion();
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = f.claims();
    c["jti"] = json!("tampered");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_error(&f.token_with(&forged, &[]).await, 401, "invalid_client");

    // alg: none.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(f.claims().to_string().as_bytes())
    );
    assert_error(&f.token_with(&none, &[]).await, 401, "invalid_client");

    // HMAC signed with the client's public key as the secret (the classic key-confusion attack).
    for secret in [
        f.key.public_jwk().to_string(),
        f.key.public_jwk()["x"].as_str().unwrap().to_string(),
    ] {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("svc-key".into());
        let hs = jsonwebtoken::encode(
            &h,
            &f.claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_error(&f.token_with(&hs, &[]).await, 401, "invalid_client");
    }

    // Another client's key: `other` signs an assertion claiming to be `svc`.
    let stolen = f.other_key.sign_jwt(None, &f.claims()).unwrap();
    assert_error(&f.token_with(&stolen, &[]).await, 401, "invalid_client");
    // ... and an unregistered key that reuses svc's kid.
    let rogue = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
    assert_error(
        &f.token_with(&rogue.sign_jwt(None, &f.claims()).unwrap(), &[])
            .await,
        401,
        "invalid_client",
    );

    // Expired beyond the 30 s skew; within the skew is accepted.
    let mut c = f.claims();
    c["exp"] = json!(now() - 60);
    c["iat"] = json!(now() - 120);
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");
    let mut c = f.claims();
    c["exp"] = json!(now() - 10);
    assert_eq!(
        f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0,
        200,
        "expired by 10 s is inside the skew"
    );

    // Not yet valid: nbf or iat beyond the skew.
    for claim in ["nbf", "iat"] {
        let mut c = f.claims();
        c[claim] = json!(now() + 120);
        c["exp"] = json!(now() + 180);
        assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");
    }
    // exp too far ahead (more than 5 minutes).
    let mut c = f.claims();
    c["exp"] = json!(now() + 3600);
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");
    // exp missing.
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");

    // Wrong aud; multi-valued aud with anything else; aud array holding only us is fine.
    for aud in [
        json!("https://evil.example"),
        json!([iss.clone(), "https://evil.example"]),
        json!([]),
        json!(42),
    ] {
        let mut c = f.claims();
        c["aud"] = aud.clone();
        assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");
    }
    let mut c = f.claims();
    c["aud"] = json!([iss.clone()]);
    assert_eq!(f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0, 200);
    let mut c = f.claims();
    c["aud"] = json!(format!("{iss}/oauth2/token"));
    assert_eq!(
        f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0,
        200,
        "token endpoint URL is accepted as aud"
    );

    // iss/sub not the client.
    let mut c = f.claims();
    c["iss"] = json!("someone-else");
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");

    // Missing jti.
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("jti");
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");

    // Replayed jti.
    let once = f.assertion();
    assert_eq!(f.token_with(&once, &[("resource", AUD)]).await.0, 200);
    assert_error(
        &f.token_with(&once, &[("resource", AUD)]).await,
        401,
        "invalid_client",
    );

    // Unknown client.
    let mut c = f.claims();
    c["iss"] = json!("nobody");
    c["sub"] = json!("nobody");
    assert_error(&f.token_with(&f.sign(&c), &[]).await, 401, "invalid_client");

    // client_id parameter disagreeing with the assertion.
    assert_error(
        &f.token_with(&f.assertion(), &[("client_id", "other")])
            .await,
        401,
        "invalid_client",
    );

    // Disallowed scope; disallowed resource; disallowed audience; two resources at once.
    assert_error(
        &f.token_with(
            &f.assertion(),
            &[("scope", "read admin"), ("resource", AUD)],
        )
        .await,
        400,
        "invalid_scope",
    );
    assert_error(
        &f.token_with(
            &f.assertion(),
            &[("resource", "https://billing.example.test")],
        )
        .await,
        400,
        "invalid_target",
    );
    assert_error(
        &f.token_with(
            &f.assertion(),
            &[("audience", "https://billing.example.test")],
        )
        .await,
        400,
        "invalid_target",
    );
    assert_error(
        &f.token_with(
            &f.assertion(),
            &[
                ("resource", AUD),
                ("resource", "https://other.example.test"),
            ],
        )
        .await,
        400,
        "invalid_target",
    );
    // svc has two audiences: it must name one.
    assert_error(
        &f.token_with(&f.assertion(), &[]).await,
        400,
        "invalid_target",
    );

    // Duplicate parameters.
    assert_error(
        &f.token_with(&f.assertion(), &[("scope", "read"), ("scope", "write")])
            .await,
        400,
        "invalid_request",
    );

    // Unsupported and missing grant types.
    let form = [
        ("grant_type", "password"),
        ("client_assertion_type", ASSERTION_TYPE),
    ];
    let (s, _, v) = f.post_form("/oauth2/token", &form).await;
    assert_error(&(s, v), 400, "unsupported_grant_type");
    let (s, _, v) = f.post_form("/oauth2/token", &[("scope", "read")]).await;
    assert_error(&(s, v), 400, "invalid_request");

    // No client authentication at all.
    let (s, h, v) = f
        .post_form("/oauth2/token", &[("grant_type", "client_credentials")])
        .await;
    assert_error(&(s, v.clone()), 401, "invalid_client");
    assert_eq!(h["cache-control"], "no-store");
    // A client secret in the Authorization header: 401 with a challenge in its scheme.
    let r = f
        .http
        .post(format!("{iss}/oauth2/token"))
        .basic_auth("svc", Some("a-static-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"mayfly\"");
    let got = (r.status().as_u16(), r.json().await.unwrap());
    assert_error(&got, 401, "invalid_client");

    // Malformed form: bad escapes, not UTF-8, wrong content type.
    let (s, _, v) = f
        .post_raw(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            b"grant_type=%zz".to_vec(),
        )
        .await;
    assert_error(&(s, v), 400, "invalid_request");
    let (s, _, v) = f
        .post_raw(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            vec![b'a', b'=', 0xff, 0xfe],
        )
        .await;
    assert_error(&(s, v), 400, "invalid_request");
    let (s, _, v) = f
        .post_raw(
            "/oauth2/token",
            "application/json",
            br#"{"grant_type":"client_credentials"}"#.to_vec(),
        )
        .await;
    assert_error(&(s, v), 400, "invalid_request");

    // Oversized body (default limit 16 KiB).
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(20 * 1024)
    );
    let (s, _, v) = f
        .post_raw(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            big.into_bytes(),
        )
        .await;
    assert_error(&(s, v), 413, "invalid_request");
}

/// Single use survives a restart: the replay cache is in the store, not in memory.
#[tokio::test]
async fn replayed_jti_is_refused_after_a_restart() {
    let mut f = Fixture::start(&[]);
    let once = f.assertion();
    assert_eq!(f.token_with(&once, &[("resource", AUD)]).await.0, 200);
    f.restart(&[]);
    assert_error(
        &f.token_with(&once, &[("resource", AUD)]).await,
        401,
        "invalid_client",
    );
    // A fresh assertion still works after the restart.
    assert_eq!(
        f.token_with(&f.assertion(), &[("resource", AUD)]).await.0,
        200
    );
}
