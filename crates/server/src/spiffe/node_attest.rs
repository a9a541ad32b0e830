//! Node attestation by platform token: only issuers listed under `[[node_attestation]]` may
//! attest an agent, with a token for that entry's own audience (never a token-exchange one),
//! short-lived, carrying a `jti` (consumed by the caller, so one token attests once) and the
//! claims that name the node; each node gets its own agent ID,
//! `spiffe://TD/mayfly/agent/ISSUER/NODE[/...]`.
//!
//! Not here: token exchange. This verifier is separate from the subject-token path on purpose:
//! its audience, lifetime and claim rules differ, and a platform token accepted here must not
//! be accepted there (and the reverse).

use mayfly_config::NodeAttestationConfig;
use mayfly_proto::spiffe_id::{SpiffeId, valid_path_segment};
use mayfly_sts::Denial;
use mayfly_sts::federation::{check_claims, claimed_issuer, verified_claims};
use serde_json::Value;

use crate::state::App;

/// Longest platform-token `jti` accepted (it is stored to refuse a replay).
const MAX_JTI_LEN: usize = 256;

/// A platform token accepted for node attestation.
#[derive(Debug)]
pub(crate) struct NodeIdentity {
    /// The node's agent ID.
    pub agent_id: String,
    /// The token's `jti`, to consume.
    pub jti: String,
    /// The token's `exp`.
    pub exp: i64,
}

/// Why a platform token did not attest a node. [`NodeRefusal::reason`] goes to the audit log;
/// [`NodeRefusal::message`] to the agent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeRefusal {
    /// The issuer is not listed under `[[node_attestation]]` (or is not configured at all).
    #[error("issuer not allowed for node attestation")]
    NotAllowed,
    /// The token failed verification as a token of that issuer.
    #[error("platform token refused: {0}")]
    Token(Denial),
    /// The token carries no usable `jti`.
    #[error("platform token has no jti")]
    NoJti,
    /// The token stays valid longer than `max_token_lifetime`.
    #[error("platform token lives too long")]
    TooLong,
    /// A `required_claims` value is absent or different.
    #[error("a required claim does not match")]
    ClaimMismatch,
    /// A node claim is absent, not a string, or not one SPIFFE ID path segment.
    #[error("a node claim is missing or invalid")]
    NodeClaim,
}

impl NodeRefusal {
    /// The audit reason.
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::NotAllowed => "node_attestation_not_allowed".into(),
            Self::Token(d) => format!("platform_token_refused: {}", d.reason()),
            Self::NoJti => "platform_token_refused: no_jti".into(),
            Self::TooLong => "platform_token_refused: lifetime_too_long".into(),
            Self::ClaimMismatch => "platform_token_refused: required_claim_mismatch".into(),
            Self::NodeClaim => "platform_token_refused: node_claim_invalid".into(),
        }
    }

    /// What the agent is told (no more than it needs to fix its setup).
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::NotAllowed => "this issuer is not allowed for node attestation",
            Self::TooLong => {
                "the platform token lives longer than node attestation allows; request a shorter-lived token"
            }
            Self::NoJti => "the platform token has no jti (it must be single-use)",
            _ => "the platform token was not accepted",
        }
    }
}

impl From<Denial> for NodeRefusal {
    fn from(d: Denial) -> Self {
        Self::Token(d)
    }
}

/// Verify `token` as a platform token of the issuer named `name` for node attestation at `now`.
pub(crate) async fn verify(
    app: &App,
    name: &str,
    token: &str,
    now: i64,
) -> Result<NodeIdentity, NodeRefusal> {
    let cfg = app
        .config()
        .node_attestation
        .iter()
        .find(|n| n.issuer == name)
        .ok_or(NodeRefusal::NotAllowed)?;
    let issuer = app
        .issuers()
        .find_by_name(name)
        .ok_or(NodeRefusal::NotAllowed)?;
    if claimed_issuer(token)? != issuer.trusted.issuer {
        return Err(Denial::UntrustedIssuer.into());
    }
    // Signature and type as for token exchange (keys refetched once, rate-limited, on an
    // unknown `kid`); the claims are held to this entry's audience below.
    let claims = app
        .issuers()
        .verify(&issuer, now, |keys| {
            verified_claims(&issuer.trusted, keys, token)
        })
        .await?;
    check(
        &claims,
        cfg,
        &issuer.trusted.issuer,
        issuer.trusted.max_token_age,
        app.settings().clock_skew,
        now,
        &super::agent_prefix(&app.config().trust_domain),
    )
}

