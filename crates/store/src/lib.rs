//! Storage for mayfly on SQLite (embedded default, WAL) or PostgreSQL, through one portable
//! schema and sqlx's `Any` driver: signing keys (encrypted), the replay cache, revocations,
//! run-time clients, the hash-chained audit log with group commit, and the lifecycle of issued
//! credentials (their registry, leases, status-list slots and revoked bits).
//!
//! Not here: deciding anything. The engine decides; this crate remembers.
#![forbid(unsafe_code)]

mod anchor;
mod audit;
mod clients;
mod debt;
mod keys;
mod lifecycle;
mod revocation;
mod spiffe;
mod transfer;

pub use anchor::{ANCHOR_EVERY_EVENTS, ANCHOR_INTERVAL, Anchor};
pub use audit::{
    AuditLog, AuditSink, ChainReport, CommitOutcome, Pending, StoredEvent, TamperKind,
};
pub use clients::StoredClient;
pub use debt::{
    DAY, DebtEntry, DebtInputError, DebtUsage, check_entry_name, days_left, end_of_day,
    key_fingerprint, last_day, parse_fingerprint, short_fingerprint, utc_date,
};
pub use keys::StoredKey;
pub use lifecycle::{
    CiRun, CiSelector, Lease, LeaseEnd, LeaseKind, LeaseLink, LeaseRenewal, NewLease,
    RevokeSelector, StatusBlock, StatusSlot,
};
pub use revocation::IssuedToken;
pub use spiffe::{
    AuthorityKind, JoinTokenOutcome, OwnRevocation, StoredAgent, StoredAuthority, StoredEntry,
};
pub use transfer::{
    AppliedMigration, EXPORT_FORMAT, ExportSummary, ImportOptions, ImportSummary, MAX_LINE,
    TableCounts, TransferError, exported_tables, fuzz_decode_export,
};

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor, SqlSafeStr};

/// Storage failures. Messages name the operation; they never contain secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("database error during {op}: {source}")]
    Db {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data is not what we wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A crypto operation failed (wrong master key, usually).
    #[error("{0}")]
    Crypto(#[from] mayfly_crypto::CryptoError),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?} during {1}")]
    Timeout(std::time::Duration, &'static str),
    /// The audit committer has stopped.
    #[error("the audit log writer has stopped")]
    AuditClosed,
    /// The request cannot be carried out as asked (an empty revocation selector, a status
    /// block larger than a list).
    #[error("invalid store request: {0}")]
    Invalid(&'static str),
    /// Writing the audit JSON lines failed.
    #[error("cannot write audit output: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A connection pool to the store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// How to open more connections: the URL (it may hold a password; never printed).
    url: std::sync::Arc<str>,
    options: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.backend)
    }
}

/// The migrations for `backend`. A version may differ between backends where one of them
/// gains from a layout the other cannot express; a database only ever sees one backend's set.
fn migrator(backend: Backend) -> Migrator {
    let m = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_string().into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        m(1, "init", include_str!("../migrations/0001_init.sql")),
        match backend {
            Backend::Sqlite => m(
                2,
                "sqlite audit rowid",
                include_str!("../migrations/0002_sqlite_audit_rowid.sql"),
            ),
            Backend::Postgres => m(
                2,
                "postgres noop",
                include_str!("../migrations/0002_postgres_noop.sql"),
            ),
        },
        m(3, "spiffe", include_str!("../migrations/0003_spiffe.sql")),
        m(4, "key debt", include_str!("../migrations/0004_debt.sql")),
        m(
            5,
            "JWT-SVID minters",
            include_str!("../migrations/0005_svid_minters.sql"),
        ),
        m(
            6,
            "token parents",
            include_str!("../migrations/0006_token_parents.sql"),
        ),
        m(
            7,
            "lifecycle",
            include_str!("../migrations/0007_lifecycle.sql"),
        ),
    ])
}

