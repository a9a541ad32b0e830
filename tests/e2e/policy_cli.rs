//! `mayfly policy check|test|explain` as a CI job and an operator would run them, on the example
//! set in conf/policies.

use std::path::{Path, PathBuf};

use crate::support::{keygen, run_cli, write_config};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/policies")
}

/// A copy of conf/policies in `dir`, to edit.
fn copy_examples(dir: &Path) -> PathBuf {
    let to = dir.join("policies");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    to
}

#[test]
fn policy_test_passes_on_the_example_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = examples().join("tests.toml");
    let (code, out, err) = run_cli(dir.path(), &["policy", "test", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASS payments api gets a token"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.trim_end().ends_with(" passed, 0 failed"), "{out}");
}

#[test]
fn policy_test_fails_the_job_naming_the_case_whose_expectation_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let policies = copy_examples(dir.path());
    let tests = policies.join("tests.toml");
    let text = std::fs::read_to_string(&tests).unwrap();
    let wrong = text.replacen(
        "expect = \"deny\"\npolicies = [\"no-long-tokens\"]",
        "expect = \"allow\"\npolicies = [\"no-long-tokens\"]",
        1,
    );
    assert_ne!(text, wrong);
    std::fs::write(&tests, wrong).unwrap();
    let (code, out, err) = run_cli(dir.path(), &["policy", "test", tests.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL no token beyond an hour, whatever permits it: expected allow by [no-long-tokens], got deny by [no-long-tokens]"),
        "{out}"
    );
    assert!(
        out.contains("PASS payments api gets a token"),
        "the others still pass: {out}"
    );
    assert!(out.trim_end().ends_with(" passed, 1 failed"), "{out}");
}

#[test]
fn policy_check_lists_the_set_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &["policy", "check", examples().to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok, 6 policies"), "{out}");
    assert!(out.contains("fingerprint "), "{out}");
    assert!(
        out.contains("k8s-payments-token") && out.contains("kubernetes.cedar:4"),
        "{out}"
    );

    let policies = copy_examples(dir.path());
    std::fs::write(
        policies.join("typo.cedar"),
        "@id(\"typo\")\npermit(principal is Workload, action == Action::\"read\", resource)\nwhen { principal.namespcae == \"payments\" };\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(dir.path(), &["policy", "check", policies.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("does not validate")
            && err.contains("typo.cedar:3:")
            && err.contains("policy `typo`")
            && err.contains("namespcae"),
        "{err}"
    );

    std::fs::write(
        policies.join("typo.cedar"),
        "permit(principal, action resource);\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["policy", "check", policies.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("typo.cedar:1:"), "{err}");
}

#[test]
fn policy_check_includes_config_clients_and_names_a_scope_the_schema_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, jwks) = keygen(d, "billing", "ES256");
    let client = |scopes: &str| {
        format!(
            "[[clients]]\nid = \"billing\"\njwks_file = \"{}\"\naudiences = [\"https://payments.example.test\"]\nscopes = [{scopes}]\n",
            jwks.display()
        )
    };
    let config = write_config(d, &client("\"read\""));
    let (code, out, err) = run_cli(
        d,
        &[
            "policy",
            "check",
            examples().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok, 8 policies (6 from files, 2 generated from clients)"),
        "{out}"
    );
    assert!(out.contains("client:billing:scopes"), "{out}");

    let config = write_config(d, &client("\"read\", \"refund\""));
    let (code, out, err) = run_cli(
        d,
        &[
            "policy",
            "check",
            examples().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("client `billing`") && err.contains("action `refund`") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn policy_explain_shows_the_decision_and_the_policies_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = examples();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "policy",
            "explain",
            "--dir",
            pdir.to_str().unwrap(),
            "--principal-type",
            "Workload",
            "--principal",
            "spiffe://k8s-prod.example.org/ns/payments/sa/api",
            "--attr",
            "issuer=k8s-prod",
            "--attr",
            "namespace=payments",
            "--action",
            "token",
            "--audience",
            "https://payments.example.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_cli(dir.path(), &refs)
    };
    let (code, out, err) = run(args(&[]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("decision: allow"), "{out}");
    assert!(out.contains("max_ttl: 600s"), "{out}");
    assert!(
        out.contains("--- k8s-payments-token (")
            && out.contains("principal.namespace == \"payments\""),
        "{out}"
    );

    let (code, _, err) = run(args(&["--attr", "namspace=payments"]));
    assert_eq!(code, 1);
    assert!(err.contains("no Workload attribute `namspace`"), "{err}");

    let (code, out, err) = run(args(&["--ttl", "7200", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policies"][0]["id"], "no-long-tokens");
    assert_eq!(v["policies"][0]["effect"], "forbid");
    assert!(
        v["policies"][0]["text"]
            .as_str()
            .unwrap()
            .contains("context.requested_ttl > 3600")
    );
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 64);
}
