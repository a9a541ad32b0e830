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
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
        let allow = q.audience == self.audience
            && (q.action == ACTION_TOKEN || self.scopes.iter().any(|s| s == q.action));
        let named = |t: &String| t.strip_prefix("narrowing:") == Some(self.jti.as_str());
        if allow && !trace.iter().any(named) {
            trace.push(format!("narrowing:{}", self.jti));
        }
        AuthzDecision {
            allow,
            max_ttl: None,
        }
    }
}

/// Both authorizers must allow. Re-exchanging one of our tokens with a new actor is bounded
/// by what the token carries ([`Narrowing`]) and is a delegation the policy set decides.
/// The trace names the authorizer that refused, or both when both allow.
#[derive(Clone, Copy)]
pub struct AllOf<'a>(pub &'a dyn Authorizer, pub &'a dyn Authorizer);

impl Authorizer for AllOf<'_> {
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
        let start = trace.len();
        let first = self.0.authorize(q, trace);
        if !first.allow {
            return first;
        }
        let first_end = trace.len();
        let second = self.1.authorize(q, trace);
        if !second.allow {
            // Only the refusal is the reason: drop what the first one allowed by.
            trace.drain(start..first_end);
            return second;
        }
        AuthzDecision {
            allow: true,
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
        fn authorize(&self, _: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
            mayfly_proto::authz::record(trace, self.1);
            AuthzDecision {
                allow: self.0,
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
        let mut trace = Vec::new();
        let yes =
            AllOf(&Fixed(true, "n", None), &Fixed(true, "p", Some(60))).authorize(&q, &mut trace);
        assert_eq!(
            (yes, trace),
            (
                AuthzDecision {
                    allow: true,
                    max_ttl: Some(60)
                },
                vec!["n".to_string(), "p".to_string()]
            )
        );
        let mut trace = Vec::new();
        let no = AllOf(&Fixed(true, "n", None), &Fixed(false, "f", None)).authorize(&q, &mut trace);
        assert_eq!((no.allow, trace), (false, vec!["f".to_string()]));
        let mut trace = Vec::new();
        let no = AllOf(&Fixed(false, "n", None), &Fixed(true, "p", None)).authorize(&q, &mut trace);
        assert_eq!((no.allow, trace), (false, vec!["n".to_string()]));
        // What an earlier question recorded stays.
        let mut trace = vec!["earlier".to_string()];
        AllOf(&Fixed(true, "n", None), &Fixed(false, "f", None)).authorize(&q, &mut trace);
        assert_eq!(trace, ["earlier", "f"]);
    }

    #[test]
    fn narrowing_permits_what_the_token_carries() {
        let n = Narrowing {
            audience: "a".into(),
            scopes: vec!["r".into()],
            jti: "j1".into(),
        };
        let q = |action, audience| AuthzQuery {
            principal: Principal {
                kind: PrincipalKind::Workload,
                id: "spiffe://td/w",
                attrs: &[],
            },
            action,
            audience,
            grant_type: "g",
            requested_ttl: 60,
            source: "",
            now: 0,
            client_id: "",
            actor: "",
        };
        let mut trace = Vec::new();
        assert!(n.authorize(&q(ACTION_TOKEN, "a"), &mut trace).allow);
        assert!(n.authorize(&q("r", "a"), &mut trace).allow);
        assert_eq!(trace, ["narrowing:j1"]);
        assert!(!n.authorize(&q("w", "a"), &mut trace).allow);
        assert!(!n.authorize(&q(ACTION_TOKEN, "b"), &mut trace).allow);
        assert_eq!(trace, ["narrowing:j1"]);
    }
}