/// Pool and timeout settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections in the pool (`None`: 4 on SQLite, 16 on PostgreSQL).
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before failing (fail closed, fast).
    pub acquire_timeout: std::time::Duration,
    /// PostgreSQL `statement_timeout`: the server cancels a statement running longer.
    pub statement_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: std::time::Duration::from_secs(3),
            statement_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Held while the signing-key schedule is planned and applied: on PostgreSQL a transaction
/// holding an advisory lock, so that of several replicas exactly one rotates and the others see
/// its result. Dropping it releases the lock too.
#[must_use = "the lock is released when this is dropped"]
pub struct KeyLock(Option<sqlx::Transaction<'static, sqlx::Any>>);

impl KeyLock {
    /// Release the lock.
    pub async fn release(self) -> Result<(), StoreError> {
        if let Some(tx) = self.0 {
            tx.commit().await.map_err(db("release key lock"))?;
        }
        Ok(())
    }
}

/// A pool on `url` with the session settings every connection needs.
async fn connect(
    url: &str,
    backend: Backend,
    o: &StoreOptions,
    max: Option<u32>,
) -> Result<AnyPool, StoreError> {
    let opts = AnyConnectOptions::from_str(url).map_err(db("parse database URL"))?;
    // SQL text is never logged by the driver at info: it carries no secrets, but it is noise.
    let opts = opts.log_statements(tracing::log::LevelFilter::Trace);
    let statement_ms = o.statement_timeout.as_millis().max(1);
    AnyPoolOptions::new()
        .max_connections(max.or(o.max_connections).unwrap_or(match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        }))
        .acquire_timeout(o.acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        // FULL: a committed audit event survives power loss, not only a crash.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;").await?;
                    }
                    Backend::Postgres => {
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SET statement_timeout = {statement_ms}; SET idle_in_transaction_session_timeout = {}",
                            statement_ms * 4
                        )))
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(db("connect"))
}

/// The advisory lock id of the key schedule ("mayflyks" in ASCII).
const KEY_LOCK_ID: i64 = 0x6d61_7966_6c79_6b73;

impl Store {
    /// Open the SQLite database at `path` (created if missing), in WAL mode with full sync.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(&url).await
    }

    /// Open a store by URL (`sqlite://PATH?mode=rwc` or `postgres://...`) with default
    /// settings, and migrate it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// Open a store by URL and migrate it. On PostgreSQL, migrations run under sqlx's advisory
    /// lock, so replicas starting together apply them once; TLS comes from the URL
    /// (`?sslmode=verify-full&sslrootcert=/path/ca.pem`).
    pub async fn open_with(url: &str, o: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let pool = connect(url, backend, o, None).await?;
        migrator(backend).run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            url: url.into(),
            options: o.clone(),
        })
    }

    /// The same database through a pool of its own with one connection (no migrations): for a
    /// task that must not queue behind request handlers for a connection, such as the audit
    /// committer on its own thread.
    pub async fn dedicated(&self) -> Result<Store, StoreError> {
        let pool = connect(&self.url, self.backend, &self.options, Some(1)).await?;
        Ok(Self {
            pool,
            ..self.clone()
        })
    }

    /// Take the key-schedule lock (PostgreSQL; SQLite serialises its writers by itself).
    pub async fn key_lock(&self) -> Result<KeyLock, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(KeyLock(None));
        }
        let mut tx = self.pool.begin().await.map_err(db("take key lock"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(KEY_LOCK_ID)
            .execute(&mut *tx)
            .await
            .map_err(db("take key lock"))?;
        Ok(KeyLock(Some(tx)))
    }

    /// The backend kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Delete replay records, revocations and lifecycle records (issued-token registry,
    /// webhook deliveries, long-ended leases, spent status lists) that have expired.
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM used_jti WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db("purge jti"))?;
        let b = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db("purge revocations"))?;
        let c = sqlx::query("DELETE FROM token_parents WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db("purge token links"))?;
        let d = self.purge_lifecycle(now).await?;
        Ok(a.rows_affected() + b.rows_affected() + c.rows_affected() + d)
    }

    /// Whether the token `jti` has been revoked.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("revocation lookup"))?;
        Ok(row.is_some())
    }

    /// The pool, for the audit committer.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}
