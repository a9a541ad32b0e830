//! Registration entries as generated SVID permits, and `forbid`s that refuse an SVID.

use super::*;
use crate::PrincipalKind::{Client, Workload};
use crate::{
    EntryGrant, PolicyError, PolicyInputs, SVID_JWT_ACTION, SVID_X509_ACTION, case_entries,
    run_cases,
};

const TD: &str = "spiffe://example.org";
const WEB: &str = "spiffe://example.org/web";
const DB: &str = "spiffe://example.org/db";

fn entry(id: &str, spiffe_id: &str) -> EntryGrant {
    EntryGrant {
        entry_id: id.into(),
        spiffe_id: spiffe_id.into(),
    }
}

/// Attributes as the server supplies them for an SVID decision.
fn attrs(spiffe_id: &str) -> [(&str, &str); 3] {
    [
        ("issuer", "https://mayfly.example.org"),
        ("subject", spiffe_id),
        ("trust_domain", "example.org"),
    ]
}

fn svid_req<'a>(
    id: &'a str,
    attrs: &'a [(&'a str, &'a str)],
    action: &'a str,
    resource: &'a str,
) -> PolicyRequest<'a> {
    PolicyRequest {
        grant_type: action,
        ..req(Workload, id, attrs, action, resource)
    }
}

/// Decide through the engine, and check the slices agree with the whole set.
fn decide(e: &PolicyEngine, r: &PolicyRequest<'_>) -> crate::PolicyDecision {
    let d = e.decide(r);
    assert_eq!(d, e.decide_unsliced(r), "{r:?}");
    d
}

const FORBIDS: &str = r#"
@id("no-db-x509")
forbid (principal == Workload::"spiffe://example.org/db", action == Action::"svid_x509", resource);

@id("no-admin-jwt")
forbid (principal, action == Action::"svid_jwt", resource == Audience::"https://admin.example.org");
"#;

#[test]
fn every_entry_permits_its_svids_and_nothing_else() {
    let entries = [entry("e1", WEB), entry("e2", DB), entry("e3", WEB)];
    let e = PolicyEngine::from_inputs(PolicyInputs {
        entries: &entries,
        ..PolicyInputs::default()
    })
    .unwrap();
    assert_eq!(e.policy_ids(), ["entry:e1", "entry:e2", "entry:e3"]);
    let p = e.policy("entry:e2").unwrap();
    assert_eq!(p.origin, "registration entry `e2`");
    assert_eq!(p.line, 0);
    assert!(!p.forbid);

    let a = attrs(WEB);
    let d = decide(&e, &svid_req(WEB, &a, SVID_X509_ACTION, TD));
    assert!(d.allow);
    // Two entries give the same SPIFFE ID: both permits decide.
    assert_eq!(d.policies, ["entry:e1", "entry:e3"]);
    let d = decide(
        &e,
        &svid_req(WEB, &a, SVID_JWT_ACTION, "https://any.example"),
    );
    assert!(d.allow, "any audience unless a policy says otherwise");

    // No entry, no SVID: Cedar's default deny.
    let a = attrs("spiffe://example.org/other");
    let d = decide(
        &e,
        &svid_req("spiffe://example.org/other", &a, SVID_X509_ACTION, TD),
    );
    assert!(!d.allow && d.policies.is_empty() && d.errors.is_empty());

    // An entry's permit names only the SVID actions: never a token or a scope.
    let a = attrs(WEB);
    for action in ["token", "read"] {
        assert!(
            !decide(&e, &req(Workload, WEB, &a, action, TD)).allow,
            "{action}"
        );
    }
    assert!(!decide(&e, &req(Client, WEB, &[], SVID_X509_ACTION, TD)).allow);
}

#[test]
fn a_forbid_refuses_one_svid_and_leaves_the_others() {
    // The test schema declares no SVID actions: mayfly adds them, so it keeps loading.
    let entries = [entry("e1", WEB), entry("e2", DB)];
    let files = files(&[("svid.cedar", FORBIDS)]);
    let e = PolicyEngine::from_inputs(PolicyInputs {
        schema: Some(SCHEMA),
        files: &files,
        clients: &[],
        entries: &entries,
    })
    .unwrap();
    let (w, d) = (attrs(WEB), attrs(DB));

    let x = decide(&e, &svid_req(DB, &d, SVID_X509_ACTION, TD));
    assert!(!x.allow);
    assert_eq!(x.policies, ["no-db-x509"]);
    // The same workload's JWT-SVIDs are not affected.
    let j = decide(
        &e,
        &svid_req(DB, &d, SVID_JWT_ACTION, "https://api.example.org"),
    );
    assert_eq!((j.allow, j.policies), (true, vec!["entry:e2".to_string()]));
    // One audience refused for everyone; the others allowed.
    let j = decide(
        &e,
        &svid_req(WEB, &w, SVID_JWT_ACTION, "https://admin.example.org"),
    );
    assert_eq!(
        (j.allow, j.policies),
        (false, vec!["no-admin-jwt".to_string()])
    );
    let x = decide(&e, &svid_req(WEB, &w, SVID_X509_ACTION, TD));
    assert_eq!((x.allow, x.policies), (true, vec!["entry:e1".to_string()]));
}

