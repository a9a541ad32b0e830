//! Audit events for proxied calls, gathered for a few milliseconds and committed together off
//! the request path (bounded), and per-identity key usage aggregated in memory and flushed to
//! the store every `reload_interval`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_proto::AuditEvent;
use mayfly_store::{AuditLog, DebtUsage, Pending, Store};
use tokio::sync::{Notify, Semaphore};

/// Events queued or being committed at most; beyond this, new calls wait for the log
/// (back-pressure).
const MAX_INFLIGHT: u32 = 8192;

/// How long the first event of a batch waits for others. A call's event was never committed
/// before its response (the caller does not wait for it), so this only widens by a few
/// milliseconds the window a crash can lose; in exchange one group commit (an fsync and the
/// write-ahead log's fixed cost) serves every call of that window instead of a handful.
const LINGER: Duration = Duration::from_millis(5);

/// Commits events without making the caller's response wait for durability.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queued: Mutex<Vec<AuditEvent>>,
    /// Held by the flusher too, which otherwise holds `Shared` only weakly between batches.
    wake: Arc<Notify>,
    /// One permit per event not yet durable is taken (and forgotten) by `record` and given
    /// back by the flusher once the event is committed (or has failed).
    permits: Semaphore,
}

impl AuditQueue {
    /// Over a started audit log; starts the flusher on the current tokio runtime.
    pub fn new(log: AuditLog) -> Self {
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            queued: Mutex::new(Vec::new()),
            wake: wake.clone(),
            permits: Semaphore::new(MAX_INFLIGHT as usize),
        });
        tokio::spawn(flusher(Arc::downgrade(&shared), wake, log));
        Self { shared }
    }

    /// Hand an event to the log; returns once it is queued (waits only when
    /// [`MAX_INFLIGHT`] events are still uncommitted).
    pub async fn record(&self, e: AuditEvent) {
        let s = &self.shared;
        match s.permits.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => match s.permits.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => {
                    tracing::error!("audit queue closed; event not recorded");
                    return;
                }
            },
        }
        let first = match s.queued.lock() {
            Ok(mut q) => {
                q.push(e);
                q.len() == 1
            }
            Err(_) => {
                tracing::error!("audit queue poisoned; event not recorded");
                s.permits.add_permits(1);
                return;
            }
        };
        // The flusher takes the whole queue each time, so only the first event of a batch
        // needs to wake it (a wake-up while it commits is kept for its next turn).
        if first {
            s.wake.notify_one();
        }
    }

    /// Wait (at most `deadline`) until every queued event is durable.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.shared.permits.acquire_many(MAX_INFLIGHT))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Shared {
    /// The last handle is gone: wake the flusher so that it sees it and ends.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Commit what the proxy queued, one batch per wake-up, until the proxy is gone.
async fn flusher(shared: std::sync::Weak<Shared>, wake: Arc<Notify>, log: AuditLog) {
    loop {
        // A `record` while this task commits is not lost: `notify_one` keeps its wake-up.
        wake.notified().await;
        let Some(s) = shared.upgrade() else { return };
        tokio::time::sleep(LINGER).await;
        let batch = match s.queued.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let mut errors = log
            .commit_all(batch.into_iter().map(Pending::event))
            .await
            .into_iter()
            .filter_map(Result::err);
        // One line per batch, not per event: a store that is down must not flood the log.
        if let Some(first) = errors.next() {
            let failed = 1 + errors.count();
            metrics::counter!("mayfly_proxy_audit_failures_total").increment(failed as u64);
            tracing::error!(error = %first, events = failed, "cannot append proxy calls to the audit log");
        }
        s.permits.add_permits(n);
    }
}

/// Key usage since the last flush, per entry, then per identity (looked up by `&str`, so a
/// call allocates only the first time an identity uses an entry's key).
#[derive(Debug, Default)]
pub struct Usage {
    map: Mutex<HashMap<String, HashMap<String, DebtUsage>>>,
}

impl Usage {
    /// One call by `identity` with `entry`'s key.
    pub fn record(&self, entry: &str, identity: &str, now: i64) {
        let Ok(mut m) = self.map.lock() else {
            return;
        };
        if let Some(u) = m.get_mut(entry).and_then(|ids| ids.get_mut(identity)) {
            u.calls += 1;
            u.last_used_at = u.last_used_at.max(now);
            return;
        }
        Self::merge(
            &mut m,
            DebtUsage {
                name: entry.to_string(),
                identity: identity.to_string(),
                first_used_at: now,
                last_used_at: now,
                calls: 1,
            },
        );
    }

