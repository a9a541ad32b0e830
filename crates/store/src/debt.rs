//! Key debt: the static keys that still exist. Keys the proxy wraps are sealed under the master
//! key; keys the scanner found are known by fingerprint only. Each has an owner and an expiry
//! date, and the proxy records which workload identities still use it.

use base64::Engine;
use mayfly_crypto::Kek;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::{Store, StoreError, db};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What a sealed key is bound to: its entry's name, so a sealed key cannot be moved to another
/// entry. Also checked by import.
pub(crate) fn sealed_aad(name: &str) -> String {
    format!("debt:{name}")
}

/// One key-debt entry, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebtEntry {
    /// Entry name (also the default route name).
    pub name: String,
    /// Who owns the migration off this key.
    pub owner: String,
    /// When the entry was added (seconds since the epoch).
    pub created_at: i64,
    /// The first second the key may no longer be used.
    pub expires_at: i64,
    /// Proxy routes that use the key.
    pub routes: Vec<String>,
    /// SHA-256 (hex) of the key: how the scanner's findings are matched to entries.
    pub fingerprint: String,
    /// Whether the proxy holds the key (`false`: known by fingerprint only).
    pub wrapped: bool,
    /// Bumped on every rotation, so proxies reload.
    pub key_version: i64,
    /// Last change (rotation, extension).
    pub updated_at: i64,
    /// Why the expiry date was last moved, if it was.
    pub extended_reason: Option<String>,
    /// Where the scanner found the key (for entries made from findings).
    pub found_at: Option<String>,
    /// When the proxy last used the key.
    pub last_used_at: Option<i64>,
}

/// A workload identity that used a key through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebtUsage {
    /// The entry.
    pub name: String,
    /// The token's subject.
    pub identity: String,
    /// First use.
    pub first_used_at: i64,
    /// Last use.
    pub last_used_at: i64,
    /// Calls made.
    pub calls: i64,
}

const COLUMNS: &str = "name, owner, created_at, expires_at, routes, fingerprint, sealed_key IS NOT NULL AS wrapped, key_version, updated_at, extended_reason, found_at, last_used_at";

fn read(r: &sqlx::any::AnyRow) -> Result<DebtEntry, StoreError> {
    let routes: String = r.try_get("routes").map_err(db("read debt entry"))?;
    let wrapped: bool = match r.try_get::<bool, _>("wrapped") {
        Ok(b) => b,
        // SQLite answers the IS NOT NULL with an integer.
        Err(_) => {
            r.try_get::<i64, _>("wrapped")
                .map_err(db("read debt entry"))?
                != 0
        }
    };
    Ok(DebtEntry {
        name: r.try_get("name").map_err(db("read debt entry"))?,
        owner: r.try_get("owner").map_err(db("read debt entry"))?,
        created_at: r.try_get("created_at").map_err(db("read debt entry"))?,
        expires_at: r.try_get("expires_at").map_err(db("read debt entry"))?,
        routes: serde_json::from_str(&routes)
            .map_err(|_| StoreError::Corrupt("debt routes are not a JSON list".into()))?,
        fingerprint: r.try_get("fingerprint").map_err(db("read debt entry"))?,
        wrapped,
        key_version: r.try_get("key_version").map_err(db("read debt entry"))?,
        updated_at: r.try_get("updated_at").map_err(db("read debt entry"))?,
        extended_reason: r
            .try_get("extended_reason")
            .map_err(db("read debt entry"))?,
        found_at: r.try_get("found_at").map_err(db("read debt entry"))?,
        last_used_at: r.try_get("last_used_at").map_err(db("read debt entry"))?,
    })
}

