//! The JWKS key source against a real HTTP server on 127.0.0.1:0 that counts what it serves,
//! with the caller's clock passed by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mayfly_client::keysource::{KeyLocation, KeySource, KeySourceError, KeySourceOptions, TtlRule};
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::json;

const T0: i64 = 1_800_000_000;

#[derive(Clone)]
struct Idp {
    base: String,
    port: u16,
    fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    cache_control: Arc<Mutex<&'static str>>,
    down: Arc<AtomicBool>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let k = SigningKey::generate(KeyAlg::ES256, Some("k1")).unwrap();
        let idp = Idp {
            base: base.clone(),
            port,
            fetches: Arc::new(AtomicUsize::new(0)),
            keys: Arc::new(Mutex::new(vec![k.public_jwk().clone()])),
            cache_control: Arc::new(Mutex::new("max-age=300")),
            down: Arc::new(AtomicBool::new(false)),
        };
        let jwks = {
            let idp = idp.clone();
            move || {
                let idp = idp.clone();
                async move {
                    idp.fetches.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent callers overlap.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if idp.down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let body = json!({"keys": *idp.keys.lock().unwrap()}).to_string();
                    let cc = *idp.cache_control.lock().unwrap();
                    ([("cache-control", cc)], body).into_response()
                }
            }
        };
        let disco = json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string();
        let other = format!("http://localhost:{port}/jwks");
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(jwks))
            .route(
                "/same",
                axum::routing::get(|| async { Redirect::temporary("/jwks") }),
            )
            .route(
                "/other",
                axum::routing::get(move || {
                    let to = other.clone();
                    async move { Redirect::temporary(&to) }
                }),
            )
            .route(
                "/big",
                axum::routing::get(|| async {
                    let pad = "x".repeat(300 * 1024);
                    json!({"keys": [], "pad": pad}).to_string()
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = disco.clone();
                    async move { Response::new(d) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        idp
    }

    fn url(&self, path: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("{}{path}", self.base)).unwrap()
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn add_key(&self, kid: &str) {
        let k = SigningKey::generate(KeyAlg::ES256, Some(kid)).unwrap();
        self.keys.lock().unwrap().push(k.public_jwk().clone());
    }
}

fn options() -> KeySourceOptions {
    KeySourceOptions {
        ttl: TtlRule {
            default: 300,
            min: 60,
            max: 3600,
        },
        unknown_kid_interval: 30,
        interval_from_any_fetch: true,
        retry_after_error: 10,
        max_redirects: 2,
        max_bytes: 256 * 1024,
        timeout: Duration::from_secs(5),
    }
}

fn source(idp: &Idp, path: &str) -> KeySource {
    KeySource::new("test", KeyLocation::JwkSet(idp.url(path)), options()).unwrap()
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let idp = Idp::start().await;
    let s = Arc::new(source(&idp, "/jwks"));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let s = s.clone();
        set.spawn(async move { s.refresh_unknown_kid(T0, 0).await });
    }
    while let Some(r) = set.join_next().await {
        assert!(r.unwrap(), "every caller sees the new keys");
    }
    assert_eq!(idp.fetches(), 1);
    // The same for callers finding the keys stale.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let s = s.clone();
        set.spawn(async move { s.keys(T0 + 300).await.is_some() });
    }
    while let Some(r) = set.join_next().await {
        assert!(r.unwrap());
    }
    assert_eq!(idp.fetches(), 2);
}

#[test]
fn cache_control_is_clamped_both_ways() {
    let rule = options().ttl;
    assert_eq!(rule.ttl(None), 300);
    assert_eq!(rule.ttl(Some("public, max-age=600")), 600);
    assert_eq!(rule.ttl(Some("max-age=5")), 60);
    assert_eq!(rule.ttl(Some("max-age=99999999999")), 3600);
    assert_eq!(rule.ttl(Some("no-store")), 60);
    assert_eq!(rule.ttl(Some("max-age=x")), 300);
    assert_eq!(TtlRule::UNTIL_UNKNOWN_KID.ttl(Some("max-age=1")), i64::MAX);
}

