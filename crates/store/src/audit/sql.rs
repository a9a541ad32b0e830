//! The statements that append a batch: SQLite's one-round-trip fast path and the general path
//! under the head lock, with statement shapes kept few for the drivers' caches.

use mayfly_crypto::Kek;
use sqlx::Row;

use crate::{Backend, StoreError, db};

use super::chain::{Chained, EventRow, chain};
use super::issued::{INSERT_ISSUED, ISSUED_COLUMNS, IssuedRow, bind_issued, issued_row};
use super::replay::{
    ReplayGuard, consume_jtis, local_used, note_single_use, persist_subjects, remember,
};
use super::{CommitOutcome, Pending};

/// Rows per multi-row INSERT at most (a power of two): well under SQLite's and PostgreSQL's
/// bind-parameter limits.
pub(super) const ROWS_PER_INSERT: usize = 64;

/// Split rows into chunks whose sizes are powers of two up to [`ROWS_PER_INSERT`]: each table
/// then has at most seven statement shapes, which stay in the driver's prepared-statement cache.
/// (One shape per batch size thrashed that cache on PostgreSQL: every batch re-prepared and
/// re-described a statement with hundreds of parameters.)
pub(super) fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(ROWS_PER_INSERT);
        let size = 1usize << (usize::BITS - 1 - n.leading_zeros());
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

/// `PREFIX ($1, $2, ...), (...) SUFFIX` for `rows` rows of `cols` columns. SQLite gets
/// anonymous `?` placeholders instead: it looks up named ones by a linear scan per bind, which
/// made a full batch's binding quadratic.
pub(super) fn values_sql(
    backend: Backend,
    prefix: &str,
    cols: usize,
    rows: usize,
    suffix: &str,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(prefix.len() + suffix.len() + rows * cols * 6);
    s.push_str(prefix);
    let mut n = 0;
    for r in 0..rows {
        s.push_str(if r == 0 { " (" } else { ", (" });
        for c in 0..cols {
            n += 1;
            let sep = if c == 0 { "" } else { ", " };
            let _ = match backend {
                Backend::Sqlite => write!(s, "{sep}?"),
                Backend::Postgres => write!(s, "{sep}${n}"),
            };
        }
        s.push(')');
    }
    s.push_str(suffix);
    s
}

/// Record that `token` came from the JWT-SVID `svid`; revoke it at once if that JWT-SVID is
/// already revoked. Revocation ([`Store::revoke_svids`]) takes the audit head lock first, so
/// the two never interleave: either the link is seen by the revocation or the revocation by it.
pub(super) async fn link_svid_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    svid: &str,
    token: &str,
    client: &str,
    exp: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO svid_tokens (svid_jti, token_jti, client_id, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(svid).bind(token).bind(client).bind(exp)
        .execute(&mut **tx).await.map_err(db("link token to JWT-SVID"))?;
    let revoked = sqlx::query("SELECT 1 FROM revoked_svids WHERE jti = $1")
        .bind(svid)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("JWT-SVID revocation lookup"))?;
    if revoked.is_some() {
        sqlx::query("INSERT INTO revoked_tokens (jti, client_id, revoked_at, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(token).bind(client).bind(now).bind(exp)
            .execute(&mut **tx).await.map_err(db("revoke token"))?;
    }
    Ok(())
}

