//! The proxy library in process, with a fake clock, a real SQLite store in a tempdir, a fake
//! issuer (discovery, JWKS, introspection) and a counting upstream, all on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mayfly_config::{Inject, ProxyConfig, RevocationMode, RouteConfig, RouteMatch};
use mayfly_crypto::{Kek, KeyAlg, SigningKey};
use mayfly_proto::{Clock, ManualClock};
use mayfly_proxy::{Proxy, ProxyCredentials, ProxyOptions};
use mayfly_store::{AuditLog, AuditSink, DebtEntry, Store};
use mayfly_testkit::{keys, peek};
use serde_json::{Value, json};

const KEY: &str = "sk_live_inprocess_TESTKEY_0001";
const AUD: &str = "https://up.test";
const DAY: i64 = 86_400;

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serve `h` over HTTP/1.1 on a loopback port; the request body is read whole first.
async fn serve(h: Handler) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let h = h.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(h(Request::from_parts(parts, body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn json_resp(status: u16, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// `ttl` of the fake issuer's status list; its `exp` is twice that after `iat`.
const LIST_TTL: i64 = 10;

struct Issuer {
    url: String,
    key: Arc<SigningKey>,
    revoked: Arc<Mutex<HashSet<String>>>,
    introspections: Arc<AtomicUsize>,
    /// Introspection (and the status list) answer 503 while set.
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Indexes set in `/statuslists/1` (4096 entries, signed at the clock's time).
    list_revoked: Arc<Mutex<HashSet<usize>>>,
    list_fetches: Arc<AtomicUsize>,
}

/// The fake issuer's status list `/statuslists/1` at `now`.
fn status_list(
    key: &SigningKey,
    iss: &str,
    set: &HashSet<usize>,
    now: i64,
) -> Response<Full<Bytes>> {
    let mut bits = mayfly_client::status::StatusBits::new(4096);
    for &i in set {
        bits.set(i);
    }
    let c = json!({"sub": format!("{iss}/statuslists/1"), "iat": now, "exp": now + 2 * LIST_TTL,
                   "ttl": LIST_TTL, "status_list": {"bits": 1, "lst": bits.encode_lst()}});
    let mut r = Response::new(Full::new(Bytes::from(
        key.sign_jwt(Some("statuslist+jwt"), &c).unwrap(),
    )));
    r.headers_mut().insert(
        "content-type",
        "application/statuslist+jwt".parse().unwrap(),
    );
    r
}

async fn issuer(clock: Arc<ManualClock>) -> Issuer {
    let key = Arc::new(keys::es256("k1"));
    let jwks = keys::jwks(&[&key]);
    let list_revoked: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let list_fetches = Arc::new(AtomicUsize::new(0));
    let (k, lr, lf) = (key.clone(), list_revoked.clone(), list_fetches.clone());
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let introspections = Arc::new(AtomicUsize::new(0));
    let url_cell: Arc<Mutex<String>> = Arc::default();
    let down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let (r, n, u, dn) = (
        revoked.clone(),
        introspections.clone(),
        url_cell.clone(),
        down.clone(),
    );
    let url = serve(Arc::new(move |req: Request<Bytes>| {
        let iss = u.lock().unwrap().clone();
        match req.uri().path() {
            "/.well-known/oauth-authorization-server" => json_resp(
                200,
                &json!({
                    "issuer": iss,
                    "token_endpoint": format!("{iss}/oauth2/token"),
                    "jwks_uri": format!("{iss}/jwks"),
                    "introspection_endpoint": format!("{iss}/oauth2/introspect"),
                    "revocation_endpoint": format!("{iss}/oauth2/revoke"),
                    "grant_types_supported": ["client_credentials"],
                    "response_types_supported": [],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
                    "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "introspection_endpoint_auth_signing_alg_values_supported": ["ES256"],
                    "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "revocation_endpoint_auth_signing_alg_values_supported": ["ES256"],
                    "scopes_supported": [],
                    "access_token_signing_alg_values_supported": ["ES256"],
                }),
            ),
            "/jwks" => json_resp(200, &jwks),
            "/statuslists/1" => {
                lf.fetch_add(1, Ordering::SeqCst);
                if dn.load(Ordering::SeqCst) {
                    return json_resp(503, &json!({"error": "temporarily_unavailable"}));
                }
                status_list(&k, &iss, &lr.lock().unwrap(), clock.now())
            }
            "/oauth2/introspect" => {
                n.fetch_add(1, Ordering::SeqCst);
                if dn.load(Ordering::SeqCst) {
                    return json_resp(503, &json!({"error": "temporarily_unavailable"}));
                }
                let form: Vec<(String, String)> = url::form_urlencoded::parse(req.body())
                    .into_owned()
                    .collect();
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                assert!(get("client_assertion").is_some());
                let token = get("token").unwrap();
                let jti = peek(&token)["jti"].as_str().unwrap().to_string();
                let active = !r.lock().unwrap().contains(&jti);
                json_resp(200, &json!({"active": active}))
            }
            _ => json_resp(404, &json!({})),
        }
    }))
    .await;
    *url_cell.lock().unwrap() = url.clone();
    Issuer {
        url,
        key,
        revoked,
        introspections,
        down,
        list_revoked,
        list_fetches,
    }
}

impl Issuer {
    fn token_with(&self, now: i64, f: impl FnOnce(&mut Value)) -> String {
        let mut c = json!({
            "iss": self.url, "sub": "spiffe://example.org/billing", "aud": AUD,
            "client_id": "billing", "scope": "read write", "iat": now, "exp": now + 300,
            "jti": keys::jti(),
        });
        f(&mut c);
        self.key.sign_jwt(Some("at+jwt"), &c).unwrap()
    }
    fn token(&self, now: i64) -> String {
        self.token_with(now, |_| {})
    }
}

struct Upstream {
    url: String,
    hits: Arc<AtomicUsize>,
}

/// Accepts only `X-Api-Key: KEY`; answers with what it saw.
async fn upstream() -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let url = serve(Arc::new(move |req: Request<Bytes>| {
        h.fetch_add(1, Ordering::SeqCst);
        if req.headers().get("x-api-key").map(|v| v.as_bytes()) != Some(KEY.as_bytes()) {
            return json_resp(401, &json!({"error": "bad key"}));
        }
        json_resp(
            200,
            &json!({
                "path": req.uri().path_and_query().map(|p| p.as_str()),
                "authorization": req.headers().get("authorization").is_some(),
                "cookie": req.headers().get("cookie").is_some(),
                "accept_encoding": req.headers().get("accept-encoding").and_then(|v| v.to_str().ok()),
                "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                "body_len": req.body().len(),
            }),
        )
    }))
    .await;
    Upstream { url, hits }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<ManualClock>,
    issuer: Issuer,
    up: Upstream,
    proxy: Proxy,
    base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

async fn harness(expires_in_days: i64) -> Harness {
    harness_with(expires_in_days, None, None).await
}

/// With `tls`: (the upstream's https base URL, the CA file to trust for it); with `policy`,
/// the route's Cedar policy.
async fn harness_with(
    expires_in_days: i64,
    tls: Option<(String, std::path::PathBuf)>,
    policy: Option<&str>,
) -> Harness {
    harness_full(
        expires_in_days,
        tls,
        policy,
        false,
        RevocationMode::Introspection,
    )
    .await
}

/// With `case_insensitive`, the route's upstream ignores case in paths.
async fn harness_full(
    expires_in_days: i64,
    tls: Option<(String, std::path::PathBuf)>,
    policy: Option<&str>,
    case_insensitive: bool,
    revocation: RevocationMode,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = policy.map(|p| {
        let f = dir.path().join("up.cedar");
        std::fs::write(&f, p).unwrap();
        f
    });
    let store = Store::open_sqlite(&dir.path().join("mayfly.db"))
        .await
        .unwrap();
    let kek = Arc::new(Kek::from_bytes(&[7u8; 32]).unwrap());
    let t0 = mayfly_proto::SystemClock.now();
    let clock = Arc::new(ManualClock::new(t0));
    let fp = mayfly_crypto::hex(&mayfly_crypto::sha256(KEY.as_bytes()));
    assert!(
        store
            .add_debt(
                &DebtEntry {
                    name: "up".into(),
                    owner: "billing-team".into(),
                    created_at: t0,
                    expires_at: t0 + expires_in_days * DAY,
                    routes: vec!["up".into()],
                    fingerprint: fp,
                    wrapped: true,
                    key_version: 1,
                    updated_at: t0,
                    extended_reason: None,
                    found_at: None,
                    last_used_at: None,
                },
                Some(KEY.as_bytes()),
                &kek,
            )
            .await
            .unwrap()
    );
    let issuer = issuer(clock.clone()).await;
    let mut up = upstream().await;
    let mut upstream_ca_file = None;
    if let Some((url, ca)) = tls {
        up.url = url;
        upstream_ca_file = Some(ca);
    }
    let config = ProxyConfig {
        reload_interval: std::time::Duration::from_millis(100),
        upstream_ca_file,
        revocation,
        routes: vec![RouteConfig {
            name: "up".into(),
            matcher: RouteMatch::PathPrefix("/up/".into()),
            upstream: url::Url::parse(&format!("{}/base/", up.url)).unwrap(),
            audience: AUD.into(),
            scopes: vec!["read".into()],
            key: "up".into(),
            inject: Inject::Header {
                name: "x-api-key".into(),
                template: "{key}".into(),
            },
            drop_headers: vec!["cookie".into()],
            policy_file,
            case_insensitive_upstream: case_insensitive,
        }],
        ..ProxyConfig::default()
    };
    let audit = AuditLog::start(
        store.clone(),
        kek.clone(),
        AuditSink::Off,
        0,
        Arc::new(mayfly_proto::SystemClock),
    );
    let proxy = Proxy::start(ProxyOptions {
        config,
        issuer: issuer.url.clone(),
        credentials: Some(ProxyCredentials {
            client_id: "proxy".into(),
            signer: keys::eddsa("p"),
        }),
        store: store.clone(),
        kek,
        clock: clock.clone(),
        audit,
    })
    .await
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(proxy.clone().serve(l, std::future::pending()));
    Harness {
        _dir: dir,
        store,
        clock,
        issuer,
        up,
        proxy,
        base,
        http: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Harness {
    async fn call(&self, path: &str, token: Option<&str>) -> (u16, hyper::HeaderMap, Value) {
        let mut b = Request::get(format!("{}{path}", self.base)).header("cookie", "session=1");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let r = self
            .http
            .request(b.body(Full::default()).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains(KEY));
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A refused call: status, exact error code, and the upstream saw nothing.
    #[track_caller]
    fn refused(&self, got: &(u16, hyper::HeaderMap, Value), status: u16, code: &str, hits: usize) {
        assert_eq!(got.2["error"], code, "{}", got.2);
        assert_eq!(got.0, status, "{}", got.2);
        assert!(
            got.2["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert_eq!(
            self.up.hits.load(Ordering::SeqCst),
            hits,
            "the upstream saw a refused call"
        );
    }
}

#[tokio::test]
async fn tokens_are_checked_before_anything_reaches_the_upstream() {
    let h = harness(90).await;
    let now = h.now();

    let ok = h.call("/up/v1/x?q=1", Some(&h.issuer.token(now))).await;
    assert_eq!(ok.0, 200, "{}", ok.2);
    assert_eq!(ok.2["path"], "/base/v1/x?q=1");
    assert_eq!(ok.2["authorization"], false);
    assert_eq!(ok.2["cookie"], false);
    assert_eq!(ok.2["accept_encoding"], "identity");
    assert_eq!(ok.2["host"], h.up.url.trim_start_matches("http://"));
    assert_eq!(h.up.hits.load(Ordering::SeqCst), 1);

    // Inside the 30 s skew: still accepted.
    let t = h.issuer.token_with(now, |c| c["exp"] = json!(now - 20));
    assert_eq!(h.call("/up/x", Some(&t)).await.0, 200);
    let hits = 2;

    let r = h.call("/up/x", None).await;
    h.refused(&r, 401, "invalid_token", hits);
    assert_eq!(r.1["www-authenticate"], "Bearer");
    let t = h.issuer.token_with(now, |c| c["exp"] = json!(now - 31));
    let r = h.call("/up/x", Some(&t)).await;
    h.refused(&r, 401, "invalid_token", hits);
    assert_eq!(r.1["www-authenticate"], "Bearer error=\"invalid_token\"");
    let t = h.issuer.token_with(now, |c| c["nbf"] = json!(now + 60));
    h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    let t = h
        .issuer
        .token_with(now, |c| c["aud"] = json!("https://other.test"));
    h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    let t = h
        .issuer
        .token_with(now, |c| c["aud"] = json!(["https://other.test", AUD]));
    assert_eq!(h.call("/up/x", Some(&t)).await.0, 200);
    let hits = hits + 1;
    let t = h
        .issuer
        .token_with(now, |c| c["iss"] = json!("https://evil.test"));
    h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    let t = h.issuer.token_with(now, |c| c["scope"] = json!("write"));
    let r = h.call("/up/x", Some(&t)).await;
    h.refused(&r, 403, "insufficient_scope", hits);
    assert_eq!(
        r.1["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    // Not an access token.
    let c = peek(&h.issuer.token(now));
    let t = h.issuer.key.sign_jwt(Some("JWT"), &c).unwrap();
    h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    // Forged: same kid, another key; and an unknown kid.
    for kid in ["k1", "k2"] {
        let forger = SigningKey::generate(KeyAlg::ES256, Some(kid)).unwrap();
        let t = forger.sign_jwt(Some("at+jwt"), &c).unwrap();
        h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    }
    h.refused(
        &h.call("/up/x", Some("not.a.jwt")).await,
        401,
        "invalid_token",
        hits,
    );
    // Revoked.
    let t = h.issuer.token(now);
    h.issuer
        .revoked
        .lock()
        .unwrap()
        .insert(peek(&t)["jti"].as_str().unwrap().to_string());
    h.refused(&h.call("/up/x", Some(&t)).await, 401, "invalid_token", hits);
    // Unknown route; a path climbing out of the route is, normalised, another path (`/admin`).
    h.refused(
        &h.call("/nope", Some(&h.issuer.token(now))).await,
        404,
        "not_found",
        hits,
    );
    h.refused(
        &h.call("/up/%2e%2e/admin", Some(&h.issuer.token(now))).await,
        404,
        "not_found",
        hits,
    );

    // The revocation answer is cached per token: one introspection for many calls.
    let t = h.issuer.token(now);
    let before = h.issuer.introspections.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(h.call("/up/x", Some(&t)).await.0, 200);
    }
    assert_eq!(h.issuer.introspections.load(Ordering::SeqCst), before + 1);
    let hits = hits + 5;

    // The issuer cannot answer introspection: fail closed (503) for tokens not seen lately;
    // a token whose "active" answer is cached (5 s) still passes.
    h.issuer.down.store(true, Ordering::SeqCst);
    let r = h.call("/up/x", Some(&h.issuer.token(now))).await;
    h.refused(&r, 503, "temporarily_unavailable", hits);
    assert_eq!(h.call("/up/x", Some(&t)).await.0, 200);
    let hits = hits + 1;
    h.issuer.down.store(false, Ordering::SeqCst);

    // HTTP/2 with prior knowledge towards the proxy.
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let r = h2
        .request(
            Request::post(format!("{}/up/h2", h.base))
                .header("authorization", format!("Bearer {t}"))
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["body_len"], 5);
    assert_eq!(h.up.hits.load(Ordering::SeqCst), hits + 1);

    // Every call is an audit event; none holds the key or a token.
    h.proxy.finish().await;
    let events = h.store.audit_tail(100).await.unwrap();
    let text = format!("{events:?}");
    assert!(!text.contains(KEY) && !text.contains(&t));
    assert!(text.contains("proxy_call"), "{text}");
    assert!(text.contains("insufficient_scope"));
}

#[tokio::test]
async fn an_expired_key_is_refused_until_extended() {
    let h = harness(40).await;
    let t0 = h.now();
    assert_eq!(h.call("/up/x", Some(&h.issuer.token(t0))).await.0, 200);
    let hits = 1;

    // 39 days on: still valid (the last day).
    h.clock.set(t0 + 39 * DAY);
    assert_eq!(h.call("/up/x", Some(&h.issuer.token(h.now()))).await.0, 200);
    let hits = hits + 1;

    // Past the expiry: refused, saying so, naming the owner and the command.
    h.clock.set(t0 + 40 * DAY);
    let r = h.call("/up/x", Some(&h.issuer.token(h.now()))).await;
    h.refused(&r, 403, "key_expired", hits);
    let d = r.2["error_description"].as_str().unwrap();
    assert!(d.contains("route up expired on"), "{d}");
    assert!(d.contains("billing-team"), "{d}");
    assert!(d.contains("mayfly debt extend up --until"), "{d}");
    // Without a valid token the caller learns nothing about the key.
    h.refused(&h.call("/up/x", None).await, 401, "invalid_token", hits);

    // Extended (bumps key_version): the proxy notices within its reload interval.
    let now = h.now();
    assert!(
        h.store
            .extend_debt("up", t0 + 60 * DAY, "migration slipped a sprint", now)
            .await
            .unwrap()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = h.call("/up/x", Some(&h.issuer.token(h.now()))).await;
        if r.0 == 200 {
            break;
        }
        assert_eq!(r.2["error"], "key_expired");
        assert!(
            std::time::Instant::now() < deadline,
            "the extension was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Rotation: the new key is used without a restart.
    let new_key = "sk_live_inprocess_TESTKEY_0002";
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let fp = mayfly_crypto::hex(&mayfly_crypto::sha256(new_key.as_bytes()));
    assert!(
        h.store
            .rotate_debt_key("up", new_key.as_bytes(), &fp, h.now(), &kek)
            .await
            .unwrap()
    );
    h.proxy.reload().await.unwrap();
    // The upstream accepts only the old key: the 401 it answers proves the new one was sent.
    let r = h.call("/up/x", Some(&h.issuer.token(h.now()))).await;
    assert_eq!(r.0, 401);
    assert_eq!(r.2["error"], "bad key");

    // Usage was recorded per identity.
    h.proxy.finish().await;
    let usage = h.store.debt_usage("up").await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].identity, "spiffe://example.org/billing");
    assert!(usage[0].calls >= 4);
}

/// TLS towards the upstream: its certificate is trusted through `upstream_ca_file`.
#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_roots() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![ck.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let hits = Arc::new(AtomicUsize::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let ok = req.headers().get("x-api-key").map(|v| v.as_bytes())
                        == Some(KEY.as_bytes());
                    async move {
                        Ok::<_, Infallible>(json_resp(
                            if ok { 200 } else { 401 },
                            &json!({"tls": true}),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}");

    let h = harness_with(90, Some((url.clone(), ca)), None).await;
    let r = h.call("/up/x", Some(&h.issuer.token(h.now()))).await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(r.2["tls"], true);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Without that root the upstream is not trusted: 502, and no request got through.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let h = harness_with(90, Some((url, wrong)), None).await;
    let r = h.call("/up/x", Some(&h.issuer.token(h.now()))).await;
    assert_eq!(r.0, 502, "{}", r.2);
    assert_eq!(r.2["error"], "upstream_error");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A route's Cedar policy: default deny within it, by workload, method and (percent-decoded)
/// path; a refusal is 403 `access_denied` and the upstream sees nothing.
#[tokio::test]
async fn a_route_policy_decides_which_workload_may_make_which_call() {
    let policy = r#"
        @id("billing-reads-invoices")
        permit(principal == Workload::"spiffe://example.org/billing", action == Action::"GET", resource == Route::"up")
        when { context.path like "/invoices*" && context.client_id == "billing" };
        @id("no-admin")
        forbid(principal, action, resource) when { context.path like "/invoices/admin*" };
    "#;
    let h = harness_with(90, None, Some(policy)).await;
    let now = h.now();
    let ok = h.call("/up/invoices/42", Some(&h.issuer.token(now))).await;
    assert_eq!(ok.0, 200, "{}", ok.2);
    assert_eq!(h.up.hits.load(Ordering::SeqCst), 1);
    // Outside the permitted paths; a forbidden path, also when percent-encoded; another workload.
    let r = h.call("/up/customers/1", Some(&h.issuer.token(now))).await;
    h.refused(&r, 403, "access_denied", 1);
    let r = h
        .call("/up/invoices/admin/x", Some(&h.issuer.token(now)))
        .await;
    h.refused(&r, 403, "access_denied", 1);
    let r = h
        .call("/up/invoices/%61dmin/x", Some(&h.issuer.token(now)))
        .await;
    h.refused(&r, 403, "access_denied", 1);
    let t = h
        .issuer
        .token_with(now, |c| c["sub"] = json!("spiffe://example.org/reports"));
    h.refused(
        &h.call("/up/invoices/42", Some(&t)).await,
        403,
        "access_denied",
        1,
    );
    let t = h
        .issuer
        .token_with(now, |c| c["client_id"] = json!("other"));
    h.refused(
        &h.call("/up/invoices/42", Some(&t)).await,
        403,
        "access_denied",
        1,
    );
    // Token checks still come first.
    h.refused(
        &h.call("/up/invoices/42", None).await,
        401,
        "invalid_token",
        1,
    );
}

/// A policy file edited while the proxy runs decides from the next reload; an edit that does
/// not fit the schema, or a removed file, leaves the policy in force (it never opens a route).
#[tokio::test]
async fn a_changed_route_policy_takes_effect_without_a_restart() {
    let first = r#"permit(principal, action == Action::"GET", resource) when { context.path like "/invoices*" };"#;
    let h = harness_with(90, None, Some(first)).await;
    let file = h._dir.path().join("up.cedar");
    let now = h.now();
    let r = h.call("/up/invoices/42", Some(&h.issuer.token(now))).await;
    assert_eq!(r.0, 200, "{}", r.2);
    let r = h.call("/up/public/1", Some(&h.issuer.token(now))).await;
    h.refused(&r, 403, "access_denied", 1);

    // Replaced whole (written aside, then renamed), as an operator should: the reload loop
    // also runs on its own every 100 ms here and must never see half a file.
    let replace = |text: &str| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    let second = r#"permit(principal, action == Action::"GET", resource) when { context.path like "/public*" };"#;
    replace(second);
    // Taken on the second reading in a row (a half-written file is never read twice).
    h.proxy.reload().await.unwrap();
    h.proxy.reload().await.unwrap();
    let r = h.call("/up/invoices/42", Some(&h.issuer.token(now))).await;
    h.refused(&r, 403, "access_denied", 1);
    let r = h.call("/up/public/1", Some(&h.issuer.token(now))).await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(h.up.hits.load(Ordering::SeqCst), 2);

    // Broken (an attribute the schema does not have), then gone: the second policy stays.
    replace(r#"permit(principal, action, resource) when { context.pathh like "/*" };"#);
    h.proxy.reload().await.unwrap();
    h.proxy.reload().await.unwrap();
    let r = h.call("/up/invoices/42", Some(&h.issuer.token(now))).await;
    h.refused(&r, 403, "access_denied", 2);
    std::fs::remove_file(&file).unwrap();
    h.proxy.reload().await.unwrap();
    let r = h.call("/up/invoices/42", Some(&h.issuer.token(now))).await;
    h.refused(&r, 403, "access_denied", 2);
    let r = h.call("/up/public/2", Some(&h.issuer.token(now))).await;
    assert_eq!(r.0, 200, "{}", r.2);

    // Each outcome is in the audit log: the new policy (by its text's digest), then the two
    // refusals (a file left broken is one event, not one per reload).
    h.proxy.reload().await.unwrap();
    h.proxy.finish().await;
    let changes: Vec<Value> = h
        .store
        .audit_tail(100)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.body).unwrap())
        .filter(|e| e["kind"] == "policy_change")
        .collect();
    let digest = mayfly_crypto::hex(&mayfly_crypto::sha256(second.as_bytes()));
    let got: Vec<(&str, &str)> = changes
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("allow", format!("sha256:{digest}").as_str()),
            ("deny", "policy_refused"),
            ("deny", "policy_refused"),
        ],
        "{changes:?}"
    );
    assert!(changes.iter().all(|e| e["route"] == "up"));
}

#[tokio::test]
async fn a_route_policy_that_does_not_fit_the_schema_stops_the_proxy_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.cedar");
    std::fs::write(
        &f,
        "permit(principal, action, resource) when { context.methd == \"GET\" };",
    )
    .unwrap();
    let route = mayfly_proxy::route::Route::new(&RouteConfig {
        name: "up".into(),
        matcher: RouteMatch::PathPrefix("/up/".into()),
        upstream: url::Url::parse("http://127.0.0.1:9/").unwrap(),
        audience: AUD.into(),
        scopes: vec![],
        key: "up".into(),
        inject: Inject::Query {
            param: "api_key".into(),
        },
        drop_headers: vec![],
        policy_file: Some(f),
        case_insensitive_upstream: false,
    });
    let e = route.unwrap_err();
    assert!(
        e.contains("route up") && e.contains("bad.cedar") && e.contains("route schema"),
        "{e}"
    );
}

/// What one spelling of a path must come to.
enum Want {
    /// Forwarded: the upstream receives exactly this path (below its base) and query.
    Sent(&'static str),
    /// 403 `access_denied` from the route's policy.
    Denied,
    /// 400 `invalid_request`, audited with this reason.
    Refused(&'static str),
}

/// Every spelling of a path is decided as its normal form (RFC 3986 §6.2.2: unreserved
/// escapes decoded, escape hex upper-cased, dot segments removed, plus `//` merged), and the
/// upstream receives exactly the path that was decided on; encoded `/` and `\`, raw `\`,
/// NUL, bad escapes and `..;` are refused with 400 and an audit reason.
#[tokio::test]
async fn every_spelling_of_a_path_is_decided_and_forwarded_as_its_normal_form() {
    use Want::*;
    let policy = r#"
        permit(principal, action == Action::"GET", resource) when { context.path like "/invoices*" };
        forbid(principal, action, resource) when { context.path like "/invoices/admin*" };
    "#;
    let h = harness_with(90, None, Some(policy)).await;
    let cases: &[(&str, Want)] = &[
        // Plain.
        ("/invoices/42", Sent("/invoices/42")),
        ("/invoices/admin", Denied),
        // Repeated slashes.
        ("/invoices//42", Sent("/invoices/42")),
        ("//invoices/42", Sent("/invoices/42")),
        ("/invoices//admin", Denied),
        ("//invoices///admin", Denied),
        ("/invoices/admin//x", Denied),
        // Dot segments, literal and encoded, in either case.
        ("/invoices/./42", Sent("/invoices/42")),
        ("/invoices/x/../42", Sent("/invoices/42")),
        ("/invoices/./admin", Denied),
        ("/invoices/%2e/admin", Denied),
        ("/invoices/%2E/admin", Denied),
        ("/invoices/x/../admin", Denied),
        ("/invoices/x/%2e%2e/admin", Denied),
        ("/invoices/x/%2E%2e/admin", Denied),
        ("/invoices/x/.%2E/admin", Denied),
        ("/invoices/x/..//admin", Denied),
        ("/public/../invoices/admin", Denied),
        ("/invoices/admin/.", Denied),
        // Encoded letters (unreserved characters), hex in either case.
        ("/invoices/%61dmin", Denied),
        ("/invoices/adm%69n", Denied),
        ("/%69nvoices/%61dmin", Denied),
        ("/%69nvoices/%34%32", Sent("/invoices/42")),
        ("/invoices/%7e%5Fa", Sent("/invoices/~_a")),
        // Letter case is the path's own (RFC 3986 §6.2.2.1): `A` is not `a`.
        ("/invoices/%41dmin", Sent("/invoices/Admin")),
        ("/Invoices/admin", Denied),
        // Other escapes stay escaped, upper-cased; the query is passed on untouched.
        ("/invoices/a%3bb", Sent("/invoices/a%3Bb")),
        (
            "/invoices/a%20b?q=%2f..&r=%2e",
            Sent("/invoices/a%20b?q=%2f..&r=%2e"),
        ),
        // What upstreams read in different ways is refused.
        ("/invoices%2Fadmin", Refused("path_encoded_slash")),
        ("/invoices%2fadmin", Refused("path_encoded_slash")),
        ("/invoices/%5cadmin", Refused("path_encoded_backslash")),
        ("/invoices\\admin", Refused("path_backslash")),
        ("/invoices/%00admin", Refused("path_nul")),
        ("/invoices/..;/admin", Refused("path_dot_parameter")),
        ("/invoices/%zz", Refused("path_bad_escape")),
        ("/invoices/%c0%af", Refused("path_not_utf8")),
    ];
    assert!(cases.len() >= 20);
    let mut hits = 0;
    for (rest, want) in cases {
        let r = h
            .call(&format!("/up{rest}"), Some(&h.issuer.token(h.now())))
            .await;
        h.proxy.finish().await;
        let tail = h.store.audit_tail(1).await.unwrap();
        let event: Value = serde_json::from_str(&tail[0].body).unwrap();
        assert_eq!(event["kind"], "proxy_call", "{rest}");
        match want {
            Sent(path) => {
                hits += 1;
                assert_eq!(r.0, 200, "{rest}: {}", r.2);
                assert_eq!(r.2["path"], format!("/base{path}"), "{rest}");
                assert_eq!(event["reason"], "forwarded", "{rest}");
            }
            Denied => {
                h.refused(&r, 403, "access_denied", hits);
                assert_eq!(event["reason"], "access_denied", "{rest}");
            }
            Refused(reason) => {
                h.refused(&r, 400, "invalid_request", hits);
                assert_eq!(event["reason"], *reason, "{rest}");
                assert_eq!(event["decision"], "deny", "{rest}");
            }
        }
    }
    // `..` cannot climb out of the route's prefix into the upstream: normalised, the path is
    // another one, which no route serves.
    let r = h
        .call("/up/../invoices/42", Some(&h.issuer.token(h.now())))
        .await;
    h.refused(&r, 404, "not_found", hits);
    let r = h
        .call(
            "/up/%2e%2e/base/invoices/admin",
            Some(&h.issuer.token(h.now())),
        )
        .await;
    h.refused(&r, 404, "not_found", hits);
}

/// A route whose upstream ignores case: the path is lower-cased (escapes keep their upper-case
/// hex) before the policy decides, and the upstream receives that path.
#[tokio::test]
async fn a_case_insensitive_upstream_gets_the_lower_cased_path_the_policy_decided_on() {
    let policy = r#"
        permit(principal, action == Action::"GET", resource) when { context.path like "/invoices*" };
        forbid(principal, action, resource) when { context.path like "/invoices/admin*" };
    "#;
    let h = harness_full(90, None, Some(policy), true, RevocationMode::Introspection).await;
    let mut hits = 0;
    for (rest, sent) in [
        ("/INVOICES/42", Some("/invoices/42")),
        ("/Invoices/A%3b", Some("/invoices/a%3B")),
        ("/invoices/Admin", None),
        ("/invoices/ADMIN/x", None),
        ("/invoices/%41dmin", None),
        ("/Invoices//%41DMIN", None),
    ] {
        let r = h
            .call(&format!("/up{rest}"), Some(&h.issuer.token(h.now())))
            .await;
        match sent {
            Some(path) => {
                hits += 1;
                assert_eq!(r.0, 200, "{rest}: {}", r.2);
                assert_eq!(r.2["path"], format!("/base{path}"), "{rest}");
            }
            None => h.refused(&r, 403, "access_denied", hits),
        }
    }
    // The prefix is matched as written.
    let r = h
        .call("/UP/invoices/42", Some(&h.issuer.token(h.now())))
        .await;
    h.refused(&r, 404, "not_found", hits);
}

/// With `revocation = "status_list"` the proxy never introspects: it fetches the issuer's list
/// once per `ttl`, sees a revocation within that `ttl`, refuses tokens without a `status`
/// claim or outside the list, and fails closed once its copy of the list has expired.
#[tokio::test]
async fn status_list_mode_checks_revocation_offline_within_the_lists_ttl() {
    let h = harness_full(90, None, None, false, RevocationMode::StatusList).await;
    let now = h.now();
    let uri = format!("{}/statuslists/1", h.issuer.url);
    let with_idx = |idx: u64| {
        let uri = uri.clone();
        h.issuer.token_with(now, move |c| {
            c["status"] = json!({"status_list": {"idx": idx, "uri": uri}});
            c["exp"] = json!(now + 3600);
        })
    };
    let (a, b) = (with_idx(5), with_idx(6));
    for _ in 0..3 {
        assert_eq!(h.call("/up/x", Some(&a)).await.0, 200);
        assert_eq!(h.call("/up/x", Some(&b)).await.0, 200);
    }
    assert_eq!(h.issuer.list_fetches.load(Ordering::SeqCst), 1);
    let mut hits = 6;
    assert_eq!(h.up.hits.load(Ordering::SeqCst), hits);

    // Revoked at the issuer: still served from the copy until its ttl runs out, then refused.
    h.issuer.list_revoked.lock().unwrap().insert(5);
    h.clock.advance(LIST_TTL - 1);
    assert_eq!(h.call("/up/x", Some(&a)).await.0, 200);
    hits += 1;
    h.clock.advance(1);
    let r = h.call("/up/x", Some(&a)).await;
    h.refused(&r, 401, "invalid_token", hits);
    assert!(
        r.2["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    assert_eq!(h.call("/up/x", Some(&b)).await.0, 200);
    hits += 1;
    assert_eq!(h.issuer.list_fetches.load(Ordering::SeqCst), 2);

    // No status claim, an index past the list, a list of another host: refused.
    let bare = h.issuer.token(h.now());
    h.refused(
        &h.call("/up/x", Some(&bare)).await,
        401,
        "invalid_token",
        hits,
    );
    h.refused(
        &h.call("/up/x", Some(&with_idx(4096))).await,
        401,
        "invalid_token",
        hits,
    );
    let foreign = h.issuer.token_with(now, |c| {
        c["status"] =
            json!({"status_list": {"idx": 1, "uri": "https://elsewhere.test/statuslists/1"}});
    });
    h.refused(
        &h.call("/up/x", Some(&foreign)).await,
        401,
        "invalid_token",
        hits,
    );

    // The issuer down: the unexpired copy keeps answering; past its exp, 503 (fail closed).
    h.issuer.down.store(true, Ordering::SeqCst);
    h.clock.advance(LIST_TTL);
    assert_eq!(h.call("/up/x", Some(&b)).await.0, 200);
    hits += 1;
    h.clock.advance(LIST_TTL);
    h.refused(
        &h.call("/up/x", Some(&b)).await,
        503,
        "temporarily_unavailable",
        hits,
    );
    h.issuer.down.store(false, Ordering::SeqCst);
    h.clock.advance(1);
    assert_eq!(h.call("/up/x", Some(&b)).await.0, 200);
    assert_eq!(h.issuer.introspections.load(Ordering::SeqCst), 0);
}
