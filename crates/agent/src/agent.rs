//! The agent core: keeps entries, bundle and X.509-SVIDs current, and serves them.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_proto::spiffe::{EntryWire, SyncResponse};
use mayfly_spiffe::Selector;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::attest::{self, AttestError, HashCache, Needs, Workload};
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::peer::PeerInfo;
use crate::procs::Processes;
use crate::state::{Bundle, Entry, Snapshot, Svid};
use crate::svid;
use crate::upstream::{DynUpstream, Upstream};

/// Renewal is never scheduled sooner than this after a signing, so a server that hands out
/// nearly expired certificates cannot make the agent spin.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The mayfly agent. Cheap to clone (all clones share one state).
///
/// Typical use: [`Agent::new`], then concurrently [`Agent::run`] (keeps entries, bundle and
/// SVIDs current), [`Agent::serve`] (the Workload API) and [`Agent::serve_http`] (the
/// `/v1/token` convenience endpoint).
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status();
        f.debug_struct("Agent").field("status", &status).finish()
    }
}

/// A summary of what the agent serves (for logs and health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// Whether a sync with the server has succeeded.
    pub synced: bool,
    /// Entries this agent serves.
    pub entries: usize,
    /// Entries with a current X.509-SVID.
    pub x509_svids: usize,
    /// The bundle's sequence number, once known.
    pub bundle_sequence: Option<u64>,
    /// Workload processes tracked for exit reporting.
    pub tracked_processes: usize,
}

pub(crate) struct Inner {
    pub config: AgentConfig,
    pub upstream: Box<dyn DynUpstream>,
    pub state: watch::Sender<Arc<Snapshot>>,
    generation: AtomicU64,
    /// Serialises syncs and renewals; holds per-entry retry times after failures.
    maint: tokio::sync::Mutex<Maint>,
    hashes: Mutex<HashCache>,
    pub procs: Mutex<Processes>,
}

#[derive(Default)]
struct Maint {
    /// Entry id -> (consecutive failures, earliest next attempt).
    retry: HashMap<String, (u32, Instant)>,
}

/// A caller attested against one snapshot.
pub(crate) struct Caller {
    pub workload: Workload,
    pub snapshot: Arc<Snapshot>,
    /// The entries it matches, in the server's order (never empty).
    pub entries: Vec<EntryWire>,
}

pub(crate) use crate::error::Refusal;

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

impl Agent {
    /// An agent that will serve what `upstream` says. Does no I/O: call [`Agent::sync_now`]
    /// or [`Agent::run`] to fetch entries.
    pub fn new<U: Upstream>(config: AgentConfig, upstream: U) -> Self {
        let hashes = Mutex::new(HashCache::new(config.max_hash_cache));
        let (state, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            inner: Arc::new(Inner {
                config,
                upstream: Box::new(upstream),
                state,
                generation: AtomicU64::new(1),
                maint: tokio::sync::Mutex::new(Maint::default()),
                hashes,
                procs: Mutex::new(Processes::default()),
            }),
        }
    }

    /// What the agent serves right now.
    pub fn status(&self) -> AgentStatus {
        let snap = self.inner.state.borrow().clone();
        AgentStatus {
            synced: snap.synced,
            entries: snap.entries.len(),
            x509_svids: snap.svids.len(),
            bundle_sequence: snap.bundle.as_ref().map(|b| b.wire.sequence),
            tracked_processes: self.inner.procs.lock().map_or(0, |p| p.len()),
        }
    }

    /// Sync with the server once (entries and bundle), then sign the X.509-SVIDs that are
    /// missing or due. Errors are the sync's; a failed signing is logged and retried later.
    pub async fn sync_now(&self) -> Result<(), AgentError> {
        let mut maint = self.inner.maint.lock().await;
        let resp = self.inner.upstream.sync().await?;
        self.inner.apply_sync(resp);
        self.inner.renew_due(&mut maint).await;
        Ok(())
    }

    /// Keep entries, bundle and X.509-SVIDs current until `shutdown` completes: sync every
    /// `sync_interval`, renew each SVID half-way through its lifetime, retry failures with
    /// backoff, and stop serving SVIDs that expired.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_sync = Instant::now();
        let mut sync_failures = 0u32;
        loop {
            let wake = {
                let maint = self.inner.maint.lock().await;
                self.inner
                    .next_wake(&maint)
                    .map_or(next_sync, |w| w.min(next_sync))
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            // A server that hangs does not delay shutdown; a step cut short publishes nothing.
            tokio::select! {
                () = &mut shutdown => return,
                () = self.step(&mut next_sync, &mut sync_failures) => {}
            }
        }
    }

