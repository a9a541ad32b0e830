//! Every rejection path of the token endpoint, one per test, with the exact RFC error code.
//! Each test first gets a token with the fixture's own assertion (the positive control), so
//! its refusal is for the one thing the case changes.

use jsonwebtoken::{EncodingKey, Header};
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::{Value, json};

use crate::fixture::*;

/// The fixture, after the positive control: its assertion is accepted.
async fn fixture() -> Fixture {
    let f = Fixture::start(&[]);
    let ok = f
        .token_with(&f.assertion(), &[("scope", "read"), ("resource", AUD)])
        .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    f
}

/// `claims`, signed with the client's key, are refused as `invalid_client`.
async fn claims_refused(f: &Fixture, claims: &Value) {
    assert_error(
        &f.token_with(&f.sign(claims), &[]).await,
        401,
        "invalid_client",
    );
}

/// A token request from `svc` with `extra` parameters gets `status` and `code`.
async fn request_refused(extra: &[(&str, &str)], status: u16, code: &str) {
    let f = fixture().await;
    assert_error(&f.token_with(&f.assertion(), extra).await, status, code);
}

/// A raw body of `content_type` posted to the token endpoint gets `status` and
/// `invalid_request`.
async fn body_refused(content_type: &str, body: Vec<u8>, status: u16) {
    let f = fixture().await;
    let (s, _, v) = f.post_raw("/oauth2/token", content_type, body).await;
    assert_error(&(s, v), status, "invalid_request");
}

#[tokio::test]
async fn assertion_with_a_swapped_payload_is_invalid_client() {
    let f = fixture().await;
    // A valid assertion with its payload swapped: the signature no longer matches.
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
}

#[tokio::test]
async fn assertion_signed_with_alg_none_is_invalid_client() {
    let f = fixture().await;
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(f.claims().to_string().as_bytes())
    );
    assert_error(&f.token_with(&none, &[]).await, 401, "invalid_client");
}

/// HMAC signed with the client's public key as the secret (the classic key-confusion attack).
async fn hmac_with_secret_refused(secret: impl Fn(&Fixture) -> String) {
    let f = fixture().await;
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("svc-key".into());
    let hs = jsonwebtoken::encode(
        &h,
        &f.claims(),
        &EncodingKey::from_secret(secret(&f).as_bytes()),
    )
    .unwrap();
    assert_error(&f.token_with(&hs, &[]).await, 401, "invalid_client");
}

#[tokio::test]
async fn assertion_hmac_signed_with_the_public_jwk_is_invalid_client() {
    hmac_with_secret_refused(|f| f.key.public_jwk().to_string()).await;
}

#[tokio::test]
async fn assertion_hmac_signed_with_the_public_key_coordinate_is_invalid_client() {
    hmac_with_secret_refused(|f| f.key.public_jwk()["x"].as_str().unwrap().to_string()).await;
}

#[tokio::test]
async fn assertion_signed_with_another_clients_key_is_invalid_client() {
    let f = fixture().await;
    // `other` signs an assertion claiming to be `svc`.
    let stolen = f.other_key.sign_jwt(None, &f.claims()).unwrap();
    assert_error(&f.token_with(&stolen, &[]).await, 401, "invalid_client");
}

#[tokio::test]
async fn assertion_signed_with_an_unregistered_key_reusing_the_kid_is_invalid_client() {
    let f = fixture().await;
    let rogue = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
    assert_error(
        &f.token_with(&rogue.sign_jwt(None, &f.claims()).unwrap(), &[])
            .await,
        401,
        "invalid_client",
    );
}

#[tokio::test]
async fn assertion_expired_beyond_the_skew_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["exp"] = json!(now() - 60);
    c["iat"] = json!(now() - 120);
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_expired_within_the_skew_is_accepted() {
    let f = fixture().await;
    let mut c = f.claims();
    c["exp"] = json!(now() - 10);
    assert_eq!(
        f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0,
        200,
        "expired by 10 s is inside the skew"
    );
}

#[tokio::test]
async fn assertion_with_nbf_beyond_the_skew_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["nbf"] = json!(now() + 120);
    c["exp"] = json!(now() + 180);
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_with_iat_beyond_the_skew_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["iat"] = json!(now() + 120);
    c["exp"] = json!(now() + 180);
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_with_exp_more_than_five_minutes_ahead_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["exp"] = json!(now() + 3600);
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_without_exp_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("exp");
    claims_refused(&f, &c).await;
}

