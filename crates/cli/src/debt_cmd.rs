//! `mayfly debt`: the inventory of static keys that still exist. Each has an owner and an expiry
//! date; keys the proxy wraps are stored sealed under the master key, keys found by the scanner
//! are entered by fingerprint. Keys are read from standard input or a named environment
//! variable, never from the command line (argv is visible to every local user and lands in
//! shell history).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use mayfly_store::{
    DAY, DebtEntry, check_entry_name, days_left, key_fingerprint, last_day, parse_fingerprint,
    short_fingerprint as short,
};
use mayfly_sts::{AuditEvent, Clock, Decision, EventKind, SystemClock};
use serde_json::json;
use zeroize::Zeroizing;

use crate::admin::Ctx;

/// A key longer than this is not an API key: refuse rather than store a file by mistake.
const MAX_KEY_BYTES: usize = 8192;

/// `mayfly debt ...`
#[derive(Subcommand)]
pub enum DebtCmd {
    /// Add a static key to the inventory. The key is read from standard input (or the variable
    /// named by --key-env) and stored sealed; with --fingerprint, only its SHA-256 is entered
    /// (a key found by `mayfly scan` that nothing wraps yet).
    Add(AddArgs),
    /// Replace an entry's key (read like `add`); running proxies pick it up without a restart.
    Rotate {
        /// Entry name.
        name: String,
        /// Read the key from this environment variable instead of standard input.
        #[arg(long, value_name = "VAR")]
        key_env: Option<String>,
    },
    /// List the inventory, soonest expiry first.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move an entry's expiry date; the reason is required and audited.
    Extend {
        /// Entry name.
        name: String,
        /// New last day, YYYY-MM-DD (UTC).
        #[arg(long, value_name = "YYYY-MM-DD")]
        until: String,
        /// Why the key may live longer (kept with the entry and in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Remove an entry: the key is gone for good (revoke it at its provider first).
    Remove {
        /// Entry name.
        name: String,
    },
}

/// `mayfly debt add` arguments.
#[derive(clap::Args)]
pub struct AddArgs {
    /// Entry name (also the proxy route's `key` by default).
    #[arg(long)]
    pub name: String,
    /// The team or person who owns moving off this key.
    #[arg(long)]
    pub owner: String,
    /// Last day the key may be used, YYYY-MM-DD (UTC). Required: every key has an end.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub expires: String,
    /// A proxy route that uses the key (repeat for several).
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Read the key from this environment variable instead of standard input.
    #[arg(long, value_name = "VAR", conflicts_with = "fingerprint")]
    pub key_env: Option<String>,
    /// Enter a key by its SHA-256 (hex) only, as `mayfly scan` reports it.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    /// Where the key was found (with --fingerprint), e.g. `repo@commit:path:line`.
    #[arg(long, requires = "fingerprint")]
    pub found_at: Option<String>,
}

pub(crate) fn now() -> i64 {
    SystemClock.now()
}

/// Read a key from the named variable, or standard input (one line; a trailing newline is not
/// part of the key). Never from argv.
fn read_key(key_env: Option<&str>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let raw: Zeroizing<Vec<u8>> = match key_env {
        Some(var) => match std::env::var_os(var) {
            Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            None => bail!(
                "environment variable {var} is not set: export it, or pipe the key on standard input"
            ),
        },
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "mayfly: paste the key, then press Enter and Ctrl-D (it is not echoed back anywhere else)"
                );
            }
            let mut buf = Zeroizing::new(Vec::new());
            stdin
                .lock()
                .take(MAX_KEY_BYTES as u64 + 2)
                .read_to_end(&mut buf)
                .context("cannot read the key from standard input")?;
            buf
        }
    };
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let key = Zeroizing::new(raw[..end].to_vec());
    if key.is_empty() {
        bail!(
            "the key is empty: pipe it on standard input, e.g. `printenv STRIPE_KEY | mayfly debt add ...`, or use --key-env VAR"
        );
    }
    if key.len() > MAX_KEY_BYTES {
        bail!("the key is longer than {MAX_KEY_BYTES} bytes: that is not an API key");
    }
    if key.contains(&b'\n') {
        bail!("the key spans several lines: give one key, on one line");
    }
    Ok(key)
}

fn event(name: &str, reason: String) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::DebtChange, now(), Decision::Allow);
    e.route = Some(name.to_string());
    e.client = Some("mayfly debt".into());
    e.reason = Some(reason);
    e
}

