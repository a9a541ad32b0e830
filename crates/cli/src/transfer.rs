//! `mayfly migrate`, `mayfly export` and `mayfly import`: the schema by hand, and moving a
//! deployment between SQLite and PostgreSQL. Output names counts and digests, never key
//! material or the database URL (it may hold a password).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use mayfly_config::Config;
use mayfly_store::{ImportOptions, TableCounts};
use mayfly_sts::{Clock, SystemClock};

use crate::server::{load_config, open_store};

/// Where the config's store is, for messages.
fn store_name(cfg: &Config) -> String {
    match cfg.database {
        Some(_) => "the PostgreSQL database named by `database`".to_string(),
        None => format!("SQLite at {}", cfg.data_dir.join("mayfly.db").display()),
    }
}

fn print_counts(c: &TableCounts) {
    println!(
        "  {} signing keys (sealed under the master key)",
        c.signing_keys
    );
    println!("  {} run-time clients", c.clients);
    println!("  {} revocations", c.revoked_tokens);
    println!("  {} replay records", c.used_jti);
    println!(
        "  {} SPIFFE authorities (sealed under the master key)",
        c.spiffe_authorities
    );
    println!("  {} registration entries", c.spiffe_entries);
    println!("  {} join tokens (hashes only)", c.join_tokens);
    println!("  {} attested agents", c.spiffe_agents);
    println!(
        "  {} revoked JWT-SVIDs, {} tokens minted from JWT-SVIDs, {} JWT-SVID minters",
        c.revoked_svids, c.svid_tokens, c.svid_minters
    );
    println!(
        "  {} key-debt entries (wrapped keys sealed under the master key), {} usage records",
        c.debt_keys, c.debt_usage
    );
    println!("  {} audit events", c.audit_events);
}

/// `mayfly migrate`: open the store, which applies any migration it lacks, and list what the
/// database records as applied. On PostgreSQL sqlx's migrator holds an advisory lock while it
/// runs, so this is safe while replicas start (or run) against the same database: whoever
/// comes first applies, the others wait and then find nothing left to do.
pub async fn migrate(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    let store = open_store(&cfg).await?;
    let applied = store.applied_migrations().await?;
    println!("{}: schema up to date", store_name(&cfg));
    for m in &applied {
        println!("  {:>4}  {}", m.version, m.description);
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly export --out PATH`: every row of the store, keys still sealed, to a new file (0600).
/// Stop the servers first: what they write after the snapshot is not in the file.
pub async fn export(config: Option<PathBuf>, out: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    let store = open_store(&cfg).await?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    // The store buffers its writes and flushes at the end; then make the file durable.
    let written = async {
        let summary = store.export(&file, &SystemClock).await?;
        file.sync_all()?;
        anyhow::Ok(summary)
    }
    .await;
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            // A partial file must not be mistaken for an export (import would refuse it anyway).
            let _ = std::fs::remove_file(out);
            return Err(e.context(format!("cannot export to {}", out.display())));
        }
    };
    println!(
        "exported {} (schema {}) to {}",
        store_name(&cfg),
        summary.schema_version,
        out.display()
    );
    print_counts(&summary.counts);
    println!("  sha256 {}", summary.sha256);
    Ok(ExitCode::SUCCESS)
}

/// `mayfly import --in PATH`: load an export into the config's store, which must be empty, in
/// one transaction; then walk the audit chain with the master key.
pub async fn import(config: Option<PathBuf>, input: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    // The deployment's own master key: a new one could not open the keys being imported.
    let kek = crate::keyfile::master_key(&cfg.data_dir, false)
        .context("import needs the master key of the deployment that was exported")?;
    let store = open_store(&cfg).await?;
    let file =
        std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let t = &cfg.tokens;
    let replay_window = (t.max_assertion_lifetime + 2 * t.clock_skew).as_secs() as i64;
    let summary = store
        .import(
            std::io::BufReader::new(file),
            &ImportOptions {
                master_key: Some(&kek),
                replay_window,
                now: SystemClock.now(),
            },
        )
        .await
        .with_context(|| format!("cannot import {}", input.display()))?;
    println!(
        "imported {} (exported from {}, schema {}) into {}",
        input.display(),
        summary.source,
        summary.schema_version,
        store_name(&cfg)
    );
    print_counts(&summary.counts);
    if summary.replay_records_derived > 0 {
        println!(
            "  {} replay records from the last {replay_window} s of the audit log",
            summary.replay_records_derived
        );
    }
    let report = store.audit_verify(&kek).await?;
    if !report.problems.is_empty() {
        for (seq, kind, detail) in &report.problems {
            println!("event {seq}: {kind:?}: {detail}");
        }
        bail!(
            "the imported audit chain does not verify with this master key ({} problems)",
            report.problems.len()
        );
    }
    println!(
        "audit chain verified: {} events, head {}",
        report.events, report.head
    );
    Ok(ExitCode::SUCCESS)
}
