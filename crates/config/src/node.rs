//! `[[node_attestation]]`: which trusted issuers' platform tokens may attest a SPIFFE agent,
//! for which audience, and which claims name the node. Without an entry, no platform token
//! attests an agent (join tokens only).

use std::time::Duration;

use serde::Deserialize;

use crate::raw::duration;
use crate::{ConfigError, IssuerConfig};

/// Most claims that may name a node (each one path segment of the agent ID).
const MAX_NODE_CLAIMS: usize = 4;
/// Most claims a token must carry with fixed values.
const MAX_REQUIRED_CLAIMS: usize = 16;
/// Longest platform token lifetime that may be allowed.
const MAX_LIFETIME_CAP: Duration = Duration::from_secs(24 * 3600);

/// One issuer allowed to attest agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttestationConfig {
    /// The `[[issuers]]` entry (by name) whose keys and `iss` verify the platform token.
    pub issuer: String,
    /// The platform token's `aud` must contain this (never an audience of token exchange).
    pub audience: String,
    /// JSON pointers to the claims that name the node uniquely; each value becomes one path
    /// segment of the agent ID `spiffe://TD/mayfly/agent/ISSUER/VALUE[/VALUE...]`.
    pub node_claims: Vec<String>,
    /// Claims the token must carry with exactly these values: (JSON pointer, value).
    pub required_claims: Vec<(String, String)>,
    /// Longest a token may still be valid when presented (`exp` − now): short-lived only.
    pub max_token_lifetime: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeAttestation {
    issuer: String,
    audience: String,
    node_claims: Vec<String>,
    #[serde(default)]
    required_claims: std::collections::BTreeMap<String, String>,
    max_token_lifetime: Option<String>,
}

fn pointer_ok(p: &str) -> bool {
    p.starts_with('/') && p.len() > 1 && p.len() <= 256
}

