//! `mayfly proxy` end to end: the real server issues tokens, the real proxy (a child process)
//! checks them and injects the static key held sealed in the shared SQLite store, and an
//! upstream on loopback accepts only that key and counts every request it receives.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use futures_util::StreamExt;
use mayfly_crypto::{Kek, KeyAlg, SigningKey};
use mayfly_store::{DebtEntry, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{ASSERTION_TYPE, form_urlencode, now};
use crate::support::{ServerProcess, Spawned, TEST_MASTER_KEY, write_config};

const KEY: &str = "sk_live_e2eProxyKey_7f3a9c51Q";
const AUD: &str = "https://legacy.example.test";
const GIB: u64 = 1 << 30;

/// Every form of the key a careless component could print.
fn key_forms() -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    vec![KEY.to_string(), b64(&format!("{KEY}:")), b64(KEY)]
}

#[track_caller]
fn assert_no_key(what: &str, text: &str) {
    for f in key_forms() {
        assert!(
            !text.contains(&f),
            "the key ({f}) appears in {what}:\n{text}"
        );
    }
}

/// The store the server of a [`Setup`] in `dir` created, and its `proxy_call` events' bodies.
async fn proxy_calls(dir: &std::path::Path) -> (Store, Vec<Value>) {
    let store = Store::open_sqlite(&dir.join("data").join("mayfly.db"))
        .await
        .unwrap();
    let calls = store
        .audit_tail(1000)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.body).unwrap())
        .filter(|e| e["kind"] == "proxy_call")
        .collect();
    (store, calls)
}

// ---------------------------------------------------------------------------------------------
// The upstream: accepts only KEY (X-Api-Key, api_key query parameter or basic user), counts.

#[derive(Clone, Default)]
struct Up {
    hits: Arc<AtomicUsize>,
    uploaded: Arc<AtomicU64>,
}

fn key_ok(req: &Request) -> bool {
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"))
    );
    // KEY needs no percent-encoding.
    let query_key = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|p| p == format!("api_key={KEY}"));
    h("x-api-key") == Some(KEY) || h("authorization") == Some(basic.as_str()) || query_key
}

fn echo(req: &Request) -> Value {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    json!({"uri": req.uri().to_string(), "headers": headers})
}

async fn upstream_handler(State(up): State<Up>, req: Request) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if !key_ok(&req) {
        return Response::builder()
            .status(401)
            .body(Body::from(r#"{"error":"wrong key"}"#))
            .unwrap();
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/api/echo" => Response::builder()
            .header("content-type", "application/json")
            .header(
                "x-echo-key",
                req.headers()
                    .get("x-api-key")
                    .cloned()
                    .unwrap_or(axum::http::HeaderValue::from_static("-")),
            )
            .body(Body::from(echo(&req).to_string()))
            .unwrap(),
        "/api/fail" => Response::builder()
            .status(500)
            .header("x-debug", format!("upstream rejected key {KEY}"))
            .body(Body::from(format!(
                "internal error; request was {}",
                echo(&req)
            )))
            .unwrap(),
        // An upstream that ignores `Accept-Encoding: identity` and gzips its echo of the key.
        "/api/gzip-echo" => {
            use std::io::Write;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(echo(&req).to_string().as_bytes()).unwrap();
            Response::builder()
                .header("content-encoding", "gzip")
                .body(Body::from(z.finish().unwrap()))
                .unwrap()
        }
        "/api/redirect" => Response::builder()
            .status(302)
            .header(
                "location",
                format!("https://elsewhere.example.test/cb?api_key={KEY}"),
            )
            .header(
                "refresh",
                format!("0; url=https://elsewhere.example.test/?k={KEY}"),
            )
            .body(Body::from(format!(
                "moved to https://elsewhere.example.test/cb?api_key={KEY}"
            )))
            .unwrap(),
        "/api/upload" => {
            let mut s = req.into_body().into_data_stream();
            let mut n = 0u64;
            while let Some(c) = s.next().await {
                n += c.unwrap().len() as u64;
            }
            up.uploaded.store(n, Ordering::SeqCst);
            Response::new(Body::from(json!({"bytes": n}).to_string()))
        }
        "/api/download" => {
            let total: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64) as usize;
                    Some((Ok::<_, std::io::Error>(chunk.slice(..n)), left - n as u64))
                }
            });
            Response::new(Body::from_stream(stream))
        }
        _ => Response::builder().status(404).body(Body::empty()).unwrap(),
    }
}

