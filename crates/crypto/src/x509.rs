//! X.509 for SPIFFE: a CA per trust domain and the X.509-SVIDs it signs.
//!
//! Certificates are built by `rcgen` and read by `x509-parser`; nothing here writes ASN.1 by
//! hand. Every SVID follows the SPIFFE X.509-SVID specification: exactly one URI SAN (the SPIFFE
//! ID), `CA:false`, critical `digitalSignature` key usage, server and client auth EKUs.
//!
//! What this module does not do: decide who gets which SPIFFE ID (the caller passes it), store
//! keys (the caller encrypts [`X509Ca::key_pkcs8`] at rest), or validate chains (that is webpki's
//! job, in `mayfly-spiffe`).

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use zeroize::{Zeroize, Zeroizing};

use mayfly_proto::spiffe_id::{SpiffeId, SpiffeIdError, validate_trust_domain};

use crate::CryptoError;

/// Earliest and latest instants a certificate may carry (unix seconds): 1970-01-01 and
/// 9999-12-31T23:59:59Z, the range X.509 time encodings (and rcgen) can represent.
const MIN_TIME: i64 = 0;
const MAX_TIME: i64 = 253_402_300_799;

/// Why an X.509 operation was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// The CSR is not a parseable PKCS#10 request.
    #[error("the CSR is not a valid PKCS#10 request")]
    CsrMalformed,
    /// The CSR's self-signature does not verify against the key it carries.
    #[error("the CSR's signature does not verify: it was not signed by the key it carries")]
    CsrSignature,
    /// The CSR's key is of a type or size SVIDs do not use.
    #[error(
        "unsupported CSR key: {0} (accepted: ECDSA P-256, ECDSA P-384, Ed25519, RSA 2048-8192)"
    )]
    CsrKey(&'static str),
    /// The SPIFFE ID is not valid for an SVID of this CA.
    #[error("invalid SPIFFE ID: {0}")]
    SpiffeId(&'static str),
    /// A DNS name for the SVID is malformed.
    #[error("invalid DNS name `{0}`: use letters, digits, `-` and `.` (optionally `*.` first)")]
    DnsName(String),
    /// A validity window is empty or outside what X.509 can encode.
    #[error("validity: {0}")]
    Validity(String),
    /// The upstream CA (certificate or key) cannot sign a mayfly CA.
    #[error("upstream CA: {0}")]
    Upstream(String),
    /// A certificate (or PEM text) does not parse, or is not what it has to be.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Certificate generation failed inside rcgen.
    #[error("cannot build certificate: {0}")]
    Build(String),
}

/// The one mapping of a SPIFFE ID rule into the CA's refusals.
impl From<SpiffeIdError> for X509Error {
    fn from(e: SpiffeIdError) -> Self {
        X509Error::SpiffeId(e.rule())
    }
}

impl From<X509Error> for CryptoError {
    fn from(e: X509Error) -> Self {
        CryptoError::X509(e)
    }
}

fn build_err(e: rcgen::Error) -> CryptoError {
    X509Error::Build(e.to_string()).into()
}

/// A key pair whose rcgen copy of the PKCS#8 bytes is wiped on drop.
struct CaKey(KeyPair);

impl Drop for CaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// An X.509 CA for one SPIFFE trust domain (ECDSA P-256): self-signed, or an intermediate under
/// an upstream CA. It signs X.509-SVIDs from CSRs.
pub struct X509Ca {
    trust_domain: String,
    cert_der: Vec<u8>,
    /// From this CA's issuer up to the trust anchor (last). Empty when self-signed.
    upstream_chain: Vec<Vec<u8>>,
    issuer: Issuer<'static, CaKey>,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .field("self_signed", &self.upstream_chain.is_empty())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Ca {
    /// A new self-signed CA for `trust_domain`, valid from `not_before` to `not_after` (unix
    /// seconds). Its certificate is the trust anchor.
    pub fn self_signed(
        trust_domain: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<X509Ca, CryptoError> {
        validate_trust_domain(trust_domain).map_err(X509Error::from)?;
        let key = new_p256()?;
        let params = ca_params(trust_domain, not_before, not_after, "mayfly CA")?;
        let cert = params.self_signed(&key).map_err(build_err)?;
        Self::assemble(trust_domain, cert.der().to_vec(), Vec::new(), CaKey(key))
    }

    /// A new intermediate CA for `trust_domain`, signed by an upstream CA.
    ///
    /// `upstream_cert_pem` holds the upstream signing certificate first, optionally followed by
    /// its own chain; the last certificate is the trust anchor that goes in the bundle.
    /// `upstream_key_pem` is the upstream's private key (PKCS#8, SEC1 or PKCS#1 PEM). The
    /// validity is clamped to the upstream certificate's; if nothing is left, it is an error.
    pub fn intermediate(
        trust_domain: &str,
        upstream_cert_pem: &str,
        upstream_key_pem: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<X509Ca, CryptoError> {
        validate_trust_domain(trust_domain).map_err(X509Error::from)?;
        let upstream_chain = certs_from_pem(upstream_cert_pem)?;
        let Some(upstream_der) = upstream_chain.first() else {
            return Err(X509Error::Upstream("no certificate in the upstream PEM".into()).into());
        };
        let upstream_key = CaKey(
            KeyPair::from_pem(upstream_key_pem)
                .map_err(|_| X509Error::Upstream("the private key PEM does not parse".into()))?,
        );
        let (up_nb, up_na) = {
            let up = parse_cert(upstream_der)?;
            check_can_sign_ca(&up, &upstream_key)?;
            (
                up.validity().not_before.timestamp(),
                up.validity().not_after.timestamp(),
            )
        };
        let nb = not_before.max(up_nb);
        let na = not_after.min(up_na);
        if na <= nb {
            return Err(X509Error::Validity(format!(
                "the requested window [{not_before}, {not_after}] does not overlap the upstream CA's [{up_nb}, {up_na}]"
            ))
            .into());
        }
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(upstream_der.as_slice()), upstream_key)
                .map_err(|_| {
                    X509Error::Upstream("the certificate cannot be used as an issuer".into())
                })?;
        let key = new_p256()?;
        let params = ca_params(trust_domain, nb, na, "mayfly intermediate CA")?;
        let cert = params.signed_by(&key, &issuer).map_err(build_err)?;
        Self::assemble(
            trust_domain,
            cert.der().to_vec(),
            upstream_chain,
            CaKey(key),
        )
    }

    /// Reload a CA from the store: its certificate, the upstream chain (empty when
    /// self-signed; else from its issuer up to the trust anchor) and its PKCS#8 key.
    pub fn from_parts(
        cert_der: &[u8],
        upstream_chain_der: Vec<Vec<u8>>,
        key_pkcs8_der: &[u8],
    ) -> Result<X509Ca, CryptoError> {
        let key = CaKey(
            KeyPair::try_from(&PrivatePkcs8KeyDer::from(key_pkcs8_der))
                .map_err(|_| CryptoError::Key("the CA key is not a PKCS#8 key rcgen can use"))?,
        );
        let trust_domain = {
            let cert = parse_cert(cert_der)?;
            if !cert.is_ca() {
                return Err(X509Error::Certificate("not a CA certificate".into()).into());
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                return Err(CryptoError::Key(
                    "the CA key does not match its certificate",
                ));
            }
            let id = single_uri_san(&cert)?;
            let td = id
                .strip_prefix("spiffe://")
                .filter(|td| !td.contains('/'))
                .ok_or(X509Error::Certificate(
                    "the CA's URI SAN is not `spiffe://<trust domain>`".into(),
                ))?;
            validate_trust_domain(td).map_err(X509Error::from)?;
            td.to_string()
        };
        for der in &upstream_chain_der {
            parse_cert(der)?;
        }
        Self::assemble(&trust_domain, cert_der.to_vec(), upstream_chain_der, key)
    }

    fn assemble(
        trust_domain: &str,
        cert_der: Vec<u8>,
        upstream_chain: Vec<Vec<u8>>,
        key: CaKey,
    ) -> Result<X509Ca, CryptoError> {
        let (not_before, not_after) = {
            let cert = parse_cert(&cert_der)?;
            (
                cert.validity().not_before.timestamp(),
                cert.validity().not_after.timestamp(),
            )
        };
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(build_err)?;
        Ok(X509Ca {
            trust_domain: trust_domain.to_string(),
            cert_der,
            upstream_chain,
            issuer,
            not_before,
            not_after,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's private key, PKCS#8 DER, for encryption at rest.
    pub fn key_pkcs8(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.issuer.key().0.serialized_der().to_vec())
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certificates above this CA, from its issuer up to the trust anchor; empty when
    /// self-signed.
    pub fn upstream_chain(&self) -> &[Vec<u8>] {
        &self.upstream_chain
    }

    /// Start of the CA certificate's validity, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of the CA certificate's validity, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// SHA-256 of the CA certificate's DER, lower-case hex.
    pub fn fingerprint(&self) -> String {
        crate::hex(&crate::sha256(&self.cert_der))
    }

    /// What belongs in the trust bundle: the CA certificate when self-signed, the upstream's
    /// trust anchor when an intermediate.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        match self.upstream_chain.last() {
            Some(anchor) => vec![anchor.clone()],
            None => vec![self.cert_der.clone()],
        }
    }

    /// Sign an X.509-SVID for `spiffe_id` over the public key of `csr_der`.
    ///
    /// The CSR's self-signature must verify; its subject and extensions are ignored (the
    /// identity is the caller's `spiffe_id`). The validity is clamped to this CA's. Returns the
    /// chain to present: the leaf, then this CA's certificate and upstream intermediates when
    /// this CA is not the trust anchor (never the anchor itself).
    pub fn sign_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        dns_names: &[String],
        not_before: i64,
        not_after: i64,
    ) -> Result<Vec<Vec<u8>>, CryptoError> {
        let id = SpiffeId::parse(spiffe_id).map_err(X509Error::from)?;
        if id.trust_domain() != self.trust_domain || id.path().is_empty() {
            return Err(X509Error::SpiffeId(
                "an SVID's ID must be `spiffe://<this CA's trust domain>/<path>` (a path is required)",
            )
            .into());
        }
        let public_key = csr_public_key(csr_der)?;

        let nb = not_before.max(self.not_before);
        let na = not_after.min(self.not_after);
        if na <= nb {
            return Err(X509Error::Validity(format!(
                "the requested window [{not_before}, {not_after}] does not overlap the CA's [{}, {}]",
                self.not_before, self.not_after
            ))
            .into());
        }

        let mut params = CertificateParams::default();
        set_validity(&mut params, nb, na)?;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mayfly");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(ia5(spiffe_id)?)];
        for name in dns_names {
            if !valid_dns_name(name) {
                return Err(X509Error::DnsName(name.chars().take(64).collect()).into());
            }
            params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(build_err)?;

        let mut chain = vec![leaf.der().to_vec()];
        if let Some((_anchor, intermediates)) = self.upstream_chain.split_last() {
            chain.push(self.cert_der.clone());
            chain.extend(intermediates.iter().cloned());
        }
        Ok(chain)
    }
}

/// A fresh P-256 key for an X.509-SVID and a CSR over it: (PKCS#8 DER, CSR DER). The key never
/// has to leave the process that calls this.
pub fn new_svid_key_and_csr() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CryptoError> {
    let key = CaKey(new_p256()?);
    let csr = csr_with(&key.0)?;
    Ok((Zeroizing::new(key.0.serialized_der().to_vec()), csr))
}

/// A CSR (DER) over an existing PKCS#8 key (ECDSA P-256/P-384, Ed25519 or RSA).
pub fn csr_for_key(pkcs8_der: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = CaKey(
        KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8_der))
            .map_err(|_| CryptoError::Key("not a PKCS#8 key rcgen can use"))?,
    );
    csr_with(&key.0)
}

fn csr_with(key: &KeyPair) -> Result<Vec<u8>, CryptoError> {
    // The server ignores the CSR's names, so the request carries none.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(key).map_err(build_err)?;
    Ok(csr.der().to_vec())
}

fn new_p256() -> Result<KeyPair, CryptoError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|_| CryptoError::Key("cannot generate a P-256 key"))
}

