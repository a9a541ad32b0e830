//! `mayfly server`: wiring only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use mayfly_config::{AuditOutput, Config};
use mayfly_server::{App, AppOptions};
use mayfly_store::{AuditSink, Store};
use mayfly_sts::SystemClock;

/// Load config: the file, or the embedded default.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default()?,
    })
}

/// Open the store named by the config, creating the data directory when it is SQLite's.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let opts = mayfly_store::StoreOptions {
        max_connections: cfg.pool.max_connections,
        acquire_timeout: cfg.pool.acquire_timeout,
        statement_timeout: cfg.pool.statement_timeout,
    };
    match &cfg.database {
        // The URL may hold a password: errors name the setting, never the value.
        Some(url) => Store::open_with(url, &opts)
            .await
            .context("cannot open the database named by `database` (MAYFLY_DATABASE_URL)"),
        None => {
            crate::keyfile::data_dir(&cfg.data_dir)?;
            let path = cfg.data_dir.join("mayfly.db");
            Store::open_with(&format!("sqlite://{}?mode=rwc", path.display()), &opts)
                .await
                .with_context(|| format!("cannot open {}", path.display()))
        }
    }
}

pub(crate) fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MAYFLY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only for a person at a terminal: log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Where the audit JSON-lines copy goes (`[audit]`); the server and the proxy share it.
pub(crate) fn audit_sink(cfg: &Config) -> anyhow::Result<AuditSink> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(match cfg.audit.output {
        AuditOutput::Off => {
            tracing::warn!(
                "audit.output = \"off\": no audit anchors are written outside the database, so events cut from the end of the log (head included) cannot be detected"
            );
            AuditSink::Off
        }
        AuditOutput::Stdout => AuditSink::Stdout,
        AuditOutput::Stderr => AuditSink::Stderr,
        AuditOutput::File => {
            let path: &PathBuf = cfg
                .audit
                .path
                .as_ref()
                .context("audit.path is required with audit.output = \"file\"")?;
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open audit.path {}", path.display()))?;
            AuditSink::File(f)
        }
    })
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Run the server until SIGINT/SIGTERM.
pub async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_tracing();
    let embedded = config.is_none();
    let cfg = load_config(config.as_deref())?;
    let store = open_store(&cfg).await?;
    let kek = Arc::new(crate::keyfile::master_key(&cfg.data_dir, true)?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let agent_listener = match cfg.spiffe.agent_listen {
        None => None,
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on spiffe.agent_listen {a}"))?,
        ),
    };
    let trust_domain = cfg.trust_domain.clone();
    let issuer = match &cfg.issuer {
        Some(u) => u.as_str().trim_end_matches('/').to_string(),
        None => format!("http://{addr}"),
    };
    let sink = audit_sink(&cfg)?;
    let data_dir = cfg.data_dir.clone();
    let database = cfg.database.is_some();
    let n_clients = cfg.clients.len();
    let app = App::start(AppOptions {
        config: cfg,
        issuer: issuer.clone(),
        store,
        kek,
        clock: Arc::new(SystemClock),
        audit_sink: sink,
    })
    .await
    .context("cannot start")?;

    let ticker = app.clone();
    tokio::spawn(async move {
        let mut every =
            tokio::time::interval(std::time::Duration::from_secs(ticker.tick_interval()));
        loop {
            every.tick().await;
            if let Err(e) = ticker.tick().await {
                tracing::error!(error = %e, "scheduled maintenance failed; will retry");
            }
        }
    });

    #[cfg(unix)]
    {
        // SIGHUP: rebuild the policy set now (an invalid one is refused; the old one stays).
        let reloader = app.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        reloader.reload_policy().await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; policies reload on change only")
            }
        }
    }

    let store_desc = if database {
        "PostgreSQL".to_string()
    } else {
        data_dir.display().to_string()
    };
    eprintln!(
        "mayfly: listening on http://{addr} (issuer {issuer}, data in {store_desc}, {n_clients} configured clients; {})",
        crate::scheduler()
    );
    if let Some(l) = agent_listener {
        eprintln!(
            "mayfly: agent API on https://{} (mutual TLS, trust domain {trust_domain})",
            l.local_addr()?
        );
        let a = app.clone();
        tokio::spawn(async move {
            if let Err(e) = mayfly_server::serve_agent_api(l, a, std::future::pending()).await {
                tracing::error!(error = %e, "agent API stopped");
            }
        });
    }
    if embedded {
        eprintln!(
            "mayfly: quickstart:\n  mayfly keygen --out demo\n  mayfly client add --id demo --jwks-file demo.jwks.json --audience https://api.example.test --scope read\n  mayfly token get --issuer {issuer} --client-id demo --key demo.private.jwk.json --audience https://api.example.test --scope read\n  mayfly token inspect --issuer {issuer} TOKEN"
        );
    }
    mayfly_server::serve(listener, app, shutdown_signal())
        .await
        .context("server failed")?;
    eprintln!("mayfly: stopped");
    Ok(ExitCode::SUCCESS)
}
