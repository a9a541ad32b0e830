//! Signing keys at rest: PKCS#8 sealed with AES-256-GCM under the master key, bound to the kid.

use base64::Engine;
use mayfly_crypto::{Kek, KeyAlg, SigningKey};
use mayfly_proto::keys::{KeyAction, KeyTimes};
use sqlx::Row;

use crate::{Store, StoreError, db};

/// A signing key with its schedule.
#[derive(Debug)]
pub struct StoredKey {
    /// Its lifecycle times.
    pub times: KeyTimes,
    /// The parsed private key.
    pub key: SigningKey,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Store {
    /// Every stored signing key, decrypted. Fails if the master key is not the one they were
    /// sealed with.
    pub async fn load_keys(&self, kek: &Kek) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, created_at, not_before, not_after, expires_at, sealed_private FROM signing_keys ORDER BY not_before",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db("load signing keys"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kid: String = r.try_get("kid").map_err(db("read key"))?;
            let alg: String = r.try_get("alg").map_err(db("read key"))?;
            let sealed: String = r.try_get("sealed_private").map_err(db("read key"))?;
            let sealed = b64()
                .decode(sealed)
                .map_err(|_| StoreError::Corrupt(format!("key {kid}: sealed key is not base64")))?;
            let der = kek.open(kid.as_bytes(), &sealed)?;
            let alg = KeyAlg::from_name(&alg)
                .ok_or_else(|| StoreError::Corrupt(format!("key {kid}: unknown alg")))?;
            let key = SigningKey::from_pkcs8(alg, &kid, &der)?;
            let times = KeyTimes {
                kid,
                created_at: r.try_get("created_at").map_err(db("read key"))?,
                not_before: r.try_get("not_before").map_err(db("read key"))?,
                not_after: r.try_get("not_after").map_err(db("read key"))?,
                expires_at: r.try_get("expires_at").map_err(db("read key"))?,
            };
            out.push(StoredKey { times, key });
        }
        Ok(out)
    }

    /// Carry out a key plan; returns (what, kid) pairs for the audit log.
    pub async fn apply_key_actions(
        &self,
        actions: &[KeyAction],
        now: i64,
        alg: KeyAlg,
        kek: &Kek,
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        let mut done = Vec::new();
        for a in actions {
            match a {
                KeyAction::Create {
                    not_before,
                    not_after,
                    expires_at,
                } => {
                    let key = SigningKey::generate(alg, None)?;
                    let der = key.to_pkcs8()?;
                    let sealed = b64().encode(kek.seal(key.kid().as_bytes(), &der)?);
                    let jwk = key.public_jwk().to_string();
                    sqlx::query("INSERT INTO signing_keys (kid, alg, created_at, not_before, not_after, expires_at, public_jwk, sealed_private) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                        .bind(key.kid()).bind(alg.name()).bind(now).bind(*not_before).bind(*not_after).bind(*expires_at).bind(jwk).bind(sealed)
                        .execute(self.pool()).await.map_err(db("insert signing key"))?;
                    done.push(("key_created", key.kid().to_string()));
                }
                KeyAction::Reschedule(t) => {
                    sqlx::query("UPDATE signing_keys SET not_before = $1, not_after = $2, expires_at = $3 WHERE kid = $4")
                        .bind(t.not_before).bind(t.not_after).bind(t.expires_at).bind(&t.kid)
                        .execute(self.pool()).await.map_err(db("reschedule signing key"))?;
                    done.push(("key_rescheduled", t.kid.clone()));
                }
                KeyAction::Remove { kid } => {
                    sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                        .bind(kid)
                        .execute(self.pool())
                        .await
                        .map_err(db("remove signing key"))?;
                    done.push(("key_removed", kid.clone()));
                }
            }
        }
        Ok(done)
    }
}
