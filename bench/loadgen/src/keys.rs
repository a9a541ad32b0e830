//! The benchmark client's ES256 key and the assertions it signs.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;

pub const KEY_FILE: &str = "client.pkcs8.der";
pub const JWKS_FILE: &str = "client.jwks.json";

/// Writes a fresh P-256 key (PKCS#8 DER) and its public JWKS into `out`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the generated key: {e}"))?;
    let jwk = public_jwk(&pair)?;
    fs::write(out.join(KEY_FILE), pkcs8.as_ref())?;
    let jwks = json!({ "keys": [jwk] });
    fs::write(out.join(JWKS_FILE), serde_json::to_vec_pretty(&jwks)?)?;
    eprintln!(
        "wrote {} and {} (kid {})",
        out.join(KEY_FILE).display(),
        out.join(JWKS_FILE).display(),
        jwk["kid"]
    );
    Ok(())
}

/// The public JWK of `pair`; the kid is the first 16 bytes of SHA-256 over the public point.
fn public_jwk(pair: &EcdsaKeyPair) -> anyhow::Result<serde_json::Value> {
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        bail!("unexpected P-256 public key encoding");
    }
    let kid = B64.encode(&digest::digest(&digest::SHA256, point).as_ref()[..16]);
    Ok(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": B64.encode(&point[1..33]),
        "y": B64.encode(&point[33..65]),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }))
}

/// A loaded client key, ready to sign assertions.
pub struct ClientKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl ClientKey {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let der = fs::read(dir.join(KEY_FILE))
            .with_context(|| format!("reading {}", dir.join(KEY_FILE).display()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| anyhow::anyhow!("parsing {KEY_FILE}: {e}"))?;
        let jwk = public_jwk(&pair)?;
        let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
        Ok(Self { pair, kid })
    }

    /// Signs an ES256 JWT over `claims` with this key's kid in the header.
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let mut out = B64.encode(serde_json::to_vec(&header)?);
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let rng = SystemRandom::new();
        let sig = self
            .pair
            .sign(&rng, out.as_bytes())
            .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        Ok(out)
    }

    /// A client assertion per RFC 7523: iss = sub = client id, a unique jti, exp = iat + 300.
    pub fn assertion(
        &self,
        client_id: &str,
        aud: &str,
        jti: &str,
        iat: u64,
    ) -> anyhow::Result<String> {
        self.sign(&json!({
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "jti": jti,
            "iat": iat,
            "exp": iat + 300,
        }))
    }
}

impl ClientKey {
    /// A Kubernetes projected service-account token for `payments/api`, audience `mayfly`, valid
    /// for an hour from `iat`.
    pub fn service_account_token(&self, iss: &str, jti: &str, iat: u64) -> anyhow::Result<String> {
        self.sign(&json!({
            "aud": ["mayfly"],
            "exp": iat + 3600,
            "iat": iat,
            "nbf": iat,
            "iss": iss,
            "jti": jti,
            "kubernetes.io": {
                "namespace": "payments",
                "pod": {"name": "api-7d9f8b6c5-x2k4q", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": "api", "uid": "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"}
            },
            "sub": "system:serviceaccount:payments:api"
        }))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A random prefix that makes this run's jtis distinct from every other run's.
pub fn run_nonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; 12];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(B64.encode(bytes))
}
