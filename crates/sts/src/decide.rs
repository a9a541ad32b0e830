//! Decide what a token may carry: one audience, the scopes policy allows, a lifetime that a
//! request can only shorten and that never outlives the subject token. Default deny: every
//! audience and scope goes through the [`Authorizer`].

use serde_json::Value;

use crate::authz::{ACTION_TOKEN, AuthzQuery, Principal};
use crate::{Authorizer, Denial, Settings};

/// What the request asked for (already parsed from the form).
#[derive(Debug, Clone, Default)]
pub struct TokenParams {
    /// Space-separated scopes, if any.
    pub scope: Option<String>,
    /// RFC 8707 `resource` values.
    pub resources: Vec<String>,
    /// `audience` parameter (RFC 8693 style), if any.
    pub audience: Option<String>,
    /// Requested lifetime in seconds (`expires_in`), if any.
    pub requested_ttl: Option<i64>,
    /// The lease the token is to live under (`lease=new` or a lease id), if any.
    pub lease: Option<crate::lease::LeaseRequest>,
}

/// Everything the decision needs besides the request parameters.
#[derive(Debug, Clone)]
pub struct DecideInput<'a> {
    /// Who asks.
    pub principal: Principal<'a>,
    /// The token's `client_id` claim.
    pub client_id: &'a str,
    /// The authenticated client, if any (policy context).
    pub authenticated_client: Option<&'a str>,
    /// The grant type (policy context, audit).
    pub grant_type: &'a str,
    /// The audience to use when the request names none: only when there is exactly one.
    pub default_audiences: &'a [String],
    /// Lifetime cap of the client or issuer, seconds.
    pub ttl_cap: i64,
    /// The subject token's `exp`: the new token never outlives it.
    pub subject_exp: Option<i64>,
    /// Delegation: the `act` claim for the new token.
    pub act: Option<Value>,
    /// Source address, or "".
    pub source: &'a str,
    /// Now.
    pub now: i64,
}

/// What will be minted.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The `client_id` claim.
    pub client_id: String,
    /// The subject (the client for client_credentials, the workload identity otherwise).
    pub subject: String,
    /// The one audience.
    pub audience: String,
    /// Granted scopes, in the order requested.
    pub scopes: Vec<String>,
    /// Lifetime in seconds.
    pub ttl: i64,
    /// The `act` claim (RFC 8693 §4.1), for delegation.
    pub act: Option<Value>,
    /// The policies that decided, for the audit event.
    pub policies: Vec<String>,
}

/// Echo at most this much of a refused value back in an error description.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The one audience a request names (`resource`s and `audience` together), or the only default.
pub fn target(params: &TokenParams, defaults: &[String]) -> Result<String, Denial> {
    let mut targets: Vec<&str> = params.resources.iter().map(String::as_str).collect();
    if let Some(a) = params.audience.as_deref().filter(|a| !targets.contains(a)) {
        targets.push(a);
    }
    match targets.as_slice() {
        [] => match defaults {
            [only] => Ok(only.clone()),
            _ => Err(Denial::TargetRequired),
        },
        [one] => Ok((*one).to_string()),
        _ => Err(Denial::MultipleTargets),
    }
}

/// The requested scopes, deduplicated, in order.
pub fn requested_scopes(params: &TokenParams) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for s in mayfly_proto::scope_tokens(params.scope.as_deref()) {
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    scopes
}

/// Decide a grant through `authz`: the audience (action `token`), then each scope. The ids of
/// the deciding policies are appended to `trace` whether the answer is yes or no, so that a
/// denial's audit event names the policy that refused.
pub fn decide(
    settings: &Settings,
    authz: &dyn Authorizer,
    input: DecideInput<'_>,
    params: &TokenParams,
    trace: &mut Vec<String>,
) -> Result<Grant, Denial> {
    let audience = target(params, input.default_audiences)?;
    let scopes = requested_scopes(params);
    // `token` is the action asked for the audience itself, not a scope: asking for it as a
    // scope would be granted by the audience's own permit. The SVID actions likewise: an
    // entry's permit of its SVIDs would grant them as scopes.
    if scopes.iter().any(|s| s == ACTION_TOKEN) {
        return Err(Denial::ScopeNotAllowed(ACTION_TOKEN.into()));
    }
    if let Some(s) = scopes.iter().find(|s| crate::svid::is_svid_action(s)) {
        return Err(Denial::ScopeNotAllowed(s.clone()));
    }
    let left = input.subject_exp.map(|exp| exp - input.now);
    let mut cap = input.ttl_cap.min(settings.max_ttl);
    let asked = match params.requested_ttl {
        Some(t) if t <= 0 => {
            return Err(Denial::InvalidParameter(
                "expires_in",
                "must be a positive number of seconds".into(),
            ));
        }
        Some(t) => {
            if let Some(left) = left.filter(|l| t > *l) {
                return Err(Denial::LifetimeBeyondSubject(left.max(0)));
            }
            t
        }
        None => settings.default_ttl,
    };
    let q = |action: &'static str| AuthzQuery {
        principal: input.principal,
        action,
        audience: &audience,
        grant_type: input.grant_type,
        requested_ttl: asked,
        source: input.source,
        now: input.now,
        client_id: input.authenticated_client.unwrap_or(""),
        actor: act_sub(input.act.as_ref()).unwrap_or(""),
    };
    let d = authz.authorize(&q(ACTION_TOKEN), trace);
    if !d.allow {
        return Err(Denial::TargetNotAllowed(clip(&audience)));
    }
    if let Some(m) = d.max_ttl {
        cap = cap.min(m);
    }
    for s in &scopes {
        let d = authz.authorize(
            &AuthzQuery {
                action: s,
                ..q(ACTION_TOKEN)
            },
            trace,
        );
        if !d.allow {
            return Err(Denial::ScopeNotAllowed(clip(s)));
        }
        if let Some(m) = d.max_ttl {
            cap = cap.min(m);
        }
    }
    let mut ttl = asked.min(cap);
    if let Some(left) = left {
        ttl = ttl.min(left);
    }
    if ttl <= 0 {
        return Err(Denial::SubjectExpired);
    }
    Ok(Grant {
        client_id: input.client_id.to_string(),
        subject: input.principal.id.to_string(),
        audience,
        scopes,
        ttl,
        act: input.act,
        policies: trace.clone(),
    })
}