/// The SQL of a SQLite batch in one round trip to the driver's thread: the head advances only
/// if it is still what this committer last wrote (`seq`, `hash`), and each insert only if the
/// head now holds this batch's last hash (a sequence number alone could match a head that
/// another writer advanced by as many events). A head moved by another writer therefore
/// writes nothing, and the caller falls back to the general path, which reads the head under
/// its lock.
///
/// With `registry`, each chunk of events is followed by the registry rows of the tokens they
/// issued (a statement of the same size, a NULL row for an event that issued none), and one
/// UPDATE keeps the batch's status list's `last_exp`: two shapes per batch size, not more.
pub(super) fn sqlite_batch_sql(rows: &[EventRow], registry: bool) -> String {
    let mut s = String::from(
        "BEGIN IMMEDIATE; UPDATE audit_head SET seq = ?, hash = ?, updated_at = ? \
         WHERE id = 1 AND seq = ? AND hash = ? RETURNING seq;",
    );
    for (_, size) in padded_chunks(rows) {
        s.push(' ');
        s.push_str(&values_sql(
            Backend::Sqlite,
            &format!("{INSERT_EVENTS} SELECT * FROM (VALUES"),
            EVENT_COLUMNS,
            size,
            // column1 is `seq`: padding rows are all NULL and are left out.
            ") WHERE column1 IS NOT NULL AND (SELECT hash FROM audit_head WHERE id = 1) = ?;",
        ));
        if registry {
            s.push(' ');
            s.push_str(&values_sql(
                Backend::Sqlite,
                &format!("{INSERT_ISSUED} SELECT * FROM (VALUES"),
                ISSUED_COLUMNS,
                size,
                ") WHERE column1 IS NOT NULL AND (SELECT hash FROM audit_head WHERE id = 1) = ? \
                 ON CONFLICT DO NOTHING;",
            ));
        }
    }
    if registry {
        s.push_str(
            " UPDATE status_lists SET last_exp = ? WHERE id = ? AND last_exp < ? \
             AND (SELECT hash FROM audit_head WHERE id = 1) = ?;",
        );
    }
    s.push_str(" COMMIT;");
    s
}

/// The one-round-trip batch string is cached by the driver as a whole, so its shape must not
/// follow the batch size (up to [`MAX_BATCH`](super::committer::MAX_BATCH) shapes thrashed the
/// statement cache and every batch was parsed again). Rows therefore go in statements of a few
/// fixed sizes, the last one padded with NULL rows: a batch of up to [`ROWS_PER_INSERT`] in one
/// statement of the next power of two, a larger one in full statements of [`ROWS_PER_INSERT`].
/// Yields (rows, size).
pub(super) fn padded_chunks<T>(rows: &[T]) -> impl Iterator<Item = (&[T], usize)> {
    let size = if rows.len() <= ROWS_PER_INSERT {
        rows.len().next_power_of_two()
    } else {
        ROWS_PER_INSERT
    };
    rows.chunks(size.max(1)).map(move |c| (c, size))
}

/// The insert of audit events, up to its `VALUES` list; [`bind_events`] binds a row's columns
/// in this order.
pub(super) const INSERT_EVENTS: &str =
    "INSERT INTO audit_events (seq, ts, kind, jti, body, prev_hash, hash)";
pub(super) const EVENT_COLUMNS: usize = 7;

/// Bind rows' columns, moving their strings in: the driver keeps an owned string as it is,
/// where a borrowed one would be copied (and allocated) once more per column.
pub(super) fn bind_events<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    rows: impl Iterator<Item = EventRow>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for r in rows {
        q = q
            .bind(r.seq)
            .bind(r.ts)
            .bind(r.kind)
            .bind(r.jti)
            .bind(r.body)
            .bind(r.prev_hash)
            .bind(r.hash);
    }
    q
}

/// The registry rows of a fast-path batch, one per event (`None`: it issued no token), and the
/// batch's one status list with the latest exp in it.
pub(super) struct FastRegistry {
    pub(super) rows: Vec<Option<IssuedRow>>,
    pub(super) list_exp: Option<(i64, i64)>,
}

