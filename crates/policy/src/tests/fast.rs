//! The sugar fast path: taken where only a client's generated policies could apply, not taken
//! elsewhere, and always Cedar's decision (compared with the whole set, unsliced).

use std::collections::HashSet;

use super::*;
use crate::PrincipalKind::{Client, Workload};
use crate::text::cedar_string;

/// `decide`, the sliced Cedar path and the whole set agree on everything; returns whether the
/// fast path was taken.
fn check(e: &PolicyEngine, r: &PolicyRequest<'_>) -> bool {
    let full = e.decide_unsliced(r);
    assert_eq!(e.decide(r), full, "decide: {r:?}");
    assert_eq!(e.decide_sliced(r), full, "decide_sliced: {r:?}");
    assert_eq!(via_authorizer(e, r), full, "authorizer: {r:?}");
    match e.sugar_outcome(r) {
        Some(o) => {
            assert_eq!(e.finish(o), full, "fast path: {r:?}");
            true
        }
        None => false,
    }
}

#[test]
fn pure_sugar_takes_the_fast_path() {
    let e = PolicyEngine::sugar_only(&[
        grant("billing", &["https://a", "https://b"], &["read", "write"]),
        grant("reporter", &["https://a"], &[]),
        grant("lonely", &[], &["read"]),
    ])
    .unwrap();
    assert_eq!(
        e.sugar.len(),
        2,
        "billing and reporter (lonely has no policies)"
    );
    for (id, action, audience, deciding) in [
        (
            "billing",
            "token",
            "https://a",
            Some("client:billing:token"),
        ),
        (
            "billing",
            "token",
            "https://b",
            Some("client:billing:token"),
        ),
        (
            "billing",
            "write",
            "https://b",
            Some("client:billing:scopes"),
        ),
        (
            "billing",
            "read",
            "https://a",
            Some("client:billing:scopes"),
        ),
        ("billing", "token", "https://c", None),
        ("billing", "read", "https://c", None),
        ("billing", "undeclared", "https://a", None),
        (
            "reporter",
            "token",
            "https://a",
            Some("client:reporter:token"),
        ),
        ("reporter", "read", "https://a", None),
    ] {
        let r = req(Client, id, &[], action, audience);
        assert!(check(&e, &r), "fast path not taken: {r:?}");
        let d = e.decide(&r);
        assert_eq!(d.allow, deciding.is_some(), "{r:?}");
        assert_eq!(d.policies, deciding.into_iter().collect::<Vec<_>>());
        assert_eq!(d.max_ttl, None);
    }
    // Not taken (nothing to take it for): a workload, an unknown client, a client without
    // policies. Cedar's default deny is as cheap there (no slice applies).
    let attrs = [("issuer", "i"), ("subject", "s")];
    for r in [
        req(Workload, "billing", &attrs, "token", "https://a"),
        req(Client, "stranger", &[], "token", "https://a"),
        req(Client, "lonely", &[], "token", "https://a"),
    ] {
        assert!(!check(&e, &r), "{r:?}");
        assert!(!e.decide(&r).allow);
    }
}

#[test]
fn the_fast_path_reads_escaped_ids_audiences_and_scopes_as_cedar_does() {
    let odd = "we\"ird\\client\n\u{1}é";
    let aud = "https://a/\"x\"\\y\tü";
    let e = PolicyEngine::sugar_only(&[grant(odd, &[aud, "https://b"], &["read:all", "a\"b"])])
        .unwrap();
    assert_eq!(e.sugar.len(), 1);
    for (action, audience, allow) in [
        ("token", aud, true),
        ("a\"b", aud, true),
        ("read:all", "https://b", true),
        ("token", "https://a/\"x\"\\y", false),
        ("a\\\"b", aud, false),
    ] {
        let r = req(Client, odd, &[], action, audience);
        assert!(check(&e, &r), "{r:?}");
        assert_eq!(e.decide(&r).allow, allow, "{r:?}");
    }
}