async fn start_upstream() -> (String, Up) {
    let up = Up::default();
    let app = axum::Router::new()
        .fallback(upstream_handler)
        .with_state(up.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, up)
}

// ---------------------------------------------------------------------------------------------
// The proxy process.

struct ProxyProcess {
    base: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl ProxyProcess {
    fn start(dir: &std::path::Path, config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(None, dir, config, env)
    }

    fn start_on(
        cpus: Option<&str>,
        dir: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let s = Spawned::until_listening_on(cpus, "proxy", "proxy listening on ", dir, config, env);
        ProxyProcess {
            base: s.url,
            child: s.child,
            stdout: s.stdout,
            stderr: s.stderr,
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn vm_hwm_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGTERM, wait for a clean exit; returns everything it printed.
    fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the proxy did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the drain threads take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        format!(
            "{}\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Server, clients, key, proxy.

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: ServerProcess,
    proxy: ProxyProcess,
    up: Up,
    wl: SigningKey,
    http: reqwest::Client,
    /// The PostgreSQL database server and proxy share, when not the SQLite file in `dir`.
    db: Option<mayfly_testkit::TestDb>,
}

fn jwks(k: &SigningKey) -> String {
    json!({"keys": [k.public_jwk()]}).to_string()
}

impl Setup {
    async fn start(proxy_env: &[(&str, &str)]) -> Setup {
        Self::start_on(None, proxy_env).await
    }

    /// Server and proxy each restricted to the CPUs in `cpus` when given.
    async fn start_on(cpus: Option<&str>, proxy_env: &[(&str, &str)]) -> Setup {
        Self::start_with(cpus, proxy_env, None).await
    }

    /// Server and proxy on one PostgreSQL database.
    async fn start_pg(proxy_env: &[(&str, &str)]) -> Setup {
        let db = mayfly_testkit::TestDb::create("mayfly_proxy").await;
        Self::start_with(None, proxy_env, Some(db)).await
    }

    async fn start_with(
        cpus: Option<&str>,
        proxy_env: &[(&str, &str)],
        db: Option<mayfly_testkit::TestDb>,
    ) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (up_url, up) = start_upstream().await;
        let wl = SigningKey::generate(KeyAlg::ES256, Some("wl")).unwrap();
        let pk = SigningKey::generate(KeyAlg::EdDSA, Some("proxy")).unwrap();
        std::fs::write(dir.path().join("wl.jwks.json"), jwks(&wl)).unwrap();
        std::fs::write(dir.path().join("proxy.jwks.json"), jwks(&pk)).unwrap();
        let private = dir.path().join("proxy.private.jwk.json");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&private)
                .unwrap();
            f.write_all(pk.to_private_jwk().unwrap().as_bytes())
                .unwrap();
        }
        let config = write_config(
            dir.path(),
            &format!(
                r#"[tokens]
max_ttl = "1h"
[[clients]]
id = "wl"
jwks_file = "wl.jwks.json"
audiences = ["{AUD}", "https://other.example.test"]
scopes = ["read", "write"]
[[clients]]
id = "proxy"
jwks_file = "proxy.jwks.json"
audiences = ["{AUD}"]
[proxy]
listen = "127.0.0.1:0"
client_id = "proxy"
key_file = "{private}"
reload_interval = "200ms"
[[proxy.routes]]
name = "legacy"
path_prefix = "/legacy/"
upstream = "{up_url}/api"
audience = "{AUD}"
scopes = ["read"]
inject = {{ header = "X-Api-Key", value = "{{key}}" }}
drop_headers = ["cookie"]
[[proxy.routes]]
name = "legacy-query"
path_prefix = "/q/"
upstream = "{up_url}/api/"
audience = "{AUD}"
key = "legacy"
inject = {{ query = "api_key" }}
[[proxy.routes]]
name = "legacy-basic"
path_prefix = "/b/"
upstream = "{up_url}/api/"
audience = "{AUD}"
key = "legacy"
inject = {{ basic = "{{key}}:" }}
"#,
                private = private.display()
            ),
        );
        let url = db.as_ref().map(|d| d.url());
        let db_env: Vec<(&str, &str)> = url
            .as_deref()
            .map(|u| ("MAYFLY_DATABASE_URL", u))
            .into_iter()
            .collect();
        let server = ServerProcess::start_on(cpus, dir.path(), &config, &db_env);
        // The key, sealed under the master key in the store the server created.
        let store = match &url {
            Some(u) => Store::open(u).await.unwrap(),
            None => Store::open_sqlite(&dir.path().join("data").join("mayfly.db"))
                .await
                .unwrap(),
        };
        let kek = Kek::from_base64(TEST_MASTER_KEY).unwrap();
        let t = now();
        let added = store
            .add_debt(
                &DebtEntry {
                    name: "legacy".into(),
                    owner: "payments-team".into(),
                    created_at: t,
                    expires_at: t + 90 * 86_400,
                    routes: vec![
                        "legacy".into(),
                        "legacy-query".into(),
                        "legacy-basic".into(),
                    ],
                    fingerprint: mayfly_crypto::hex(&mayfly_crypto::sha256(KEY.as_bytes())),
                    wrapped: true,
                    key_version: 1,
                    updated_at: t,
                    extended_reason: None,
                    found_at: None,
                    last_used_at: None,
                },
                Some(KEY.as_bytes()),
                &kek,
            )
            .await
            .unwrap();
        assert!(added);
        drop(store);
        let mut env = vec![("MAYFLY_PROXY_ISSUER", server.issuer.as_str())];
        env.extend_from_slice(&db_env);
        env.extend_from_slice(proxy_env);
        let proxy = ProxyProcess::start_on(cpus, dir.path(), &config, &env);
        Setup {
            dir,
            config,
            server,
            proxy,
            up,
            wl,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            db,
        }
    }

    async fn token(&self, audience: &str, scope: &str, ttl: Option<u64>) -> String {
        mayfly_client::get_token(
            &self.http,
            &self.server.issuer,
            "wl",
            &self.wl,
            &mayfly_client::TokenRequest {
                audience: Some(audience.into()),
                scope: Some(scope.into()),
                expires_in: ttl,
            },
            now(),
        )
        .await
        .unwrap()
        .access_token
    }

    async fn revoke(&self, token: &str) {
        let n = now();
        let c = json!({"iss": "wl", "sub": "wl", "aud": self.server.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
        let a = self.wl.sign_jwt(None, &c).unwrap();
        let r = self
            .http
            .post(format!("{}/oauth2/revoke", self.server.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencode(&[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", token),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Introspect `token` as its own client `client` (signing with the workload's key, which
    /// every client of this setup but the proxy shares): (status, body).
    async fn introspect_as_owner(&self, client: &str, token: &str) -> (u16, Value) {
        let n = now();
        let c = json!({"iss": client, "sub": client, "aud": self.server.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
        let a = self.wl.sign_jwt(None, &c).unwrap();
        let r = self
            .http
            .post(format!("{}/oauth2/introspect", self.server.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencode(&[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", token),
            ]))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn hits(&self) -> usize {
        self.up.hits.load(Ordering::SeqCst)
    }

    /// GET through the proxy; returns (status, headers, body text).
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut b = self
            .http
            .get(format!("{}{path}", self.proxy.base))
            .header("cookie", "session=abc");
        if let Some(t) = token {
            b = b.bearer_auth(t);
        }
        let r = b.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    /// A refusal: exact status and error code, and the upstream saw nothing.
    #[track_caller]
    fn refused(
        &self,
        got: &(u16, reqwest::header::HeaderMap, String),
        status: u16,
        code: &str,
        hits: usize,
    ) {
        let v: Value = serde_json::from_str(&got.2).unwrap_or(Value::Null);
        assert_eq!(v["error"], code, "{}", got.2);
        assert_eq!(got.0, status, "{}", got.2);
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert_eq!(self.hits(), hits, "the upstream saw a refused call");
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_tokens_reach_the_upstream() {
    let s = Setup::start(&[]).await;
    // Short-lived, checked last: it must be past exp + the 30 s skew.
    let short = s.token(AUD, "read", Some(1)).await;
    let short_exp = crate::fixture::peek(&short)["exp"].as_i64().unwrap();

    let ok = s.token(AUD, "read", None).await;
    let r = s.get("/legacy/echo?x=1", Some(&ok)).await;
    assert_eq!(r.0, 200, "{}", r.2);
    let v: Value = serde_json::from_str(&r.2).unwrap();
    assert_eq!(v["uri"], "/api/echo?x=1");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert!(v["headers"].get("cookie").is_none(), "{v}");
    assert_eq!(s.hits(), 1);
    // The echoed key is gone from the body and the echoing header.
    assert!(r.2.contains("[REDACTED]"));
    assert!(r.1.get("x-echo-key").is_none());
    // Query parameter and basic injection.
    assert_eq!(s.get("/q/echo", Some(&ok)).await.0, 200);
    assert_eq!(s.get("/b/echo", Some(&ok)).await.0, 200);
    let hits = 3;

    // A caller cannot smuggle its own key in: the route's header and parameter are replaced.
    let r = s
        .http
        .get(format!("{}/q/echo?api_key=mine", s.proxy.base))
        .header("x-api-key", "mine")
        .bearer_auth(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hits = hits + 1;

    let r = s.get("/legacy/echo", None).await;
    s.refused(&r, 401, "invalid_token", hits);
    assert_eq!(r.1["www-authenticate"], "Bearer");
    let other = s.token("https://other.example.test", "read", None).await;
    s.refused(
        &s.get("/legacy/echo", Some(&other)).await,
        401,
        "invalid_token",
        hits,
    );
    let write_only = s.token(AUD, "write", None).await;
    let r = s.get("/legacy/echo", Some(&write_only)).await;
    s.refused(&r, 403, "insufficient_scope", hits);
    assert_eq!(
        r.1["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    // Forged: the real token's claims signed by another key under the server's kid.
    let claims = crate::fixture::peek(&ok);
    let header: Value = {
        let h = ok.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    let forger = SigningKey::generate(KeyAlg::ES256, header["kid"].as_str()).unwrap();
    let forged = forger.sign_jwt(Some("at+jwt"), &claims).unwrap();
    s.refused(
        &s.get("/legacy/echo", Some(&forged)).await,
        401,
        "invalid_token",
        hits,
    );
    // Revoked (the proxy had not seen this token, so nothing is cached).
    let revoked = s.token(AUD, "read", None).await;
    s.revoke(&revoked).await;
    s.refused(
        &s.get("/legacy/echo", Some(&revoked)).await,
        401,
        "invalid_token",
        hits,
    );
    // Unknown route.
    s.refused(&s.get("/nowhere", Some(&ok)).await, 404, "not_found", hits);

    // Expired: wait (by the wall clock, the server's own) until exp + skew has passed.
    let wait = (short_exp + 31 - now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let r = s.get("/legacy/echo", Some(&short)).await;
    s.refused(&r, 401, "invalid_token", hits);
    assert!(r.2.contains("expired"), "{}", r.2);

    // Every call is in the audit log (the store's), refusals too, and never a token or key.
    let mut proxy = s.proxy;
    let out = proxy.stop();
    assert_no_key("the proxy's output", &out);
    let (store, calls) = proxy_calls(s.dir.path()).await;
    assert_eq!(calls.len(), 10, "{calls:?}");
    let text = format!("{calls:?}");
    assert_no_key("the audit log", &text);
    for t in [&ok, &short, &forged, &revoked] {
        assert!(!text.contains(t.as_str()));
    }
    let forwarded = calls.iter().filter(|e| e["reason"] == "forwarded").count();
    assert_eq!(forwarded, 4);
    assert!(calls.iter().any(|e| e["reason"] == "insufficient_scope"
        && e["status"] == 403
        && e["route"] == "legacy"
        && e["identity"] == crate::fixture::peek(&ok)["sub"]));
    assert!(calls.iter().all(|e| e["latency_us"].is_u64()));
    let usage = store.debt_usage("legacy").await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].calls, 4);
    let _ = &s.config;
}

/// A sidecar given one core: server and proxy say they noticed (single-threaded scheduler) and
/// work as they do on several: a token, a forwarded call, an exact refusal that never reaches
/// the upstream, a graceful stop on SIGTERM, and both calls in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_server_and_proxy_run_single_threaded() {
    let s = Setup::start_on(Some("0"), &[]).await;
    for (what, err) in [("server", &s.server.stderr), ("proxy", &s.proxy.stderr)] {
        let err = err.lock().unwrap().clone();
        assert!(
            err.contains("1 CPU: single-threaded scheduler"),
            "the {what} did not report its scheduler: {err}"
        );
    }
    let ok = s.token(AUD, "read", None).await;
    let r = s.get("/legacy/echo", Some(&ok)).await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(s.hits(), 1);
    let r = s.get("/legacy/echo", None).await;
    s.refused(&r, 401, "invalid_token", 1);

    let mut proxy = s.proxy;
    let out = proxy.stop();
    assert_no_key("the proxy's output", &out);
    let reasons: Vec<String> = proxy_calls(s.dir.path())
        .await
        .1
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "forwarded"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_appears_in_no_log_error_or_response() {
    let s = Setup::start(&[("MAYFLY_LOG", "trace")]).await;
    let ok = s.token(AUD, "read", None).await;
    let mut seen = String::new();
    for route in ["/legacy", "/q", "/b"] {
        for path in ["echo", "fail", "redirect", "gzip-echo", "nothing-here"] {
            let r = s.get(&format!("{route}/{path}?trace=1"), Some(&ok)).await;
            seen.push_str(&format!("{route}/{path} -> {} {:?}\n{}\n", r.0, r.1, r.2));
            match path {
                "echo" => assert_eq!(r.0, 200, "{}", r.2),
                "fail" => {
                    assert_eq!(r.0, 500);
                    assert!(r.2.contains("[REDACTED]"), "{}", r.2);
                    assert!(r.1.get("x-debug").is_none());
                }
                // Compressed, the key could not be scrubbed: refused, not passed on.
                "gzip-echo" => {
                    assert_eq!(r.0, 502, "{}", r.2);
                    assert!(r.2.contains("\"upstream_encoding\""), "{}", r.2);
                    assert!(r.1.get("content-encoding").is_none());
                }
                "redirect" => {
                    assert_eq!(r.0, 302);
                    assert!(
                        r.1.get("location").is_none(),
                        "a Location holding the key is dropped"
                    );
                    assert!(r.1.get("refresh").is_none());
                }
                _ => assert_eq!(r.0, 404),
            }
        }
    }
    assert_no_key("responses", &seen);
    assert!(seen.contains("[REDACTED]"));

    // Health and metrics: the days left on the key per route, calls per route and status.
    let health = s.get("/.mayfly/healthz", None).await;
    assert_eq!(health.0, 200);
    let metrics = s.get("/.mayfly/metrics", None).await;
    assert_eq!(metrics.0, 200);
    // 90 days from when the key was added: 89 whole days left, or 90 within that second.
    assert!(
        ["89", "90"].iter().any(|d| metrics.2.contains(&format!(
            "mayfly_proxy_key_days_left{{route=\"legacy\"}} {d}\n"
        ))),
        "{}",
        metrics.2
    );
    assert!(
        metrics
            .2
            .contains("mayfly_proxy_requests_total{route=\"legacy-basic\",status=\"500\"} 1")
    );
    assert!(metrics.2.contains("mayfly_proxy_key_redactions_total"));
    assert_no_key("metrics", &metrics.2);

    let mut proxy = s.proxy;
    let out = proxy.stop();
    assert!(
        out.contains("TRACE") || out.contains("DEBUG"),
        "trace logging was on"
    );
    assert_no_key("the proxy's trace-level output", &out);
    assert!(
        !out.contains(&ok),
        "the token appears in the proxy's output"
    );
}

/// An upstream that is down: 502 with a JSON error naming the route, not the URL or the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_without_details() {
    let mut s = Setup::start(&[]).await;
    // Point the routes at a closed port and restart the proxy.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = std::fs::read_to_string(&s.config).unwrap();
    let up_port = text
        .split("upstream = \"http://127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        &s.config,
        text.replace(
            &format!("127.0.0.1:{up_port}"),
            &format!("127.0.0.1:{closed}"),
        ),
    )
    .unwrap();
    s.proxy.stop();
    let issuer = s.server.issuer.clone();
    s.proxy = ProxyProcess::start(
        s.dir.path(),
        &s.config,
        &[("MAYFLY_PROXY_ISSUER", &issuer), ("MAYFLY_LOG", "trace")],
    );
    let ok = s.token(AUD, "read", None).await;
    for path in ["/q/echo", "/legacy/echo", "/b/echo"] {
        let r = s.get(path, Some(&ok)).await;
        let v: Value = serde_json::from_str(&r.2).unwrap();
        assert_eq!(r.0, 502, "{}", r.2);
        assert_eq!(v["error"], "upstream_error");
        assert!(!r.2.contains("127.0.0.1"), "{}", r.2);
        assert_no_key("the 502", &r.2);
    }
    let out = s.proxy.stop();
    assert!(out.contains("the upstream could not be reached"), "{out}");
    assert_no_key("the proxy's output", &out);
    assert!(!out.contains(&ok));
}

/// 1 GiB up and 1 GiB down through the proxy, with its peak resident memory under 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_each_way_streams_in_bounded_memory() {
    let s = Setup::start(&[]).await;
    let ok = s.token(AUD, "read", None).await;
    let bytes: u64 = std::env::var("PROXY_TEST_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(GIB);

    let idle_hwm = s.proxy.vm_hwm_kib();

    // Upload over a raw connection (Content-Length, written in 256 KiB pieces).
    let addr = s.proxy.base.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /legacy/upload HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ok}\r\ncontent-length: {bytes}\r\nconnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let piece = vec![b'u'; 256 * 1024];
    let mut left = bytes;
    let started = Instant::now();
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        c.write_all(&piece[..n]).await.unwrap();
        left -= n as u64;
    }
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    let up_secs = started.elapsed().as_secs_f64();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(s.up.uploaded.load(Ordering::SeqCst), bytes);

    // Download, read as it comes.
    let started = Instant::now();
    let mut r = s
        .http
        .get(format!("{}/legacy/download?n={bytes}", s.proxy.base))
        .bearer_auth(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    let down_secs = started.elapsed().as_secs_f64();
    assert_eq!(got, bytes);

    let hwm = s.proxy.vm_hwm_kib();
    eprintln!(
        "proxy streaming: {bytes} bytes up in {up_secs:.1} s, down in {down_secs:.1} s; proxy VmHWM {idle_hwm} kB before, {hwm} kB after"
    );
    assert!(hwm < 100 * 1000, "proxy peak RSS {hwm} kB");
}

/// Without its own client (revocation could not be checked) or without routes, the proxy does
/// not start, and says how to fix it.
#[test]
fn the_proxy_refuses_to_start_without_its_client_or_routes() {
    let d = tempfile::tempdir().unwrap();
    let route = r#"[[proxy.routes]]
name = "r"
path_prefix = "/r/"
upstream = "https://api.example.test"
audience = "https://api.example.test"
inject = { query = "api_key" }
"#;
    let cfg = write_config(
        d.path(),
        &format!("issuer = \"http://127.0.0.1:1\"\n{route}"),
    );
    let (code, _o, err) =
        crate::support::run_cli(d.path(), &["proxy", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("proxy.client_id"), "{err}");
    assert!(err.contains("mayfly client add"), "{err}");

    let cfg = write_config(
        d.path(),
        "issuer = \"http://127.0.0.1:1\"\n[proxy]\nclient_id = \"p\"\nkey_file = \"p.json\"\n",
    );
    let (code, _o, err) =
        crate::support::run_cli(d.path(), &["proxy", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no [[proxy.routes]]"), "{err}");

    // A plain http upstream off this host: the key would cross the network in the clear.
    let cfg = write_config(
        d.path(),
        &format!(
            "issuer = \"http://127.0.0.1:1\"\n[proxy]\nclient_id = \"p\"\nkey_file = \"p.json\"\n{}",
            route.replace(
                "https://api.example.test\"\naud",
                "http://api.example.test\"\naud"
            )
        ),
    );
    let (code, _o, err) =
        crate::support::run_cli(d.path(), &["proxy", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("proxy.routes[0].upstream"), "{err}");
    assert!(err.contains("not loopback"), "{err}");
}

/// A token narrowed by exchange, and one exchanged with an actor, both derived from a client
/// token the proxy has already let through: revoking the root makes the proxy refuse all three
/// once its revocation cache (1 s here) has run out. Polled, with a bound. Server and proxy
/// share a PostgreSQL database, as replicas would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_tokens_derived_from_a_revoked_one() {
    const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
    let s = Setup::start_pg(&[("MAYFLY_PROXY_REVOCATION_CACHE", "1s")]).await;
    let exchange = |form: Vec<(&'static str, String)>| {
        let s = &s;
        async move {
            let mut f: Vec<(&str, &str)> = vec![("grant_type", EXCHANGE)];
            f.extend(form.iter().map(|(k, v)| (*k, v.as_str())));
            let r = s
                .http
                .post(format!("{}/oauth2/token", s.server.issuer))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_urlencode(&f))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let root = s.token(AUD, "read", None).await;
    // A token of ours acts as an actor only when it is addressed to the token service: a
    // client registered at run time (in the shared database) for the issuer's own audience
    // gets one.
    let cli_config = s.dir.path().join("cli.toml");
    std::fs::write(
        &cli_config,
        format!(
            "database = \"{}\"\n{}",
            s.db.as_ref().unwrap().url(),
            std::fs::read_to_string(&s.config).unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = crate::support::run_cli(
        s.dir.path(),
        &[
            "client",
            "add",
            "--config",
            cli_config.to_str().unwrap(),
            "--id",
            "actor",
            "--jwks-file",
            "wl.jwks.json",
            "--audience",
            &s.server.issuer,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let actor = mayfly_client::get_token(
        &s.http,
        &s.server.issuer,
        "actor",
        &s.wl,
        &mayfly_client::TokenRequest {
            audience: Some(s.server.issuer.clone()),
            scope: None,
            expires_in: None,
        },
        now(),
    )
    .await
    .unwrap()
    .access_token;
    let narrowed = exchange(vec![
        ("subject_token", root.clone()),
        ("subject_token_type", AT.into()),
        ("scope", "read".into()),
    ])
    .await;
    let delegated = exchange(vec![
        ("subject_token", narrowed.clone()),
        ("subject_token_type", AT.into()),
        ("actor_token", actor.clone()),
        ("actor_token_type", AT.into()),
    ])
    .await;
    // Each goes through once, so the proxy caches it as active.
    for t in [&root, &narrowed, &delegated] {
        let r = s.get("/legacy/echo", Some(t)).await;
        assert_eq!(r.0, 200, "{}", r.2);
    }
    let hits = s.hits();
    s.revoke(&root).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for t in [&root, &narrowed, &delegated] {
        loop {
            let r = s.get("/legacy/echo", Some(t)).await;
            if r.0 == 401 {
                s.refused(&r, 401, "invalid_token", s.hits());
                assert!(r.2.contains("revoked"), "{}", r.2);
                break;
            }
            assert_eq!(r.0, 200, "{}", r.2);
            assert!(
                Instant::now() < deadline,
                "still let through long after the revocation cache time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Within one cache lifetime at most three calls per token could slip through.
    assert!(s.hits() <= hits + 3 * 15, "{}", s.hits());
    // The actor's own token is not derived from the root: still active.
    let (code, v) = s.introspect_as_owner("actor", &actor).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["active"], true, "{v}");
    let url = s.db.as_ref().unwrap().url();
    let mut proxy = s.proxy;
    proxy.stop();
    let store = Store::open(&url).await.unwrap();
    let refused = store
        .audit_tail(1000)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.body).unwrap())
        .any(|e| e["kind"] == "proxy_call" && e["status"] == 401 && e["reason"] == "invalid_token");
    assert!(refused, "no refused proxy_call event");
    drop(store);
}
