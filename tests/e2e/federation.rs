//! Workload-identity federation, in process over real HTTP with a fake clock: subject tokens
//! shaped exactly like a Kubernetes projected service-account token and a GitHub Actions OIDC
//! token, from a test issuer that serves its keys on loopback, exchanged (RFC 8693) and
//! presented as JWT bearer grants (RFC 7523), decided by Cedar policies from a directory.

use std::sync::Arc;

use mayfly_crypto::{KeyAlg, SigningKey};
use mayfly_server::App;
use mayfly_sts::{Clock, ManualClock};
use mayfly_testkit::{IssuerStub, TestEnv, TestServer, keys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, assert_error, form_urlencode, peek};

const API: &str = "https://api.example.test";
const DEPLOY: &str = "https://deploy.example.test";
const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const GHA_ISS: &str = "https://token.actions.githubusercontent.com";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

const SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String,
  namespace?: String, service_account?: String, repository?: String, repository_owner?: String,
  ref?: String, environment?: String, workflow?: String, actor?: String, project_path?: String,
  pipeline_source?: String, trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read", "write", "deploy" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;

const POLICIES: &str = r#"
@id("payments-read")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { (principal.issuer == "k8s-prod" || principal.issuer == "disco" || principal.issuer == "strict") && principal has namespace && principal.namespace == "payments" };

@id("deploy-from-main")
@max_ttl("10m")
permit(principal is Workload, action in [Action::"token", Action::"deploy"], resource == Audience::"https://deploy.example.test")
when { principal.issuer == "github" && principal has repository && principal.repository == "octo-org/octo-repo"
       && principal has ref && principal.ref == "refs/heads/main" };

@id("gateway-acts-for-payments")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "mayfly" && context.actor == "spiffe://k8s-prod.example.org/ns/payments/sa/gateway" };

@id("no-kube-system")
forbid(principal is Workload, action, resource)
when { principal has namespace && principal.namespace == "kube-system" };
"#;

struct Fed {
    env: TestEnv,
    server: TestServer,
    issuer: String,
    clock: Arc<ManualClock>,
    app: App,
    /// The platform side: the `k8s` and `gha` key sets on loopback, with a fetch counter and
    /// an outage switch, and the keys that sign their tokens.
    idp: IssuerStub,
    gateway: SigningKey,
}

impl Fed {
    async fn start() -> Fed {
        let idp = IssuerStub::start(&[
            ("k8s", KeyAlg::ES256, "k8s-1"),
            ("gha", KeyAlg::ES256, "gha-1"),
        ])
        .await;
        let gateway = keys::es256("gw");
        let base = idp.base();
        let redirect = idp.redirect_uri("k8s");
        let text = format!(
            r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[policy]
dir = "policies"
[[clients]]
id = "gateway"
jwks_file = "gateway.jwks.json"
audiences = ["{API}"]
scopes = ["read"]
[[issuers]]
name = "k8s-prod"
issuer = "{K8S_ISS}"
preset = "kubernetes"
jwks_uri = "{base}/k8s/jwks"
audiences = ["mayfly"]
algorithms = ["ES256"]
max_token_age = "1h"
[[issuers]]
name = "github"
issuer = "{GHA_ISS}"
preset = "github-actions"
jwks_uri = "{base}/gha/jwks"
audiences = ["https://github.com/octo-org"]
algorithms = ["ES256"]
max_token_age = "10m"
one_time_use = true
[[issuers]]
name = "disco"
issuer = "{base}"
preset = "kubernetes"
discovery = true
audiences = ["mayfly"]
algorithms = ["ES256"]
[[issuers]]
name = "strict"
issuer = "https://strict.example"
preset = "kubernetes"
jwks_uri = "{base}/k8s/jwks"
audiences = ["mayfly"]
algorithms = ["ES256"]
client_auth = "required"
[[issuers]]
name = "redirected"
issuer = "https://redirected.example"
preset = "kubernetes"
jwks_uri = "{redirect}"
audiences = ["mayfly"]
algorithms = ["ES256"]
"#
        );
        let builder = TestEnv::builder().policy_dir(SCHEMA, POLICIES);
        keys::write_jwks(&builder.dir().join("gateway.jwks.json"), &[&gateway]);
        let env = builder.config(&text).build();
        let server = env.server().await;
        Fed {
            issuer: server.url().to_string(),
            clock: env.clock().clone(),
            app: server.app().clone(),
            env,
            server,
            idp,
            gateway,
        }
    }

