//! The trust anchors of one trust domain, shared by every verifier built on them.

use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::TlsError;
use mayfly_proto::spiffe_id::validate_trust_domain;

/// The X.509 authorities of one trust domain. Clones share the set, so [`Authorities::replace`]
/// takes effect in every verifier at their next handshake; handshakes in flight keep the set
/// they started with.
#[derive(Clone)]
pub struct Authorities {
    trust_domain: Arc<str>,
    current: Arc<RwLock<Arc<Vec<TrustAnchor<'static>>>>>,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field("trust_domain", &self.trust_domain)
            .field("count", &self.snapshot().len())
            .finish()
    }
}

impl Authorities {
    /// The authorities of `trust_domain` from CA certificates (DER); at least one.
    pub fn new(trust_domain: &str, authorities: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        validate_trust_domain(trust_domain)?;
        Ok(Authorities {
            trust_domain: trust_domain.into(),
            current: Arc::new(RwLock::new(Arc::new(anchors(&authorities)?))),
        })
    }

    /// Replace the whole set (a rotation adds the new CA, and later drops the old one). On
    /// error the current set is kept.
    pub fn replace(&self, authorities: Vec<Vec<u8>>) -> Result<(), TlsError> {
        let next = Arc::new(anchors(&authorities)?);
        // A poisoned lock only means a writer panicked between two whole-value stores.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// The trust domain these authorities speak for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current trust anchors.
    pub(crate) fn snapshot(&self) -> Arc<Vec<TrustAnchor<'static>>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn anchors(ders: &[Vec<u8>]) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    if ders.is_empty() {
        return Err(TlsError::NoAuthorities);
    }
    ders.iter()
        .enumerate()
        .map(|(index, der)| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .map(|a| a.to_owned())
                .map_err(|e| TlsError::Authority {
                    index,
                    reason: e.to_string(),
                })
        })
        .collect()
}
