//! The policy set in force, as the engine's [`Authorizer`]. Every issuance decision goes through
//! it; the clients' `audiences`/`scopes` lists are sugar compiled into the same set.
//!
//! Reloads (on a change in the directory, a change in the registered clients, or SIGHUP) build
//! and validate a whole new set first; one that fails is refused whole, the previous set stays
//! in force, and the failure is logged loudly and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mayfly_policy::{ClientGrant, PolicyEngine, PolicyError, PolicyRequest};
use mayfly_sts::{Authorizer, AuthzDecision, AuthzQuery, Client, PrincipalKind};

/// What the running set was built from, to tell whether a reload has anything to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stamp {
    files: Vec<(String, u64, std::time::SystemTime)>,
    clients: Vec<ClientGrant>,
}

/// What a reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reload {
    /// Nothing changed since the last reload: nothing was built.
    Unchanged,
    /// A new set is in force: its fingerprint (SHA-256 over the schema, the files and the
    /// clients' generated policies).
    Applied(String),
    /// The new set was invalid and refused; the previous one stays (the error is logged).
    Refused,
}

/// The policy set in force.
pub(crate) struct Policies {
    engine: RwLock<Arc<PolicyEngine>>,
    dir: Option<PathBuf>,
    stamp: Mutex<Stamp>,
}

/// The sugar inputs: every client with its lists.
pub(crate) fn grants<'a>(clients: impl IntoIterator<Item = &'a Client>) -> Vec<ClientGrant> {
    let mut g: Vec<ClientGrant> = clients
        .into_iter()
        .map(|c| ClientGrant {
            client_id: c.id.clone(),
            audiences: c.audiences.clone(),
            scopes: c.scopes.clone(),
        })
        .collect();
    g.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    g
}

fn dir_stamp(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                v.push((
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                ));
            }
        }
    }
    v.sort();
    v
}

fn build(dir: Option<&Path>, clients: &[ClientGrant]) -> Result<PolicyEngine, PolicyError> {
    match dir {
        Some(d) => PolicyEngine::load_dir(d, clients),
        None => PolicyEngine::sugar_only(clients),
    }
}

impl Policies {
    /// Load the set at start; an invalid set is a start-up error.
    pub(crate) fn load(
        dir: Option<PathBuf>,
        clients: Vec<ClientGrant>,
    ) -> Result<Self, PolicyError> {
        let stamp = Stamp {
            files: dir.as_deref().map(dir_stamp).unwrap_or_default(),
            clients,
        };
        let engine = build(dir.as_deref(), &stamp.clients)?;
        tracing::info!(policies = engine.policy_ids().len(), fingerprint = %engine.fingerprint(), dir = ?dir, "policy set loaded");
        Ok(Self {
            engine: RwLock::new(Arc::new(engine)),
            dir,
            stamp: Mutex::new(stamp),
        })
    }

    /// Reload when the directory or the clients changed (or always, with `force`). A failing
    /// set leaves the old one in place. Each change is acted on once: a set left invalid is
    /// refused (and reported) once, not at every tick.
    pub(crate) fn reload(&self, clients: Vec<ClientGrant>, force: bool) -> Reload {
        let files = self.dir.as_deref().map(dir_stamp).unwrap_or_default();
        let next = Stamp { files, clients };
        let Ok(mut stamp) = self.stamp.lock() else {
            return Reload::Unchanged;
        };
        if !force && *stamp == next {
            return Reload::Unchanged;
        }
        let result = build(self.dir.as_deref(), &next.clients);
        *stamp = next;
        match result {
            Ok(engine) => {
                let fingerprint = engine.fingerprint();
                tracing::info!(policies = engine.policy_ids().len(), fingerprint = %fingerprint, "policy set reloaded");
                metrics::counter!("mayfly_policy_reloads_total", "result" => "ok").increment(1);
                if let Ok(mut e) = self.engine.write() {
                    *e = Arc::new(engine);
                }
                Reload::Applied(fingerprint)
            }
            Err(e) => {
                tracing::error!(error = %e, "POLICY RELOAD REFUSED: the new policy set is invalid; the previous set stays in force");
                metrics::counter!("mayfly_policy_reloads_total", "result" => "refused")
                    .increment(1);
                Reload::Refused
            }
        }
    }

    fn current(&self) -> Arc<PolicyEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Authorizer for Policies {
    fn authorize(&self, q: &AuthzQuery<'_>) -> AuthzDecision {
        let attrs: Vec<(&str, &str)> = q
            .principal
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let d = self.current().decide(&PolicyRequest {
            principal_kind: match q.principal.kind {
                PrincipalKind::Client => mayfly_policy::PrincipalKind::Client,
                PrincipalKind::Workload => mayfly_policy::PrincipalKind::Workload,
            },
            principal_id: q.principal.id,
            attrs: &attrs,
            action: q.action,
            audience: q.audience,
            grant_type: q.grant_type,
            requested_ttl: q.requested_ttl,
            source: q.source,
            now: q.now,
            client_id: q.client_id,
            actor: q.actor,
        });
        if !d.errors.is_empty() {
            tracing::warn!(errors = ?d.errors, action = q.action, "policy evaluation errors (counted as deny)");
        }
        AuthzDecision {
            allow: d.allow,
            policies: d.policies,
            max_ttl: d.max_ttl,
        }
    }
}
