//! Who a federated token may speak for, in process over real HTTP: an issuer yields identities
//! only in its own trust domain (never ours), two issuers' identities never collide, an actor
//! token is held to its issuer's rules, every delegation goes through the policy set, and
//! JWTs of another type are neither client assertions nor subject tokens.

use std::sync::Arc;

use mayfly_crypto::SigningKey;
use mayfly_sts::{Clock, ManualClock};
use mayfly_testkit::server::ISSUER_PLACEHOLDER;
use mayfly_testkit::{TestEnv, TestServer, keys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, assert_error, peek};

const API: &str = "https://api.example.test";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

const PROD_ISS: &str = "https://prod.k8s.example";
const DEV_ISS: &str = "https://dev.k8s.example";
const PARTNER_ISS: &str = "https://partner.example";
const CI_ISS: &str = "https://ci.example";
const STRICT_ISS: &str = "https://strict.example";

const PROD_API: &str = "spiffe://k8s-prod.example.org/ns/payments/sa/api";
const PROD_GATEWAY: &str = "spiffe://k8s-prod.example.org/ns/payments/sa/gateway";

const SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String, namespace?: String, service_account?: String,
  trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;

/// Prod's payments API by its ID, exchanging its own platform token (with any actor); a
/// workload of our own trust domain by its ID (what a partner would like to claim); and one
/// delegation of a re-exchanged prod token.
const POLICIES: &str = r#"
@id("prod-payments-api")
permit(principal == Workload::"spiffe://k8s-prod.example.org/ns/payments/sa/api",
       action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "k8s-prod" };

@id("own-payments-api")
permit(principal == Workload::"spiffe://example.org/ns/payments/sa/api",
       action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test");

@id("partner-token")
permit(principal is Workload, action == Action::"token", resource == Audience::"https://api.example.test")
when { principal.issuer == "partner" };

@id("gateway-acts-for-prod")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "mayfly"
       && context.actor == "spiffe://k8s-prod.example.org/ns/payments/sa/gateway" };
"#;

struct Trust {
    _env: TestEnv,
    server: TestServer,
    issuer: String,
    clock: Arc<ManualClock>,
    idp: SigningKey,
    gateway: SigningKey,
}

impl Trust {
    async fn start() -> Trust {
        let idp = keys::es256("idp-1");
        let gateway = keys::es256("gw");
        let builder = TestEnv::builder().policy_dir(SCHEMA, POLICIES);
        keys::write_jwks(&builder.dir().join("idp.jwks.json"), &[&idp]);
        keys::write_jwks(&builder.dir().join("gateway.jwks.json"), &[&gateway]);
        let k8s = |name: &str, iss: &str, extra: &str| {
            format!(
                "[[issuers]]\nname = \"{name}\"\nissuer = \"{iss}\"\npreset = \"kubernetes\"\njwks_file = \"idp.jwks.json\"\naudiences = [\"mayfly\"]\nalgorithms = [\"ES256\"]\n{extra}"
            )
        };
        // Two clusters with identical claims, no trust_domain set: the defaults keep them apart.
        let text = format!(
            r#"trust_domain = "example.org"
[tokens]
max_ttl = "1h"
[policy]
dir = "policies"
[[clients]]
id = "gateway"
jwks_file = "gateway.jwks.json"
audiences = ["{API}", "{ISSUER_PLACEHOLDER}"]
scopes = ["read"]
{}{}{}{}[[issuers]]
name = "partner"
issuer = "{PARTNER_ISS}"
preset = "spiffe-jwt-svid"
trust_domain = "partner.example"
jwks_file = "idp.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
"#,
            k8s("k8s-prod", PROD_ISS, ""),
            k8s("k8s-dev", DEV_ISS, ""),
            k8s("ci", CI_ISS, "one_time_use = true\n"),
            k8s("strict", STRICT_ISS, "client_auth = \"required\"\n"),
        );
        let env = builder.config(&text).build();
        let server = env.server().await;
        Trust {
            issuer: server.url().to_string(),
            clock: env.clock().clone(),
            _env: env,
            server,
            idp,
            gateway,
        }
    }

