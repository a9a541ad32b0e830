//! Token Status Lists (draft-ietf-oauth-status-list): the slot allocator every issued token and
//! JWT-SVID takes its index from, and `GET /statuslists/{list}`, the signed list whose bit `i`
//! is set when the token at index `i` is revoked.
//!
//! Slots are reserved from the store in blocks of [`BLOCK`] (one statement per block, so
//! replicas never share an index); issuing a token takes the next slot of the block in memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_client::status::StatusBits;
use mayfly_store::{Store, StoreError};
use mayfly_sts::StatusSlot;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::state::App;

/// Indexes reserved per store round trip.
pub(crate) const BLOCK: i64 = 256;

/// A published list is rebuilt at most this often.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Lists kept built at once (verifiers fetch the few lists of live tokens).
const CACHED_LISTS: usize = 16;

/// The media type of a status list token.
pub(crate) const STATUSLIST_JWT: &str = "application/statuslist+jwt";

/// The block of indexes this replica hands out: `next..end` of `list`.
#[derive(Debug, Clone, Copy)]
struct Block {
    list: i64,
    next: i64,
    end: i64,
}

/// Hands out status slots from reserved blocks; refills from the store when a block is used up.
pub(crate) struct Allocator {
    size: i64,
    block: Mutex<Option<Block>>,
}

impl Allocator {
    /// An allocator for lists of `size` entries.
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size: size as i64,
            block: Mutex::new(None),
        }
    }

    /// The next free slot; reserves a new block in `store` when this one is used up.
    pub(crate) async fn slot(&self, store: &Store, now: i64) -> Result<StatusSlot, StoreError> {
        let mut guard = self.block.lock().await;
        let b = match *guard {
            Some(b) if b.next < b.end => b,
            _ => {
                let r = store.allocate_status(self.size, BLOCK, now).await?;
                Block {
                    list: r.list,
                    next: r.start,
                    end: r.end,
                }
            }
        };
        *guard = Some(Block {
            next: b.next + 1,
            ..b
        });
        Ok(StatusSlot {
            list: b.list,
            idx: b.next,
        })
    }
}

/// Lists built recently: list number → (when, the signed token).
#[derive(Default)]
pub(crate) struct Published {
    lists: Mutex<HashMap<i64, (Instant, bytes::Bytes)>>,
    aggregation: Mutex<Option<(Instant, bytes::Bytes)>>,
}

#[derive(Serialize)]
struct ListClaim {
    bits: u8,
    lst: String,
}

#[derive(Serialize)]
struct ListClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    ttl: i64,
    status_list: ListClaim,
}

/// Build and sign list `list` at `now`; `None` when there is no such list.
async fn build(app: &App, list: i64, now: i64) -> Result<Option<bytes::Bytes>, StoreError> {
    let Some(size) = app.store().status_list_size(list).await? else {
        return Ok(None);
    };
    let mut bits = StatusBits::new(size.max(0) as usize);
    for idx in app.store().revoked_indexes(list, now).await? {
        bits.set(idx.max(0) as usize);
    }
    let uri = mayfly_sts::lease::status_list_uri(app.issuer(), list);
    let ttl = app.config().status_list.ttl.as_secs() as i64;
    let claims = ListClaims {
        sub: &uri,
        iat: now,
        // Valid for two cache periods, so a verifier that refreshes on time never holds an
        // expired list.
        exp: now + 2 * ttl,
        ttl,
        status_list: ListClaim {
            bits: 1,
            lst: bits.encode_lst(),
        },
    };
    let jwt = app
        .keys()
        .current
        .sign_jwt(Some("statuslist+jwt"), &claims)?;
    Ok(Some(bytes::Bytes::from(jwt)))
}

