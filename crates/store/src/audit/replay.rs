//! Single use of assertion jtis and one-time subject and actor tokens: the committer's
//! in-memory window (SQLite) or the shared table (PostgreSQL).

use std::collections::HashMap;

use mayfly_proto::AuditEvent;
use sqlx::Row;

use crate::{Backend, Store, StoreError, db};

use super::sql::{statement_chunks, values_sql};
use super::{Pending, Used, subject_ns};

/// How far (seconds) an event's time may trail the commit order: far more than any request is
/// allowed to take. Bounds the replay-window rebuild's walk back through the log.
pub(super) const REBUILD_SLACK: i64 = 600;
/// Events read per query while rebuilding the replay window.
pub(super) const REBUILD_PAGE: i64 = 1000;

/// How single use of assertion jtis is enforced.
pub(super) enum ReplayGuard {
    /// SQLite: one process owns the file, so a map in the committer is authoritative. It holds a
    /// 128-bit digest of (client, jti) and when it may be forgotten, and is rebuilt from the
    /// audit events of the replay window at start. No random-key index is written per token.
    Local {
        seen: HashMap<u128, i64>,
        window: i64,
    },
    /// PostgreSQL: replicas share the `used_jti` table (its primary key decides).
    Shared,
}

pub(super) fn replay_key(client: &str, jti: &str) -> u128 {
    let mut data = Vec::with_capacity(client.len() + jti.len() + 1);
    data.extend_from_slice(client.as_bytes());
    data.push(0);
    data.extend_from_slice(jti.as_bytes());
    let d = mayfly_crypto::sha256(&data);
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_le_bytes(k)
}

impl ReplayGuard {
    pub(super) async fn new(store: &Store, window: i64, now: i64) -> Result<Self, StoreError> {
        if store.backend() == crate::Backend::Postgres {
            return Ok(Self::Shared);
        }
        let mut seen = HashMap::new();
        // One-time subject tokens, each until its own exp + skew (see `persist_subjects`).
        let rows =
            sqlx::query("SELECT client_id, jti, expires_at FROM used_jti WHERE expires_at >= $1")
                .bind(now)
                .fetch_all(store.pool())
                .await
                .map_err(db("rebuild replay window"))?;
        for r in rows {
            let ns: String = r
                .try_get("client_id")
                .map_err(db("rebuild replay window"))?;
            let jti: String = r.try_get("jti").map_err(db("rebuild replay window"))?;
            let until: i64 = r
                .try_get("expires_at")
                .map_err(db("rebuild replay window"))?;
            seen.insert(replay_key(&ns, &jti), until);
        }
        if window > 0 {
            let since = now - window;
            // Walk back from the newest event. Events are appended in commit order and stamped
            // when their request was handled, so once one is older than `since` by more than any
            // request may take, every earlier one is too.
            let stop = since - REBUILD_SLACK;
            let mut before = i64::MAX;
            'pages: loop {
                let rows = sqlx::query(
                    "SELECT seq, ts, body FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                )
                .bind(before)
                .bind(REBUILD_PAGE)
                .fetch_all(store.pool())
                .await
                .map_err(db("rebuild replay window"))?;
                if rows.is_empty() {
                    break;
                }
                for r in rows {
                    let seq: i64 = r.try_get("seq").map_err(db("rebuild replay window"))?;
                    let ts: i64 = r.try_get("ts").map_err(db("rebuild replay window"))?;
                    before = seq;
                    if ts < stop {
                        break 'pages;
                    }
                    if ts < since {
                        continue;
                    }
                    let body: String = r.try_get("body").map_err(db("rebuild replay window"))?;
                    if let Ok(e) = serde_json::from_str::<AuditEvent>(&body) {
                        if let (Some(client), Some(jti)) = (&e.client, &e.assertion_jti) {
                            seen.insert(replay_key(client, jti), e.ts + window);
                        }
                        if let (Some(iss), Some(jti)) = (&e.subject_issuer, &e.subject_jti) {
                            let until = seen.entry(replay_key(&subject_ns(iss), jti)).or_default();
                            *until = (*until).max(e.ts + window);
                        }
                    }
                }
            }
        }
        Ok(Self::Local { seen, window })
    }
}

