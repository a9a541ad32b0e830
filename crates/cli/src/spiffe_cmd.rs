//! SPIFFE operator commands: registration entries, join tokens, the trust bundle, and
//! `mayfly agent` itself.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mayfly_store::StoredEntry;
use mayfly_sts::{AuditEvent, Clock, Decision, EventKind, SystemClock};

use crate::admin::Ctx;

fn now() -> i64 {
    SystemClock.now()
}

/// `mayfly entry ...`
#[derive(Subcommand)]
pub enum EntryCmd {
    /// Register a workload: processes under agent PARENT whose selectors include every
    /// --selector get SPIFFE_ID.
    Add {
        /// The SPIFFE ID the workload gets.
        #[arg(long)]
        spiffe_id: String,
        /// The agent's SPIFFE ID (printed by `mayfly agent token create` and by the agent).
        #[arg(long)]
        parent: String,
        /// unix:uid:N, unix:gid:N, unix:user:NAME, unix:path:/abs/path, unix:sha256:HEX (repeat;
        /// all must match).
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// X.509-SVID lifetime (default [spiffe] x509_svid_ttl).
        #[arg(long)]
        x509_ttl: Option<String>,
        /// JWT-SVID lifetime (default [spiffe] jwt_svid_ttl).
        #[arg(long)]
        jwt_ttl: Option<String>,
        /// A DNS name for the X.509-SVID (repeat).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
    },
    /// List entries.
    List {
        /// Only entries under this agent.
        #[arg(long)]
        parent: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an entry by id.
    Remove {
        /// Entry id.
        id: String,
    },
}

fn dur(flag: &str, v: Option<&String>, default: std::time::Duration) -> anyhow::Result<i64> {
    Ok(match v {
        None => default.as_secs() as i64,
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("{flag} {t}: write a duration like 10m"))?
            .as_secs() as i64,
    })
}

