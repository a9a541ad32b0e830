//! The routes' keys: opened from the store into zeroized memory, reloaded when an entry's
//! `key_version` or expiry changes (rotation, extension), refused once expired, with warnings
//! (log and the `mayfly_proxy_key_days_left` gauge) at 30 and 7 days left.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use mayfly_crypto::Kek;
use mayfly_store::{DAY, DebtEntry, Store, StoreError, days_left, last_day};

use crate::error::Refusal;
use crate::inject::Injection;
use crate::route::Route;

/// A route's key, ready to inject.
#[derive(Debug)]
pub struct RouteKey {
    /// The route it is injected on.
    pub route: String,
    /// The key-debt entry.
    pub entry: String,
    /// Its owner.
    pub owner: String,
    /// First second the key may no longer be used.
    pub expires_at: i64,
    /// The entry's version when this was loaded.
    pub version: i64,
    /// The key in the route's injected forms.
    pub injection: Injection,
}

impl RouteKey {
    /// A key outside any store (unit tests).
    #[cfg(test)]
    pub fn for_tests(inject: &mayfly_config::Inject, key: &[u8]) -> Self {
        Self {
            route: "test".into(),
            entry: "test".into(),
            owner: "owner".into(),
            expires_at: i64::MAX,
            version: 1,
            injection: Injection::new(inject, key).unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

/// What a route has.
#[derive(Debug, Clone)]
enum KeyState {
    /// A usable key.
    Loaded(Arc<RouteKey>),
    /// No entry, or an entry without a wrapped key.
    Missing,
    /// The entry's key cannot be used for this route (version, why).
    Unusable(i64, &'static str),
}

/// The keys of all routes.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_route: RwLock<HashMap<String, KeyState>>,
    /// Expiry warning level logged per route: (expires_at, 0 none, 1 ≤ 30 days, 2 ≤ 7 days).
    warned: std::sync::Mutex<HashMap<String, (i64, u8)>>,
}

impl KeyRing {
    /// The key for a route at `now`, or why the route is refused.
    pub fn get(&self, route: &Route, now: i64) -> Result<Arc<RouteKey>, Refusal> {
        let state = self
            .by_route
            .read()
            .ok()
            .and_then(|m| m.get(&route.name).cloned())
            .unwrap_or(KeyState::Missing);
        match state {
            KeyState::Loaded(k) => {
                if now >= k.expires_at {
                    Err(Refusal::KeyExpired {
                        route: route.name.clone(),
                        // The last day it could be used.
                        date: last_day(k.expires_at),
                        owner: k.owner.clone(),
                        entry: k.entry.clone(),
                    })
                } else {
                    Ok(k)
                }
            }
            KeyState::Missing => Err(Refusal::NoKey {
                route: route.name.clone(),
                why: format!(
                    "the store holds no key for entry `{}`; add it with `mayfly debt add --name {} --owner TEAM --expires YYYY-MM-DD --route {}` (key on standard input)",
                    route.key, route.key, route.name
                ),
            }),
            KeyState::Unusable(_, why) => Err(Refusal::NoKey {
                route: route.name.clone(),
                why: format!("{why}; replace it with `mayfly debt rotate {}`", route.key),
            }),
        }
    }

    /// Look at the store: load new or changed keys, forget removed ones, update the days-left
    /// gauges and log expiry warnings. Errors leave the loaded keys as they were.
    pub async fn reload(
        &self,
        store: &Store,
        kek: &Kek,
        routes: &[Route],
        now: i64,
    ) -> Result<(), StoreError> {
        let entries: HashMap<String, DebtEntry> = store
            .list_debt()
            .await?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        for route in routes {
            let current = self
                .by_route
                .read()
                .ok()
                .and_then(|m| m.get(&route.name).cloned());
            let entry = entries.get(&route.key).filter(|e| e.wrapped);
            let next = match (entry, &current) {
                (None, Some(KeyState::Missing)) => continue,
                (None, _) => {
                    tracing::warn!(route = %route.name, entry = %route.key, "no key in the store for this route; it answers 503 until `mayfly debt add` stores one");
                    metrics::gauge!("mayfly_proxy_key_days_left", "route" => route.name.clone())
                        .set(f64::NAN);
                    KeyState::Missing
                }
                (Some(e), Some(KeyState::Loaded(k)))
                    if k.version == e.key_version && k.expires_at == e.expires_at =>
                {
                    self.expiry_watch(route, k, now);
                    continue;
                }
                (Some(e), Some(KeyState::Unusable(v, _))) if *v == e.key_version => continue,
                (Some(_), _) => match store.open_debt_key(&route.key, kek).await? {
                    None => KeyState::Missing,
                    Some((e, key)) => match Injection::new(&route.inject, &key) {
                        Ok(injection) => {
                            let k = Arc::new(RouteKey {
                                route: route.name.clone(),
                                entry: e.name.clone(),
                                owner: e.owner.clone(),
                                expires_at: e.expires_at,
                                version: e.key_version,
                                injection,
                            });
                            tracing::info!(route = %route.name, entry = %e.name, key_version = e.key_version, expires = %last_day(e.expires_at), "loaded the route's key");
                            self.expiry_watch(route, &k, now);
                            KeyState::Loaded(k)
                        }
                        Err(why) => {
                            tracing::error!(route = %route.name, entry = %e.name, key_version = e.key_version, problem = why, "the stored key cannot be used for this route");
                            KeyState::Unusable(e.key_version, why)
                        }
                    },
                },
            };
            if let Ok(mut m) = self.by_route.write() {
                m.insert(route.name.clone(), next);
            }
        }
        Ok(())
    }

    /// Gauge and one-time warnings as a key nears its expiry.
    fn expiry_watch(&self, route: &Route, k: &RouteKey, now: i64) {
        let left = k.expires_at - now;
        let days = days_left(k.expires_at, now);
        metrics::gauge!("mayfly_proxy_key_days_left", "route" => route.name.clone())
            .set(days as f64);
        let level = match left {
            l if l <= 0 => 3,
            l if l <= 7 * DAY => 2,
            l if l <= 30 * DAY => 1,
            _ => 0,
        };
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        let prev = warned
            .get(&route.name)
            .filter(|(exp, _)| *exp == k.expires_at)
            .map_or(0, |(_, l)| *l);
        if level <= prev {
            return;
        }
        warned.insert(route.name.clone(), (k.expires_at, level));
        let expires = last_day(k.expires_at);
        match level {
            3 => {
                tracing::error!(route = %route.name, entry = %k.entry, owner = %k.owner, %expires, "the route's static key has expired: calls are refused (key_expired) until it is extended (mayfly debt extend)")
            }
            2 => {
                tracing::warn!(route = %route.name, entry = %k.entry, owner = %k.owner, %expires, days_left = days, "the route's static key expires within 7 days")
            }
            _ => {
                tracing::warn!(route = %route.name, entry = %k.entry, owner = %k.owner, %expires, days_left = days, "the route's static key expires within 30 days")
            }
        }
    }
}
