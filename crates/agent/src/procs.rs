//! Workload processes that hold JWT-SVIDs: their JWT-SVID cache, the `jti`s they were given,
//! and a pidfd watch that reports their exit to the server, which revokes what was derived
//! from those JWT-SVIDs.
//!
//! Only processes that were given a JWT-SVID are tracked (an X.509-SVID is per entry and
//! shared, and is not revoked per process). The number of tracked processes is bounded: when
//! full, a new process is refused JWT-SVIDs rather than given ones whose exit could not be
//! reported.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use mayfly_proto::spiffe::{EntryWire, WorkloadExitedRequest};
use tokio::time::Instant;

use crate::agent::{Inner, unix_now};
use crate::attest::{self, Workload};
use crate::upstream::UpstreamError;

/// One process: a pid and its start time (a pid alone may be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProcKey {
    pub pid: i32,
    pub start_time: u64,
}

struct Cached {
    token: String,
    reuse_until: Instant,
}

#[derive(Default)]
struct Proc {
    spiffe_ids: BTreeSet<String>,
    /// (jti, expiry in unix seconds).
    jtis: Vec<(String, i64)>,
    /// By (entry id, sorted audiences).
    cache: HashMap<(String, Vec<String>), Cached>,
}

/// Tracked processes.
#[derive(Default)]
pub(crate) struct Processes {
    map: HashMap<ProcKey, Proc>,
}

impl Processes {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Why a JWT-SVID was not handed out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("too many workload processes hold JWT-SVIDs from this agent")]
    TooManyProcesses,
    #[error("this process holds too many JWT-SVIDs")]
    TooManyJtis,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("agent state is unavailable")]
    Poisoned,
}

impl Inner {
    /// A JWT-SVID for `entry` and `audience` (non-empty) for this workload: from the cache
    /// until half its lifetime has passed, else minted by the server and its `jti` recorded.
    pub(crate) async fn jwt_svid(
        self: &Arc<Self>,
        workload: &Workload,
        entry: &EntryWire,
        audience: &[String],
    ) -> Result<String, JwtError> {
        let mut audience = audience.to_vec();
        audience.sort();
        audience.dedup();
        let key = ProcKey {
            pid: workload.pid,
            start_time: workload.start_time,
        };
        let cache_key = (entry.id.clone(), audience);
        let now = Instant::now();
        let new_process = {
            let mut procs = self.procs.lock().map_err(|_| JwtError::Poisoned)?;
            let new_process = !procs.map.contains_key(&key);
            if new_process && procs.map.len() >= self.config.max_processes {
                return Err(JwtError::TooManyProcesses);
            }
            let proc = procs.map.entry(key).or_default();
            if let Some(hit) = proc.cache.get(&cache_key)
                && hit.reuse_until > now
            {
                return Ok(hit.token.clone());
            }
            let retention = i64::try_from(self.config.jti_retention.as_secs()).unwrap_or(0);
            let horizon = unix_now().saturating_sub(retention);
            proc.jtis.retain(|(_, exp)| *exp > horizon);
            if proc.jtis.len() >= self.config.max_jtis_per_process {
                return Err(JwtError::TooManyJtis);
            }
            new_process
        };
        if new_process {
            // Watch from the first JWT-SVID on, so its exit is reported even if it comes
            // while the server is still minting.
            tokio::spawn(watch_exit(Arc::downgrade(self), key));
        }
        let minted = self.upstream.mint_jwt(&entry.id, &cache_key.1).await?;
        tracing::info!(pid = key.pid, spiffe_id = %entry.spiffe_id, jti = %minted.jti,
            expires_at = minted.expires_at, "JWT-SVID issued");
        let left_ms = u64::try_from(minted.expires_at - unix_now())
            .unwrap_or(0)
            .saturating_mul(1000);
        let reuse_until = Instant::now() + Duration::from_millis(left_ms / 2);
        let orphan = {
            let mut procs = self.procs.lock().map_err(|_| JwtError::Poisoned)?;
            match procs.map.get_mut(&key) {
                Some(proc) => {
                    proc.jtis.push((minted.jti.clone(), minted.expires_at));
                    proc.spiffe_ids.insert(entry.spiffe_id.clone());
                    let max = self.config.max_cached_jwts_per_process.max(1);
                    if proc.cache.len() >= max && !proc.cache.contains_key(&cache_key) {
                        let stalest = proc
                            .cache
                            .iter()
                            .min_by_key(|(_, c)| c.reuse_until)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = stalest {
                            proc.cache.remove(&k);
                        }
                    }
                    proc.cache.insert(
                        cache_key,
                        Cached {
                            token: minted.token.clone(),
                            reuse_until,
                        },
                    );
                    false
                }
                // The process exited (and was reported) while the server was minting.
                None => true,
            }
        };
        if orphan {
            let request = WorkloadExitedRequest {
                pid: u32::try_from(key.pid).unwrap_or(0),
                spiffe_ids: vec![entry.spiffe_id.clone()],
                jwt_svid_jtis: vec![minted.jti.clone()],
            };
            tokio::spawn(report_exit(Arc::downgrade(self), request));
        }
        Ok(minted.token)
    }