    /// One pass of [`Agent::run`]: sync if it is time, then renew what is due.
    async fn step(&self, next_sync: &mut Instant, sync_failures: &mut u32) {
        let mut maint = self.inner.maint.lock().await;
        if Instant::now() >= *next_sync {
            match self.inner.upstream.sync().await {
                Ok(resp) => {
                    *sync_failures = 0;
                    self.inner.apply_sync(resp);
                    *next_sync = Instant::now() + self.inner.config.sync_interval;
                }
                Err(e) => {
                    *sync_failures = sync_failures.saturating_add(1);
                    let delay = backoff(*sync_failures);
                    tracing::warn!(error = %e, retry_in = ?delay,
                        "agent sync failed; serving what it has");
                    *next_sync = Instant::now() + delay;
                }
            }
        }
        self.inner.renew_due(&mut maint).await;
    }

    /// Serve the SPIFFE Workload API (gRPC) on a unix socket at `socket_path` until
    /// `shutdown` completes; the socket file is removed afterwards.
    pub async fn serve(
        &self,
        socket_path: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let listener = crate::peer::bind(socket_path)?;
        tracing::info!(socket = %socket_path.display(), "SPIFFE Workload API listening");
        let result = crate::workload_api::serve(self.inner.clone(), listener, shutdown).await;
        let _ = std::fs::remove_file(socket_path);
        result
    }

    /// Serve `GET /v1/token?audience=...&scope=...` on a unix socket at `socket_path` until
    /// `shutdown` completes: the attested caller's JWT-SVID exchanged at the server for an
    /// access token. The socket file is removed afterwards.
    pub async fn serve_http(
        &self,
        socket_path: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let listener = crate::peer::bind(socket_path)?;
        tracing::info!(socket = %socket_path.display(), "agent token endpoint listening");
        let result = crate::http::serve(self.inner.clone(), listener, shutdown).await;
        let _ = std::fs::remove_file(socket_path);
        result
    }
}

