//! What workloads and resource servers link: build `private_key_jwt` client assertions, get
//! tokens from a mayfly issuer (discovered from its RFC 8414 metadata), and verify access
//! tokens. The server, the proxy and the agent use the same two pieces: [`access`], the one
//! RFC 9068 access-token verifier, and [`keysource`], the one JWKS key source (single flight,
//! bounded, rate-limited, stale on error).
//!
//! Feature `fetch` (default): everything that does network I/O. Without it only the pure
//! verifier remains, which the issuance engine (no I/O) links.
//!
//! Not here: a token source that refreshes tokens.
#![forbid(unsafe_code)]

pub mod access;
#[cfg(feature = "fetch")]
pub mod keysource;
pub mod status;

#[cfg(feature = "fetch")]
mod fetch;
pub use access::AccessTokenError;
#[cfg(feature = "fetch")]
pub use fetch::*;
