//! Reading certificates back: SVID fields, PEM in and out.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::X509Error;
use crate::CryptoError;

/// What an X.509-SVID leaf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// The SPIFFE ID (the single URI SAN).
    pub spiffe_id: String,
    /// Serial number, lower-case hex, big-endian, no leading zero bytes.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Whether basic constraints say `CA:true` (an SVID leaf must not).
    pub is_ca: bool,
}

impl SvidInfo {
    /// Read a leaf certificate (DER). Errors unless it has exactly one URI SAN.
    pub fn parse(leaf_der: &[u8]) -> Result<SvidInfo, CryptoError> {
        let cert = parse_cert(leaf_der)?;
        let spiffe_id = single_uri_san(&cert)?.to_string();
        let dns_names = sans(&cert)?
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_string()),
                _ => None,
            })
            .collect();
        let serial_bytes = cert.tbs_certificate.serial.to_bytes_be();
        Ok(SvidInfo {
            spiffe_id,
            serial: crate::hex(&serial_bytes),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns_names,
            is_ca: cert.is_ca(),
        })
    }
}

/// Every `CERTIFICATE` block of `pem`, DER. Other blocks (keys) are skipped; text that is not
/// PEM, or no certificate at all, is an error.
pub fn certs_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, CryptoError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| X509Error::Certificate(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(X509Error::Certificate("no CERTIFICATE block in the PEM text".into()).into());
    }
    Ok(certs)
}

/// `CERTIFICATE` PEM blocks for `certs` (DER), in order.
pub fn certs_to_pem(certs: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        // Base64 output is ASCII, so splitting bytes at 64 keeps characters whole.
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

pub(super) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CryptoError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(X509Error::Certificate("trailing bytes after the certificate".into()).into()),
        Err(_) => Err(X509Error::Certificate("not a DER X.509 certificate".into()).into()),
    }
}

fn sans<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a [GeneralName<'a>], CryptoError> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => Ok(&ext.value.general_names),
        Ok(None) => Ok(&[]),
        Err(_) => {
            Err(X509Error::Certificate("unparseable subject alternative names".into()).into())
        }
    }
}

pub(super) fn single_uri_san<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, CryptoError> {
    let mut uris = sans(cert)?.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(u), None) => Ok(u),
        (None, _) => {
            Err(X509Error::Certificate("no URI SAN (an SVID has exactly one)".into()).into())
        }
        (Some(_), Some(_)) => Err(X509Error::Certificate(
            "more than one URI SAN (an SVID has exactly one)".into(),
        )
        .into()),
    }
}
