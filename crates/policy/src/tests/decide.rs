//! Decisions: default deny, forbid wins, deciding ids, max_ttl, optional attributes, errors.

use super::*;
use crate::PrincipalKind::{Client, Workload};

const K8S: &str = "k8s-prod";
const API: &str = "spiffe://k8s-prod.example.org/ns/payments/sa/api";
const PAY: &str = "https://payments.example.test";

#[test]
fn default_deny_with_no_deciding_policy() {
    let e = engine(&[]);
    let d = e.decide(&req(Client, "web", &[], "token", "https://a"));
    assert_eq!(d, crate::PolicyDecision::default());
    assert!(!d.allow);
}

#[test]
fn example_allows_and_names_the_deciding_policy() {
    let e = example();
    let attrs = [
        ("issuer", K8S),
        ("subject", "system:serviceaccount:payments:api"),
        ("namespace", "payments"),
    ];
    let d = e.decide(&req(Workload, API, &attrs, "token", PAY));
    assert!(d.allow, "{d:?}");
    assert_eq!(d.policies, ["k8s-payments-token"]);
    assert_eq!(d.max_ttl, Some(600));
    assert!(d.errors.is_empty());

    let d = e.decide(&req(Workload, API, &attrs, "token", "https://elsewhere"));
    assert!(!d.allow);
    assert!(d.policies.is_empty());
}

#[test]
fn forbid_wins_and_is_the_deciding_policy() {
    let e = example();
    let attrs = [("issuer", K8S), ("subject", "s"), ("namespace", "payments")];
    let mut r = req(Workload, API, &attrs, "token", PAY);
    r.requested_ttl = 7200;
    let d = e.decide(&r);
    assert!(!d.allow);
    assert_eq!(d.policies, ["no-long-tokens"]);
    assert_eq!(d.max_ttl, None);
}

#[test]
fn every_satisfied_permit_is_reported_and_max_ttl_is_the_least() {
    let e = engine(&[(
        "p.cedar",
        r#"
        @id("long") @max_ttl("1h") permit(principal, action == Action::"read", resource);
        @id("short") @max_ttl("5m") permit(principal is Client, action, resource == Audience::"https://a");
        @id("uncapped") permit(principal == Client::"web", action == Action::"read", resource);
        @id("other") @max_ttl("1m") permit(principal == Client::"other", action, resource);
        "#,
    )]);
    let d = e.decide(&req(Client, "web", &[], "read", "https://a"));
    assert!(d.allow);
    assert_eq!(d.policies, ["long", "short", "uncapped"]);
    assert_eq!(d.max_ttl, Some(300));
    let d = e.decide(&req(Client, "web", &[], "read", "https://b"));
    assert_eq!(d.policies, ["long", "uncapped"]);
    assert_eq!(d.max_ttl, Some(3600));
}

#[test]
fn optional_attributes_are_tested_with_has() {
    let e = engine(&[(
        "gha.cedar",
        r#"@id("main") permit(principal is Workload, action == Action::"token", resource)
           when { principal has ref && principal.ref == "refs/heads/main" };
           @id("no-ref") permit(principal is Workload, action == Action::"read", resource)
           unless { principal has ref };"#,
    )]);
    let with_ref = [
        ("issuer", "i"),
        ("subject", "s"),
        ("ref", "refs/heads/main"),
    ];
    let without = [("issuer", "i"), ("subject", "s")];
    assert!(e.decide(&req(Workload, "w", &with_ref, "token", "a")).allow);
    assert!(!e.decide(&req(Workload, "w", &without, "token", "a")).allow);
    assert!(!e.decide(&req(Workload, "w", &with_ref, "read", "a")).allow);
    assert!(e.decide(&req(Workload, "w", &without, "read", "a")).allow);
    // Unknown attribute names are ignored, not errors.
    let extra = [
        ("issuer", "i"),
        ("subject", "s"),
        ("favourite_colour", "blue"),
    ];
    assert!(e.decide(&req(Workload, "w", &extra, "read", "a")).allow);
}

#[test]
fn context_is_visible_to_policies() {
    let e = engine(&[(
        "ctx.cedar",
        r#"@id("ctx") permit(principal, action == Action::"token", resource)
           when { context.grant_type == "client_credentials" && context.requested_ttl <= 300
                  && context.source like "10.*" && context.now > 1000
                  && context.client_id == "web" && context.actor == "" };"#,
    )]);
    let mut r = req(Client, "web", &[], "token", "a");
    r.source = "10.1.2.3";
    r.now = 2000;
    r.client_id = "web";
    assert!(e.decide(&r).allow);
    r.source = "192.0.2.1";
    assert!(!e.decide(&r).allow);
}