    /// A Kubernetes projected service-account token (the claims the kubelet requests).
    fn k8s_claims(&self, ns: &str, sa: &str) -> Value {
        let n = self.clock.now();
        json!({
            "aud": ["mayfly"],
            "exp": n + 3600,
            "iat": n,
            "nbf": n,
            "iss": K8S_ISS,
            "jti": mayfly_crypto::random_id().unwrap(),
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": "node-1", "uid": "6f2c1c9e-0c2a-4a1e-9f1f-3b4c5d6e7f80"},
                "pod": {"name": format!("{sa}-7d9f8b6c5-x2k4q"), "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": sa, "uid": "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"}
            },
            "sub": format!("system:serviceaccount:{ns}:{sa}")
        })
    }

    /// A GitHub Actions OIDC token (the claims GitHub documents), for a push to `git_ref`.
    fn gha_claims(&self, git_ref: &str) -> Value {
        let n = self.clock.now();
        json!({
            "jti": mayfly_crypto::random_id().unwrap(),
            "sub": format!("repo:octo-org/octo-repo:ref:{git_ref}"),
            "aud": "https://github.com/octo-org",
            "ref": git_ref,
            "sha": "d6e0b3a2c1f4e5d6a7b8c9d0e1f2a3b4c5d6e7f8",
            "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org",
            "repository_owner_id": "1342004",
            "repository_id": "74",
            "repository_visibility": "private",
            "run_id": "6229494860",
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "deploy",
            "workflow_ref": format!("octo-org/octo-repo/.github/workflows/deploy.yml@{git_ref}"),
            "workflow_sha": "d6e0b3a2c1f4e5d6a7b8c9d0e1f2a3b4c5d6e7f8",
            "job_workflow_ref": format!("octo-org/octo-repo/.github/workflows/deploy.yml@{git_ref}"),
            "job_workflow_sha": "d6e0b3a2c1f4e5d6a7b8c9d0e1f2a3b4c5d6e7f8",
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "environment": "production",
            "runner_environment": "github-hosted",
            "iss": GHA_ISS,
            "nbf": n,
            "iat": n,
            "exp": n + 300
        })
    }

    async fn post(&self, form: &[(&str, &str)]) -> (u16, Value) {
        self.server.token(form).await
    }

    async fn exchange(&self, subject: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", TT_JWT),
        ];
        form.extend_from_slice(extra);
        self.post(&form).await
    }

    /// The newest audit events (bodies), newest last.
    async fn audit(&self, n: i64) -> Vec<Value> {
        self.server.audit(n).await
    }

    /// `claims` signed by the cluster's key.
    fn k8s_token(&self, claims: &Value) -> String {
        self.idp.mint("k8s", claims)
    }

    fn gateway_assertion(&self) -> String {
        keys::assertion(&self.gateway, "gateway", &self.issuer, self.clock.now())
    }
}