#[test]
fn other_policies_that_could_apply_send_the_request_to_cedar() {
    let e = PolicyEngine::from_sources(
        SCHEMA,
        &files(&[(
            "p.cedar",
            r#"
            @id("billing-no-read") forbid(principal == Client::"billing", action == Action::"read", resource);
            @id("web-extra") @max_ttl("2m")
            permit(principal == Client::"web", action == Action::"token", resource == Audience::"https://z");
            @id("guard") forbid(principal, action == Action::"token", resource) when { context.requested_ttl > 3600 };
            @id("clients-c") permit(principal is Client, action == Action::"read", resource == Audience::"https://c");
            @id("in-ops") forbid(principal in Client::"ops", action == Action::"deploy", resource);
            "#,
        )]),
        &[
            grant("billing", &["https://a"], &["read"]),
            grant("web", &["https://a"], &["read"]),
            grant("ops", &["https://a", "https://c"], &["read", "admin"]),
        ],
    )
    .unwrap();
    assert_eq!(
        e.sugar.len(),
        1,
        "only ops: billing and web have policies of their own"
    );
    let mut long = req(Client, "ops", &[], "token", "https://a");
    long.requested_ttl = 7200;
    for (r, fast, allow, ids, max_ttl) in [
        // A user forbid pinned to the client: Cedar, which denies.
        (
            req(Client, "billing", &[], "read", "https://a"),
            false,
            false,
            vec!["billing-no-read"],
            None,
        ),
        // The client's other actions go to Cedar too (its own slice holds a user policy).
        (
            req(Client, "billing", &[], "write", "https://a"),
            false,
            false,
            vec![],
            None,
        ),
        // A user permit pinned to the client, with a @max_ttl.
        (
            req(Client, "web", &[], "token", "https://z"),
            false,
            true,
            vec!["web-extra"],
            Some(120),
        ),
        (
            req(Client, "web", &[], "read", "https://a"),
            false,
            true,
            vec!["client:web:scopes"],
            None,
        ),
        // A shared forbid on `token`, whether or not it applies.
        (
            req(Client, "ops", &[], "token", "https://a"),
            false,
            true,
            vec!["client:ops:token"],
            None,
        ),
        (long, false, false, vec!["guard"], None),
        // A principal-unconstrained permit on (read, https://c) adds its id.
        (
            req(Client, "ops", &[], "read", "https://c"),
            false,
            true,
            vec!["client:ops:scopes", "clients-c"],
            None,
        ),
        // `principal in Client::"ops"` is shared: deploy goes to Cedar, which denies.
        (
            req(Client, "ops", &[], "deploy", "https://a"),
            false,
            false,
            vec!["in-ops"],
            None,
        ),
        // `write` belongs to the `admin` group the client lists: Cedar, which allows.
        (
            req(Client, "ops", &[], "write", "https://a"),
            false,
            true,
            vec!["client:ops:scopes"],
            None,
        ),
        // Where nothing else could apply: the fast path.
        (
            req(Client, "ops", &[], "read", "https://a"),
            true,
            true,
            vec!["client:ops:scopes"],
            None,
        ),
        (
            req(Client, "ops", &[], "admin", "https://c"),
            true,
            true,
            vec!["client:ops:scopes"],
            None,
        ),
        (
            req(Client, "ops", &[], "read", "https://b"),
            true,
            false,
            vec![],
            None,
        ),
    ] {
        assert_eq!(check(&e, &r), fast, "fast path: {r:?}");
        let d = e.decide(&r);
        assert_eq!(d.allow, allow, "{r:?}");
        assert_eq!(d.policies, ids, "{r:?}");
        assert_eq!(d.max_ttl, max_ttl, "{r:?}");
        assert!(d.errors.is_empty());
    }
}

const CLIENTS: &[&str] = &[
    "web",
    "billing",
    "ops",
    "batch",
    "ci",
    "we\"ird\\id\n",
    "ünï",
    "x:y",
];
const WORKLOADS: &[&str] = &["spiffe://x/ns/a/sa/api", "web"];
const AUDIENCES: &[&str] = &[
    "https://a",
    "https://b",
    "https://c",
    "https://d",
    "https://q/\"x\"\\",
    "https://ü",
];
/// Scopes a client may list: plain actions, and `admin`, the group of `write` and `deploy`.
const SCOPES: &[&str] = &["read", "write", "deploy", "admin"];
const ACTIONS: &[&str] = &["token", "read", "write", "deploy", "admin", "undeclared"];

fn random_grants(rng: &mut Rng) -> Vec<ClientGrant> {
    let mut out = Vec::new();
    for &c in CLIENTS {
        if rng.below(8) == 0 {
            continue;
        }
        let mut g = grant(c, &[], &[]);
        // One to four audiences; one time in eight none (then no policies at all).
        for _ in 0..rng.below(8).div_ceil(2) {
            g.audiences.push(rng.pick(AUDIENCES).into());
        }
        for _ in 0..rng.below(4) {
            g.scopes.push(rng.pick(SCOPES).into());
        }
        out.push(g);
    }
    out
}