/// SQLite's fast path: one statement string, one round trip, one fsync. `Ok(false)`: the head
/// was not where this committer left it, nothing was written.
pub(super) async fn append_sqlite_fast(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    c: &mut Chained,
    registry: Option<FastRegistry>,
    head: &(i64, String),
    now: i64,
) -> Result<bool, StoreError> {
    let sql = sqlite_batch_sql(&c.rows, registry.is_some());
    let shapes: Vec<(usize, usize)> = padded_chunks(&c.rows)
        .map(|(chunk, size)| (chunk.len(), size))
        .collect();
    // The rows are not needed once bound: a head that moved means chaining again anyway.
    let mut rows = std::mem::take(&mut c.rows).into_iter();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(c.seq)
        .bind(c.hash.as_str())
        .bind(now)
        .bind(head.0)
        .bind(head.1.as_str());
    let (mut issued, list_exp) = match registry {
        Some(r) => (Some(r.rows.into_iter()), Some(r.list_exp)),
        None => (None, None),
    };
    for (n, size) in shapes {
        q = bind_events(q, rows.by_ref().take(n));
        for _ in n..size {
            for _ in 0..EVENT_COLUMNS {
                q = q.bind(None::<i64>);
            }
        }
        q = q.bind(c.hash.as_str());
        if let Some(issued) = issued.as_mut() {
            let chunk = issued
                .by_ref()
                .take(n)
                .chain(std::iter::repeat_n(None, size - n));
            q = bind_issued(q, chunk).bind(c.hash.as_str());
        }
    }
    if let Some(list_exp) = list_exp {
        let (list, exp) = list_exp.unzip();
        q = q.bind(exp).bind(list).bind(exp).bind(c.hash.as_str());
    }
    match q.fetch_all(&mut **conn).await {
        Ok(rows) => Ok(rows
            .first()
            .and_then(|r| r.try_get::<i64, _>("seq").ok())
            .is_some_and(|s| s == c.seq)),
        Err(e) => {
            // The statement string opened the transaction itself: close it here, or the
            // connection goes back to the pool inside it.
            use sqlx::Executor;
            if (&mut **conn).execute("ROLLBACK").await.is_err() {
                conn.close_on_drop();
            }
            Err(db("append audit batch")(e))
        }
    }
}

pub(super) async fn append_batch(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    kek: &Kek,
    items: &mut [Pending],
    guard: &mut ReplayGuard,
    want_lines: bool,
    head: &mut Option<(i64, String)>,
) -> Result<Committed, StoreError> {
    use sqlx::Connection;
    note_single_use(items);
    let now = items.first().map_or(0, |p| p.event.ts);
    // Fast path: SQLite, the head known from the last batch, and nothing but events and
    // assertion jtis (revocations, token links and one-time subject or actor tokens take the
    // general path).
    if let (Backend::Sqlite, Some(h), ReplayGuard::Local { seen, window }) =
        (backend, head.as_ref(), &mut *guard)
        && items.iter().all(|p| {
            p.revoke.is_none()
                && p.link_svid.is_none()
                && p.parents.is_empty()
                && p.consume_subject.is_none()
                && p.consume_actor.is_none()
                && p.lease.is_none()
        })
        && fast_lists(items)
    {
        let (used, fresh) = local_used(seen, items);
        let mut c = chain(kek, items, &used, h.0, h.1.clone(), want_lines)?;
        let registry = fast_registry(items);
        if append_sqlite_fast(conn, &mut c, registry, h, now).await? {
            remember(seen, fresh, *window);
            *head = Some((c.seq, c.hash.clone()));
            return Ok((c.outcomes, c.lines, (c.seq, c.hash)));
        }
        tracing::debug!("the audit head moved under the committer; reading it again");
    }
    *head = None;

    let mut tx = conn.begin().await.map_err(db("begin audit batch"))?;
    // Writing the head first takes the lock (see the migration); RETURNING reads it under it.
    let row = sqlx::query("UPDATE audit_head SET updated_at = $1 WHERE id = 1 RETURNING seq, hash")
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("lock audit head"))?;
    let seq: i64 = row.try_get("seq").map_err(db("read audit head"))?;
    let prev: String = row.try_get("hash").map_err(db("read audit head"))?;

    let (used, fresh) = match guard {
        ReplayGuard::Shared => (consume_jtis(&mut tx, items).await?, Vec::new()),
        ReplayGuard::Local { seen, .. } => {
            let (used, fresh) = local_used(seen, items);
            persist_subjects(&mut tx, items, &used).await?;
            (used, fresh)
        }
    };
    for (p, used) in items.iter().zip(&used) {
        if used.is_some() {
            continue;
        }
        if let Some((jti, client, exp)) = &p.revoke {
            crate::revocation::revoke_tree(&mut tx, jti, client, *exp, p.event.ts).await?;
        }
        if let (false, Some(token), Some(exp)) = (p.parents.is_empty(), &p.event.jti, p.event.exp) {
            crate::revocation::link_parents(
                &mut tx,
                &p.parents,
                token,
                p.event.client.as_deref().unwrap_or("-"),
                exp,
                p.event.ts,
            )
            .await?;
        }
        if let (Some(svid), Some(token), Some(exp)) = (&p.link_svid, &p.event.jti, p.event.exp) {
            link_svid_token(
                &mut tx,
                svid,
                token,
                p.event.client.as_deref().unwrap_or("-"),
                exp,
                p.event.ts,
            )
            .await?;
        }
    }
    let fresh_items: Vec<&Pending> = items
        .iter()
        .zip(&used)
        .filter(|(_, u)| u.is_none())
        .map(|(p, _)| p)
        .collect();
    super::issued::record_issued(&mut tx, backend, &fresh_items).await?;
    let mut c = chain(kek, items, &used, seq, prev, want_lines)?;
    let sizes: Vec<usize> = statement_chunks(&c.rows).map(<[EventRow]>::len).collect();
    let mut rows = std::mem::take(&mut c.rows).into_iter();
    for n in sizes {
        let sql = values_sql(
            backend,
            &format!("{INSERT_EVENTS} VALUES"),
            EVENT_COLUMNS,
            n,
            "",
        );
        bind_events(sqlx::query(sqlx::AssertSqlSafe(sql)), rows.by_ref().take(n))
            .execute(&mut *tx)
            .await
            .map_err(db("append audit events"))?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(c.seq)
        .bind(&c.hash)
        .execute(&mut *tx)
        .await
        .map_err(db("advance audit head"))?;
    tx.commit().await.map_err(db("commit audit batch"))?;
    // Remember the consumed jtis only once they are durable.
    if let ReplayGuard::Local { seen, window } = guard {
        remember(seen, fresh, *window);
    }
    if backend == Backend::Sqlite {
        *head = Some((c.seq, c.hash.clone()));
    }
    Ok((c.outcomes, c.lines, (c.seq, c.hash)))
}