/// Run an entry command.
pub async fn entry(config: Option<PathBuf>, cmd: EntryCmd) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    match cmd {
        EntryCmd::Add {
            spiffe_id,
            parent,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns_names,
        } => {
            let td = &ctx.cfg.trust_domain;
            for (flag, id) in [("--spiffe-id", &spiffe_id), ("--parent", &parent)] {
                let sid =
                    mayfly_proto::SpiffeId::parse(id).with_context(|| format!("{flag} {id}"))?;
                if sid.trust_domain() != td {
                    bail!("{flag} {id} is not in this server's trust domain `{td}`");
                }
            }
            let parsed = mayfly_spiffe::selector::Selector::parse_all(&selectors)?;
            let mut canon: Vec<String> = parsed.iter().map(|s| s.to_string()).collect();
            canon.sort();
            canon.dedup();
            let s = &ctx.cfg.spiffe;
            let x509_ttl = dur("--x509-ttl", x509_ttl.as_ref(), s.x509_svid_ttl)?;
            let jwt_ttl = dur("--jwt-ttl", jwt_ttl.as_ref(), s.jwt_svid_ttl)?;
            if x509_ttl < 10 || x509_ttl > s.max_x509_svid_ttl.as_secs() as i64 {
                bail!("--x509-ttl must be between 10s and [spiffe] max_x509_svid_ttl");
            }
            if !(10..=ctx.cfg.tokens.max_ttl.as_secs() as i64).contains(&jwt_ttl) {
                bail!("--jwt-ttl must be between 10s and [tokens] max_ttl");
            }
            let id = mayfly_crypto::random_id()?;
            let entry = StoredEntry {
                id: id.clone(),
                spiffe_id: spiffe_id.clone(),
                parent_id: parent.clone(),
                selectors: canon,
                x509_ttl,
                jwt_ttl,
                dns_names,
                created_at: now(),
            };
            if !ctx.store.add_entry(&entry).await? {
                bail!("an identical entry (same parent, SPIFFE ID and selectors) exists");
            }
            let mut e = AuditEvent::new(EventKind::EntryChange, now(), Decision::Allow);
            e.identity = Some(spiffe_id.clone());
            e.client = Some(parent);
            e.jti = Some(id.clone());
            e.reason = Some("entry_added".into());
            ctx.record(ctx.kek(true)?, vec![e]).await?;
            println!("{id}");
            eprintln!("added entry {id}: {spiffe_id}");
        }
        EntryCmd::List { parent, json } => {
            let entries = ctx.store.list_entries(parent.as_deref()).await?;
            if json {
                for e in entries {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": e.id, "spiffe_id": e.spiffe_id, "parent_id": e.parent_id,
                            "selectors": e.selectors, "x509_ttl": e.x509_ttl,
                            "jwt_ttl": e.jwt_ttl, "dns_names": e.dns_names,
                        })
                    );
                }
            } else {
                println!(
                    "{:<32} {:<48} {:<48} SELECTORS",
                    "ID", "SPIFFE ID", "PARENT"
                );
                for e in entries {
                    println!(
                        "{:<32} {:<48} {:<48} {}",
                        e.id,
                        e.spiffe_id,
                        e.parent_id,
                        e.selectors.join(",")
                    );
                }
            }
        }
        EntryCmd::Remove { id } => {
            if !ctx.store.remove_entry(&id).await? {
                bail!("no entry `{id}`");
            }
            let mut e = AuditEvent::new(EventKind::EntryChange, now(), Decision::Allow);
            e.jti = Some(id.clone());
            e.reason = Some("entry_removed".into());
            ctx.record(ctx.kek(true)?, vec![e]).await?;
            println!("removed entry {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Create a join token: prints the token on stdout and the agent's future SPIFFE ID on stderr.
pub async fn join_token_create(
    config: Option<PathBuf>,
    ttl: &str,
    agent_name: Option<String>,
) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let prefix = mayfly_server::spiffe::agent_prefix(&ctx.cfg.trust_domain);
    let fixed = match &agent_name {
        None => None,
        Some(n) => {
            let id = format!("{prefix}{n}");
            mayfly_proto::SpiffeId::validate(&id)
                .with_context(|| format!("--agent-name {n} makes {id}"))?;
            Some(id)
        }
    };
    let ttl = humantime::parse_duration(ttl)
        .with_context(|| format!("--ttl {ttl}: write a duration like 10m"))?
        .as_secs() as i64;
    if !(10..=7 * 24 * 3600).contains(&ttl) {
        bail!("--ttl must be between 10s and 7 days");
    }
    let id = mayfly_crypto::hex(&mayfly_crypto::random_bytes(8)?);
    let secret = zeroize::Zeroizing::new(mayfly_crypto::random_id()?);
    let now = now();
    ctx.store
        .add_join_token(
            &id,
            &mayfly_server::spiffe::join_secret_hash(&secret),
            now,
            now + ttl,
            fixed.as_deref(),
        )
        .await?;
    let agent_id = fixed.unwrap_or_else(|| format!("{prefix}join/{id}"));
    let mut e = AuditEvent::new(EventKind::AgentAttest, now, Decision::Allow);
    e.reason = Some("join_token_created".into());
    e.subject = Some(format!("join token {id}"));
    e.identity = Some(agent_id.clone());
    e.exp = Some(now + ttl);
    ctx.record(ctx.kek(true)?, vec![e]).await?;
    println!("{id}.{}", secret.as_str());
    eprintln!(
        "join token {id}: single use, expires in {}; the agent that uses it becomes {agent_id}",
        humantime::format_duration(std::time::Duration::from_secs(ttl as u64))
    );
    Ok(ExitCode::SUCCESS)
}

/// Print the trust bundle: PEM (for `mayfly agent --trust-bundle`) or the SPIFFE JSON document.
pub async fn bundle_show(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let kek = ctx.kek(false)?;
    let doc = mayfly_server::spiffe::bundle_from_store(&ctx.store, &kek, &ctx.cfg, now())
        .await
        .context("no SPIFFE authorities yet: start the server once to create them")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc.to_document()?)?);
    } else {
        print!("{}", doc.x509_pem());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly agent` options.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The server's agent API, e.g. https://127.0.0.1:8443 ([spiffe] agent_listen).
    #[arg(long)]
    pub server: Option<String>,
    /// The server's issuer URL (token endpoint for `/v1/token`), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub issuer: Option<String>,
    /// The trust domain.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// PEM file with the trust bundle (`mayfly bundle show`): the only certificates the agent
    /// trusts for the server at start.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// File holding a join token (never pass secrets on the command line).
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// Attest with a platform token instead: the name of a server [[issuers]] entry listed
    /// under [[node_attestation]] ...
    #[arg(long, requires = "platform_token_file")]
    pub platform_issuer: Option<String>,
    /// ... and the file holding the token (re-read at each attestation; each token attests
    /// once, so a restart needs the platform's next token).
    #[arg(long)]
    pub platform_token_file: Option<PathBuf>,
    /// The Workload API socket [default: /run/mayfly/agent.sock as root, else
    /// $XDG_RUNTIME_DIR/mayfly/agent.sock]. Its directory is created mode 0755 if missing, and
    /// refused if another uid than the agent's (or root) owns it or others can write it.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also serve `GET /v1/token` on this unix socket.
    #[arg(long)]
    pub http_socket: Option<PathBuf>,
    /// How often to fetch entries and the bundle.
    #[arg(long, default_value = "5s")]
    pub sync_interval: String,
}

/// `mayfly agent ...` subcommands.
#[derive(Subcommand)]
pub enum AgentCmd {
    /// Join tokens.
    Token {
        /// TOML config file of the server.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// List attested agents: SPIFFE ID, how it attested, its SVID's serial and times.
    List {
        /// TOML config file of the server.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Evict an agent: its SVID no longer authenticates it on any agent API route (it must
    /// attest again, with a new join token or platform token).
    Evict {
        /// TOML config file of the server.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The agent's SPIFFE ID (`mayfly agent list`).
        spiffe_id: String,
    },
}

/// `mayfly agent list`.
pub async fn agent_list(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let agents = ctx.store.list_agents().await?;
    if json {
        for a in agents {
            println!(
                "{}",
                serde_json::json!({
                    "spiffe_id": a.spiffe_id, "attestation": a.attestation, "serial": a.serial,
                    "attested_at": a.attested_at, "expires_at": a.expires_at,
                })
            );
        }
    } else {
        println!(
            "{:<64} {:<20} {:<40} {:<12} EXPIRES_AT",
            "SPIFFE ID", "ATTESTATION", "SERIAL", "ATTESTED_AT"
        );
        for a in agents {
            println!(
                "{:<64} {:<20} {:<40} {:<12} {}",
                a.spiffe_id, a.attestation, a.serial, a.attested_at, a.expires_at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly agent evict SPIFFE_ID`.
pub async fn agent_evict(config: Option<PathBuf>, spiffe_id: &str) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let Some(agent) = ctx.store.get_agent(spiffe_id).await? else {
        bail!("no agent `{spiffe_id}` (see `mayfly agent list`)");
    };
    if !ctx.store.remove_agent(spiffe_id).await? {
        bail!("no agent `{spiffe_id}` (see `mayfly agent list`)");
    }
    let mut e = AuditEvent::new(EventKind::AgentAttest, now(), Decision::Allow);
    e.identity = Some(spiffe_id.to_string());
    e.reason = Some("agent_evicted".into());
    e.jti = Some(format!("serial:{}", agent.serial));
    ctx.record(ctx.kek(true)?, vec![e]).await?;
    println!("evicted agent {spiffe_id}");
    Ok(ExitCode::SUCCESS)
}

