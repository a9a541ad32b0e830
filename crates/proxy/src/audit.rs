//! Audit events for proxied calls, committed off the request path (bounded), and per-identity
//! key usage aggregated in memory and flushed to the store every `reload_interval`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_store::{AuditLog, DebtUsage, Pending, Store};
use mayfly_sts::AuditEvent;
use tokio::sync::Semaphore;

/// Events being committed at most; beyond this, new calls wait for the log (back-pressure).
const MAX_INFLIGHT: u32 = 8192;

/// Commits events without making the caller's response wait for durability.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    log: AuditLog,
    permits: Arc<Semaphore>,
}

impl AuditQueue {
    /// Over a started audit log.
    pub fn new(log: AuditLog) -> Self {
        Self {
            log,
            permits: Arc::new(Semaphore::new(MAX_INFLIGHT as usize)),
        }
    }

    /// Hand an event to the log; returns once it is queued (waits only when
    /// [`MAX_INFLIGHT`] events are still being committed).
    pub async fn record(&self, e: AuditEvent) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match self.permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => {
                    tracing::error!("audit queue closed; event not recorded");
                    return;
                }
            },
        };
        let log = self.log.clone();
        tokio::spawn(async move {
            if let Err(err) = log.commit(Pending::event(e)).await {
                metrics::counter!("mayfly_proxy_audit_failures_total").increment(1);
                tracing::error!(error = %err, "cannot append a proxy call to the audit log");
            }
            drop(permit);
        });
    }

    /// Wait (at most `deadline`) until every queued event is durable.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.permits.acquire_many(MAX_INFLIGHT))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Key usage since the last flush, per (entry, identity).
#[derive(Debug, Default)]
pub struct Usage {
    map: Mutex<HashMap<(String, String), DebtUsage>>,
}

impl Usage {
    /// One call by `identity` with `entry`'s key.
    pub fn record(&self, entry: &str, identity: &str, now: i64) {
        let Ok(mut m) = self.map.lock() else {
            return;
        };
        if let Some(u) = m.get_mut(&(entry.to_string(), identity.to_string())) {
            u.calls += 1;
            u.last_used_at = u.last_used_at.max(now);
            return;
        }
        m.insert(
            (entry.to_string(), identity.to_string()),
            DebtUsage {
                name: entry.to_string(),
                identity: identity.to_string(),
                first_used_at: now,
                last_used_at: now,
                calls: 1,
            },
        );
    }

    /// Write what was gathered; on failure keep it for the next flush.
    pub async fn flush(&self, store: &Store) {
        let taken: Vec<DebtUsage> = match self.map.lock() {
            Ok(mut m) => m.drain().map(|(_, u)| u).collect(),
            Err(_) => return,
        };
        if taken.is_empty() {
            return;
        }
        if let Err(e) = store.record_debt_usage(&taken).await {
            tracing::warn!(error = %e, "cannot record key usage; will retry");
            if let Ok(mut m) = self.map.lock() {
                for u in taken {
                    let k = (u.name.clone(), u.identity.clone());
                    match m.get_mut(&k) {
                        Some(cur) => {
                            cur.calls += u.calls;
                            cur.first_used_at = cur.first_used_at.min(u.first_used_at);
                            cur.last_used_at = cur.last_used_at.max(u.last_used_at);
                        }
                        None => {
                            m.insert(k, u);
                        }
                    }
                }
            }
        }
    }
}