#[tokio::test]
async fn fetched_keys_live_for_the_clamped_max_age() {
    let idp = Idp::start().await;
    // Asks for 5 s: kept 60.
    *idp.cache_control.lock().unwrap() = "max-age=5";
    let s = source(&idp, "/jwks");
    assert!(s.keys(T0).await.is_some());
    assert!(s.keys(T0 + 59).await.is_some());
    assert_eq!(idp.fetches(), 1);
    assert!(s.keys(T0 + 60).await.is_some());
    assert_eq!(idp.fetches(), 2);
    // Asks for a year: kept 3600.
    *idp.cache_control.lock().unwrap() = "max-age=31536000";
    let s = source(&idp, "/jwks");
    s.keys(T0).await.unwrap();
    s.keys(T0 + 3599).await.unwrap();
    assert_eq!(idp.fetches(), 3);
    s.keys(T0 + 3600).await.unwrap();
    assert_eq!(idp.fetches(), 4);
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let idp = Idp::start().await;
    let s = source(&idp, "/jwks");
    let g = s.generation();
    assert!(s.refresh_unknown_kid(T0, g).await);
    let g = s.generation();
    for dt in [0, 1, 29] {
        assert!(!s.refresh_unknown_kid(T0 + dt, g).await, "+{dt}s");
    }
    assert_eq!(idp.fetches(), 1);
    idp.add_key("k2");
    assert!(s.refresh_unknown_kid(T0 + 30, g).await);
    assert_eq!(idp.fetches(), 2);
    assert_eq!(s.current().unwrap().len(), 2);
    // After a failure the shorter retry interval applies.
    idp.down.store(true, Ordering::SeqCst);
    let g = s.generation();
    assert!(!s.refresh_unknown_kid(T0 + 60, g).await);
    assert_eq!(idp.fetches(), 3);
    assert!(!s.refresh_unknown_kid(T0 + 69, g).await);
    assert_eq!(idp.fetches(), 3);
    idp.down.store(false, Ordering::SeqCst);
    assert!(s.refresh_unknown_kid(T0 + 70, g).await);
    assert_eq!(idp.fetches(), 4);
}

#[tokio::test]
async fn verify_with_refetches_on_an_unknown_kid() {
    let idp = Idp::start().await;
    let s = source(&idp, "/jwks");
    let k2 = SigningKey::generate(KeyAlg::ES256, Some("k2")).unwrap();
    let token = k2.sign_jwt(None, &json!({"sub": "x"})).unwrap();
    let verify = |keys: &mayfly_crypto::VerifyingKeys| {
        keys.verify::<serde_json::Value>(&token, mayfly_crypto::ASSERTION_ALGS)
    };
    let unknown = |e: &mayfly_crypto::VerifyError| *e == mayfly_crypto::VerifyError::UnknownKey;
    assert_eq!(
        s.verify_with(T0, verify, unknown).await.unwrap_err(),
        Some(mayfly_crypto::VerifyError::UnknownKey)
    );
    assert_eq!(idp.fetches(), 1, "first use fetched; no second fetch");
    idp.keys.lock().unwrap().push(k2.public_jwk().clone());
    assert!(s.verify_with(T0 + 30, verify, unknown).await.is_ok());
    assert_eq!(idp.fetches(), 2);
    // Never fetched and unreachable: no keys at all.
    idp.down.store(true, Ordering::SeqCst);
    let fresh = source(&idp, "/jwks");
    assert_eq!(
        fresh.verify_with(T0, verify, unknown).await.unwrap_err(),
        None
    );
}

#[tokio::test]
async fn redirects_stay_within_the_origin() {
    let idp = Idp::start().await;
    let same = source(&idp, "/same");
    assert!(same.fetch_now(T0).await.is_ok());
    let other = source(&idp, "/other");
    let e = other.fetch_now(T0).await.unwrap_err();
    assert!(
        matches!(e, KeySourceError::Status { status: 307, .. }),
        "{e}"
    );
    assert_eq!(idp.fetches(), 1, "the other origin was never asked");
    // No redirects allowed at all: even the same origin is not followed.
    let none = KeySource::new(
        "test",
        KeyLocation::JwkSet(idp.url("/same")),
        KeySourceOptions {
            max_redirects: 0,
            ..options()
        },
    )
    .unwrap();
    assert!(none.fetch_now(T0).await.is_err());
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let idp = Idp::start().await;
    let e = source(&idp, "/big").fetch_now(T0).await.unwrap_err();
    assert!(matches!(e, KeySourceError::TooLarge { .. }), "{e}");
}

