//! Moving a deployment between databases: [`Store::export`] writes the whole store as JSON
//! lines, [`Store::import`] loads such a file into an empty store in one transaction; either
//! backend to either backend. Also [`Store::applied_migrations`], for `mayfly migrate`.
//!
//! The file is a header line, one line per row (tables in a fixed order, rows by primary key)
//! and a trailer holding the row counts and the SHA-256 of every byte before it, so a file that
//! was cut short or edited is refused (`head -n -1 FILE | sha256sum` shows the same digest).
//! Signing keys stay sealed under the master key and audit events are copied byte for byte:
//! the target needs the same master key, and the hash chain verifies there as it did here.
//!
//! Not here: opening files, or knowing whether a server runs. Import refuses any store that is
//! not empty, which is what a server leaves behind once it has started.

mod file;
mod rows;

use std::io::{BufRead, BufWriter, Write};

use base64::Engine;
use futures_util::TryStreamExt;
use mayfly_crypto::{Kek, Sha256, hex};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Executor, Row};

use crate::{Backend, Store, StoreError, db};
use file::{Header, Lines, Out, Trailer, parse_header};
use rows::{AuditHeadRow, BATCH_BYTES, Batch, Derived, Entry, ROWS_PER_INSERT, Table, Tx};

/// The file format this mayfly writes and reads.
pub const EXPORT_FORMAT: u64 = 1;
/// The longest line an export may hold, in bytes: far above any row mayfly writes, and a bound
/// on what import buffers.
pub const MAX_LINE: usize = 1 << 20;
/// sqlx's bookkeeping table (its default name; the migrator does not rename it).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Why an export or import failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the file failed.
    #[error("cannot read or write the export file: {0}")]
    Io(#[from] std::io::Error),
    /// Import only fills an empty store.
    #[error(
        "the target store is not empty (it holds {0}): import only into a new database, before any server has started on it"
    )]
    NotEmpty(String),
    /// The first line is not an export header.
    #[error("not a mayfly export: {0}")]
    NotAnExport(String),
    /// The file was written in a format this mayfly does not read.
    #[error("export format {0} is not supported: this mayfly reads format {EXPORT_FORMAT}")]
    Format(u64),
    /// The file comes from a database with newer migrations than this mayfly knows.
    #[error(
        "the export has schema version {found}, newer than this mayfly's {ours}: import it with the mayfly that wrote it, or a newer one"
    )]
    NewerSchema {
        /// The file's schema version.
        found: i64,
        /// The newest this mayfly knows.
        ours: i64,
    },
    /// A line is malformed or out of place.
    #[error("line {line}: {detail}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// The file ends before its trailer.
    #[error("the export is truncated: it ends at line {0} without its trailer")]
    Truncated(u64),
    /// The trailer's SHA-256 does not match the lines before it.
    #[error("checksum mismatch: the export was edited or damaged after it was written")]
    Checksum,
    /// The rows read differ from the counts the file announces.
    #[error("row counts differ from the export's own: {0}")]
    Counts(String),
    /// The master key given cannot open a signing key of the export.
    #[error(
        "the master key cannot open sealed key {0}: use the master key of the deployment that was exported"
    )]
    WrongMasterKey(String),
}

fn line_err(line: u64, detail: impl Into<String>) -> TransferError {
    TransferError::Line {
        line,
        detail: detail.into(),
    }
}

