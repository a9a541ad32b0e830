//! mayfly's cryptography, and the only crate that names the crypto backend (aws-lc-rs).
//!
//! - [`SigningKey`]: server and client signing keys (EdDSA, ES256, ES384) held parsed, so each
//!   JWS costs one signature and no key parsing.
//! - [`VerifyingKeys`]: a registered JWK Set and an algorithm allow-list; verification itself is
//!   done by `jsonwebtoken`.
//! - [`Kek`]: AES-256-GCM key encryption at rest.
//! - [`x509`]: the X.509 CA of a SPIFFE trust domain and the X.509-SVIDs it signs.
//!
//! It does not decide anything about claims (lifetimes, audiences): that is the engine's job.
#![forbid(unsafe_code)]

mod kek;
mod signer;
mod verify;
pub mod x509;

pub use kek::Kek;
pub use signer::{KeyAlg, SigningKey};
pub use verify::{ASSERTION_ALGS, Verified, VerifyError, VerifyingKeys};

use aws_lc_rs::rand::SecureRandom;
use base64::Engine;

/// Crypto failures that are not about a peer's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Key material could not be generated, parsed or used.
    #[error("key error: {0}")]
    Key(&'static str),
    /// Decryption failed: wrong master key or tampered data.
    #[error("cannot decrypt: wrong master key, or the stored key was altered")]
    Decrypt,
    /// Serialization failed.
    #[error("cannot serialize: {0}")]
    Serialize(String),
    /// An X.509 certificate, CSR or SPIFFE ID was refused.
    #[error(transparent)]
    X509(x509::X509Error),
}

/// `n` random bytes from the system generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CryptoError::Random)?;
    Ok(buf)
}

/// A random identifier: 128 bits, base64url without padding (used for `jti`).
pub fn random_id() -> Result<String, CryptoError> {
    Ok(b64(&random_bytes(16)?))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 over data that arrives in pieces (an export file, line by line), so it never has to
/// be held whole. `Sha256::new().update(a).update(b)` hashes the same as `sha256(a ++ b)`.
pub struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    /// An empty hash state.
    pub fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    /// Feed `data`.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(data);
        self
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

/// A short, non-reversible fingerprint of a secret (first 12 hex chars of its SHA-256), for logs.
pub fn fingerprint(secret: &[u8]) -> String {
    hex(&sha256(secret)[..6])
}

/// Equality of two secrets (or their digests) in time that does not depend on where they
/// differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Lower-case hex.
pub fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(data.len() * 2);
    for b in data {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub(crate) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn unb64(s: &str) -> Result<Vec<u8>, CryptoError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| CryptoError::Key("bad base64url"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_in_pieces_is_sha256_of_the_whole() {
        let mut h = super::Sha256::new();
        h.update(b"mayfly ").update(b"export\n");
        assert_eq!(h.finish(), super::sha256(b"mayfly export\n"));
    }
}