    /// A projected service-account token from the cluster whose `iss` is `iss`.
    fn k8s(&self, iss: &str, ns: &str, sa: &str) -> String {
        let n = self.clock.now();
        self.idp
            .sign_jwt(
                None,
                &json!({
                    "aud": ["mayfly"], "iss": iss, "iat": n, "nbf": n, "exp": n + 600,
                    "jti": mayfly_crypto::random_id().unwrap(),
                    "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}},
                    "sub": format!("system:serviceaccount:{ns}:{sa}")
                }),
            )
            .unwrap()
    }

    /// A JWT-SVID from the federated partner, naming `sub`.
    fn partner_svid(&self, sub: &str) -> String {
        let n = self.clock.now();
        self.idp
            .sign_jwt(
                Some("JWT"),
                &json!({"iss": PARTNER_ISS, "aud": "mayfly", "sub": sub, "iat": n, "exp": n + 300}),
            )
            .unwrap()
    }

    fn assertion_claims(&self) -> Value {
        keys::assertion_claims("gateway", &self.issuer, self.clock.now())
    }

    fn assertion(&self) -> String {
        self.gateway
            .sign_jwt(None, &self.assertion_claims())
            .unwrap()
    }

    /// A client assertion signed by the gateway's key with a header of our choosing.
    fn assertion_with_header(&self, header: jsonwebtoken::Header) -> String {
        let der = self.gateway.to_pkcs8().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
        jsonwebtoken::encode(&header, &self.assertion_claims(), &key).unwrap()
    }

    async fn post(&self, form: &[(&str, &str)]) -> (u16, Value) {
        self.server.token(form).await
    }

    async fn exchange(&self, subject: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", TT_JWT),
            ("audience", API),
        ];
        form.extend_from_slice(extra);
        self.post(&form).await
    }

    /// The newest audit event.
    async fn last_event(&self) -> Value {
        self.server.last_event().await
    }

    /// The request was refused with `status`/`code`, and audited with `reason`.
    async fn refused(&self, got: (u16, Value), status: u16, code: &str, reason: &str) -> Value {
        assert_error(&got, status, code);
        let e = self.last_event().await;
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["reason"], reason, "{e}");
        e
    }
}

/// A federated JWT-SVID issuer speaks for its own trust domain only: a token naming a
/// workload of ours is refused (and a policy permitting that workload by ID never sees it).
#[tokio::test]
async fn a_partner_cannot_claim_an_identity_in_our_trust_domain() {
    let t = Trust::start().await;
    let ours = "spiffe://example.org/ns/payments/sa/api";
    let got = t.exchange(&t.partner_svid(ours), &[]).await;
    t.refused(got, 400, "invalid_request", "identity_outside_trust_domain")
        .await;
    // The JWT bearer grant says the same as invalid_grant (RFC 7523 §3.1).
    let got = t
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &t.partner_svid(ours)),
            ("audience", API),
        ])
        .await;
    t.refused(got, 400, "invalid_grant", "identity_outside_trust_domain")
        .await;
    // Another partner's trust domain, or a look-alike of the partner's: refused too.
    for sub in [
        "spiffe://k8s-prod.example.org/ns/payments/sa/api",
        "spiffe://partner.example.org/w",
    ] {
        let got = t.exchange(&t.partner_svid(sub), &[]).await;
        t.refused(got, 400, "invalid_request", "identity_outside_trust_domain")
            .await;
    }
    // Its own trust domain: accepted, and the identity says whose it is.
    let (s, body) = t
        .exchange(&t.partner_svid("spiffe://partner.example/billing"), &[])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["sub"],
        "spiffe://partner.example/billing"
    );
}

/// Two clusters (prod and dev) whose tokens carry identical claims map to two identities, and
/// a policy permitting prod's workload does not permit dev's.
#[tokio::test]
async fn two_issuers_with_identical_claims_yield_distinct_identities() {
    let t = Trust::start().await;
    let (s, body) = t
        .exchange(&t.k8s(PROD_ISS, "payments", "api"), &[("scope", "read")])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["sub"],
        PROD_API
    );
    let e = t.last_event().await;
    assert_eq!(e["identity"], PROD_API);
    assert_eq!(e["policies"], json!(["prod-payments-api"]));

    let got = t
        .exchange(&t.k8s(DEV_ISS, "payments", "api"), &[("scope", "read")])
        .await;
    let e = t
        .refused(got, 400, "invalid_target", "target_not_allowed")
        .await;
    assert_eq!(e["subject_issuer"], "k8s-dev");
    assert_eq!(
        e["identity"],
        "spiffe://k8s-dev.example.org/ns/payments/sa/api"
    );
    assert_ne!(e["identity"], PROD_API);
}

