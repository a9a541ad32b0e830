//! The happy path: an RFC 9068 token, metadata, JWKS, introspection, revocation, metrics.

use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::Value;

use crate::fixture::*;

async fn get_json(f: &Fixture, path: &str) -> (reqwest::header::HeaderMap, Value) {
    let r = f
        .http
        .get(format!("{}{path}", f.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let h = r.headers().clone();
    (h, r.json().await.unwrap())
}

#[tokio::test]
async fn token_is_rfc9068_scoped_and_short_lived() {
    let f = Fixture::start(&[]);
    let (s, body) = f
        .token_with(&f.assertion(), &[("scope", "read"), ("resource", AUD)])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read");
    let token = body["access_token"].as_str().unwrap();

    // Verify with the published keys through the client library (jsonwebtoken underneath).
    let http = mayfly_client::http().unwrap();
    let md = mayfly_client::discover(&http, &f.issuer()).await.unwrap();
    let keys = mayfly_client::fetch_keys(&md).await.unwrap();
    let claims = mayfly_client::verify_access_token(&keys, token, &f.issuer(), Some(AUD)).unwrap();
    for c in [
        "iss",
        "sub",
        "aud",
        "client_id",
        "scope",
        "iat",
        "exp",
        "jti",
    ] {
        assert!(claims.get(c).is_some(), "claim {c} in {claims}");
    }
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());

    // A requested lifetime can only shorten.
    let (_, b) = f
        .token_with(&f.assertion(), &[("resource", AUD), ("expires_in", "60")])
        .await;
    let c = peek(b["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    let (_, b) = f
        .token_with(
            &f.assertion(),
            &[("resource", AUD), ("expires_in", "999999")],
        )
        .await;
    assert_eq!(b["expires_in"], 3600, "capped at max_ttl");
    // No scope asked, none granted.
    let (_, b) = f.token_with(&f.assertion(), &[("resource", AUD)]).await;
    assert!(
        peek(b["access_token"].as_str().unwrap())
            .get("scope")
            .is_none()
    );
}

#[tokio::test]
async fn metadata_jwks_health_metrics() {
    let f = Fixture::start(&[]);
    let iss = f.issuer();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let (_, md) = get_json(&f, path).await;
        assert_eq!(md["issuer"], iss);
        assert_eq!(md["token_endpoint"], format!("{iss}/oauth2/token"));
        assert_eq!(
            md["introspection_endpoint"],
            format!("{iss}/oauth2/introspect")
        );
        assert_eq!(md["revocation_endpoint"], format!("{iss}/oauth2/revoke"));
        assert_eq!(md["jwks_uri"], format!("{iss}/jwks.json"));
        assert_eq!(
            md["grant_types_supported"],
            serde_json::json!([
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:token-exchange",
                "urn:ietf:params:oauth:grant-type:jwt-bearer"
            ])
        );
        assert_eq!(
            md["token_endpoint_auth_methods_supported"],
            serde_json::json!(["private_key_jwt"])
        );
        let algs = md["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap();
        assert!(
            algs.iter()
                .all(|a| a != "none" && !a.as_str().unwrap().starts_with("HS"))
        );
    }
    let (h, jwks) = get_json(&f, "/jwks.json").await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "current and next: {jwks}");
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "no private parts"
    );
    assert_eq!(h["cache-control"], "public, max-age=3600");

    let r = f.http.get(format!("{iss}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = f.http.get(format!("{iss}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let _ = f.token_with(&f.assertion(), &[("resource", AUD)]).await;
    let _ = f
        .token_with(&f.assertion(), &[("resource", AUD), ("scope", "admin")])
        .await;
    let _ = f.token_with(&f.assertion(), &[("resource", AUD)]).await;
    let text = f
        .http
        .get(format!("{iss}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"mayfly_tokens_issued_total{client="svc",grant="client_credentials"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mayfly_denials_total{endpoint="token",reason="scope_not_allowed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("mayfly_request_duration_seconds_bucket"),
        "{text}"
    );
}

async fn introspect(f: &Fixture, key: &SigningKey, client: &str, token: &str) -> Value {
    let n = now();
    let c = serde_json::json!({"iss": client, "sub": client, "aud": f.issuer(), "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
    let a = key.sign_jwt(None, &c).unwrap();
    let (s, _, v) = f
        .post_form(
            "/oauth2/introspect",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", token),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn revoke(f: &Fixture, key: &SigningKey, client: &str, token: &str) -> (u16, Value) {
    let n = now();
    let c = serde_json::json!({"iss": client, "sub": client, "aud": f.issuer(), "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
    let a = key.sign_jwt(None, &c).unwrap();
    let (s, _, v) = f
        .post_form(
            "/oauth2/revoke",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", token),
            ],
        )
        .await;
    (s, v)
}

#[tokio::test]
async fn introspection_and_revocation() {
    let f = Fixture::start(&[]);
    let (_, b) = f
        .token_with(
            &f.assertion(),
            &[("resource", AUD), ("scope", "read write")],
        )
        .await;
    let token = b["access_token"].as_str().unwrap().to_string();

    let v = introspect(&f, &f.key, "svc", &token).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], "svc");
    assert_eq!(v["scope"], "read write");
    assert_eq!(v["aud"], AUD);
    // `other` may request the token's audience but was not granted its introspection.
    assert_eq!(
        introspect(&f, &f.other_key, "other", &token).await,
        serde_json::json!({"active": false})
    );

    // Malformed and foreign tokens are inactive, and say nothing else.
    assert_eq!(
        introspect(&f, &f.key, "svc", "not-a-token").await,
        serde_json::json!({"active": false})
    );
    let foreign_key = SigningKey::generate(KeyAlg::EdDSA, None).unwrap();
    let mut claims = peek(&token);
    claims["jti"] = serde_json::json!("foreign");
    let foreign = foreign_key.sign_jwt(Some("at+jwt"), &claims).unwrap();
    assert_eq!(
        introspect(&f, &f.key, "svc", &foreign).await,
        serde_json::json!({"active": false})
    );

    // Only the owner may revoke.
    let (s, v) = revoke(&f, &f.other_key, "other", &token).await;
    assert_error(&(s, v), 400, "unauthorized_client");
    let (s, _) = revoke(&f, &f.key, "svc", &token).await;
    assert_eq!(s, 200);
    assert_eq!(
        introspect(&f, &f.key, "svc", &token).await,
        serde_json::json!({"active": false})
    );
    // Revoking garbage is not an error (RFC 7009 §2.2).
    assert_eq!(revoke(&f, &f.key, "svc", "garbage").await.0, 200);

    // Introspection and revocation authenticate the caller like the token endpoint does.
    let (s, _, v) = f
        .post_form("/oauth2/introspect", &[("token", &token)])
        .await;
    assert_error(&(s, v), 401, "invalid_client");
    let (s, _, v) = f
        .post_form(
            "/oauth2/introspect",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &f.assertion()),
            ],
        )
        .await;
    assert_error(&(s, v), 400, "invalid_request");
}
