//! The in-memory world the pipeline tests run against.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use jsonwebtoken::Algorithm;
use mayfly_crypto::{KeyAlg, SigningKey, VerifyingKeys};
use mayfly_proto::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use serde_json::{Value, json};

use crate::authz::ACTION_TOKEN;
use crate::federation::{ClientAuthRule, TrustedIssuer, preset};
use crate::identity::IdentityTemplate;
use crate::{
    Authorizer, AuthzDecision, AuthzQuery, Client, Clients, Denial, FormRequest, Issued,
    IssuerKeys, LeaseSettings, LeaseView, Lifecycle, ManualClock, Outcome, OwnKeys, Refusal,
    Revocation, Settings, StatusSlot, Sts,
};

pub const NOW: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://sts.example";
pub const TOKEN_ENDPOINT: &str = "https://sts.example/oauth2/token";
pub const API: &str = "https://api.example";
pub const OTHER: &str = "https://other.example";
pub const DEPLOY: &str = "https://deploy.example";
pub const K8S: &str = "https://k8s.example";
pub const K8S_DEV: &str = "https://k8s-dev.example";
pub const CI: &str = "https://ci.example";
pub const STRICT: &str = "https://strict.example";
pub const PARTNER: &str = "https://partner.example";
pub const DOWN: &str = "https://down.example";
pub const GHA: &str = "https://gha.example";
pub const GHA_ID: &str = "spiffe://gha.example.org/github/acme/app/refs/heads/main";
pub const PAYMENTS_API: &str = "spiffe://k8s.example.org/ns/payments/sa/api";
pub const PAYMENTS_GATEWAY: &str = "spiffe://k8s.example.org/ns/payments/sa/gateway";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const EXCHANGE: &str = GRANT_TOKEN_EXCHANGE;
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TT_JWT: &str = TOKEN_TYPE_JWT;
pub const TT_ACCESS: &str = TOKEN_TYPE_ACCESS_TOKEN;

/// Poll a future to completion; the in-memory ports never wait.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// One permit or forbid: `principal` ("*" for any) may have `actions` on `audience`, acting
/// alone (`actor: None`) or through `actor`.
pub struct Rule {
    pub id: &'static str,
    pub principal: &'static str,
    pub audience: &'static str,
    pub actions: &'static [&'static str],
    pub actor: Option<&'static str>,
    pub forbid: bool,
    pub max_ttl: Option<i64>,
}

/// A tiny default-deny policy set: a matching forbid wins, else any matching permit allows.
pub struct Rules(pub Vec<Rule>);

impl Authorizer for Rules {
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
        let matching: Vec<&Rule> = self
            .0
            .iter()
            .filter(|r| {
                (r.principal == "*" || r.principal == q.principal.id)
                    && r.audience == q.audience
                    && r.actions.contains(&q.action)
                    && r.actor.unwrap_or("") == q.actor
            })
            .collect();
        if let Some(f) = matching.iter().find(|r| r.forbid) {
            mayfly_proto::authz::record(trace, f.id);
            return AuthzDecision {
                allow: false,
                max_ttl: None,
            };
        }
        for r in &matching {
            mayfly_proto::authz::record(trace, r.id);
        }
        AuthzDecision {
            allow: !matching.is_empty(),
            max_ttl: matching.iter().filter_map(|r| r.max_ttl).min(),
        }
    }
}

fn permit(
    id: &'static str,
    principal: &'static str,
    audience: &'static str,
    actions: &'static [&'static str],
) -> Rule {
    Rule {
        id,
        principal,
        audience,
        actions,
        actor: None,
        forbid: false,
        max_ttl: None,
    }
}