/// An assertion whose `aud` is `aud(issuer)` is refused.
async fn aud_refused(aud: impl Fn(&str) -> Value) {
    let f = fixture().await;
    let mut c = f.claims();
    c["aud"] = aud(&f.issuer());
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_for_another_audience_is_invalid_client() {
    aud_refused(|_| json!("https://evil.example")).await;
}

#[tokio::test]
async fn assertion_for_us_and_another_audience_is_invalid_client() {
    aud_refused(|iss| json!([iss, "https://evil.example"])).await;
}

#[tokio::test]
async fn assertion_with_an_empty_audience_array_is_invalid_client() {
    aud_refused(|_| json!([])).await;
}

#[tokio::test]
async fn assertion_with_a_numeric_audience_is_invalid_client() {
    aud_refused(|_| json!(42)).await;
}

#[tokio::test]
async fn assertion_with_an_audience_array_holding_only_us_is_accepted() {
    let f = fixture().await;
    let mut c = f.claims();
    c["aud"] = json!([f.issuer()]);
    assert_eq!(f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0, 200);
}

#[tokio::test]
async fn assertion_for_the_token_endpoint_url_is_accepted() {
    let f = fixture().await;
    let mut c = f.claims();
    c["aud"] = json!(format!("{}/oauth2/token", f.issuer()));
    assert_eq!(
        f.token_with(&f.sign(&c), &[("resource", AUD)]).await.0,
        200,
        "token endpoint URL is accepted as aud"
    );
}

#[tokio::test]
async fn assertion_whose_iss_is_not_the_client_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["iss"] = json!("someone-else");
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn assertion_without_jti_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("jti");
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn replayed_assertion_is_invalid_client() {
    let f = fixture().await;
    let once = f.assertion();
    assert_eq!(f.token_with(&once, &[("resource", AUD)]).await.0, 200);
    assert_error(
        &f.token_with(&once, &[("resource", AUD)]).await,
        401,
        "invalid_client",
    );
}

#[tokio::test]
async fn assertion_from_an_unknown_client_is_invalid_client() {
    let f = fixture().await;
    let mut c = f.claims();
    c["iss"] = json!("nobody");
    c["sub"] = json!("nobody");
    claims_refused(&f, &c).await;
}

#[tokio::test]
async fn client_id_disagreeing_with_the_assertion_is_invalid_client() {
    request_refused(&[("client_id", "other")], 401, "invalid_client").await;
}

#[tokio::test]
async fn scope_the_client_may_not_have_is_invalid_scope() {
    request_refused(
        &[("scope", "read admin"), ("resource", AUD)],
        400,
        "invalid_scope",
    )
    .await;
}

#[tokio::test]
async fn resource_the_client_may_not_reach_is_invalid_target() {
    request_refused(
        &[("resource", "https://billing.example.test")],
        400,
        "invalid_target",
    )
    .await;
}

#[tokio::test]
async fn audience_the_client_may_not_reach_is_invalid_target() {
    request_refused(
        &[("audience", "https://billing.example.test")],
        400,
        "invalid_target",
    )
    .await;
}

#[tokio::test]
async fn two_resources_at_once_are_invalid_target() {
    request_refused(
        &[
            ("resource", AUD),
            ("resource", "https://other.example.test"),
        ],
        400,
        "invalid_target",
    )
    .await;
}

#[tokio::test]
async fn no_target_from_a_client_with_two_audiences_is_invalid_target() {
    // svc has two audiences: it must name one.
    request_refused(&[], 400, "invalid_target").await;
}

#[tokio::test]
async fn duplicate_parameters_are_invalid_request() {
    request_refused(
        &[("scope", "read"), ("scope", "write")],
        400,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn unsupported_grant_type_is_unsupported_grant_type() {
    let f = fixture().await;
    let form = [
        ("grant_type", "password"),
        ("client_assertion_type", ASSERTION_TYPE),
    ];
    let (s, _, v) = f.post_form("/oauth2/token", &form).await;
    assert_error(&(s, v), 400, "unsupported_grant_type");
}

#[tokio::test]
async fn missing_grant_type_is_invalid_request() {
    let f = fixture().await;
    let (s, _, v) = f.post_form("/oauth2/token", &[("scope", "read")]).await;
    assert_error(&(s, v), 400, "invalid_request");
}

#[tokio::test]
async fn no_client_authentication_is_invalid_client_and_not_cached() {
    let f = fixture().await;
    let (s, h, v) = f
        .post_form("/oauth2/token", &[("grant_type", "client_credentials")])
        .await;
    assert_error(&(s, v.clone()), 401, "invalid_client");
    assert_eq!(h["cache-control"], "no-store");
}

#[tokio::test]
async fn client_secret_in_basic_auth_is_invalid_client_with_a_basic_challenge() {
    let f = fixture().await;
    let r = f
        .http
        .post(format!("{}/oauth2/token", f.issuer()))
        .basic_auth("svc", Some("a-static-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"mayfly\"");
    let got = (r.status().as_u16(), r.json().await.unwrap());
    assert_error(&got, 401, "invalid_client");
}

#[tokio::test]
async fn form_with_a_bad_escape_is_invalid_request() {
    body_refused(
        "application/x-www-form-urlencoded",
        b"grant_type=%zz".to_vec(),
        400,
    )
    .await;
}

#[tokio::test]
async fn form_that_is_not_utf8_is_invalid_request() {
    body_refused(
        "application/x-www-form-urlencoded",
        vec![b'a', b'=', 0xff, 0xfe],
        400,
    )
    .await;
}

#[tokio::test]
async fn json_body_is_invalid_request() {
    body_refused(
        "application/json",
        br#"{"grant_type":"client_credentials"}"#.to_vec(),
        400,
    )
    .await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_invalid_request() {
    // The default limit is 16 KiB.
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(20 * 1024)
    );
    body_refused("application/x-www-form-urlencoded", big.into_bytes(), 413).await;
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
