//! The server's signing keys in memory: the current signer, verifying keys for every published
//! key, and the JWKS document, swapped atomically after each tick of the key schedule.

use std::sync::Arc;

use mayfly_crypto::{SigningKey, VerifyingKeys};
use mayfly_store::StoredKey;
use mayfly_sts::keys::{self, KeyTimes, Schedule};

/// One consistent view of the keys.
#[derive(Debug)]
pub(crate) struct KeySnapshot {
    /// The key that signs now.
    pub current: Arc<SigningKey>,
    /// Verifying keys for every published key (introspection, revocation).
    pub verifying: Arc<VerifyingKeys>,
    /// The JWKS document.
    pub jwks: bytes::Bytes,
    /// Key times, for `keys list` and tests.
    pub times: Vec<KeyTimes>,
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
        times,
    })
}

/// The schedule from the config.
pub(crate) fn schedule(cfg: &mayfly_config::TokensConfig) -> Schedule {
    Schedule {
        rotation: cfg.key_rotation.as_secs() as i64,
        max_ttl: cfg.max_ttl.as_secs() as i64,
        skew: cfg.clock_skew.as_secs() as i64,
    }
}
