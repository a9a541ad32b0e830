//! Microbenchmark of one Cedar decision through `mayfly_policy::PolicyEngine::decide` with a
//! realistic set of 100 policies (20 audiences, 10 actions; principal equality, attribute
//! conditions, two forbids). Figures go to docs/PERFORMANCE.md.
//!
//! `taskset -c 0 cargo run --release -p mayfly-policybench` (`-- --sliced-only` skips the
//! whole-set reference runs, for profiling).
//!
//! Each scenario: a warm-up, then five one-second runs (decisions/s, median reported), then
//! 100,000 individually timed calls for p50/p99 (each includes one `Instant::now()` pair, about
//! 20-40 ns here).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mayfly_policy::{PolicyDecision, PolicyEngine, PolicyRequest, PrincipalKind};

const AUDIENCES: usize = 20;
const SCOPES: &[&str] = &[
    "read",
    "write",
    "deploy",
    "admin",
    "list",
    "delete",
    "publish",
    "subscribe",
    "audit",
];
const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const GHA: &str = "https://token.actions.githubusercontent.com";

fn audience(i: usize) -> String {
    format!("https://svc{}.example.test", i % AUDIENCES)
}

fn schema() -> String {
    let actions: Vec<String> = std::iter::once("token")
        .chain(SCOPES.iter().copied())
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        r#"entity Client;
entity Audience;
entity Workload = {{
  issuer: String, subject: String,
  namespace?: String, service_account?: String, repository?: String, repository_owner?: String,
  ref?: String, environment?: String, workflow?: String, actor?: String, project_path?: String,
  pipeline_source?: String, trust_domain?: String,
}};
type Ctx = {{ grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String }};
action {} appliesTo {{ principal: [Client, Workload], resource: [Audience], context: Ctx }};
"#,
        actions.join(", ")
    )
}

/// 100 policies in four files, shaped like a real deployment's.
fn policies() -> Vec<(String, String)> {
    let mut k8s = String::new();
    // 40: a namespace of the cluster may get a token for its service and one scope on it.
    for i in 0..20 {
        let aud = audience(i);
        k8s.push_str(&format!(
            "@id(\"k8s-ns{i}-token\") @max_ttl(\"10m\")\npermit(principal is Workload, action == Action::\"token\", resource == Audience::\"{aud}\")\nwhen {{ principal.issuer == \"{K8S}\" && principal has namespace && principal.namespace == \"ns{i}\" }};\n"
        ));
        let scope = SCOPES[i % SCOPES.len()];
        k8s.push_str(&format!(
            "@id(\"k8s-ns{i}-{scope}\")\npermit(principal is Workload, action == Action::\"{scope}\", resource == Audience::\"{aud}\")\nwhen {{ principal.issuer == \"{K8S}\" && principal has namespace && principal.namespace == \"ns{i}\" && principal has service_account }};\n"
        ));
    }
    // 20: one service account may read and write another namespace's service.
    let mut pinned = String::new();
    for i in 0..20 {
        pinned.push_str(&format!(
            "@id(\"sa{i}-rw\")\npermit(principal == Workload::\"spiffe://example.org/ns/ns{i}/sa/api\", action in [Action::\"read\", Action::\"write\"], resource == Audience::\"{}\");\n",
            audience(i + 7)
        ));
    }
    // 20: a repository's main branch may deploy to its service.
    let mut gha = String::new();
    for i in 0..20 {
        gha.push_str(&format!(
            "@id(\"gha-repo{i}\") @max_ttl(\"15m\")\npermit(principal is Workload, action in [Action::\"token\", Action::\"deploy\"], resource == Audience::\"{}\")\nwhen {{ principal.issuer == \"{GHA}\" && principal has repository && principal.repository == \"example-org/repo{i}\" && principal has ref && principal.ref == \"refs/heads/main\" }};\n",
            audience(i + 3)
        ));
    }
    // 15 clients by id; 3 any-audience rules; 2 forbids.
    let mut rest = String::new();
    for i in 0..15 {
        rest.push_str(&format!(
            "@id(\"client{i}\")\npermit(principal == Client::\"client{i}\", action in [Action::\"token\", Action::\"{}\"], resource == Audience::\"{}\");\n",
            SCOPES[i % SCOPES.len()],
            audience(i * 3)
        ));
    }
    rest.push_str(&format!(
        "@id(\"partner-read\")\npermit(principal is Workload, action == Action::\"read\", resource)\nwhen {{ principal has trust_domain && principal.trust_domain == \"partner.example\" }};\n\
         @id(\"auditor\")\npermit(principal == Client::\"auditor\", action in [Action::\"token\", Action::\"audit\", Action::\"list\"], resource);\n\
         @id(\"ops-admin\") @max_ttl(\"5m\")\npermit(principal is Workload, action == Action::\"admin\", resource)\nwhen {{ principal.issuer == \"{K8S}\" && principal has namespace && principal.namespace == \"ops\" && context.source like \"10.*\" }};\n\
         @id(\"no-long-tokens\")\nforbid(principal, action == Action::\"token\", resource) when {{ context.requested_ttl > 3600 }};\n\
         @id(\"deploy-needs-production\")\nforbid(principal is Workload, action == Action::\"deploy\", resource)\nunless {{ principal has environment && principal.environment == \"production\" }};\n"
    ));
    vec![
        ("clients.cedar".into(), rest),
        ("github-actions.cedar".into(), gha),
        ("kubernetes.cedar".into(), k8s),
        ("pinned.cedar".into(), pinned),
    ]
}

/// Request data built once (strings leaked: the benchmark lives as long as they do), so the
/// timed loop does nothing but decide.
struct Req {
    kind: PrincipalKind,
    id: &'static str,
    attrs: Vec<(&'static str, &'static str)>,
    action: &'static str,
    audience: &'static str,
    ttl: i64,
}