impl Store {
    /// Add an entry: with `key`, sealed under the master key (a wrapped key); without, known by
    /// `e.fingerprint` only. `false` if the name is taken. `e.wrapped` and `e.key_version` are
    /// ignored (set from `key`, and 1).
    pub async fn add_debt(
        &self,
        e: &DebtEntry,
        key: Option<&[u8]>,
        kek: &Kek,
    ) -> Result<bool, StoreError> {
        let sealed = key
            .map(|k| kek.seal(sealed_aad(&e.name).as_bytes(), k))
            .transpose()?
            .map(|s| b64().encode(s));
        let routes =
            serde_json::to_string(&e.routes).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let r = sqlx::query("INSERT INTO debt_keys (name, owner, created_at, expires_at, routes, fingerprint, sealed_key, key_version, updated_at, extended_reason, found_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, NULL, $9, NULL) ON CONFLICT DO NOTHING")
            .bind(&e.name).bind(&e.owner).bind(e.created_at).bind(e.expires_at).bind(routes)
            .bind(&e.fingerprint).bind(sealed).bind(e.created_at).bind(e.found_at.clone())
            .execute(self.pool()).await.map_err(db("add debt entry"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Every entry, soonest expiry first.
    pub async fn list_debt(&self) -> Result<Vec<DebtEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys ORDER BY expires_at, name"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(db("list debt"))?;
        rows.iter().map(read).collect()
    }

    /// One entry.
    pub async fn get_debt(&self, name: &str) -> Result<Option<DebtEntry>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up debt entry"))?;
        row.as_ref().map(read).transpose()
    }

    /// Entries whose key has this fingerprint (a scanner finding already on the list).
    pub async fn debt_by_fingerprint(&self, fp: &str) -> Result<Vec<DebtEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys WHERE fingerprint = $1 ORDER BY name"
        )))
        .bind(fp)
        .fetch_all(self.pool())
        .await
        .map_err(db("look up debt by fingerprint"))?;
        rows.iter().map(read).collect()
    }

    /// A wrapped key, opened: for the proxy. `None` if there is no such entry or it holds no
    /// key.
    pub async fn open_debt_key(
        &self,
        name: &str,
        kek: &Kek,
    ) -> Result<Option<(DebtEntry, Zeroizing<Vec<u8>>)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, sealed_key FROM debt_keys WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up debt key"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let e = read(&row)?;
        let sealed: Option<String> = row.try_get("sealed_key").map_err(db("read debt key"))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let sealed = b64()
            .decode(sealed)
            .map_err(|_| StoreError::Corrupt(format!("debt {name}: sealed key is not base64")))?;
        let key = kek.open(sealed_aad(name).as_bytes(), &sealed)?;
        Ok(Some((e, key)))
    }

    /// Replace a wrapped key (also wraps a fingerprint-only entry); bumps its version so that
    /// running proxies load the new one. `false` if there is no such entry.
    pub async fn rotate_debt_key(
        &self,
        name: &str,
        key: &[u8],
        fingerprint: &str,
        now: i64,
        kek: &Kek,
    ) -> Result<bool, StoreError> {
        let sealed = b64().encode(kek.seal(sealed_aad(name).as_bytes(), key)?);
        let r = sqlx::query("UPDATE debt_keys SET sealed_key = $1, fingerprint = $2, key_version = key_version + 1, updated_at = $3 WHERE name = $4")
            .bind(sealed).bind(fingerprint).bind(now).bind(name)
            .execute(self.pool()).await.map_err(db("rotate debt key"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Move an entry's expiry (the reason is kept and audited by the caller). `false` if there
    /// is no such entry.
    pub async fn extend_debt(
        &self,
        name: &str,
        expires_at: i64,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE debt_keys SET expires_at = $1, extended_reason = $2, updated_at = $3, key_version = key_version + 1 WHERE name = $4")
            .bind(expires_at).bind(reason).bind(now).bind(name)
            .execute(self.pool()).await.map_err(db("extend debt entry"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Set the routes that use an entry's key.
    pub async fn set_debt_routes(&self, name: &str, routes: &[String]) -> Result<bool, StoreError> {
        let routes =
            serde_json::to_string(routes).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let r = sqlx::query("UPDATE debt_keys SET routes = $1 WHERE name = $2")
            .bind(routes)
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(db("set debt routes"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Remove an entry (the key is paid off) and its usage records.
    pub async fn remove_debt(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await.map_err(db("begin"))?;
        sqlx::query("DELETE FROM debt_usage WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("remove debt usage"))?;
        let r = sqlx::query("DELETE FROM debt_keys WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("remove debt entry"))?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Record uses aggregated by the proxy since its last flush: per (entry, identity), the
    /// first and last time and the number of calls.
    pub async fn record_debt_usage(&self, uses: &[DebtUsage]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await.map_err(db("begin"))?;
        for u in uses {
            let r = sqlx::query("UPDATE debt_usage SET last_used_at = CASE WHEN last_used_at > $1 THEN last_used_at ELSE $1 END, calls = calls + $2 WHERE name = $3 AND identity = $4")
                .bind(u.last_used_at).bind(u.calls).bind(&u.name).bind(&u.identity)
                .execute(&mut *tx).await.map_err(db("record debt usage"))?;
            if r.rows_affected() == 0 {
                sqlx::query("INSERT INTO debt_usage (name, identity, first_used_at, last_used_at, calls) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
                    .bind(&u.name).bind(&u.identity).bind(u.first_used_at).bind(u.last_used_at).bind(u.calls)
                    .execute(&mut *tx).await.map_err(db("record debt usage"))?;
            }
            sqlx::query("UPDATE debt_keys SET last_used_at = $1 WHERE name = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(u.last_used_at).bind(&u.name)
                .execute(&mut *tx).await.map_err(db("record debt usage"))?;
        }
        tx.commit().await.map_err(db("commit debt usage"))?;
        Ok(())
    }

    /// The identities that used an entry's key, most recent first.
    pub async fn debt_usage(&self, name: &str) -> Result<Vec<DebtUsage>, StoreError> {
        let rows = sqlx::query("SELECT name, identity, first_used_at, last_used_at, calls FROM debt_usage WHERE name = $1 ORDER BY last_used_at DESC, identity")
            .bind(name)
            .fetch_all(self.pool())
            .await
            .map_err(db("read debt usage"))?;
        rows.iter().map(usage_row).collect()
    }

    /// Every entry's usage in one query (for the inventory), by entry name; each list most
    /// recent first.
    pub async fn all_debt_usage(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<DebtUsage>>, StoreError> {
        let rows = sqlx::query("SELECT name, identity, first_used_at, last_used_at, calls FROM debt_usage ORDER BY name, last_used_at DESC, identity")
            .fetch_all(self.pool())
            .await
            .map_err(db("read debt usage"))?;
        let mut by_name: std::collections::HashMap<String, Vec<DebtUsage>> =
            std::collections::HashMap::new();
        for r in &rows {
            let u = usage_row(r)?;
            by_name.entry(u.name.clone()).or_default().push(u);
        }
        Ok(by_name)
    }
}

fn usage_row(r: &sqlx::any::AnyRow) -> Result<DebtUsage, StoreError> {
    Ok(DebtUsage {
        name: r.try_get("name").map_err(db("read debt usage"))?,
        identity: r.try_get("identity").map_err(db("read debt usage"))?,
        first_used_at: r.try_get("first_used_at").map_err(db("read debt usage"))?,
        last_used_at: r.try_get("last_used_at").map_err(db("read debt usage"))?,
        calls: r.try_get("calls").map_err(db("read debt usage"))?,
    })
}
