//! CI job end over real HTTP on loopback: tokens exchanged from GitHub Actions and GitLab CI
//! identity tokens live under their job's lease, and a signed job-end webhook (the documented
//! payload shape, `fixtures/`) ends exactly that job's lease: its tokens are `active: false`
//! at introspection, every other job's, run's and lease's tokens stay active. Replays are
//! ignored; bad signatures are refused and audited.

use std::os::unix::fs::PermissionsExt;

use mayfly_crypto::{KeyAlg, SigningKey};
use mayfly_testkit::{EXCHANGE, IssuerStub, TT_JWT, TestEnv, TestServer, keys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, peek};

pub const API: &str = "https://api.example.test";
pub const GHA_ISS: &str = "https://token.actions.githubusercontent.com";
pub const GL_ISS: &str = "https://gitlab.example.com";
pub const GH_SECRET: &str = "3f1c0a9e5b7d4c2e8a6f1b3d5c7e9a0b";
pub const GL_SECRET: &str = "gitlab-webhook-token-7c1e2a9f4b";
/// The job, run and repository of `fixtures/github_workflow_job_completed.json`.
pub const REPO: &str = "octo-org/example-workflow";
pub const RUN: &str = "940463255";
pub const JOB: &str = "2832853555";

const SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String,
  repository?: String, repository_owner?: String, ref?: String, environment?: String,
  workflow?: String, actor?: String, project_path?: String, pipeline_source?: String,
  trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read", "admin:tokens:revoke", "admin:read" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;

const POLICIES: &str = r#"
@id("ci-jobs-call-the-api")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "github" || principal.issuer == "gitlab" };
"#;

/// HMAC-SHA256 written out from RFC 2104 over SHA-256, independent of the server's HMAC.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&mayfly_crypto::sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&mayfly_crypto::sha256(&inner));
    mayfly_crypto::sha256(&outer)
}

/// `X-Hub-Signature-256` as GitHub computes it.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        mayfly_crypto::hex(&hmac_sha256(secret.as_bytes(), body))
    )
}

/// A server trusting GitHub Actions (`github`) and GitLab CI (`gitlab`) tokens from a stub
/// issuer, with webhook secrets (or without: `webhooks = false`), a resource server `rs` that
/// may introspect API tokens, a client `worker` (API, `read`), and operator clients `ops`
/// (`<issuer>/admin`, `admin:tokens:revoke`) and `viewer` (`<issuer>/admin`, `admin:read`).
pub struct Ci {
    pub env: TestEnv,
    pub s: TestServer,
    pub idp: IssuerStub,
    pub rs: SigningKey,
    pub worker: SigningKey,
    pub ops: SigningKey,
    pub viewer: SigningKey,
}