#[tokio::test]
async fn kubernetes_and_github_tokens_exchanged_under_policy() {
    let f = Fed::start().await;

    // Kubernetes: allowed by `payments-read` -> sub is the mapped SPIFFE ID.
    let sa = f
        .idp
        .key("k8s")
        .sign_jwt(None, &f.k8s_claims("payments", "api"))
        .unwrap();
    let (s, body) = f
        .exchange(&sa, &[("audience", API), ("scope", "read")])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["token_type"], "Bearer");
    let t = peek(body["access_token"].as_str().unwrap());
    assert_eq!(t["sub"], "spiffe://k8s-prod.example.org/ns/payments/sa/api");
    assert_eq!(t["aud"], API);
    assert_eq!(t["scope"], "read");
    assert!(t.get("act").is_none());
    let e = f.audit(1).await.pop().unwrap();
    assert_eq!(e["kind"], "issue");
    assert_eq!(e["grant"], EXCHANGE);
    assert_eq!(e["subject_issuer"], "k8s-prod");
    assert_eq!(e["subject"], "system:serviceaccount:payments:api");
    assert_eq!(
        e["identity"],
        "spiffe://k8s-prod.example.org/ns/payments/sa/api"
    );
    assert_eq!(e["policies"], json!(["payments-read"]));

    // With an actor: the new token carries the act claim (RFC 8693 §4.1).
    let actor = f
        .idp
        .key("k8s")
        .sign_jwt(None, &f.k8s_claims("payments", "batch"))
        .unwrap();
    let (s, body) = f
        .exchange(
            &sa,
            &[
                ("audience", API),
                ("scope", "read"),
                ("actor_token", &actor),
                ("actor_token_type", TT_JWT),
            ],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let delegated = body["access_token"].as_str().unwrap().to_string();
    let t = peek(&delegated);
    assert_eq!(t["sub"], "spiffe://k8s-prod.example.org/ns/payments/sa/api");
    assert_eq!(
        t["act"],
        json!({"sub": "spiffe://k8s-prod.example.org/ns/payments/sa/batch"})
    );
    assert_eq!(
        f.audit(1).await.pop().unwrap()["actor"],
        "spiffe://k8s-prod.example.org/ns/payments/sa/batch"
    );
    // Re-exchanging that token with a further actor nests the chain, and may only narrow.
    let gw_actor = f
        .idp
        .key("k8s")
        .sign_jwt(None, &f.k8s_claims("payments", "gateway"))
        .unwrap();
    let (s, body) = f
        .post(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &delegated),
            ("subject_token_type", TT_ACCESS),
            ("actor_token", &gw_actor),
            ("actor_token_type", TT_JWT),
        ])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["act"],
        json!({"sub": "spiffe://k8s-prod.example.org/ns/payments/sa/gateway", "act": {"sub": "spiffe://k8s-prod.example.org/ns/payments/sa/batch"}})
    );

    // Denied by policy: the forbid decides, and the audit event names it.
    let ks = f
        .idp
        .key("k8s")
        .sign_jwt(None, &f.k8s_claims("kube-system", "api"))
        .unwrap();
    let got = f
        .exchange(&ks, &[("audience", API), ("scope", "read")])
        .await;
    assert_error(&got, 400, "invalid_target");
    let e = f.audit(1).await.pop().unwrap();
    assert_eq!(e["decision"], "deny");
    assert_eq!(e["reason"], "target_not_allowed");
    assert_eq!(e["policies"], json!(["no-kube-system"]));
    assert_eq!(
        e["identity"],
        "spiffe://k8s-prod.example.org/ns/kube-system/sa/api"
    );
    // A scope no policy grants: invalid_scope.
    let got = f
        .exchange(&sa, &[("audience", API), ("scope", "write")])
        .await;
    assert_error(&got, 400, "invalid_scope");

    // GitHub Actions: a push to main may deploy, capped at 10 minutes by @max_ttl.
    let main = f
        .idp
        .key("gha")
        .sign_jwt(None, &f.gha_claims("refs/heads/main"))
        .unwrap();
    let (s, body) = f
        .exchange(
            &main,
            &[
                ("audience", DEPLOY),
                ("scope", "deploy"),
                ("expires_in", "3600"),
            ],
        )
        .await;
    // The subject token has 300 s left: asking for more is refused ...
    assert_error(&(s, body), 400, "invalid_request");
    let main = f
        .idp
        .key("gha")
        .sign_jwt(None, &f.gha_claims("refs/heads/main"))
        .unwrap();
    let (s, body) = f
        .exchange(&main, &[("audience", DEPLOY), ("scope", "deploy")])
        .await;
    assert_eq!(s, 200, "{body}");
    let t = peek(body["access_token"].as_str().unwrap());
    assert_eq!(
        t["sub"],
        "spiffe://github.example.org/github/octo-org/octo-repo/refs/heads/main"
    );
    // ... and the default 5 minutes is clamped to what the subject token has left.
    assert_eq!(t["exp"].as_i64().unwrap() - t["iat"].as_i64().unwrap(), 300);
    assert_eq!(
        f.audit(1).await.pop().unwrap()["policies"],
        json!(["deploy-from-main"])
    );
    // One-time use: the same GitHub token again is refused, and recorded.
    let got = f
        .exchange(&main, &[("audience", DEPLOY), ("scope", "deploy")])
        .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        f.audit(1).await.pop().unwrap()["reason"],
        "subject_replayed"
    );
    // A feature branch may not deploy: default deny.
    let branch = f
        .idp
        .key("gha")
        .sign_jwt(None, &f.gha_claims("refs/heads/feature"))
        .unwrap();
    let got = f
        .exchange(&branch, &[("audience", DEPLOY), ("scope", "deploy")])
        .await;
    assert_error(&got, 400, "invalid_target");

    // The same trust rules as a JWT bearer grant (RFC 7523 §2.1); its errors are invalid_grant.
    let main = f
        .idp
        .key("gha")
        .sign_jwt(None, &f.gha_claims("refs/heads/main"))
        .unwrap();
    let (s, body) = f
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &main),
            ("audience", DEPLOY),
            ("scope", "deploy"),
        ])
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.get("issued_token_type").is_none());
    let got = f
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &main),
            ("audience", DEPLOY),
        ])
        .await;
    assert_error(&got, 400, "invalid_grant");

    // A client may authenticate as well; the token then names it as client_id.
    let sa2 = f
        .idp
        .key("k8s")
        .sign_jwt(None, &f.k8s_claims("payments", "api"))
        .unwrap();
    let a = f.gateway_assertion();
    let (s, body) = f
        .exchange(
            &sa2,
            &[
                ("audience", API),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
            ],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["client_id"],
        "gateway"
    );

    // The metadata advertises both grants.
    let md: Value = f
        .server
        .http()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            f.issuer
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grants = md["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!(EXCHANGE)) && grants.contains(&json!(JWT_BEARER)));
}

