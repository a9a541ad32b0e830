//! The token-service engine: every grant is *authenticate → identify → decide → mint → record*.
//!
//! Every grant is an authenticator ([`grants`]) yielding one [`Authenticated`]; [`issue`] runs
//! decide → mint for it and returns the token, the audit [`Record`] to commit before the token
//! leaves, and the response. [`token`], [`introspect`] and [`revoke`] are the endpoints, from the
//! form body to the answer.
//!
//! This crate decides and signs; it performs no I/O. What it needs from the world (clients,
//! issuer keys, our own keys, revocation) it asks through the traits in [`ports`], which the
//! server implements over its registry, caches and store; the server then commits the record.
//! Time comes from a [`Clock`], so every lifetime, skew and rotation rule is tested with
//! [`ManualClock`].
//!
//! Not here: HTTP, storage, key fetching, policy languages (the server plugs the Cedar engine in
//! through [`Authorizer`]).
#![forbid(unsafe_code)]

mod authn;
pub mod authz;
mod decide;
mod deny;
mod exchange;
pub mod federation;
pub mod grants;
pub mod identity;
mod introspect;
pub mod keys;
pub mod lease;
mod mint;
mod pipeline;
pub mod ports;
mod query;
pub mod subject;
pub mod svid;
#[cfg(test)]
mod tests;

pub use authn::{AuthenticatedClient, authenticate_assertion, claimed_client_id};
pub use authz::{AllOf, Authorizer, AuthzDecision, AuthzQuery, Principal, PrincipalKind};
pub use decide::{DecideInput, Grant, TokenParams, decide, requested_scopes, target};
pub use deny::Denial;
pub use exchange::{act_claim, narrow};
pub use introspect::{AccessTokenClaims, check_access_token};
pub use lease::{
    CiProvider, CiRun, LeaseLink, LeaseRequest, LeaseSettings, LeaseView, NewLease, StatusSlot,
};
pub use mayfly_proto::audit::{AuditEvent, Decision, EventKind};
pub use mayfly_proto::clock::{Clock, ManualClock, SystemClock};
pub use mint::{MintExtras, MintedToken, mint};
pub use pipeline::{
    Authenticated, Caller, Consume, FormRequest, Issued, Outcome, Record, Refusal, Subject,
    SubjectAudit, issue, token, token_params,
};
pub use ports::{Clients, IssuerKeys, Lifecycle, OwnKeys, Revocation, Sts, World};
pub use query::{IntrospectGrants, introspect, may_revoke, may_revoke_by_bearer, revoke};

use std::sync::Arc;

use mayfly_crypto::VerifyingKeys;

/// Issuer-wide settings the engine needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Issuer identifier (no trailing slash).
    pub issuer: String,
    /// Token endpoint URL (also accepted as an assertion audience).
    pub token_endpoint: String,
    /// Default token lifetime, seconds.
    pub default_ttl: i64,
    /// Maximum token lifetime, seconds.
    pub max_ttl: i64,
    /// Clock skew tolerance, seconds.
    pub clock_skew: i64,
    /// How far ahead a client assertion may expire, seconds.
    pub max_assertion_lifetime: i64,
}

impl Settings {
    /// URLs an assertion's `aud` may name: the issuer or an endpoint of ours.
    pub fn accepted_assertion_audience(&self, aud: &str) -> bool {
        let aud = aud.trim_end_matches('/');
        aud == self.issuer
            || aud == self.token_endpoint
            || aud
                .strip_prefix(&self.issuer)
                .is_some_and(|p| matches!(p, "/oauth2/introspect" | "/oauth2/revoke"))
    }
}

/// A registered client, as the engine sees it.
#[derive(Debug, Clone)]
pub struct Client {
    /// client_id.
    pub id: String,
    /// Its public keys.
    pub keys: Arc<VerifyingKeys>,
    /// Audiences it may request.
    pub audiences: Vec<String>,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Its lifetime cap in seconds (already at most the global cap).
    pub max_ttl: i64,
}