#[tokio::test]
async fn stale_keys_keep_serving_while_the_issuer_is_down() {
    let idp = Idp::start().await;
    let s = source(&idp, "/jwks");
    let before = s.keys(T0).await.unwrap();
    idp.down.store(true, Ordering::SeqCst);
    let after = s.keys(T0 + 1000).await.unwrap();
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(idp.fetches(), 2, "one attempt, which failed");
    // Failed attempts are rate-limited too.
    s.keys(T0 + 1005).await.unwrap();
    assert_eq!(idp.fetches(), 2);
    s.keys(T0 + 1010).await.unwrap();
    assert_eq!(idp.fetches(), 3);
    // Back up: new keys.
    idp.down.store(false, Ordering::SeqCst);
    idp.add_key("k2");
    assert_eq!(s.keys(T0 + 1020).await.unwrap().len(), 2);
}

#[tokio::test]
async fn https_only_except_loopback() {
    for url in ["http://keys.example.test/jwks", "ftp://127.0.0.1/jwks"] {
        let s = KeySource::new(
            "test",
            KeyLocation::JwkSet(reqwest::Url::parse(url).unwrap()),
            options(),
        )
        .unwrap();
        assert!(matches!(
            s.fetch_now(T0).await.unwrap_err(),
            KeySourceError::NotHttps(_)
        ));
    }
    let rule = |u: &str| mayfly_client::keysource::fetchable(&reqwest::Url::parse(u).unwrap());
    assert!(rule("https://keys.example.test/jwks"));
    assert!(rule("http://127.0.0.1:8080/jwks"));
    assert!(rule("http://localhost/jwks"));
    assert!(rule("http://[::1]:80/jwks"));
    assert!(!rule("http://10.0.0.1/jwks"));
}

#[tokio::test]
async fn discovery_finds_the_jwks_uri_of_the_same_issuer() {
    let idp = Idp::start().await;
    let s = KeySource::new(
        "test",
        KeyLocation::OpenIdDiscovery(format!("{}/", idp.base)),
        options(),
    )
    .unwrap();
    assert_eq!(s.fetch_now(T0).await.unwrap().len(), 1);
    // The metadata names 127.0.0.1, not localhost: another issuer.
    let s = KeySource::new(
        "test",
        KeyLocation::OpenIdDiscovery(format!("http://localhost:{}", idp.port)),
        options(),
    )
    .unwrap();
    assert!(matches!(
        s.fetch_now(T0).await.unwrap_err(),
        KeySourceError::Invalid { .. }
    ));
}

#[tokio::test]
async fn fixed_keys_are_never_fetched() {
    let k = SigningKey::generate(KeyAlg::EdDSA, Some("k")).unwrap();
    let keys = mayfly_crypto::VerifyingKeys::from_jwks(&json!({"keys": [k.public_jwk()]})).unwrap();
    let s = KeySource::fixed("static", keys);
    assert!(s.keys(i64::MAX - 1).await.is_some());
    assert!(!s.refresh_unknown_kid(T0, s.generation()).await);
    assert_eq!(s.generation(), 0);
}

#[tokio::test]
async fn a_scheduled_refresh_delays_unknown_kid_fetches_only_when_configured_to() {
    let idp = Idp::start().await;
    let from_any = source(&idp, "/jwks");
    from_any.keys(T0).await.unwrap();
    assert!(
        !from_any
            .refresh_unknown_kid(T0 + 1, from_any.generation())
            .await
    );
    assert_eq!(idp.fetches(), 1);
    let only_kid = KeySource::new(
        "test",
        KeyLocation::JwkSet(idp.url("/jwks")),
        KeySourceOptions {
            interval_from_any_fetch: false,
            ..options()
        },
    )
    .unwrap();
    only_kid.keys(T0).await.unwrap();
    assert!(
        only_kid
            .refresh_unknown_kid(T0 + 1, only_kid.generation())
            .await
    );
    assert_eq!(idp.fetches(), 3);
    assert!(
        !only_kid
            .refresh_unknown_kid(T0 + 30, only_kid.generation())
            .await
    );
    assert!(
        only_kid
            .refresh_unknown_kid(T0 + 31, only_kid.generation())
            .await
    );
    assert_eq!(idp.fetches(), 4);
}
