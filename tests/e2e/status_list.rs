//! Token Status Lists end to end: the real server publishes them, an implementation nobody here
//! wrote (npm `@sd-jwt/jwt-status-list`, with `jose` checking the signature) decodes them, and
//! the real proxy in `revocation = "status_list"` mode enforces them with no introspection.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mayfly_crypto::{Kek, KeyAlg, SigningKey};
use mayfly_store::{DebtEntry, Store};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, form_urlencode, now, peek};
use crate::interop_node::run_with_deadline;
use crate::support::{ServerProcess, Spawned, TEST_MASTER_KEY, write_config};

const AUD: &str = "https://legacy.example.test";
const KEY: &str = "sk_live_e2eStatusListKey_51c0";
/// The lists' `ttl` in these tests (the server rebuilds a list at most once a second on top).
const TTL_SECS: u64 = 2;

struct Issuer {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    server: ServerProcess,
    wl: SigningKey,
    http: reqwest::Client,
}

impl Issuer {
    /// A server with one client `wl` and `[status_list] ttl`; `extra` is appended to the config.
    fn start(extra: &str) -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let wl = SigningKey::generate(KeyAlg::ES256, Some("wl")).unwrap();
        std::fs::write(
            dir.path().join("wl.jwks.json"),
            json!({"keys": [wl.public_jwk()]}).to_string(),
        )
        .unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "[status_list]\nttl = \"{TTL_SECS}s\"\n[tokens]\nmax_ttl = \"1h\"\n\
                 [[clients]]\nid = \"wl\"\njwks_file = \"wl.jwks.json\"\naudiences = [\"{AUD}\"]\n\
                 scopes = [\"read\"]\n{extra}"
            ),
        );
        let server = ServerProcess::start(dir.path(), &config, &[]);
        Issuer {
            dir,
            config,
            server,
            wl,
            http: reqwest::Client::new(),
        }
    }

    async fn token(&self) -> String {
        mayfly_client::get_token(
            &self.http,
            &self.server.issuer,
            "wl",
            &self.wl,
            &mayfly_client::TokenRequest {
                audience: Some(AUD.into()),
                scope: Some("read".into()),
                expires_in: None,
            },
            now(),
        )
        .await
        .unwrap()
        .access_token
    }

    fn assertion(&self) -> String {
        let n = now();
        let c = json!({"iss": "wl", "sub": "wl", "aud": self.server.issuer,
                       "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
        self.wl.sign_jwt(None, &c).unwrap()
    }

    /// RFC 7009 revocation by the token's own client.
    async fn revoke(&self, token: &str) {
        let r = self.post("/oauth2/revoke", &[("token", token)]).await;
        assert_eq!(r.0, 200, "{}", r.1);
    }

    /// RFC 7662 introspection by the token's own client: `active`.
    async fn introspect(&self, token: &str) -> bool {
        let r = self.post("/oauth2/introspect", &[("token", token)]).await;
        assert_eq!(r.0, 200, "{}", r.1);
        r.1["active"].as_bool().unwrap()
    }

    async fn post(&self, path: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let a = self.assertion();
        let mut form = vec![
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
        ];
        form.extend_from_slice(extra);
        let r = self
            .http
            .post(format!("{}{path}", self.server.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencode(&form))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The store the server writes (SQLite in its data dir).
    async fn store(&self) -> Store {
        Store::open_sqlite(&self.dir.path().join("data").join("mayfly.db"))
            .await
            .unwrap()
    }

    /// How many audit events of `kind` the log holds.
    async fn events(&self, kind: &str) -> usize {
        let store = self.store().await;
        store
            .audit_tail(100_000)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str::<Value>(&e.body).unwrap())
            .filter(|e| e["kind"] == kind)
            .count()
    }
}

/// The token's `status.status_list` reference, which every token we issue carries.
#[track_caller]
fn status_ref(token: &str, issuer: &str) -> (u64, String) {
    let c = peek(token);
    let r = &c["status"]["status_list"];
    let uri = r["uri"]
        .as_str()
        .expect("status.status_list.uri")
        .to_string();
    assert!(uri.starts_with(&format!("{issuer}/statuslists/")), "{uri}");
    (r["idx"].as_u64().expect("status.status_list.idx"), uri)
}

fn node_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_decoder_sees_a_revoked_bit_set_within_ttl_and_an_active_one_clear() {
    let node = node_dir();
    assert!(
        node.join("node_modules/@sd-jwt/jwt-status-list").is_dir()
            && node.join("node_modules/jose").is_dir(),
        "interop/node/node_modules is missing or incomplete ({}): run `npm ci --prefix interop/node` first",
        node.display()
    );
    let iss = Issuer::start("");
    let (revoked, active) = (iss.token().await, iss.token().await);
    let (r_idx, r_uri) = status_ref(&revoked, &iss.server.issuer);
    let (a_idx, _) = status_ref(&active, &iss.server.issuer);
    assert_ne!(r_idx, a_idx);
    // Our own reader agrees before anything is revoked (both clear), through the same URI.
    let body = reqwest::get(&r_uri).await.unwrap().text().await.unwrap();
    let parts: Vec<&str> = body.split('.').collect();
    assert_eq!(parts.len(), 3);
    let lst = peek(&body)["status_list"]["lst"]
        .as_str()
        .unwrap()
        .to_string();
    let bits = mayfly_client::status::StatusBits::decode_lst(&lst, 1).unwrap();
    assert_eq!(bits.get(usize::try_from(r_idx).unwrap()), Some(false));

    iss.revoke(&revoked).await;
    assert!(!iss.introspect(&revoked).await);
    let within_ms = TTL_SECS * 1000;
    let mut cmd = Command::new(std::env::var_os("MAYFLY_NODE").unwrap_or_else(|| "node".into()));
    cmd.arg("status-list-check.mjs")
        .current_dir(&node)
        .env("MAYFLY_ISSUER", &iss.server.issuer)
        .env("MAYFLY_REVOKED_TOKEN", &revoked)
        .env("MAYFLY_ACTIVE_TOKEN", &active)
        .env("MAYFLY_WITHIN_MS", within_ms.to_string())
        .env_remove("NODE_OPTIONS");
    let (status, stdout, stderr) = run_with_deadline(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "node status-list-check.mjs failed ({status:?}):\n{stdout}\n{stderr}\n--- server ---\n{}",
        iss.server.stderr.lock().unwrap()
    );
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    println!("{seen}");
    assert_eq!(seen["revoked"]["idx"], r_idx);
    assert_eq!(seen["revoked"]["status"], 1);
    assert_eq!(seen["active"]["idx"], a_idx);
    assert_eq!(seen["active"]["status"], 0);
    assert_eq!(seen["ttl"], TTL_SECS);
    assert!(seen["seen_after_ms"].as_u64().unwrap() < within_ms);
}

// ---------------------------------------------------------------------------------------------
// The proxy in status-list mode.

/// An upstream on loopback that accepts only KEY and counts what reaches it.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let ok = req.headers().get("x-api-key").map(|v| v.as_bytes()) == Some(KEY.as_bytes());
            if ok {
                (axum::http::StatusCode::OK, "{}")
            } else {
                (axum::http::StatusCode::UNAUTHORIZED, "{}")
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, hits)
}

async fn call(http: &reqwest::Client, proxy: &str, token: &str) -> (u16, Value) {
    let r = http
        .get(format!("{proxy}/legacy/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_in_status_list_mode_refuses_a_revoked_token_within_ttl_without_introspecting() {
    let (up_url, hits) = upstream().await;
    // No proxy client: status-list mode needs none.
    let iss = Issuer::start(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nrevocation = \"status_list\"\n\
         [[proxy.routes]]\nname = \"legacy\"\npath_prefix = \"/legacy/\"\nupstream = \"{up_url}\"\n\
         audience = \"{AUD}\"\nscopes = [\"read\"]\ninject = {{ header = \"X-Api-Key\", value = \"{{key}}\" }}\n"
    ));
    let store = iss.store().await;
    let t = now();
    assert!(
        store
            .add_debt(
                &DebtEntry {
                    name: "legacy".into(),
                    owner: "payments-team".into(),
                    created_at: t,
                    expires_at: t + 90 * 86_400,
                    routes: vec!["legacy".into()],
                    fingerprint: mayfly_crypto::hex(&mayfly_crypto::sha256(KEY.as_bytes())),
                    wrapped: true,
                    key_version: 1,
                    updated_at: t,
                    extended_reason: None,
                    found_at: None,
                    last_used_at: None,
                },
                Some(KEY.as_bytes()),
                &Kek::from_base64(TEST_MASTER_KEY).unwrap(),
            )
            .await
            .unwrap()
    );
    drop(store);
    let proxy = Spawned::until_listening_on(
        None,
        "proxy",
        "proxy listening on ",
        iss.dir.path(),
        &iss.config,
        &[("MAYFLY_PROXY_ISSUER", iss.server.issuer.as_str())],
    );
    let _kill = KillOnDrop(proxy.child);
    let base = proxy.url.clone();
    let http = reqwest::Client::new();
    let (a, b) = (iss.token().await, iss.token().await);
    for _ in 0..20 {
        assert_eq!(call(&http, &base, &a).await.0, 200);
        assert_eq!(call(&http, &base, &b).await.0, 200);
    }
    // A token without a status claim cannot be had from this server; one signed by another key
    // is refused as any forged token is.
    let forged = SigningKey::generate(KeyAlg::EdDSA, Some("x"))
        .unwrap()
        .sign_jwt(Some("at+jwt"), &peek(&a))
        .unwrap();
    let r = call(&http, &base, &forged).await;
    assert_eq!((r.0, r.1["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(hits.load(Ordering::SeqCst), 40);

    // Revoked mid-run: refused within the list's ttl (plus the server's one-second rebuild).
    iss.revoke(&a).await;
    let revoked_at = Instant::now();
    let deadline = revoked_at + Duration::from_secs(TTL_SECS + 1) + Duration::from_millis(500);
    let refused = loop {
        let r = call(&http, &base, &a).await;
        if r.0 != 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked token still passes the proxy {:?} after revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = revoked_at.elapsed();
    assert_eq!(refused.0, 401, "{}", refused.1);
    assert_eq!(refused.1["error"], "invalid_token");
    assert!(
        refused.1["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{}",
        refused.1
    );
    println!("revoked token refused by the proxy {took:?} after revocation");
    assert_eq!(call(&http, &base, &b).await.0, 200);

    // Not one introspection reached the server; the audit log counts them (checked live below).
    assert_eq!(iss.events("introspect").await, 0);
    assert!(iss.introspect(&b).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while iss.events("introspect").await != 1 {
        assert!(
            Instant::now() < deadline,
            "the introspection was not audited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The proxy fetched lists, counted by result.
    let m = http
        .get(format!("{base}/.mayfly/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok_fetches: f64 = m
        .lines()
        .find(|l| l.starts_with("mayfly_status_list_fetches_total{result=\"ok\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no status list fetch metric:\n{m}"));
    assert!(ok_fetches >= 1.0);
    assert!(!m.contains("mayfly_proxy_introspections_total"), "{m}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
