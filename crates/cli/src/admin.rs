//! Operator commands that work on the store directly (safe beside a running server).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use mayfly_store::{AuditLog, AuditSink, Pending, StoredClient, TamperKind};
use mayfly_sts::keys::{self, KeyTimes};
use mayfly_sts::{AuditEvent, Clock, Decision, EventKind, SystemClock};

use crate::server::{load_config, open_store};

fn now() -> i64 {
    SystemClock.now()
}

/// What every store command opens: the config and the store it names.
pub(crate) struct Ctx {
    pub cfg: mayfly_config::Config,
    pub store: mayfly_store::Store,
}

impl Ctx {
    pub(crate) async fn open(config: Option<PathBuf>) -> anyhow::Result<Self> {
        let cfg = load_config(config.as_deref())?;
        let store = open_store(&cfg).await?;
        Ok(Self { cfg, store })
    }

    pub(crate) fn kek(&self, create: bool) -> anyhow::Result<Arc<mayfly_crypto::Kek>> {
        Ok(Arc::new(crate::keyfile::master_key(
            &self.cfg.data_dir,
            create,
        )?))
    }

    /// Append events to the audit chain (the JSON-lines copy is the server's job).
    pub(crate) async fn record(
        &self,
        kek: Arc<mayfly_crypto::Kek>,
        events: Vec<AuditEvent>,
    ) -> anyhow::Result<()> {
        let audit = AuditLog::start(
            self.store.clone(),
            kek,
            AuditSink::Off,
            0,
            Arc::new(SystemClock),
        );
        for e in events {
            audit.commit(Pending::event(e)).await?;
        }
        Ok(())
    }
}

fn when(t: i64) -> String {
    let d = t - now();
    if d >= 0 {
        format!(
            "in {}",
            humantime::format_duration(std::time::Duration::from_secs(d as u64))
        )
    } else {
        format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs((-d) as u64))
        )
    }
}

/// `mayfly config check FILE`.
pub async fn config_check(file: &Path) -> anyhow::Result<ExitCode> {
    let cfg = mayfly_config::Config::load(file)?;
    let max_ttl = cfg.tokens.max_ttl.as_secs() as i64;
    let mut clients = Vec::with_capacity(cfg.clients.len());
    for c in &cfg.clients {
        clients.push(mayfly_server::client_from_config(c, max_ttl).await?);
    }
    let (issuers, policies) = mayfly_server::check_issuers_and_policy(&cfg, &clients)?;
    println!(
        "{}: ok ({} clients, {issuers} trusted issuers, {policies} policies, listen {}, signing {:?})",
        file.display(),
        cfg.clients.len(),
        cfg.listen,
        cfg.tokens.signing_alg
    );
    Ok(ExitCode::SUCCESS)
}

