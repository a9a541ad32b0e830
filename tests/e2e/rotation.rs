//! Key rotation driven by a fake clock, in process, over real HTTP: tokens signed before a
//! rotation verify until they expire, and JWKS never drops a key that signed a live token.

use std::sync::Arc;

use mayfly_crypto::{Kek, KeyAlg, SigningKey};
use mayfly_server::{App, AppOptions};
use mayfly_store::{AuditSink, Store};
use mayfly_sts::{Clock, ManualClock};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, AUD, now, peek, serde_urlencoded};
use crate::support::TEST_MASTER_KEY;

struct InProc {
    _dir: tempfile::TempDir,
    issuer: String,
    clock: Arc<ManualClock>,
    app: App,
    key: SigningKey,
    http: reqwest::Client,
}

impl InProc {
    async fn start() -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        std::fs::write(
            dir.path().join("svc.jwks.json"),
            json!({"keys": [key.public_jwk()]}).to_string(),
        )
        .unwrap();
        let text = format!(
            "[tokens]\nkey_rotation = \"1h\"\nmax_ttl = \"1h\"\nclock_skew = \"30s\"\n[[clients]]\nid = \"svc\"\njwks_file = \"svc.jwks.json\"\naudiences = [\"{AUD}\"]\nscopes = [\"read\"]\n"
        );
        let config =
            mayfly_config::Config::from_toml_str(&text, "test.toml", dir.path(), &[]).unwrap();
        let store = Store::open_sqlite(&dir.path().join("mayfly.db"))
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(now()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let app = App::start(AppOptions {
            config,
            issuer: issuer.clone(),
            store,
            kek: Arc::new(Kek::from_base64(TEST_MASTER_KEY).unwrap()),
            clock: clock.clone(),
            audit_sink: AuditSink::Off,
        })
        .await
        .unwrap();
        tokio::spawn(mayfly_server::serve(
            listener,
            app.clone(),
            std::future::pending(),
        ));
        InProc {
            _dir: dir,
            issuer,
            clock,
            app,
            key,
            http: reqwest::Client::new(),
        }
    }

    fn assertion(&self) -> String {
        let n = self.clock.now();
        let c = json!({"iss": "svc", "sub": "svc", "aud": self.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
        self.key.sign_jwt(None, &c).unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded(form))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
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
        let v: Value = self
            .http
            .get(format!("{}/jwks.json", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kids = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        (kids, mayfly_crypto::VerifyingKeys::from_jwks(&v).unwrap())
    }

    async fn at(&self, t: i64) {
        self.clock.set(t);
        self.app.tick().await.unwrap();
    }
}

fn kid_of(token: &str) -> String {
    let h = token.split('.').next().unwrap();
    let h: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).unwrap(),
    )
    .unwrap();
    h["kid"].as_str().unwrap().to_string()
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
