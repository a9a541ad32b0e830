//! The real server in process: [`mayfly_server::App`] behind its router on `127.0.0.1:0`, in a
//! temp dir, on a [`ManualClock`] the test moves.
//!
//! A [`TestEnv`] holds what outlives one server (the dir, the clock, the config text); each
//! [`TestEnv::server`] call starts a server from it, so a test restarts a server by starting
//! another on the same store.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mayfly_crypto::{Kek, SigningKey};
use mayfly_server::{App, AppOptions};
use mayfly_store::{AuditSink, Store};
use mayfly_sts::{Clock, ManualClock};
use serde_json::Value;

use crate::jwt::form_urlencode;

/// Where a server's config names its issuer URL, replaced once the port is known.
pub const ISSUER_PLACEHOLDER: &str = "${ISSUER}";

/// Builds a [`TestEnv`]: config text, client key files, a policy directory.
pub struct TestEnvBuilder {
    dir: tempfile::TempDir,
    start: i64,
    config: String,
}

impl TestEnvBuilder {
    /// The temp dir, to write files the config names.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start the clock at `t` (default: the system time).
    pub fn start_at(mut self, t: i64) -> Self {
        self.start = t;
        self
    }

    /// Append TOML to the config. [`ISSUER_PLACEHOLDER`] becomes the server's URL.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        if !toml.ends_with('\n') {
            self.config.push('\n');
        }
        self
    }

    /// Register client `id` with `key` (written to `<id>.jwks.json`), its audiences and
    /// scopes. Call after any top-level keys: it appends a `[[clients]]` table.
    pub fn client(self, id: &str, key: &SigningKey, audiences: &[&str], scopes: &[&str]) -> Self {
        let file = format!("{id}.jwks.json");
        crate::keys::write_jwks(&self.dir.path().join(&file), &[key]);
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let table = format!(
            "[[clients]]\nid = \"{id}\"\njwks_file = \"{file}\"\naudiences = [{}]\nscopes = [{}]\n",
            list(audiences),
            list(scopes)
        );
        self.config(&table)
    }

    /// Trust issuer `name` (its `iss`) whose keys are at `jwks_uri`; `rest` holds the other
    /// keys of the `[[issuers]]` table (preset, audiences, algorithms, ...), one per line.
    pub fn issuer(self, name: &str, iss: &str, jwks_uri: &str, rest: &str) -> Self {
        let table = format!(
            "[[issuers]]\nname = \"{name}\"\nissuer = \"{iss}\"\njwks_uri = \"{jwks_uri}\"\n{rest}"
        );
        self.config(&table)
    }

    /// Write a Cedar `schema` and `policies` (as `main.cedar`) into `policies/`. The config
    /// must name it (`[policy] dir = "policies"`).
    pub fn policy_dir(self, schema: &str, policies: &str) -> Self {
        let dir = self.dir.path().join("policies");
        std::fs::create_dir_all(&dir).expect("create the policy dir");
        std::fs::write(dir.join("schema.cedarschema"), schema).expect("write the schema");
        std::fs::write(dir.join("main.cedar"), policies).expect("write the policies");
        self
    }

    /// Write `text` to `name` in the temp dir (a key file, an extra policy).
    pub fn file(self, name: &str, text: &str) -> Self {
        std::fs::write(self.dir.path().join(name), text).expect("write a file");
        self
    }

    /// Finish.
    pub fn build(self) -> TestEnv {
        TestEnv {
            dir: self.dir,
            clock: Arc::new(ManualClock::new(self.start)),
            config: self.config,
            http: reqwest::Client::new(),
        }
    }
}

/// A temp dir, a manual clock and a config, from which servers start.
pub struct TestEnv {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    config: String,
    http: reqwest::Client,
}

impl TestEnv {
    /// A builder on a fresh temp dir with the clock at the system time and an empty config.
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder {
            dir: tempfile::tempdir().expect("a temp dir"),
            start: crate::jwt::now(),
            config: String::new(),
        }
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The manual clock every server of this env runs on.
    pub fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }

    /// The clock's time.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Move the clock `secs` forward (nothing else runs: see [`TestServer::tick`]).
    pub fn advance(&self, secs: i64) {
        self.clock.advance(secs);
    }

    /// The HTTP client servers of this env share.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A server on a SQLite store at `mayfly.db` in the temp dir.
    pub async fn server(&self) -> TestServer {
        let store = Store::open_sqlite(&self.dir.path().join("mayfly.db"))
            .await
            .expect("open the SQLite store");
        self.server_on(store).await
    }

    /// A server on `store` (call again with the same store for a restart).
    pub async fn server_on(&self, store: Store) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let text = self.config.replace(ISSUER_PLACEHOLDER, &url);
        let config = mayfly_config::Config::from_toml_str(&text, "test.toml", self.dir(), &[])
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{text}"));
        let kek = Kek::from_base64(crate::TEST_MASTER_KEY).expect("the test master key");
        let app = App::start(AppOptions {
            config,
            issuer: url.clone(),
            store: store.clone(),
            kek: Arc::new(kek),
            clock: self.clock.clone(),
            audit_sink: AuditSink::Off,
        })
        .await
        .unwrap_or_else(|e| panic!("the server did not start: {e}"));
        let router =
            mayfly_server::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestServer {
            url,
            app,
            store,
            clock: self.clock.clone(),
            http: self.http.clone(),
        }
    }
}