/// `mayfly keys list`.
pub async fn keys_list(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let stored = ctx.store.load_keys(&*ctx.kek(false)?).await?;
    let times: Vec<KeyTimes> = stored.iter().map(|k| k.times.clone()).collect();
    let t = now();
    let current = keys::current(&times, t).map(|k| k.kid.clone());
    let head = [
        "KID",
        "ALG",
        "STATE",
        "SIGNS FROM",
        "SIGNS UNTIL",
        "LEAVES JWKS",
    ];
    println!(
        "{:<44} {:<6} {:<9} {:<22} {:<22} {}",
        head[0], head[1], head[2], head[3], head[4], head[5]
    );
    for k in &stored {
        let s = &k.times;
        let state = if Some(&s.kid) == current.as_ref() {
            "current"
        } else if s.not_before > t {
            "next"
        } else if s.expires_at > t {
            "retired"
        } else {
            "expired"
        };
        println!(
            "{:<44} {:<6} {:<9} {:<22} {:<22} {}",
            s.kid,
            k.key.alg().name(),
            state,
            when(s.not_before),
            when(s.not_after),
            when(s.expires_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly keys rotate`.
pub async fn keys_rotate(config: Option<PathBuf>, force: bool) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let kek = ctx.kek(false)?;
    let (sched, alg) = mayfly_server::keyring::key_policy(&ctx.cfg.tokens);
    // The same lock the servers plan under: a rotation never races a replica's schedule.
    let lock = ctx.store.key_lock().await?;
    let t = now();
    let times = |keys: Vec<mayfly_store::StoredKey>| -> Vec<KeyTimes> {
        keys.into_iter().map(|k| k.times).collect()
    };
    let Some(actions) = keys::rotate_now(&times(ctx.store.load_keys(&kek).await?), t, &sched)
    else {
        bail!("no current and next key to rotate: start the server once so it creates them");
    };
    if let Some(keys::KeyAction::Reschedule(next)) = actions.get(1) {
        let published_for = t - next.created_at;
        if published_for < sched.jwks_max_age() && !force {
            bail!(
                "the next key {} has been published for only {published_for}s, less than the JWKS cache lifetime ({}s): verifiers may not know it yet. Wait, or pass --force",
                next.kid,
                sched.jwks_max_age()
            );
        }
    }
    let audit = AuditLog::start(
        ctx.store.clone(),
        kek.clone(),
        AuditSink::Off,
        0,
        Arc::new(SystemClock),
    );
    let apply = |actions: Vec<keys::KeyAction>| {
        let (store, kek, audit) = (&ctx.store, &kek, &audit);
        async move {
            mayfly_server::keyring::apply_and_record(store, kek, audit, &actions, t, alg, "manual_")
                .await
        }
    };
    let mut done = apply(actions).await?;
    // A new next key, published from now.
    done.extend(
        apply(keys::plan(
            &times(ctx.store.load_keys(&kek).await?),
            t,
            &sched,
        ))
        .await?,
    );
    lock.release().await?;
    for (what, kid) in &done {
        println!("{what} {kid}");
    }
    println!("rotated; a running server picks the new key up within seconds");
    Ok(ExitCode::SUCCESS)
}

/// `mayfly audit tail`.
pub async fn audit_tail(config: Option<PathBuf>, n: i64) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    for e in ctx.store.audit_tail(n.clamp(1, 100_000)).await? {
        let mut v: serde_json::Value =
            serde_json::from_str(&e.body).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("seq".into(), e.seq.into());
            o.insert("hash".into(), e.hash.into());
        }
        println!("{v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly audit verify`.
pub async fn audit_verify(
    config: Option<PathBuf>,
    anchor: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    let anchors = match anchor {
        Some(path) => {
            let a = mayfly_store::Anchor::read_file(path)
                .with_context(|| format!("cannot read anchors from {}", path.display()))?;
            if a.is_empty() {
                bail!(
                    "{} holds no audit anchors; give the file the server writes its audit output to (audit.output = \"file\")",
                    path.display()
                );
            }
            a
        }
        None => Vec::new(),
    };
    let report = ctx
        .store
        .audit_verify_anchored(&*ctx.kek(false)?, &anchors)
        .await?;
    if report.problems.is_empty() {
        let anchored = match anchors.iter().map(|a| a.seq).max() {
            Some(seq) => format!(", {} anchors up to event {seq} match", anchors.len()),
            None => String::new(),
        };
        println!(
            "audit log intact: {} events, head {}{anchored}",
            report.events, report.head
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (seq, kind, detail) in &report.problems {
        let what = match kind {
            TamperKind::Edited => "EDITED",
            TamperKind::Missing => "DELETED",
            TamperKind::Reordered => "REORDERED",
            TamperKind::ColumnMismatch => "EDITED",
            TamperKind::Truncated => "TRUNCATED",
            TamperKind::ForgedAnchor => "FORGED ANCHOR",
        };
        println!("event {seq}: {what}: {detail}");
    }
    println!(
        "audit log TAMPERED: {} problems in {} events",
        report.problems.len(),
        report.events
    );
    Ok(ExitCode::from(1))
}

/// `mayfly client add`.
pub async fn client_add(
    config: Option<PathBuf>,
    id: String,
    jwks_file: &Path,
    audiences: Vec<String>,
    scopes: Vec<String>,
    max_ttl: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    if cfg.clients.iter().any(|c| c.id == id) {
        bail!("client `{id}` is defined in the config file; edit it there");
    }
    let jwks = std::fs::read_to_string(jwks_file)
        .with_context(|| format!("cannot read {}", jwks_file.display()))?;
    let max_ttl = match max_ttl {
        None => None,
        Some(t) => Some(
            humantime::parse_duration(&t)
                .with_context(|| format!("--max-ttl {t}: write a duration like 10m"))?
                .as_secs() as i64,
        ),
    };
    let stored = StoredClient {
        id: id.clone(),
        jwks,
        audiences,
        scopes,
        max_ttl,
        created_at: now(),
    };
    // Same checks as the server applies when it loads the client.
    mayfly_server::client_from_stored(&stored, cfg.tokens.max_ttl.as_secs() as i64)?;
    let ctx = Ctx {
        store: open_store(&cfg).await?,
        cfg,
    };
    if !ctx.store.add_client(&stored).await? {
        bail!("client `{id}` already exists; remove it first");
    }
    let mut e = AuditEvent::new(EventKind::ClientChange, now(), Decision::Allow);
    e.client = Some(id.clone());
    e.reason = Some("client_added".into());
    e.audience = stored.audiences.first().cloned();
    e.scopes = stored.scopes.clone();
    ctx.record(ctx.kek(true)?, vec![e]).await?;
    println!("added client {id}");
    Ok(ExitCode::SUCCESS)
}

/// `mayfly client list`.
pub async fn client_list(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Ctx { cfg, store } = Ctx::open(config).await?;
    let row = |id: &str, source: &str, audiences: &[String], scopes: &[String]| {
        println!(
            "{id:<32} {source:<8} {:<40} {}",
            audiences.join(","),
            scopes.join(" ")
        );
    };
    row("ID", "SOURCE", &["AUDIENCES".into()], &["SCOPES".into()]);
    for c in &cfg.clients {
        row(&c.id, "config", &c.audiences, &c.scopes);
    }
    for c in store.list_clients().await? {
        row(&c.id, "store", &c.audiences, &c.scopes);
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly client remove`.
pub async fn client_remove(config: Option<PathBuf>, id: &str) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    if !ctx.store.remove_client(id).await? {
        bail!("no run-time client `{id}` (config clients are removed by editing the file)");
    }
    let mut e = AuditEvent::new(EventKind::ClientChange, now(), Decision::Allow);
    e.client = Some(id.to_string());
    e.reason = Some("client_removed".into());
    ctx.record(ctx.kek(true)?, vec![e]).await?;
    println!("removed client {id}");
    Ok(ExitCode::SUCCESS)
}
