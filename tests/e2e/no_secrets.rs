//! Nothing secret in logs: run the server at trace level through issuance and failures, then
//! search everything it printed for tokens, assertions and keys.

use crate::fixture::*;
use crate::support::TEST_MASTER_KEY;

#[tokio::test]
async fn no_token_assertion_or_key_in_trace_logs() {
    let f = Fixture::start(&[("MAYFLY_LOG", "trace")]);
    let mut secrets: Vec<String> = vec![TEST_MASTER_KEY.to_string()];
    for k in [&f.key, &f.other_key] {
        let private: serde_json::Value =
            serde_json::from_str(&k.to_private_jwk().unwrap()).unwrap();
        secrets.push(private["d"].as_str().unwrap().to_string());
    }

    // Issuance.
    let a = f.assertion();
    let (s, b) = f
        .token_with(&a, &[("resource", AUD), ("scope", "read")])
        .await;
    assert_eq!(s, 200);
    let token = b["access_token"].as_str().unwrap().to_string();
    secrets.push(a.clone());
    secrets.push(token.clone());
    // Failures: replay, bad signature, unknown client, bad scope.
    assert_eq!(f.token_with(&a, &[("resource", AUD)]).await.0, 401);
    let bad = format!("{}x", f.assertion());
    secrets.push(bad.clone());
    assert_eq!(f.token_with(&bad, &[("resource", AUD)]).await.0, 401);
    let mut c = f.claims();
    c["iss"] = "ghost".into();
    c["sub"] = "ghost".into();
    let ghost = f.sign(&c);
    secrets.push(ghost.clone());
    assert_eq!(f.token_with(&ghost, &[]).await.0, 401);
    let a2 = f.assertion();
    secrets.push(a2.clone());
    assert_eq!(
        f.token_with(&a2, &[("resource", AUD), ("scope", "admin")])
            .await
            .0,
        400
    );
    // Introspection and revocation of the token.
    for path in ["/oauth2/introspect", "/oauth2/revoke"] {
        let a = f.assertion();
        secrets.push(a.clone());
        let (s, _, _) = f
            .post_form(
                path,
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", &token),
                ],
            )
            .await;
        assert_eq!(s, 200);
    }

    // Token exchange: a subject token from the trusted issuer (refused by the default-deny
    // policy), and one of our own tokens narrowed (issued).
    let n = now();
    let sa = f
        .other_key
        .sign_jwt(
            None,
            &serde_json::json!({"iss": "https://k8s.test", "aud": ["mayfly"], "sub": "system:serviceaccount:payments:api",
                "iat": n, "exp": n + 600, "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}}),
        )
        .unwrap();
    secrets.push(sa.clone());
    let (s, _, _) = f
        .post_form(
            "/oauth2/token",
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", &sa),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("audience", AUD),
            ],
        )
        .await;
    assert_eq!(s, 400);
    let a = f.assertion();
    let (s, b) = f
        .token_with(&a, &[("resource", AUD), ("scope", "read")])
        .await;
    assert_eq!(s, 200);
    let fresh = b["access_token"].as_str().unwrap().to_string();
    secrets.push(a);
    secrets.push(fresh.clone());
    let (s, _, b) = f
        .post_form(
            "/oauth2/token",
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", &fresh),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
            ],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    secrets.push(b["access_token"].as_str().unwrap().to_string());

    // Everything the server printed: logs on stderr, audit JSON lines on stdout.
    let logs = format!(
        "{}{}",
        f.server.stderr.lock().unwrap(),
        f.server.stdout.lock().unwrap()
    );
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "trace logging was on"
    );
    assert!(
        logs.contains("token issued"),
        "issuance was logged (at debug)"
    );
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret reached the logs");
        // Also no signature part alone (the part that makes a JWT usable).
        if let Some(sig) = s.split('.').nth(2).filter(|p| p.len() > 20) {
            assert!(!logs.contains(sig), "a JWT signature reached the logs");
        }
    }
}