    /// The process is gone: forget it and report what it held.
    async fn process_exited(self: &Arc<Self>, key: ProcKey) {
        let proc = match self.procs.lock() {
            Ok(mut procs) => procs.map.remove(&key),
            Err(_) => None,
        };
        let Some(proc) = proc else { return };
        tracing::debug!(
            pid = key.pid,
            jtis = proc.jtis.len(),
            "workload process exited"
        );
        if proc.jtis.is_empty() {
            return;
        }
        let request = WorkloadExitedRequest {
            pid: u32::try_from(key.pid).unwrap_or(0),
            spiffe_ids: proc.spiffe_ids.into_iter().collect(),
            jwt_svid_jtis: proc.jtis.into_iter().map(|(jti, _)| jti).collect(),
        };
        report_exit(Arc::downgrade(self), request).await;
    }
}

/// Tell the server, retrying a few times (revocation matters more than promptness).
async fn report_exit(inner: Weak<Inner>, request: WorkloadExitedRequest) {
    for attempt in 0u32..5 {
        let Some(agent) = inner.upgrade() else { return };
        match agent.upstream.workload_exited(request.clone()).await {
            Ok(resp) => {
                tracing::info!(
                    pid = request.pid,
                    jtis = request.jwt_svid_jtis.len(),
                    revoked_tokens = resp.revoked_tokens,
                    "workload exit reported"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(pid = request.pid, error = %e, attempt,
                    "reporting a workload exit failed");
            }
        }
        drop(agent);
        tokio::time::sleep(Duration::from_secs(1u64 << attempt)).await;
    }
    tracing::error!(pid = request.pid, jtis = ?request.jwt_svid_jtis,
        "could not report a workload exit; its JWT-SVIDs stay valid until they expire");
}

/// Wait until the process `key` exits, then report it.
async fn watch_exit(inner: Weak<Inner>, key: ProcKey) {
    wait_exit(key).await;
    if let Some(agent) = inner.upgrade() {
        agent.process_exited(key).await;
    }
}

/// Wait for the exit through a pidfd. The pidfd is opened by pid, so the start time is read
/// again after opening it: if it differs from the attested one, the pid was reused and the
/// attested process is already gone.
async fn wait_exit(key: ProcKey) {
    let Some(pid) = rustix::process::Pid::from_raw(key.pid) else {
        return;
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => {
            tracing::debug!(error = %e, "pidfd_open failed; polling /proc instead");
            return poll_exit(key).await;
        }
    };
    if attest::start_time(key.pid) != Some(key.start_time) {
        return;
    }
    // `with_interest` is deprecated (tokio#8587) because an arbitrary `AsRawFd` type might
    // change or close its fd while registered; an `OwnedFd` owns its fd for its whole life, so
    // it meets the contract of the `unsafe` replacement, which this crate forbids.
    #[allow(deprecated, reason = "sound for OwnedFd; the replacement is unsafe")]
    let registered = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
    match registered {
        // A pidfd becomes readable when the process exits.
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot poll a pidfd; polling /proc instead");
            poll_exit(key).await;
        }
    }
}

/// Fallback for kernels without pidfd: look at `/proc` every second.
async fn poll_exit(key: ProcKey) {
    while attest::alive(key.pid, key.start_time) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
