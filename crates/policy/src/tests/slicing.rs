//! Slicing never changes a decision: random requests, sliced against the whole set.

use super::*;
use crate::PrincipalKind::{Client, Workload};

const CLIENTS: &[&str] = &["web", "billing", "ops", "nobody"];
const WORKLOADS: &[&str] = &[
    "spiffe://x/ns/a/sa/api",
    "spiffe://x/ns/b/sa/web",
    "spiffe://x/gha/shop",
    "spiffe://x/unknown",
];
const ACTIONS: &[&str] = &["token", "read", "write", "deploy", "admin", "undeclared"];
const AUDIENCES: &[&str] = &[
    "https://a",
    "https://b",
    "https://c",
    "https://d",
    "https://unknown",
];
const NAMESPACES: &[&str] = &["a", "b", "c"];

fn random_policy(rng: &mut Rng, i: usize) -> String {
    let effect = if rng.below(6) == 0 {
        "forbid"
    } else {
        "permit"
    };
    let principal = match rng.below(5) {
        0 => format!("principal == Client::\"{}\"", rng.pick(CLIENTS)),
        1 => format!("principal == Workload::\"{}\"", rng.pick(WORKLOADS)),
        2 => "principal is Workload".to_string(),
        3 => "principal is Client".to_string(),
        _ => "principal".to_string(),
    };
    let declared = &ACTIONS[..5];
    let action = match rng.below(5) {
        0 => "action".to_string(),
        1 => format!(
            "action in [Action::\"{}\", Action::\"{}\"]",
            rng.pick(declared),
            rng.pick(declared)
        ),
        2 => "action in Action::\"admin\"".to_string(),
        _ => format!("action == Action::\"{}\"", rng.pick(&declared[..4])),
    };
    let resource = match rng.below(4) {
        0 => "resource".to_string(),
        1 => format!("resource in Audience::\"{}\"", rng.pick(&AUDIENCES[..4])),
        _ => format!("resource == Audience::\"{}\"", rng.pick(&AUDIENCES[..4])),
    };
    let when = match rng.below(5) {
        0 => String::new(),
        1 => format!(
            "when {{ principal is Workload && principal has namespace && principal.namespace == \"{}\" }}",
            rng.pick(NAMESPACES)
        ),
        2 => format!("when {{ context.requested_ttl > {} }}", rng.below(600)),
        3 => "unless { context.source like \"10.*\" }".to_string(),
        // Evaluation errors (overflow) must show up, and only where the scope matches.
        _ => "when { context.requested_ttl * 9223372036854775807 > 1 }".to_string(),
    };
    format!("@id(\"p{i}\") {effect}({principal}, {action}, {resource}) {when};")
}

#[test]
fn sliced_and_unsliced_decide_alike_on_random_requests() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..4 {
        let text: String = (0..80).map(|i| random_policy(&mut rng, i) + "\n").collect();
        let e = PolicyEngine::from_sources(
            SCHEMA,
            &files(&[("random.cedar", &text)]),
            &[
                grant("web", &["https://a", "https://b"], &["read"]),
                grant("billing", &["https://c"], &["read", "write"]),
            ],
        )
        .unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert!(
            e.index.max_slice() < e.policy_ids().len(),
            "slicing leaves policies out"
        );
        let mut allowed = 0;
        for _ in 0..2000 {
            let kind = if rng.below(2) == 0 { Client } else { Workload };
            let id = match kind {
                Client => rng.pick(CLIENTS),
                Workload => rng.pick(WORKLOADS),
            };
            let ns = rng.pick(NAMESPACES);
            let attrs_full = [("issuer", "i"), ("subject", "s"), ("namespace", ns)];
            let attrs = if rng.below(3) == 0 {
                &attrs_full[..2]
            } else {
                &attrs_full[..]
            };
            let mut r = req(kind, id, attrs, rng.pick(ACTIONS), rng.pick(AUDIENCES));
            r.requested_ttl = if rng.below(10) == 0 {
                0
            } else {
                rng.below(900) as i64
            };
            r.source = if rng.below(2) == 0 {
                "10.0.0.1"
            } else {
                "192.0.2.1"
            };
            let sliced = e.outcome_sliced(&r);
            let full = e.outcome_full(&r);
            assert_eq!(sliced, full, "round {round}: {r:?}");
            // And decide() (which skips evaluation when no slice applies, and takes the sugar
            // fast path when it can) decides alike, ids, max_ttl and errors included.
            let d = e.decide(&r);
            assert_eq!(d, e.decide_unsliced(&r), "round {round}: {r:?}");
            if d.allow {
                allowed += 1;
            }
        }
        assert!(
            allowed > 50,
            "round {round}: the random sets allow something ({allowed})"
        );
    }
}

#[test]
fn slices_know_whether_their_policies_read_the_context() {
    let e = engine(&[(
        "p.cedar",
        r#"
        @id("plain") permit(principal is Client, action == Action::"read", resource == Audience::"https://a")
        when { resource in [Audience::"https://a"] && principal != Client::"context" };
        @id("attr") permit(principal, action == Action::"write", resource) when { context.requested_ttl < 60 };
        @id("has") permit(principal, action == Action::"deploy", resource == Audience::"https://a")
        unless { context has grant_type };
        @id("nested") forbid(principal, action == Action::"deploy", resource == Audience::"https://b")
        when { if true then { a: [context.now] }.a.contains(0) else false };
        "#,
    )]);
    let reads =
        |action: &str, audience: &str| e.index.shared(action, audience).map(|s| s.reads_context);
    assert_eq!(reads("read", "https://a"), Some(false));
    assert_eq!(reads("write", "https://a"), Some(true));
    assert_eq!(reads("deploy", "https://a"), Some(true));
    assert_eq!(reads("deploy", "https://b"), Some(true));
    assert_eq!(reads("read", "https://b"), None);
    // An empty context decides alike where nothing reads it.
    for r in [
        req(Client, "web", &[], "read", "https://a"),
        req(Client, "web", &[], "write", "https://a"),
        req(Client, "web", &[], "deploy", "https://a"),
    ] {
        assert_eq!(e.decide(&r), e.decide_unsliced(&r), "{r:?}");
    }
    assert!(
        e.decide(&req(Client, "web", &[], "read", "https://a"))
            .allow
    );
}
