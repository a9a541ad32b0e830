//! The audit log: append-only, chained with HMAC-SHA256 under a key derived from the master key,
//! written by one committer task in batches (group commit) so that a token's event is durable
//! before the token leaves, at the cost of one fsync per batch rather than per event.
//!
//! - [`AuditLog`] and [`Pending`] (here): what callers send, and what they are told.
//! - `committer`: the task that gathers batches and commits them.
//! - `chain`: the HMAC link and the pure chaining of a batch.
//! - `sql`: the statements that write a batch (SQLite's one-round-trip path and the general one).
//! - `replay`: single use of assertion, subject and actor token jtis.
//! - `sink`: the JSON-lines copy and its anchors.
//! - `verify`: reading the log back and walking the chain.

mod chain;
mod committer;
mod issued;
mod replay;
mod sink;
mod sql;
mod verify;

use std::sync::Arc;

use mayfly_crypto::Kek;
use mayfly_proto::{AuditEvent, Clock};
use tokio::sync::{mpsc, oneshot};

use crate::{Store, StoreError};

use committer::{MAX_BATCH, committer};
pub use sink::AuditSink;
pub use verify::{ChainReport, StoredEvent, TamperKind};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Requests waiting for the committer at most; beyond this, callers wait (back-pressure).
const QUEUE: usize = 4096;

/// One event to append, with the state changes that must commit atomically with it.
#[derive(Debug)]
pub struct Pending {
    /// The event.
    pub event: AuditEvent,
    /// Consume a client assertion's jti: (client_id, jti, keep until). A jti already present
    /// turns the event into a `replayed_jti` denial and the outcome into [`CommitOutcome::Replay`].
    pub consume_jti: Option<(String, String, i64)>,
    /// Consume a one-time subject token: (issuer name, jti, keep until). A jti already present
    /// turns the outcome into [`CommitOutcome::SubjectReplay`].
    pub consume_subject: Option<(String, String, i64)>,
    /// Consume a one-time actor token: (issuer name, jti, keep until), in the same namespace
    /// as subject tokens (a one-time token serves once, in either role). A jti already present
    /// turns the outcome into [`CommitOutcome::ActorReplay`].
    pub consume_actor: Option<(String, String, i64)>,
    /// Revoke a token: (jti, client_id, its exp).
    pub revoke: Option<(String, String, i64)>,
    /// The issued token (the event's `jti`) was minted from this JWT-SVID `jti`: remember the
    /// link so that revoking the JWT-SVID (its workload exited) revokes the token. If the
    /// JWT-SVID is already revoked when this commits, the token is revoked at once.
    pub link_svid: Option<String>,
    /// The issued token (the event's `jti`) was derived from these tokens of ours (its subject
    /// and actor): remember the links so that revoking any of them revokes it. If one is
    /// already revoked when this commits, the token is revoked at once.
    pub parents: Vec<String>,
    /// The issued token's (the event's `jti`) status-list slot: recorded in the registry of
    /// issued tokens, so that revoking it sets its bit.
    pub status: Option<crate::StatusSlot>,
    /// The lease the issued token lives under (opened with it, or existing).
    pub lease: Option<crate::LeaseLink>,
}

impl Pending {
    /// Just an event.
    pub fn event(event: AuditEvent) -> Self {
        Self {
            event,
            consume_jti: None,
            consume_subject: None,
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        }
    }

    /// The single-use keys this item consumes: (namespace, jti, keep until, what it is). Subject
    /// tokens live in the namespace `issuer NAME`, which no client id can equal (client ids
    /// have no spaces).
    fn keys(&self) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &str, i64, Used)> {
        let a = self.consume_jti.as_ref().map(|(c, j, u)| {
            (
                std::borrow::Cow::Borrowed(c.as_str()),
                j.as_str(),
                *u,
                Used::Assertion,
            )
        });
        let s = self.consume_subject.as_ref().map(|(i, j, u)| {
            (
                std::borrow::Cow::Owned(subject_ns(i)),
                j.as_str(),
                *u,
                Used::Subject,
            )
        });
        let act = self.consume_actor.as_ref().map(|(i, j, u)| {
            (
                std::borrow::Cow::Owned(subject_ns(i)),
                j.as_str(),
                *u,
                Used::Actor,
            )
        });
        a.into_iter().chain(s).chain(act)
    }
}

/// The replay namespace of a trusted issuer's subject tokens.
fn subject_ns(issuer: &str) -> String {
    format!("issuer {issuer}")
}

/// Which single-use value was already used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Used {
    Assertion,
    Subject,
    Actor,
}

