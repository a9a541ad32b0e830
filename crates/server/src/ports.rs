//! The engine's ports over the server's state: clients from the registry (reloaded on a miss,
//! refetched on an unknown key), trusted issuers' key caches, our keys, revocation in the store.
//! And the one place an engine [`Record`] becomes a store [`Pending`].

use std::sync::Arc;

use mayfly_crypto::{SigningKey, VerifyingKeys};
use mayfly_store::{CommitOutcome, Pending};
use mayfly_sts::federation::TrustedIssuer;
use mayfly_sts::{
    Authorizer, Client, Clients, Denial, IssuerKeys, LeaseLink, LeaseSettings, LeaseView,
    Lifecycle, OwnKeys, Record, Revocation, StatusSlot, Sts,
};

use crate::state::App;

impl App {
    /// The engine over this app's state.
    pub(crate) fn sts(&self) -> Sts<'_, App> {
        Sts {
            settings: self.settings(),
            world: self,
            clock: self.clock().as_ref(),
            authorizer: self.policies() as &dyn Authorizer,
        }
    }

    /// Commit `record` (the audit event with what it consumes, revokes and links); a
    /// single-use value seen before turns into its replay denial.
    pub(crate) async fn commit(&self, record: Record) -> Result<(), Denial> {
        match self.audit().commit(pending(record)).await {
            Ok(CommitOutcome::Committed(_)) => Ok(()),
            Ok(CommitOutcome::Replay(_)) => Err(Denial::ReplayedJti),
            Ok(CommitOutcome::SubjectReplay(_)) => Err(Denial::SubjectReplayed),
            Ok(CommitOutcome::ActorReplay(_)) => Err(Denial::ActorReplayed),
            Err(err) => {
                tracing::error!(error = %err, "audit commit failed; the response is withheld");
                Err(Denial::Unavailable)
            }
        }
    }
}

/// The store's form of an engine record.
pub(crate) fn pending(r: Record) -> Pending {
    let mut p = Pending::event(r.event);
    p.consume_jti = r.consume_jti;
    p.consume_subject = r.consume_subject;
    p.consume_actor = r.consume_actor;
    p.revoke = r.revoke;
    p.link_svid = r.link_svid;
    p.parents = r.parents;
    p.status = r.status.map(store_slot);
    p.lease = r.lease.map(store_link);
    p
}

/// The store's form of a status slot.
pub(crate) fn store_slot(s: mayfly_sts::StatusSlot) -> mayfly_store::StatusSlot {
    mayfly_store::StatusSlot {
        list: s.list,
        idx: s.idx,
    }
}

/// The store's form of a lease link.
fn store_link(l: LeaseLink) -> mayfly_store::LeaseLink {
    match l {
        LeaseLink::Existing(id) => mayfly_store::LeaseLink::Existing(id),
        LeaseLink::Open(n) => mayfly_store::LeaseLink::Open(mayfly_store::NewLease {
            id: n.id,
            kind: if n.ci.is_some() {
                mayfly_store::LeaseKind::Ci
            } else {
                mayfly_store::LeaseKind::Grant
            },
            owner: n.owner,
            client_id: n.client_id,
            grace: n.grace,
            expires_at: n.expires_at,
            ci: n.ci.map(|c| mayfly_store::CiRun {
                provider: c.provider.as_str().to_string(),
                project: c.project,
                run: c.run,
                attempt: c.attempt,
                job: c.job,
            }),
        }),
    }
}

impl Lifecycle for App {
    async fn status_slot(&self) -> Result<StatusSlot, Denial> {
        self.allocator()
            .slot(self.store(), self.clock().now())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot reserve status-list slots");
                Denial::Unavailable
            })
    }

    async fn lease(&self, id: &str) -> Result<Option<LeaseView>, Denial> {
        let l = self
            .store()
            .lease(id)
            .await
            .map_err(|_| Denial::Unavailable)?;
        Ok(l.map(|l| LeaseView {
            id: l.id,
            owner: l.owner,
            grace: l.grace,
            heartbeat_at: l.heartbeat_at,
            expires_at: l.expires_at,
            ended: l.ended_at.is_some(),
        }))
    }

    fn lease_settings(&self) -> LeaseSettings {
        let l = &self.config().leases;
        LeaseSettings {
            grace: l.grace.as_secs() as i64,
            max_lifetime: l.max_lifetime.as_secs() as i64,
            ci_max_lifetime: l.ci_max_lifetime.as_secs() as i64,
        }
    }
}

impl Clients for App {
    async fn client(&self, id: &str, now: i64) -> Option<Arc<Client>> {
        let (client, loaded_now) = self.clients().get_or_reload(id, self.store(), now).await?;
        if loaded_now {
            // Just registered at run time (perhaps through another replica): its lists become
            // policies now, not at the next tick.
            self.reload_policy_if_changed().await;
        }
        Some(client)
    }

    async fn refresh_keys(&self, id: &str, now: i64) -> Result<Option<Arc<Client>>, Denial> {
        // Refetches a jwks_uri client's keys at most every 30 s.
        if !self.clients().refresh_uri(id, now, true).await {
            return Ok(None);
        }
        self.clients()
            .get(id)
            .map(Some)
            .ok_or(Denial::UnknownClient)
    }
}

impl IssuerKeys for App {
    async fn verify_federated<T, F>(
        &self,
        iss: &str,
        now: i64,
        verify: F,
    ) -> Option<Result<T, Denial>>
    where
        T: Send,
        F: Fn(&TrustedIssuer, &VerifyingKeys) -> Result<T, Denial> + Send + Sync,
    {
        let issuer = self.issuers().find(iss)?;
        let check = |keys: &VerifyingKeys| verify(&issuer.trusted, keys);
        Some(self.issuers().verify(&issuer, now, check).await)
    }
}

impl OwnKeys for App {
    fn signing_key(&self) -> Arc<SigningKey> {
        self.keys().current.clone()
    }

    fn access_token_keys(&self) -> Arc<VerifyingKeys> {
        self.keys().verifying.clone()
    }

    fn svid_issuer(&self) -> &TrustedIssuer {
        // The state's accessor of the same name.
        App::svid_issuer(self)
    }

    fn svid_keys(&self) -> Arc<VerifyingKeys> {
        self.spiffe().snapshot().jwt_verifying.clone()
    }
}

impl Revocation for App {
    async fn is_revoked(&self, jti: &str) -> Result<bool, Denial> {
        self.store()
            .is_revoked(jti)
            .await
            .map_err(|_| Denial::Unavailable)
    }

    async fn is_svid_revoked(&self, jti: &str) -> Result<bool, Denial> {
        self.store()
            .is_svid_revoked(jti)
            .await
            .map_err(|_| Denial::Unavailable)
    }
}
