//! Revocation of derived tokens: a token minted from another of ours (narrowed, or exchanged
//! with one of ours as subject or actor) is linked to it, and revoking a token revokes every
//! token derived from it, at any depth.
//!
//! Links and revocations are written under the audit head lock (the audit committer's batch
//! transaction, or [`crate::Store::revoke_svids`], which takes it first), so a child recorded
//! while its parent is being revoked is either seen by the revocation's walk, or sees the
//! parent revoked when it is linked and is revoked at once.

use sqlx::Row;

use crate::{StoreError, db};

/// Revoke `jti` (client `client`, expiring at `exp`) and every token derived from it. Returns
/// the jtis newly revoked, the root first when it was not revoked before.
pub(crate) async fn revoke_tree(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jti: &str,
    client: &str,
    exp: i64,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut revoked = Vec::new();
    let root = sqlx::query("INSERT INTO revoked_tokens (jti, client_id, revoked_at, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(jti).bind(client).bind(now).bind(exp)
        .execute(&mut **tx).await.map_err(db("revoke token"))?;
    if root.rows_affected() > 0 {
        revoked.push(jti.to_string());
    }
    revoked.extend(revoke_descendants(tx, jti, now).await?);
    Ok(revoked)
}

/// Revoke every token derived from `jti` (not `jti` itself); returns the jtis newly revoked.
pub(crate) async fn revoke_descendants(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jti: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    // One statement on both backends: the recursive walk runs in the database. UNION (not
    // UNION ALL) visits a token reached through two parents (subject and actor) once.
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
    let rows = sqlx::query(
        "WITH RECURSIVE d(jti, client_id, expires_at) AS (\
            SELECT child_jti, client_id, expires_at FROM token_parents WHERE parent_jti = $1 \
            UNION \
            SELECT p.child_jti, p.client_id, p.expires_at FROM token_parents p JOIN d ON p.parent_jti = d.jti\
         ) \
         INSERT INTO revoked_tokens (jti, client_id, revoked_at, expires_at) \
         SELECT jti, client_id, $2, expires_at FROM d WHERE true \
         ON CONFLICT DO NOTHING RETURNING jti",
    )
    .bind(jti)
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("revoke derived tokens"))?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>("jti")
                .map_err(db("revoke derived tokens"))
        })
        .collect()
}

/// Record that `child` (client `client`, expiring at `exp`) was derived from each of `parents`;
/// if any parent is already revoked, revoke the child at once.
pub(crate) async fn link_parents(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    parents: &[String],
    child: &str,
    client: &str,
    exp: i64,
    now: i64,
) -> Result<(), StoreError> {
    let mut parent_revoked = false;
    for parent in parents {
        sqlx::query("INSERT INTO token_parents (parent_jti, child_jti, client_id, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(parent).bind(child).bind(client).bind(exp)
            .execute(&mut **tx).await.map_err(db("link derived token"))?;
        if !parent_revoked {
            parent_revoked = sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
                .bind(parent)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db("revocation lookup"))?
                .is_some();
        }
    }
    if parent_revoked {
        revoke_tree(tx, child, client, exp, now).await?;
    }
    Ok(())
}

/// A token this deployment issued, as its audit event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// Its `client_id` as audited (the authenticated client), or its identity when no client
    /// authenticated.
    pub owner: String,
    /// Its `exp`.
    pub exp: i64,
}

impl crate::Store {
    /// The token with `jti` as its issue event recorded it, if this deployment issued it (for
    /// an operator's revocation by jti). Scans the log: an operator tool, not a request path.
    pub async fn issued_token(&self, jti: &str) -> Result<Option<IssuedToken>, StoreError> {
        let row = sqlx::query(
            "SELECT body FROM audit_events WHERE jti = $1 AND kind = 'issue' ORDER BY seq DESC LIMIT 1",
        )
        .bind(jti)
        .fetch_optional(self.pool())
        .await
        .map_err(db("find issued token"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let body: String = row.try_get("body").map_err(db("find issued token"))?;
        let e: mayfly_proto::AuditEvent =
            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(e.exp.map(|exp| IssuedToken {
            owner: e.client.or(e.identity).unwrap_or_else(|| "-".into()),
            exp,
        }))
    }
}

/// A value bound into a filter built at run time.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// Revoke every live credential of the registry (`issued_tokens`, alias `i`) that `filter`
/// selects, and everything derived from them: a JWT-SVID is revoked with the tokens minted
/// from it, a token with every token derived from it (as [`revoke_tree`] does, for many roots
/// in one statement). `filter` is SQL over `i` with `$2`, `$3`... bound to `args` in order
/// (`$1` is `now`). Returns the jtis newly revoked (JWT-SVIDs first).
pub(crate) async fn revoke_issued(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    filter: &str,
    args: &[Arg],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let bind = |sql: String| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(n) => q.bind(*n),
            };
        }
        q
    };
    let live = format!("i.expires_at > $1 AND ({filter})");
    let svids = bind(format!(
        "INSERT INTO revoked_svids (jti, revoked_at, expires_at) \
         SELECT i.jti, $1, i.expires_at FROM issued_tokens i WHERE i.kind = 'svid' AND {live} \
         ON CONFLICT DO NOTHING RETURNING jti"
    ))
    .fetch_all(&mut **tx)
    .await
    .map_err(db("revoke selected JWT-SVIDs"))?;
    // One walk from every root: selected tokens, and tokens minted from selected JWT-SVIDs
    // (revoked or not before: a JWT-SVID revoked earlier has had its tokens revoked then, and
    // ON CONFLICT skips them). UNION visits a token reached twice once.
    let tokens = bind(format!(
        "WITH RECURSIVE d(jti, client_id, expires_at) AS (\
            SELECT i.jti, i.client_id, i.expires_at FROM issued_tokens i \
            WHERE i.kind = 'token' AND {live} \
            UNION \
            SELECT t.token_jti, t.client_id, t.expires_at FROM svid_tokens t \
            JOIN issued_tokens i ON i.jti = t.svid_jti WHERE i.kind = 'svid' AND {live} \
            UNION \
            SELECT p.child_jti, p.client_id, p.expires_at FROM token_parents p \
            JOIN d ON p.parent_jti = d.jti\
         ) \
         INSERT INTO revoked_tokens (jti, client_id, revoked_at, expires_at) \
         SELECT jti, client_id, $1, expires_at FROM d WHERE true \
         ON CONFLICT DO NOTHING RETURNING jti"
    ))
    .fetch_all(&mut **tx)
    .await
    .map_err(db("revoke selected tokens"))?;
    svids
        .iter()
        .chain(&tokens)
        .map(|r| r.try_get::<String, _>("jti").map_err(db("revoke selected")))
        .collect()
}
