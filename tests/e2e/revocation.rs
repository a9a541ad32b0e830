//! Revocation and single use, in process over real HTTP with a fake clock: a one-time subject
//! token stays consumed until its own `exp` across a restart (SQLite and PostgreSQL), a token
//! that no registered client owns is revocable by presenting it, and run-time client ids obey
//! the config file's rule.

use std::sync::Arc;

use mayfly_crypto::{KeyAlg, SigningKey};
use mayfly_store::Store;
use mayfly_sts::{Clock, ManualClock};
use mayfly_testkit::{TestEnv, TestServer, keys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, assert_error, now, peek};
use crate::support::{run_cli, write_config};

const API: &str = "https://api.example.test";
const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String, namespace?: String, service_account?: String, trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;
const POLICIES: &str = r#"
@id("payments-read")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal has namespace && principal.namespace == "payments" };
"#;

struct Env {
    env: TestEnv,
    clock: Arc<ManualClock>,
    k8s: SigningKey,
    svc: SigningKey,
}

impl Env {
    fn new(start: i64) -> Env {
        let k8s = keys::es256("k8s-1");
        let svc = keys::es256("svc-1");
        let builder = TestEnv::builder().start_at(start);
        keys::write_jwks(&builder.dir().join("k8s.jwks.json"), &[&k8s]);
        keys::write_jwks(&builder.dir().join("svc.jwks.json"), &[&svc]);
        let env = builder
            .policy_dir(SCHEMA, POLICIES)
            .config(&format!(
                r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[policy]
dir = "policies"
[[clients]]
id = "svc"
jwks_file = "svc.jwks.json"
audiences = ["{API}"]
scopes = ["read"]
introspect = ["{API}"]
[[clients]]
id = "peer"
jwks_file = "svc.jwks.json"
audiences = ["{API}"]
scopes = ["read"]
[[clients]]
id = "rs"
jwks_file = "svc.jwks.json"
audiences = ["https://rs.example.test"]
introspect = ["{API}"]
[[issuers]]
name = "k8s"
issuer = "{K8S_ISS}"
preset = "kubernetes"
jwks_file = "k8s.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
max_token_age = "2h"
one_time_use = true
"#
            ))
            .build();
        Env {
            clock: env.clock().clone(),
            env,
            k8s,
            svc,
        }
    }

    /// A server on `store` (a fresh one per call: a restart) on this env's clock.
    async fn server(&self, store: Store) -> TestServer {
        self.env.server_on(store).await
    }

    /// A projected service-account token valid for an hour.
    fn sa_token(&self) -> String {
        let n = self.clock.now();
        let claims = json!({
            "aud": ["mayfly"], "exp": n + 3600, "iat": n, "nbf": n, "iss": K8S_ISS,
            "jti": mayfly_crypto::random_id().unwrap(),
            "kubernetes.io": {
                "namespace": "payments",
                "node": {"name": "node-1", "uid": "6f2c1c9e-0c2a-4a1e-9f1f-3b4c5d6e7f80"},
                "pod": {"name": "api-7d9f8b6c5-x2k4q", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": "api", "uid": "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"}
            },
            "sub": "system:serviceaccount:payments:api"
        });
        self.k8s.sign_jwt(None, &claims).unwrap()
    }

    fn assertion(&self, issuer: &str) -> String {
        self.assertion_as("svc", issuer)
    }

    /// A client assertion for `id` (every test client shares the key `svc-1`).
    fn assertion_as(&self, id: &str, issuer: &str) -> String {
        keys::assertion(&self.svc, id, issuer, self.clock.now())
    }

    async fn post(&self, s: &TestServer, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        s.post_form(path, form).await
    }

    async fn exchange(&self, s: &TestServer, subject: &str) -> (u16, Value) {
        self.post(
            s,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", subject),
                ("subject_token_type", TT_JWT),
                ("audience", API),
                ("scope", "read"),
            ],
        )
        .await
    }
}

async fn last_event(store: &Store) -> Value {
    let e = store.audit_tail(1).await.unwrap();
    serde_json::from_str(&e[0].body).unwrap()
}

