//! Reading the log back: the tail, and walking the chain to find tampering.

use std::collections::HashMap;

use mayfly_crypto::Kek;
use mayfly_proto::AuditEvent;
use sqlx::Row;

use crate::{Store, StoreError, db};

use super::GENESIS;
use super::chain::link;

/// An event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Sequence number (1, 2, ...).
    pub seq: i64,
    /// The event JSON as chained.
    pub body: String,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// What kind of tampering `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperKind {
    /// The event's content no longer matches its hash.
    Edited,
    /// Events are missing before this one.
    Missing,
    /// The event is out of order or its link to the previous one is broken.
    Reordered,
    /// The indexed columns disagree with the chained body.
    ColumnMismatch,
    /// Events were removed from the end of the log.
    Truncated,
    /// An anchor's MAC does not verify under this master key: forged, altered, or written by
    /// another deployment.
    ForgedAnchor,
}

/// The result of walking the chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// Events read.
    pub events: u64,
    /// Hash of the last event (compare with the SIEM copy).
    pub head: String,
    /// Problems, in order: (seq, kind, detail).
    pub problems: Vec<(i64, TamperKind, String)>,
}

impl Store {
    /// The last `n` events, oldest first.
    pub async fn audit_tail(&self, n: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, body, prev_hash, hash FROM audit_events ORDER BY seq DESC LIMIT $1",
        )
        .bind(n)
        .fetch_all(self.pool())
        .await
        .map_err(db("read audit tail"))?;
        let mut out: Vec<StoredEvent> = rows.iter().map(row_event).collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Walk the whole chain and report every edited, deleted or reordered event.
    pub async fn audit_verify(&self, kek: &Kek) -> Result<ChainReport, StoreError> {
        self.audit_verify_anchored(kek, &[]).await
    }

    /// [`Store::audit_verify`], and check the chain against anchors kept outside the database
    /// (see [`crate::Anchor`]): each authentic anchor must name an event still in the chain,
    /// with the same hash. This is what finds a tail cut together with its head.
    pub async fn audit_verify_anchored(
        &self,
        kek: &Kek,
        anchors: &[crate::Anchor],
    ) -> Result<ChainReport, StoreError> {
        let mut by_seq: HashMap<i64, &crate::Anchor> = HashMap::new();
        let mut forged = Vec::new();
        for a in anchors {
            if a.authentic(kek) {
                by_seq.insert(a.seq, a);
            } else {
                forged.push((
                    a.seq,
                    TamperKind::ForgedAnchor,
                    "an anchor's MAC does not verify under this master key".to_string(),
                ));
            }
        }
        let rows = sqlx::query(
            "SELECT seq, ts, kind, jti, body, prev_hash, hash FROM audit_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db("read audit log"))?;
        let mut problems = Vec::new();
        let mut expected_seq = 1i64;
        let mut prev = GENESIS.to_string();
        for r in &rows {
            let e = row_event(r)?;
            if e.seq != expected_seq {
                problems.push((
                    e.seq,
                    TamperKind::Missing,
                    format!("events {expected_seq}..{} are missing", e.seq - 1),
                ));
            } else if e.prev_hash != prev {
                problems.push((
                    e.seq,
                    TamperKind::Reordered,
                    "does not link to the event before it".into(),
                ));
            }
            if link(kek, &e.prev_hash, e.seq, &e.body) != e.hash {
                problems.push((
                    e.seq,
                    TamperKind::Edited,
                    "content does not match its hash".into(),
                ));
            } else if let Ok(ev) = serde_json::from_str::<AuditEvent>(&e.body) {
                let ts: i64 = r.try_get("ts").map_err(db("read audit log"))?;
                let kind: String = r.try_get("kind").map_err(db("read audit log"))?;
                let jti: Option<String> = r.try_get("jti").map_err(db("read audit log"))?;
                if ts != ev.ts || kind != ev.kind.as_str() || jti != ev.jti {
                    problems.push((
                        e.seq,
                        TamperKind::ColumnMismatch,
                        "ts/kind/jti columns differ from the chained event".into(),
                    ));
                }
            } else {
                problems.push((
                    e.seq,
                    TamperKind::Edited,
                    "content is not an audit event".into(),
                ));
            }
            if let Some(a) = by_seq.remove(&e.seq)
                && a.hash != e.hash
            {
                problems.push((
                    e.seq,
                    TamperKind::Edited,
                    format!("differs from the anchor written at {}", a.ts),
                ));
            }
            expected_seq = e.seq + 1;
            prev = e.hash;
        }
        // Anchors left over name events the chain lacks: in a gap (reported above as missing)
        // or past its end.
        let end = expected_seq - 1;
        if let Some(last) = by_seq
            .into_values()
            .filter(|a| a.seq > end)
            .max_by_key(|a| a.seq)
        {
            problems.push((
                last.seq,
                TamperKind::Truncated,
                format!(
                    "the log ends at {end} but an anchor written at {} covers event {}",
                    last.ts, last.seq
                ),
            ));
        }
        problems.extend(forged);
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(self.pool())
            .await
            .map_err(db("read audit head"))?;
        let head_seq: i64 = head.try_get("seq").map_err(db("read audit head"))?;
        let head_hash: String = head.try_get("hash").map_err(db("read audit head"))?;
        if head_seq != expected_seq - 1 || head_hash != prev {
            problems.push((
                head_seq,
                TamperKind::Truncated,
                format!(
                    "the log ends at {} but the head says {head_seq}",
                    expected_seq - 1
                ),
            ));
        }
        Ok(ChainReport {
            events: rows.len() as u64,
            head: prev,
            problems,
        })
    }
}

pub(super) fn row_event(r: &sqlx::any::AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: r.try_get("seq").map_err(db("read audit event"))?,
        body: r.try_get("body").map_err(db("read audit event"))?,
        prev_hash: r.try_get("prev_hash").map_err(db("read audit event"))?,
        hash: r.try_get("hash").map_err(db("read audit event"))?,
    })
}