fn rules() -> Rules {
    let kube_system = "spiffe://k8s.example.org/ns/kube-system/sa/api";
    Rules(vec![
        permit("svc-api", "svc", API, &[ACTION_TOKEN, "read"]),
        permit("svc-other", "svc", OTHER, &[ACTION_TOKEN, "read"]),
        permit("rotating-api", "rotating", API, &[ACTION_TOKEN]),
        permit("gateway-self", "gateway", ISSUER, &[ACTION_TOKEN]),
        permit("svc-self", "svc", ISSUER, &[ACTION_TOKEN]),
        permit("payments-api", PAYMENTS_API, API, &[ACTION_TOKEN, "read"]),
        permit("gha-api", GHA_ID, API, &[ACTION_TOKEN]),
        permit("any-api", kube_system, API, &[ACTION_TOKEN, "read"]),
        Rule {
            forbid: true,
            ..permit("no-kube-system", kube_system, API, &[ACTION_TOKEN])
        },
        Rule {
            max_ttl: Some(120),
            ..permit(
                "batch-deploy",
                "spiffe://ci.example.org/ns/payments/sa/batch",
                DEPLOY,
                &[ACTION_TOKEN, "deploy"],
            )
        },
        permit(
            "svid-api",
            "spiffe://example.org/w",
            API,
            &[ACTION_TOKEN, "read"],
        ),
        Rule {
            actor: Some(PAYMENTS_GATEWAY),
            ..permit("gateway-acts", PAYMENTS_API, API, &[ACTION_TOKEN, "read"])
        },
        Rule {
            actor: Some("svc"),
            ..permit("svc-acts", PAYMENTS_API, API, &[ACTION_TOKEN, "read"])
        },
        Rule {
            actor: Some("spiffe://ci.example.org/ns/payments/sa/batch"),
            ..permit("batch-acts", PAYMENTS_API, API, &[ACTION_TOKEN, "read"])
        },
    ])
}

fn keys_of(ks: &[&SigningKey]) -> VerifyingKeys {
    let jwks: Vec<Value> = ks.iter().map(|k| k.public_jwk().clone()).collect();
    VerifyingKeys::from_jwks(&json!({ "keys": jwks })).unwrap()
}

fn client(id: &str, keys: &[&SigningKey], audiences: &[&str]) -> Arc<Client> {
    Arc::new(Client {
        id: id.into(),
        keys: Arc::new(keys_of(keys)),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        scopes: vec!["read".into()],
        max_ttl: 3600,
    })
}

fn trusted(name: &str, iss: &str, preset_name: &str, td: &str) -> TrustedIssuer {
    let p = preset(preset_name).unwrap();
    TrustedIssuer {
        name: name.into(),
        issuer: iss.into(),
        audiences: vec!["mayfly".into()],
        algorithms: vec![Algorithm::ES256],
        max_token_age: 3600,
        trust_domain: td.into(),
        identity: IdentityTemplate::parse(p.identity).unwrap(),
        attributes: p
            .attributes
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        one_time_use: false,
        client_auth: ClientAuthRule::Optional,
        max_ttl: 3600,
        ci: None,
    }
}

/// Keys, clients, issuers and the revocation list, all in memory.
pub struct Mem {
    pub clients: HashMap<String, Arc<Client>>,
    /// What a refetch of a client's keys installs.
    pub rotated: HashMap<String, Arc<Client>>,
    pub issuers: Vec<(TrustedIssuer, VerifyingKeys)>,
    pub signing: Arc<SigningKey>,
    pub verifying: Arc<VerifyingKeys>,
    pub svid_issuer: TrustedIssuer,
    pub svid_keys: Arc<VerifyingKeys>,
    pub revoked: Mutex<HashSet<String>>,
    pub svid_revoked: Mutex<HashSet<String>>,
    /// Leases by id (what the store would hold).
    pub leases: Mutex<HashMap<String, LeaseView>>,
    /// The next status index handed out (list 1).
    pub next_idx: AtomicU64,
}

impl Clients for Mem {
    async fn client(&self, id: &str, _now: i64) -> Option<Arc<Client>> {
        self.clients.get(id).cloned()
    }

