//! The legacy translation proxy (`mayfly proxy`): workloads call a key-only upstream through
//! it with a mayfly access token; the proxy checks the token (JWKS signature, issuer,
//! audience, time, scopes, revocation), removes it, injects the route's static key (held
//! sealed in the store, opened into zeroized memory, reloaded on rotation) and streams the
//! call both ways. The key never reaches a caller: response headers holding it are dropped and
//! the body is scrubbed. Every call is an audit event.
//!
//! Modules: [`route`] (matching and URIs, on the path's normal form,
//! [`mayfly_proto::path`]), `verify` (tokens), `revocation` (introspection or status lists),
//! `keys` (the keys and their expiry), `inject`, `scrub`, `forward` (the upstream side),
//! `server` (the caller side), `audit`, `stats` (metric handles).
#![forbid(unsafe_code)]

mod audit;
mod body;
mod error;
mod forward;
mod inject;
mod keys;
mod revocation;
pub mod route;
mod scrub;
mod server;
mod stats;
mod verify;

pub use body::ProxyBody;
pub use error::Refusal;
pub use scrub::REDACTED;
pub use server::{Proxy, ProxyCredentials, ProxyOptions, StartError};
pub use verify::{MIN_REFRESH, SKEW};