/// Rows per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCounts {
    /// Signing keys (sealed).
    pub signing_keys: u64,
    /// Run-time clients.
    pub clients: u64,
    /// Revoked tokens.
    pub revoked_tokens: u64,
    /// Consumed single-use values (assertion and subject-token jtis).
    pub used_jti: u64,
    /// SPIFFE X.509 CAs and JWT-SVID keys (sealed). Absent (0) in files from before SPIFFE.
    #[serde(default)]
    pub spiffe_authorities: u64,
    /// SPIFFE registration entries.
    #[serde(default)]
    pub spiffe_entries: u64,
    /// Join tokens (hashes of their secrets only).
    #[serde(default)]
    pub join_tokens: u64,
    /// Attested agents.
    #[serde(default)]
    pub spiffe_agents: u64,
    /// JWT-SVIDs revoked because their workload exited.
    #[serde(default)]
    pub revoked_svids: u64,
    /// Tokens minted from JWT-SVIDs (revoked with them).
    #[serde(default)]
    pub svid_tokens: u64,
    /// Which agent minted each live JWT-SVID. Absent (0) in files from before it was kept.
    #[serde(default)]
    pub svid_minters: u64,
    /// Links from derived tokens to the tokens they came from. Absent (0) in older files.
    #[serde(default)]
    pub token_parents: u64,
    /// Key-debt entries (wrapped keys sealed). Absent (0) in files from before key debt.
    #[serde(default)]
    pub debt_keys: u64,
    /// Which identities used which legacy key.
    #[serde(default)]
    pub debt_usage: u64,
    /// Access tokens and JWT-SVIDs issued and not yet expired. Absent (0) in older files.
    #[serde(default)]
    pub issued_tokens: u64,
    /// Leases (open, or ended within the last day).
    #[serde(default)]
    pub leases: u64,
    /// Token status lists.
    #[serde(default)]
    pub status_lists: u64,
    /// Webhook deliveries already acted on.
    #[serde(default)]
    pub webhook_deliveries: u64,
    /// Audit events.
    pub audit_events: u64,
    /// The audit chain head (one row).
    pub audit_head: u64,
}

impl TableCounts {
    fn slot(&mut self, t: Table) -> &mut u64 {
        match t {
            Table::SigningKeys => &mut self.signing_keys,
            Table::Clients => &mut self.clients,
            Table::RevokedTokens => &mut self.revoked_tokens,
            Table::UsedJti => &mut self.used_jti,
            Table::SpiffeAuthorities => &mut self.spiffe_authorities,
            Table::SpiffeEntries => &mut self.spiffe_entries,
            Table::JoinTokens => &mut self.join_tokens,
            Table::SpiffeAgents => &mut self.spiffe_agents,
            Table::RevokedSvids => &mut self.revoked_svids,
            Table::SvidTokens => &mut self.svid_tokens,
            Table::SvidMinters => &mut self.svid_minters,
            Table::TokenParents => &mut self.token_parents,
            Table::DebtKeys => &mut self.debt_keys,
            Table::DebtUsage => &mut self.debt_usage,
            Table::IssuedTokens => &mut self.issued_tokens,
            Table::Leases => &mut self.leases,
            Table::StatusLists => &mut self.status_lists,
            Table::WebhookDeliveries => &mut self.webhook_deliveries,
            Table::AuditEvents => &mut self.audit_events,
            Table::AuditHead => &mut self.audit_head,
        }
    }

    fn get(mut self, t: Table) -> u64 {
        *self.slot(t)
    }

