//! Signing keys held parsed in aws-lc-rs, and compact JWS serialization of what they sign.
//!
//! `jsonwebtoken::encode` re-parses the PKCS#8 key on every call (about half the cost of a
//! token); holding the parsed key doubles throughput. Verification stays in `jsonwebtoken`.

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair,
};
use jsonwebtoken::jwk::ThumbprintHash;
use serde::Serialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::{CryptoError, b64, unb64};

/// Algorithms mayfly can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 / SHA-256.
    ES256,
    /// ECDSA P-384 / SHA-384.
    ES384,
}

impl KeyAlg {
    /// JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    /// From a JOSE name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "ES384" => Some(Self::ES384),
            _ => None,
        }
    }

    fn ec(
        self,
    ) -> Option<(
        &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
        &'static str,
        usize,
    )> {
        match self {
            Self::EdDSA => None,
            Self::ES256 => Some((&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)),
            Self::ES384 => Some((&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)),
        }
    }
}

enum Inner {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
}

/// A private signing key, parsed once. `Debug` shows only the kid and algorithm.
pub struct SigningKey {
    alg: KeyAlg,
    kid: String,
    inner: Inner,
    public_jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {})", self.alg.name(), self.kid)
    }
}

impl SigningKey {
    /// Generate a new key; its kid is its RFC 7638 thumbprint unless `kid` is given.
    pub fn generate(alg: KeyAlg, kid: Option<&str>) -> Result<Self, CryptoError> {
        let inner = match alg.ec() {
            None => Inner::Ed(
                Ed25519KeyPair::generate()
                    .map_err(|_| CryptoError::Key("Ed25519 generation failed"))?,
            ),
            Some((a, _, _)) => Inner::Ec(
                EcdsaKeyPair::generate(a)
                    .map_err(|_| CryptoError::Key("ECDSA generation failed"))?,
            ),
        };
        Self::assemble(alg, kid, inner)
    }

