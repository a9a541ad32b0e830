//! Table-driven policy tests (`mayfly policy test FILE`): requests with the expected decision and,
//! optionally, the deciding policy ids and lifetime cap.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;

use crate::engine::PolicyEngine;
use crate::error::PolicyError;
use crate::text::{format_ttl, parse_ttl};
use crate::{EntryGrant, PolicyDecision, PolicyRequest, PrincipalKind, SVID_ACTIONS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    settings: Option<SettingsToml>,
    #[serde(default)]
    case: Vec<CaseToml>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsToml {
    policy_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseToml {
    name: String,
    principal: PrincipalToml,
    action: String,
    audience: String,
    #[serde(default)]
    context: ContextToml,
    expect: Expect,
    policies: Option<Vec<String>>,
    max_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalToml {
    #[serde(rename = "type")]
    kind: KindToml,
    id: String,
    #[serde(default)]
    attrs: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Copy)]
enum KindToml {
    Workload,
    Client,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ContextToml {
    /// Default: `client_credentials`, or the action itself for an SVID action.
    grant_type: Option<String>,
    requested_ttl: i64,
    source: String,
    now: i64,
    client_id: String,
    actor: String,
}

impl Default for ContextToml {
    fn default() -> Self {
        Self {
            grant_type: None,
            requested_ttl: 300,
            source: String::new(),
            now: 0,
            client_id: String::new(),
            actor: String::new(),
        }
    }
}

/// The `[settings]` table of a test file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaseSettings {
    /// The policy directory, relative to the test file (default: the file's directory).
    pub policy_dir: Option<String>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// Allow (or deny).
    pub allow: bool,
    /// The deciding policy ids, sorted, when the case names them.
    pub policies: Option<Vec<String>>,
    /// The lifetime cap in seconds, when the case names it.
    pub max_ttl: Option<i64>,
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// What the case expected.
    pub expected: Expectation,
    /// What the engine decided.
    pub got: PolicyDecision,
}

impl CaseResult {
    /// One line: `PASS name` or `FAIL name: expected ..., got ...`.
    pub fn line(&self) -> String {
        if self.passed {
            return format!("PASS {}", self.name);
        }
        format!(
            "FAIL {}: expected {}, got {}",
            self.name,
            show_expected(&self.expected),
            show_got(&self.got)
        )
    }
}

fn verdict(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

fn show_expected(e: &Expectation) -> String {
    let mut s = verdict(e.allow).to_string();
    if let Some(p) = &e.policies {
        s.push_str(&format!(" by [{}]", p.join(", ")));
    }
    if let Some(t) = e.max_ttl {
        s.push_str(&format!(" with max_ttl {}", format_ttl(t)));
    }
    s
}

fn show_got(d: &PolicyDecision) -> String {
    let mut s = format!("{} by [{}]", verdict(d.allow), d.policies.join(", "));
    if let Some(t) = d.max_ttl {
        s.push_str(&format!(" with max_ttl {}", format_ttl(t)));
    }
    if !d.errors.is_empty() {
        s.push_str(&format!(" (errors: {})", d.errors.join("; ")));
    }
    s
}

/// Every case's result, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaseReport {
    /// The cases.
    pub cases: Vec<CaseResult>,
}

impl CaseReport {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// All cases passed.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            writeln!(f, "{}", c.line())?;
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

fn parse(cases_toml: &str) -> Result<CasesFile, PolicyError> {
    toml::from_str(cases_toml).map_err(|e| PolicyError::Cases {
        message: e.to_string().trim_end().to_string(),
    })
}

/// The `[settings]` of a test file (so the caller can find the policy directory).
pub fn case_settings(cases_toml: &str) -> Result<CaseSettings, PolicyError> {
    let file = parse(cases_toml)?;
    Ok(CaseSettings {
        policy_dir: file.settings.unwrap_or_default().policy_dir,
    })
}

/// The registration entries a test file's SVID cases assume: mayfly asks about an SVID only for
/// a SPIFFE ID that has an entry, so every `Workload` principal of a case whose action is an
/// SVID action gets one, with its SPIFFE ID as the entry id (the generated policy is
/// `entry:<SPIFFE ID>`). Build the engine with these (see [`crate::PolicyInputs`]).
pub fn case_entries(cases_toml: &str) -> Result<Vec<EntryGrant>, PolicyError> {
    let file = parse(cases_toml)?;
    let mut out: Vec<EntryGrant> = file
        .case
        .iter()
        .filter(|c| {
            matches!(c.principal.kind, KindToml::Workload)
                && SVID_ACTIONS.contains(&c.action.as_str())
        })
        .map(|c| EntryGrant {
            entry_id: c.principal.id.clone(),
            spiffe_id: c.principal.id.clone(),
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Run every `[[case]]` of a test file against `engine`.
pub fn run_cases(engine: &PolicyEngine, cases_toml: &str) -> Result<CaseReport, PolicyError> {
    let file = parse(cases_toml)?;
    if file.case.is_empty() {
        return Err(PolicyError::Cases {
            message: "no [[case]] tables; fix: add at least one case".into(),
        });
    }
    let mut names = HashSet::new();
    let mut report = CaseReport::default();
    for case in file.case {
        let bad = |message: String| PolicyError::Cases {
            message: format!("case `{}`: {message}", case.name),
        };
        if !names.insert(case.name.clone()) {
            return Err(bad(
                "the name is used twice; fix: name each case uniquely".into()
            ));
        }
        let kind = match case.principal.kind {
            KindToml::Client => PrincipalKind::Client,
            KindToml::Workload => PrincipalKind::Workload,
        };
        let mut attrs: Vec<(&str, &str)> = Vec::new();
        for (k, v) in &case.principal.attrs {
            let known = engine.workload_attributes().iter().any(|a| a == k);
            if kind == PrincipalKind::Client || !known {
                return Err(bad(format!(
                    "principal attribute `{k}` is not a Workload attribute of the schema; fix: use one of {}",
                    engine.workload_attributes().join(", ")
                )));
            }
            attrs.push((k, v));
        }
        // Test files may leave out issuer and subject; real workloads always have them.
        if kind == PrincipalKind::Workload {
            for required in ["issuer", "subject"] {
                if !case.principal.attrs.contains_key(required) {
                    attrs.push((required, ""));
                }
            }
        }
        let max_ttl = match &case.max_ttl {
            None => None,
            Some(v) => Some(parse_ttl(v).map_err(|p| bad(format!("max_ttl \"{v}\" {p}")))?),
        };
        let expected = Expectation {
            allow: case.expect == Expect::Allow,
            policies: case.policies.map(|mut p| {
                p.sort();
                p
            }),
            max_ttl,
        };
        let c = &case.context;
        let grant_type = match &c.grant_type {
            Some(g) => g.as_str(),
            None if SVID_ACTIONS.contains(&case.action.as_str()) => case.action.as_str(),
            None => "client_credentials",
        };
        let got = engine.decide(&PolicyRequest {
            principal_kind: kind,
            principal_id: &case.principal.id,
            attrs: &attrs,
            action: &case.action,
            audience: &case.audience,
            grant_type,
            requested_ttl: c.requested_ttl,
            source: &c.source,
            now: c.now,
            client_id: &c.client_id,
            actor: &c.actor,
        });
        let passed = got.allow == expected.allow
            && expected
                .policies
                .as_ref()
                .is_none_or(|p| *p == got.policies)
            && expected.max_ttl.is_none_or(|t| got.max_ttl == Some(t));
        report.cases.push(CaseResult {
            name: case.name,
            passed,
            expected,
            got,
        });
    }
    Ok(report)
}
