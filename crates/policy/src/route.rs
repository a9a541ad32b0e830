//! Per-route policies of the legacy proxy (`policy_file` on a `[[proxy.routes]]` entry): which
//! workloads may make which HTTP calls through a route, beyond its audience and scopes.
//!
//! The request: principal `Workload::"<token sub>"`, action the HTTP method (`Action::"GET"`),
//! resource `Route::"<route name>"`, context `{ path, client_id, audience, scopes }` where
//! `path` is the request path below the route's prefix (starting with `/`). Default deny: a
//! route with a policy forwards only what some `permit` allows and no `forbid` denies.

use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::PolicyError;

/// The schema route policies are validated against (strict mode).
pub const ROUTE_SCHEMA: &str = r#"
entity Workload;
entity Route;
action "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" appliesTo {
  principal: [Workload],
  resource: [Route],
  context: { path: String, client_id: String, audience: String, scopes: Set<String> }
};
"#;

/// Largest policy text accepted.
const MAX_POLICY_BYTES: usize = 256 * 1024;

/// One route's compiled, validated policy set.
#[derive(Debug)]
pub struct RoutePolicy {
    set: PolicySet,
    authorizer: Authorizer,
    /// `Workload`, `Action`, `Route`: parsed once, not per request.
    types: [EntityTypeName; 3],
}

/// What a route policy is asked.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The token's `sub`.
    pub subject: &'a str,
    /// The token's `client_id`.
    pub client_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Path below the route's prefix, starting with `/`.
    pub path: &'a str,
    /// The route's audience (the token carries it).
    pub audience: &'a str,
    /// The token's scopes.
    pub scopes: &'a [String],
}

/// A route policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// Forward the request.
    pub allow: bool,
    /// Ids of the policies that decided (`policy0`... or their `@id`), or why nothing could.
    pub reasons: Vec<String>,
}

fn err(origin: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Route {
        origin: origin.to_string(),
        message: message.into(),
    }
}

impl RoutePolicy {
    /// Parse and validate `text` (from `origin`, named in errors) against [`ROUTE_SCHEMA`].
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(err(
                origin,
                format!("{} bytes, over the limit of {MAX_POLICY_BYTES}", text.len()),
            ));
        }
        let set = PolicySet::from_str(text).map_err(|e| err(origin, format!("{e:?}")))?;
        let schema = Schema::from_cedarschema_str(ROUTE_SCHEMA)
            .map_err(|e| err("route schema", e.to_string()))?
            .0;
        let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let problems: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(err(
                origin,
                format!(
                    "does not fit the route schema (principal Workload, action the HTTP method, resource Route, context path/client_id/audience/scopes): {}",
                    problems.join("; ")
                ),
            ));
        }
        if set.policies().next().is_none() {
            return Err(err(
                origin,
                "holds no policy: a route policy with nothing in it would deny every request",
            ));
        }
        let ty =
            |t: &str| EntityTypeName::from_str(t).map_err(|e| err("route schema", e.to_string()));
        Ok(Self {
            set,
            authorizer: Authorizer::new(),
            types: [ty("Workload")?, ty("Action")?, ty("Route")?],
        })
    }

    /// Decide one request. Anything that cannot be asked (an unknown method) is denied.
    pub fn decide(&self, req: &RouteRequest<'_>) -> RouteDecision {
        match self.request(req) {
            Ok(request) => {
                let r = self
                    .authorizer
                    .is_authorized(&request, &self.set, &Entities::empty());
                // Name deciding policies by their `@id("...")` where they have one.
                let mut reasons: Vec<String> = r
                    .diagnostics()
                    .reason()
                    .map(|pid| {
                        self.set
                            .policy(pid)
                            .and_then(|p| p.annotation("id"))
                            .map_or_else(|| pid.to_string(), str::to_string)
                    })
                    .collect();
                reasons.extend(r.diagnostics().errors().map(|e| e.to_string()));
                reasons.sort();
                RouteDecision {
                    allow: r.decision() == Decision::Allow,
                    reasons,
                }
            }
            Err(why) => RouteDecision {
                allow: false,
                reasons: vec![why],
            },
        }
    }

    fn request(&self, req: &RouteRequest<'_>) -> Result<Request, String> {
        let [workload, action, route] = &self.types;
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };
        let principal = uid(workload, req.subject);
        let action = uid(action, req.method);
        let resource = uid(route, req.route);
        let scopes = RestrictedExpression::new_set(
            req.scopes
                .iter()
                .map(|s| RestrictedExpression::new_string(s.clone())),
        );
        let context = Context::from_pairs([
            (
                "path".to_string(),
                RestrictedExpression::new_string(req.path.to_string()),
            ),
            (
                "client_id".to_string(),
                RestrictedExpression::new_string(req.client_id.to_string()),
            ),
            (
                "audience".to_string(),
                RestrictedExpression::new_string(req.audience.to_string()),
            ),
            ("scopes".to_string(), scopes),
        ])
        .map_err(|e| e.to_string())?;
        Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        subject: &'a str,
        method: &'a str,
        path: &'a str,
        scopes: &'a [String],
    ) -> RouteRequest<'a> {
        RouteRequest {
            subject,
            client_id: subject,
            method,
            route: "stripe",
            path,
            audience: "https://api.stripe.com",
            scopes,
        }
    }

    const POLICY: &str = r#"
        @id("billing-reads-charges")
        permit(principal == Workload::"billing", action == Action::"GET", resource == Route::"stripe")
        when { context.path like "/v1/charges*" };
        @id("refunds-need-the-scope")
        permit(principal, action == Action::"POST", resource == Route::"stripe")
        when { context.path like "/v1/refunds*" && context.scopes.contains("refunds") };
        @id("never-delete")
        forbid(principal, action == Action::"DELETE", resource);
    "#;

    #[test]
    fn permits_forbids_and_default_deny() {
        let p = RoutePolicy::parse(POLICY, "stripe.cedar").unwrap();
        let none: Vec<String> = vec![];
        let refunds = vec!["refunds".to_string()];
        let d = p.decide(&req("billing", "GET", "/v1/charges/ch_1", &none));
        assert!(d.allow);
        assert_eq!(d.reasons, vec!["billing-reads-charges"]);
        assert!(
            !p.decide(&req("billing", "POST", "/v1/charges", &none))
                .allow
        );
        assert!(!p.decide(&req("reports", "GET", "/v1/charges", &none)).allow);
        assert!(
            !p.decide(&req("billing", "POST", "/v1/refunds", &none))
                .allow
        );
        assert!(
            p.decide(&req("billing", "POST", "/v1/refunds", &refunds))
                .allow
        );
        let d = p.decide(&req("billing", "DELETE", "/v1/charges/ch_1", &refunds));
        assert!(!d.allow);
        // An unknown method cannot be asked: denied.
        let d = p.decide(&req("billing", "BREW", "/v1/charges", &none));
        assert!(!d.allow);
    }

    #[test]
    fn policies_that_do_not_fit_are_refused_with_the_reason() {
        let e = RoutePolicy::parse(
            "permit(principal, action, resource) when { context.methd == \"GET\" };",
            "r.cedar",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("r.cedar") && e.contains("route schema"), "{e}");
        let e = RoutePolicy::parse("permit(principal, action, resource", "r.cedar")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.cedar"), "{e}");
        let e = RoutePolicy::parse("// nothing\n", "r.cedar")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no policy"), "{e}");
    }
}
