//! The token-service engine: every grant is *authenticate → identify → decide → mint → record*.
//!
//! This crate decides and signs; it performs no I/O. The adapter (the server) looks clients up,
//! consumes `jti`s and commits audit events through the store, then calls the functions here.
//! Time comes in as an argument from a [`Clock`], so every lifetime, skew and rotation rule is
//! tested with [`ManualClock`].
//!
//! Not here: HTTP, storage, key fetching, policy languages (the server plugs the Cedar engine in
//! through [`Authorizer`]).
#![forbid(unsafe_code)]

mod audit;
mod authn;
pub mod authz;
mod clock;
mod decide;
mod deny;
mod exchange;
pub mod federation;
pub mod identity;
mod introspect;
pub mod keys;
mod mint;
pub mod svid;

pub use audit::{AuditEvent, Decision, EventKind};
pub use authn::{AuthenticatedClient, authenticate_assertion, claimed_client_id};
pub use authz::{AllOf, Authorizer, AuthzDecision, AuthzQuery, Principal, PrincipalKind};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decide::{DecideInput, Grant, TokenParams, decide, requested_scopes, target};
pub use deny::Denial;
pub use exchange::{act_claim, narrow};
pub use introspect::{AccessTokenClaims, check_access_token};
pub use mint::{MintedToken, mint};

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