/// A new entry, created now: `wrapped` when its key is stored, else known by fingerprint.
pub(crate) fn new_entry(
    name: String,
    owner: String,
    expires_at: i64,
    routes: Vec<String>,
    fingerprint: String,
    wrapped: bool,
    found_at: Option<String>,
) -> DebtEntry {
    let now = now();
    DebtEntry {
        name,
        owner,
        created_at: now,
        expires_at,
        routes,
        fingerprint,
        wrapped,
        key_version: 1,
        updated_at: now,
        extended_reason: None,
        found_at,
        last_used_at: None,
    }
}

fn kind(entry: &DebtEntry) -> &'static str {
    if entry.wrapped {
        "wrapped"
    } else {
        "known by fingerprint"
    }
}

/// Enter one entry and audit it; false when the name is taken.
pub(crate) async fn enter(
    ctx: &Ctx,
    kek: std::sync::Arc<mayfly_crypto::Kek>,
    entry: &DebtEntry,
    key: Option<&[u8]>,
) -> anyhow::Result<bool> {
    if !ctx.store.add_debt(entry, key, &kek).await? {
        return Ok(false);
    }
    let mut reason = format!(
        "added ({}, fingerprint {}, expires after {}, owner {})",
        kind(entry),
        short(&entry.fingerprint),
        last_day(entry.expires_at),
        entry.owner
    );
    if let Some(at) = &entry.found_at {
        reason.push_str(&format!(", found at {at}"));
    }
    ctx.record(kek, vec![event(&entry.name, reason)]).await?;
    Ok(true)
}

