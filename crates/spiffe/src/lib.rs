//! SPIFFE for mayfly, with no I/O: the rules, not the sockets.
//!
//! - SPIFFE IDs are [`SpiffeId`] (from `mayfly-proto`, shared with the token service).
//! - [`selector`]: workload selectors (`unix:uid:1000`, ...) and entry matching.
//! - [`bundle`]: the trust bundle and its SPIFFE bundle document (JWK Set).
//! - [`rotation`]: when an SVID is due for renewal, from a `now` the caller passes in.
//! - [`tls`]: rustls verifiers and a certificate resolver for SPIFFE-authenticated mutual TLS.
//!
//! It does not sign anything (the CA lives in `mayfly-crypto`), attest processes or talk to
//! the Workload API (that is `mayfly-agent`), or store entries (`mayfly-store`).
#![forbid(unsafe_code)]

pub mod bundle;
pub mod rotation;
pub mod selector;
pub mod tls;

pub use bundle::{BundleError, TrustBundle};
pub use mayfly_proto::spiffe_id::{SpiffeId, SpiffeIdError};
pub use selector::{Selector, SelectorError, matches};
pub use tls::{
    Authorities, SpiffeClientVerifier, SpiffeIdAuthorizer, SpiffeServerVerifier, SvidCertResolver,
    TlsError, client_config, peer_spiffe_id, server_config,
};
