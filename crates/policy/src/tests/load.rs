//! Loading and validation: every refusal names the file, the policy and the problem.

use super::*;
use crate::PolicyError;

fn load(list: &[(&str, &str)]) -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::from_sources(SCHEMA, &files(list), &[])
}

const OK: &str = r#"permit(principal, action == Action::"read", resource);"#;

#[test]
fn the_example_set_loads() {
    let e = example();
    assert_eq!(
        e.policy_ids(),
        [
            "gha-shop-deploy",
            "no-long-tokens",
            "deploy-needs-production",
            "k8s-payments-token",
            "k8s-payments-read",
            "k8s-payments-api-write"
        ]
    );
    assert!(e.warnings().is_empty(), "{:?}", e.warnings());
    assert_eq!(e.fingerprint().len(), 64);
    let p = e.policy("k8s-payments-token").unwrap();
    assert_eq!(p.origin, "kubernetes.cedar");
    assert_eq!(p.line, 4, "the policy starts at its first annotation");
    assert_eq!(p.max_ttl, Some(600));
    assert!(p.text.starts_with("@id(\"k8s-payments-token\")"));
    assert!(e.policy("no-long-tokens").unwrap().forbid);
}

#[test]
fn ids_default_to_file_stem_and_index() {
    let e = load(&[(
        "team-a.cedar",
        r#"permit(principal, action == Action::"read", resource);
           @id("named") permit(principal, action == Action::"token", resource);
           forbid(principal, action == Action::"write", resource);"#,
    )])
    .unwrap();
    assert_eq!(e.policy_ids(), ["team-a:0", "named", "team-a:2"]);
    assert_eq!(e.policy("team-a:2").unwrap().line, 3);
}

#[test]
fn bad_syntax_names_file_line_and_column() {
    let err = load(&[
        ("ok.cedar", OK),
        ("bad.cedar", "\n\npermit(principal, action resource);"),
    ])
    .unwrap_err();
    match &err {
        PolicyError::Parse { file, line, .. } => {
            assert_eq!(file, "bad.cedar");
            assert_eq!(*line, 3);
        }
        e => panic!("{e:?}"),
    }
    assert!(err.to_string().starts_with("bad.cedar:3:"), "{err}");
}

#[test]
fn schema_violation_refuses_the_whole_set() {
    let err = load(&[
        ("ok.cedar", OK),
        (
            "typo.cedar",
            "@id(\"typo\")\npermit(principal is Workload, action == Action::\"read\", resource)\nwhen { principal.namespcae == \"x\" };",
        ),
    ])
    .unwrap_err();
    let PolicyError::Validation { problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(
        (p.file.as_str(), p.policy.as_str(), p.line),
        ("typo.cedar", "typo", 3)
    );
    assert!(p.message.contains("namespcae"), "{p}");
    assert!(err.to_string().contains("typo.cedar:3:"), "{err}");
}

#[test]
fn optional_attribute_without_has_is_refused() {
    let err = load(&[(
        "k8s.cedar",
        r#"permit(principal is Workload, action == Action::"token", resource) when { principal.namespace == "payments" };"#,
    )])
    .unwrap_err();
    let PolicyError::Validation { problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems[0].policy, "k8s:0");
    assert!(
        err.to_string().contains("has"),
        "the help says to test with `has`: {err}"
    );
}

#[test]
fn unknown_action_and_entity_type_are_refused() {
    for text in [
        r#"permit(principal, action == Action::"delete", resource);"#,
        r#"permit(principal == User::"alice", action == Action::"read", resource);"#,
    ] {
        let err = load(&[("x.cedar", text)]).unwrap_err();
        assert!(matches!(err, PolicyError::Validation { .. }), "{err:?}");
    }
}

#[test]
fn duplicate_ids_are_refused_naming_both_places() {
    let a = r#"@id("same") permit(principal, action == Action::"read", resource);"#;
    let b = "\n@id(\"same\") permit(principal, action == Action::\"token\", resource);";
    let err = load(&[("a.cedar", a), ("b.cedar", b)]).unwrap_err();
    match &err {
        PolicyError::DuplicateId { id, first, second } => {
            assert_eq!(id, "same");
            assert_eq!(first, "a.cedar:1");
            assert_eq!(second, "b.cedar:2");
        }
        e => panic!("{e:?}"),
    }
    // An @id may not take another policy's generated id either.
    let c = r#"@id("a:0") permit(principal, action == Action::"token", resource);"#;
    let err = load(&[("a.cedar", OK), ("c.cedar", c)]).unwrap_err();
    assert!(
        matches!(err, PolicyError::DuplicateId { ref id, .. } if id == "a:0"),
        "{err:?}"
    );
    // Nor a generated sugar id.
    let d = r#"@id("client:web:token") permit(principal, action == Action::"token", resource);"#;
    let err = PolicyEngine::from_sources(
        SCHEMA,
        &files(&[("d.cedar", d)]),
        &[grant("web", &["https://a"], &[])],
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::DuplicateId { .. }), "{err:?}");
}

