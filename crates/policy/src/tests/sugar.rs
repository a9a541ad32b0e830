//! Clients' audiences and scopes as generated policies on the same decision path.

use super::*;
use crate::PrincipalKind::{Client, Workload};

#[test]
fn sugar_allows_exactly_the_listed_audiences_and_scopes() {
    let e = PolicyEngine::sugar_only(&[
        grant(
            "billing",
            &["https://api.example.test", "https://b.example.test"],
            &["read", "write"],
        ),
        grant("reporter", &["https://api.example.test"], &[]),
    ])
    .unwrap();
    assert_eq!(
        e.policy_ids(),
        [
            "client:billing:token",
            "client:billing:scopes",
            "client:reporter:token"
        ]
    );
    let d = e.decide(&req(
        Client,
        "billing",
        &[],
        "token",
        "https://b.example.test",
    ));
    assert!(d.allow);
    assert_eq!(d.policies, ["client:billing:token"]);
    assert_eq!(d.max_ttl, None);
    let d = e.decide(&req(
        Client,
        "billing",
        &[],
        "write",
        "https://api.example.test",
    ));
    assert_eq!(d.policies, ["client:billing:scopes"]);
    assert!(
        !e.decide(&req(
            Client,
            "billing",
            &[],
            "token",
            "https://c.example.test"
        ))
        .allow
    );
    assert!(
        !e.decide(&req(
            Client,
            "billing",
            &[],
            "write",
            "https://c.example.test"
        ))
        .allow
    );
    assert!(
        !e.decide(&req(
            Client,
            "billing",
            &[],
            "admin",
            "https://api.example.test"
        ))
        .allow
    );
    // No scopes: a token for the audience, but no scope.
    assert!(
        e.decide(&req(
            Client,
            "reporter",
            &[],
            "token",
            "https://api.example.test"
        ))
        .allow
    );
    assert!(
        !e.decide(&req(
            Client,
            "reporter",
            &[],
            "read",
            "https://api.example.test"
        ))
        .allow
    );
    // Another principal, or a workload with the client's name, gets nothing.
    assert!(
        !e.decide(&req(
            Client,
            "stranger",
            &[],
            "token",
            "https://api.example.test"
        ))
        .allow
    );
    let attrs = [("issuer", "i"), ("subject", "s")];
    assert!(
        !e.decide(&req(
            Workload,
            "billing",
            &attrs,
            "token",
            "https://api.example.test"
        ))
        .allow
    );
}

#[test]
fn sugar_escapes_ids_audiences_and_scopes() {
    let odd = "we\"ird\\client\n";
    let e = PolicyEngine::sugar_only(&[grant(odd, &["https://a/\"x\""], &["read:all", "a\"b"])])
        .unwrap();
    let d = e.decide(&req(Client, odd, &[], "token", "https://a/\"x\""));
    assert!(d.allow);
    assert_eq!(
        d.policies,
        [format!("client:{odd}:token")],
        "ids are reported unescaped"
    );
    assert!(
        e.decide(&req(Client, odd, &[], "a\"b", "https://a/\"x\""))
            .allow
    );
    assert!(
        e.decide(&req(Client, odd, &[], "read:all", "https://a/\"x\""))
            .allow
    );
    assert!(
        !e.decide(&req(Client, "weird", &[], "token", "https://a/\"x\""))
            .allow
    );
    assert_eq!(e.policy_ids()[0], format!("client:{odd}:token"));
}

#[test]
fn a_client_without_audiences_gets_no_policies() {
    let e = PolicyEngine::sugar_only(&[grant("lonely", &[], &["read"])]).unwrap();
    assert!(e.policy_ids().is_empty());
    assert!(
        !e.decide(&req(Client, "lonely", &[], "token", "https://a"))
            .allow
    );
}

#[test]
fn sugar_and_files_decide_together_and_forbids_still_win() {
    let e = PolicyEngine::from_sources(
        SCHEMA,
        &files(&[(
            "guard.cedar",
            r#"@id("no-writes-on-friday") forbid(principal, action == Action::"write", resource)
               when { context.now == 5 };
               @id("extra") @max_ttl("2m") permit(principal == Client::"billing", action == Action::"deploy", resource);"#,
        )]),
        &[grant("billing", &["https://a"], &["read", "write"])],
    )
    .unwrap();
    let mut r = req(Client, "billing", &[], "write", "https://a");
    assert_eq!(e.decide(&r).policies, ["client:billing:scopes"]);
    r.now = 5;
    let d = e.decide(&r);
    assert!(!d.allow);
    assert_eq!(d.policies, ["no-writes-on-friday"]);
    let d = e.decide(&req(Client, "billing", &[], "deploy", "https://z"));
    assert!(d.allow);
    assert_eq!(d.max_ttl, Some(120));
}

#[test]
fn builtin_schema_declares_token_and_every_scope_once() {
    let s = crate::builtin_schema(["read", "write", "read"]);
    assert_eq!(s.matches("\"read\"").count(), 1);
    assert!(s.contains("action \"token\", \"read\", \"write\" appliesTo"));
    // The built-in schema passes the checks a user schema must pass.
    PolicyEngine::from_sources(&s, &[], &[grant("c", &["https://a"], &["read"])]).unwrap();
}