#[test]
fn a_workload_without_issuer_is_denied_with_an_error() {
    let e = engine(&[("any.cedar", r#"permit(principal, action, resource);"#)]);
    let d = e.decide(&req(Workload, "w", &[("subject", "s")], "token", "a"));
    assert!(!d.allow);
    assert!(d.errors[0].contains("issuer"), "{d:?}");
}

#[test]
fn an_evaluation_error_denies_even_beside_a_permit() {
    let e = engine(&[(
        "err.cedar",
        r#"@id("ok") permit(principal, action == Action::"token", resource);
           @id("overflow") forbid(principal, action == Action::"token", resource)
           when { context.requested_ttl * 9223372036854775807 > 0 };"#,
    )]);
    let d = e.decide(&req(Client, "web", &[], "token", "a"));
    assert!(!d.allow, "{d:?}");
    assert!(d.policies.is_empty());
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("overflow"), "{d:?}");
}

#[test]
fn action_groups_apply_to_their_members() {
    let e = engine(&[(
        "admin.cedar",
        r#"@id("admins") permit(principal == Client::"ops", action in Action::"admin", resource);"#,
    )]);
    assert!(e.decide(&req(Client, "ops", &[], "write", "a")).allow);
    assert!(e.decide(&req(Client, "ops", &[], "deploy", "a")).allow);
    assert!(!e.decide(&req(Client, "ops", &[], "read", "a")).allow);
    assert!(!e.decide(&req(Client, "dev", &[], "write", "a")).allow);
}

#[test]
fn unknown_actions_see_only_any_action_policies() {
    let e = engine(&[(
        "a.cedar",
        r#"@id("root") permit(principal == Client::"root", action, resource);
           @id("read") permit(principal, action == Action::"read", resource);"#,
    )]);
    assert!(e.decide(&req(Client, "root", &[], "undeclared", "a")).allow);
    assert!(!e.decide(&req(Client, "web", &[], "undeclared", "a")).allow);
}

#[test]
fn ids_with_quotes_and_backslashes_match_exactly() {
    let e = engine(&[(
        "q.cedar",
        r#"permit(principal == Workload::"spiffe://x/\"a\\b", action, resource == Audience::"https://a/?q=\"1\"");"#,
    )]);
    let attrs = [("issuer", "i"), ("subject", "s")];
    assert!(
        e.decide(&req(
            Workload,
            "spiffe://x/\"a\\b",
            &attrs,
            "read",
            "https://a/?q=\"1\""
        ))
        .allow
    );
    assert!(
        !e.decide(&req(
            Workload,
            "spiffe://x/\"a\\b",
            &attrs,
            "read",
            "https://a/?q=1"
        ))
        .allow
    );
}

#[test]
fn the_schema_decides_which_workload_attributes_reach_policies() {
    // An extra optional String attribute (an issuer's `attributes` mapping) is passed on;
    // an undeclared one is not.
    let schema = SCHEMA.replace(
        "trust_domain?: String,",
        "trust_domain?: String, team?: String,",
    );
    let e = PolicyEngine::from_sources(
        &schema,
        &files(&[(
            "team.cedar",
            r#"permit(principal is Workload, action == Action::"read", resource)
               when { principal has team && principal.team == "payments" };"#,
        )]),
        &[],
    )
    .unwrap();
    assert!(e.workload_attributes().contains(&"team".to_string()));
    let attrs = [("issuer", "i"), ("subject", "s"), ("team", "payments")];
    assert!(e.decide(&req(Workload, "w", &attrs, "read", "a")).allow);

    // A schema that declares only what it uses is fine; the rest is not passed on.
    let lean = r#"entity Client; entity Audience;
        entity Workload = { issuer: String, subject: String, namespace?: String };
        type Ctx = { grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String };
        action "token" appliesTo { principal: [Client, Workload], resource: [Audience], context: Ctx };"#;
    let e = PolicyEngine::from_sources(lean, &[], &[]).unwrap();
    assert_eq!(e.workload_attributes(), ["issuer", "namespace", "subject"]);
    let d = e.decide(&req(
        Workload,
        "w",
        &[("issuer", "i"), ("subject", "s"), ("ref", "x")],
        "token",
        "a",
    ));
    assert!(d.errors.is_empty(), "{d:?}");

    // An attribute mayfly cannot supply as a string refuses the schema.
    let long = SCHEMA.replace(
        "trust_domain?: String,",
        "trust_domain?: String, level?: Long,",
    );
    let err = PolicyEngine::from_sources(&long, &[], &[]).unwrap_err();
    assert!(
        matches!(&err, crate::PolicyError::SchemaMismatch { message, .. } if message.contains("Workload")),
        "{err}"
    );
}
