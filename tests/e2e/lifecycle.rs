//! Leases and status lists, in process over real HTTP with a fake clock: tokens under a lease
//! live as long as it does (ended by its holder, by a stopped heartbeat, on another replica),
//! the lease endpoints refuse what they must, and the signed status list's bits follow every
//! kind of revocation.

use std::future::Future;
use std::time::{Duration, Instant};

use mayfly_client::status::StatusBits;
use mayfly_crypto::VerifyingKeys;
use mayfly_testkit::{TestEnv, TestServer, keys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, assert_error, now, peek};

const API: &str = "https://api.example.test";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

struct Env {
    env: TestEnv,
    key: mayfly_crypto::SigningKey,
}

impl Env {
    fn new() -> Env {
        let key = keys::es256("svc-1");
        let builder = TestEnv::builder().start_at(now());
        keys::write_jwks(&builder.dir().join("svc.jwks.json"), &[&key]);
        let env = builder
            .config(&format!(
                r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[leases]
grace = "30s"
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
"#
            ))
            .build();
        Env { env, key }
    }

    fn assertion(&self, s: &TestServer, id: &str) -> String {
        keys::assertion(&self.key, id, s.url(), s.now())
    }

    /// A client-credentials token of `id` with `extra` parameters.
    async fn token(&self, s: &TestServer, id: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let a = self.assertion(s, id);
        let mut f = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
            ("audience", API),
        ];
        f.extend_from_slice(extra);
        s.token(&f).await
    }

    /// A token that must be issued; (token, body).
    async fn issued(&self, s: &TestServer, extra: &[(&str, &str)]) -> (String, Value) {
        let (st, v) = self.token(s, "svc", extra).await;
        assert_eq!(st, 200, "{v}");
        (v["access_token"].as_str().unwrap().to_string(), v)
    }

    /// Whether introspection (by svc) says `token` is active.
    async fn active(&self, s: &TestServer, token: &str) -> bool {
        let a = self.assertion(s, "svc");
        let (st, v) = s
            .post_form(
                "/oauth2/introspect",
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", token),
                ],
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["active"] == true
    }

    /// Revoke `token` as svc (RFC 7009).
    async fn revoke(&self, s: &TestServer, token: &str) {
        let a = self.assertion(s, "svc");
        let (st, v) = s
            .post_form(
                "/oauth2/revoke",
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", token),
                ],
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
}

/// POST `/leases/{id}/{action}` with `bearer`; (status, WWW-Authenticate, body).
async fn lease_call(
    s: &TestServer,
    id: &str,
    action: &str,
    bearer: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = s.http().post(format!("{}/leases/{id}/{action}", s.url()));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, www, r.json().await.unwrap_or(Value::Null))
}

/// Poll `f` every 20 ms until it is true, for at most `limit`.
async fn within<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetch status list `uri`, check it is our signed `statuslist+jwt` for that URI, and return
/// its bit `idx` (true: revoked).
async fn list_bit(s: &TestServer, uri: &str, idx: usize) -> bool {
    assert!(
        uri.starts_with(&format!("{}/statuslists/", s.url())),
        "{uri}"
    );
    let r = s.http().get(uri).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/statuslist+jwt"
    );
    let jwt = r.text().await.unwrap();
    let (_, jwks) = s.get_json("/jwks.json").await;
    let keys = VerifyingKeys::from_jwks(&jwks).unwrap();
    let v = keys
        .verify::<Value>(
            &jwt,
            &[
                jsonwebtoken::Algorithm::EdDSA,
                jsonwebtoken::Algorithm::ES256,
            ],
        )
        .expect("the status list verifies with our JWKS");
    assert_eq!(v.header.typ.as_deref(), Some("statuslist+jwt"));
    assert!(v.header.kid.is_some());
    let claims = v.claims;
    assert_eq!(claims["sub"], json!(uri));
    assert_eq!(claims["ttl"], json!(60));
    let iat = claims["iat"].as_i64().unwrap();
    assert!(claims["exp"].as_i64().unwrap() >= iat + 60, "{claims}");
    assert_eq!(claims["status_list"]["bits"], json!(1));
    let bits = StatusBits::decode_lst(claims["status_list"]["lst"].as_str().unwrap(), 1).unwrap();
    bits.get(idx).expect("the list covers the index")
}