/// One running server; it serves until the test's runtime ends.
pub struct TestServer {
    url: String,
    app: App,
    store: Store,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

impl TestServer {
    /// The base URL and issuer, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The application, for what tests drive directly.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The clock's time.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Move the clock `secs` forward (nothing else runs until [`TestServer::tick`]).
    pub fn advance(&self, secs: i64) {
        self.clock.advance(secs);
    }

    /// Run the periodic work (key rotation, policy reload, ...) now.
    pub async fn tick(&self) {
        self.app.tick().await.expect("tick");
    }

    /// Set the clock to `t`, then tick.
    pub async fn at(&self, t: i64) {
        self.clock.set(t);
        self.tick().await;
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POST `form` to `path`; (status, JSON body or `Null`).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencode(form))
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST `form` to the token endpoint.
    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        self.post_form("/oauth2/token", form).await
    }

    /// GET `path`; (status, JSON body or `Null`).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The newest `n` audit events (bodies), newest last.
    pub async fn audit(&self, n: i64) -> Vec<Value> {
        self.store
            .audit_tail(n)
            .await
            .expect("audit tail")
            .iter()
            .map(|e| serde_json::from_str(&e.body).expect("an audit event is JSON"))
            .collect()
    }

    /// The newest audit event.
    pub async fn last_event(&self) -> Value {
        self.audit(1).await.pop().expect("an audit event")
    }
}

#[cfg(test)]
mod tests {
    use mayfly_crypto::KeyAlg;
    use serde_json::json;

    use super::*;
    use crate::{ASSERTION_TYPE, EXCHANGE, IssuerStub, TT_JWT, assert_error, keys, peek};

    const API: &str = "https://api.example.test";

    #[tokio::test]
    async fn a_configured_server_runs_on_the_tests_clock() {
        let key = keys::es256("k");
        let stub = IssuerStub::start(&[("k8s", KeyAlg::ES256, "k8s-1")]).await;
        let env = TestEnv::builder()
            .start_at(1_900_000_000)
            .config("trust_domain = \"example.org\"\n[tokens]\nmax_ttl = \"1h\"")
            .client("svc", &key, &[API, ISSUER_PLACEHOLDER], &["read"])
            .issuer(
                "k8s",
                "https://k8s.test",
                &stub.jwks_uri("k8s"),
                "preset = \"kubernetes\"\naudiences = [\"mayfly\"]\nalgorithms = [\"ES256\"]",
            )
            .build();
        let s = env.server().await;
        let (status, md) = s.get_json("/.well-known/oauth-authorization-server").await;
        assert_eq!(status, 200);
        assert_eq!(md["issuer"], s.url());

        let a = keys::assertion(&key, "svc", s.url(), s.now());
        let form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("audience", API),
            ("scope", "read"),
        ];
        let (status, body) = s.token(&form).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(
            peek(token)["iat"],
            1_900_000_000,
            "the manual clock, not the system's"
        );
        assert_eq!(s.last_event().await["decision"], "allow");

        // The same assertion again: a replay, refused with its RFC code.
        assert_error(&s.token(&form).await, 401, "invalid_client");

        // Minutes later (the clock moved by the test), the issuer stub's token is judged
        // at the new time: expired.
        let n = s.now();
        let sa = stub.mint(
            "k8s",
            &json!({"iss": "https://k8s.test", "aud": ["mayfly"], "iat": n, "exp": n + 60,
                    "sub": "system:serviceaccount:payments:api",
                    "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}}),
        );
        env.advance(600);
        s.tick().await;
        let got = s
            .token(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &sa),
                ("subject_token_type", TT_JWT),
                ("audience", API),
            ])
            .await;
        assert_error(&got, 400, "invalid_request");
        assert_eq!(s.last_event().await["reason"], "subject_expired");
    }
}