/// Consume a one-time subject token, move the clock past the assertion replay window (about 6
/// minutes) but not past the token's exp, restart the server, replay: refused.
async fn one_time_subject_survives_window_and_restart(store: Store) {
    // The fake clock starts in the past, so that "now" after the move is the real time too
    // (the replay guard is rebuilt at start).
    let env = Env::new(now() - 1_000);
    let first = env.server(store.clone()).await;
    let sa = env.sa_token();
    let (s, v) = env.exchange(&first, &sa).await;
    assert_eq!(s, 200, "{v}");
    env.clock.advance(1_000);
    drop(first);
    let second = env.server(store.clone()).await;
    let got = env.exchange(&second, &sa).await;
    assert_error(&got, 400, "invalid_request");
    let e = last_event(&store).await;
    assert_eq!(e["reason"], "subject_replayed", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_subject_token_is_single_use_until_its_exp_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("mayfly.db"))
        .await
        .unwrap();
    one_time_subject_survives_window_and_restart(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_subject_token_is_single_use_until_its_exp_postgres() {
    let db = mayfly_testkit::TestDb::create("mayfly_once").await;
    let store = Store::open(&db.url()).await.unwrap();
    one_time_subject_survives_window_and_restart(store).await;
}

/// A token exchanged by a workload that authenticated with its subject token alone belongs to
/// no registered client: presenting it revokes it (RFC 7009 §2.1). A registered client's token
/// is not revoked without that client's authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_revokes_its_own_token_by_presenting_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("mayfly.db"))
        .await
        .unwrap();
    let env = Env::new(now());
    let s = env.server(store.clone()).await;
    let (st, v) = env.exchange(&s, &env.sa_token()).await;
    assert_eq!(st, 200, "{v}");
    let wl = v["access_token"].as_str().unwrap().to_string();
    assert!(
        peek(&wl)["client_id"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://")
    );
    let introspect = |t: String| {
        let (env, s) = (&env, &s);
        async move {
            let a = env.assertion(s.url());
            let (st, v) = env
                .post(
                    s,
                    "/oauth2/introspect",
                    &[
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", &a),
                        ("token", &t),
                    ],
                )
                .await;
            assert_eq!(st, 200, "{v}");
            v["active"] == true
        }
    };
    assert!(introspect(wl.clone()).await);
    let (st, v) = env.post(&s, "/oauth2/revoke", &[("token", &wl)]).await;
    assert_eq!(st, 200, "{v}");
    let e = last_event(&store).await;
    assert_eq!(e["reason"], "revoked_by_bearer", "{e}");
    assert_eq!(e["jti"], peek(&wl)["jti"]);
    assert!(!introspect(wl.clone()).await);

    // A client's token: the client must authenticate.
    let a = env.assertion(s.url());
    let (st, v) = env
        .post(
            &s,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("scope", "read"),
            ],
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let ct = v["access_token"].as_str().unwrap().to_string();
    let got = env.post(&s, "/oauth2/revoke", &[("token", &ct)]).await;
    assert_error(&got, 401, "invalid_client");
    let e = last_event(&store).await;
    assert_eq!(e["reason"], "missing_client_auth", "{e}");
    assert_eq!(e["client"], "svc");
    assert!(introspect(ct).await);
    // Garbage without authentication: as before, client authentication is missing.
    let got = env.post(&s, "/oauth2/revoke", &[("token", "x.y.z")]).await;
    assert_error(&got, 401, "invalid_client");
}

/// `mayfly client add` holds run-time ids to the config file's rule, with its words.
#[test]
fn run_time_client_ids_follow_the_config_rule() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let k = SigningKey::generate(KeyAlg::EdDSA, Some("k")).unwrap();
    let jwks = dir.path().join("c.jwks.json");
    std::fs::write(&jwks, json!({"keys": [k.public_jwk()]}).to_string()).unwrap();
    for bad in ["bad id", "tab\tid", "nbsp\u{a0}id", ""] {
        let (code, out, err) = run_cli(
            dir.path(),
            &[
                "client",
                "add",
                "--config",
                "mayfly.toml",
                "--id",
                bad,
                "--jwks-file",
                jwks.to_str().unwrap(),
                "--audience",
                API,
            ],
        );
        assert_eq!(code, 1, "{bad:?}: {out}{err}");
        assert!(
            err.contains(&format!(
                "client `{bad}`: the id must be 1 to 128 printable characters without spaces (fix: pick an id like \"billing-worker\")"
            )),
            "{bad:?}: {err}"
        );
    }
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "client",
            "add",
            "--config",
            "mayfly.toml",
            "--id",
            "good-id",
            "--jwks-file",
            jwks.to_str().unwrap(),
            "--audience",
            API,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Introspection shows a token to its own client and to clients granted its audience
/// (`introspect = [...]`); a client that may merely request that audience sees
/// `{"active": false}` and nothing else, and the refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_is_limited_to_the_owner_and_granted_audiences() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("mayfly.db"))
        .await
        .unwrap();
    let env = Env::new(now());
    let s = env.server(store.clone()).await;
    let a = env.assertion_as("peer", s.url());
    let (st, v) = env
        .post(
            &s,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("scope", "read"),
            ],
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(peek(&token)["aud"], API);
    let introspect = |who: &'static str| {
        let (env, s, t) = (&env, &s, token.clone());
        async move {
            let a = env.assertion_as(who, s.url());
            let (st, v) = env
                .post(
                    s,
                    "/oauth2/introspect",
                    &[
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", &a),
                        ("token", &t),
                    ],
                )
                .await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    // The owner, and a client granted introspection of the audience.
    assert_eq!(introspect("peer").await["active"], true);
    assert_eq!(introspect("rs").await["active"], true);
    // `peer` may request tokens for the audience but holds no grant: it does not see `svc`'s.
    let a = env.assertion_as("svc", s.url());
    let (st, v) = env
        .post(
            &s,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("scope", "read"),
            ],
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let svc_token = v["access_token"].as_str().unwrap().to_string();
    let a = env.assertion_as("peer", s.url());
    let (st, v) = env
        .post(
            &s,
            "/oauth2/introspect",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", &svc_token),
            ],
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"active": false}));
    let e = last_event(&store).await;
    assert_eq!(e["reason"], "introspection_not_granted", "{e}");
    assert_eq!(e["client"], "peer");
    assert!(e.get("jti").is_none() || e["jti"].is_null(), "{e}");
}
