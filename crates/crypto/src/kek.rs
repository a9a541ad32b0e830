//! Key-encryption key: AES-256-GCM with a random 96-bit nonce per sealing.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use zeroize::Zeroizing;

use crate::{CryptoError, random_bytes};

/// The master key that encrypts signing keys at rest. Never printed: `Debug` shows a fingerprint.
pub struct Kek {
    key: LessSafeKey,
    audit_key: aws_lc_rs::hmac::Key,
    fingerprint: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.fingerprint)
    }
}

impl Kek {
    /// From 32 bytes encoded in standard base64 (as in `MAYFLY_MASTER_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError::Key("master key is not base64"))?,
        );
        Self::from_bytes(&raw)
    }

    /// From 32 raw bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        if raw.len() != 32 {
            return Err(CryptoError::Key("master key must be exactly 32 bytes"));
        }
        let key =
            UnboundKey::new(&AES_256_GCM, raw).map_err(|_| CryptoError::Key("bad AES-256 key"))?;
        // A separate key for the audit chain, derived so that one master key serves both and
        // neither use can be turned against the other.
        let derive = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, raw);
        let audit_raw = Zeroizing::new(
            aws_lc_rs::hmac::sign(&derive, b"mayfly audit chain v1")
                .as_ref()
                .to_vec(),
        );
        let audit_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &audit_raw);
        Ok(Self {
            key: LessSafeKey::new(key),
            audit_key,
            fingerprint: crate::fingerprint(raw),
        })
    }

    /// A new random master key, base64 encoded.
    pub fn generate_base64() -> Result<Zeroizing<String>, CryptoError> {
        let raw = Zeroizing::new(random_bytes(32)?);
        Ok(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(&*raw),
        ))
    }

    /// Fingerprint safe to log.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// HMAC-SHA256 of `data` under the audit-chain key: only a holder of the master key can
    /// forge a chain link, so rewriting the database is not enough to hide an edit.
    pub fn audit_mac(&self, data: &[u8]) -> [u8; 32] {
        let tag = aws_lc_rs::hmac::sign(&self.audit_key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Encrypt; `aad` binds the ciphertext to its context (the key id), so rows cannot be swapped.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes(NONCE_LEN)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&nonce_bytes).map_err(|_| CryptoError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Key("seal failed"))?;
        let mut out = nonce_bytes;
        out.extend_from_slice(&buf);
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    /// Decrypt what [`Kek::seal`] produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let k = Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap();
        let sealed = k.seal(b"kid1", b"secret").unwrap();
        assert_eq!(&*k.open(b"kid1", &sealed).unwrap(), b"secret");
        assert!(matches!(
            k.open(b"kid2", &sealed),
            Err(CryptoError::Decrypt)
        ));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(k.open(b"kid1", &bad), Err(CryptoError::Decrypt)));
        let other = Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap();
        assert!(matches!(
            other.open(b"kid1", &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn wrong_length_refused() {
        assert!(Kek::from_bytes(&[0u8; 16]).is_err());
        assert!(Kek::from_base64("not base64!").is_err());
    }
}
