//! Audit events: what happened, to whom, and why; never a token, assertion or key.

use serde::{Deserialize, Serialize};

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A token was issued.
    Issue,
    /// A token request was refused.
    Deny,
    /// A token was introspected.
    Introspect,
    /// A token was revoked.
    Revoke,
    /// Signing keys changed (created, activated, retired, removed).
    KeyRotation,
    /// A client was registered or removed at run time.
    ClientChange,
    /// A SPIFFE agent attested (or was refused), or a join token was created.
    AgentAttest,
    /// An X.509-SVID or JWT-SVID was issued to an agent for one of its entries.
    SvidIssue,
    /// A workload process exited; what it held was revoked.
    WorkloadExit,
    /// A registration entry was added or removed.
    EntryChange,
    /// The legacy proxy forwarded a call (or refused one) on a route holding a static key.
    ProxyCall,
    /// A key-debt entry was added, rotated, extended or removed.
    DebtChange,
    /// A proxy route's policy file changed: the new policy took effect (allow), or was refused
    /// and the one in force stayed (deny).
    PolicyChange,
    /// A lease ended (explicitly, its heartbeat stopped, its CI job completed, or an operator
    /// ended it); the event lists what its end revoked.
    LeaseEnd,
}

impl EventKind {
    /// The name stored in the audit table's `kind` column: the same text as in the event's
    /// JSON (serde's snake_case), without serialising (it is written once per event).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Deny => "deny",
            Self::Introspect => "introspect",
            Self::Revoke => "revoke",
            Self::KeyRotation => "key_rotation",
            Self::ClientChange => "client_change",
            Self::AgentAttest => "agent_attest",
            Self::SvidIssue => "svid_issue",
            Self::WorkloadExit => "workload_exit",
            Self::EntryChange => "entry_change",
            Self::ProxyCall => "proxy_call",
            Self::DebtChange => "debt_change",
            Self::PolicyChange => "policy_change",
            Self::LeaseEnd => "lease_end",
        }
    }
}

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
}

/// One audit event, before the store gives it a sequence number and chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Time (seconds since the epoch).
    pub ts: i64,
    /// Kind.
    pub kind: EventKind,
    /// Client (as authenticated; for denials, as claimed, clipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Grant type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The token's jti (issue, introspect, revoke) or key id (key rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The jti of the client assertion that authenticated the request (single use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_jti: Option<String>,
    /// Token exchange: the trusted issuer (name) of the subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_issuer: Option<String>,
    /// Token exchange: the subject token's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Token exchange: the subject token's `jti` (one-time use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_jti: Option<String>,
    /// The mapped workload identity (the new token's `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Delegation: the actor's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The policies that decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The token's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Source address of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Allowed or refused.
    pub decision: Decision,
    /// Machine-readable reason (see `Denial::reason`), or a short note for allowed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Proxy: the route (and key-debt entry) a call went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Proxy: the HTTP status returned to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Proxy: time from the request to the upstream's response headers, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The lease an issued token lives under, or the lease that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The jtis a revocation revoked (a lease's end, an operator's revocation), at most
    /// [`MAX_REVOKED_LISTED`]; `revoked_count` has the full number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// How many tokens a revocation revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_count: Option<u64>,
}

/// The most jtis one audit event lists as revoked (the count is always exact).
pub const MAX_REVOKED_LISTED: usize = 1000;

impl AuditEvent {
    /// A new event of `kind` at `ts` with everything else empty.
    pub fn new(kind: EventKind, ts: i64, decision: Decision) -> Self {
        Self {
            ts,
            kind,
            client: None,
            grant: None,
            audience: None,
            scopes: Vec::new(),
            jti: None,
            assertion_jti: None,
            subject_issuer: None,
            subject: None,
            subject_jti: None,
            identity: None,
            actor: None,
            policies: Vec::new(),
            exp: None,
            source: None,
            decision,
            reason: None,
            route: None,
            status: None,
            latency_us: None,
            lease: None,
            revoked: Vec::new(),
            revoked_count: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `kind` column and the chained JSON must agree (`audit verify` compares them).
    #[test]
    fn kind_names_match_the_json() {
        use EventKind::*;
        for k in [
            Issue,
            Deny,
            Introspect,
            Revoke,
            KeyRotation,
            ClientChange,
            AgentAttest,
            SvidIssue,
            WorkloadExit,
            EntryChange,
            ProxyCall,
            DebtChange,
            PolicyChange,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str(), "{k:?}");
        }
    }
}
