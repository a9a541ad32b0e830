//! Our own X.509-SVID for TLS, replaceable while connections are being made.

use std::sync::{Arc, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{TlsError, leaf_spiffe_id};

/// The current SVID (chain and key) for both TLS roles. [`SvidCertResolver::rotate`] makes new
/// handshakes use a renewed SVID; connections already made keep theirs.
pub struct SvidCertResolver {
    current: RwLock<Current>,
}

#[derive(Clone)]
struct Current {
    spiffe_id: String,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for SvidCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidCertResolver")
            .field("spiffe_id", &self.spiffe_id())
            .finish_non_exhaustive()
    }
}

impl SvidCertResolver {
    /// From an SVID chain (leaf first, DER) and its PKCS#8 key.
    pub fn new(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(load(chain, key_pkcs8)?),
        })
    }

    /// Switch to a renewed SVID. On error the current one is kept.
    pub fn rotate(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), TlsError> {
        let next = load(chain, key_pkcs8)?;
        // A poisoned lock only means a writer panicked between two whole-value stores.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// The SPIFFE ID of the current SVID.
    pub fn spiffe_id(&self) -> String {
        self.snapshot().spiffe_id
    }

    fn snapshot(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn load(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Current, TlsError> {
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let spiffe_id = leaf_spiffe_id(leaf)?.into_string();
    // Borrowed, so the only copies of the secret are the caller's and aws-lc's.
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|_| TlsError::Key("not a PKCS#8 key rustls can sign with"))?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = CertifiedKey::new(certs, signing_key);
    key.keys_match()
        .map_err(|_| TlsError::Key("the key does not match the leaf certificate"))?;
    Ok(Current {
        spiffe_id,
        key: Arc::new(key),
    })
}

impl ResolvesServerCert for SvidCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.snapshot().key)
    }
}

impl ResolvesClientCert for SvidCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.snapshot().key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}
