//! `mayfly policy check|test|explain`: the policy engine from the command line, for CI and for
//! operators. No server and no store: a policy directory, a test file, and optionally the
//! config whose clients' `audiences`/`scopes` become generated policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use mayfly_policy::{
    ClientGrant, EntryGrant, PolicyEngine, PolicyInputs, PolicyRequest, PrincipalKind, SVID_ACTIONS,
};

/// `mayfly policy ...`.
#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only obscure the clap derive"
)]
pub enum PolicyCmd {
    /// Validate a policy directory (schema.cedarschema and *.cedar); print its policies and fingerprint.
    Check {
        /// The directory (default: the config's policy.dir).
        dir: Option<PathBuf>,
        /// mayfly config whose clients' audiences/scopes are included as generated policies.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a table-driven test file ([[case]]s); exit 1 if any case fails.
    Test {
        /// The test file (TOML; its [settings] policy_dir is relative to it, default its directory).
        file: PathBuf,
        /// mayfly config whose clients' audiences/scopes are included as generated policies.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the decision for one request and the policies behind it.
    Explain {
        /// The policy directory (default: the config's policy.dir; none: clients' policies only).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// mayfly config whose clients' audiences/scopes are included as generated policies.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Principal type.
        #[arg(long, value_enum, ignore_case = true)]
        principal_type: PrincipalType,
        /// Principal id: a client_id or a workload's SPIFFE ID.
        #[arg(long)]
        principal: String,
        /// A workload attribute, NAME=VALUE (repeat; issuer and subject default to "").
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
        /// `token`, a scope, or an SVID action (`svid_x509`, `svid_jwt`: the workload is taken
        /// to have a registration entry, whose generated permit is `entry:<SPIFFE ID>`).
        #[arg(long)]
        action: String,
        /// The audience (resource URL); for `svid_x509`, the trust domain (spiffe://example.org).
        #[arg(long)]
        audience: String,
        /// context.grant_type (default: client_credentials, or the action for an SVID action).
        #[arg(long)]
        grant_type: Option<String>,
        /// context.requested_ttl, in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: i64,
        /// context.source (an IP address).
        #[arg(long, default_value = "")]
        source: String,
        /// context.now, unix seconds (default: now).
        #[arg(long)]
        now: Option<i64>,
        /// context.client_id.
        #[arg(long, default_value = "")]
        client_id: String,
        /// context.actor.
        #[arg(long, default_value = "")]
        actor: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The principal's entity type.
#[derive(Clone, Copy, ValueEnum)]
pub enum PrincipalType {
    /// A federated workload (its id is a SPIFFE ID).
    Workload,
    /// A registered OAuth client (its id is the client_id).
    Client,
}

/// Run a `mayfly policy` command.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { dir, config } => check(dir, config),
        PolicyCmd::Test { file, config } => test(&file, config),
        PolicyCmd::Explain {
            dir,
            config,
            principal_type,
            principal,
            attrs,
            action,
            audience,
            grant_type,
            ttl,
            source,
            now,
            client_id,
            actor,
            json,
        } => {
            let svid = SVID_ACTIONS.contains(&action.as_str());
            let entries = match principal_type {
                PrincipalType::Workload if svid => vec![EntryGrant {
                    entry_id: principal.clone(),
                    spiffe_id: principal.clone(),
                }],
                _ => Vec::new(),
            };
            let (engine, _) = engine(dir, config, &entries)?;
            let grant_type = grant_type.unwrap_or_else(|| {
                if svid {
                    action.clone()
                } else {
                    "client_credentials".to_string()
                }
            });
            let mut pairs = Vec::new();
            for a in &attrs {
                let Some((k, v)) = a.split_once('=') else {
                    bail!("--attr {a}: expected NAME=VALUE");
                };
                if !engine.workload_attributes().iter().any(|n| n == k) {
                    bail!(
                        "--attr {a}: the schema declares no Workload attribute `{k}` (it has {})",
                        engine.workload_attributes().join(", ")
                    );
                }
                pairs.push((k, v));
            }
            for required in ["issuer", "subject"] {
                if !pairs.iter().any(|(k, _)| *k == required) {
                    pairs.push((required, ""));
                }
            }
            let now = now.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
            let req = PolicyRequest {
                principal_kind: match principal_type {
                    PrincipalType::Workload => PrincipalKind::Workload,
                    PrincipalType::Client => PrincipalKind::Client,
                },
                principal_id: &principal,
                attrs: &pairs,
                action: &action,
                audience: &audience,
                grant_type: &grant_type,
                requested_ttl: ttl,
                source: &source,
                now,
                client_id: &client_id,
                actor: &actor,
            };
            explain(&engine, &req, json)
        }
    }
}

/// The clients of a mayfly config as grants, and the config's policy directory.
fn config_clients(config: Option<&Path>) -> anyhow::Result<(Vec<ClientGrant>, Option<PathBuf>)> {
    let Some(path) = config else {
        return Ok((Vec::new(), None));
    };
    let cfg = mayfly_config::Config::load(path)?;
    let grants = cfg
        .clients
        .iter()
        .map(|c| ClientGrant {
            client_id: c.id.clone(),
            audiences: c.audiences.clone(),
            scopes: c.scopes.clone(),
        })
        .collect();
    Ok((grants, cfg.policy_dir))
}

/// The engine for a directory (or the config's), the config's clients and `entries`; returns
/// it with a description of where it came from.
fn engine(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    entries: &[EntryGrant],
) -> anyhow::Result<(PolicyEngine, String)> {
    let (clients, config_dir) = config_clients(config.as_deref())?;
    match dir.or(config_dir) {
        Some(d) => Ok((load_dir(&d, &clients, entries)?, d.display().to_string())),
        None if config.is_some() => Ok((
            PolicyEngine::from_inputs(PolicyInputs {
                clients: &clients,
                entries,
                ..PolicyInputs::default()
            })?,
            "the config's clients (no policy directory)".to_string(),
        )),
        None => bail!("name a policy directory (DIR or --dir) or a config with --config"),
    }
}

/// [`PolicyEngine::load_dir`], with registration entries.
fn load_dir(
    dir: &Path,
    clients: &[ClientGrant],
    entries: &[EntryGrant],
) -> Result<PolicyEngine, mayfly_policy::PolicyError> {
    let (schema, files) = PolicyEngine::read_dir(dir)?;
    PolicyEngine::from_inputs(PolicyInputs {
        schema: Some(&schema),
        files: &files,
        clients,
        entries,
    })
}

fn check(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (engine, what) = engine(dir, config, &[])?;
    let generated = engine.policies().iter().filter(|p| p.line == 0).count();
    println!(
        "{what}: ok, {} policies ({} from files, {generated} generated from clients), fingerprint {}",
        engine.policies().len(),
        engine.policies().len() - generated,
        engine.fingerprint()
    );
    let width = engine
        .policies()
        .iter()
        .map(|p| p.id.len())
        .max()
        .unwrap_or(0);
    for p in engine.policies() {
        let effect = if p.forbid { "forbid" } else { "permit" };
        println!("  {:<width$}  {effect}  {}", p.id, p.location());
    }
    for w in engine.warnings() {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn test(file: &Path, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the test file {}", file.display()))?;
    let settings =
        mayfly_policy::case_settings(&text).with_context(|| file.display().to_string())?;
    let base = file.parent().unwrap_or(Path::new("."));
    let dir = match settings.policy_dir {
        Some(d) => base.join(d),
        None => base.to_path_buf(),
    };
    let (clients, _) = config_clients(config.as_deref())?;
    // SVID cases are decided as if their workloads had registration entries.
    let entries = mayfly_policy::case_entries(&text).with_context(|| file.display().to_string())?;
    let engine = load_dir(&dir, &clients, &entries)?;
    let report =
        mayfly_policy::run_cases(&engine, &text).with_context(|| file.display().to_string())?;
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn explain(engine: &PolicyEngine, req: &PolicyRequest<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let d = engine.decide(req);
    let verdict = if d.allow { "allow" } else { "deny" };
    if json {
        let policies: Vec<serde_json::Value> = d
            .policies
            .iter()
            .map(|id| {
                let p = engine.policy(id);
                serde_json::json!({
                    "id": id,
                    "location": p.map(|p| p.location()),
                    "effect": p.map(|p| if p.forbid { "forbid" } else { "permit" }),
                    "max_ttl": p.and_then(|p| p.max_ttl),
                    "text": p.map(|p| p.text.as_str()),
                })
            })
            .collect();
        let out = serde_json::json!({
            "decision": verdict,
            "allow": d.allow,
            "policies": policies,
            "max_ttl": d.max_ttl,
            "errors": d.errors,
            "fingerprint": engine.fingerprint(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "decision: {verdict} ({} {} asks {} on {})",
        match req.principal_kind {
            PrincipalKind::Client => "Client",
            PrincipalKind::Workload => "Workload",
        },
        req.principal_id,
        req.action,
        req.audience
    );
    if let Some(t) = d.max_ttl {
        println!("max_ttl: {t}s");
    }
    if d.policies.is_empty() {
        if d.errors.is_empty() {
            println!("no policy applies: denied by default");
        }
    } else {
        println!("deciding policies:");
        for id in &d.policies {
            match engine.policy(id) {
                Some(p) => {
                    println!("--- {id} ({})", p.location());
                    println!("{}", p.text.trim_end());
                }
                None => println!("--- {id}"),
            }
        }
    }
    for e in &d.errors {
        println!("error: {e}");
    }
    Ok(ExitCode::SUCCESS)
}