    async fn refresh_keys(&self, id: &str, _now: i64) -> Result<Option<Arc<Client>>, Denial> {
        Ok(self.rotated.get(id).cloned())
    }
}

impl IssuerKeys for Mem {
    async fn verify_federated<T, F>(
        &self,
        iss: &str,
        _now: i64,
        verify: F,
    ) -> Option<Result<T, Denial>>
    where
        T: Send,
        F: Fn(&TrustedIssuer, &VerifyingKeys) -> Result<T, Denial> + Send + Sync,
    {
        if iss == DOWN {
            // Keys never fetched and not fetchable now.
            return Some(Err(Denial::Unavailable));
        }
        let (i, keys) = self.issuers.iter().find(|(i, _)| i.issuer == iss)?;
        Some(verify(i, keys))
    }
}

impl OwnKeys for Mem {
    fn signing_key(&self) -> Arc<SigningKey> {
        self.signing.clone()
    }

    fn access_token_keys(&self) -> Arc<VerifyingKeys> {
        self.verifying.clone()
    }

    fn svid_issuer(&self) -> &TrustedIssuer {
        &self.svid_issuer
    }

    fn svid_keys(&self) -> Arc<VerifyingKeys> {
        self.svid_keys.clone()
    }
}

impl Revocation for Mem {
    async fn is_revoked(&self, jti: &str) -> Result<bool, Denial> {
        Ok(self.revoked.lock().unwrap().contains(jti))
    }

    async fn is_svid_revoked(&self, jti: &str) -> Result<bool, Denial> {
        Ok(self.svid_revoked.lock().unwrap().contains(jti))
    }
}

impl Lifecycle for Mem {
    async fn status_slot(&self) -> Result<StatusSlot, Denial> {
        let idx = self.next_idx.fetch_add(1, Ordering::SeqCst) as i64;
        Ok(StatusSlot { list: 1, idx })
    }

    async fn lease(&self, id: &str) -> Result<Option<LeaseView>, Denial> {
        Ok(self.leases.lock().unwrap().get(id).cloned())
    }

    fn lease_settings(&self) -> LeaseSettings {
        LeaseSettings::default()
    }
}

/// Percent-encode a form value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Encode `(name, value)` pairs as a form body.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// The test environment: the world, the policy set, the clock and every party's key.
pub struct T {
    pub settings: Settings,
    pub mem: Mem,
    pub rules: Rules,
    pub clock: ManualClock,
    pub svc: SigningKey,
    pub other: SigningKey,
    pub gateway: SigningKey,
    pub rotated: SigningKey,
    pub idp: SigningKey,
    pub svid: SigningKey,
    jti: AtomicU64,
}