/// Run one `mayfly debt` command.
pub async fn run(config: Option<PathBuf>, cmd: DebtCmd) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::open(config).await?;
    match cmd {
        DebtCmd::Add(a) => add(&ctx, a).await,
        DebtCmd::Rotate { name, key_env } => rotate(&ctx, name, key_env).await,
        DebtCmd::List { json } => list(&ctx, json).await,
        DebtCmd::Extend {
            name,
            until,
            reason,
        } => extend(&ctx, name, until, reason).await,
        DebtCmd::Remove { name } => {
            let kek = ctx.kek(false)?;
            if !ctx.store.remove_debt(&name).await? {
                bail!("no entry `{name}`: `mayfly debt list` shows the inventory");
            }
            ctx.record(kek, vec![event(&name, "removed".into())])
                .await?;
            println!("removed `{name}`");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mayfly debt add`.
async fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<ExitCode> {
    let AddArgs {
        name,
        owner,
        expires,
        routes,
        key_env,
        fingerprint: fp,
        found_at,
    } = a;
    check_entry_name(&name)?;
    if owner.trim().is_empty() {
        bail!("--owner is empty: name the team that will move off this key");
    }
    let expires_at = mayfly_store::end_of_day(&expires)?;
    let now = now();
    if expires_at <= now {
        bail!("--expires {expires} is in the past: give the last day the key may still be used");
    }
    let kek = ctx.kek(true)?;
    let (key, fp) = match fp {
        Some(fp) => (None, parse_fingerprint(&fp).context("--fingerprint")?),
        None => {
            let key = read_key(key_env.as_deref())?;
            let fp = key_fingerprint(&key);
            (Some(key), fp)
        }
    };
    for other in ctx.store.debt_by_fingerprint(&fp).await? {
        eprintln!(
            "mayfly: warning: entry `{}` holds the same key (fingerprint {})",
            other.name,
            short(&fp)
        );
    }
    let entry = new_entry(
        name.clone(),
        owner,
        expires_at,
        routes,
        fp.clone(),
        key.is_some(),
        found_at,
    );
    if !enter(ctx, kek, &entry, key.as_ref().map(|k| k.as_slice())).await? {
        bail!(
            "entry `{name}` exists: use `mayfly debt rotate {name}` to replace its key, or another name"
        );
    }
    println!(
        "added `{name}` ({}, fingerprint {}), usable through {} ({} days)",
        kind(&entry),
        short(&fp),
        last_day(expires_at),
        days_left(expires_at, now)
    );
    Ok(ExitCode::SUCCESS)
}

/// `mayfly debt rotate`.
async fn rotate(ctx: &Ctx, name: String, key_env: Option<String>) -> anyhow::Result<ExitCode> {
    let Some(before) = ctx.store.get_debt(&name).await? else {
        bail!("no entry `{name}`: `mayfly debt list` shows the inventory");
    };
    let key = read_key(key_env.as_deref())?;
    let fp = key_fingerprint(&key);
    if fp == before.fingerprint {
        bail!("that is the key `{name}` already holds: rotate means a new key from the provider");
    }
    let kek = ctx.kek(false)?;
    if !ctx
        .store
        .rotate_debt_key(&name, &key, &fp, now(), &kek)
        .await?
    {
        bail!("entry `{name}` was removed meanwhile");
    }
    ctx.record(
        kek,
        vec![event(
            &name,
            format!(
                "rotated (fingerprint {} replaces {})",
                short(&fp),
                short(&before.fingerprint)
            ),
        )],
    )
    .await?;
    println!(
        "rotated `{name}` (fingerprint {}); running proxies load it within their reload interval",
        short(&fp)
    );
    Ok(ExitCode::SUCCESS)
}

/// `mayfly debt extend`.
async fn extend(
    ctx: &Ctx,
    name: String,
    until: String,
    reason: String,
) -> anyhow::Result<ExitCode> {
    let reason = reason.trim().to_string();
    if reason.len() < 3 {
        bail!("--reason is required: say why this key may live longer (it is audited)");
    }
    let Some(before) = ctx.store.get_debt(&name).await? else {
        bail!("no entry `{name}`: `mayfly debt list` shows the inventory");
    };
    let expires_at = mayfly_store::end_of_day(&until)?;
    if expires_at <= now() {
        bail!("--until {until} is in the past");
    }
    let kek = ctx.kek(false)?;
    if !ctx
        .store
        .extend_debt(&name, expires_at, &reason, now())
        .await?
    {
        bail!("entry `{name}` was removed meanwhile");
    }
    ctx.record(
        kek,
        vec![event(
            &name,
            format!(
                "expiry moved from {} to {}: {reason}",
                last_day(before.expires_at),
                last_day(expires_at)
            ),
        )],
    )
    .await?;
    println!(
        "`{name}` now usable through {} ({} days)",
        last_day(expires_at),
        days_left(expires_at, now())
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx, as_json: bool) -> anyhow::Result<ExitCode> {
    let now = now();
    let entries = ctx.store.list_debt().await?;
    let mut usage = ctx.store.all_debt_usage().await?;
    let rows: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let u = usage.remove(&e.name).unwrap_or_default();
            (e, u)
        })
        .collect();
    if as_json {
        let out: Vec<_> = rows
            .iter()
            .map(|(e, u)| {
                json!({
                    "name": e.name,
                    "owner": e.owner,
                    "created_at": e.created_at,
                    "expires": last_day(e.expires_at),
                    "expires_at": e.expires_at,
                    "days_left": days_left(e.expires_at, now),
                    "expired": e.expires_at <= now,
                    "wrapped": e.wrapped,
                    "fingerprint": e.fingerprint,
                    "routes": e.routes,
                    "last_used_at": e.last_used_at,
                    "extended_reason": e.extended_reason,
                    "found_at": e.found_at,
                    "identities": u.iter().map(|u| json!({
                        "identity": u.identity,
                        "first_used_at": u.first_used_at,
                        "last_used_at": u.last_used_at,
                        "calls": u.calls,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no static keys on the list");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<18} {:<10} {:>9}  {:<11} {:<16} {:<12} IDENTITIES",
        "NAME", "OWNER", "EXPIRES", "DAYS LEFT", "KEY", "ROUTES", "LAST USED"
    );
    for (e, u) in &rows {
        let left = days_left(e.expires_at, now);
        let days = if e.expires_at <= now {
            "EXPIRED".to_string()
        } else if left < 7 {
            format!("{left} (!!)")
        } else if left < 30 {
            format!("{left} (!)")
        } else {
            left.to_string()
        };
        let key = if e.wrapped {
            "wrapped".to_string()
        } else {
            format!("found {}", short(&e.fingerprint).get(..4).unwrap_or(""))
        };
        let used = e.last_used_at.map_or_else(
            || "never".to_string(),
            |t| format!("{}d ago", (now - t) / DAY),
        );
        let ids: Vec<&str> = u.iter().map(|u| u.identity.as_str()).collect();
        println!(
            "{:<20} {:<18} {:<10} {:>9}  {:<11} {:<16} {:<12} {}",
            e.name,
            e.owner,
            last_day(e.expires_at),
            days,
            key,
            if e.routes.is_empty() {
                "-".to_string()
            } else {
                e.routes.join(",")
            },
            used,
            if ids.is_empty() {
                "-".to_string()
            } else {
                ids.join(",")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
