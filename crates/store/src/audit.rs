//! The audit log: append-only, chained with HMAC-SHA256 under a key derived from the master key,
//! written by one committer task in batches (group commit) so that a token's event is durable
//! before the token leaves, at the cost of one fsync per batch rather than per event.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use mayfly_crypto::{Kek, hex};
use mayfly_proto::{AuditEvent, Clock, Decision, EventKind};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, Store, StoreError, db};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest an audit batch may take before its requests are refused (503) and the connection
/// is dropped. Well above a healthy commit (milliseconds), well below the request deadline.
const BATCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest batch in one transaction.
const MAX_BATCH: usize = 512;
/// How far (seconds) an event's time may trail the commit order: far more than any request is
/// allowed to take. Bounds the replay-window rebuild's walk back through the log.
const REBUILD_SLACK: i64 = 600;
/// Events read per query while rebuilding the replay window.
const REBUILD_PAGE: i64 = 1000;
/// Requests waiting for the committer at most; beyond this, callers wait (back-pressure).
const QUEUE: usize = 4096;

/// Where the JSON-lines copy goes.
#[derive(Debug)]
pub enum AuditSink {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// An append-only file.
    File(std::fs::File),
}

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

/// How single use of assertion jtis is enforced.
enum ReplayGuard {
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

fn replay_key(client: &str, jti: &str) -> u128 {
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
    async fn new(store: &Store, window: i64, now: i64) -> Result<Self, StoreError> {
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

async fn committer(
    store: Store,
    kek: Arc<Kek>,
    mut sink: AuditSink,
    mut rx: mpsc::Receiver<Job>,
    replay_window: i64,
    clock: Arc<dyn Clock>,
) {
    let mut guard = match ReplayGuard::new(&store, replay_window, clock.now()).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot rebuild the replay window; refusing all requests");
            let mut refused = Vec::new();
            while let Some(job) = rx.recv().await {
                job.take(&mut refused).send(&mut std::iter::empty());
                refused.clear();
            }
            return;
        }
    };
    let mut conn: Option<sqlx::pool::PoolConnection<sqlx::Any>> = None;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut batches: u64 = 0;
    // The chain head as this committer last wrote it (SQLite's fast path); None: read it.
    let mut head: Option<(i64, String)> = None;
    let mut anchoring = crate::anchor::Anchoring::new();
    loop {
        // Wait for the next request, or until an anchor falls due when the log goes quiet.
        let next = match anchoring.deadline() {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    anchor_now(&mut anchoring, &kek, &mut sink, clock.now());
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = next else {
            anchor_now(&mut anchoring, &kek, &mut sink, clock.now());
            break;
        };
        batch.push(first);
        gather(&mut rx, &mut batch).await;
        let mut items: Vec<Pending> = Vec::with_capacity(batch.iter().map(Job::events).sum());
        let mut replies: Vec<Replier> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            replies.push(job.take(&mut items));
        }
        // One connection for the committer: its page cache stays warm between batches.
        if conn.is_none() {
            conn = store.pool().acquire().await.ok();
        }
        let result = match conn.as_mut() {
            // A database that stops answering (network gone) must not hold requests forever:
            // the batch fails, its requests get 503, and the next batch reconnects.
            Some(c) => tokio::time::timeout(
                BATCH_DEADLINE,
                append_batch(
                    c,
                    store.backend(),
                    &kek,
                    &mut items,
                    &mut guard,
                    !matches!(sink, AuditSink::Off),
                    &mut head,
                ),
            )
            .await
            .unwrap_or(Err(StoreError::Timeout(BATCH_DEADLINE, "an audit batch"))),
            None => Err(StoreError::AuditClosed),
        };
        match result {
            Ok((outcomes, mut lines, (seq, hash))) => {
                if !matches!(sink, AuditSink::Off)
                    && let Some(anchor) = anchoring.committed(&kek, seq, &hash, clock.now())
                {
                    lines.push(anchor);
                }
                if let Err(e) = write_lines(&mut sink, &lines) {
                    tracing::error!(error = %e, "cannot write the audit JSON lines; the store holds every event");
                }
                let mut outcomes = outcomes.into_iter().map(Ok);
                for r in replies {
                    r.send(&mut outcomes);
                }
            }
            Err(e) => {
                // Closed, not returned to the pool: a batch cut off by its deadline may have
                // left its transaction open on this connection.
                if let Some(mut c) = conn.take() {
                    c.close_on_drop();
                }
                head = None;
                tracing::error!(error = %e, events = items.len(), "audit batch failed; refusing the requests in it");
                for r in replies {
                    r.send(&mut std::iter::empty());
                }
            }
        }
        batches += 1;
        if let (ReplayGuard::Local { seen, .. }, true) = (&mut guard, batches.is_multiple_of(1024))
        {
            let now = clock.now();
            seen.retain(|_, until| *until > now);
        }
    }
}

/// Grow a batch while requests keep arriving: take what is queued, let the tasks that are
/// about to commit run once, and stop when that brought nothing (or the batch is full, or 2 ms
/// have passed). Idle, this costs one yield; under load it turns many small commits into few.
async fn gather(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    let started = std::time::Instant::now();
    let mut events: usize = batch.iter().map(Job::events).sum();
    loop {
        while events < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.events();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if events >= MAX_BATCH || started.elapsed() > std::time::Duration::from_millis(2) {
            return;
        }
        tokio::task::yield_now().await;
        if rx.is_empty() {
            return;
        }
    }
}

/// Write the anchor owed for the newest head, if any (an idle log, or the committer stopping).
fn anchor_now(anchoring: &mut crate::anchor::Anchoring, kek: &Kek, sink: &mut AuditSink, now: i64) {
    if matches!(sink, AuditSink::Off) {
        return;
    }
    if let Some(line) = anchoring.take(kek, now)
        && let Err(e) = write_lines(sink, &[line])
    {
        tracing::error!(error = %e, "cannot write an audit anchor to the audit output");
    }
}

fn write_lines(sink: &mut AuditSink, lines: &[String]) -> std::io::Result<()> {
    fn put(w: &mut dyn Write, lines: &[String]) -> std::io::Result<()> {
        for l in lines {
            w.write_all(l.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }
    match sink {
        AuditSink::Off => Ok(()),
        AuditSink::Stdout => put(&mut std::io::stdout().lock(), lines),
        AuditSink::Stderr => put(&mut std::io::stderr().lock(), lines),
        AuditSink::File(f) => put(f, lines),
    }
}

/// The chain link of an event.
fn link(kek: &Kek, prev_hash: &str, seq: i64, body: &str) -> String {
    let mut data = Vec::with_capacity(prev_hash.len() + body.len() + 24);
    data.extend_from_slice(prev_hash.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(seq.to_string().as_bytes());
    data.push(b'\n');
    data.extend_from_slice(body.as_bytes());
    hex(&kek.audit_mac(&data))
}

/// Rows per multi-row INSERT at most (a power of two): well under SQLite's and PostgreSQL's
/// bind-parameter limits.
const ROWS_PER_INSERT: usize = 64;

/// Split rows into chunks whose sizes are powers of two up to [`ROWS_PER_INSERT`]: each table
/// then has at most seven statement shapes, which stay in the driver's prepared-statement cache.
/// (One shape per batch size thrashed that cache on PostgreSQL: every batch re-prepared and
/// re-described a statement with hundreds of parameters.)
fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
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
fn values_sql(backend: Backend, prefix: &str, cols: usize, rows: usize, suffix: &str) -> String {
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

/// Consume the batch's single-use keys in the shared table; returns, per item, which of its keys
/// was already used (earlier, or by an earlier item of this same batch), if any.
/// Record that `token` came from the JWT-SVID `svid`; revoke it at once if that JWT-SVID is
/// already revoked. Revocation ([`Store::revoke_svids`]) takes the audit head lock first, so
/// the two never interleave: either the link is seen by the revocation or the revocation by it.
async fn link_svid_token(
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

async fn consume_jtis(
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

/// One `audit_events` row, as inserted.
struct EventRow {
    seq: i64,
    ts: i64,
    kind: &'static str,
    jti: Option<String>,
    body: String,
    prev_hash: String,
    hash: String,
}

/// The batch's events chained from `(seq, prev)`: their rows, outcomes, JSON lines, and the new
/// head. Pure (no I/O): the fast and the general path share it.
struct Chained {
    rows: Vec<EventRow>,
    outcomes: Vec<CommitOutcome>,
    lines: Vec<String>,
    seq: i64,
    hash: String,
}

fn chain(
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

/// A key a batch consumed: (replay key, event time, keep until).
type Fresh = (u128, i64, i64);

/// Which items reuse a single-use key already seen (or seen earlier in this batch), from the
/// committer's map; and the keys the batch consumes, to remember once it is durable.
fn local_used(seen: &HashMap<u128, i64>, items: &[Pending]) -> (Vec<Option<Used>>, Vec<Fresh>) {
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
fn remember(seen: &mut HashMap<u128, i64>, fresh: Vec<Fresh>, window: i64) {
    for (k, ts, until) in fresh {
        seen.insert(k, until.max(ts + window));
    }
}

/// SQLite: write the batch's consumed one-time subject and actor tokens to `used_jti` too, so
/// that a restart remembers each until its own `exp` (the audit-log walk covers only the
/// assertion window). They are few (one per exchange of such a token), unlike assertion jtis.
async fn persist_subjects(
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
fn note_single_use(items: &mut [Pending]) {
    for p in items.iter_mut() {
        p.event.assertion_jti = p.consume_jti.as_ref().map(|(_, jti, _)| jti.clone());
        if let Some((iss, jti, _)) = &p.consume_subject {
            p.event.subject_issuer = Some(iss.clone());
            p.event.subject_jti = Some(jti.clone());
        }
    }
}

/// The SQL of a SQLite batch in one round trip to the driver's thread: the head advances only
/// if it is still what this committer last wrote (`seq`, `hash`), and each insert only if the
/// head now holds this batch's last hash (a sequence number alone could match a head that
/// another writer advanced by as many events). A head moved by another writer therefore
/// writes nothing, and the caller falls back to the general path, which reads the head under
/// its lock.
fn sqlite_batch_sql(rows: &[EventRow]) -> String {
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
    }
    s.push_str(" COMMIT;");
    s
}

/// The one-round-trip batch string is cached by the driver as a whole, so its shape must not
/// follow the batch size (up to [`MAX_BATCH`] shapes thrashed the statement cache and every
/// batch was parsed again). Rows therefore go in statements of a few fixed sizes, the last one
/// padded with NULL rows: a batch of up to [`ROWS_PER_INSERT`] in one statement of the next
/// power of two, a larger one in full statements of [`ROWS_PER_INSERT`]. Yields (rows, size).
fn padded_chunks<T>(rows: &[T]) -> impl Iterator<Item = (&[T], usize)> {
    let size = if rows.len() <= ROWS_PER_INSERT {
        rows.len().next_power_of_two()
    } else {
        ROWS_PER_INSERT
    };
    rows.chunks(size.max(1)).map(move |c| (c, size))
}

/// The insert of audit events, up to its `VALUES` list; [`bind_events`] binds a row's columns
/// in this order.
const INSERT_EVENTS: &str = "INSERT INTO audit_events (seq, ts, kind, jti, body, prev_hash, hash)";
const EVENT_COLUMNS: usize = 7;

/// Bind rows' columns, moving their strings in: the driver keeps an owned string as it is,
/// where a borrowed one would be copied (and allocated) once more per column.
fn bind_events<'q>(
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

/// SQLite's fast path: one statement string, one round trip, one fsync. `Ok(false)`: the head
/// was not where this committer left it, nothing was written.
async fn append_sqlite_fast(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    c: &mut Chained,
    head: &(i64, String),
    now: i64,
) -> Result<bool, StoreError> {
    let sql = sqlite_batch_sql(&c.rows);
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
    for (n, size) in shapes {
        q = bind_events(q, rows.by_ref().take(n));
        for _ in n..size {
            for _ in 0..EVENT_COLUMNS {
                q = q.bind(None::<i64>);
            }
        }
        q = q.bind(c.hash.as_str());
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

async fn append_batch(
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
        })
    {
        let (used, fresh) = local_used(seen, items);
        let mut c = chain(kek, items, &used, h.0, h.1.clone(), want_lines)?;
        if append_sqlite_fast(conn, &mut c, h, now).await? {
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

/// What a batch came to: one outcome per event, the JSON lines, and the chain's new head.
type Committed = (Vec<CommitOutcome>, Vec<String>, (i64, String));

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

fn row_event(r: &sqlx::any::AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: r.try_get("seq").map_err(db("read audit event"))?,
        body: r.try_get("body").map_err(db("read audit event"))?,
        prev_hash: r.try_get("prev_hash").map_err(db("read audit event"))?,
        hash: r.try_get("hash").map_err(db("read audit event"))?,
    })
}

#[cfg(test)]
mod chunk_tests {
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
