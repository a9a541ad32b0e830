//! What the CA checks before it signs: CSRs, upstream CAs, SPIFFE IDs, DNS names.

use rcgen::{PublicKeyData, SubjectPublicKeyInfo};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{CaKey, X509Error};
use crate::CryptoError;

pub(super) fn check_can_sign_ca(up: &X509Certificate<'_>, key: &CaKey) -> Result<(), CryptoError> {
    let bc = up
        .basic_constraints()
        .map_err(|_| X509Error::Upstream("unparseable basic constraints".into()))?;
    match bc.map(|b| b.value) {
        Some(b) if b.ca => {
            if b.path_len_constraint == Some(0) {
                return Err(X509Error::Upstream(
                    "its pathLenConstraint is 0, so it may not sign a subordinate CA".into(),
                )
                .into());
            }
        }
        _ => {
            return Err(X509Error::Upstream("the certificate is not a CA (CA:true)".into()).into());
        }
    }
    let ku = up
        .key_usage()
        .map_err(|_| X509Error::Upstream("unparseable key usage".into()))?;
    if ku.is_some_and(|k| !k.value.key_cert_sign()) {
        return Err(X509Error::Upstream("its key usage lacks keyCertSign".into()).into());
    }
    if up.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(
            X509Error::Upstream("the private key does not match the certificate".into()).into(),
        );
    }
    Ok(())
}

/// Parse `csr_der`, verify its self-signature, and return its public key if SVIDs may use it.
pub(super) fn csr_public_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo, CryptoError> {
    let csr = match X509CertificationRequest::from_der(csr_der) {
        Ok(([], csr)) => csr,
        _ => return Err(X509Error::CsrMalformed.into()),
    };
    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(X509Error::CsrKey("SHA-1 signatures").into());
    }
    csr.verify_signature()
        .map_err(|_| X509Error::CsrSignature)?;

    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if !curve.is_some_and(|c| c == OID_EC_P256 || c == OID_NIST_EC_P384) {
            return Err(X509Error::CsrKey("ECDSA on a curve other than P-256 or P-384").into());
        }
    } else if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let m = rsa.modulus;
                let skip = m.iter().take_while(|b| **b == 0).count();
                m.get(skip).map_or(0, |first| {
                    (m.len() - skip) * 8 - first.leading_zeros() as usize
                })
            }
            _ => return Err(X509Error::CsrKey("an unparseable RSA key").into()),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(X509Error::CsrKey("RSA smaller than 2048 or larger than 8192 bits").into());
        }
    } else if alg.algorithm != OID_SIG_ED25519 {
        return Err(X509Error::CsrKey("an unknown key algorithm").into());
    }
    SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|_| X509Error::CsrKey("a key rcgen cannot encode").into())
}

pub(super) fn valid_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    !body.is_empty()
        && name.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