fn act_sub(act: Option<&Value>) -> Option<&str> {
    act?.get("sub")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{AuthzDecision, PrincipalKind};

    /// Allows audience `a` with scopes `r`, capped at 120 s by "p1".
    struct Fixed;
    impl Authorizer for Fixed {
        fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
            let allow = q.audience == "a" && (q.action == ACTION_TOKEN || q.action == "r");
            if allow {
                mayfly_proto::authz::record(trace, "p1");
            }
            AuthzDecision {
                allow,
                max_ttl: Some(120),
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            issuer: "https://sts".into(),
            token_endpoint: "https://sts/oauth2/token".into(),
            default_ttl: 300,
            max_ttl: 3600,
            clock_skew: 30,
            max_assertion_lifetime: 300,
        }
    }

    fn input(subject_exp: Option<i64>) -> DecideInput<'static> {
        DecideInput {
            principal: Principal {
                kind: PrincipalKind::Workload,
                id: "spiffe://td/w",
                attrs: &[],
            },
            client_id: "spiffe://td/w",
            authenticated_client: None,
            grant_type: "g",
            default_audiences: &[],
            ttl_cap: 3600,
            subject_exp,
            act: None,
            source: "",
            now: 1000,
        }
    }

    fn params(aud: &str, scope: &str, ttl: Option<i64>) -> TokenParams {
        TokenParams {
            lease: None,
            scope: Some(scope.into()),
            resources: vec![],
            audience: Some(aud.into()),
            requested_ttl: ttl,
        }
    }

    #[test]
    fn policy_decides_audience_scopes_and_cap() {
        let s = settings();
        let g = decide(
            &s,
            &Fixed,
            input(None),
            &params("a", "r r", None),
            &mut vec![],
        )
        .unwrap();
        assert_eq!(
            (g.scopes, g.ttl, g.policies),
            (vec!["r".to_string()], 120, vec!["p1".to_string()])
        );
        assert_eq!(
            decide(
                &s,
                &Fixed,
                input(None),
                &params("b", "r", None),
                &mut vec![]
            )
            .unwrap_err(),
            Denial::TargetNotAllowed("b".into())
        );
        assert_eq!(
            decide(
                &s,
                &Fixed,
                input(None),
                &params("a", "w", None),
                &mut vec![]
            )
            .unwrap_err(),
            Denial::ScopeNotAllowed("w".into())
        );
    }

    /// `token` names the audience action, so the audience's permit would grant it as a scope.
    #[test]
    fn token_is_not_a_scope() {
        let s = settings();
        for scope in ["token", "r token"] {
            let d = decide(
                &s,
                &Fixed,
                input(None),
                &params("a", scope, None),
                &mut vec![],
            )
            .unwrap_err();
            assert_eq!(d, Denial::ScopeNotAllowed("token".into()), "{scope}");
            assert_eq!(d.reason(), "scope_not_allowed");
        }
    }

    /// An entry's permit of its SVIDs must not grant them as scopes of a token.
    #[test]
    fn svid_actions_are_not_scopes() {
        let s = settings();
        for scope in ["svid_x509", "r svid_jwt"] {
            let d = decide(
                &s,
                &Fixed,
                input(None),
                &params("a", scope, None),
                &mut vec![],
            )
            .unwrap_err();
            assert_eq!(d.code(), mayfly_proto::ErrorCode::InvalidScope, "{scope}");
            assert!(matches!(d, Denial::ScopeNotAllowed(ref s) if s.starts_with("svid_")));
        }
    }

    #[test]
    fn never_outlives_the_subject() {
        let s = settings();
        // Default lifetime is clamped to what the subject has left.
        let g = decide(
            &s,
            &Fixed,
            input(Some(1060)),
            &params("a", "r", None),
            &mut vec![],
        )
        .unwrap();
        assert_eq!(g.ttl, 60);
        // Explicitly asking for more is refused.
        assert_eq!(
            decide(
                &s,
                &Fixed,
                input(Some(1060)),
                &params("a", "r", Some(90)),
                &mut vec![]
            )
            .unwrap_err(),
            Denial::LifetimeBeyondSubject(60)
        );
    }
}