    fn merge(m: &mut HashMap<String, HashMap<String, DebtUsage>>, u: DebtUsage) {
        let ids = m.entry(u.name.clone()).or_default();
        match ids.get_mut(&u.identity) {
            Some(cur) => {
                cur.calls += u.calls;
                cur.first_used_at = cur.first_used_at.min(u.first_used_at);
                cur.last_used_at = cur.last_used_at.max(u.last_used_at);
            }
            None => {
                ids.insert(u.identity.clone(), u);
            }
        }
    }

    /// Write what was gathered; on failure keep it for the next flush.
    pub async fn flush(&self, store: &Store) {
        let taken: Vec<DebtUsage> = match self.map.lock() {
            Ok(mut m) => m.drain().flat_map(|(_, ids)| ids.into_values()).collect(),
            Err(_) => return,
        };
        if taken.is_empty() {
            return;
        }
        if let Err(e) = store.record_debt_usage(&taken).await {
            tracing::warn!(error = %e, "cannot record key usage; will retry");
            if let Ok(mut m) = self.map.lock() {
                for u in taken {
                    Self::merge(&mut m, u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mayfly_crypto::Kek;
    use mayfly_proto::{AuditEvent, Decision, EventKind};
    use mayfly_store::{AuditSink, Store};

    use super::*;

    async fn log(dir: &std::path::Path) -> (Store, Arc<Kek>, AuditLog) {
        let store = Store::open_sqlite(&dir.join("m.db")).await.unwrap();
        let kek = Arc::new(Kek::from_bytes(&[7u8; 32]).unwrap());
        let log = AuditLog::start(
            store.clone(),
            kek.clone(),
            AuditSink::Off,
            0,
            Arc::new(mayfly_proto::SystemClock),
        );
        (store, kek, log)
    }

    fn call(i: usize) -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::ProxyCall, 1_800_000_000, Decision::Allow);
        e.route = Some(format!("r{i}"));
        e
    }

    /// Events recorded from many tasks at once are all committed, once each and in one valid
    /// chain, by the time `drain` returns.
    #[tokio::test]
    async fn every_recorded_event_is_durable_after_drain() {
        let dir = tempfile::tempdir().unwrap();
        let (store, kek, log) = log(dir.path()).await;
        let q = AuditQueue::new(log);
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.record(call(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(q.drain(Duration::from_secs(10)).await);
        let events = store.audit_tail(1000).await.unwrap();
        assert_eq!(events.len(), 500);
        let mut routes: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["route"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        routes.sort();
        routes.dedup();
        assert_eq!(routes.len(), 500, "each event once");
        let report = store.audit_verify(&kek).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.events, 500);
        // The queue can be drained again (permits came back), and later events still commit.
        q.record(call(500)).await;
        assert!(q.drain(Duration::from_secs(10)).await);
        assert_eq!(store.audit_tail(1000).await.unwrap().len(), 501);
    }

    /// Dropping the last handle ends the flusher (no task left behind per proxy).
    #[tokio::test]
    async fn the_flusher_ends_with_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _kek, log) = log(dir.path()).await;
        let q = AuditQueue::new(log);
        let weak = Arc::downgrade(&q.shared);
        q.record(call(0)).await;
        assert!(q.drain(Duration::from_secs(10)).await);
        drop(q);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn usage_is_counted_per_entry_and_identity() {
        let u = Usage::default();
        u.record("stripe", "spiffe://a", 10);
        u.record("stripe", "spiffe://a", 12);
        u.record("stripe", "spiffe://b", 11);
        u.record("github", "spiffe://a", 9);
        let m = u.map.lock().unwrap();
        let a = &m["stripe"]["spiffe://a"];
        assert_eq!((a.calls, a.first_used_at, a.last_used_at), (2, 10, 12));
        assert_eq!(m["stripe"]["spiffe://b"].calls, 1);
        assert_eq!(m["github"]["spiffe://a"].calls, 1);
        assert_eq!(m.values().map(HashMap::len).sum::<usize>(), 3);
    }
}