/// `mayfly agent token ...`
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a single-use join token.
    Create {
        /// How long it stays usable.
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// The agent's SPIFFE ID becomes spiffe://<td>/mayfly/agent/NAME, the same for every
        /// token made with this name (so entries survive an agent restart); default: join/<id>.
        #[arg(long)]
        agent_name: Option<String>,
    },
}

fn required<'a>(v: &'a Option<String>, flag: &str) -> anyhow::Result<&'a str> {
    v.as_deref()
        .with_context(|| format!("{flag} is required to run the agent"))
}

/// The `--trust-bundle` certificates (at least one).
fn trust_bundle(args: &AgentArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    let bundle_path = args
        .trust_bundle
        .as_ref()
        .context("--trust-bundle is required: the PEM from `mayfly bundle show`")?;
    let pem = std::fs::read_to_string(bundle_path)
        .with_context(|| format!("cannot read --trust-bundle {}", bundle_path.display()))?;
    let bundle = mayfly_crypto::x509::certs_from_pem(&pem)
        .with_context(|| format!("--trust-bundle {}", bundle_path.display()))?;
    if bundle.is_empty() {
        bail!(
            "--trust-bundle {} holds no certificate",
            bundle_path.display()
        );
    }
    Ok(bundle)
}

/// How the agent proves its node: a join token, or a platform token.
fn attestation(args: &AgentArgs) -> anyhow::Result<mayfly_agent::Attestation> {
    Ok(
        match (
            &args.join_token_file,
            &args.platform_issuer,
            &args.platform_token_file,
        ) {
            (Some(f), None, None) => {
                let t = zeroize::Zeroizing::new(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read --join-token-file {}", f.display()))?
                        .trim()
                        .to_string(),
                );
                mayfly_agent::Attestation::JoinToken(std::sync::Arc::new(t))
            }
            (None, Some(i), Some(f)) => mayfly_agent::Attestation::Platform {
                issuer: i.clone(),
                token_file: f.clone(),
            },
            _ => {
                bail!(
                    "give either --join-token-file, or --platform-issuer with --platform-token-file"
                )
            }
        },
    )
}

