//! What the agent currently serves: entries and bundle from the last sync, and one X.509-SVID
//! per entry. Published through a `watch` channel so open streams see every change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use mayfly_crypto::VerifyingKeys;
use mayfly_proto::spiffe::{BundleWire, EntryWire};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::attest::Needs;

/// A registration entry with its selectors parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub wire: EntryWire,
    pub selectors: Vec<mayfly_spiffe::Selector>,
}

/// The trust bundle, in the forms the Workload API serves.
pub(crate) struct Bundle {
    /// Changes whenever the bundle does (local counter; streams compare it).
    pub generation: u64,
    pub wire: BundleWire,
    /// `spiffe://<trust domain>`: the key of the bundle maps.
    pub td_id: String,
    /// X.509 authorities, DER certificates concatenated.
    pub x509: Vec<u8>,
    /// JWT authorities, a JWK Set as JSON bytes.
    pub jwks: Vec<u8>,
    /// The JWT authorities parsed for validation (`None` if there are none usable).
    pub keys: Option<VerifyingKeys>,
}

impl Bundle {
    pub(crate) fn from_wire(wire: BundleWire, generation: u64) -> Self {
        let mut x509 = Vec::new();
        for (i, cert) in wire.x509_authorities.iter().enumerate() {
            match base64::engine::general_purpose::STANDARD.decode(cert) {
                Ok(der) => x509.extend_from_slice(&der),
                Err(_) => tracing::warn!(index = i, "bundle: an X.509 authority is not base64"),
            }
        }
        let keys = match VerifyingKeys::from_jwks(&wire.jwt_authorities) {
            Ok(keys) => Some(keys),
            Err(e) => {
                tracing::warn!(error = %e, "bundle: no usable JWT authorities");
                None
            }
        };
        let jwks = serde_json::to_vec(&wire.jwt_authorities).unwrap_or_default();
        Self {
            generation,
            td_id: format!("spiffe://{}", wire.trust_domain),
            wire,
            x509,
            jwks,
            keys,
        }
    }
}

/// One entry's current X.509-SVID and its private key.
pub(crate) struct Svid {
    /// The entry as it was when this SVID was signed.
    pub entry: EntryWire,
    /// Changes with every new SVID (local counter; streams compare it).
    pub generation: u64,
    /// Chain, leaf first, DER certificates concatenated.
    pub chain: Vec<u8>,
    /// PKCS#8 DER.
    pub key: Zeroizing<Vec<u8>>,
    /// Unix seconds.
    pub expires_at: i64,
    pub serial: String,
    /// Half-way through its lifetime.
    pub renew_at: Instant,
}

impl Svid {
    /// Whether `entry` still describes this certificate (selectors and JWT TTL do not matter).
    pub(crate) fn fits(&self, entry: &EntryWire) -> bool {
        self.entry.spiffe_id == entry.spiffe_id
            && self.entry.dns_names == entry.dns_names
            && self.entry.x509_ttl == entry.x509_ttl
    }
}

/// Everything a Workload API call reads, as of one moment.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    /// At least one sync has succeeded.
    pub synced: bool,
    /// Entries in the server's order (the first match is a caller's default identity).
    pub entries: Arc<Vec<Entry>>,
    pub needs: Needs,
    pub bundle: Option<Arc<Bundle>>,
    /// By entry id.
    pub svids: HashMap<String, Arc<Svid>>,
    /// Entries whose X.509-SVID the server's policy refused at the last attempt (retried with
    /// backoff; a workload that has only these is told `PermissionDenied`).
    pub denied: HashSet<String>,
}