/// A user policy mixing with the sugar; the clients it pins by `principal ==` go to `pinned`.
fn random_user_policy(rng: &mut Rng, i: usize, pinned: &mut HashSet<&'static str>) -> String {
    let effect = if rng.below(3) == 0 {
        "forbid"
    } else {
        "permit"
    };
    let principal = match rng.below(7) {
        0 | 1 => {
            let c = rng.pick(CLIENTS);
            pinned.insert(c);
            format!("principal == Client::{}", cedar_string(c))
        }
        2 => format!("principal in Client::{}", cedar_string(rng.pick(CLIENTS))),
        3 => "principal is Client".into(),
        4 => format!(
            "principal == Workload::{}",
            cedar_string(rng.pick(WORKLOADS))
        ),
        5 => "principal is Workload".into(),
        _ => "principal".into(),
    };
    let declared = &ACTIONS[..5];
    let action = match rng.below(6) {
        0 => "action".into(),
        1 => format!(
            "action in [Action::\"{}\", Action::\"{}\"]",
            rng.pick(declared),
            rng.pick(declared)
        ),
        2 => "action in Action::\"admin\"".into(),
        _ => format!("action == Action::\"{}\"", rng.pick(&declared[..4])),
    };
    let resource = match rng.below(4) {
        0 => "resource".into(),
        _ => format!(
            "resource == Audience::{}",
            cedar_string(rng.pick(AUDIENCES))
        ),
    };
    let when = match rng.below(4) {
        0 => String::new(),
        1 => format!("when {{ context.requested_ttl > {} }}", rng.below(600)),
        2 => format!(
            "when {{ resource in [Audience::{}] }}",
            cedar_string(rng.pick(AUDIENCES))
        ),
        _ => "when { context.requested_ttl * 9223372036854775807 > 1 }".into(),
    };
    let ttl = if effect == "permit" && rng.below(2) == 0 {
        "@max_ttl(\"5m\") "
    } else {
        ""
    };
    format!("@id(\"u{i}\") {ttl}{effect}({principal}, {action}, {resource}) {when};\n")
}

#[test]
fn the_fast_path_decides_like_the_whole_set_on_random_requests() {
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let (mut fast, mut fast_allowed, mut mixed_fast, mut mixed_cedar) = (0, 0, 0, 0);
    // Cedar evaluations whose slices never read `context` (built with an empty one).
    let mut without_context = 0;
    let mut total = 0;
    for round in 0..24 {
        // A third of the rounds pure sugar; the rest mix in 1 to 16 user policies.
        let n = if round % 3 == 0 { 0 } else { 1 + rng.below(16) };
        let mut pinned = HashSet::new();
        let text: String = (0..n)
            .map(|i| random_user_policy(&mut rng, i, &mut pinned))
            .collect();
        let grants = random_grants(&mut rng);
        let e = PolicyEngine::from_sources(SCHEMA, &files(&[("u.cedar", &text)]), &grants)
            .unwrap_or_else(|err| panic!("round {round}: {err}\n{text}"));
        for _ in 0..1500 {
            let kind = if rng.below(8) == 0 { Workload } else { Client };
            let id = match (kind, rng.below(12)) {
                (Workload, _) => rng.pick(WORKLOADS),
                (Client, 0) => "nobody",
                (Client, _) => rng.pick(CLIENTS),
            };
            let attrs = [("issuer", "i"), ("subject", "s")];
            // Half the client requests ask what the client's lists name (mostly allowed); the
            // rest anything.
            let listed = grants
                .iter()
                .find(|g| g.client_id == id && !g.audiences.is_empty())
                .filter(|_| kind == Client && rng.below(2) == 0);
            let (action, audience) = match listed {
                Some(g) => {
                    let a = rng.below(g.scopes.len() + 1);
                    (
                        g.scopes.get(a).map_or("token", String::as_str),
                        g.audiences[rng.below(g.audiences.len())].as_str(),
                    )
                }
                None if rng.below(10) == 0 => (rng.pick(ACTIONS), "https://unknown"),
                None => (rng.pick(ACTIONS), rng.pick(AUDIENCES)),
            };
            let mut r = req(kind, id, &attrs, action, audience);
            r.requested_ttl = rng.below(900) as i64;
            total += 1;
            let took = check(&e, &r);
            if took {
                fast += 1;
                if e.decide(&r).allow {
                    fast_allowed += 1;
                }
                assert_eq!(kind, Client);
                assert!(!pinned.contains(id), "a user policy pins {id}: {r:?}");
            }
            let sets = e.index.lookup(r.principal_kind, id, r.action, r.audience);
            if !took
                && sets.iter().any(Option::is_some)
                && sets.iter().flatten().all(|s| !s.reads_context)
            {
                without_context += 1;
            }
            if n > 0 && kind == Client && e.sugar.contains(id) {
                if took {
                    mixed_fast += 1;
                } else {
                    mixed_cedar += 1;
                }
            }
            // A client a user policy pins is never decided by the fast path.
            if pinned.contains(id) && kind == Client {
                assert!(!took, "{r:?}");
            }
        }
    }
    eprintln!(
        "{total} requests: {fast} by the fast path ({fast_allowed} allowed); sugar clients in mixed sets: {mixed_fast} fast, {mixed_cedar} Cedar; {without_context} by Cedar without context"
    );
    assert!(
        fast * 4 > total,
        "the fast path is taken for many requests ({fast} of {total})"
    );
    assert!(fast_allowed > 3000, "and allows many ({fast_allowed})");
    assert!(
        without_context > 1000,
        "Cedar decides many requests with an empty context ({without_context})"
    );
    assert!(
        mixed_fast > 1000 && mixed_cedar > 1000,
        "sets mixing sugar and user policies take both paths ({mixed_fast} fast, {mixed_cedar} Cedar)"
    );
}
