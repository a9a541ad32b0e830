//! The server's signing keys in memory: the current signer, verifying keys for every published
//! key, and the JWKS document, swapped atomically after each tick of the key schedule.

use std::sync::Arc;

use mayfly_crypto::{Kek, KeyAlg, SigningKey, VerifyingKeys};
use mayfly_store::{AuditLog, Pending, Store, StoreError, StoredKey};
use mayfly_sts::keys::{self, KeyAction, KeyTimes, Schedule};
use mayfly_sts::{AuditEvent, Decision, EventKind};

/// One consistent view of the keys.
#[derive(Debug)]
pub(crate) struct KeySnapshot {
    /// The key that signs now.
    pub current: Arc<SigningKey>,
    /// Verifying keys for every published key (introspection, revocation).
    pub verifying: Arc<VerifyingKeys>,
    /// The JWKS document.
    pub jwks: bytes::Bytes,
}

/// Build a snapshot from stored keys at `now`; `None` when no key signs now.
pub(crate) fn snapshot(stored: Vec<StoredKey>, now: i64) -> Option<KeySnapshot> {
    let times: Vec<KeyTimes> = stored.iter().map(|k| k.times.clone()).collect();
    let current_kid = keys::current(&times, now)?.kid.clone();
    let published: Vec<&KeyTimes> = keys::published(&times, now).collect();
    let mut jwks_keys = Vec::new();
    let mut current = None;
    for k in stored {
        if published.iter().any(|p| p.kid == k.times.kid) {
            jwks_keys.push(k.key.public_jwk().clone());
        }
        if k.times.kid == current_kid {
            current = Some(Arc::new(k.key));
        }
    }
    let set = serde_json::json!({ "keys": jwks_keys });
    let verifying = VerifyingKeys::from_jwks(&set).ok()?;
    let jwks = bytes::Bytes::from(set.to_string());
    Some(KeySnapshot {
        current: current?,
        verifying: Arc::new(verifying),
        jwks,
    })
}

/// The key schedule and signing algorithm the config asks for.
pub fn key_policy(cfg: &mayfly_config::TokensConfig) -> (Schedule, KeyAlg) {
    let schedule = Schedule {
        rotation: cfg.key_rotation.as_secs() as i64,
        max_ttl: cfg.max_ttl.as_secs() as i64,
        skew: cfg.clock_skew.as_secs() as i64,
    };
    let alg = match cfg.signing_alg {
        mayfly_config::SigningAlg::EdDSA => KeyAlg::EdDSA,
        mayfly_config::SigningAlg::ES256 => KeyAlg::ES256,
    };
    (schedule, alg)
}

/// Carry out key actions and append one audit event per change (reason prefixed by `note`,
/// e.g. `"manual_"`). Returns what was done, as (action, kid).
pub async fn apply_and_record(
    store: &Store,
    kek: &Kek,
    audit: &AuditLog,
    actions: &[KeyAction],
    now: i64,
    alg: KeyAlg,
    note: &str,
) -> Result<Vec<(&'static str, String)>, StoreError> {
    let done = store.apply_key_actions(actions, now, alg, kek).await?;
    for (what, kid) in &done {
        let mut e = AuditEvent::new(EventKind::KeyRotation, now, Decision::Allow);
        e.jti = Some(kid.clone());
        e.reason = Some(format!("{note}{what}"));
        audit.commit(Pending::event(e)).await?;
        tracing::info!(kid = %kid, action = *what, "signing key schedule");
    }
    Ok(done)
}