/// The bit of the list entry a token's `status` claim names (true: revoked).
async fn status_bit(s: &TestServer, token: &str) -> bool {
    let c = peek(token);
    let uri = c["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let idx = c["status"]["status_list"]["idx"].as_u64().unwrap() as usize;
    list_bit(s, &uri, idx).await
}

/// The bit of `token` becomes set within 3 s (the list is cached for 1 s).
async fn bit_set_soon(s: &TestServer, token: &str) -> bool {
    within(Duration::from_secs(3), || status_bit(s, token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holds_its_tokens_until_its_holder_ends_it() {
    let env = Env::new();
    let s = env.env.server().await;
    let (a, body) = env.issued(&s, &[("lease", "new")]).await;
    let id = body["lease_id"].as_str().unwrap().to_string();
    let c = peek(&a);
    assert_eq!(c["lease"], json!(id));
    assert!(c["status"]["status_list"]["idx"].is_u64(), "{c}");
    // A second token under the same lease.
    let (b, body) = env.issued(&s, &[("lease", id.as_str())]).await;
    assert_eq!(body["lease_id"], json!(id));
    assert_eq!(peek(&b)["lease"], json!(id));
    assert_ne!(peek(&b)["status"], c["status"]);
    // Heartbeat.
    let (st, _, v) = lease_call(&s, &id, "renew", Some(&a)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["lease_id"], &v["state"], &v["grace"]),
        (&json!(id), &json!("open"), &json!(30))
    );
    assert!(v["expires_at"].as_i64().unwrap() > s.now() + 3600, "{v}");
    assert!(env.active(&s, &a).await && env.active(&s, &b).await);
    assert!(!status_bit(&s, &a).await && !status_bit(&s, &b).await);
    // End: both tokens are revoked, at introspection and in the status list.
    let (st, _, v) = lease_call(&s, &id, "end", Some(&b)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"lease_id": id, "state": "ended", "revoked": 2}));
    assert!(!env.active(&s, &a).await);
    assert!(!env.active(&s, &b).await);
    assert!(bit_set_soon(&s, &a).await && bit_set_soon(&s, &b).await);
    let events = s.audit(20).await;
    let ends: Vec<&Value> = events.iter().filter(|e| e["kind"] == "lease_end").collect();
    assert_eq!(ends.len(), 1, "one event per end");
    let e = ends[0];
    assert_eq!(
        (&e["kind"], &e["lease"], &e["reason"], &e["revoked_count"]),
        (&json!("lease_end"), &json!(id), &json!("ended"), &json!(2)),
        "{e}"
    );
    let mut listed: Vec<String> = serde_json::from_value(e["revoked"].clone()).unwrap();
    listed.sort();
    let mut want = vec![
        peek(&a)["jti"].as_str().unwrap().to_string(),
        peek(&b)["jti"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(listed, want);
    // Ending again is answered, and revokes nothing more.
    let (st, _, v) = lease_call(&s, &id, "end", Some(&a)).await;
    assert_eq!((st, &v["revoked"]), (200, &json!(0)), "{v}");
    // The holder's heartbeat learns the lease ended: stop.
    let (st, _, v) = lease_call(&s, &id, "renew", Some(&a)).await;
    assert_eq!((st, &v["error"]), (409, &json!("lease_ended")), "{v}");
    // No new token under it.
    let got = env.token(&s, "svc", &[("lease", id.as_str())]).await;
    assert_error(&got, 400, "invalid_request");
    assert!(
        got.1["error_description"]
            .as_str()
            .unwrap()
            .contains("has ended")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_ends_a_lease_whose_heartbeat_stopped() {
    let env = Env::new();
    let s = env.env.server().await;
    let (a, body) = env.issued(&s, &[("lease", "new")]).await;
    let id = body["lease_id"].as_str().unwrap().to_string();
    // Heartbeats keep it open past the grace.
    s.advance(20);
    assert_eq!(lease_call(&s, &id, "renew", Some(&a)).await.0, 200);
    s.advance(20);
    assert!(env.active(&s, &a).await);
    // Then they stop: past the grace, the reaper (every second) ends it.
    s.advance(31);
    assert!(
        within(Duration::from_secs(5), || async {
            !env.active(&s, &a).await
        })
        .await,
        "the reaper did not end the lease within 5 s"
    );
    let events = s.audit(10).await;
    let e = events
        .iter()
        .find(|e| e["kind"] == "lease_end")
        .expect("a lease_end event");
    assert_eq!(
        (&e["lease"], &e["reason"], &e["revoked"]),
        (&json!(id), &json!("heartbeat"), &json!([peek(&a)["jti"]])),
        "{e}"
    );
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "lease_end").count(),
        1
    );
    let got = env.token(&s, "svc", &[("lease", id.as_str())]).await;
    assert_error(&got, 400, "invalid_request");
    let (st, _, v) = lease_call(&s, &id, "renew", Some(&a)).await;
    assert_eq!((st, &v["error"]), (409, &json!("lease_ended")), "{v}");
    assert!(bit_set_soon(&s, &a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_cannot_use_a_lease() {
    let env = Env::new();
    let s = env.env.server().await;
    let (_, body) = env.issued(&s, &[("lease", "new")]).await;
    let id = body["lease_id"].as_str().unwrap();
    let theirs = env.token(&s, "peer", &[("lease", id)]).await;
    assert_error(&theirs, 400, "invalid_request");
    let unknown = env.token(&s, "peer", &[("lease", "l-unknown")]).await;
    assert_error(&unknown, 400, "invalid_request");
    // The same words: whether another principal's lease exists is not revealed.
    assert_eq!(
        theirs.1["error_description"], unknown.1["error_description"],
        "{theirs:?}"
    );
    let e = s.last_event().await;
    assert_eq!(e["reason"], "unknown_lease", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_endpoints_refuse_tokens_not_under_the_lease() {
    let env = Env::new();
    let s = env.env.server().await;
    let (a, body) = env.issued(&s, &[("lease", "new")]).await;
    let id = body["lease_id"].as_str().unwrap().to_string();
    let (other, body) = env.issued(&s, &[("lease", "new")]).await;
    assert_ne!(body["lease_id"], json!(id));
    let (plain, _) = env.issued(&s, &[]).await;
    let forged = {
        let mut parts: Vec<String> = a.split('.').map(str::to_string).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    for action in ["renew", "end"] {
        for bearer in [
            None,
            Some("x.y.z"),
            Some(plain.as_str()),
            Some(other.as_str()),
            Some(forged.as_str()),
        ] {
            let (st, www, v) = lease_call(&s, &id, action, bearer).await;
            assert_eq!(
                (st, &v["error"]),
                (401, &json!("invalid_token")),
                "{action} {v}"
            );
            assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""));
        }
    }
    // An expired token of the lease is refused too (the lease itself is past its grace).
    s.advance(3601);
    let (st, _, v) = lease_call(&s, &id, "end", Some(&a)).await;
    assert_eq!((st, &v["error"]), (401, &json!("invalid_token")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_bits_follow_every_revocation() {
    let env = Env::new();
    let s = env.env.server().await;
    let (live, _) = env.issued(&s, &[]).await;
    // Client revocation.
    let (revoked, _) = env.issued(&s, &[]).await;
    env.revoke(&s, &revoked).await;
    // Cascade: a token exchanged from a token that is then revoked.
    let (parent, _) = env.issued(&s, &[]).await;
    let a = env.assertion(&s, "svc");
    let (st, v) = s
        .token(&[
            ("grant_type", EXCHANGE),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("subject_token", &parent),
            ("subject_token_type", TT_ACCESS),
            ("audience", API),
        ])
        .await;
    assert_eq!(st, 200, "{v}");
    let child = v["access_token"].as_str().unwrap().to_string();
    env.revoke(&s, &parent).await;
    // Lease end.
    let (leased, body) = env.issued(&s, &[("lease", "new")]).await;
    let id = body["lease_id"].as_str().unwrap();
    assert_eq!(lease_call(&s, id, "end", Some(&leased)).await.0, 200);
    for t in [&revoked, &parent, &child, &leased] {
        assert!(bit_set_soon(&s, t).await, "{}", peek(t)["jti"]);
        assert!(!env.active(&s, t).await);
    }
    assert!(!status_bit(&s, &live).await);
    assert!(env.active(&s, &live).await);
    // Workload exit: a JWT-SVID recorded with its slot (in list 1, at an index no token of
    // this test reaches), then its workload's exit reported.
    let slot = mayfly_store::StatusSlot { list: 1, idx: 255 };
    let t = s.now();
    s.store()
        .record_issued_svid("svid-1", "spiffe://example.org/w", Some(slot), t, t + 300)
        .await
        .unwrap();
    s.store()
        .record_svid_minter("svid-1", "spiffe://example.org/agent", t + 300)
        .await
        .unwrap();
    let uri = format!("{}/statuslists/1", s.url());
    let svid_bit = || list_bit(&s, &uri, 255);
    assert!(!svid_bit().await);
    s.store()
        .revoke_own_svids(
            "spiffe://example.org/agent",
            &["svid-1".to_string()],
            t,
            t + 300,
        )
        .await
        .unwrap();
    assert!(within(Duration::from_secs(3), svid_bit).await);
    // An unknown list is 404; the aggregation names list 1.
    let (st, _) = s.get_json("/statuslists/999").await;
    assert_eq!(st, 404);
    let (st, v) = s.get_json("/statuslists").await;
    assert_eq!((st, v), (200, json!({"status_lists": [uri]})));
    let (_, md) = s.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(
        md["status_list_aggregation_endpoint"],
        json!(format!("{}/statuslists", s.url()))
    );
}

/// Two `mayfly server` processes on one PostgreSQL database behind one issuer name: a lease
/// ended through one is over on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ended_on_one_replica_is_over_on_the_other() {
    const ISSUER: &str = "http://127.0.0.1:9";
    let db = mayfly_testkit::TestDb::create("mayfly_lease_replicas").await;
    let root = tempfile::tempdir().unwrap();
    let key = keys::es256("svc-1");
    keys::write_jwks(&root.path().join("svc.jwks.json"), &[&key]);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir_in(root.path()).unwrap();
        let port = mayfly_testkit::free_port();
        let config = dir.path().join("mayfly.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:{port}"
issuer = "{ISSUER}"
data_dir = "{}"
database = "{}"
[[clients]]
id = "svc"
jwks_file = "{}"
audiences = ["{API}"]
scopes = ["read"]
introspect = ["{API}"]
"#,
                dir.path().join("data").display(),
                db.url(),
                root.path().join("svc.jwks.json").display()
            ),
        )
        .unwrap();
        let server = crate::support::ServerProcess::start(dir.path(), &config, &[]);
        replicas.push((format!("http://127.0.0.1:{port}"), server, dir));
    }
    let http = reqwest::Client::new();
    let post = |r: usize, path: &'static str, form: Vec<(&'static str, String)>| {
        let url = format!("{}{path}", replicas[r].0);
        let http = http.clone();
        async move {
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(mayfly_testkit::form_urlencode(&pairs))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let auth = || {
        vec![
            ("client_assertion_type", ASSERTION_TYPE.to_string()),
            (
                "client_assertion",
                keys::assertion(&key, "svc", ISSUER, now()),
            ),
        ]
    };
    let token = |r: usize, lease: &str| {
        let mut f = auth();
        f.extend([
            ("grant_type", "client_credentials".to_string()),
            ("audience", API.to_string()),
            ("lease", lease.to_string()),
        ]);
        post(r, "/oauth2/token", f)
    };
    let active = |r: usize, t: &str| {
        let mut f = auth();
        f.push(("token", t.to_string()));
        let p = post(r, "/oauth2/introspect", f);
        async move {
            let (st, v) = p.await;
            assert_eq!(st, 200, "{v}");
            v["active"] == true
        }
    };
    let (st, v) = token(0, "new").await;
    assert_eq!(st, 200, "{v}");
    let a = v["access_token"].as_str().unwrap().to_string();
    let id = v["lease_id"].as_str().unwrap().to_string();
    // The lease is usable through either replica.
    let (st, v) = token(1, &id).await;
    assert_eq!(st, 200, "{v}");
    let b = v["access_token"].as_str().unwrap().to_string();
    assert_ne!(peek(&a)["status"], peek(&b)["status"]);
    assert!(active(1, &a).await && active(0, &b).await);
    let r = http
        .post(format!("{}/leases/{id}/end", replicas[0].0))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["revoked"], json!(2), "{v}");
    assert!(!active(1, &a).await);
    assert!(!active(1, &b).await);
    let got = token(1, &id).await;
    assert_error(&got, 400, "invalid_request");
}

const GHA_ISS: &str = "https://token.actions.githubusercontent.com";
const CI_SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String, repository?: String, repository_owner?: String,
  ref?: String, environment?: String, workflow?: String, actor?: String, trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;
const CI_POLICIES: &str = r#"
@id("ci-api")
permit(principal is Workload, action == Action::"token", resource == Audience::"https://api.example.test")
when { principal.issuer == "github" };
"#;

/// A token exchanged from a GitHub Actions job token lives under the job's lease (the same id
/// for every token of the job); once the job's lease has ended, the job gets no more tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_jobs_tokens_live_under_the_jobs_lease() {
    let gha = keys::es256("gha-1");
    let builder = TestEnv::builder().start_at(now());
    keys::write_jwks(&builder.dir().join("gha.jwks.json"), &[&gha]);
    let env = builder
        .policy_dir(CI_SCHEMA, CI_POLICIES)
        .config(&format!(
            r#"trust_domain = "example.org"
[policy]
dir = "policies"
[[issuers]]
name = "github"
issuer = "{GHA_ISS}"
preset = "github-actions"
jwks_file = "gha.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
trust_domain = "github.example.org"
"#
        ))
        .build();
    let s = env.server().await;
    let job_token = || {
        let n = s.now();
        let c = json!({"iss": GHA_ISS, "aud": "mayfly", "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
            "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 300,
            "repository": "octo-org/octo-repo", "ref": "refs/heads/main", "run_id": "42",
            "run_attempt": "1", "check_run_id": "777"});
        gha.sign_jwt(None, &c).unwrap()
    };
    let s = &s;
    let exchange = |t: String| async move {
        s.token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &t),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", API),
        ])
        .await
    };
    // SHA-256("github\nocto-org/octo-repo\n42\n1\n777"), first 32 hex digits.
    let want = "ci-6dcc7ca023519f52a7e3fa4957f82a8d";
    let (st, v) = exchange(job_token()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["lease_id"], json!(want));
    let first = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(peek(&first)["lease"], json!(want));
    let (st, v) = exchange(job_token()).await;
    assert_eq!((st, &v["lease_id"]), (200, &json!(want)), "{v}");
    let second = v["access_token"].as_str().unwrap().to_string();
    let lease = s
        .store()
        .lease(want)
        .await
        .unwrap()
        .expect("the job's lease");
    assert_eq!(
        (lease.kind, lease.grace, lease.expires_at - lease.created_at),
        (mayfly_store::LeaseKind::Ci, None, 6 * 3600)
    );
    // The job completes.
    let sel = mayfly_store::CiSelector {
        provider: "github".into(),
        project: "octo-org/octo-repo".into(),
        run: "42".into(),
        attempt: Some("1".into()),
        job: Some("777".into()),
    };
    let ends = s
        .store()
        .end_ci_leases(&sel, "ci_job_completed", s.now())
        .await
        .unwrap();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].revoked.len(), 2);
    assert!(bit_set_soon(s, &first).await && bit_set_soon(s, &second).await);
    let got = exchange(job_token()).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(s.last_event().await["reason"], "ci_job_ended");
}
