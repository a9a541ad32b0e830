//! The registry of issued tokens, written with their issue events: one `issued_tokens` row
//! per access token (its client, identity, issuer, lease and status slot), the lease a token
//! opens, and the token's revocation at once when its lease has already ended.

use std::collections::BTreeMap;

use mayfly_proto::EventKind;
use sqlx::Row;

use crate::{Backend, LeaseLink, StoreError, db};

use super::Pending;
use super::sql::{statement_chunks, values_sql};

/// The insert of registry rows, up to its `VALUES` list; [`bind_issued`] binds a row's columns
/// in this order.
pub(super) const INSERT_ISSUED: &str = "INSERT INTO issued_tokens (jti, kind, client_id, \
    identity, issuer, lease_id, list_id, idx, issued_at, expires_at)";
pub(super) const ISSUED_COLUMNS: usize = 10;

/// One registry row of an access token.
#[derive(Debug, Clone)]
pub(super) struct IssuedRow {
    pub(super) jti: String,
    pub(super) client: String,
    pub(super) identity: String,
    pub(super) issuer: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) list: Option<i64>,
    pub(super) idx: Option<i64>,
    pub(super) issued_at: i64,
    pub(super) expires_at: i64,
}

/// The registry row of `p`, if it issued a token (an `issue` event with a jti and an exp; a
/// replayed request's event has become a denial without them).
pub(super) fn issued_row(p: &Pending) -> Option<IssuedRow> {
    let e = &p.event;
    if e.kind != EventKind::Issue {
        return None;
    }
    let (jti, exp) = (e.jti.as_ref()?, e.exp?);
    let client = e.client.clone().unwrap_or_else(|| "-".into());
    Some(IssuedRow {
        jti: jti.clone(),
        identity: e.identity.clone().unwrap_or_else(|| client.clone()),
        client,
        issuer: e.subject_issuer.clone(),
        lease: p.lease.as_ref().map(|l| l.id().to_string()),
        list: p.status.map(|s| s.list),
        idx: p.status.map(|s| s.idx),
        issued_at: e.ts,
        expires_at: exp,
    })
}

/// Bind registry rows' columns (or NULLs for `None`, padding a fixed-size statement).
pub(super) fn bind_issued<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    rows: impl Iterator<Item = Option<IssuedRow>>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for r in rows {
        q = match r {
            Some(r) => q
                .bind(r.jti)
                .bind("token")
                .bind(r.client)
                .bind(r.identity)
                .bind(r.issuer)
                .bind(r.lease)
                .bind(r.list)
                .bind(r.idx)
                .bind(r.issued_at)
                .bind(r.expires_at),
            None => {
                for _ in 0..ISSUED_COLUMNS {
                    q = q.bind(None::<String>);
                }
                q
            }
        };
    }
    q
}

/// The latest exp per status list of `rows` (each list's `last_exp` must reach it).
pub(super) fn list_exps<'a>(rows: impl Iterator<Item = &'a IssuedRow>) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for r in rows {
        if let Some(list) = r.list {
            let e = out.entry(list).or_insert(r.expires_at);
            *e = (*e).max(r.expires_at);
        }
    }
    out
}

/// The general path's share: open the batch's new leases, write the registry rows, keep the
/// lists' `last_exp`, and revoke at once every token recorded under a lease that has ended (or
/// that does not exist: it was purged long after it ended). Runs under the audit head lock,
/// which every lease end takes too.
pub(super) async fn record_issued(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    items: &[&Pending],
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for p in items {
        // Only a token actually issued opens its lease.
        let Some(row) = issued_row(p) else { continue };
        if let Some(LeaseLink::Open(l)) = &p.lease {
            open_lease(tx, l, p.event.ts).await?;
        }
        rows.push(row);
    }
    for chunk in statement_chunks(&rows) {
        let sql = values_sql(
            backend,
            &format!("{INSERT_ISSUED} VALUES"),
            ISSUED_COLUMNS,
            chunk.len(),
            " ON CONFLICT DO NOTHING",
        );
        bind_issued(
            sqlx::query(sqlx::AssertSqlSafe(sql)),
            chunk.iter().cloned().map(Some),
        )
        .execute(&mut **tx)
        .await
        .map_err(db("record issued tokens"))?;
    }
    for (list, exp) in list_exps(rows.iter()) {
        crate::lifecycle::bump_last_exp(tx, list, exp).await?;
    }
    for r in &rows {
        let Some(lease) = &r.lease else { continue };
        let row = sqlx::query("SELECT ended_at FROM leases WHERE id = $1")
            .bind(lease)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("look up lease"))?;
        let ended = match row {
            Some(row) => row
                .try_get::<Option<i64>, _>("ended_at")
                .map_err(db("read lease"))?
                .is_some(),
            None => true,
        };
        if ended {
            crate::revocation::revoke_tree(tx, &r.jti, &r.client, r.expires_at, r.issued_at)
                .await?;
        }
    }
    Ok(())
}

/// Open lease `l` at `now`; an existing lease of that id (a CI job's, opened by an earlier
/// token of the job) is left as it is.
async fn open_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    l: &crate::NewLease,
    now: i64,
) -> Result<(), StoreError> {
    let ci = l.ci.as_ref();
    sqlx::query(
        "INSERT INTO leases (id, kind, owner, client_id, grace, heartbeat_at, created_at, \
         expires_at, ended_at, end_reason, ci_provider, ci_project, ci_run, ci_attempt, ci_job) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, NULL, NULL, $8, $9, $10, $11, $12) \
         ON CONFLICT DO NOTHING",
    )
    .bind(l.id.as_str())
    .bind(l.kind.as_str())
    .bind(l.owner.as_str())
    .bind(l.client_id.as_str())
    .bind(l.grace)
    .bind(now)
    .bind(l.expires_at)
    .bind(ci.map(|c| c.provider.clone()))
    .bind(ci.map(|c| c.project.clone()))
    .bind(ci.map(|c| c.run.clone()))
    .bind(ci.and_then(|c| c.attempt.clone()))
    .bind(ci.and_then(|c| c.job.clone()))
    .execute(&mut **tx)
    .await
    .map_err(db("open lease"))?;
    Ok(())
}