/// Consume the batch's single-use keys in the shared table; returns, per item, which of its keys
/// was already used (earlier, or by an earlier item of this same batch), if any.
pub(super) async fn consume_jtis(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    items: &[Pending],
) -> Result<Vec<Option<Used>>, StoreError> {
    use std::collections::HashSet;
    let keys: Vec<Vec<(String, String, i64, Used)>> = items
        .iter()
        .map(|p| {
            p.keys()
                .map(|(ns, j, u, w)| (ns.into_owned(), j.to_string(), u, w))
                .collect()
        })
        .collect();
    let mut first: HashSet<(&str, &str)> = HashSet::new();
    let mut fresh: Vec<(&str, &str, i64)> = Vec::new();
    for (ns, jti, until, _) in keys.iter().flatten() {
        if first.insert((ns, jti)) {
            fresh.push((ns, jti, *until));
        }
    }
    let mut inserted: HashSet<(String, String)> = HashSet::with_capacity(fresh.len());
    for chunk in statement_chunks(&fresh) {
        let sql = values_sql(
            Backend::Postgres,
            "INSERT INTO used_jti (client_id, jti, expires_at) VALUES",
            3,
            chunk.len(),
            " ON CONFLICT DO NOTHING RETURNING client_id, jti",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (ns, jti, until) in chunk {
            q = q.bind(*ns).bind(*jti).bind(*until);
        }
        for row in q.fetch_all(&mut **tx).await.map_err(db("consume jti"))? {
            let ns: String = row.try_get("client_id").map_err(db("consume jti"))?;
            let jti: String = row.try_get("jti").map_err(db("consume jti"))?;
            inserted.insert((ns, jti));
        }
    }
    // A key is fresh if it was inserted now, and only for the first item that claims it.
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    Ok(keys
        .into_iter()
        .map(|ks| {
            let mut used = None;
            for (ns, jti, _, what) in ks {
                let k = (ns, jti);
                let fresh_now = inserted.contains(&k) && claimed.insert(k);
                if !fresh_now && used.is_none() {
                    used = Some(what);
                }
            }
            used
        })
        .collect())
}

/// A key a batch consumed: (replay key, event time, keep until).
pub(super) type Fresh = (u128, i64, i64);

/// Which items reuse a single-use key already seen (or seen earlier in this batch), from the
/// committer's map; and the keys the batch consumes, to remember once it is durable.
pub(super) fn local_used(
    seen: &HashMap<u128, i64>,
    items: &[Pending],
) -> (Vec<Option<Used>>, Vec<Fresh>) {
    let mut batch_seen = std::collections::HashSet::new();
    let used: Vec<Option<Used>> = items
        .iter()
        .map(|p| {
            let mut used = None;
            for (ns, jti, _, what) in p.keys() {
                let k = replay_key(&ns, jti);
                if (seen.contains_key(&k) || !batch_seen.insert(k)) && used.is_none() {
                    used = Some(what);
                }
            }
            used
        })
        .collect();
    let fresh = items
        .iter()
        .zip(&used)
        .filter(|(_, u)| u.is_none())
        .flat_map(|(p, _)| {
            p.keys()
                .map(|(ns, jti, until, _)| (replay_key(&ns, jti), p.event.ts, until))
                .collect::<Vec<_>>()
        })
        .collect();
    (used, fresh)
}

/// Remember consumed keys (key, event time, keep until) once durable: each for the replay window
/// and at least until its own keep-until (a one-time subject token's `exp` + skew, which may be
/// far beyond the assertion window).
pub(super) fn remember(seen: &mut HashMap<u128, i64>, fresh: Vec<Fresh>, window: i64) {
    for (k, ts, until) in fresh {
        seen.insert(k, until.max(ts + window));
    }
}

/// SQLite: write the batch's consumed one-time subject and actor tokens to `used_jti` too, so
/// that a restart remembers each until its own `exp` (the audit-log walk covers only the
/// assertion window). They are few (one per exchange of such a token), unlike assertion jtis.
pub(super) async fn persist_subjects(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    items: &[Pending],
    used: &[Option<Used>],
) -> Result<(), StoreError> {
    for (p, used) in items.iter().zip(used) {
        if used.is_some() {
            continue;
        }
        for (iss, jti, until) in [&p.consume_subject, &p.consume_actor].into_iter().flatten() {
            sqlx::query("INSERT INTO used_jti (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(subject_ns(iss)).bind(jti).bind(*until)
                .execute(&mut **tx).await.map_err(db("remember one-time token"))?;
        }
    }
    Ok(())
}

/// Record, in each event, the single-use values its request consumed.
pub(super) fn note_single_use(items: &mut [Pending]) {
    for p in items.iter_mut() {
        p.event.assertion_jti = p.consume_jti.as_ref().map(|(_, jti, _)| jti.clone());
        if let Some((iss, jti, _)) = &p.consume_subject {
            p.event.subject_issuer = Some(iss.clone());
            p.event.subject_jti = Some(jti.clone());
        }
    }
}