impl T {
    pub fn new() -> T {
        let key = |alg, kid| SigningKey::generate(alg, Some(kid)).unwrap();
        let svc = key(KeyAlg::ES256, "svc-key");
        let other = key(KeyAlg::ES256, "other-key");
        let gateway = key(KeyAlg::ES256, "gw");
        let old = key(KeyAlg::ES256, "old");
        let rotated = key(KeyAlg::ES256, "new");
        let idp = key(KeyAlg::ES256, "idp");
        let svid = key(KeyAlg::ES256, "svid");
        let ours = key(KeyAlg::EdDSA, "ours");
        let mut clients = HashMap::new();
        for c in [
            client("svc", &[&svc], &[API, OTHER]),
            client("other", &[&other], &[API]),
            client("gateway", &[&gateway], &[ISSUER]),
            client("rotating", &[&old], &[API]),
        ] {
            clients.insert(c.id.clone(), c);
        }
        let mut rotated_clients = HashMap::new();
        rotated_clients.insert(
            "rotating".to_string(),
            client("rotating", &[&rotated], &[API]),
        );
        let k8s = trusted("k8s", K8S, "kubernetes", "k8s.example.org");
        let dev = trusted("k8s-dev", K8S_DEV, "kubernetes", "k8s-dev.example.org");
        let ci = TrustedIssuer {
            one_time_use: true,
            max_ttl: 600,
            ..trusted("ci", CI, "kubernetes", "ci.example.org")
        };
        let strict = TrustedIssuer {
            client_auth: ClientAuthRule::Required,
            ..trusted("strict", STRICT, "kubernetes", "strict.example.org")
        };
        let partner = trusted("partner", PARTNER, "spiffe-jwt-svid", "partner.example");
        let gha = TrustedIssuer {
            ci: Some(crate::CiProvider::GitHub),
            ..trusted("gha", GHA, "github-actions", "gha.example.org")
        };
        let issuers = [k8s, dev, ci, strict, partner, gha]
            .into_iter()
            .map(|i| (i, keys_of(&[&idp])))
            .collect();
        let svid_issuer = TrustedIssuer {
            audiences: vec![ISSUER.into(), TOKEN_ENDPOINT.into()],
            ..trusted("spiffe", ISSUER, "spiffe-jwt-svid", "example.org")
        };
        let mem = Mem {
            clients,
            rotated: rotated_clients,
            issuers,
            verifying: Arc::new(keys_of(&[&ours])),
            signing: Arc::new(ours),
            svid_issuer,
            svid_keys: Arc::new(keys_of(&[&svid])),
            revoked: Mutex::default(),
            svid_revoked: Mutex::default(),
            leases: Mutex::default(),
            next_idx: AtomicU64::new(0),
        };
        T {
            settings: Settings {
                issuer: ISSUER.into(),
                token_endpoint: TOKEN_ENDPOINT.into(),
                default_ttl: 300,
                max_ttl: 3600,
                clock_skew: 30,
                max_assertion_lifetime: 300,
            },
            mem,
            rules: rules(),
            clock: ManualClock::new(NOW),
            svc,
            other,
            gateway,
            rotated,
            idp,
            svid,
            jti: AtomicU64::new(0),
        }
    }

