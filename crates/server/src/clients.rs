//! The client registry: clients from the config file plus those added at run time to the store.
//! Lookups are in memory; the store part is reloaded periodically and, rate-limited, on a miss.
//! A `jwks_uri` client's keys are held by the one JWKS key source
//! ([`mayfly_client::keysource`]) under [`KEY_OPTIONS`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mayfly_client::keysource::{KeyLocation, KeySource, KeySourceOptions, TtlRule};
use mayfly_config::{ClientConfig, JwksSource};
use mayfly_crypto::VerifyingKeys;
use mayfly_store::{Store, StoredClient};
use mayfly_sts::Client;

/// A client definition that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("client `{id}`: {problem}")]
pub struct ClientError {
    /// The client id.
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

/// How a `jwks_uri` client's keys are kept: refetched every 5 minutes whatever `Cache-Control`
/// says (and 5 minutes after a failure), on an unknown `kid` at most every 30 s, no redirects,
/// 10 s, 256 KiB.
pub const KEY_OPTIONS: KeySourceOptions = KeySourceOptions {
    ttl: TtlRule {
        default: 300,
        min: 300,
        max: 300,
    },
    unknown_kid_interval: 30,
    interval_from_any_fetch: false,
    retry_after_error: 300,
    max_redirects: 0,
    max_bytes: 256 * 1024,
    timeout: Duration::from_secs(10),
};

/// The key source of a `jwks_uri` client.
fn uri_source(id: &str, url: &url::Url) -> Result<KeySource, String> {
    KeySource::new(id, KeyLocation::JwkSet(url.clone()), KEY_OPTIONS).map_err(|e| e.to_string())
}

/// A JWK Set as verifying keys, or why not.
fn parse_keys(set: &serde_json::Value) -> Result<Arc<VerifyingKeys>, String> {
    VerifyingKeys::from_jwks(set)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The one place a registration becomes an engine client: keys verified usable, lifetime capped.
fn build(
    id: &str,
    keys: Result<Arc<VerifyingKeys>, String>,
    audiences: &[String],
    scopes: &[String],
    max_ttl: Option<i64>,
    global_max_ttl: i64,
) -> Result<Client, ClientError> {
    let err = |problem: String| ClientError {
        id: id.to_string(),
        problem,
    };
    if !mayfly_config::valid_client_id(id) {
        return Err(err(format!(
            "the id {} (fix: {})",
            mayfly_config::CLIENT_ID_RULE,
            mayfly_config::CLIENT_ID_FIX
        )));
    }
    let keys = keys.map_err(err)?;
    Ok(Client {
        id: id.to_string(),
        keys,
        audiences: audiences.to_vec(),
        scopes: scopes.to_vec(),
        max_ttl: max_ttl.map_or(global_max_ttl, |t| t.min(global_max_ttl)),
    })
}

/// Build an engine client from config. `jwks_uri` clients are fetched here.
pub async fn client_from_config(
    c: &ClientConfig,
    global_max_ttl: i64,
) -> Result<Client, ClientError> {
    let keys = match &c.jwks {
        JwksSource::Static(v) => parse_keys(v),
        JwksSource::Uri(url) => match uri_source(&c.id, url) {
            Ok(source) => source.fetch_now(0).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
    };
    let max_ttl = c.max_ttl.map(|t| t.as_secs() as i64);
    build(
        &c.id,
        keys,
        &c.audiences,
        &c.scopes,
        max_ttl,
        global_max_ttl,
    )
}

/// Build an engine client from a stored (run-time) registration.
pub fn client_from_stored(c: &StoredClient, global_max_ttl: i64) -> Result<Client, ClientError> {
    let keys = serde_json::from_str(&c.jwks)
        .map_err(|e| e.to_string())
        .and_then(|v| parse_keys(&v));
    build(
        &c.id,
        keys,
        &c.audiences,
        &c.scopes,
        c.max_ttl,
        global_max_ttl,
    )
}

/// All clients, by id.
#[derive(Debug)]
pub(crate) struct Registry {
    from_config: RwLock<HashMap<String, Arc<Client>>>,
    /// The key sources of config clients whose keys live at a `jwks_uri`.
    uri_sources: HashMap<String, KeySource>,
    from_store: RwLock<HashMap<String, Arc<Client>>>,
    last_miss_reload: std::sync::Mutex<i64>,
    max_ttl: i64,
}

impl Registry {
    pub(crate) fn new(config: Vec<Client>, uri_sources: Vec<ClientConfig>, max_ttl: i64) -> Self {
        Self {
            from_config: RwLock::new(
                config
                    .into_iter()
                    .map(|c| (c.id.clone(), Arc::new(c)))
                    .collect(),
            ),
            uri_sources: uri_sources
                .iter()
                .filter_map(|c| match &c.jwks {
                    JwksSource::Uri(url) => match uri_source(&c.id, url) {
                        Ok(s) => Some((c.id.clone(), s)),
                        Err(e) => {
                            tracing::warn!(client = %c.id, error = %e, "cannot set up the client's jwks_uri; its start-up keys stay");
                            None
                        }
                    },
                    JwksSource::Static(_) => None,
                })
                .collect(),
            from_store: RwLock::new(HashMap::new()),
            last_miss_reload: std::sync::Mutex::new(i64::MIN),
            max_ttl,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Client>> {
        if let Some(c) = self.from_config.read().ok()?.get(id) {
            return Some(c.clone());
        }
        self.from_store.read().ok()?.get(id).cloned()
    }

    /// Every client, config ones first (sorted by id within each part).
    pub(crate) fn all(&self) -> Vec<Arc<Client>> {
        let mut v: Vec<Arc<Client>> = self
            .from_config
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if let Ok(m) = self.from_store.read() {
            v.extend(m.values().cloned());
        }
        v
    }

    fn is_config_client(&self, id: &str) -> bool {
        self.from_config.read().is_ok_and(|m| m.contains_key(id))
    }

    /// Refetch the JWKS of a `jwks_uri` client. `on_miss` (an unknown kid) refetches at most
    /// every 30 s, the schedule every 5 minutes; either way a fetch resets the schedule.
    /// Returns whether new keys were installed. A failed fetch keeps the old keys.
    pub(crate) async fn refresh_uri(&self, id: &str, now: i64, on_miss: bool) -> bool {
        let Some(source) = self.uri_sources.get(id) else {
            return false;
        };
        let fresh = if on_miss {
            source.refresh_unknown_kid(now, source.generation()).await
        } else {
            source.refresh_if_stale(now).await
        };
        let (Some(keys), true) = (source.current(), fresh) else {
            return false;
        };
        let Ok(mut m) = self.from_config.write() else {
            return false;
        };
        let Some(old) = m.get(id) else {
            return false;
        };
        let client = Client {
            keys,
            ..Client::clone(old)
        };
        m.insert(id.to_string(), Arc::new(client));
        true
    }

    /// Refresh every `jwks_uri` client that is due.
    pub(crate) async fn refresh_all_uris(&self, now: i64) {
        let ids: Vec<String> = self.uri_sources.keys().cloned().collect();
        for id in ids {
            self.refresh_uri(&id, now, false).await;
        }
    }

    /// Every id and its scopes (for metadata).
    pub(crate) fn all_scopes(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .from_config
            .read()
            .map(|m| m.values().flat_map(|c| c.scopes.clone()).collect())
            .unwrap_or_default();
        if let Ok(m) = self.from_store.read() {
            s.extend(m.values().flat_map(|c| c.scopes.clone()));
        }
        s.sort();
        s.dedup();
        s
    }

    /// Reload run-time clients. Config clients win on an id clash.
    pub(crate) async fn reload(&self, store: &Store) -> Result<(), mayfly_store::StoreError> {
        let stored = store.list_clients().await?;
        let mut map = HashMap::with_capacity(stored.len());
        for c in &stored {
            if self.is_config_client(&c.id) {
                continue;
            }
            match client_from_stored(c, self.max_ttl) {
                Ok(client) => {
                    map.insert(c.id.clone(), Arc::new(client));
                }
                Err(e) => {
                    tracing::warn!(client = %c.id, error = %e, "skipping unusable stored client")
                }
            }
        }
        if let Ok(mut m) = self.from_store.write() {
            *m = map;
        }
        Ok(())
    }

    /// On a miss, reload at most once per second so unknown ids cannot hammer the database.
    /// Returns the client and whether this call loaded it (it was not known before).
    pub(crate) async fn get_or_reload(
        &self,
        id: &str,
        store: &Store,
        now: i64,
    ) -> Option<(Arc<Client>, bool)> {
        if let Some(c) = self.get(id) {
            return Some((c, false));
        }
        let due = match self.last_miss_reload.lock() {
            Ok(mut last) if *last < now => {
                *last = now;
                true
            }
            _ => false,
        };
        if due {
            if let Err(e) = self.reload(store).await {
                tracing::warn!(error = %e, "cannot reload clients");
            }
            return self.get(id).map(|c| (c, true));
        }
        None
    }
}
