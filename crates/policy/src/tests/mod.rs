//! Unit tests: loading and validation, decisions, sugar, slicing, test files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz;
mod cases;
mod decide;
mod entries;
mod fast;
mod load;
mod slicing;
mod sugar;

use crate::{ClientGrant, PolicyEngine, PolicyRequest, PrincipalKind};

/// The example set in `conf/policies`, which docs/POLICY.md walks through.
pub(crate) const EXAMPLE_SCHEMA: &str =
    include_str!("../../../../conf/policies/schema.cedarschema");
pub(crate) const EXAMPLE_FILES: &[(&str, &str)] = &[
    (
        "github-actions.cedar",
        include_str!("../../../../conf/policies/github-actions.cedar"),
    ),
    (
        "guardrails.cedar",
        include_str!("../../../../conf/policies/guardrails.cedar"),
    ),
    (
        "kubernetes.cedar",
        include_str!("../../../../conf/policies/kubernetes.cedar"),
    ),
];
pub(crate) const EXAMPLE_TESTS: &str = include_str!("../../../../conf/policies/tests.toml");

/// A small schema for the tests: actions token, read, write, deploy, and `admin` grouping
/// write and deploy.
pub(crate) const SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String,
  namespace?: String, service_account?: String, repository?: String, repository_owner?: String,
  ref?: String, environment?: String, workflow?: String, actor?: String, project_path?: String,
  pipeline_source?: String, trust_domain?: String,
};
type Ctx = { grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String };
action admin;
action "token", "read" appliesTo { principal: [Client, Workload], resource: [Audience], context: Ctx };
action "write", "deploy" in [Action::"admin"] appliesTo { principal: [Client, Workload], resource: [Audience], context: Ctx };
"#;

pub(crate) fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

pub(crate) fn engine(list: &[(&str, &str)]) -> PolicyEngine {
    PolicyEngine::from_sources(SCHEMA, &files(list), &[]).unwrap()
}

pub(crate) fn example() -> PolicyEngine {
    PolicyEngine::from_sources(EXAMPLE_SCHEMA, &files(EXAMPLE_FILES), &[]).unwrap()
}

pub(crate) fn grant(id: &str, audiences: &[&str], scopes: &[&str]) -> ClientGrant {
    ClientGrant {
        client_id: id.into(),
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

/// A request with default context (client_credentials, 300 s, no source, time 0).
pub(crate) fn req<'a>(
    kind: PrincipalKind,
    id: &'a str,
    attrs: &'a [(&'a str, &'a str)],
    action: &'a str,
    audience: &'a str,
) -> PolicyRequest<'a> {
    PolicyRequest {
        principal_kind: kind,
        principal_id: id,
        attrs,
        action,
        audience,
        grant_type: "client_credentials",
        requested_ttl: 300,
        source: "",
        now: 0,
        client_id: "",
        actor: "",
    }
}

/// The decision as the issuance engine's `Authorizer` sees it (with the errors it reports),
/// put back into a [`PolicyDecision`](crate::PolicyDecision) to compare with `decide`.
pub(crate) fn via_authorizer(e: &PolicyEngine, r: &PolicyRequest<'_>) -> crate::PolicyDecision {
    let attrs: Vec<(String, String)> = r
        .attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let q = mayfly_proto::AuthzQuery {
        principal: mayfly_proto::Principal {
            kind: match r.principal_kind {
                PrincipalKind::Client => mayfly_proto::PrincipalKind::Client,
                PrincipalKind::Workload => mayfly_proto::PrincipalKind::Workload,
            },
            id: r.principal_id,
            attrs: &attrs,
        },
        action: r.action,
        audience: r.audience,
        grant_type: r.grant_type,
        requested_ttl: r.requested_ttl,
        source: r.source,
        now: r.now,
        client_id: r.client_id,
        actor: r.actor,
    };
    let mut trace = Vec::new();
    let (d, errors) = e.authorize_reporting(&q, &mut trace);
    crate::PolicyDecision {
        allow: d.allow,
        policies: trace,
        max_ttl: d.max_ttl,
        errors,
    }
}

/// xorshift64*: deterministic, no dependency.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

#[test]
fn engine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicyEngine>();
}
