//! SPIFFE authentication for rustls: peers present X.509-SVIDs, chains are validated by webpki
//! against the trust domain's X.509 authorities, and the peer's SPIFFE ID (never its DNS name)
//! is what gets authorised.
//!
//! - [`Authorities`]: the trust anchors, replaceable at run time so a CA rotation applies to
//!   the next handshake without rebuilding any config.
//! - [`SvidCertResolver`]: our own SVID and key, replaceable the same way.
//! - [`SpiffeServerVerifier`] / [`SpiffeClientVerifier`] with a [`SpiffeIdAuthorizer`].
//! - [`server_config`] / [`client_config`]: rustls configs on the aws-lc-rs provider.
//!
//! Signatures are checked with the aws-lc-rs provider's algorithms, and the time comes from
//! rustls (its provider's clock), so nothing here reads the clock itself.

mod authorities;
mod authorizer;
mod resolver;
mod verifier;

pub use authorities::Authorities;
pub use authorizer::SpiffeIdAuthorizer;
pub use resolver::SvidCertResolver;
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use mayfly_proto::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why SPIFFE authentication or TLS set-up failed. Never carries key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// An authority set must hold at least one certificate.
    #[error("no X.509 authorities given")]
    NoAuthorities,
    /// An authority certificate cannot be a trust anchor.
    #[error("X.509 authority {index} cannot be a trust anchor: {reason}")]
    Authority {
        /// Its position in the list.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No certificate where one was needed (empty chain, no peer certificate).
    #[error("no certificate")]
    NoCertificate,
    /// The leaf is not an X.509-SVID (unparseable, no or several URI SANs, no path).
    #[error("not an X.509-SVID: {0}")]
    NotSvid(&'static str),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    /// The peer's SPIFFE ID is in a trust domain these authorities do not speak for.
    #[error("`{id}` is not in the trust domain `{expected}`")]
    WrongTrustDomain {
        /// The peer's SPIFFE ID.
        id: String,
        /// The authorities' trust domain.
        expected: String,
    },
    /// The peer's SPIFFE ID is valid but not authorised.
    #[error("SPIFFE ID `{0}` is not authorised")]
    Unauthorized(String),
    /// The private key does not load or does not match the leaf certificate.
    #[error("SVID key: {0}")]
    Key(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The aws-lc-rs provider, named explicitly so no process-wide default is needed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A server config that presents `resolver`'s SVID and authenticates clients with `verifier`.
///
/// Session resumption is off: a resumed session carries the peer identity of an earlier
/// handshake, so a rotated, superseded or expired SVID would keep authenticating. Every
/// connection verifies the SVIDs current at its handshake.
pub fn server_config(
    resolver: Arc<SvidCertResolver>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A client config that presents `resolver`'s SVID and authenticates servers with `verifier`.
/// The server name given to rustls is not checked: the SPIFFE ID is the identity. No session
/// resumption, for the reason given at [`server_config`].
pub fn client_config(
    resolver: Arc<SvidCertResolver>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// The SPIFFE ID of a peer's chain (leaf first), as rustls reports it after the handshake
/// (`peer_certificates()`). It only reads the leaf: call it on connections whose chain one of
/// this module's verifiers accepted.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<String, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoCertificate)?;
    leaf_spiffe_id(leaf).map(SpiffeId::into_string)
}

/// The SPIFFE ID of an X.509-SVID leaf: its single URI SAN, a valid SPIFFE ID with a path.
pub(crate) fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, TlsError> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => cert,
        _ => return Err(TlsError::NotSvid("not a DER X.509 certificate")),
    };
    let sans = cert
        .subject_alternative_name()
        .map_err(|_| TlsError::NotSvid("unparseable subject alternative names"))?;
    let mut uris = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
    let id = match (uris.next(), uris.next()) {
        (Some(id), None) => id,
        (None, _) => return Err(TlsError::NotSvid("no URI SAN")),
        (Some(_), Some(_)) => return Err(TlsError::NotSvid("more than one URI SAN")),
    };
    let id = SpiffeId::parse(id)?;
    if id.path().is_empty() {
        return Err(TlsError::NotSvid(
            "a leaf's SPIFFE ID must have a path (not the bare trust domain)",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests;
