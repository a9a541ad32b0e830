//! A client that publishes its keys at a `jwks_uri` rotates them without telling mayfly: an
//! assertion under a kid mayfly has not seen makes it refetch, once, and accept.

use std::sync::{Arc, Mutex};

use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::json;

use crate::fixture::{ASSERTION_TYPE, AUD, assert_error, form_urlencode, now};
use crate::support::{ServerProcess, write_config};

#[tokio::test]
async fn rotated_client_keys_are_fetched_on_unknown_kid() {
    let k1 = SigningKey::generate(KeyAlg::ES256, Some("k1")).unwrap();
    let k2 = SigningKey::generate(KeyAlg::ES256, Some("k2")).unwrap();
    let served = Arc::new(Mutex::new(json!({"keys": [k1.public_jwk()]}).to_string()));
    let s2 = served.clone();
    let app = axum::Router::new().route(
        "/keys.json",
        axum::routing::get(move || async move { s2.lock().unwrap().clone() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[clients]]\nid = \"uri\"\njwks_uri = \"{url}\"\naudiences = [\"{AUD}\"]\nscopes = [\"read\"]\n"
        ),
    );
    let server = tokio::task::spawn_blocking(move || {
        let s = ServerProcess::start(dir.path(), &config, &[]);
        (s, dir)
    })
    .await
    .unwrap();
    let (server, _dir) = server;
    let http = reqwest::Client::new();
    let token = |key: &SigningKey| {
        let n = now();
        let c = json!({"iss": "uri", "sub": "uri", "aud": server.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
        let a = key.sign_jwt(None, &c).unwrap();
        let body = form_urlencode(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
        ]);
        let http = http.clone();
        let url = format!("{}/oauth2/token", server.issuer);
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    assert_eq!(token(&k1).await.0, 200);
    // The client rotates to k2 and publishes it; mayfly learns it on first sight.
    *served.lock().unwrap() = json!({"keys": [k2.public_jwk()]}).to_string();
    assert_eq!(token(&k2).await.0, 200);
    // k1 is gone from the published set, and with it from mayfly.
    assert_error(&token(&k1).await, 401, "invalid_client");
}
