//! Microbenchmark of one Cedar decision through `mayfly_policy::PolicyEngine::decide` with a
//! realistic set of 100 policies (20 audiences, 10 actions; principal equality, attribute
//! conditions, two forbids), and of client-credentials decisions over 200 clients' generated
//! ("sugar") policies, which take the fast path. Figures go to docs/PERFORMANCE.md.
//!
//! `taskset -c 0 cargo run --release -p mayfly-policybench` (`-- --sliced-only` skips the
//! whole-set reference runs, for profiling; `-- --only <text>` runs the scenarios whose name
//! contains the text).
//!
//! Each scenario: a warm-up, then five one-second runs (decisions/s, median reported), then
//! 100,000 individually timed calls for p50/p99 (each includes one `Instant::now()` pair, about
//! 20-40 ns here).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mayfly_policy::{ClientGrant, PolicyDecision, PolicyEngine, PolicyRequest, PrincipalKind};

const AUDIENCES: usize = 20;
/// Registered clients with `audiences`/`scopes` lists (the sugar scenarios).
const CLIENTS: usize = 200;
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

/// The registered clients: client `cc<i>` may get tokens for one to three audiences, with one
/// to three scopes (the `audiences`/`scopes` lists of a client's configuration).
fn grants() -> Vec<ClientGrant> {
    (0..CLIENTS)
        .map(|i| ClientGrant {
            client_id: format!("cc{i}"),
            audiences: (0..1 + i % 3).map(|k| audience(i + 5 * k)).collect(),
            scopes: (0..1 + i % 3)
                .map(|k| SCOPES[(i + k) % SCOPES.len()].to_string())
                .collect(),
        })
        .collect()
}

/// Which path a scenario asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `decide`, as served (the sugar fast path where it applies).
    Served,
    /// `decide_sliced`: Cedar over the slices, never the fast path.
    Cedar,
    /// `decide_unsliced`: Cedar over the whole set.
    WholeSet,
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
    grant_type: &'static str,
}

fn leak(s: String) -> &'static str {
    s.leak()
}

