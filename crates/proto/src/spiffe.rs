//! Wire types between `mayfly agent` and the server's agent API (`/agent/v1/*`, JSON over
//! TLS). Binary values (DER certificates, CSRs) are standard base64 with padding.
//!
//! The agent never sends a private key: it sends CSRs and gets certificates back.

use serde::{Deserialize, Serialize};

/// `POST /agent/v1/attest` (server-authenticated TLS only: the agent has no SVID yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// How the agent proves itself: exactly one of the variants.
    pub attestation: AgentAttestation,
    /// PKCS#10 CSR (DER, base64) for the agent's own X.509-SVID.
    pub csr: String,
}

/// Node attestation evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentAttestation {
    /// A join token from `mayfly agent token create` (single use, expiring).
    JoinToken {
        /// The whole token as printed (`<id>.<secret>`).
        token: String,
    },
    /// A platform identity token checked against a configured `[[issuers]]` entry.
    Platform {
        /// The `[[issuers]]` name.
        issuer: String,
        /// The platform's JWT (a Kubernetes service-account token, ...).
        token: String,
    },
}

/// Response to attest and renew: the agent's X.509-SVID and the trust bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSvidResponse {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf first, then intermediates (DER, base64).
    pub chain: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// The current trust bundle.
    pub bundle: BundleWire,
}

/// `POST /agent/v1/renew` (mutual TLS with the agent's current SVID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 CSR (DER, base64) for a fresh key.
    pub csr: String,
}

/// The trust bundle of the server's trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleWire {
    /// The trust domain name (`example.org`).
    pub trust_domain: String,
    /// Increases whenever the bundle changes.
    pub sequence: u64,
    /// X.509 authorities (root or intermediate CA certificates, DER, base64).
    pub x509_authorities: Vec<String>,
    /// JWT authorities: a JWK Set of public keys that sign JWT-SVIDs.
    pub jwt_authorities: serde_json::Value,
    /// Seconds; how often consumers should refresh.
    pub refresh_hint: u64,
}

/// One registration entry as the agent sees it (entries whose parent is this agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryWire {
    /// Entry id (opaque).
    pub id: String,
    /// The SPIFFE ID a matching workload gets.
    pub spiffe_id: String,
    /// Selectors, all of which a workload must have (`unix:uid:1000`, `unix:sha256:<hex>`, ...).
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime, seconds.
    pub x509_ttl: u64,
    /// JWT-SVID lifetime, seconds.
    pub jwt_ttl: u64,
    /// Extra DNS names for the X.509-SVID.
    #[serde(default)]
    pub dns_names: Vec<String>,
}

/// `GET /agent/v1/sync`: what this agent serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Entries whose parent is the calling agent.
    pub entries: Vec<EntryWire>,
    /// The current trust bundle.
    pub bundle: BundleWire,
}

/// `POST /agent/v1/svid/x509`: sign a workload's CSR for one entry of this agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignX509Request {
    /// The entry id.
    pub entry_id: String,
    /// PKCS#10 CSR (DER, base64); the key was made by the agent.
    pub csr: String,
}

/// Response to [`SignX509Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignX509Response {
    /// Leaf first, then intermediates (DER, base64).
    pub chain: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /agent/v1/svid/jwt`: a JWT-SVID for one entry of this agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintJwtRequest {
    /// The entry id.
    pub entry_id: String,
    /// Audiences (at least one).
    pub audience: Vec<String>,
}

/// Response to [`MintJwtRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintJwtResponse {
    /// The JWT-SVID.
    pub token: String,
    /// Its `jti`, which the agent reports when the workload exits.
    pub jti: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /agent/v1/workload-exited`: a workload process this agent attested has exited; the
/// server revokes the JWT-SVIDs it was given and every token derived from them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadExitedRequest {
    /// The process id (for the audit log).
    pub pid: u32,
    /// The SPIFFE IDs it held.
    pub spiffe_ids: Vec<String>,
    /// `jti` of every JWT-SVID handed to that process.
    pub jwt_svid_jtis: Vec<String>,
}

/// Response to [`WorkloadExitedRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadExitedResponse {
    /// How many access tokens were revoked.
    pub revoked_tokens: u64,
}
