//! The committer task: gathers requests into batches and commits each in one transaction.

use std::sync::Arc;

use mayfly_crypto::Kek;
use mayfly_proto::Clock;
use tokio::sync::mpsc;

use crate::{Store, StoreError};

use super::replay::ReplayGuard;
use super::sink::{AuditSink, anchor_now, write_lines};
use super::sql::append_batch;
use super::{Job, Pending, Replier};

/// Longest an audit batch may take before its requests are refused (503) and the connection
/// is dropped. Well above a healthy commit (milliseconds), well below the request deadline.
pub(super) const BATCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest batch in one transaction.
pub(super) const MAX_BATCH: usize = 512;

pub(super) async fn committer(
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
pub(super) async fn gather(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
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