impl Req {
    fn decide(&self, engine: &PolicyEngine, path: Path) -> PolicyDecision {
        let r = PolicyRequest {
            principal_kind: self.kind,
            principal_id: self.id,
            attrs: &self.attrs,
            action: self.action,
            audience: self.audience,
            grant_type: self.grant_type,
            requested_ttl: self.ttl,
            source: "10.1.2.3",
            now: 1_800_000_000,
            client_id: if self.kind == PrincipalKind::Client {
                self.id
            } else {
                ""
            },
            actor: "",
        };
        match path {
            Path::Served => engine.decide(&r),
            Path::Cedar => engine.decide_sliced(&r),
            Path::WholeSet => engine.decide_unsliced(&r),
        }
    }
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A client-credentials question of client `cc<i>`: `token`, or its first scope, for its first
/// audience (allowed).
fn cc(i: usize, scope: bool) -> Req {
    Req {
        kind: PrincipalKind::Client,
        id: leak(format!("cc{i}")),
        attrs: Vec::new(),
        action: if scope {
            SCOPES[i % SCOPES.len()]
        } else {
            "token"
        },
        audience: leak(audience(i)),
        ttl: 300,
        grant_type: "client_credentials",
    }
}

/// One issuance's questions for 16 clients: `token` then one scope each.
fn cc_mix() -> Vec<Req> {
    (0..16)
        .flat_map(|n| {
            let i = n * 11 % CLIENTS;
            [cc(i, false), cc(i, true)]
        })
        .collect()
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
        grant_type: EXCHANGE,
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
            grant_type: EXCHANGE,
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
            grant_type: EXCHANGE,
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

fn measure(engine: &PolicyEngine, reqs: &[Req], path: Path) -> Figures {
    let n = reqs.len();
    let run = |d: Duration| -> f64 {
        let start = Instant::now();
        let mut count = 0u64;
        let mut i = 0;
        loop {
            for _ in 0..256 {
                black_box(reqs[i % n].decide(engine, path));
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
        black_box(reqs[i % n].decide(engine, path));
        times.push(t.elapsed().as_nanos());
    }
    times.sort_unstable();
    let allowed = reqs.iter().filter(|r| r.decide(engine, path).allow).count();
    Figures {
        rate: rates[2],
        p50: times[samples / 2],
        p99: times[samples * 99 / 100],
        allowed,
    }
}

fn load(what: &str, files: &[(String, String)], clients: &[ClientGrant]) -> Option<PolicyEngine> {
    match PolicyEngine::from_sources(&schema(), files, clients) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("mayfly-policybench: the {what} set does not load: {e}");
            None
        }
    }
}

/// The three policy sets measured (files only, sugar only, both), described on stdout.
fn sets() -> Option<(PolicyEngine, PolicyEngine, PolicyEngine)> {
    let clients = grants();
    let (Some(engine), Some(sugar), Some(both)) = (
        load("benchmark's policy", &policies(), &[]),
        load("sugar-only", &[], &clients),
        load("files-and-sugar", &policies(), &clients),
    ) else {
        return None;
    };
    let forbids = engine.policies().iter().filter(|p| p.forbid).count();
    println!("mayfly-policybench: one Cedar decision through PolicyEngine::decide");
    println!(
        "policies: {} ({AUDIENCES} audiences, {} actions, {forbids} forbids), fingerprint {}",
        engine.policy_ids().len(),
        SCOPES.len() + 1,
        &engine.fingerprint()[..12]
    );
    println!(
        "sugar: {CLIENTS} clients, {} generated policies; with the files: {} policies",
        sugar.policy_ids().len(),
        both.policy_ids().len()
    );
    Some((engine, sugar, both))
}

/// Every path decides every request alike (the fast path is exact).
fn paths_agree(cases: &[(&PolicyEngine, &Vec<Req>)]) -> bool {
    for (e, reqs) in cases {
        for r in reqs.iter() {
            let d = r.decide(e, Path::Served);
            if d != r.decide(e, Path::Cedar) || d != r.decide(e, Path::WholeSet) {
                eprintln!("mayfly-policybench: the paths disagree on {}: {d:?}", r.id);
                return false;
            }
        }
    }
    true
}

fn main() -> ExitCode {
    let Some((engine, sugar, both)) = sets() else {
        return ExitCode::FAILURE;
    };
    let token = vec![k8s(4, "token", 4)];
    let check = token[0].decide(&engine, Path::Served);
    if !check.allow || check.policies != ["k8s-ns4-token"] {
        eprintln!(
            "mayfly-policybench: the token scenario should be allowed by k8s-ns4-token: {check:?}"
        );
        return ExitCode::FAILURE;
    }
    let mix = mix();
    let cc_token = vec![cc(7, false)];
    let cc_mix = cc_mix();
    if !paths_agree(&[
        (&engine, &token),
        (&engine, &mix),
        (&sugar, &cc_token),
        (&sugar, &cc_mix),
        (&both, &cc_token),
        (&both, &cc_mix),
    ]) {
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().collect();
    // `--sliced-only` skips the whole-set reference (for profiling the request path).
    let sliced_only = args.iter().any(|a| a == "--sliced-only");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    println!(
        "{:<58} {:>12} {:>14} {:>8} {:>8} {:>8}",
        "scenario", "decisions/s", "ns/decision", "p50 ns", "p99 ns", "allowed"
    );
    for (name, e, reqs, path) in [
        (
            "workload token, allowed (sliced)",
            &engine,
            &token,
            Path::Served,
        ),
        ("mix of 72 requests (sliced)", &engine, &mix, Path::Served),
        (
            "workload token, allowed (whole set, reference)",
            &engine,
            &token,
            Path::WholeSet,
        ),
        (
            "mix of 72 requests (whole set, reference)",
            &engine,
            &mix,
            Path::WholeSet,
        ),
        (
            "cc token, sugar only (fast path)",
            &sugar,
            &cc_token,
            Path::Served,
        ),
        (
            "cc token, sugar only (Cedar slices, no fast path)",
            &sugar,
            &cc_token,
            Path::Cedar,
        ),
        (
            "cc 16 issuances, sugar only (fast path)",
            &sugar,
            &cc_mix,
            Path::Served,
        ),
        (
            "cc 16 issuances, sugar only (Cedar slices)",
            &sugar,
            &cc_mix,
            Path::Cedar,
        ),
        (
            "cc token, sugar + 100 policies (Cedar: shared forbid)",
            &both,
            &cc_token,
            Path::Served,
        ),
        (
            "cc 16 issuances, sugar + 100 policies (as served)",
            &both,
            &cc_mix,
            Path::Served,
        ),
    ] {
        if (path == Path::WholeSet && sliced_only)
            || only.is_some_and(|o| !name.contains(o.as_str()))
        {
            continue;
        }
        let f = measure(e, reqs, path);
        println!(
            "{:<58} {:>12.0} {:>14.0} {:>8} {:>8} {:>5}/{}",
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