/// The federation server after the positive control: a good Kubernetes token is exchanged,
/// so each refusal below is for the one thing its case changes. Returns the good claims too.
async fn fed_after_control() -> (Fed, Value) {
    let f = Fed::start().await;
    let good = f.k8s_claims("payments", "api");
    let (s, body) = f.exchange(&f.k8s_token(&good), &ASK).await;
    assert_eq!(s, 200, "{body}");
    (f, good)
}

const ASK: [(&str, &str); 2] = [("audience", API), ("scope", "read")];

/// `got` is `invalid_request`, audited with `reason`.
async fn subject_refused(f: &Fed, got: (u16, Value), reason: &str) {
    assert_error(&got, 400, "invalid_request");
    let e = f.audit(1).await.pop().unwrap();
    assert_eq!(e["decision"], "deny", "{e}");
    assert_eq!(e["reason"], reason, "{e}");
}

/// The good claims changed by `edit`, signed by the cluster, are refused with `reason`.
async fn claims_refused(edit: impl FnOnce(&mut Value, i64), reason: &str) {
    let (f, mut c) = fed_after_control().await;
    edit(&mut c, f.clock.now());
    let got = f.exchange(&f.k8s_token(&c), &ASK).await;
    subject_refused(&f, got, reason).await;
}

#[tokio::test]
async fn subject_from_an_untrusted_issuer_is_invalid_request() {
    claims_refused(
        |c, _| c["iss"] = json!("https://evil.example"),
        "untrusted_issuer",
    )
    .await;
}

#[tokio::test]
async fn subject_for_another_audience_is_invalid_request() {
    claims_refused(
        |c, _| c["aud"] = json!(["someone-else"]),
        "subject_wrong_audience",
    )
    .await;
}

#[tokio::test]
async fn subject_expired_beyond_the_skew_is_invalid_request() {
    claims_refused(|c, n| c["exp"] = json!(n - 60), "subject_expired").await;
}

#[tokio::test]
async fn subject_issued_before_max_token_age_is_invalid_request() {
    claims_refused(
        |c, n| {
            c["iat"] = json!(n - 7200);
            c["nbf"] = json!(n - 7200);
        },
        "subject_too_old",
    )
    .await;
}

#[tokio::test]
async fn subject_signed_with_an_algorithm_outside_the_allow_list_is_invalid_request() {
    let (f, good) = fed_after_control().await;
    // EdDSA under a kid the issuer publishes.
    let ed = SigningKey::generate(KeyAlg::EdDSA, Some("ed-1")).unwrap();
    f.idp.publish("k8s", ed.public_jwk().clone());
    let got = f.exchange(&ed.sign_jwt(None, &good).unwrap(), &ASK).await;
    subject_refused(&f, got, "subject_algorithm_not_allowed").await;
}

