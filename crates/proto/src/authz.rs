//! The authorization query: every issuance asks an [`Authorizer`] whether the principal may
//! have a token for the audience (action `token`) and each requested scope (one action per
//! scope). The issuance engine asks, the policy engine answers; neither names the other.

/// What kind of principal asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A registered OAuth client (client credentials).
    Client,
    /// A federated workload, identified by its SPIFFE ID.
    Workload,
}

/// Who asks, with the attributes its identity carries.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// Kind.
    pub kind: PrincipalKind,
    /// client_id or SPIFFE ID.
    pub id: &'a str,
    /// Identity attributes (issuer, subject, namespace, repository, ...).
    pub attrs: &'a [(String, String)],
}

/// The reserved action asked for the audience itself.
pub const ACTION_TOKEN: &str = "token";

/// One question to the authorizer.
#[derive(Debug, Clone, Copy)]
pub struct AuthzQuery<'a> {
    /// Who.
    pub principal: Principal<'a>,
    /// [`ACTION_TOKEN`] or one scope.
    pub action: &'a str,
    /// The audience.
    pub audience: &'a str,
    /// The grant type.
    pub grant_type: &'a str,
    /// The lifetime the request asked for (or the default), seconds.
    pub requested_ttl: i64,
    /// Source address, or "".
    pub source: &'a str,
    /// Now, seconds since the epoch.
    pub now: i64,
    /// The authenticated client, or "".
    pub client_id: &'a str,
    /// The actor's identity (delegation), or "".
    pub actor: &'a str,
}

/// The answer. The ids of the policies that decided are not in it: the authorizer appends them
/// to the caller's trace (see [`Authorizer::authorize`]), so a decision allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthzDecision {
    /// Allowed.
    pub allow: bool,
    /// A lifetime cap the deciding policies set, seconds.
    pub max_ttl: Option<i64>,
}

impl AuthzDecision {
    /// Refused (the default-deny answer).
    pub const DENY: Self = Self {
        allow: false,
        max_ttl: None,
    };
}

/// Decides one query. Implementations must deny by default.
pub trait Authorizer: Send + Sync {
    /// Decide `q`, and append to `trace` the ids of the policies that decided (the permits
    /// that allowed, or the forbids that refused), in order, each one only if `trace` does not
    /// hold it already (see [`record`]). One trace collects a whole request's decisions.
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision;
}

/// Append `id` to `trace` unless it is there already. A request is decided by a handful of
/// policies, so a linear scan is cheaper than a set, and an id seen before costs no allocation.
pub fn record(trace: &mut Vec<String>, id: &str) {
    if !trace.iter().any(|t| t == id) {
        trace.push(id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_order_and_skips_repeats() {
        let mut trace = Vec::new();
        for id in ["b", "a", "b", "c", "a"] {
            record(&mut trace, id);
        }
        assert_eq!(trace, ["b", "a", "c"]);
    }
}
