//! Test support for mayfly, used only by tests (`publish = false`, never a normal dependency).
//!
//! - [`pg`]: a fresh PostgreSQL database per test, dropped after it, at `TEST_PG_ADMIN_URL`
//!   (default `postgres://postgres@127.0.0.1:5432/test`); fails loudly, never skips.
//! - [`jwt`]: reading JWTs without verification, form encoding, RFC error assertions.
//! - `keys` (feature `keys`): fixture key pairs, JWKS documents, client assertions.
//! - `issuer` (feature `keys`): an issuer stub serving JWKS and discovery on loopback.
//! - `server` (feature `server`): the real server in process on `127.0.0.1:0`, with a temp
//!   dir and a manual clock.
//!
//! The default build needs no mayfly crate, so the store can test itself with it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failure is the calling test's failure, reported where it happened"
)]

#[cfg(feature = "keys")]
pub mod issuer;
pub mod jwt;
#[cfg(feature = "keys")]
pub mod keys;
pub mod pg;
#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "keys")]
pub use issuer::IssuerStub;
pub use jwt::{assert_error, b64, form_urlencode, now, peek, peek_header};
pub use pg::{TestDb, free_port};
#[cfg(feature = "server")]
pub use server::{TestEnv, TestServer};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The token-exchange grant (RFC 8693).
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The JWT bearer grant (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Token type of a JWT subject token (RFC 8693).
pub const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Token type of an access token (RFC 8693).
pub const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The master key tests run under (32 bytes, base64); real deployments generate their own.
pub const TEST_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
