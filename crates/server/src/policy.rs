//! The policy set in force, as the engine's [`Authorizer`]. Every issuance decision goes through
//! it, SVIDs included; the clients' `audiences`/`scopes` lists and the registration entries are
//! sugar compiled into the same set.
//!
//! Reloads (on a change in the directory, in the registered clients or entries, or SIGHUP) build
//! and validate a whole new set first; one that fails is refused whole, the previous set stays
//! in force, and the failure is logged loudly and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mayfly_policy::{ClientGrant, EntryGrant, PolicyEngine, PolicyError, PolicyInputs};
use mayfly_sts::{Authorizer, AuthzDecision, AuthzQuery, Client};

/// What the running set was built from, to tell whether a reload has anything to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stamp {
    /// SHA-256 over the directory's schema and policy texts (or over the read error).
    files: [u8; 32],
    clients: Vec<ClientGrant>,
    entries: Vec<EntryGrant>,
}

/// The reload bookkeeping: the inputs of the set in force, and a changed directory text read
/// once and waiting for a second read that agrees.
#[derive(Debug, Default)]
struct Seen {
    built: Stamp,
    pending: Option<[u8; 32]>,
}

/// What a reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reload {
    /// Nothing changed since the last reload, or the directory changed and has not yet read
    /// the same twice in a row: nothing was built.
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
    seen: Mutex<Seen>,
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

/// The sugar inputs of the registration entries (sorted, so that order does not count as a
/// change).
pub(crate) fn entry_grants(entries: &[mayfly_store::StoredEntry]) -> Vec<EntryGrant> {
    let mut g: Vec<EntryGrant> = entries
        .iter()
        .map(|e| EntryGrant {
            entry_id: e.id.clone(),
            spiffe_id: e.spiffe_id.clone(),
        })
        .collect();
    g.sort();
    g
}

/// The directory's texts as read now (`None` without a directory), and their digest. A read
/// error has a digest of its own, so that a directory that stays unreadable is reported once.
type Sources = Result<(String, Vec<(String, String)>), PolicyError>;