#[tokio::test]
async fn subject_without_the_identity_template_claim_is_invalid_request() {
    claims_refused(
        |c, _| c["kubernetes.io"]["serviceaccount"] = json!({"uid": "x"}),
        "identity_mapping",
    )
    .await;
}

#[tokio::test]
async fn subject_claim_making_an_unsafe_spiffe_path_segment_is_invalid_request() {
    claims_refused(
        |c, _| c["kubernetes.io"]["namespace"] = json!(".."),
        "identity_mapping",
    )
    .await;
}

#[tokio::test]
async fn lifetime_beyond_the_subjects_is_invalid_request() {
    let (f, mut c) = fed_after_control().await;
    c["exp"] = json!(f.clock.now() + 120);
    let got = f
        .exchange(
            &f.k8s_token(&c),
            &[("audience", API), ("scope", "read"), ("expires_in", "600")],
        )
        .await;
    subject_refused(&f, got, "lifetime_beyond_subject").await;
}

#[tokio::test]
async fn unsupported_subject_token_type_is_invalid_request() {
    let (f, good) = fed_after_control().await;
    let got = f
        .post(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &f.k8s_token(&good)),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            ),
        ])
        .await;
    subject_refused(&f, got, "unsupported_subject_token_type").await;
}

#[tokio::test]
async fn missing_subject_token_type_is_invalid_request() {
    let (f, good) = fed_after_control().await;
    let got = f
        .post(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &f.k8s_token(&good)),
        ])
        .await;
    subject_refused(&f, got, "missing_parameter").await;
}

/// One of our own tokens, exchanged again with `scope` for `aud`.
async fn re_exchange(f: &Fed, good: &Value, scope: &str, aud: &str) -> (u16, Value) {
    let (s, body) = f.exchange(&f.k8s_token(good), &ASK).await;
    assert_eq!(s, 200, "{body}");
    let ours = body["access_token"].as_str().unwrap().to_string();
    f.post(&[
        ("grant_type", EXCHANGE),
        ("subject_token", &ours),
        ("subject_token_type", TT_ACCESS),
        ("scope", scope),
        ("audience", aud),
    ])
    .await
}

#[tokio::test]
async fn re_exchange_widening_the_scope_is_invalid_scope() {
    let (f, good) = fed_after_control().await;
    assert_error(
        &re_exchange(&f, &good, "read write", API).await,
        400,
        "invalid_scope",
    );
}

#[tokio::test]
async fn re_exchange_for_another_audience_is_invalid_target() {
    let (f, good) = fed_after_control().await;
    assert_error(
        &re_exchange(&f, &good, "read", DEPLOY).await,
        400,
        "invalid_target",
    );
}

#[tokio::test]
async fn re_exchange_can_only_narrow_and_is_decided_by_the_narrowing_policy() {
    let (f, good) = fed_after_control().await;
    let (s, body) = re_exchange(&f, &good, "read", API).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        f.audit(1).await.pop().unwrap()["policies"][0]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("narrowing")
    );
}

#[tokio::test]
async fn issuer_keys_are_cached_refreshed_once_and_survive_an_outage() {
    let f = Fed::start().await;
    let ask = [("audience", API), ("scope", "read")];
    let sa = || {
        f.idp
            .key("k8s")
            .sign_jwt(None, &f.k8s_claims("payments", "api"))
            .unwrap()
    };
    let (s, body) = f.exchange(&sa(), &ask).await;
    assert_eq!(s, 200, "{body}");
    let fetches = || f.idp.fetches("k8s");
    assert_eq!(fetches(), 1, "first use fetches the keys");

    // A burst of 1,000 requests under a kid the issuer does not publish: at most one fetch.
    let rogue = SigningKey::generate(KeyAlg::ES256, Some("rogue")).unwrap();
    let forged = rogue
        .sign_jwt(None, &f.k8s_claims("payments", "api"))
        .unwrap();
    f.clock.advance(31);
    let before = fetches();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (http, url, forged, sem) = (
            f.server.http().clone(),
            format!("{}/oauth2/token", f.issuer),
            forged.clone(),
            sem.clone(),
        );
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let body = form_urlencode(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &forged),
                ("subject_token_type", TT_JWT),
                ("audience", API),
            ]);
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (s, v)
        });
    }
    while let Some(r) = set.join_next().await {
        assert_error(&r.unwrap(), 400, "invalid_request");
    }
    assert!(
        fetches() - before <= 1,
        "{} fetches for one burst",
        fetches() - before
    );
    assert_eq!(
        f.audit(1).await.pop().unwrap()["reason"],
        "subject_unknown_key"
    );

    // The issuer rotates: a new kid is accepted once a refresh is allowed again.
    let k2 = SigningKey::generate(KeyAlg::ES256, Some("k8s-2")).unwrap();
    f.idp.publish("k8s", k2.public_jwk().clone());
    f.clock.advance(31);
    let n = fetches();
    let (s, body) = f
        .exchange(
            &k2.sign_jwt(None, &f.k8s_claims("payments", "api")).unwrap(),
            &ask,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(fetches(), n + 1);

    // Outage: the issuer's key endpoint is down and the cache is stale; cached keys still verify.
    f.idp.set_down(true);
    f.clock.advance(600);
    let n = fetches();
    let (s, body) = f.exchange(&sa(), &ask).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(fetches(), n + 1, "one attempt to refresh, which failed");
    let (s, _) = f.exchange(&sa(), &ask).await;
    assert_eq!(s, 200);
    assert_eq!(fetches(), n + 1, "failed attempts are rate-limited too");
    let _ = f.env.dir();
}