/// What happened to a [`Pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Appended with this sequence number.
    Committed(i64),
    /// The assertion jti had been used: a denial was appended instead, with this sequence number.
    Replay(i64),
    /// The one-time subject token had been used: a denial was appended instead.
    SubjectReplay(i64),
    /// The one-time actor token had been used: a denial was appended instead.
    ActorReplay(i64),
}

type Reply = oneshot::Sender<Result<CommitOutcome, String>>;
type ManyReply = oneshot::Sender<Vec<Result<CommitOutcome, String>>>;

/// What the committer is sent: one event whose caller waits for it, or a batch gathered by
/// the caller (the proxy), answered with one message.
#[allow(clippy::large_enum_variant)] // `One` is the token path's: moved as before, no box per token
enum Job {
    One(Pending, Reply),
    Many(Vec<Pending>, ManyReply),
}

impl Job {
    fn events(&self) -> usize {
        match self {
            Job::One(..) => 1,
            Job::Many(ps, _) => ps.len(),
        }
    }

    /// Append this job's events to `items`; what answers it once they are committed.
    fn take(self, items: &mut Vec<Pending>) -> Replier {
        match self {
            Job::One(p, r) => {
                items.push(p);
                Replier::One(r)
            }
            Job::Many(ps, r) => {
                let n = ps.len();
                items.extend(ps);
                Replier::Many(r, n)
            }
        }
    }
}

/// What a caller is told when its event was not committed (the log says why).
const UNAVAILABLE: &str = "audit log unavailable";

/// Where a batch's outcomes go back to: a job and how many events it had.
enum Replier {
    One(Reply),
    Many(ManyReply, usize),
}

impl Replier {
    /// Answer with the next outcomes of `outcomes` (this job's share).
    fn send(self, outcomes: &mut impl Iterator<Item = Result<CommitOutcome, String>>) {
        match self {
            Replier::One(r) => {
                let o = outcomes.next().unwrap_or_else(|| Err(UNAVAILABLE.into()));
                let _ = r.send(o);
            }
            Replier::Many(r, n) => {
                let mut v: Vec<_> = outcomes.take(n).collect();
                v.resize_with(n, || Err(UNAVAILABLE.into()));
                let _ = r.send(v);
            }
        }
    }
}

/// Handle to the committer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
}

impl AuditLog {
    /// Start the committer task on the current tokio runtime. `replay_window` is how long (in
    /// seconds) a consumed assertion jti must be remembered: the longest assertion lifetime plus
    /// twice the clock skew. Tools that consume no jtis pass 0.
    ///
    /// The committer keeps a connection of its own, so it never waits behind request handlers
    /// for one from the shared pool. `clock` dates anchors and ages the replay window.
    pub fn start(
        store: Store,
        kek: Arc<Kek>,
        sink: AuditSink,
        replay_window: i64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let run = move || async move {
            let own = match store.dedicated().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no dedicated audit connection yet; sharing the pool");
                    store
                }
            };
            committer(own, kek, sink, rx, replay_window, clock).await;
        };
        tokio::spawn(run());
        Self { tx }
    }

    /// Append `p` and wait until it is durable.
    pub async fn commit(&self, p: Pending) -> Result<CommitOutcome, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Job::One(p, reply))
            .await
            .map_err(|_| StoreError::AuditClosed)?;
        outcome(wait.await)
    }

    /// Append every item of `ps` (in order) and wait until all are durable: one result per
    /// item. Queued together, they share group commits, for callers that gather events
    /// themselves (the proxy) instead of waiting per event.
    pub async fn commit_all(
        &self,
        ps: impl IntoIterator<Item = Pending>,
    ) -> Vec<Result<CommitOutcome, StoreError>> {
        // One message per batch-sized slice, not one per event (with a reply channel each).
        let mut ps = ps.into_iter().peekable();
        let mut waits = Vec::new();
        while ps.peek().is_some() {
            let chunk: Vec<Pending> = ps.by_ref().take(MAX_BATCH).collect();
            let n = chunk.len();
            let (reply, wait) = oneshot::channel();
            waits.push(match self.tx.send(Job::Many(chunk, reply)).await {
                Ok(()) => (Some(wait), n),
                Err(_) => (None, n),
            });
        }
        let mut out = Vec::new();
        for (w, n) in waits {
            let answered = match w {
                Some(w) => w.await.ok(),
                None => None,
            };
            match answered {
                Some(rs) => out.extend(rs.into_iter().map(|r| outcome(Ok(r)))),
                None => out.extend((0..n).map(|_| Err(StoreError::AuditClosed))),
            }
        }
        out
    }
}

fn outcome(
    r: Result<Result<CommitOutcome, String>, oneshot::error::RecvError>,
) -> Result<CommitOutcome, StoreError> {
    match r {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(msg)) => Err(StoreError::Corrupt(msg)),
        Err(_) => Err(StoreError::AuditClosed),
    }
}
