//! Key rotation driven by a fake clock, in process, over real HTTP: tokens signed before a
//! rotation verify until they expire, and JWKS never drops a key that signed a live token.

use std::sync::Arc;

use mayfly_crypto::SigningKey;
use mayfly_sts::{Clock, ManualClock};
use mayfly_testkit::{TestEnv, TestServer, keys};
use serde_json::Value;

use crate::fixture::{ASSERTION_TYPE, AUD, peek};

struct InProc {
    _env: TestEnv,
    server: TestServer,
    issuer: String,
    clock: Arc<ManualClock>,
    key: SigningKey,
}

impl InProc {
    async fn start() -> InProc {
        let key = keys::es256("k");
        let env = TestEnv::builder()
            .config("[tokens]\nkey_rotation = \"1h\"\nmax_ttl = \"1h\"\nclock_skew = \"30s\"")
            .client("svc", &key, &[AUD], &["read"])
            .build();
        let server = env.server().await;
        InProc {
            issuer: server.url().to_string(),
            clock: env.clock().clone(),
            _env: env,
            server,
            key,
        }
    }

    fn assertion(&self) -> String {
        keys::assertion(&self.key, "svc", &self.issuer, self.clock.now())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let (status, v) = self.server.post_form(path, form).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn token(&self, ttl: &str) -> String {
        let a = self.assertion();
        let v = self
            .post(
                "/oauth2/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("expires_in", ttl),
                ],
            )
            .await;
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn active(&self, token: &str) -> bool {
        let a = self.assertion();
        let v = self
            .post(
                "/oauth2/introspect",
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", token),
                ],
            )
            .await;
        v["active"] == true
    }

    async fn jwks(&self) -> (Vec<String>, mayfly_crypto::VerifyingKeys) {
        let (status, v) = self.server.get_json("/jwks.json").await;
        assert_eq!(status, 200);
        let kids = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        (kids, mayfly_crypto::VerifyingKeys::from_jwks(&v).unwrap())
    }

    async fn at(&self, t: i64) {
        self.server.at(t).await;
    }
}

fn kid_of(token: &str) -> String {
    mayfly_testkit::peek_header(token)["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn tokens_outlive_the_rotation_of_their_key() {
    let s = InProc::start().await;
    let t0 = s.clock.now();
    let (kids, _) = s.jwks().await;
    assert_eq!(kids.len(), 2, "current and next published from the start");

    s.at(t0 + 3590).await;
    let t1 = s.token("3600").await;
    let k1 = kid_of(&t1);
    assert_eq!(peek(&t1)["exp"].as_i64().unwrap(), t0 + 3590 + 3600);
    assert_eq!(k1, kids[0]);

    // The rotation: k2 signs, k1 stays published.
    s.at(t0 + 3601).await;
    let t2 = s.token("300").await;
    assert_ne!(kid_of(&t2), k1, "a new key signs after the rotation");
    assert_eq!(
        kid_of(&t2),
        kids[1],
        "the next key published since the start is the one that signs"
    );
    let (kids_now, keys) = s.jwks().await;
    assert!(kids_now.contains(&k1));
    assert_eq!(kids_now.len(), 3, "retired, current and a new next key");
    mayfly_client::verify_access_token(&keys, &t1, &s.issuer, Some(AUD)).unwrap();
    assert!(s.active(&t1).await);

    // Just before t1 expires: still verifiable and active.
    s.at(t0 + 3590 + 3599).await;
    let (kids_now, keys) = s.jwks().await;
    assert!(kids_now.contains(&k1));
    mayfly_client::verify_access_token(&keys, &t1, &s.issuer, Some(AUD)).unwrap();
    assert!(s.active(&t1).await);

    // Expired: inactive. Once skew has passed too, k1 leaves the JWKS.
    s.at(t0 + 3590 + 3600).await;
    assert!(!s.active(&t1).await);
    s.at(t0 + 3600 + 3600 + 30).await;
    let (kids_now, _) = s.jwks().await;
    assert!(
        !kids_now.contains(&k1),
        "k1 removed once every token it signed has expired"
    );
}

#[tokio::test]
async fn jwks_never_drops_a_key_that_signed_a_live_token() {
    let s = InProc::start().await;
    let t0 = s.clock.now();
    let mut live: Vec<(String, String, i64)> = Vec::new();
    let mut seen_kids = std::collections::HashSet::new();
    // Four rotation periods in 7-minute steps; a max-lifetime token at every step.
    let mut t = t0;
    while t < t0 + 4 * 3600 {
        s.at(t).await;
        let tok = s.token("3600").await;
        seen_kids.insert(kid_of(&tok));
        live.push((
            kid_of(&tok),
            tok.clone(),
            peek(&tok)["exp"].as_i64().unwrap(),
        ));
        live.retain(|(_, _, exp)| *exp > t);
        let (kids, keys) = s.jwks().await;
        for (kid, tok, _) in &live {
            assert!(
                kids.contains(kid),
                "key {kid} dropped at t0+{} while a token it signed is live",
                t - t0
            );
            mayfly_client::verify_access_token(&keys, tok, &s.issuer, Some(AUD)).unwrap();
        }
        assert!(kids.len() <= 3, "retired keys are removed: {kids:?}");
        t += 420;
    }
    assert!(seen_kids.len() >= 4, "rotated every hour: {seen_kids:?}");
}