    pub fn sts(&self) -> Sts<'_, Mem> {
        Sts {
            settings: &self.settings,
            world: &self.mem,
            clock: &self.clock,
            authorizer: &self.rules,
        }
    }

    fn next_jti(&self) -> String {
        format!("j{}", self.jti.fetch_add(1, Ordering::SeqCst))
    }

    /// Client assertion claims for `id`, valid now.
    pub fn claims(&self, id: &str) -> Value {
        json!({"iss": id, "sub": id, "aud": TOKEN_ENDPOINT, "jti": self.next_jti(),
               "iat": NOW, "exp": NOW + 60})
    }

    /// `claims` signed by svc's key.
    pub fn sign(&self, claims: &Value) -> String {
        self.svc.sign_jwt(None, claims).unwrap()
    }

    /// A valid assertion of svc.
    pub fn assertion(&self) -> String {
        self.sign(&self.claims("svc"))
    }

    /// A valid assertion of the gateway client.
    pub fn gateway_assertion(&self) -> String {
        self.gateway
            .sign_jwt(None, &self.claims("gateway"))
            .unwrap()
    }

    /// Post a form to the token endpoint.
    pub fn post(&self, pairs: &[(&str, &str)]) -> Result<Outcome<Issued>, Refusal> {
        self.post_as(pairs, false)
    }

    /// Post a form, with or without an `Authorization` header.
    pub fn post_as(
        &self,
        pairs: &[(&str, &str)],
        http_auth: bool,
    ) -> Result<Outcome<Issued>, Refusal> {
        let body = form(pairs);
        let req = FormRequest {
            body: &body,
            http_auth,
            source: Some("192.0.2.1"),
        };
        block_on(crate::token(&self.sts(), &req))
    }

    /// Client credentials with `assertion` and `extra` parameters.
    pub fn cc_with(
        &self,
        assertion: &str,
        extra: &[(&str, &str)],
    ) -> Result<Outcome<Issued>, Refusal> {
        let mut f = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        f.extend_from_slice(extra);
        self.post(&f)
    }

    /// Client credentials with a valid assertion.
    pub fn cc(&self, extra: &[(&str, &str)]) -> Result<Outcome<Issued>, Refusal> {
        self.cc_with(&self.assertion(), extra)
    }

    /// Kubernetes service-account claims from issuer `iss`.
    pub fn k8s_claims(&self, iss: &str, ns: &str, sa: &str) -> Value {
        json!({"iss": iss, "aud": ["mayfly"], "sub": format!("system:serviceaccount:{ns}:{sa}"),
               "iat": NOW, "exp": NOW + 600, "jti": self.next_jti(),
               "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}}})
    }

    /// A service-account token of issuer `iss`, signed by the identity provider.
    pub fn k8s(&self, iss: &str, ns: &str, sa: &str) -> String {
        self.idp
            .sign_jwt(None, &self.k8s_claims(iss, ns, sa))
            .unwrap()
    }

    /// A GitHub Actions job token of issuer [`GHA`] with `extra` claims (run, job).
    pub fn gha(&self, extra: Value) -> String {
        let mut c = json!({"iss": GHA, "aud": "mayfly", "sub": "repo:acme/app:ref:refs/heads/main",
               "repository": "acme/app", "ref": "refs/heads/main", "iat": NOW, "exp": NOW + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.idp.sign_jwt(None, &c).unwrap()
    }

    /// A JWT-SVID of the trust domain (signed with its JWT-SVID key) for `sub`.
    pub fn own_svid(&self, sub: &str, jti: &str) -> String {
        let c = json!({"iss": ISSUER, "aud": [ISSUER], "sub": sub, "iat": NOW, "exp": NOW + 300, "jti": jti});
        self.svid.sign_jwt(None, &c).unwrap()
    }

    /// Token exchange of a JWT subject token, with `extra` parameters.
    pub fn exchange(
        &self,
        subject: &str,
        extra: &[(&str, &str)],
    ) -> Result<Outcome<Issued>, Refusal> {
        self.exchange_typed(subject, TT_JWT, extra)
    }

    /// Token exchange of a subject token of type `tt`.
    pub fn exchange_typed(
        &self,
        subject: &str,
        tt: &str,
        extra: &[(&str, &str)],
    ) -> Result<Outcome<Issued>, Refusal> {
        let mut f = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", tt),
        ];
        f.extend_from_slice(extra);
        self.post(&f)
    }

    /// One of our own access tokens: svc's, for `aud`.
    pub fn svc_token(&self, aud: &str) -> String {
        issued(self.cc(&[("audience", aud), ("scope", "read")]))
            .response
            .access_token
    }
}

/// The issued token of an outcome.
pub fn issued(r: Result<Outcome<Issued>, Refusal>) -> Issued {
    match r {
        Ok(o) => o.value,
        Err(r) => panic!("refused: {:?}", r.denial),
    }
}

/// The refusal of an outcome that must be refused.
pub fn refusal<T: std::fmt::Debug>(r: Result<Outcome<T>, Refusal>) -> Refusal {
    match r {
        Ok(o) => panic!("not refused: {:?}", o.value),
        Err(r) => r,
    }
}

/// The unverified claims of a JWT.
pub fn peek(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token).unwrap()
}

/// Assert that `$r` was refused with a denial matching `$pat` and RFC code `$code`.
#[macro_export]
macro_rules! assert_refused {
    ($r:expr, $pat:pat, $code:ident) => {{
        let r = $crate::tests::world::refusal($r);
        assert!(matches!(r.denial, $pat), "{:?}", r.denial);
        assert_eq!(
            r.denial.code(),
            mayfly_proto::ErrorCode::$code,
            "{:?}",
            r.denial
        );
        r
    }};
}
