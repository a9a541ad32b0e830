//! A server with two registered clients, and helpers to forge every kind of assertion.

use std::path::PathBuf;

use base64::Engine;
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::{Value, json};

use crate::support::{ServerProcess, write_config};

pub const AUD: &str = "https://api.example.test";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub server: ServerProcess,
    pub key: SigningKey,
    pub other_key: SigningKey,
    pub http: reqwest::Client,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn jwks(k: &SigningKey) -> String {
    json!({"keys": [k.public_jwk()]}).to_string()
}

impl Fixture {
    /// Clients: `svc` (ES256 key `svc-key`, audiences AUD and https://other.example.test,
    /// scopes read/write) and `other` (EdDSA key `other-key`, audience AUD, scope read). A
    /// trusted issuer `k8s` (iss `https://k8s.test`) signs with `other-key`; no policy grants its
    /// workloads anything.
    pub fn start(extra_env: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
        let other_key = SigningKey::generate(KeyAlg::EdDSA, Some("other-key")).unwrap();
        std::fs::write(dir.path().join("svc.jwks.json"), jwks(&key)).unwrap();
        std::fs::write(dir.path().join("other.jwks.json"), jwks(&other_key)).unwrap();
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
        let n = now();
        json!({"iss": "svc", "sub": "svc", "aud": self.issuer(), "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60})
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign_jwt(None, claims).unwrap()
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
        let body = serde_urlencoded(form);
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

pub fn serde_urlencoded(form: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in form {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&pct(k));
        out.push('=');
        out.push_str(&pct(v));
    }
    out
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The claims of a JWT, read without verification (test inspection only).
pub fn peek(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Assert an RFC 6749 error: status and exact code.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.1["error"], code, "body: {}", got.1);
    assert_eq!(got.0, status, "body: {}", got.1);
    let desc = got.1["error_description"].as_str().unwrap_or("");
    assert!(!desc.is_empty(), "error_description is useful: {}", got.1);
}
