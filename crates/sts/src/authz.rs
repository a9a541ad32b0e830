//! Authorizers the engine composes itself: [`Narrowing`] (re-exchange of our own tokens) and
//! [`AllOf`]. The query, the decision and the [`Authorizer`] trait live in `mayfly_proto::authz`
//! and are re-exported here.

pub use mayfly_proto::authz::{
    ACTION_TOKEN, Authorizer, AuthzDecision, AuthzQuery, Principal, PrincipalKind,
};

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