/// `GET /statuslists/{list}`: the signed status list token.
pub(crate) async fn get_list(State(app): State<App>, Path(list): Path<String>) -> Response {
    metrics::counter!("mayfly_status_list_fetches_total").increment(1);
    let Ok(list) = list.parse::<i64>() else {
        return crate::handlers::not_found().await;
    };
    if list < 0 {
        return crate::handlers::not_found().await;
    }
    let published = app.published();
    let cached = {
        let lists = published.lists.lock().await;
        lists
            .get(&list)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, b)| b.clone())
    };
    let body = match cached {
        Some(b) => b,
        None => match build(&app, list, app.clock().now()).await {
            Ok(Some(b)) => {
                let mut lists = published.lists.lock().await;
                if lists.len() >= CACHED_LISTS {
                    lists.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
                }
                if lists.len() < CACHED_LISTS {
                    lists.insert(list, (Instant::now(), b.clone()));
                }
                b
            }
            Ok(None) => return crate::handlers::not_found().await,
            Err(e) => {
                tracing::error!(error = %e, list, "cannot build a status list");
                return crate::error::denial_response(&mayfly_sts::Denial::Unavailable);
            }
        },
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(STATUSLIST_JWT),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=1"),
    );
    r
}

/// Most lists the aggregation endpoint names (lists are 2^20 tokens each by default).
const MAX_AGGREGATED: i64 = 4096;

/// Numbers tried past the last list found before the aggregation stops looking (old full
/// lists are purged once their tokens expired, leaving gaps at the start).
const MAX_GAP: i64 = 64;

/// The URIs of every list, oldest first.
async fn list_uris(app: &App) -> Result<Vec<String>, StoreError> {
    let mut uris = Vec::new();
    let mut missing = 0;
    for list in 1..=MAX_AGGREGATED {
        if app.store().status_list_size(list).await?.is_some() {
            uris.push(mayfly_sts::lease::status_list_uri(app.issuer(), list));
            missing = 0;
        } else {
            missing += 1;
            if missing >= MAX_GAP {
                break;
            }
        }
    }
    Ok(uris)
}

/// `GET /statuslists`: the status list aggregation (draft-ietf-oauth-status-list), the URIs of
/// every list, oldest first. Built at most once a second.
pub(crate) async fn aggregation(State(app): State<App>) -> Response {
    let published = app.published();
    let cached = published
        .aggregation
        .lock()
        .await
        .as_ref()
        .filter(|(at, _)| at.elapsed() < CACHE_FOR)
        .map(|(_, b)| b.clone());
    let body = match cached {
        Some(b) => b,
        None => match list_uris(&app).await {
            Ok(uris) => {
                let b = bytes::Bytes::from(serde_json::json!({ "status_lists": uris }).to_string());
                *published.aggregation.lock().await = Some((Instant::now(), b.clone()));
                b
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot list the status lists");
                return crate::error::denial_response(&mayfly_sts::Denial::Unavailable);
            }
        },
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots come out of blocks of 256 reserved in the store, in order, without a gap or a
    /// repeat; a full list makes the next block open the next list. Two allocators on one
    /// store (two replicas) never hand out the same slot.
    #[tokio::test]
    async fn slots_come_from_reserved_blocks_and_fill_lists_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("m.db")).await.unwrap();
        let slot = |list, idx| StatusSlot { list, idx };
        // Lists of three blocks.
        let a = Allocator::new(768);
        let mut got = Vec::new();
        for _ in 0..300 {
            got.push(a.slot(&store, 1).await.unwrap());
        }
        let want: Vec<StatusSlot> = (0..300).map(|idx| slot(1, idx)).collect();
        assert_eq!(got, want);
        // A second replica gets list 1's third block; its next block opens list 2.
        let b = Allocator::new(768);
        assert_eq!(b.slot(&store, 1).await.unwrap(), slot(1, 512));
        for _ in 513..768 {
            b.slot(&store, 1).await.unwrap();
        }
        assert_eq!(b.slot(&store, 1).await.unwrap(), slot(2, 0));
        // The first replica uses up its second block of list 1, then moves to list 2 after
        // the second replica's block.
        assert_eq!(a.slot(&store, 1).await.unwrap(), slot(1, 300));
        for _ in 301..512 {
            a.slot(&store, 1).await.unwrap();
        }
        assert_eq!(a.slot(&store, 1).await.unwrap(), slot(2, 256));
    }
}