fn read(dir: Option<&Path>) -> (Option<Sources>, [u8; 32]) {
    let Some(dir) = dir else {
        return (None, [0; 32]);
    };
    let sources = PolicyEngine::read_dir(dir);
    let mut text = Vec::new();
    match &sources {
        Ok((schema, files)) => {
            // Lengths first, so that moving text between files changes the digest.
            for part in std::iter::once(("", schema.as_str()))
                .chain(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
            {
                text.extend_from_slice(
                    format!("{}:{}:{}\n", part.0.len(), part.1.len(), part.0).as_bytes(),
                );
                text.extend_from_slice(part.1.as_bytes());
            }
        }
        Err(e) => text.extend_from_slice(format!("error: {e}").as_bytes()),
    }
    (Some(sources), mayfly_crypto::sha256(&text))
}

fn build(sources: Option<Sources>, stamp: &Stamp) -> Result<PolicyEngine, PolicyError> {
    let inputs = PolicyInputs {
        clients: &stamp.clients,
        entries: &stamp.entries,
        ..PolicyInputs::default()
    };
    match sources {
        Some(read) => {
            let (schema, files) = read?;
            PolicyEngine::from_inputs(PolicyInputs {
                schema: Some(&schema),
                files: &files,
                ..inputs
            })
        }
        None => PolicyEngine::from_inputs(inputs),
    }
}

impl Policies {
    /// Load the set at start; an invalid set is a start-up error.
    pub(crate) fn load(
        dir: Option<PathBuf>,
        clients: Vec<ClientGrant>,
        entries: Vec<EntryGrant>,
    ) -> Result<Self, PolicyError> {
        let (sources, files) = read(dir.as_deref());
        let built = Stamp {
            files,
            clients,
            entries,
        };
        let engine = build(sources, &built)?;
        tracing::info!(policies = engine.policy_ids().len(), fingerprint = %engine.fingerprint(), dir = ?dir, "policy set loaded");
        Ok(Self {
            engine: RwLock::new(Arc::new(engine)),
            dir,
            seen: Mutex::new(Seen {
                built,
                pending: None,
            }),
        })
    }

    /// Reload when the directory, the clients or the entries changed (or always, with
    /// `force`); `entries: None` keeps the entries of the set in force. A failing
    /// set leaves the old one in place. Each change is acted on once: a set left invalid is
    /// refused (and reported) once, not at every tick.
    ///
    /// A changed directory is acted on only when two reads in a row agree: a file rewritten in
    /// place can be caught half-written, and half a policy (its `forbid`s cut off) can allow
    /// more than the whole one. Periodic reloads compare with the previous tick's read; a
    /// forced one (SIGHUP) reads again once the set is built, and waits for the next tick if
    /// the text moved in between.
    pub(crate) fn reload(
        &self,
        clients: Vec<ClientGrant>,
        entries: Option<Vec<EntryGrant>>,
        force: bool,
    ) -> Reload {
        let Ok(mut seen) = self.seen.lock() else {
            return Reload::Unchanged;
        };
        let (sources, files) = read(self.dir.as_deref());
        let entries = entries.unwrap_or_else(|| seen.built.entries.clone());
        let next = Stamp {
            files,
            clients,
            entries,
        };
        if !force && seen.built == next {
            seen.pending = None;
            return Reload::Unchanged;
        }
        let moved = next.files != seen.built.files;
        if moved && !force && seen.pending.replace(files) != Some(files) {
            tracing::info!("the policy directory changed; it applies once a second read agrees");
            return Reload::Unchanged;
        }
        let result = build(sources, &next);
        if moved && force {
            let (_, again) = read(self.dir.as_deref());
            if again != files {
                seen.pending = Some(again);
                tracing::warn!(
                    "the policy directory changed while it was read; not applied, retried at the next tick"
                );
                return Reload::Unchanged;
            }
        }
        seen.built = next;
        seen.pending = None;
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

    /// Whether the set in force has the generated permit of entry `id` (a new entry is not in
    /// it until the next reload).
    pub(crate) fn knows_entry(&self, id: &str) -> bool {
        self.current().policy(&format!("entry:{id}")).is_some()
    }

    fn current(&self) -> Arc<PolicyEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The set in force decides; evaluation errors (each a deny) are logged here.
impl Authorizer for Policies {
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
        let (d, errors) = self.current().authorize_reporting(q, trace);
        if !errors.is_empty() {
            tracing::warn!(errors = ?errors, action = q.action, "policy evaluation errors (counted as deny)");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../../conf/policies/schema.cedarschema");
    const PERMIT: &str =
        "@id(\"read-all\")\npermit (principal, action == Action::\"token\", resource);\n";
    const FORBID: &str = "@id(\"no-admin\")\nforbid (principal, action == Action::\"token\", resource == Audience::\"https://admin.example\");\n";

    fn ids(p: &Policies) -> Vec<String> {
        p.current().policy_ids()
    }

    /// A policy file caught half-written (its `forbid` not yet there) is not taken: a change
    /// applies only once two reads in a row agree, at the tick and on SIGHUP alike.
    #[test]
    fn a_half_written_policy_file_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
        let file = dir.path().join("rules.cedar");
        std::fs::write(&file, format!("{PERMIT}{FORBID}")).unwrap();
        let p = Policies::load(Some(dir.path().to_path_buf()), Vec::new(), Vec::new()).unwrap();
        assert!(ids(&p).contains(&"no-admin".to_string()));

        // The writer truncated the file and has written only the permit so far: a valid set
        // that allows more. The first read of it changes nothing.
        std::fs::write(&file, PERMIT).unwrap();
        assert_eq!(p.reload(Vec::new(), None, false), Reload::Unchanged);
        assert!(ids(&p).contains(&"no-admin".to_string()));
        // The write completes (with an edit) before the next tick: that text is new again.
        let edited = format!("{PERMIT}{FORBID}// reviewed\n");
        std::fs::write(&file, &edited).unwrap();
        assert_eq!(p.reload(Vec::new(), None, false), Reload::Unchanged);
        assert!(ids(&p).contains(&"no-admin".to_string()));
        // A second read agrees: it applies.
        assert!(matches!(
            p.reload(Vec::new(), None, false),
            Reload::Applied(_)
        ));
        assert!(ids(&p).contains(&"no-admin".to_string()));
        assert_eq!(p.reload(Vec::new(), None, false), Reload::Unchanged);

        // A text that stays is taken at the second tick, forbid or not: only a moving text waits.
        std::fs::write(&file, PERMIT).unwrap();
        assert_eq!(p.reload(Vec::new(), None, false), Reload::Unchanged);
        assert!(matches!(
            p.reload(Vec::new(), None, false),
            Reload::Applied(_)
        ));
        assert_eq!(ids(&p), vec!["read-all".to_string()]);
    }

    /// An entry-list change applies at the first tick, like a client change; `None` keeps the
    /// entries in force.
    #[test]
    fn an_entry_change_applies_at_the_first_tick() {
        let p = Policies::load(None, Vec::new(), Vec::new()).unwrap();
        assert!(!p.knows_entry("e1"));
        let entries = vec![EntryGrant {
            entry_id: "e1".into(),
            spiffe_id: "spiffe://example.org/w".into(),
        }];
        assert!(matches!(
            p.reload(Vec::new(), Some(entries.clone()), false),
            Reload::Applied(_)
        ));
        assert!(p.knows_entry("e1"));
        assert_eq!(ids(&p), vec!["entry:e1".to_string()]);
        assert_eq!(
            p.reload(Vec::new(), Some(entries), false),
            Reload::Unchanged
        );
        assert_eq!(p.reload(Vec::new(), None, false), Reload::Unchanged);
        assert!(p.knows_entry("e1"));
        assert!(matches!(
            p.reload(Vec::new(), Some(Vec::new()), false),
            Reload::Applied(_)
        ));
        assert!(!p.knows_entry("e1"));
    }

    /// A client-list change (from the store, never half-written) applies at once.
    #[test]
    fn a_client_change_applies_at_the_first_tick() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
        std::fs::write(dir.path().join("rules.cedar"), PERMIT).unwrap();
        let p = Policies::load(Some(dir.path().to_path_buf()), Vec::new(), Vec::new()).unwrap();
        let clients = vec![ClientGrant {
            client_id: "billing".into(),
            audiences: vec!["https://api.example".into()],
            scopes: Vec::new(),
        }];
        assert!(matches!(
            p.reload(clients.clone(), None, false),
            Reload::Applied(_)
        ));
        assert_eq!(p.reload(clients, None, false), Reload::Unchanged);
    }
}