/// One of our own access tokens acts only when it was issued to be presented here.
#[tokio::test]
async fn an_actor_access_token_must_be_meant_for_this_server() {
    let t = &Trust::start().await;
    let cc = |aud: String| {
        let a = t.assertion();
        async move {
            let (s, body) = t
                .post(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("audience", &aud),
                ])
                .await;
            assert_eq!(s, 200, "{body}");
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    // A token the API was given (aud = the API) is not an actor credential.
    let for_api = cc(API.to_string()).await;
    let got = t
        .exchange(
            &t.k8s(PROD_ISS, "payments", "api"),
            &[("actor_token", &for_api), ("actor_token_type", TT_ACCESS)],
        )
        .await;
    t.refused(got, 400, "invalid_request", "actor_wrong_audience")
        .await;
    // One issued for this server is.
    let for_us = cc(t.issuer.clone()).await;
    let (s, body) = t
        .exchange(
            &t.k8s(PROD_ISS, "payments", "api"),
            &[("actor_token", &for_us), ("actor_token_type", TT_ACCESS)],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        peek(body["access_token"].as_str().unwrap())["act"],
        json!({"sub": "gateway"})
    );
}

/// A one-time actor token serves once (in either role), and an actor from an issuer that
/// requires client authentication needs an authenticated client.
#[tokio::test]
async fn actor_tokens_follow_their_issuers_rules() {
    let t = Trust::start().await;
    let subject = || t.k8s(PROD_ISS, "payments", "api");
    let once = t.k8s(CI_ISS, "payments", "batch");
    let with_actor = |a: &str| {
        [
            ("actor_token", a.to_string()),
            ("actor_token_type", TT_JWT.to_string()),
        ]
    };
    let form = with_actor(&once);
    let extra: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, body) = t.exchange(&subject(), &extra).await;
    assert_eq!(s, 200, "{body}");
    let got = t.exchange(&subject(), &extra).await;
    let e = t
        .refused(got, 400, "invalid_request", "actor_replayed")
        .await;
    assert_eq!(e["actor"], "spiffe://ci.example.org/ns/payments/sa/batch");

    // client_auth = "required": refused without a client, accepted with one.
    let strict = t.k8s(STRICT_ISS, "payments", "batch");
    let form = with_actor(&strict);
    let extra: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let got = t.exchange(&subject(), &extra).await;
    t.refused(got, 401, "invalid_client", "actor_client_auth_required")
        .await;
    let a = t.assertion();
    let mut authed = extra.clone();
    authed.extend([
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", a.as_str()),
    ]);
    let (s, body) = t.exchange(&subject(), &authed).await;
    assert_eq!(s, 200, "{body}");
}

