//! What the pipeline needs from the world, asked through small traits: registered clients,
//! trusted issuers' keys, our own keys, revocation, leases and status slots. The server implements them over its
//! registry, key caches and store; tests implement them in memory. No I/O happens here.

use std::future::Future;
use std::sync::Arc;

use mayfly_crypto::{SigningKey, VerifyingKeys};

use crate::federation::TrustedIssuer;
use crate::lease::{LeaseSettings, LeaseView, StatusSlot};
use crate::{Authorizer, Client, Clock, Denial, Settings};

/// Registered clients.
pub trait Clients: Send + Sync {
    /// The registered client `id`, if any. An adapter may reload its registry once on a miss
    /// (a client registered at run time, perhaps through another replica).
    fn client(&self, id: &str, now: i64) -> impl Future<Output = Option<Arc<Client>>> + Send;

    /// An assertion named a key the client's cached key set lacks: refetch the set (rate-limited)
    /// and return the client with its new keys, or `Ok(None)` when nothing new was installed.
    fn refresh_keys(
        &self,
        id: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<Arc<Client>>, Denial>> + Send;
}

/// Trusted issuers' keys (workload-identity federation).
pub trait IssuerKeys: Send + Sync {
    /// Run `verify` with the rules and cached keys of the trusted issuer whose tokens carry
    /// `iss`; when it reports [`Denial::SubjectUnknownKey`], refetch the keys once
    /// (rate-limited) and run it again. `None` when no trusted issuer has this `iss`. Keys that
    /// were never fetched and cannot be fetched now are [`Denial::Unavailable`].
    fn verify_federated<T, F>(
        &self,
        iss: &str,
        now: i64,
        verify: F,
    ) -> impl Future<Output = Option<Result<T, Denial>>> + Send
    where
        T: Send,
        F: Fn(&TrustedIssuer, &VerifyingKeys) -> Result<T, Denial> + Send + Sync;
}

/// This server's own keys.
pub trait OwnKeys: Send + Sync {
    /// The key that signs access tokens now.
    fn signing_key(&self) -> Arc<SigningKey>;
    /// The published access-token keys (our own tokens presented back to us).
    fn access_token_keys(&self) -> Arc<VerifyingKeys>;
    /// How the trust domain's own JWT-SVIDs are accepted as subject tokens.
    fn svid_issuer(&self) -> &TrustedIssuer;
    /// The trust domain's current JWT-SVID verifying keys.
    fn svid_keys(&self) -> Arc<VerifyingKeys>;
}

/// Revoked tokens. An unreachable store is [`Denial::Unavailable`].
pub trait Revocation: Send + Sync {
    /// Whether one of our access tokens (by `jti`) is revoked.
    fn is_revoked(&self, jti: &str) -> impl Future<Output = Result<bool, Denial>> + Send;
    /// Whether one of our JWT-SVIDs (by `jti`) is revoked: its workload exited.
    fn is_svid_revoked(&self, jti: &str) -> impl Future<Output = Result<bool, Denial>> + Send;
}

/// Leases and status-list slots.
pub trait Lifecycle: Send + Sync {
    /// A fresh status-list slot for a token about to be minted. An adapter reserves slots in
    /// blocks, so most calls touch no store.
    fn status_slot(&self) -> impl Future<Output = Result<StatusSlot, Denial>> + Send;
    /// The lease `id`, if it exists.
    fn lease(&self, id: &str) -> impl Future<Output = Result<Option<LeaseView>, Denial>> + Send;
    /// Lease lifetimes.
    fn lease_settings(&self) -> LeaseSettings;
}

/// Everything the pipeline asks the world, in one bound.
pub trait World: Clients + IssuerKeys + OwnKeys + Revocation + Lifecycle {}

impl<T: Clients + IssuerKeys + OwnKeys + Revocation + Lifecycle> World for T {}

/// The engine with its settings and ports: what every pipeline function takes.
#[derive(Clone, Copy)]
pub struct Sts<'a, W> {
    /// Issuer-wide settings.
    pub settings: &'a Settings,
    /// Clients, keys and revocation.
    pub world: &'a W,
    /// The time source.
    pub clock: &'a dyn Clock,
    /// The policy set.
    pub authorizer: &'a dyn Authorizer,
}