/// Run the agent: attest, then serve the Workload API until SIGINT/SIGTERM.
pub async fn agent_run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::server::init_tracing();
    let server = required(&args.server, "--server")?;
    let issuer = required(&args.issuer, "--issuer")?;
    let td = required(&args.trust_domain, "--trust-domain")?;
    mayfly_proto::spiffe_id::validate_trust_domain(td)
        .with_context(|| format!("--trust-domain {td}"))?;
    // Before attesting (which may spend a single-use join token): the sockets' directories.
    let socket = match &args.socket {
        Some(p) => p.clone(),
        None => mayfly_agent::default_socket_path()?,
    };
    for path in std::iter::once(&socket).chain(args.http_socket.as_ref()) {
        mayfly_agent::prepare_socket_dir(path)?;
    }
    let bundle = trust_bundle(&args)?;
    let how = attestation(&args)?;
    let sync_interval = humantime::parse_duration(&args.sync_interval)
        .with_context(|| format!("--sync-interval {}", args.sync_interval))?;
    let up = std::sync::Arc::new(
        mayfly_agent::HttpUpstream::attest(server, issuer, td, bundle, &how)
            .await
            .context("node attestation failed")?,
    );
    eprintln!("mayfly agent: attested as {}", up.spiffe_id());
    let renewer = up.clone();
    tokio::spawn(async move {
        let e = renewer.renew_forever().await;
        // The agent's SVID lapsed: it can no longer act for its workloads; stop loudly.
        eprintln!("mayfly agent: the agent SVID expired unrenewed: {e}");
        std::process::exit(1);
    });
    let mut cfg = mayfly_agent::AgentConfig::new(issuer.trim_end_matches('/').to_string());
    cfg.sync_interval = sync_interval;
    let agent = mayfly_agent::Agent::new(cfg, up.clone());
    if let Err(e) = agent.sync_now().await {
        tracing::warn!(error = %e, "first sync failed; retrying in the background");
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let run = {
        let agent = agent.clone();
        let stop = stop.clone();
        tokio::spawn(async move { agent.run(stop()).await })
    };
    let http = match &args.http_socket {
        None => None,
        Some(p) => {
            let agent = agent.clone();
            let p = p.clone();
            let stop = stop.clone();
            Some(tokio::spawn(
                async move { agent.serve_http(&p, stop()).await },
            ))
        }
    };
    eprintln!(
        "mayfly agent: starting the Workload API on {}{}",
        socket.display(),
        args.http_socket
            .as_ref()
            .map(|p| format!(" and GET /v1/token on {}", p.display()))
            .unwrap_or_default()
    );
    let serve = agent.serve(&socket, stop());
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        () = crate::server::shutdown_signal() => {
            let _ = tx.send(true);
            serve.await
        }
    };
    let _ = tx.send(true);
    let _ = run.await;
    if let Some(h) = http
        && let Ok(Err(e)) = h.await
    {
        tracing::warn!(error = %e, "HTTP token socket stopped with an error");
    }
    result.context("the Workload API server failed")?;
    eprintln!("mayfly agent: stopped");
    Ok(ExitCode::SUCCESS)
}
