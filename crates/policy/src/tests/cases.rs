//! The `mayfly policy test` file format.

use super::*;
use crate::{PolicyError, case_settings, run_cases};

#[test]
fn the_example_tests_pass() {
    let report = run_cases(&example(), EXAMPLE_TESTS).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.cases.len() >= 10);
    assert_eq!(
        case_settings(EXAMPLE_TESTS).unwrap().policy_dir.as_deref(),
        Some(".")
    );
}

const CASE: &str = r#"
[[case]]
name = "api reads"
principal = { type = "Workload", id = "spiffe://k8s-prod.example.org/ns/payments/sa/api", attrs = { issuer = "k8s-prod", namespace = "payments" } }
action = "read"
audience = "https://payments.example.test"
expect = "allow"
"#;

#[test]
fn a_wrong_expectation_fails_its_case_with_expected_and_got() {
    let e = example();
    let wrong = [
        CASE.replace("expect = \"allow\"", "expect = \"deny\""),
        format!("{CASE}policies = [\"k8s-payments-token\"]\n"),
        format!("{CASE}max_ttl = \"10m\"\n"),
    ];
    for text in wrong {
        let r = run_cases(&e, &text).unwrap();
        assert_eq!((r.passed(), r.failed()), (0, 1), "{text}");
        let line = r.cases[0].line();
        assert!(line.starts_with("FAIL api reads: expected "), "{line}");
        assert!(line.contains("got allow by [k8s-payments-read]"), "{line}");
        assert!(r.to_string().ends_with("0 passed, 1 failed"));
    }
    let ok = format!(
        "{CASE}policies = [\"k8s-payments-read\"]\ncontext = {{ requested_ttl = 60, actor = \"x\" }}\n"
    );
    let r = run_cases(&e, &ok).unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(r.cases[0].line(), "PASS api reads");
}

#[test]
fn malformed_files_are_errors() {
    let e = example();
    let bad = [
        (format!("{CASE}colour = \"red\"\n"), "colour"),
        (
            CASE.replace("namespace = \"payments\"", "namspace = \"payments\""),
            "namspace",
        ),
        (
            CASE.replace("expect = \"allow\"", "expect = \"maybe\""),
            "maybe",
        ),
        (CASE.replace("\"Workload\"", "\"User\""), "User"),
        (format!("{CASE}{CASE}"), "twice"),
        (format!("{CASE}max_ttl = \"soon\"\n"), "soon"),
        (
            String::from("[settings]\npolicy_dir = \".\"\n"),
            "no [[case]]",
        ),
    ];
    for (text, what) in bad {
        let err = run_cases(&e, &text).unwrap_err();
        assert!(matches!(err, PolicyError::Cases { .. }), "{err:?}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}