impl Inner {
    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Replace entries and bundle; drop SVIDs whose entry is gone or changed.
    fn apply_sync(&self, resp: SyncResponse) {
        let td_prefix = format!("spiffe://{}/", resp.bundle.trust_domain);
        let entries: Vec<Entry> = resp
            .entries
            .into_iter()
            .filter_map(|wire| {
                let selectors = match Selector::parse_all(&wire.selectors) {
                    Ok(s) if !s.is_empty() => s,
                    Ok(_) => {
                        tracing::warn!(entry = %wire.id, "ignoring an entry without selectors");
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(entry = %wire.id, error = %e, "ignoring an entry");
                        return None;
                    }
                };
                if !wire.spiffe_id.starts_with(&td_prefix) {
                    tracing::warn!(entry = %wire.id, spiffe_id = %wire.spiffe_id,
                        "ignoring an entry outside the trust domain");
                    return None;
                }
                Some(Entry { wire, selectors })
            })
            .collect();
        let current = self.state.borrow().clone();
        let bundle = match &current.bundle {
            Some(b) if b.wire == resp.bundle => b.clone(),
            _ => {
                tracing::info!(sequence = resp.bundle.sequence, "trust bundle updated");
                Arc::new(Bundle::from_wire(resp.bundle, self.next_generation()))
            }
        };
        let bundle_changed = !current
            .bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &bundle));
        let entries_changed = *current.entries != entries;
        if current.synced && !bundle_changed && !entries_changed {
            return;
        }
        let svids = current
            .svids
            .iter()
            .filter(|(id, svid)| {
                entries
                    .iter()
                    .any(|e| &e.wire.id == *id && svid.fits(&e.wire))
            })
            .map(|(id, svid)| (id.clone(), svid.clone()))
            .collect();
        let denied = current
            .denied
            .iter()
            .filter(|id| entries.iter().any(|e| &e.wire.id == *id))
            .cloned()
            .collect();
        let next = Snapshot {
            synced: true,
            needs: Needs::of(&entries),
            entries: Arc::new(entries),
            bundle: Some(bundle),
            svids,
            denied,
        };
        self.state.send_replace(Arc::new(next));
    }

    /// When the maintenance loop must next act: an SVID to sign or renew (not before its
    /// pending retry, if any), or one to drop because it expired.
    fn next_wake(&self, maint: &Maint) -> Option<Instant> {
        let snap = self.state.borrow().clone();
        let now = Instant::now();
        let now_unix = unix_now();
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for e in snap.entries.iter() {
            let svid = snap.svids.get(&e.wire.id);
            let due = svid.map_or(now, |s| s.renew_at);
            let retry = maint.retry.get(&e.wire.id).map(|(_, at)| *at);
            consider(retry.map_or(due, |r| r.max(due)));
            if let Some(s) = svid {
                let left = u64::try_from(s.expires_at - now_unix).unwrap_or(0);
                consider(now + Duration::from_secs(left));
            }
        }
        wake
    }

    /// Sign X.509-SVIDs that are missing or past their renewal time (unless a retry is
    /// pending), and drop expired ones.
    async fn renew_due(&self, maint: &mut Maint) {
        let snap = self.state.borrow().clone();
        let now = Instant::now();
        let now_unix = unix_now();
        let expired: Vec<String> = snap
            .svids
            .iter()
            .filter(|(_, s)| s.expires_at <= now_unix)
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                tracing::warn!(entry = %id, "X.509-SVID expired before it could be renewed");
            }
            self.state.send_modify(|s| {
                let s = Arc::make_mut(s);
                for id in &expired {
                    s.svids.remove(id);
                }
            });
        }
        maint
            .retry
            .retain(|id, _| snap.entries.iter().any(|e| &e.wire.id == id));
        for entry in snap.entries.iter().map(|e| &e.wire) {
            let due = snap
                .svids
                .get(&entry.id)
                .is_none_or(|s| s.renew_at <= now || s.expires_at <= now_unix);
            let waiting = maint.retry.get(&entry.id).is_some_and(|(_, at)| *at > now);
            if !due || waiting {
                continue;
            }
            match self.sign(entry).await {
                Ok(svid) => {
                    maint.retry.remove(&entry.id);
                    tracing::info!(entry = %entry.id, spiffe_id = %entry.spiffe_id,
                        serial = %svid.serial, expires_at = svid.expires_at, "X.509-SVID issued");
                    let svid = Arc::new(svid);
                    let id = entry.id.clone();
                    self.state.send_modify(|s| {
                        let s = Arc::make_mut(s);
                        // The entry may have changed while the server was signing.
                        if s.entries
                            .iter()
                            .any(|e| e.wire.id == id && svid.fits(&e.wire))
                        {
                            s.denied.remove(&id);
                            s.svids.insert(id, svid);
                        }
                    });
                }
                Err(e) => {
                    if matches!(&e, AgentError::Upstream(u) if u.is_denied()) {
                        // Policy now refuses this identity: stop serving the one it had.
                        let id = entry.id.clone();
                        self.state.send_modify(|s| {
                            let s = Arc::make_mut(s);
                            s.svids.remove(&id);
                            s.denied.insert(id);
                        });
                    }
                    let failures = maint.retry.get(&entry.id).map_or(0, |(n, _)| *n) + 1;
                    let delay = backoff(failures);
                    tracing::warn!(entry = %entry.id, error = %e, retry_in = ?delay,
                        "X.509-SVID signing failed");
                    maint
                        .retry
                        .insert(entry.id.clone(), (failures, Instant::now() + delay));
                }
            }
        }
    }

    async fn sign(&self, entry: &EntryWire) -> Result<Svid, AgentError> {
        let kc = svid::new_key_and_csr(&entry.spiffe_id)?;
        let resp = self.upstream.sign_x509(&entry.id, &kc.csr_der).await?;
        let issued = svid::check_issued(&entry.id, &entry.spiffe_id, &kc.public_key, &resp)?;
        let left_ms = u64::try_from(issued.expires_at - unix_now())
            .unwrap_or(0)
            .saturating_mul(1000);
        let renew_in = Duration::from_millis(left_ms / 2).max(MIN_RENEW_DELAY);
        Ok(Svid {
            entry: entry.clone(),
            generation: self.next_generation(),
            chain: issued.chain,
            key: kc.key_pkcs8,
            expires_at: issued.expires_at,
            serial: issued.serial,
            renew_at: Instant::now() + renew_in,
        })
    }

    /// Attest the peer against the current snapshot.
    pub(crate) async fn attest(self: &Arc<Self>, peer: &PeerInfo) -> Result<Caller, Refusal> {
        let snapshot = self.state.borrow().clone();
        self.attest_with(peer, snapshot).await
    }

    /// Attest the peer against `snapshot` (streams pass the one they are about to send).
    pub(crate) async fn attest_with(
        self: &Arc<Self>,
        peer: &PeerInfo,
        snapshot: Arc<Snapshot>,
    ) -> Result<Caller, Refusal> {
        if !snapshot.synced {
            return Err(Refusal::NotReady);
        }
        let needs = snapshot.needs;
        let peer = peer.0.clone();
        // Reading /proc and hashing executables blocks.
        let inner = self.clone();
        let workload = tokio::task::spawn_blocking(move || {
            attest::attest(peer.as_deref(), needs, &inner.hashes)
        })
        .await
        .map_err(|_| Refusal::Denied)?;
        let workload = workload.map_err(|e: AttestError| {
            if e.suspicious() {
                tracing::warn!(reason = %e, "workload attestation refused");
            } else {
                tracing::info!(reason = %e, "workload attestation failed");
            }
            Refusal::Denied
        })?;
        let entries: Vec<EntryWire> = snapshot
            .entries
            .iter()
            .filter(|e| mayfly_spiffe::matches(&e.selectors, &workload.selectors))
            .map(|e| e.wire.clone())
            .collect();
        if entries.is_empty() {
            tracing::info!(pid = workload.pid, selectors = ?workload.selectors,
                "no entry matches the workload");
            return Err(Refusal::Denied);
        }
        Ok(Caller {
            workload,
            snapshot,
            entries,
        })
    }
}