impl Ci {
    pub async fn start(webhooks: bool) -> Ci {
        let idp = IssuerStub::start(&[
            ("gha", KeyAlg::ES256, "gha-1"),
            ("gl", KeyAlg::ES256, "gl-1"),
        ])
        .await;
        let (rs, worker, ops, viewer) = (
            keys::es256("rs"),
            keys::es256("worker"),
            keys::es256("ops"),
            keys::es256("viewer"),
        );
        let b = TestEnv::builder().policy_dir(SCHEMA, POLICIES);
        for (name, k) in [
            ("rs", &rs),
            ("worker", &worker),
            ("ops", &ops),
            ("viewer", &viewer),
        ] {
            keys::write_jwks(&b.dir().join(format!("{name}.jwks.json")), &[k]);
        }
        for (name, secret) in [("gh.secret", GH_SECRET), ("gl.secret", GL_SECRET)] {
            let p = b.dir().join(name);
            std::fs::write(&p, format!("{secret}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let hooks = if webhooks {
            "[webhooks]\ngithub_secret_file = \"gh.secret\"\ngitlab_secret_file = \"gl.secret\"\n"
        } else {
            ""
        };
        let text = format!(
            r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[policy]
dir = "policies"
{hooks}
[[clients]]
id = "rs"
jwks_file = "rs.jwks.json"
audiences = ["{API}"]
introspect = ["{API}"]
[[clients]]
id = "worker"
jwks_file = "worker.jwks.json"
audiences = ["{API}"]
scopes = ["read"]
[[clients]]
id = "ops"
jwks_file = "ops.jwks.json"
audiences = ["${{ISSUER}}/admin"]
scopes = ["admin:tokens:revoke"]
[[clients]]
id = "viewer"
jwks_file = "viewer.jwks.json"
audiences = ["${{ISSUER}}/admin"]
scopes = ["admin:read"]
[[issuers]]
name = "github"
issuer = "{GHA_ISS}"
preset = "github-actions"
jwks_uri = "{}"
audiences = ["https://github.com/octo-org"]
algorithms = ["ES256"]
[[issuers]]
name = "gitlab"
issuer = "{GL_ISS}"
preset = "gitlab-ci"
jwks_uri = "{}"
audiences = ["mayfly"]
algorithms = ["ES256"]
"#,
            idp.jwks_uri("gha"),
            idp.jwks_uri("gl"),
        );
        let env = b.config(&text).build();
        let s = env.server().await;
        Ci {
            env,
            s,
            idp,
            rs,
            worker,
            ops,
            viewer,
        }
    }

    /// A GitHub Actions OIDC token (the claims GitHub documents) of one job.
    pub fn gha(&self, repo: &str, run: &str, attempt: &str, job: &str) -> String {
        let n = self.s.now();
        let owner = repo.split('/').next().unwrap();
        self.idp.mint(
            "gha",
            &json!({
                "jti": mayfly_crypto::random_id().unwrap(),
                "sub": format!("repo:{repo}:ref:refs/heads/main"),
                "aud": "https://github.com/octo-org",
                "ref": "refs/heads/main",
                "sha": "e3103f8eb03e1ad7f2331c5446b23c070fc54055",
                "repository": repo,
                "repository_owner": owner,
                "repository_owner_id": "33435655",
                "repository_id": "376034443",
                "repository_visibility": "private",
                "run_id": run,
                "run_number": "17",
                "run_attempt": attempt,
                "check_run_id": job,
                "actor": "octocat",
                "actor_id": "319655",
                "workflow": "CI",
                "workflow_ref": format!("{repo}/.github/workflows/ci.yml@refs/heads/main"),
                "job_workflow_ref": format!("{repo}/.github/workflows/ci.yml@refs/heads/main"),
                "event_name": "push",
                "ref_type": "branch",
                "runner_environment": "github-hosted",
                "iss": GHA_ISS,
                "nbf": n,
                "iat": n,
                "exp": n + 300
            }),
        )
    }

    /// A GitLab CI ID token (the claims GitLab documents) of one job.
    pub fn gitlab(&self, project: &str, pipeline: &str, job: &str) -> String {
        let n = self.s.now();
        self.idp.mint(
            "gl",
            &json!({
                "jti": mayfly_crypto::random_id().unwrap(),
                "iss": GL_ISS,
                "aud": "mayfly",
                "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
                "namespace_id": "72",
                "namespace_path": project.split('/').next().unwrap(),
                "project_id": "380",
                "project_path": project,
                "user_id": "3",
                "user_login": "user",
                "pipeline_id": pipeline,
                "pipeline_source": "push",
                "job_id": job,
                "ref": "main",
                "ref_type": "branch",
                "ref_protected": "true",
                "runner_id": 380987,
                "runner_environment": "gitlab-hosted",
                "nbf": n,
                "iat": n,
                "exp": n + 300
            }),
        )
    }

    /// Exchange a CI identity token; (access token, lease id).
    pub async fn exchange(&self, subject: &str) -> (String, String) {
        let (st, v) = self
            .s
            .token(&[
                ("grant_type", EXCHANGE),
                ("subject_token", subject),
                ("subject_token_type", TT_JWT),
                ("audience", API),
            ])
            .await;
        assert_eq!(st, 200, "{v}");
        let t = v["access_token"].as_str().unwrap().to_string();
        let lease = v["lease_id"].as_str().expect("a CI token is under a lease");
        assert_eq!(peek(&t)["lease"], lease);
        (t, lease.to_string())
    }

    /// A client-credentials token of `client` signed by `key`, with extra parameters.
    pub async fn client_token(
        &self,
        client: &str,
        key: &SigningKey,
        extra: &[(&str, &str)],
    ) -> Value {
        let a = keys::assertion(key, client, self.s.url(), self.s.now());
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
        ];
        form.extend_from_slice(extra);
        let (st, v) = self.s.token(&form).await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// `worker`'s token for the API under a new lease; (token, lease id).
    pub async fn leased(&self) -> (String, String) {
        let v = self
            .client_token(
                "worker",
                &self.worker,
                &[("audience", API), ("lease", "new")],
            )
            .await;
        (
            v["access_token"].as_str().unwrap().to_string(),
            v["lease_id"].as_str().unwrap().to_string(),
        )
    }

    /// Whether introspection (by the resource server) says `token` is active.
    pub async fn active(&self, token: &str) -> bool {
        let a = keys::assertion(&self.rs, "rs", self.s.url(), self.s.now());
        let (st, v) = self
            .s
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

    /// The newest audit event other than an introspection (the tests introspect to check).
    pub async fn last(&self) -> Value {
        self.s
            .audit(200)
            .await
            .into_iter()
            .rev()
            .find(|e| e["kind"] != "introspect")
            .expect("an audit event")
    }

    /// The bit of `token`'s entry in the status list its `status` claim names (true: revoked),
    /// read from the published list.
    pub async fn status_bit(&self, token: &str) -> bool {
        let c = peek(token);
        let uri = c["status"]["status_list"]["uri"]
            .as_str()
            .unwrap()
            .to_string();
        let idx = c["status"]["status_list"]["idx"].as_u64().unwrap() as usize;
        let r = self.s.http().get(&uri).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{uri}");
        let list = peek(&r.text().await.unwrap());
        let lst = list["status_list"]["lst"].as_str().unwrap();
        mayfly_client::status::StatusBits::decode_lst(lst, 1)
            .unwrap()
            .get(idx)
            .expect("the list covers the index")
    }

    /// Whether `token`'s status bit is set within 3 s (the list is cached for 1 s), polling
    /// every 20 ms.
    pub async fn status_bit_soon(&self, token: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            if self.status_bit(token).await {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// POST a webhook delivery; (status, JSON body).
    pub async fn deliver(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut req = self
            .s
            .http()
            .post(format!("{}{path}", self.s.url()))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    /// A GitHub delivery of `event` with id `delivery`, signed with `secret`.
    pub async fn github(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        secret: &str,
    ) -> (u16, Value) {
        let sig = github_signature(secret, body);
        self.deliver(
            "/webhooks/github",
            &[
                ("user-agent", "GitHub-Hookshot/7d7f0b1"),
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-github-hook-id", "292430182"),
                ("x-hub-signature-256", &sig),
            ],
            body,
        )
        .await
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/e2e/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The test's HMAC matches GitHub's documented example, so its signatures are GitHub's.
#[test]
fn the_test_signer_reproduces_githubs_documented_signature() {
    assert_eq!(
        github_signature("It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[tokio::test]
async fn a_signed_workflow_job_delivery_ends_exactly_that_jobs_lease() {
    let ci = Ci::start(true).await;
    let body = fixture("github_workflow_job_completed.json");
    // Two tokens of the job the delivery names (one lease), another job of the same run,
    // another run of the same repository, and a token under a lease of another kind.
    let (job_a, lease_a) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    let (job_a2, lease_a2) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    assert_eq!(lease_a, lease_a2, "the tokens of one job share its lease");
    let (job_b, lease_b) = ci.exchange(&ci.gha(REPO, RUN, "1", "2832853556")).await;
    let (run_c, lease_c) = ci
        .exchange(&ci.gha(REPO, "940463256", "1", "2832853999"))
        .await;
    let (leased, _) = ci.leased().await;
    assert_ne!(lease_a, lease_b);
    assert_ne!(lease_a, lease_c);
    for t in [&job_a, &job_a2, &job_b, &run_c, &leased] {
        assert!(ci.active(t).await);
    }

    let (st, v) = ci
        .github(
            "workflow_job",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            &body,
            GH_SECRET,
        )
        .await;
    assert_eq!((st, &v), (200, &json!({"ended": 1})));
    assert!(!ci.active(&job_a).await);
    assert!(!ci.active(&job_a2).await);
    for t in [&job_b, &run_c, &leased] {
        assert!(
            ci.active(t).await,
            "a token of another job, run or lease stays active"
        );
    }
    // Offline verifiers learn it from the status list.
    assert!(ci.status_bit_soon(&job_a).await);
    assert!(ci.status_bit_soon(&job_a2).await);
    assert!(!ci.status_bit(&job_b).await);
    let e = ci.last().await;
    assert_eq!(e["kind"], "lease_end", "{e}");
    assert_eq!(e["lease"], lease_a.as_str());
    assert_eq!(e["reason"], "ci_job_completed");
    assert_eq!(e["revoked_count"], 2);
    let mut revoked: Vec<&str> = e["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    revoked.sort_unstable();
    let (ja, ja2) = (peek(&job_a), peek(&job_a2));
    let mut want = [ja["jti"].as_str().unwrap(), ja2["jti"].as_str().unwrap()];
    want.sort_unstable();
    assert_eq!(revoked, want);
    let events = ci.s.audit(1000).await.len();

    // The same delivery again (GitHub's "Redeliver"): ignored, nothing recorded.
    let (st, v) = ci
        .github(
            "workflow_job",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            &body,
            GH_SECRET,
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["ignored"], "delivery already acted on");
    assert_eq!(ci.s.audit(1000).await.len(), events);
    // A copy under a new delivery id is harmless: the lease has already ended.
    let (st, v) = ci
        .github(
            "workflow_job",
            "a8e1f0b2-cc78-11e3-81ab-4c9367dc0958",
            &body,
            GH_SECRET,
        )
        .await;
    assert_eq!((st, &v), (200, &json!({"ended": 0})));
    for t in [&job_b, &run_c, &leased] {
        assert!(ci.active(t).await);
    }
    // The job is over: its identity token no longer buys a token.
    let (st, v) =
        ci.s.token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &ci.gha(REPO, RUN, "1", JOB)),
            ("subject_token_type", TT_JWT),
            ("audience", API),
        ])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );

    // workflow_run completed ends every remaining job lease of that run's attempt only.
    let run_body = serde_json::to_vec(&json!({
        "action": "completed",
        "workflow_run": {"id": 940463255u64, "run_attempt": 1, "name": "CI", "status": "completed",
                         "conclusion": "success", "head_branch": "main"},
        "repository": {"id": 376034443, "full_name": REPO},
        "sender": {"login": "octocat", "id": 319655}
    }))
    .unwrap();
    let (st, v) = ci
        .github(
            "workflow_run",
            "0b6f4a8c-cc79-11e3-81ab-4c9367dc0958",
            &run_body,
            GH_SECRET,
        )
        .await;
    assert_eq!((st, &v), (200, &json!({"ended": 1})));
    assert!(!ci.active(&job_b).await);
    assert!(ci.active(&run_c).await);
    assert!(ci.active(&leased).await);
}

#[tokio::test]
async fn a_wrongly_signed_or_unsigned_delivery_is_refused_and_audited() {
    let ci = Ci::start(true).await;
    let body = fixture("github_workflow_job_completed.json");
    let (job, _) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;

    let (st, v) = ci
        .github("workflow_job", "d1", &body, "not-the-configured-secret")
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid_signature")),
        "{v}"
    );
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["decision"].as_str()),
        (Some("deny"), Some("deny"))
    );
    assert_eq!(e["reason"], "webhook_signature_invalid");
    assert_eq!(e["route"], "webhooks/github");
    assert!(!e.to_string().contains(GH_SECRET));

    // Signed over another body: the payload was altered in transit.
    let sig = github_signature(GH_SECRET, b"{}");
    let (st, _) = ci
        .deliver(
            "/webhooks/github",
            &[
                ("x-github-event", "workflow_job"),
                ("x-github-delivery", "d2"),
                ("x-hub-signature-256", &sig),
            ],
            &body,
        )
        .await;
    assert_eq!(st, 401);
    assert_eq!(ci.last().await["reason"], "webhook_signature_invalid");

    let (st, v) = ci
        .deliver(
            "/webhooks/github",
            &[
                ("x-github-event", "workflow_job"),
                ("x-github-delivery", "d3"),
            ],
            &body,
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_signature")));
    assert_eq!(ci.last().await["reason"], "webhook_signature_missing");

    let (st, _) = ci
        .deliver(
            "/webhooks/github",
            &[
                ("x-github-event", "workflow_job"),
                ("x-github-delivery", "d4"),
                ("x-hub-signature-256", "sha1=00"),
            ],
            &body,
        )
        .await;
    assert_eq!(st, 401);
    assert_eq!(ci.last().await["reason"], "webhook_signature_malformed");
    assert!(ci.active(&job).await, "no refused delivery ended anything");

    // Over 1 MiB: refused before anything else.
    let big = vec![b' '; 1024 * 1024 + 1];
    let (st, _) = ci.github("workflow_job", "d5", &big, GH_SECRET).await;
    assert_eq!(st, 413);
    // Signed, but not the documented shape.
    let (st, v) = ci
        .github(
            "workflow_job",
            "d6",
            b"{\"action\":\"completed\"}",
            GH_SECRET,
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")));
    // Signed events mayfly does not act on.
    let (st, v) = ci
        .github(
            "ping",
            "d7",
            b"{\"zen\":\"Keep it logically awesome.\"}",
            GH_SECRET,
        )
        .await;
    assert_eq!((st, v["ignored"].as_str()), (202, Some("ping")));
    let queued =
        String::from_utf8(body.clone())
            .unwrap()
            .replacen("\"completed\"", "\"queued\"", 1);
    let (st, _) = ci
        .github("workflow_job", "d8", queued.as_bytes(), GH_SECRET)
        .await;
    assert_eq!(st, 202);
    assert!(ci.active(&job).await);
}

#[tokio::test]
async fn gitlab_job_events_end_the_jobs_lease() {
    let ci = Ci::start(true).await;
    let body = fixture("gitlab_job_success.json");
    let project = "gitlab-org/gitlab-test";
    let (done, lease) = ci.exchange(&ci.gitlab(project, "2366", "1977")).await;
    let (other, _) = ci.exchange(&ci.gitlab(project, "2366", "1978")).await;
    let headers = |uuid: &'static str, token: &'static str| {
        [
            ("x-gitlab-event", "Job Hook"),
            ("x-gitlab-token", token),
            ("x-gitlab-event-uuid", uuid),
            ("x-gitlab-instance", "https://gitlab.example.com"),
            ("idempotency-key", uuid),
        ]
    };
    let (st, v) = ci
        .deliver(
            "/webhooks/gitlab",
            &headers("6a3c9b2e-0f1d-4e5a-9b8c-7d6e5f4a3b2c", GL_SECRET),
            &body,
        )
        .await;
    assert_eq!((st, &v), (200, &json!({"ended": 1})));
    assert!(!ci.active(&done).await);
    assert!(ci.active(&other).await);
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["lease"].as_str()),
        (Some("lease_end"), Some(lease.as_str()))
    );
    assert_eq!(e["reason"], "ci_job_completed");

    let (st, _) = ci
        .deliver(
            "/webhooks/gitlab",
            &headers("6a3c9b2e-0f1d-4e5a-9b8c-7d6e5f4a3b2c", GL_SECRET),
            &body,
        )
        .await;
    assert_eq!(st, 202, "a replayed delivery is ignored");

    // The other job, still running: nothing to end yet.
    let running = String::from_utf8(body.clone())
        .unwrap()
        .replace("\"build_id\": 1977", "\"build_id\": 1978")
        .replace(
            "\"build_status\": \"success\"",
            "\"build_status\": \"running\"",
        );
    let (st, _) = ci
        .deliver(
            "/webhooks/gitlab",
            &headers("7b4d0c3f-0f1d-4e5a-9b8c-7d6e5f4a3b2c", GL_SECRET),
            running.as_bytes(),
        )
        .await;
    assert_eq!(st, 202);
    assert!(ci.active(&other).await);

    // A wrong token is refused and audited; the job's lease stays.
    let finished = running.replace("\"running\"", "\"failed\"");
    let (st, v) = ci
        .deliver(
            "/webhooks/gitlab",
            &headers(
                "8c5e1d4a-0f1d-4e5a-9b8c-7d6e5f4a3b2c",
                "gitlab-webhook-token-guess",
            ),
            finished.as_bytes(),
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_signature")));
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["reason"].as_str()),
        (Some("deny"), Some("webhook_signature_invalid"))
    );
    assert_eq!(e["route"], "webhooks/gitlab");
    assert!(ci.active(&other).await);
    // Its failure, signed: its lease ends.
    let (st, v) = ci
        .deliver(
            "/webhooks/gitlab",
            &headers("9d6f2e5b-0f1d-4e5a-9b8c-7d6e5f4a3b2c", GL_SECRET),
            finished.as_bytes(),
        )
        .await;
    assert_eq!((st, &v), (200, &json!({"ended": 1})));
    assert!(!ci.active(&other).await);
}

#[tokio::test]
async fn webhooks_are_off_without_a_secret() {
    let ci = Ci::start(false).await;
    let body = fixture("github_workflow_job_completed.json");
    let (st, v) = ci.github("workflow_job", "d1", &body, GH_SECRET).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")));
    let (st, _) = ci
        .deliver("/webhooks/gitlab", &[("x-gitlab-token", GL_SECRET)], &body)
        .await;
    assert_eq!(st, 404);
}

/// The real binary at trace level: the GitHub secret from `MAYFLY_WEBHOOK_GITHUB_SECRET`, the
/// GitLab one from a 0600 file; good and bad deliveries of both; neither secret is ever
/// printed (logs or the audit JSON lines).
#[tokio::test]
async fn the_real_server_takes_secrets_from_env_and_file_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let gl = dir.path().join("gl.secret");
    std::fs::write(&gl, GL_SECRET).unwrap();
    std::fs::set_permissions(&gl, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = crate::support::write_config(
        dir.path(),
        "[webhooks]\ngitlab_secret_file = \"gl.secret\"\n",
    );
    let mut server = crate::support::ServerProcess::start(
        dir.path(),
        &config,
        &[
            ("MAYFLY_LOG", "trace"),
            ("MAYFLY_WEBHOOK_GITHUB_SECRET", GH_SECRET),
        ],
    );
    let http = reqwest::Client::new();
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut req = http
            .post(format!("{}{path}", server.issuer))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = fixture("github_workflow_job_completed.json");
    let gh = |secret: &str, id: &str| {
        vec![
            ("x-github-event", "workflow_job".to_string()),
            ("x-github-delivery", id.to_string()),
            ("x-hub-signature-256", github_signature(secret, &body)),
        ]
    };
    let got = post("/webhooks/github", gh(GH_SECRET, "e1"), body.clone()).await;
    assert_eq!(got, (200, json!({"ended": 0})));
    let got = post(
        "/webhooks/github",
        gh("wrong-secret-0123456789", "e2"),
        body.clone(),
    )
    .await;
    assert_eq!(got.0, 401);
    let gl_body = fixture("gitlab_job_success.json");
    let glh = |token: &str, id: &str| {
        vec![
            ("x-gitlab-event", "Job Hook".to_string()),
            ("x-gitlab-token", token.to_string()),
            ("x-gitlab-event-uuid", id.to_string()),
        ]
    };
    let got = post("/webhooks/gitlab", glh(GL_SECRET, "g1"), gl_body.clone()).await;
    assert_eq!(got, (200, json!({"ended": 0})));
    let got = post(
        "/webhooks/gitlab",
        glh("not-the-token-0123456", "g2"),
        gl_body,
    )
    .await;
    assert_eq!(got.0, 401);
    server.kill9();
    let out = server.stdout.lock().unwrap().clone();
    let err = server.stderr.lock().unwrap().clone();
    assert!(
        out.contains("webhook_signature_invalid"),
        "the refusals were audited: {out}"
    );
    for secret in [GH_SECRET, GL_SECRET] {
        assert!(!out.contains(secret), "a secret in the audit output");
        assert!(!err.contains(secret), "a secret in the logs");
    }
}
