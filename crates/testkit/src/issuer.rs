//! An issuer stub: named key sets served as JWKS on loopback, an OpenID discovery document, a
//! redirect that leaves the origin, a fetch counter and an outage switch; and the signing keys
//! that mint subject tokens with whatever claims a test chooses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::{Value, json};

/// One published key set: its JWKs and how often it was fetched.
#[derive(Default)]
struct KeySet {
    keys: Vec<Value>,
    fetches: usize,
}

#[derive(Clone)]
struct Shared {
    base: String,
    port: u16,
    discovery: String,
    sets: Arc<Mutex<BTreeMap<String, KeySet>>>,
    down: Arc<AtomicBool>,
}

/// A token issuer on `127.0.0.1:PORT`:
/// - `GET /{set}/jwks`: the set's keys, `cache-control: public, max-age=60`; 503 while down;
/// - `GET /.well-known/openid-configuration`: `issuer` is the base URL, `jwks_uri` the first
///   set's;
/// - `GET /redirect/{set}`: a temporary redirect to the set's JWKS at `localhost` (another
///   host: a client must not follow it across origins).
pub struct IssuerStub {
    shared: Shared,
    signers: BTreeMap<String, SigningKey>,
}

impl IssuerStub {
    /// Start serving one key set per `(set name, algorithm, kid)`, each with a fresh key.
    pub async fn start(sets: &[(&str, KeyAlg, &str)]) -> IssuerStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let mut published = BTreeMap::new();
        let mut signers = BTreeMap::new();
        for (name, alg, kid) in sets {
            let key = crate::keys::key(*alg, kid);
            published.insert(
                name.to_string(),
                KeySet {
                    keys: vec![key.public_jwk().clone()],
                    fetches: 0,
                },
            );
            signers.insert(name.to_string(), key);
        }
        let shared = Shared {
            base: format!("http://127.0.0.1:{port}"),
            port,
            discovery: sets.first().map_or_else(String::new, |s| s.0.to_string()),
            sets: Arc::new(Mutex::new(published)),
            down: Arc::default(),
        };
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .route("/redirect/{set}", axum::routing::get(redirect))
            .route("/{set}/jwks", axum::routing::get(jwks))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        IssuerStub { shared, signers }
    }

    /// The base URL, `http://127.0.0.1:PORT` (also the discovery issuer).
    pub fn base(&self) -> &str {
        &self.shared.base
    }

    /// The JWKS URL of `set`.
    pub fn jwks_uri(&self, set: &str) -> String {
        format!("{}/{set}/jwks", self.shared.base)
    }

    /// A URL that redirects to `set`'s JWKS on another host name.
    pub fn redirect_uri(&self, set: &str) -> String {
        format!("{}/redirect/{set}", self.shared.base)
    }

    /// The signing key of `set`.
    pub fn key(&self, set: &str) -> &SigningKey {
        self.signers
            .get(set)
            .unwrap_or_else(|| panic!("no key set {set}"))
    }

    /// `claims` signed by `set`'s key: a subject token as that issuer would mint it.
    pub fn mint(&self, set: &str, claims: &Value) -> String {
        self.key(set).sign_jwt(None, claims).expect("sign a JWT")
    }

    /// Publish one more public key in `set` (a rotation at the issuer).
    pub fn publish(&self, set: &str, jwk: Value) {
        let mut sets = self.shared.sets.lock().expect("key sets");
        sets.entry(set.to_string()).or_default().keys.push(jwk);
    }

    /// How many times `set`'s JWKS was requested, outages included.
    pub fn fetches(&self, set: &str) -> usize {
        let sets = self.shared.sets.lock().expect("key sets");
        sets.get(set).map_or(0, |s| s.fetches)
    }

    /// While `down`, every JWKS request answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

async fn jwks(State(s): State<Shared>, Path(set): Path<String>) -> Response {
    let body = {
        let mut sets = s.sets.lock().expect("key sets");
        let Some(ks) = sets.get_mut(&set) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        ks.fetches += 1;
        json!({"keys": ks.keys}).to_string()
    };
    if s.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("cache-control", "no-store")],
            String::new(),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [("cache-control", "public, max-age=60")],
        body,
    )
        .into_response()
}

async fn discovery(State(s): State<Shared>) -> String {
    json!({"issuer": s.base, "jwks_uri": format!("{}/{}/jwks", s.base, s.discovery)}).to_string()
}

async fn redirect(State(s): State<Shared>, Path(set): Path<String>) -> Redirect {
    Redirect::temporary(&format!("http://localhost:{}/{set}/jwks", s.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_counts_rotates_and_goes_down() {
        let stub =
            IssuerStub::start(&[("k8s", KeyAlg::ES256, "k1"), ("gha", KeyAlg::EdDSA, "g1")]).await;
        let http = reqwest_free_get;
        let (s, body) = http(&stub.jwks_uri("k8s")).await;
        assert_eq!(s, 200);
        assert_eq!(body["keys"][0]["kid"], "k1");
        stub.publish("k8s", crate::keys::es256("k2").public_jwk().clone());
        let (_, body) = http(&stub.jwks_uri("k8s")).await;
        assert_eq!(body["keys"].as_array().unwrap().len(), 2);
        assert_eq!(stub.fetches("k8s"), 2);
        assert_eq!(stub.fetches("gha"), 0);
        let (_, d) = http(&format!("{}/.well-known/openid-configuration", stub.base())).await;
        assert_eq!(d["jwks_uri"], stub.jwks_uri("k8s"));
        stub.set_down(true);
        assert_eq!(http(&stub.jwks_uri("gha")).await.0, 503);
        let t = stub.mint("gha", &json!({"sub": "x"}));
        assert_eq!(crate::jwt::peek(&t)["sub"], "x");
    }

    /// A bare HTTP/1.0 GET, so the stub's own test needs no HTTP client crate.
    async fn reqwest_free_get(url: &str) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
        s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |b| b.1);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}
