//! The chain: each event's HMAC link over the previous one, computed for a batch without I/O.

use mayfly_crypto::{Kek, hex};
use mayfly_proto::{Decision, EventKind};

use crate::StoreError;

use super::{CommitOutcome, Pending, Used};

/// The chain link of an event.
pub(super) fn link(kek: &Kek, prev_hash: &str, seq: i64, body: &str) -> String {
    let mut data = Vec::with_capacity(prev_hash.len() + body.len() + 24);
    data.extend_from_slice(prev_hash.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(seq.to_string().as_bytes());
    data.push(b'\n');
    data.extend_from_slice(body.as_bytes());
    hex(&kek.audit_mac(&data))
}

/// One `audit_events` row, as inserted.
pub(super) struct EventRow {
    pub(super) seq: i64,
    pub(super) ts: i64,
    pub(super) kind: &'static str,
    pub(super) jti: Option<String>,
    pub(super) body: String,
    pub(super) prev_hash: String,
    pub(super) hash: String,
}

/// The batch's events chained from `(seq, prev)`: their rows, outcomes, JSON lines, and the new
/// head. Pure (no I/O): the fast and the general path share it.
pub(super) struct Chained {
    pub(super) rows: Vec<EventRow>,
    pub(super) outcomes: Vec<CommitOutcome>,
    pub(super) lines: Vec<String>,
    pub(super) seq: i64,
    pub(super) hash: String,
}

pub(super) fn chain(
    kek: &Kek,
    items: &mut [Pending],
    used: &[Option<Used>],
    mut seq: i64,
    mut prev: String,
    want_lines: bool,
) -> Result<Chained, StoreError> {
    let mut outcomes = Vec::with_capacity(items.len());
    let mut lines = Vec::with_capacity(if want_lines { items.len() } else { 0 });
    let mut rows: Vec<EventRow> = Vec::with_capacity(items.len());
    for (p, used) in items.iter_mut().zip(used) {
        if let Some(what) = used {
            let e = &mut p.event;
            e.kind = EventKind::Deny;
            e.decision = Decision::Deny;
            e.reason = Some(
                match what {
                    Used::Assertion => "replayed_jti",
                    Used::Subject => "subject_replayed",
                    Used::Actor => "actor_replayed",
                }
                .into(),
            );
            e.jti = None;
            e.exp = None;
        }
        seq += 1;
        let body =
            serde_json::to_string(&p.event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hash = link(kek, &prev, seq, &body);
        if want_lines {
            let mut line =
                serde_json::to_value(&p.event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(o) = line.as_object_mut() {
                o.insert("seq".into(), seq.into());
                o.insert("hash".into(), hash.clone().into());
            }
            lines.push(line.to_string());
        }
        outcomes.push(match used {
            Some(Used::Assertion) => CommitOutcome::Replay(seq),
            Some(Used::Subject) => CommitOutcome::SubjectReplay(seq),
            Some(Used::Actor) => CommitOutcome::ActorReplay(seq),
            None => CommitOutcome::Committed(seq),
        });
        let prev_hash = std::mem::replace(&mut prev, hash.clone());
        rows.push(EventRow {
            seq,
            ts: p.event.ts,
            kind: p.event.kind.as_str(),
            jti: p.event.jti.clone(),
            body,
            prev_hash,
            hash,
        });
    }
    Ok(Chained {
        rows,
        outcomes,
        lines,
        seq,
        hash: prev,
    })
}