#[test]
fn a_forbid_can_read_the_workload_and_the_context() {
    let rule = r#"
@id("only-from-agents-in-prod")
forbid (principal, action == Action::"svid_x509", resource)
unless { principal has trust_domain && principal.trust_domain == "example.org" && context.client_id like "spiffe://example.org/mayfly/agent/prod/*" };
"#;
    let entries = [entry("e1", WEB)];
    let files = files(&[("svid.cedar", rule)]);
    let e = PolicyEngine::from_inputs(PolicyInputs {
        schema: Some(SCHEMA),
        files: &files,
        clients: &[],
        entries: &entries,
    })
    .unwrap();
    let a = attrs(WEB);
    let mut r = svid_req(WEB, &a, SVID_X509_ACTION, TD);
    r.client_id = "spiffe://example.org/mayfly/agent/prod/n1";
    assert!(decide(&e, &r).allow);
    r.client_id = "spiffe://example.org/mayfly/agent/dev/n1";
    assert_eq!(decide(&e, &r).policies, ["only-from-agents-in-prod"]);
}

#[test]
fn user_schemas_may_declare_the_svid_actions_but_only_as_mayfly_asks_them() {
    let decl = "action \"svid_x509\", \"svid_jwt\" appliesTo { principal: [Workload], resource: [Audience], context: Ctx };";
    let declared = format!("{SCHEMA}{decl}\n");
    let entries = [entry("e1", WEB)];
    let e = PolicyEngine::from_inputs(PolicyInputs {
        schema: Some(&declared),
        files: &[],
        clients: &[],
        entries: &entries,
    })
    .unwrap();
    let a = attrs(WEB);
    assert!(decide(&e, &svid_req(WEB, &a, SVID_X509_ACTION, TD)).allow);

    let bad = [
        (
            format!(
                "{SCHEMA}action \"svid_x509\" appliesTo {{ principal: [Workload], resource: [Audience], context: Ctx }};\n"
            ),
            "only one of the SVID actions",
        ),
        (
            format!("{SCHEMA}{}\n", decl.replace("[Workload]", "[Client]")),
            "must apply to principal `Workload`",
        ),
    ];
    for (schema, what) in bad {
        let err = PolicyEngine::from_sources(&schema, &[], &[]).unwrap_err();
        assert!(
            matches!(&err, PolicyError::SchemaMismatch { message, .. } if message.contains(what)),
            "{what}: {err}"
        );
    }
}

#[test]
fn svid_actions_are_not_scopes() {
    for scope in [SVID_X509_ACTION, SVID_JWT_ACTION] {
        let err = PolicyEngine::sugar_only(&[grant("web", &["https://a"], &["read", scope])])
            .unwrap_err();
        assert!(
            matches!(&err, PolicyError::SvidScope { client, scope: s } if client == "web" && s == scope),
            "{err:?}"
        );
        assert!(crate::is_reserved_action(scope));
    }
    assert!(crate::is_reserved_action("token") && !crate::is_reserved_action("read"));
}

#[test]
fn entries_change_the_fingerprint() {
    let one = [entry("e1", WEB)];
    let two = [entry("e1", WEB), entry("e2", DB)];
    let fp = |entries: &[EntryGrant]| {
        PolicyEngine::from_inputs(PolicyInputs {
            entries,
            ..PolicyInputs::default()
        })
        .unwrap()
        .fingerprint()
    };
    assert_ne!(fp(&one), fp(&two));
    assert_eq!(fp(&two), fp(&two));
}

#[test]
fn test_files_decide_svids_as_if_the_principal_were_registered() {
    let cases = r#"
[[case]]
name = "db has no X.509-SVID"
principal = { type = "Workload", id = "spiffe://example.org/db" }
action = "svid_x509"
audience = "spiffe://example.org"
expect = "deny"
policies = ["no-db-x509"]

[[case]]
name = "db's JWT-SVID for the API"
principal = { type = "Workload", id = "spiffe://example.org/db" }
action = "svid_jwt"
audience = "https://api.example.org"
expect = "allow"
policies = ["entry:spiffe://example.org/db"]

[[case]]
name = "web's X.509-SVID"
principal = { type = "Workload", id = "spiffe://example.org/web", attrs = { trust_domain = "example.org" } }
action = "svid_x509"
audience = "spiffe://example.org"
expect = "allow"
"#;
    let entries = case_entries(cases).unwrap();
    assert_eq!(entries, [entry(DB, DB), entry(WEB, WEB)]);
    let files = files(&[("svid.cedar", FORBIDS)]);
    let e = PolicyEngine::from_inputs(PolicyInputs {
        schema: Some(SCHEMA),
        files: &files,
        clients: &[],
        entries: &entries,
    })
    .unwrap();
    let report = run_cases(&e, cases).unwrap();
    assert!(report.ok(), "{report}");
}

/// Building a set with thousands of entries stays well under a reload tick. Prints the time;
/// run with `--ignored --nocapture` (in release) to measure.
#[test]
#[ignore = "measurement"]
fn entry_policies_build_time() {
    for n in [1_000usize, 5_000] {
        let entries: Vec<EntryGrant> = (0..n)
            .map(|i| entry(&format!("{i:016x}"), &format!("spiffe://example.org/w/{i}")))
            .collect();
        let files = files(&[("svid.cedar", FORBIDS)]);
        let start = std::time::Instant::now();
        let e = PolicyEngine::from_inputs(PolicyInputs {
            schema: Some(SCHEMA),
            files: &files,
            clients: &[],
            entries: &entries,
        })
        .unwrap();
        let built = start.elapsed();
        let a = attrs("spiffe://example.org/w/7");
        let r = svid_req("spiffe://example.org/w/7", &a, SVID_X509_ACTION, TD);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(e.decide(&r).allow);
        }
        let per = start.elapsed() / 1000;
        println!("{n} entries: build {built:?}, one SVID decision {per:?}");
    }
}