fn ca_params(
    trust_domain: &str,
    not_before: i64,
    not_after: i64,
    cn_prefix: &str,
) -> Result<CertificateParams, CryptoError> {
    if not_after <= not_before {
        return Err(X509Error::Validity(format!(
            "not_after ({not_after}) must be after not_before ({not_before})"
        ))
        .into());
    }
    let mut params = CertificateParams::default();
    set_validity(&mut params, not_before, not_after)?;
    let serial = random_serial()?;
    // A serialNumber attribute makes each CA generation's name unique, so two CAs of the same
    // trust domain (rotation overlap, root and intermediate) never share a subject.
    let serial_attr = PrintableString::try_from(crate::hex(&serial.to_bytes()[..8]))
        .map_err(|e| X509Error::Build(e.to_string()))?;
    params.serial_number = Some(serial);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mayfly");
    dn.push(DnType::CommonName, format!("{cn_prefix} {trust_domain}"));
    dn.push(
        DnType::CustomDnType(vec![2, 5, 4, 5]),
        DnValue::PrintableString(serial_attr),
    );
    params.distinguished_name = dn;
    // The X.509-SVID spec allows the trust domain's ID on signing certificates.
    params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{trust_domain}"))?)];
    // mayfly CAs sign leaf SVIDs only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), CryptoError> {
    let in_range = |t: i64| (MIN_TIME..=MAX_TIME).contains(&t);
    if !in_range(not_before) || !in_range(not_after) {
        return Err(X509Error::Validity(format!(
            "times must be between {MIN_TIME} and {MAX_TIME} (unix seconds)"
        ))
        .into());
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    // In range, so non-negative and the sums stay within year 9999.
    params.not_before = epoch + std::time::Duration::from_secs(not_before.unsigned_abs());
    params.not_after = epoch + std::time::Duration::from_secs(not_after.unsigned_abs());
    Ok(())
}

fn random_serial() -> Result<SerialNumber, CryptoError> {
    let mut bytes = crate::random_bytes(16)?;
    // Positive (top bit clear) and exactly 16 bytes long (second bit set).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ia5(s: &str) -> Result<Ia5String, CryptoError> {
    Ia5String::try_from(s).map_err(|e| X509Error::Build(e.to_string()).into())
}

mod checks;
mod inspect;

use checks::{check_can_sign_ca, csr_public_key, valid_dns_name};
pub use inspect::{SvidInfo, certs_from_pem, certs_to_pem};
use inspect::{parse_cert, single_uri_san};

#[cfg(test)]
mod tests;