    fn describe(&self) -> String {
        Table::ALL
            .iter()
            .map(|t| format!("{} {}", self.get(*t), t.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What [`Store::export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// Rows per table.
    pub counts: TableCounts,
    /// The store's schema version (its newest applied migration).
    pub schema_version: i64,
    /// SHA-256 (hex) of every line before the trailer.
    pub sha256: String,
}

/// What [`Store::import`] loaded.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// Rows per table, as in the file.
    pub counts: TableCounts,
    /// The schema version of the store that was exported.
    pub schema_version: i64,
    /// When it was exported (seconds since the epoch).
    pub exported_at: i64,
    /// The backend it was exported from (`sqlite` or `postgres`).
    pub source: String,
    /// Replay records added on PostgreSQL for single-use values that audit events show were
    /// consumed within the replay window (SQLite keeps those in memory, rebuilt from the log).
    pub replay_records_derived: u64,
}

/// How [`Store::import`] checks and completes what it loads.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// When given, every signing key must open under this master key, or nothing is imported:
    /// a server on the target would otherwise fail to start.
    pub master_key: Option<&'a Kek>,
    /// How long (seconds) a consumed assertion or subject-token jti is remembered: the
    /// server's longest assertion lifetime plus twice the clock skew; 0 derives nothing.
    pub replay_window: i64,
    /// The current time (seconds since the epoch).
    pub now: i64,
}

/// A migration the database records as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version.
    pub version: i64,
    /// What it does (from this mayfly's list; unknown versions come from a newer mayfly).
    pub description: String,
}

/// The tables an export holds, in the order it holds them: every table of the schema but
/// sqlx's own bookkeeping (a test holds this to the live schema on both backends).
pub fn exported_tables() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.name()).collect()
}

fn latest_version(backend: Backend) -> i64 {
    crate::migrator(backend)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// On PostgreSQL, lift the per-statement and idle timeouts for this transaction only: a copy
/// of a large audit log is one long statement, and the file side may be slow.
async fn no_timeouts(backend: Backend, tx: &mut Tx) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        (&mut **tx)
            .execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(db("lift statement timeout"))?;
        (&mut **tx)
            .execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            .await
            .map_err(db("lift idle timeout"))?;
    }
    Ok(())
}

impl Store {
    /// The migrations the database records as applied, oldest first.
    pub async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        use sqlx::migrate::Migrate;
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(db("read applied migrations"))?;
        let applied = conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
        let known = crate::migrator(self.backend());
        Ok(applied
            .into_iter()
            .map(|a| AppliedMigration {
                version: a.version,
                description: known.iter().find(|m| m.version == a.version).map_or_else(
                    || "unknown to this mayfly (applied by a newer one)".to_string(),
                    |m| m.description.to_string(),
                ),
            })
            .collect())
    }

    /// Write every row of the store to `w` as JSON lines, from one consistent snapshot (a
    /// read transaction; REPEATABLE READ on PostgreSQL), so it is safe beside running servers,
    /// though what they write after the snapshot is not in the file. Signing keys are written
    /// sealed, as stored: the file holds no private key in clear. `clock` dates the file.
    pub async fn export(
        &self,
        w: impl Write,
        clock: &dyn mayfly_proto::Clock,
    ) -> Result<ExportSummary, TransferError> {
        let backend = self.backend();
        let schema_version = self
            .applied_migrations()
            .await?
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let mut tx = self.pool().begin().await.map_err(db("begin export"))?;
        if backend == Backend::Postgres {
            (&mut *tx)
                .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(db("begin export snapshot"))?;
        }
        no_timeouts(backend, &mut tx).await?;
        let mut counts = TableCounts::default();
        for t in Table::ALL {
            let sql = format!("SELECT COUNT(*) AS n FROM {}", t.name());
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count rows to export"))?;
            let n: i64 = row.try_get("n").map_err(db("count rows to export"))?;
            *counts.slot(t) = u64::try_from(n).unwrap_or(0);
        }
        let mut out = Out {
            w: BufWriter::new(w),
            hash: Sha256::new(),
            buf: Vec::with_capacity(4096),
        };
        let header = Header {
            mayfly_export: EXPORT_FORMAT,
            schema_version,
            exported_at: clock.now(),
            source: backend_name(backend).into(),
            counts,
        };
        out.line(&header, true)?;
        let mut written = TableCounts::default();
        for t in Table::ALL {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                t.columns().join(", "),
                t.name(),
                t.order_by(backend)
            );
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
            while let Some(r) = rows.try_next().await.map_err(db("read rows to export"))? {
                out.line(&Entry::read(t, &r)?, true)?;
                *written.slot(t) += 1;
            }
        }
        tx.rollback().await.map_err(db("end export"))?;
        if written != counts {
            return Err(TransferError::Counts(format!(
                "counted {}, read {}",
                counts.describe(),
                written.describe()
            )));
        }
        let sha256 = hex(&std::mem::take(&mut out.hash).finish());
        let trailer = Trailer {
            mayfly_export_end: EXPORT_FORMAT,
            counts,
            sha256: sha256.clone(),
        };
        out.line(&trailer, false)?;
        out.w.flush()?;
        Ok(ExportSummary {
            counts,
            schema_version,
            sha256,
        })
    }

    /// Open the import's transaction: no statement timeout, the key-schedule lock (PostgreSQL)
    /// and the audit head's lock taken, and the store checked empty.
    async fn begin_import(&self) -> Result<Tx, TransferError> {
        let backend = self.backend();
        let mut tx = self.pool().begin().await.map_err(db("begin import"))?;
        no_timeouts(backend, &mut tx).await?;
        if backend == Backend::Postgres {
            // The key-schedule lock: a server starting meanwhile plans its keys after this
            // commits, and so finds the imported ones instead of creating its own.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(crate::KEY_LOCK_ID)
                .execute(&mut *tx)
                .await
                .map_err(db("take key lock"))?;
        }
        // Writing the head first takes the write lock (SQLite) or its row lock (PostgreSQL), as
        // the audit committer does: no event can be appended while this runs.
        sqlx::query("UPDATE audit_head SET updated_at = updated_at WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(db("lock audit head"))?;
        check_empty(&mut tx).await?;
        Ok(tx)
    }

    /// Load an export into this store, which must be empty (no row in any table but the audit
    /// head at its start), in one transaction: on any error, the
    /// store is left as it was. The file is read line by line; its header, row counts and
    /// checksum are checked before the transaction commits.
    pub async fn import(
        &self,
        r: impl BufRead,
        o: &ImportOptions<'_>,
    ) -> Result<ImportSummary, TransferError> {
        let backend = self.backend();
        let mut lines = Lines {
            r,
            buf: Vec::with_capacity(4096),
            n: 0,
        };
        let mut hash = Sha256::new();
        let header = {
            let line = lines
                .next()?
                .ok_or_else(|| TransferError::NotAnExport("the file is empty".into()))?;
            hash.update(line);
            parse_header(line)?
        };
        let ours = latest_version(backend);
        if header.schema_version > ours {
            return Err(TransferError::NewerSchema {
                found: header.schema_version,
                ours,
            });
        }

        let mut tx = self.begin_import().await?;

        let mut seen = TableCounts::default();
        let mut batch = Batch {
            rows: Vec::with_capacity(ROWS_PER_INSERT),
            bytes: 0,
        };
        let mut derived = Derived {
            since: o.now - o.replay_window,
            window: if backend == Backend::Postgres {
                o.replay_window
            } else {
                0
            },
            rows: Vec::new(),
            added: 0,
        };
        let trailer = loop {
            let n = lines.n + 1;
            let Some(line) = lines.next()? else {
                return Err(TransferError::Truncated(lines.n));
            };
            let len = line.len();
            let e = match parse_item(line, n)? {
                Item::End(t) => break t,
                Item::Row(e) => e,
            };
            hash.update(line);
            let t = e.table();
            if seen_later(&seen, t) {
                return Err(line_err(
                    n,
                    format!("a {} row out of the tables' order", t.name()),
                ));
            }
            *seen.slot(t) += 1;
            check_sealed_entry(o.master_key, &e, n)?;
            match &e {
                Entry::AuditEvents(ev) => derived.add(ev),
                Entry::AuditHead(h) => {
                    batch.flush(backend, &mut tx).await?;
                    set_head(&mut tx, h, n).await?;
                    continue;
                }
                _ => {}
            }
            if batch.rows.first().is_some_and(|b| b.table() != t)
                || batch.rows.len() >= ROWS_PER_INSERT
                || batch.bytes + len > BATCH_BYTES
            {
                batch.flush(backend, &mut tx).await?;
            }
            batch.rows.push(e);
            batch.bytes += len;
            if derived.rows.len() >= ROWS_PER_INSERT {
                derived.flush(backend, &mut tx).await?;
            }
        };
        if lines.next()?.is_some() {
            return Err(line_err(lines.n, "data after the trailer"));
        }
        if hex(&hash.finish()) != trailer.sha256 {
            return Err(TransferError::Checksum);
        }
        if seen != header.counts || seen != trailer.counts {
            return Err(TransferError::Counts(format!(
                "the file announces {}, and holds {}",
                header.counts.describe(),
                seen.describe()
            )));
        }
        if seen.audit_head != 1 {
            return Err(TransferError::Counts(
                "an export holds exactly one audit_head row".into(),
            ));
        }
        batch.flush(backend, &mut tx).await?;
        derived.flush(backend, &mut tx).await?;
        tx.commit().await.map_err(db("commit import"))?;
        Ok(ImportSummary {
            counts: seen,
            schema_version: header.schema_version,
            exported_at: header.exported_at,
            source: header.source,
            replay_records_derived: derived.added,
        })
    }
}

/// A line after the header: a row of a table, or the trailer.
enum Item {
    Row(Entry),
    End(Trailer),
}

/// Decode one line after the header (line number `n`, for errors). Pure: the import loop and
/// the `export_file` fuzz target share it.
fn parse_item(line: &[u8], n: u64) -> Result<Item, TransferError> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| line_err(n, format!("not JSON: {e}")))?;
    if v.get("table").is_none() {
        if v.get("mayfly_export_end").is_some() {
            return serde_json::from_value::<Trailer>(v)
                .map(Item::End)
                .map_err(|e| line_err(n, format!("malformed trailer: {e}")));
        }
        return Err(line_err(n, "neither a row nor the trailer"));
    }
    serde_json::from_value(v)
        .map(Item::Row)
        .map_err(|e| line_err(n, e.to_string()))
}

/// For the `export_file` fuzz target only: decode an export file's lines as import does
/// (header, then rows or the trailer), without a database. Not a validity check: import also
/// checks the tables' order, the counts, the checksum and every sealed key.
#[doc(hidden)]
pub fn fuzz_decode_export(data: &[u8]) {
    let mut lines = Lines {
        r: data,
        buf: Vec::new(),
        n: 0,
    };
    let Ok(Some(first)) = lines.next() else {
        return;
    };
    if parse_header(first).is_err() {
        return;
    }
    loop {
        let n = lines.n + 1;
        match lines.next() {
            Ok(Some(line)) => {
                if let Ok(Item::End(_)) | Err(_) = parse_item(line, n) {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Whether rows of a table after `t` have been read already.
fn seen_later(seen: &TableCounts, t: Table) -> bool {
    Table::ALL.iter().any(|u| *u > t && seen.get(*u) > 0)
}

async fn check_empty(tx: &mut Tx) -> Result<(), TransferError> {
    // Every table but the head, which always has its one row.
    let counted = &Table::ALL[..Table::ALL.len() - 1];
    let sql = format!(
        "SELECT {}, (SELECT seq FROM audit_head WHERE id = 1) AS head",
        counted
            .iter()
            .map(|t| format!("(SELECT COUNT(*) FROM {0}) AS {0}", t.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut **tx)
        .await
        .map_err(db("check the target is empty"))?;
    let mut held = Vec::new();
    for t in counted {
        let n: i64 = row
            .try_get(t.name())
            .map_err(db("check the target is empty"))?;
        if n > 0 {
            held.push(format!("{n} {}", t.name()));
        }
    }
    let head: Option<i64> = row
        .try_get("head")
        .map_err(db("check the target is empty"))?;
    if head != Some(0) {
        held.push("an audit chain head past its start".into());
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(TransferError::NotEmpty(held.join(", ")))
    }
}

/// Every sealed secret in `e` opens under the master key (checked before anything is written).
fn check_sealed_entry(kek: Option<&Kek>, e: &Entry, n: u64) -> Result<(), TransferError> {
    match e {
        Entry::SigningKeys(k) => check_sealed(kek, &k.kid, &k.kid, &k.sealed_private, n),
        Entry::SpiffeAuthorities(a) => {
            let aad = crate::spiffe::sealed_aad(&a.kind, &a.id);
            check_sealed(kek, &a.id, &aad, &a.sealed_private, n)
        }
        Entry::DebtKeys(d) => match &d.sealed_key {
            Some(sealed) => {
                let aad = crate::debt::sealed_aad(&d.name);
                check_sealed(kek, &d.name, &aad, sealed, n)
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// With a master key, prove it opens a sealed key (the clear key is dropped at once): a signing
/// key (bound to its kid) or a SPIFFE authority (bound to its kind and id).
fn check_sealed(
    kek: Option<&Kek>,
    id: &str,
    aad: &str,
    sealed: &str,
    line: u64,
) -> Result<(), TransferError> {
    let Some(kek) = kek else {
        return Ok(());
    };
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| line_err(line, format!("key {id}: sealed key is not base64")))?;
    kek.open(aad.as_bytes(), &sealed)
        .map(drop)
        .map_err(|_| TransferError::WrongMasterKey(id.to_string()))
}

async fn set_head(tx: &mut Tx, h: &AuditHeadRow, line: u64) -> Result<(), TransferError> {
    let r = sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, updated_at = $3 WHERE id = $4")
        .bind(h.seq)
        .bind(h.hash.as_str())
        .bind(h.updated_at)
        .bind(h.id)
        .execute(&mut **tx)
        .await
        .map_err(db("set audit head"))?;
    if r.rows_affected() != 1 {
        return Err(line_err(
            line,
            format!("no audit_head row with id {}", h.id),
        ));
    }
    Ok(())
}