    /// Load a key stored as PKCS#8 DER.
    pub fn from_pkcs8(alg: KeyAlg, kid: &str, der: &[u8]) -> Result<Self, CryptoError> {
        let inner = match alg.ec() {
            None => Inner::Ed(
                Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| CryptoError::Key("not an Ed25519 PKCS#8 key"))?,
            ),
            Some((a, _, _)) => Inner::Ec(
                EcdsaKeyPair::from_pkcs8(a, der)
                    .map_err(|_| CryptoError::Key("not a matching ECDSA PKCS#8 key"))?,
            ),
        };
        Self::assemble(alg, Some(kid), inner)
    }

    /// Serialize as PKCS#8 DER (to be encrypted before it is stored).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = match &self.inner {
            Inner::Ed(k) => k
                .to_pkcs8()
                .map_err(|_| CryptoError::Key("PKCS#8 export failed"))?,
            Inner::Ec(k) => k
                .to_pkcs8v1()
                .map_err(|_| CryptoError::Key("PKCS#8 export failed"))?,
        };
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// Load a private JWK (as written by `mayfly keygen`): OKP/Ed25519 or EC P-256/P-384.
    pub fn from_private_jwk(jwk: &Value) -> Result<Self, CryptoError> {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        let d = Zeroizing::new(unb64(
            s("d").ok_or(CryptoError::Key("the JWK has no private part `d`"))?,
        )?);
        let x = unb64(s("x").ok_or(CryptoError::Key("the JWK has no `x`"))?)?;
        let (alg, inner) = match (s("kty"), s("crv")) {
            (Some("OKP"), Some("Ed25519")) => (
                KeyAlg::EdDSA,
                Inner::Ed(
                    Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                        .map_err(|_| CryptoError::Key("inconsistent Ed25519 JWK"))?,
                ),
            ),
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let alg = if crv == "P-256" {
                    KeyAlg::ES256
                } else {
                    KeyAlg::ES384
                };
                let y = unb64(s("y").ok_or(CryptoError::Key("the EC JWK has no `y`"))?)?;
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let (a, _, _) = alg.ec().ok_or(CryptoError::Key("not EC"))?;
                let kp = EcdsaKeyPair::from_private_key_and_public_key(a, &d, &point)
                    .map_err(|_| CryptoError::Key("inconsistent EC JWK"))?;
                (alg, Inner::Ec(kp))
            }
            _ => {
                return Err(CryptoError::Key(
                    "unsupported JWK: use OKP Ed25519 or EC P-256/P-384",
                ));
            }
        };
        if s("alg").is_some_and(|a| a != alg.name()) {
            return Err(CryptoError::Key(
                "the JWK's `alg` does not match its key type",
            ));
        }
        Self::assemble(alg, s("kid"), inner)
    }

    /// The private JWK (for `mayfly keygen`); the caller writes it to a 0600 file.
    pub fn to_private_jwk(&self) -> Result<Zeroizing<String>, CryptoError> {
        let d = Zeroizing::new(match &self.inner {
            Inner::Ed(k) => {
                let seed = k
                    .seed()
                    .map_err(|_| CryptoError::Key("seed export failed"))?;
                let bin = seed
                    .as_be_bytes()
                    .map_err(|_| CryptoError::Key("seed export failed"))?;
                b64(bin.as_ref())
            }
            Inner::Ec(k) => {
                let bin = k
                    .private_key()
                    .as_be_bytes()
                    .map_err(|_| CryptoError::Key("EC export failed"))?;
                b64(bin.as_ref())
            }
        });
        let mut jwk = self.public_jwk.clone();
        if let Some(o) = jwk.as_object_mut() {
            o.insert("d".into(), Value::String(d.to_string()));
        }
        let text = serde_json::to_string_pretty(&jwk)
            .map_err(|e| CryptoError::Serialize(e.to_string()))?;
        // Scrub the copy inside the Value before it is dropped.
        if let Some(Value::String(s)) = jwk.as_object_mut().and_then(|o| o.get_mut("d")) {
            zeroize::Zeroize::zeroize(s);
        }
        Ok(Zeroizing::new(text))
    }

    fn assemble(alg: KeyAlg, kid: Option<&str>, inner: Inner) -> Result<Self, CryptoError> {
        let mut jwk = match (&inner, alg.ec()) {
            (Inner::Ed(k), _) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
            (Inner::Ec(k), Some((_, crv, n))) => {
                let p = k.public_key().as_ref();
                if p.len() != 1 + 2 * n {
                    return Err(CryptoError::Key("unexpected EC point size"));
                }
                json!({"kty": "EC", "crv": crv, "x": b64(&p[1..1 + n]), "y": b64(&p[1 + n..])})
            }
            _ => return Err(CryptoError::Key("algorithm does not match key")),
        };
        let kid = match kid {
            Some(k) => k.to_string(),
            None => {
                let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone())
                    .map_err(|e| CryptoError::Serialize(e.to_string()))?;
                parsed
                    .thumbprint(ThumbprintHash::SHA256)
                    .map_err(|_| CryptoError::Key("thumbprint failed"))?
            }
        };
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), Value::String(kid.clone()));
            o.insert("alg".into(), Value::String(alg.name().into()));
            o.insert("use".into(), Value::String("sig".into()));
        }
        Ok(Self {
            alg,
            kid,
            inner,
            public_jwk: jwk,
        })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// Public JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// Sign `claims` as a compact JWS with header `alg`, `kid` and optional `typ`.
    pub fn sign_jwt<T: Serialize>(
        &self,
        typ: Option<&str>,
        claims: &T,
    ) -> Result<String, CryptoError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            typ: Option<&'a str>,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            alg: self.alg.name(),
            typ,
            kid: &self.kid,
        })
        .map_err(|e| CryptoError::Serialize(e.to_string()))?;
        let body = serde_json::to_vec(claims).map_err(|e| CryptoError::Serialize(e.to_string()))?;
        let mut out = b64(&header);
        out.push('.');
        out.push_str(&b64(&body));
        let sig = match &self.inner {
            Inner::Ed(k) => b64(k.sign(out.as_bytes()).as_ref()),
            Inner::Ec(k) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                b64(k
                    .sign(&rng, out.as_bytes())
                    .map_err(|_| CryptoError::Key("ECDSA signing failed"))?
                    .as_ref())
            }
        };
        out.push('.');
        out.push_str(&sig);
        Ok(out)
    }
}
