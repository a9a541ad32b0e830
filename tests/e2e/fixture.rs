//! A server with two registered clients, and helpers to forge every kind of assertion.

use std::path::PathBuf;

use mayfly_crypto::SigningKey;
use mayfly_testkit::keys;
pub use mayfly_testkit::{ASSERTION_TYPE, assert_error, b64, form_urlencode, now, peek};
use serde_json::Value;

use crate::support::{ServerProcess, write_config};

pub const AUD: &str = "https://api.example.test";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub server: ServerProcess,
    pub key: SigningKey,
    pub other_key: SigningKey,
    pub http: reqwest::Client,
}

impl Fixture {
    /// Clients: `svc` (ES256 key `svc-key`, audiences AUD and https://other.example.test,
    /// scopes read/write) and `other` (EdDSA key `other-key`, audience AUD, scope read). A
    /// trusted issuer `k8s` (iss `https://k8s.test`) signs with `other-key`; no policy grants its
    /// workloads anything.
    pub fn start(extra_env: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::es256("svc-key");
        let other_key = keys::eddsa("other-key");
        keys::write_jwks(&dir.path().join("svc.jwks.json"), &[&key]);
        keys::write_jwks(&dir.path().join("other.jwks.json"), &[&other_key]);
        let config = write_config(
            dir.path(),
            &format!(
                r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[[issuers]]
name = "k8s"
issuer = "https://k8s.test"
preset = "kubernetes"
jwks_file = "other.jwks.json"
audiences = ["mayfly"]
algorithms = ["EdDSA"]
[[clients]]
id = "svc"
jwks_file = "svc.jwks.json"
audiences = ["{AUD}", "https://other.example.test"]
scopes = ["read", "write"]
[[clients]]
id = "other"
jwks_file = "other.jwks.json"
audiences = ["{AUD}"]
scopes = ["read"]
"#
            ),
        );
        let server = ServerProcess::start(dir.path(), &config, extra_env);
        Fixture {
            dir,
            config,
            server,
            key,
            other_key,
            http: reqwest::Client::new(),
        }
    }

    pub fn restart(&mut self, extra_env: &[(&str, &str)]) {
        self.server.kill9();
        self.server = ServerProcess::start(self.dir.path(), &self.config, extra_env);
    }

    pub fn issuer(&self) -> String {
        self.server.issuer.clone()
    }

    /// Standard valid assertion claims for `svc`.
    pub fn claims(&self) -> Value {
        keys::assertion_claims("svc", &self.issuer(), now())
    }

    pub fn sign(&self, claims: &Value) -> String {
        keys::sign(&self.key, claims)
    }

    pub fn assertion(&self) -> String {
        self.sign(&self.claims())
    }

    /// POST a raw body to a path; returns (status, headers, json body or Null).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.issuer()))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let body = form_urlencode(form);
        self.post_raw(path, "application/x-www-form-urlencoded", body.into_bytes())
            .await
    }

    /// A token request with `assertion` and extra parameters.
    pub async fn token_with(&self, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        form.extend_from_slice(extra);
        let (s, _, v) = self.post_form("/oauth2/token", &form).await;
        (s, v)
    }
}