#[tokio::test]
async fn policy_reload_applies_valid_sets_and_refuses_invalid_ones() {
    let f = Fed::start().await;
    let sa = || {
        f.idp
            .key("k8s")
            .sign_jwt(None, &f.k8s_claims("payments", "api"))
            .unwrap()
    };
    let write = [("audience", API), ("scope", "write")];
    assert_error(&f.exchange(&sa(), &write).await, 400, "invalid_scope");

    // A valid change applies without a restart.
    let extra = r#"@id("payments-write")
permit(principal is Workload, action == Action::"write", resource == Audience::"https://api.example.test")
when { principal has namespace && principal.namespace == "payments" };
"#;
    // Every reload that changes something is a `policy_change` event: (decision, reason).
    let policy_events = || async {
        f.audit(1000)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "policy_change")
            .map(|e| {
                (
                    e["decision"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = policy_events().await.len();
    std::fs::write(f.env.dir().join("policies/write.cedar"), extra).unwrap();
    // A changed text applies once two ticks in a row read it (a file caught half-written
    // must not decide): not at the first tick...
    f.app.tick().await.unwrap();
    assert_error(&f.exchange(&sa(), &write).await, 400, "invalid_scope");
    assert_eq!(policy_events().await.len(), before);
    // ...at the second.
    f.app.tick().await.unwrap();
    let (s, body) = f.exchange(&sa(), &write).await;
    assert_eq!(s, 200, "{body}");
    let got = policy_events().await;
    assert_eq!(got.len(), before + 1, "{got:?}");
    let (decision, reason) = &got[before];
    assert_eq!(decision, "allow");
    let applied = reason
        .strip_prefix("sha256:")
        .expect("the set's fingerprint");
    assert_eq!(applied.len(), 64);
    // A tick with nothing changed records nothing.
    f.app.tick().await.unwrap();
    assert_eq!(policy_events().await.len(), before + 1);

    // An invalid set (here: an attribute the schema does not have) is refused whole; the
    // previous set stays in force, also when reloading by hand (SIGHUP).
    std::fs::write(
        f.env.dir().join("policies/bad.cedar"),
        "permit(principal is Workload, action, resource) when { principal.colour == \"red\" };",
    )
    .unwrap();
    f.app.tick().await.unwrap();
    f.app.tick().await.unwrap();
    assert!(!f.app.reload_policy().await);
    let (s, body) = f.exchange(&sa(), &write).await;
    assert_eq!(s, 200, "{body}");
    // Refused at the tick and again by hand: each a deny, the set in force unchanged.
    let got = policy_events().await;
    assert_eq!(
        got[before + 1..],
        [
            ("deny".to_string(), "policy_refused".to_string()),
            ("deny".to_string(), "policy_refused".to_string())
        ],
        "{got:?}"
    );
    let got = f
        .exchange(&sa(), &[("audience", DEPLOY), ("scope", "deploy")])
        .await;
    assert_error(&got, 400, "invalid_target");

    // Fixed: it applies.
    std::fs::remove_file(f.env.dir().join("policies/bad.cedar")).unwrap();
    std::fs::remove_file(f.env.dir().join("policies/write.cedar")).unwrap();
    assert!(f.app.reload_policy().await);
    assert_error(&f.exchange(&sa(), &write).await, 400, "invalid_scope");
    let got = policy_events().await;
    assert_eq!(got.len(), before + 4, "{got:?}");
    assert_eq!(got[before + 3].0, "allow");
    assert_ne!(
        got[before + 3].1,
        format!("sha256:{applied}"),
        "another set, another fingerprint"
    );
}

#[tokio::test]
async fn keys_by_discovery_and_never_across_hosts() {
    let f = Fed::start().await;
    let ask = [("audience", API), ("scope", "read")];
    // Discovery: {issuer}/.well-known/openid-configuration names the jwks_uri.
    let mut c = f.k8s_claims("payments", "api");
    c["iss"] = json!(f.idp.base());
    let (s, body) = f
        .exchange(&f.idp.key("k8s").sign_jwt(None, &c).unwrap(), &ask)
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["sub"],
        "spiffe://disco.example.org/ns/payments/sa/api"
    );
    // A jwks_uri that redirects to another host is not followed: no keys, so 503.
    let mut c = f.k8s_claims("payments", "api");
    c["iss"] = json!("https://redirected.example");
    let got = f
        .exchange(&f.idp.key("k8s").sign_jwt(None, &c).unwrap(), &ask)
        .await;
    assert_error(&got, 503, "temporarily_unavailable");
}

#[tokio::test]
async fn an_issuer_can_require_client_authentication() {
    let f = Fed::start().await;
    let ask = [("audience", API), ("scope", "read")];
    let mut c = f.k8s_claims("payments", "api");
    c["iss"] = json!("https://strict.example");
    let sa = f.idp.key("k8s").sign_jwt(None, &c).unwrap();
    // The subject token alone is not enough for this issuer.
    assert_error(&f.exchange(&sa, &ask).await, 401, "invalid_client");
    assert_eq!(
        f.audit(1).await.pop().unwrap()["reason"],
        "client_auth_required"
    );
    // With a registered client's assertion it is.
    let a = f.gateway_assertion();
    let (s, body) = f
        .exchange(
            &sa,
            &[
                ("audience", API),
                ("scope", "read"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
            ],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let t = peek(body["access_token"].as_str().unwrap());
    assert_eq!(t["client_id"], "gateway");
    assert_eq!(t["sub"], "spiffe://strict.example.org/ns/payments/sa/api");
}

/// The real binary rebuilds its policy set on SIGHUP: a forbid removed from the directory stops
/// applying within moments of the signal (the periodic check runs only every 10 s here).
#[tokio::test]
async fn sighup_reloads_the_policy_set_of_the_running_binary() {
    use crate::fixture::now as wall;
    use crate::support::{ServerProcess, write_config};
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
    std::fs::write(
        dir.path().join("svc.jwks.json"),
        json!({"keys": [key.public_jwk()]}).to_string(),
    )
    .unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(
        policies.join("freeze.cedar"),
        "@id(\"freeze-reads\")\nforbid(principal == Client::\"svc\", action == Action::\"read\", resource);\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[policy]\ndir = \"{}\"\n[[clients]]\nid = \"svc\"\njwks_file = \"svc.jwks.json\"\naudiences = [\"{API}\"]\nscopes = [\"read\"]\n",
            policies.display()
        ),
    );
    let (server, dir) = tokio::task::spawn_blocking(move || {
        let s = ServerProcess::start(dir.path(), &config, &[]);
        (s, dir)
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let ask = || {
        let n = wall();
        let a = key
            .sign_jwt(None, &json!({"iss": "svc", "sub": "svc", "aud": server.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}))
            .unwrap();
        let body = form_urlencode(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("scope", "read"),
        ]);
        let (http, url) = (http.clone(), format!("{}/oauth2/token", server.issuer));
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    assert_error(&ask().await, 400, "invalid_scope");
    std::fs::remove_file(policies.join("freeze.cedar")).unwrap();
    let pid = server.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let (s, body) = ask().await;
        if s == 200 {
            break;
        }
        assert_error(&(s, body), 400, "invalid_scope");
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the policy set"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        server
            .stderr
            .lock()
            .unwrap()
            .contains("policy set reloaded")
    );
    drop(dir);
}
