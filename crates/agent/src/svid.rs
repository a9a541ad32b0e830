//! X.509-SVID keys: made here, in the agent (P-256), sent to the server only as a CSR, and
//! handed to no one but an attested workload.
//!
//! (Key and CSR are made with `rcgen` directly; switch to `mayfly_crypto::x509` once it has
//! `new_svid_key_and_csr`.)

use base64::Engine;
use mayfly_proto::spiffe::SignX509Response;
use zeroize::Zeroizing;

use crate::error::AgentError;

/// A fresh key pair and the CSR for it.
pub(crate) struct KeyAndCsr {
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The raw public key (uncompressed EC point), to check the returned certificate.
    pub public_key: Vec<u8>,
    pub csr_der: Vec<u8>,
}

/// A new P-256 key and a CSR carrying `spiffe_id` as its URI SAN (the server decides what the
/// certificate says; the SAN is only a hint).
pub(crate) fn new_key_and_csr(spiffe_id: &str) -> Result<KeyAndCsr, AgentError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(spiffe_id)
        .map_err(|e| AgentError::Key(format!("SPIFFE ID is not IA5: {e}")))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AgentError::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pkcs8: Zeroizing::new(key.serialize_der()),
        public_key: key.public_key_raw().to_vec(),
        csr_der: csr.der().to_vec(),
    })
}

/// What the agent keeps of a signed X.509-SVID.
pub(crate) struct Issued {
    /// The chain, leaf first, DER certificates concatenated (the Workload API's format).
    pub chain: Vec<u8>,
    /// The earlier of the server's `expires_at` and the leaf's notAfter (unix seconds).
    pub expires_at: i64,
    /// The leaf's serial number, hex.
    pub serial: String,
}

/// Check the server's answer before any workload sees it: the leaf must be for the key the
/// agent made and name the entry's SPIFFE ID.
pub(crate) fn check_issued(
    entry_id: &str,
    spiffe_id: &str,
    public_key: &[u8],
    resp: &SignX509Response,
) -> Result<Issued, AgentError> {
    let bad = |reason: String| AgentError::BadSvid {
        entry_id: entry_id.to_string(),
        reason,
    };
    let mut ders = Vec::with_capacity(resp.chain.len());
    for cert in &resp.chain {
        ders.push(
            base64::engine::general_purpose::STANDARD
                .decode(cert)
                .map_err(|_| bad("a certificate is not base64".into()))?,
        );
    }
    let leaf_der = ders.first().ok_or_else(|| bad("empty chain".into()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| bad(format!("leaf does not parse: {e}")))?;
    if leaf.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(bad("the leaf is not for the key the agent sent".into()));
    }
    let names_id = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == spiffe_id),
            )
        });
    if !names_id {
        return Err(bad(format!("the leaf's URI SAN is not {spiffe_id}")));
    }
    let not_after = leaf.validity().not_after.timestamp();
    Ok(Issued {
        chain: ders.concat(),
        expires_at: resp.expires_at.min(not_after),
        serial: mayfly_crypto::hex(leaf.raw_serial()),
    })
}