/// Re-exchanging one of our tokens with a new actor is a delegation: the policy set decides
/// it (with `context.actor`), on top of the narrowing rule.
#[tokio::test]
async fn a_delegation_on_the_narrowing_path_is_decided_by_policy() {
    let t = &Trust::start().await;
    let (s, body) = t
        .exchange(&t.k8s(PROD_ISS, "payments", "api"), &[("scope", "read")])
        .await;
    assert_eq!(s, 200, "{body}");
    let ours = body["access_token"].as_str().unwrap().to_string();
    let jti = peek(&ours)["jti"].as_str().unwrap().to_string();
    let re = |actor: String| {
        let ours = ours.clone();
        async move {
            t.post(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &ours),
                ("subject_token_type", TT_ACCESS),
                ("actor_token", &actor),
                ("actor_token_type", TT_JWT),
            ])
            .await
        }
    };
    // The gateway may act for prod's API (policy `gateway-acts-for-prod`) ...
    let (s, body) = re(t.k8s(PROD_ISS, "payments", "gateway")).await;
    assert_eq!(s, 200, "{body}");
    let d = peek(body["access_token"].as_str().unwrap());
    assert_eq!(d["act"], json!({"sub": PROD_GATEWAY}));
    assert_eq!(d["scope"], "read");
    let e = t.last_event().await;
    assert_eq!(e["actor"], PROD_GATEWAY);
    assert_eq!(
        e["policies"],
        json!([format!("narrowing:{jti}"), "gateway-acts-for-prod"])
    );
    // ... no other workload may, though narrowing alone would allow it.
    let got = re(t.k8s(PROD_ISS, "payments", "batch")).await;
    let e = t
        .refused(got, 400, "invalid_target", "target_not_allowed")
        .await;
    assert_eq!(
        e["actor"],
        "spiffe://k8s-prod.example.org/ns/payments/sa/batch"
    );
    // Narrowing without a new actor stays a narrowing.
    let (s, body) = t
        .post(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &ours),
            ("subject_token_type", TT_ACCESS),
        ])
        .await;
    assert_eq!(s, 200, "{body}");
}

/// A client-credentials request from the gateway with assertion `a` and `scope`.
async fn cc(t: &Trust, a: String, scope: &str) -> (u16, Value) {
    t.post(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &a),
        ("audience", API),
        ("scope", scope),
    ])
    .await
}

/// An ES256 header under the gateway's kid with `typ`.
fn header(typ: Option<&str>) -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("gw".into());
    h.typ = typ.map(str::to_string);
    h
}

/// The trust server after the positive control: the gateway's assertion, untyped or typed
/// as a client assertion, is accepted, so each refusal is for the one thing its case changes.
async fn trust_after_control() -> Trust {
    let t = Trust::start().await;
    for typ in [None, Some("client-authentication+jwt")] {
        let (s, body) = cc(&t, t.assertion_with_header(header(typ)), "read").await;
        assert_eq!(s, 200, "{typ:?}: {body}");
    }
    t
}

/// RFC 7515 §4.1.11 at the token endpoint: a client assertion with a critical extension is
/// refused, and the audit names the client.
#[tokio::test]
async fn client_assertion_with_a_crit_extension_is_invalid_client() {
    let t = trust_after_control().await;
    let mut crit = header(Some("JWT"));
    crit.crit = Some(vec!["urn:example:must-understand".into()]);
    crit.extras.insert("urn:example:must-understand", true);
    let got = cc(&t, t.assertion_with_header(crit), "read").await;
    let e = t
        .refused(got, 401, "invalid_client", "unsupported_crit")
        .await;
    assert_eq!(e["client"], "gateway");
}

/// RFC 8725 §3.11: a client assertion typed as an access token is refused.
#[tokio::test]
async fn client_assertion_typed_as_an_access_token_is_invalid_client() {
    let t = trust_after_control().await;
    let got = cc(&t, t.assertion_with_header(header(Some("at+jwt"))), "read").await;
    t.refused(got, 401, "invalid_client", "assertion_wrong_type")
        .await;
}

/// `token` names the audience action, not a scope.
#[tokio::test]
async fn the_token_action_requested_as_a_scope_is_invalid_scope() {
    let t = trust_after_control().await;
    let got = cc(&t, t.assertion(), "read token").await;
    t.refused(got, 400, "invalid_scope", "scope_not_allowed")
        .await;
}

/// A client assertion signed by a trusted issuer's key is not a subject token.
#[tokio::test]
async fn a_client_assertion_presented_as_a_subject_token_is_invalid_request() {
    let t = trust_after_control().await;
    let n = t.clock.now();
    let assertion_typed = t
        .idp
        .sign_jwt(
            Some("client-authentication+jwt"),
            &json!({"aud": ["mayfly"], "iss": PROD_ISS, "iat": n, "exp": n + 60,
                    "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}},
                    "sub": "system:serviceaccount:payments:api"}),
        )
        .unwrap();
    let got = t.exchange(&assertion_typed, &[]).await;
    t.refused(got, 400, "invalid_request", "subject_wrong_type")
        .await;
}