#[test]
fn empty_id_is_refused() {
    let err = load(&[("e.cedar", r#"@id("") permit(principal, action, resource);"#)]).unwrap_err();
    assert!(
        matches!(err, PolicyError::EmptyId { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn bad_max_ttl_is_refused_naming_policy_and_file() {
    for (value, problem) in [
        ("ten minutes", "not a duration"),
        ("0s", "zero"),
        ("1.5s", "whole"),
    ] {
        let text = format!("@id(\"p\") @max_ttl(\"{value}\") permit(principal, action, resource);");
        let err = load(&[("ttl.cedar", &text)]).unwrap_err();
        match &err {
            PolicyError::BadMaxTtl {
                file,
                id,
                value: v,
                problem: p,
            } => {
                assert_eq!(
                    (file.as_str(), id.as_str(), v.as_str()),
                    ("ttl.cedar", "p", value)
                );
                assert!(p.contains(problem), "{p}");
            }
            e => panic!("{e:?}"),
        }
        assert!(err.to_string().contains("fix:"), "{err}");
    }
    let err = load(&[(
        "f.cedar",
        r#"@max_ttl("10m") forbid(principal, action, resource);"#,
    )])
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::BadMaxTtl { problem, .. } if problem.contains("forbid")),
        "{err:?}"
    );
}

#[test]
fn templates_are_refused() {
    let err = load(&[(
        "t.cedar",
        r#"permit(principal == ?principal, action, resource);"#,
    )])
    .unwrap_err();
    assert!(
        matches!(err, PolicyError::Template { ref id, .. } if id == "t:0"),
        "{err:?}"
    );
}

#[test]
fn scope_named_token_is_refused() {
    let err =
        PolicyEngine::sugar_only(&[grant("web", &["https://a"], &["read", "token"])]).unwrap_err();
    assert!(
        matches!(err, PolicyError::ReservedScope { ref client } if client == "web"),
        "{err:?}"
    );
    let err = PolicyEngine::from_sources(SCHEMA, &[], &[grant("web", &["https://a"], &["token"])])
        .unwrap_err();
    assert!(matches!(err, PolicyError::ReservedScope { .. }), "{err:?}");
}

#[test]
fn sugar_action_missing_from_user_schema_names_client_action_and_fix() {
    let err = PolicyEngine::from_sources(
        SCHEMA,
        &[],
        &[
            grant("ok", &["https://a"], &["read"]),
            grant("billing", &["https://a"], &["read", "refund"]),
        ],
    )
    .unwrap_err();
    match &err {
        PolicyError::SugarNotInSchema {
            client, what, fix, ..
        } => {
            assert_eq!(client, "billing");
            assert_eq!(what, "action `refund`");
            assert!(fix.contains("action \"refund\""), "{fix}");
        }
        e => panic!("{e:?}"),
    }
    let no_client = workloads_only();
    let err = PolicyEngine::from_sources(&no_client, &[], &[grant("web", &["https://a"], &[])])
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::SugarNotInSchema { client, what, .. } if client == "web" && what.contains("Client")),
        "{err:?}"
    );
}

/// The test schema without `Client` (only workloads may act).
fn workloads_only() -> String {
    SCHEMA
        .replace("entity Client;", "")
        .replace("principal: [Client, Workload]", "principal: [Workload]")
}

#[test]
fn schema_must_fit_what_mayfly_supplies() {
    let err = PolicyEngine::from_sources(&workloads_only(), &[], &[]).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaMismatch { message, .. } if message.contains("`Client` is not declared")),
        "{err}"
    );
    let cases = [
        (
            SCHEMA
                .replace("entity Audience;", "entity Aud;")
                .replace("resource: [Audience]", "resource: [Aud]"),
            "Audience",
        ),
        (SCHEMA.replace("issuer: String", "issuer: Long"), "Workload"),
        (
            SCHEMA.replace(
                "issuer: String, subject: String,",
                "issuer: String, subject: String, team: String,",
            ),
            "Workload",
        ),
        (
            SCHEMA.replace("actor: String }", "actor: String, tenant: String }"),
            "context",
        ),
        (
            SCHEMA.replace("action \"token\", \"read\"", "action \"read\""),
            "token",
        ),
        (
            SCHEMA.replace("entity Client;", "entity Team; entity Client in [Team];"),
            "parents",
        ),
        (
            SCHEMA.replace(
                "resource: [Audience], context: Ctx };\naction \"write\"",
                "resource: [Client], context: Ctx };\naction \"write\"",
            ),
            "Audience",
        ),
    ];
    for (schema, what) in cases {
        let err = PolicyEngine::from_sources(&schema, &[], &[]).unwrap_err();
        assert!(
            matches!(&err, PolicyError::SchemaMismatch { file, message, .. } if file == "schema.cedarschema" && message.contains(what)),
            "{what}: {err}"
        );
    }
    let err = PolicyEngine::from_sources("entity Client", &[], &[]).unwrap_err();
    assert!(matches!(err, PolicyError::Schema { .. }), "{err:?}");
}

#[test]
fn load_dir_reads_schema_and_sorted_cedar_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(matches!(
        PolicyEngine::load_dir(d, &[]),
        Err(PolicyError::MissingSchema { .. })
    ));
    std::fs::write(d.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(d.join("b.cedar"), OK).unwrap();
    std::fs::write(d.join("a.cedar"), OK).unwrap();
    std::fs::write(d.join(".#a.cedar"), "garbage").unwrap();
    std::fs::write(d.join("notes.txt"), "garbage").unwrap();
    let e = PolicyEngine::load_dir(d, &[]).unwrap();
    assert_eq!(e.policy_ids(), ["a:0", "b:0"]);
    let same = PolicyEngine::load_dir(d, &[]).unwrap();
    assert_eq!(e.fingerprint(), same.fingerprint());
    std::fs::write(d.join("b.cedar"), format!("{OK}\n")).unwrap();
    assert_ne!(
        e.fingerprint(),
        PolicyEngine::load_dir(d, &[]).unwrap().fingerprint()
    );

    std::fs::write(d.join("big.cedar"), " ".repeat(1024 * 1024 + 1)).unwrap();
    assert!(matches!(
        PolicyEngine::load_dir(d, &[]),
        Err(PolicyError::FileTooLarge { .. })
    ));
    assert!(matches!(
        PolicyEngine::load_dir(&d.join("nope"), &[]),
        Err(PolicyError::Io { .. })
    ));
}

#[test]
fn impossible_policies_load_with_a_warning() {
    let e = load(&[(
        "w.cedar",
        r#"permit(principal, action == Action::"read", resource == Client::"x");"#,
    )]);
    // The validator refuses or warns; either way the operator hears about it.
    match e {
        Ok(e) => assert!(!e.warnings().is_empty()),
        Err(err) => assert!(matches!(err, PolicyError::Validation { .. }), "{err:?}"),
    }
}
