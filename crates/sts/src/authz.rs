//! The seam to policy: every issuance asks an [`Authorizer`] whether the principal may have a
//! token for the audience (action `token`) and each requested scope (one action per scope).
//! The server plugs in the Cedar engine; this crate stays free of any policy language.

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

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzDecision {
    /// Allowed.
    pub allow: bool,
    /// Ids of the policies that decided.
    pub policies: Vec<String>,
    /// A lifetime cap the deciding policies set, seconds.
    pub max_ttl: Option<i64>,
}

/// Decides one query. Implementations must deny by default.
pub trait Authorizer: Send + Sync {
    /// Decide `q`.
    fn authorize(&self, q: &AuthzQuery<'_>) -> AuthzDecision;
}

/// Re-exchanging one of our own tokens can only narrow it: this authorizer permits exactly the
/// audience and scopes the original token carries, and names it as the deciding "policy".
#[derive(Debug, Clone)]
pub struct Narrowing {
    /// The original token's audience.
    pub audience: String,
    /// The original token's scopes.
    pub scopes: Vec<String>,
    /// The original token's jti (recorded as the deciding rule).
    pub jti: String,
}

impl Authorizer for Narrowing {
    fn authorize(&self, q: &AuthzQuery<'_>) -> AuthzDecision {
        let allow = q.audience == self.audience
            && (q.action == ACTION_TOKEN || self.scopes.iter().any(|s| s == q.action));
        AuthzDecision {
            allow,
            policies: if allow {
                vec![format!("narrowing:{}", self.jti)]
            } else {
                Vec::new()
            },
            max_ttl: None,
        }
    }
}

/// Both authorizers must allow. Re-exchanging one of our tokens with a new actor is bounded
/// by what the token carries ([`Narrowing`]) and is a delegation the policy set decides.
#[derive(Clone, Copy)]
pub struct AllOf<'a>(pub &'a dyn Authorizer, pub &'a dyn Authorizer);

impl Authorizer for AllOf<'_> {
    fn authorize(&self, q: &AuthzQuery<'_>) -> AuthzDecision {
        let first = self.0.authorize(q);
        if !first.allow {
            return first;
        }
        let second = self.1.authorize(q);
        if !second.allow {
            return second;
        }
        let mut policies = first.policies;
        policies.extend(second.policies);
        AuthzDecision {
            allow: true,
            policies,
            max_ttl: match (first.max_ttl, second.max_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool, &'static str, Option<i64>);
    impl Authorizer for Fixed {
        fn authorize(&self, _: &AuthzQuery<'_>) -> AuthzDecision {
            AuthzDecision {
                allow: self.0,
                policies: vec![self.1.to_string()],
                max_ttl: self.2,
            }
        }
    }

    #[test]
    fn all_of_needs_both_and_keeps_the_tighter_cap() {
        let q = AuthzQuery {
            principal: Principal {
                kind: PrincipalKind::Workload,
                id: "spiffe://td/w",
                attrs: &[],
            },
            action: ACTION_TOKEN,
            audience: "a",
            grant_type: "g",
            requested_ttl: 60,
            source: "",
            now: 0,
            client_id: "",
            actor: "spiffe://td/a",
        };
        let yes = AllOf(&Fixed(true, "n", None), &Fixed(true, "p", Some(60))).authorize(&q);
        assert_eq!(
            yes,
            AuthzDecision {
                allow: true,
                policies: vec!["n".into(), "p".into()],
                max_ttl: Some(60)
            }
        );
        let no = AllOf(&Fixed(true, "n", None), &Fixed(false, "f", None)).authorize(&q);
        assert_eq!((no.allow, no.policies), (false, vec!["f".to_string()]));
        let no = AllOf(&Fixed(false, "n", None), &Fixed(true, "p", None)).authorize(&q);
        assert_eq!((no.allow, no.policies), (false, vec!["n".to_string()]));
    }
}
