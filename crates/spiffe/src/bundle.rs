//! The SPIFFE trust bundle of a trust domain, and its JSON document (SPIFFE Trust Domain and
//! Bundle specification §4): a JWK Set whose keys are X.509 authorities (`"use": "x509-svid"`,
//! `x5c` holding exactly one certificate, plus the certificate's public key as JWK members) and
//! JWT authorities (`"use": "jwt-svid"`, with a `kid`), with `spiffe_sequence` and
//! `spiffe_refresh_hint`.
//!
//! Parsing follows the specification's tolerance rules: keys with an unknown `use` or `kty` are
//! skipped, not refused. Everything else that is malformed is an error.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mayfly_proto::spiffe::BundleWire;
use serde_json::{Map, Value, json};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::public_key::PublicKey;

use mayfly_proto::spiffe_id::{SpiffeIdError, validate_trust_domain};

/// Largest bundle document accepted by [`TrustBundle::parse`].
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;

const USE_X509: &str = "x509-svid";
const USE_JWT: &str = "jwt-svid";
/// Key types the JOSE specifications define; others are skipped when parsing.
const KNOWN_KTY: [&str; 3] = ["EC", "RSA", "OKP"];
/// JWK members that hold private key material; never accepted in a bundle.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Why a bundle (document or wire form) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The document exceeds [`MAX_BUNDLE_BYTES`].
    #[error("the bundle document is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or not a JSON object with a `keys` array.
    #[error("the bundle document is not a JWK Set: {0}")]
    NotJwkSet(String),
    /// `spiffe_sequence` or `spiffe_refresh_hint` is not a non-negative integer.
    #[error("`{0}` must be a non-negative integer")]
    BadNumber(&'static str),
    /// The trust domain name is invalid.
    #[error("trust domain: {0}")]
    TrustDomain(#[from] SpiffeIdError),
    /// One key of the set is malformed.
    #[error("key {index}: {reason}")]
    Key {
        /// Position in `keys` (or in the wire form's list).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

fn key_err(index: usize, reason: impl Into<String>) -> BundleError {
    BundleError::Key {
        index,
        reason: reason.into(),
    }
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// The trust domain name (`example.org`).
    pub trust_domain: String,
    /// `spiffe_sequence`: increases whenever the bundle changes (0 when the document had none).
    pub sequence: u64,
    /// `spiffe_refresh_hint`, seconds (0 when the document had none).
    pub refresh_hint: u64,
    /// X.509 authorities, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT authorities: public JWKs, each with a `kid`, stored without `use`.
    pub jwt_authorities: Vec<Map<String, Value>>,
}

impl TrustBundle {
    /// From the agent/server wire form (certificates in standard base64, JWT authorities as a
    /// JWK Set).
    pub fn from_wire(wire: &BundleWire) -> Result<TrustBundle, BundleError> {
        validate_trust_domain(&wire.trust_domain)?;
        let x509_authorities = wire
            .x509_authorities
            .iter()
            .enumerate()
            .map(|(i, b64)| {
                let der = STANDARD
                    .decode(b64)
                    .map_err(|_| key_err(i, "an X.509 authority is not standard base64"))?;
                check_cert(i, &der)?;
                Ok(der)
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        let jwks: &[Value] = match &wire.jwt_authorities {
            Value::Null => &[],
            Value::Object(set) => match set.get("keys") {
                Some(Value::Array(keys)) => keys,
                None => &[],
                Some(_) => return Err(BundleError::NotJwkSet("`keys` is not an array".into())),
            },
            _ => {
                return Err(BundleError::NotJwkSet(
                    "JWT authorities must be a JWK Set".into(),
                ));
            }
        };
        let mut jwt_authorities = Vec::with_capacity(jwks.len());
        for (i, jwk) in jwks.iter().enumerate() {
            jwt_authorities.push(jwt_authority(i, jwk)?);
        }
        check_unique_kids(&jwt_authorities)?;
        Ok(TrustBundle {
            trust_domain: wire.trust_domain.clone(),
            sequence: wire.sequence,
            refresh_hint: wire.refresh_hint,
            x509_authorities,
            jwt_authorities,
        })
    }

    /// The wire form.
    pub fn to_wire(&self) -> BundleWire {
        BundleWire {
            trust_domain: self.trust_domain.clone(),
            sequence: self.sequence,
            x509_authorities: self
                .x509_authorities
                .iter()
                .map(|d| STANDARD.encode(d))
                .collect(),
            jwt_authorities: json!({ "keys": self.jwt_authorities }),
            refresh_hint: self.refresh_hint,
        }
    }

    /// The SPIFFE bundle document. Fails only if an X.509 authority's key cannot be expressed
    /// as a JWK (ECDSA P-256/P-384, RSA and Ed25519 can).
    pub fn to_document(&self) -> Result<Value, BundleError> {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for (i, der) in self.x509_authorities.iter().enumerate() {
            let mut jwk = cert_jwk(i, der)?;
            jwk.insert("use".into(), USE_X509.into());
            jwk.insert("x5c".into(), json!([STANDARD.encode(der)]));
            keys.push(Value::Object(jwk));
        }
        keys.extend(self.jwt_keys());
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        doc.insert("spiffe_sequence".into(), self.sequence.into());
        if self.refresh_hint > 0 {
            doc.insert("spiffe_refresh_hint".into(), self.refresh_hint.into());
        }
        Ok(Value::Object(doc))
    }

    /// The JWT authorities alone as a JWK Set (what the Workload API's JWT bundles carry).
    pub fn jwt_jwks(&self) -> Value {
        json!({ "keys": self.jwt_keys().collect::<Vec<_>>() })
    }

    fn jwt_keys(&self) -> impl Iterator<Item = Value> + '_ {
        self.jwt_authorities.iter().map(|jwk| {
            let mut jwk = jwk.clone();
            jwk.insert("use".into(), USE_JWT.into());
            Value::Object(jwk)
        })
    }

    /// Parse the bundle document of `trust_domain` (whose name is not in the document: the
    /// caller knows which trust domain it fetched).
    pub fn parse(trust_domain: &str, doc: &[u8]) -> Result<TrustBundle, BundleError> {
        validate_trust_domain(trust_domain)?;
        if doc.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let value: Value =
            serde_json::from_slice(doc).map_err(|e| BundleError::NotJwkSet(e.to_string()))?;
        let Value::Object(set) = value else {
            return Err(BundleError::NotJwkSet("not a JSON object".into()));
        };
        let Some(Value::Array(keys)) = set.get("keys") else {
            return Err(BundleError::NotJwkSet(
                "`keys` is missing or not an array".into(),
            ));
        };
        let number = |name: &'static str| match set.get(name) {
            None => Ok(0),
            Some(v) => v.as_u64().ok_or(BundleError::BadNumber(name)),
        };
        let mut bundle = TrustBundle {
            trust_domain: trust_domain.to_string(),
            sequence: number("spiffe_sequence")?,
            refresh_hint: number("spiffe_refresh_hint")?,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
        };
        for (i, key) in keys.iter().enumerate() {
            let Value::Object(jwk) = key else {
                return Err(key_err(i, "not a JSON object"));
            };
            let kty_known = jwk
                .get("kty")
                .and_then(Value::as_str)
                .is_some_and(|k| KNOWN_KTY.contains(&k));
            match jwk.get("use").and_then(Value::as_str) {
                // Unknown uses and key types are skipped (§4.1.3, §4.2.1, §4.2.2).
                Some(USE_X509) if kty_known => {
                    bundle.x509_authorities.push(x509_authority(i, jwk)?);
                }
                Some(USE_JWT) if kty_known => bundle.jwt_authorities.push(jwt_authority(i, key)?),
                _ => {}
            }
        }
        check_unique_kids(&bundle.jwt_authorities)?;
        Ok(bundle)
    }

    /// The X.509 authorities as PEM `CERTIFICATE` blocks.
    pub fn x509_pem(&self) -> String {
        let mut out = String::new();
        for der in &self.x509_authorities {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = STANDARD.encode(der);
            // Base64 is ASCII, so byte chunks are whole characters.
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out
    }

    /// The X.509 authorities' DER, concatenated (the Workload API's bundle encoding).
    pub fn x509_der_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }
}

fn check_cert(index: usize, der: &[u8]) -> Result<(), BundleError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        _ => Err(key_err(index, "not a DER X.509 certificate")),
    }
}

/// An `x509-svid` JWK: exactly one certificate in `x5c`, whose key the JWK's members describe.
fn x509_authority(index: usize, jwk: &Map<String, Value>) -> Result<Vec<u8>, BundleError> {
    let x5c = match jwk.get("x5c") {
        Some(Value::Array(certs)) => certs,
        _ => return Err(key_err(index, "an x509-svid key needs an `x5c` array")),
    };
    let [Value::String(b64)] = x5c.as_slice() else {
        return Err(key_err(
            index,
            "`x5c` must hold exactly one certificate (a base64 string)",
        ));
    };
    let der = STANDARD
        .decode(b64)
        .map_err(|_| key_err(index, "`x5c` is not standard base64"))?;
    check_cert(index, &der)?;
    let from_cert = cert_jwk(index, &der)?;
    // The key members must describe the certificate's key (RFC 7517 §4.7).
    for (member, value) in &from_cert {
        if jwk.get(member) != Some(value) {
            return Err(key_err(
                index,
                format!("member `{member}` does not match the certificate's public key"),
            ));
        }
    }
    Ok(der)
}

/// A `jwt-svid` JWK: an object with a non-empty `kid` and no private members; stored without
/// `use`.
fn jwt_authority(index: usize, jwk: &Value) -> Result<Map<String, Value>, BundleError> {
    let Value::Object(jwk) = jwk else {
        return Err(key_err(index, "not a JSON object"));
    };
    if jwk
        .get("kid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(key_err(index, "a JWT authority needs a non-empty `kid`"));
    }
    if !jwk.get("kty").is_some_and(Value::is_string) {
        return Err(key_err(index, "a JWT authority needs a `kty`"));
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(key_err(
            index,
            format!("private key member `{m}` in a trust bundle"),
        ));
    }
    let mut jwk = jwk.clone();
    jwk.remove("use");
    Ok(jwk)
}

fn check_unique_kids(jwks: &[Map<String, Value>]) -> Result<(), BundleError> {
    let mut seen = std::collections::HashSet::new();
    for (i, jwk) in jwks.iter().enumerate() {
        if let Some(kid) = jwk.get("kid").and_then(Value::as_str)
            && !seen.insert(kid)
        {
            return Err(key_err(i, "duplicate `kid` among JWT authorities"));
        }
    }
    Ok(())
}

/// The public key of a certificate as JWK members (`kty` and the key parameters).
fn cert_jwk(index: usize, der: &[u8]) -> Result<Map<String, Value>, BundleError> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => cert,
        _ => return Err(key_err(index, "not a DER X.509 certificate")),
    };
    let spki = cert.public_key();
    let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut jwk = Map::new();
    if spki.algorithm.algorithm == OID_SIG_ED25519 {
        jwk.insert("kty".into(), "OKP".into());
        jwk.insert("crv".into(), "Ed25519".into());
        jwk.insert("x".into(), b64(&spki.subject_public_key.data));
        return Ok(jwk);
    }
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let (crv, n) = match curve {
                Some(c) if c == OID_EC_P256 => ("P-256", 32),
                Some(c) if c == OID_NIST_EC_P384 => ("P-384", 48),
                _ => {
                    return Err(key_err(
                        index,
                        "ECDSA key on a curve other than P-256/P-384",
                    ));
                }
            };
            // Uncompressed point: 0x04 || x || y.
            let data = point.data();
            if data.len() != 1 + 2 * n || data[0] != 4 {
                return Err(key_err(index, "EC public key is not an uncompressed point"));
            }
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert("x".into(), b64(&data[1..=n]));
            jwk.insert("y".into(), b64(&data[n + 1..]));
        }
        Ok(PublicKey::RSA(rsa)) => {
            let trim = |b: &[u8]| {
                b.iter()
                    .position(|x| *x != 0)
                    .map_or(vec![0], |i| b[i..].to_vec())
            };
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("n".into(), b64(&trim(rsa.modulus)));
            jwk.insert("e".into(), b64(&trim(rsa.exponent)));
        }
        _ => return Err(key_err(index, "unsupported public key type")),
    }
    Ok(jwk)
}

#[cfg(test)]
mod tests;
