//! The engine as the issuance engine's `Authorizer`: the same decisions as `decide`, deciding
//! ids recorded once per request trace, evaluation errors reported (and denied).

use mayfly_proto::{ACTION_TOKEN, Authorizer, AuthzDecision, AuthzQuery, Principal};

use super::*;
use crate::PrincipalKind::{Client, Workload};

fn query<'a>(id: &'a str, action: &'a str, audience: &'a str) -> AuthzQuery<'a> {
    AuthzQuery {
        principal: Principal {
            kind: mayfly_proto::PrincipalKind::Client,
            id,
            attrs: &[],
        },
        action,
        audience,
        grant_type: "client_credentials",
        requested_ttl: 300,
        source: "",
        now: 0,
        client_id: "",
        actor: "",
    }
}

#[test]
fn one_trace_collects_a_request_without_repeats() {
    let e =
        PolicyEngine::sugar_only(&[grant("billing", &["https://a"], &["read", "write"])]).unwrap();
    let mut trace = Vec::new();
    for action in [ACTION_TOKEN, "read", "write"] {
        let d = e.authorize(&query("billing", action, "https://a"), &mut trace);
        assert_eq!(
            d,
            AuthzDecision {
                allow: true,
                max_ttl: None
            },
            "{action}"
        );
    }
    assert_eq!(trace, ["client:billing:token", "client:billing:scopes"]);
    let d = e.authorize(&query("billing", "delete", "https://a"), &mut trace);
    assert_eq!(d, AuthzDecision::DENY);
    assert_eq!(trace.len(), 2, "a default deny names no policy");
}

#[test]
fn cedar_decisions_match_decide() {
    let e = engine(&[(
        "p.cedar",
        r#"
        @id("long") @max_ttl("1h") permit(principal, action == Action::"read", resource);
        @id("short") @max_ttl("5m") permit(principal is Client, action, resource == Audience::"https://a");
        @id("no-b") forbid(principal, action == Action::"write", resource == Audience::"https://b");
        "#,
    )]);
    for (kind, action, audience) in [
        (Client, "read", "https://a"),
        (Client, "read", "https://b"),
        (Client, "write", "https://a"),
        (Client, "write", "https://b"),
        (Workload, "read", "https://a"),
    ] {
        let attrs: &[(&str, &str)] = &[("issuer", "i"), ("subject", "s")];
        let r = req(kind, "web", attrs, action, audience);
        assert_eq!(via_authorizer(&e, &r), e.decide(&r), "{r:?}");
    }
}

#[test]
fn evaluation_errors_are_reported_and_deny() {
    let e = engine(&[("any.cedar", r#"permit(principal, action, resource);"#)]);
    let r = req(Workload, "w", &[("subject", "s")], "token", "a");
    let d = via_authorizer(&e, &r);
    assert!(!d.allow);
    assert!(d.policies.is_empty());
    assert!(d.errors[0].contains("issuer"), "{d:?}");
}