/// The node-attestation rules on verified claims; returns the node's identity.
fn check(
    c: &Value,
    cfg: &NodeAttestationConfig,
    iss: &str,
    max_age: i64,
    skew: i64,
    now: i64,
    agent_prefix: &str,
) -> Result<NodeIdentity, NodeRefusal> {
    let exp = check_claims(
        c,
        iss,
        std::slice::from_ref(&cfg.audience),
        max_age,
        skew,
        now,
    )?;
    // Short-lived only: a stolen token is useful briefly, and its jti need not be kept long.
    let lifetime = cfg.max_token_lifetime.as_secs() as i64;
    if exp.saturating_sub(now) > lifetime.saturating_add(skew) {
        return Err(NodeRefusal::TooLong);
    }
    let jti = c
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(NodeRefusal::NoJti)?
        .to_string();
    for (ptr, want) in &cfg.required_claims {
        if c.pointer(ptr).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(NodeRefusal::ClaimMismatch);
        }
    }
    let mut agent_id = format!("{agent_prefix}{}", cfg.issuer);
    for ptr in &cfg.node_claims {
        let v = c
            .pointer(ptr)
            .and_then(Value::as_str)
            .filter(|v| valid_path_segment(v))
            .ok_or(NodeRefusal::NodeClaim)?;
        agent_id.push('/');
        agent_id.push_str(v);
    }
    SpiffeId::validate(&agent_id).map_err(|_| NodeRefusal::NodeClaim)?;
    Ok(NodeIdentity { agent_id, jti, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> NodeAttestationConfig {
        NodeAttestationConfig {
            issuer: "k8s".into(),
            audience: "mayfly-node".into(),
            node_claims: vec!["/kubernetes.io/node/name".into()],
            required_claims: vec![("/kubernetes.io/namespace".into(), "mayfly".into())],
            max_token_lifetime: std::time::Duration::from_secs(600),
        }
    }

    const ISS: &str = "https://k8s.test";
    const PREFIX: &str = "spiffe://td/mayfly/agent/";

    fn claims(node: &str) -> Value {
        json!({
            "iss": ISS, "aud": ["mayfly-node"], "iat": 1_000, "exp": 1_600, "jti": "j1",
            "kubernetes.io": {"namespace": "mayfly", "node": {"name": node}}
        })
    }

    fn run(c: &Value) -> Result<NodeIdentity, NodeRefusal> {
        check(c, &cfg(), ISS, 3600, 30, 1_010, PREFIX)
    }

    #[test]
    fn each_node_gets_its_own_agent_id() {
        let a = run(&claims("node-a")).unwrap();
        let b = run(&claims("node-b")).unwrap();
        assert_eq!(a.agent_id, "spiffe://td/mayfly/agent/k8s/node-a");
        assert_eq!(b.agent_id, "spiffe://td/mayfly/agent/k8s/node-b");
        assert_eq!((a.jti.as_str(), a.exp), ("j1", 1_600));
    }

    #[test]
    fn refusals_have_their_reasons() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims("node-a");
            f(&mut c);
            run(&c).unwrap_err().reason()
        };
        for (why, f) in [
            (
                "platform_token_refused: subject_wrong_audience",
                &(|c: &mut Value| c["aud"] = json!(["mayfly"])) as &dyn Fn(&mut Value),
            ),
            ("platform_token_refused: no_jti", &|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            ("platform_token_refused: lifetime_too_long", &|c| {
                c["exp"] = json!(1_010 + 3600)
            }),
            ("platform_token_refused: required_claim_mismatch", &|c| {
                c["kubernetes.io"]["namespace"] = json!("default")
            }),
            ("platform_token_refused: node_claim_invalid", &|c| {
                c["kubernetes.io"]["node"]["name"] = json!("a/b")
            }),
            ("platform_token_refused: node_claim_invalid", &|c| {
                c["kubernetes.io"]["node"]["name"] = json!("..")
            }),
            ("platform_token_refused: subject_expired", &|c| {
                c["exp"] = json!(900)
            }),
            ("platform_token_refused: untrusted_issuer", &|c| {
                c["iss"] = json!("https://other.test")
            }),
        ] {
            assert_eq!(with(f), why);
        }
    }
}