/// Validate every entry against the configured issuers.
pub(crate) fn validate(
    raw: Vec<RawNodeAttestation>,
    src: &str,
    issuers: &[IssuerConfig],
) -> Result<Vec<NodeAttestationConfig>, ConfigError> {
    let mut out: Vec<NodeAttestationConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("node_attestation[{i}].{k}");
        if !issuers.iter().any(|x| x.name == r.issuer) {
            return Err(ConfigError::new(
                src,
                key("issuer"),
                format!("`{}` is not the name of an [[issuers]] entry", r.issuer),
                "name a configured [[issuers]] entry (its keys and `iss` verify the platform token)",
            ));
        }
        // `join` is the join-token agents' namespace (spiffe://TD/mayfly/agent/join/ID).
        if r.issuer == "join" {
            return Err(ConfigError::new(
                src,
                key("issuer"),
                "the issuer name `join` would make agent IDs that collide with join-token agents",
                "rename the [[issuers]] entry (e.g. \"k8s\")",
            ));
        }
        if out.iter().any(|o| o.issuer == r.issuer) {
            return Err(ConfigError::new(
                src,
                key("issuer"),
                format!("issuer `{}` has two [[node_attestation]] entries", r.issuer),
                "keep one entry per issuer",
            ));
        }
        if r.audience.is_empty() || r.audience.len() > 512 {
            return Err(ConfigError::new(
                src,
                key("audience"),
                "must be 1 to 512 characters",
                "set the audience the agent's platform token is requested for, e.g. \"mayfly-node\"",
            ));
        }
        if let Some(other) = issuers.iter().find(|x| x.audiences.contains(&r.audience)) {
            return Err(ConfigError::new(
                src,
                key("audience"),
                format!(
                    "`{}` is also a token-exchange audience of issuer `{}`",
                    r.audience, other.name
                ),
                "use an audience of its own for node attestation, so a workload's exchange token can never attest an agent",
            ));
        }
        if r.node_claims.is_empty()
            || r.node_claims.len() > MAX_NODE_CLAIMS
            || !r.node_claims.iter().all(|p| pointer_ok(p))
        {
            return Err(ConfigError::new(
                src,
                key("node_claims"),
                format!("must hold 1 to {MAX_NODE_CLAIMS} JSON pointers (`/claim/path`)"),
                "name the claim(s) that identify the node uniquely, e.g. [\"/kubernetes.io/node/name\"]",
            ));
        }
        if r.required_claims.len() > MAX_REQUIRED_CLAIMS
            || !r.required_claims.keys().all(|p| pointer_ok(p))
        {
            return Err(ConfigError::new(
                src,
                key("required_claims"),
                format!("must hold at most {MAX_REQUIRED_CLAIMS} entries keyed by JSON pointers"),
                "write e.g. { \"/kubernetes.io/serviceaccount/name\" = \"mayfly-agent\" }",
            ));
        }
        let lifetime = duration(
            src,
            &key("max_token_lifetime"),
            r.max_token_lifetime.as_ref(),
            "10m",
        )?;
        if lifetime < Duration::from_secs(60) || lifetime > MAX_LIFETIME_CAP {
            return Err(ConfigError::new(
                src,
                key("max_token_lifetime"),
                "must be between 1m and 24h",
                "request short-lived platform tokens (e.g. Kubernetes expirationSeconds: 600) and set \"10m\"",
            ));
        }
        out.push(NodeAttestationConfig {
            issuer: r.issuer,
            audience: r.audience,
            node_claims: r.node_claims,
            required_claims: r.required_claims.into_iter().collect(),
            max_token_lifetime: lifetime,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};
    use std::path::Path;
    use std::time::Duration;

    const ISSUER: &str = r#"
[[issuers]]
name = "k8s"
issuer = "https://kubernetes.default.svc"
preset = "kubernetes"
jwks = { keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid = "k1" }] }
audiences = ["mayfly"]
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("{ISSUER}{extra}"), "t.toml", Path::new("."), &[])
    }

    #[test]
    fn off_unless_configured() {
        assert!(parse("").unwrap().node_attestation.is_empty());
    }

    #[test]
    fn an_entry_parses_with_a_short_default_lifetime() {
        let c = parse(
            r#"
[[node_attestation]]
issuer = "k8s"
audience = "mayfly-node"
node_claims = ["/kubernetes.io/node/name"]
required_claims = { "/kubernetes.io/namespace" = "mayfly" }
"#,
        )
        .unwrap();
        let n = &c.node_attestation[0];
        assert_eq!(n.issuer, "k8s");
        assert_eq!(n.audience, "mayfly-node");
        assert_eq!(n.max_token_lifetime, Duration::from_secs(600));
        assert_eq!(
            n.required_claims,
            vec![("/kubernetes.io/namespace".to_string(), "mayfly".to_string())]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let entry = |body: &str| format!("[[node_attestation]]\n{body}\n");
        for (body, key, says) in [
            (
                "issuer = \"gh\"\naudience = \"n\"\nnode_claims = [\"/a\"]",
                "node_attestation[0].issuer",
                "not the name of an [[issuers]] entry",
            ),
            (
                "issuer = \"k8s\"\naudience = \"mayfly\"\nnode_claims = [\"/a\"]",
                "node_attestation[0].audience",
                "token-exchange audience",
            ),
            (
                "issuer = \"k8s\"\naudience = \"n\"\nnode_claims = []",
                "node_attestation[0].node_claims",
                "JSON pointers",
            ),
            (
                "issuer = \"k8s\"\naudience = \"n\"\nnode_claims = [\"sub\"]",
                "node_attestation[0].node_claims",
                "JSON pointers",
            ),
            (
                "issuer = \"k8s\"\naudience = \"n\"\nnode_claims = [\"/a\"]\nmax_token_lifetime = \"48h\"",
                "node_attestation[0].max_token_lifetime",
                "between 1m and 24h",
            ),
        ] {
            let e = parse(&entry(body)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let one = entry("issuer = \"k8s\"\naudience = \"n\"\nnode_claims = [\"/a\"]");
        let e = parse(&format!("{one}{one}")).unwrap_err();
        assert_eq!(e.key, "node_attestation[1].issuer");
    }
}