fn leak(s: String) -> &'static str {
    s.leak()
}

impl Req {
    fn decide(&self, engine: &PolicyEngine, unsliced: bool) -> PolicyDecision {
        let r = PolicyRequest {
            principal_kind: self.kind,
            principal_id: self.id,
            attrs: &self.attrs,
            action: self.action,
            audience: self.audience,
            grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
            requested_ttl: self.ttl,
            source: "10.1.2.3",
            now: 1_800_000_000,
            client_id: "",
            actor: "",
        };
        if unsliced {
            engine.decide_unsliced(&r)
        } else {
            engine.decide(&r)
        }
    }
}

fn k8s(ns: usize, action: &'static str, aud: usize) -> Req {
    Req {
        kind: PrincipalKind::Workload,
        id: leak(format!("spiffe://example.org/ns/ns{ns}/sa/api")),
        attrs: vec![
            ("issuer", K8S),
            ("subject", leak(format!("system:serviceaccount:ns{ns}:api"))),
            ("namespace", leak(format!("ns{ns}"))),
            ("service_account", "api"),
        ],
        action,
        audience: leak(audience(aud)),
        ttl: 600,
    }
}

fn mix() -> Vec<Req> {
    let mut v = Vec::new();
    for i in 0..16 {
        v.push(k8s(i, "token", i));
        v.push(k8s(i, SCOPES[i % SCOPES.len()], i));
        v.push(k8s(i, "write", i + 7));
        v.push(Req {
            kind: PrincipalKind::Workload,
            id: leak(format!("spiffe://example.org/gha/example-org/repo{i}")),
            attrs: vec![
                ("issuer", GHA),
                (
                    "subject",
                    leak(format!("repo:example-org/repo{i}:ref:refs/heads/main")),
                ),
                ("repository", leak(format!("example-org/repo{i}"))),
                ("ref", "refs/heads/main"),
                ("environment", "production"),
            ],
            action: if i % 2 == 0 { "token" } else { "deploy" },
            audience: leak(audience(i + 3)),
            ttl: 900,
        });
    }
    for i in 0..8 {
        v.push(Req {
            kind: PrincipalKind::Client,
            id: leak(format!("client{i}")),
            attrs: Vec::new(),
            action: "token",
            audience: leak(audience(i * 3)),
            ttl: 300,
        });
    }
    v
}

struct Figures {
    rate: f64,
    p50: u128,
    p99: u128,
    allowed: usize,
}

fn measure(engine: &PolicyEngine, reqs: &[Req], unsliced: bool) -> Figures {
    let n = reqs.len();
    let run = |d: Duration| -> f64 {
        let start = Instant::now();
        let mut count = 0u64;
        let mut i = 0;
        loop {
            for _ in 0..256 {
                black_box(reqs[i % n].decide(engine, unsliced));
                i += 1;
            }
            count += 256;
            let el = start.elapsed();
            if el >= d {
                return count as f64 / el.as_secs_f64();
            }
        }
    };
    run(Duration::from_millis(500));
    let mut rates: Vec<f64> = (0..5).map(|_| run(Duration::from_secs(1))).collect();
    rates.sort_by(f64::total_cmp);
    let samples = 100_000;
    let mut times: Vec<u128> = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        black_box(reqs[i % n].decide(engine, unsliced));
        times.push(t.elapsed().as_nanos());
    }
    times.sort_unstable();
    let allowed = reqs
        .iter()
        .filter(|r| r.decide(engine, unsliced).allow)
        .count();
    Figures {
        rate: rates[2],
        p50: times[samples / 2],
        p99: times[samples * 99 / 100],
        allowed,
    }
}

fn main() -> ExitCode {
    let engine = match PolicyEngine::from_sources(&schema(), &policies(), &[]) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mayfly-policybench: the benchmark's policy set does not load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let forbids = engine.policies().iter().filter(|p| p.forbid).count();
    println!("mayfly-policybench: one Cedar decision through PolicyEngine::decide");
    println!(
        "policies: {} ({AUDIENCES} audiences, {} actions, {forbids} forbids), fingerprint {}",
        engine.policy_ids().len(),
        SCOPES.len() + 1,
        &engine.fingerprint()[..12]
    );
    let token = vec![k8s(4, "token", 4)];
    let check = token[0].decide(&engine, false);
    if !check.allow || check.policies != ["k8s-ns4-token"] {
        eprintln!(
            "mayfly-policybench: the token scenario should be allowed by k8s-ns4-token: {check:?}"
        );
        return ExitCode::FAILURE;
    }
    let mix = mix();
    // `--sliced-only` skips the whole-set reference (for profiling the request path).
    let sliced_only = std::env::args().any(|a| a == "--sliced-only");
    println!(
        "{:<44} {:>12} {:>14} {:>8} {:>8} {:>8}",
        "scenario", "decisions/s", "ns/decision", "p50 ns", "p99 ns", "allowed"
    );
    for (name, reqs, unsliced) in [
        ("workload token, allowed (sliced)", &token, false),
        ("mix of 72 requests (sliced)", &mix, false),
        (
            "workload token, allowed (whole set, reference)",
            &token,
            true,
        ),
        ("mix of 72 requests (whole set, reference)", &mix, true),
    ] {
        if unsliced && sliced_only {
            continue;
        }
        let f = measure(&engine, reqs, unsliced);
        println!(
            "{:<44} {:>12.0} {:>14.0} {:>8} {:>8} {:>5}/{}",
            name,
            f.rate,
            1e9 / f.rate,
            f.p50,
            f.p99,
            f.allowed,
            reqs.len()
        );
    }
    ExitCode::SUCCESS
}