/// Whether the batch's status slots lie in one list at most (the fast path keeps one list's
/// `last_exp`; a batch straddling two lists takes the general path).
fn fast_lists(items: &[Pending]) -> bool {
    let mut lists = items.iter().filter_map(|p| p.status.map(|s| s.list));
    let first = lists.next();
    lists.all(|l| Some(l) == first)
}

/// The registry share of a fast-path batch (after chaining: a replayed request's event no
/// longer issues anything), or `None` when no event of it issued a token.
fn fast_registry(items: &[Pending]) -> Option<FastRegistry> {
    let rows: Vec<Option<IssuedRow>> = items.iter().map(issued_row).collect();
    if rows.iter().all(Option::is_none) {
        return None;
    }
    let list_exp = super::issued::list_exps(rows.iter().flatten())
        .into_iter()
        .next();
    Some(FastRegistry { rows, list_exp })
}

/// What a batch came to: one outcome per event, the JSON lines, and the chain's new head.
pub(super) type Committed = (Vec<CommitOutcome>, Vec<String>, (i64, String));

#[cfg(test)]
mod chunk_tests {
    use super::super::committer::MAX_BATCH;
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_and_cover_everything() {
        for n in 0..300usize {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            assert!(
                chunks
                    .iter()
                    .all(|c| c.len().is_power_of_two() && c.len() <= ROWS_PER_INSERT)
            );
            assert_eq!(chunks.concat(), rows);
        }
    }

    /// Every batch size up to a full batch maps to one of a few statement shapes (the driver
    /// caches the one-round-trip string whole), and the padded chunks hold every row once.
    #[test]
    fn padded_chunks_have_few_shapes_and_cover_everything() {
        let mut shapes = std::collections::HashSet::new();
        for n in 1..=MAX_BATCH {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<(&[usize], usize)> = padded_chunks(&rows).collect();
            assert!(chunks.iter().all(|(c, size)| c.len() <= *size
                && size.is_power_of_two()
                && *size <= ROWS_PER_INSERT));
            let flat: Vec<usize> = chunks.iter().flat_map(|(c, _)| c.iter().copied()).collect();
            assert_eq!(flat, rows);
            shapes.insert(chunks.iter().map(|(_, s)| *s).collect::<Vec<_>>());
        }
        assert!(shapes.len() <= 15, "{} shapes", shapes.len());
    }
}
