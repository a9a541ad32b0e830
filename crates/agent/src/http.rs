//! `GET /v1/token?audience=...&scope=...` on a second unix socket: for scripts that want a
//! mayfly access token without speaking gRPC. The caller is attested like a Workload API
//! caller; its first entry's JWT-SVID (audience: the server's token issuer) is exchanged at the
//! server (RFC 8693) for an access token, returned as the token endpoint's JSON (or, with
//! `Accept: application/jwt`, as the bare token). `lease=new|<id>` is passed to the server.
//!
//! The token follows a process: by default (`bind=parent`) the caller's parent, so that
//! `TOKEN=$(curl …)` in a script yields a token that lives while the script runs (curl itself
//! exits at once) and is revoked when the script exits; `bind=self` follows the caller. The
//! JWT-SVID the token is exchanged from is recorded against that process (pid and start time,
//! so a reused pid is not mistaken for it), whose exit the agent reports to the server.
//!
//! Every request must carry the header `workload.spiffe.io: true`, as every Workload API call
//! carries that metadata: a browser or a server-side request forgery that reaches the socket
//! cannot add it, so it cannot obtain the workload's token.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::UnixListener;

use crate::agent::{Inner, Refusal};
use crate::attest::Workload;
use crate::error::AgentError;
use crate::peer::{PeerInfo, PeerListener};
use crate::upstream::UpstreamError;

/// Serve the token endpoint on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let app = Router::new()
        .route("/v1/token", get(token))
        .with_state(inner);
    axum::serve(
        PeerListener(listener),
        app.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| AgentError::Serve(e.to_string()))
}

/// The header every request must carry, with the value `true` (the Workload API's metadata).
const SECURITY_HEADER: &str = "workload.spiffe.io";

#[derive(Deserialize)]
struct TokenQuery {
    audience: Option<String>,
    scope: Option<String>,
    /// `new` or a lease id, passed to the server's token endpoint.
    lease: Option<String>,
    /// `parent` (default) or `self`: which process the token lives with.
    bind: Option<String>,
}

/// Which process a token from `/v1/token` follows: when it exits, the agent reports the
/// JWT-SVID the token was exchanged from, and the server revokes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// The caller's parent: in `TOKEN=$(curl …)` the script, not curl (which exits at once).
    Parent,
    /// The caller itself.
    Caller,
}

/// Longest `lease` value passed on (lease ids are short; the server checks the rest).
const MAX_LEASE_LEN: usize = 128;

/// The media type of a bare JWT (RFC 7519 §10.3.1): asked for with `Accept`, the answer is
/// the access token alone, so a script needs no JSON parser.
const JWT_MEDIA_TYPE: &str = "application/jwt";

/// An RFC 6749 style error body.
fn error(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": code, "error_description": description.into()});
    (status, Json(body)).into_response()
}

/// A [`Refusal`] as the token endpoint answers it.
fn refused(r: Refusal) -> Response {
    let (status, code) = r.http();
    error(status, code, r.to_string())
}

/// What a valid request asks for.
struct Ask {
    audience: String,
    scope: Option<String>,
    lease: Option<String>,
    bind: Bind,
    bare: bool,
}

/// Check the request's header and query; a refusal is the `invalid_request` description.
fn ask(
    headers: &HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Ask, &'static str> {
    if headers.get(SECURITY_HEADER).map(HeaderValue::as_bytes) != Some(b"true") {
        tracing::info!(
            reason = "security header missing",
            "agent token request refused"
        );
        return Err("the header `workload.spiffe.io: true` is required");
    }
    let Ok(Query(query)) = query else {
        return Err("malformed query string");
    };
    let Some(audience) = query.audience.filter(|a| !a.is_empty()) else {
        return Err("audience is required");
    };
    let bind = match query.bind.as_deref() {
        None | Some("parent") => Bind::Parent,
        Some("self") => Bind::Caller,
        Some(_) => return Err("bind must be `parent` (the default) or `self`"),
    };
    let lease = query.lease.filter(|l| !l.is_empty());
    if let Some(l) = &lease
        && (l.len() > MAX_LEASE_LEN || !l.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err("lease must be `new` or a lease id");
    }
    let bare = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(JWT_MEDIA_TYPE))
        });
    Ok(Ask {
        audience,
        scope: query.scope.filter(|s| !s.is_empty()),
        lease,
        bind,
        bare,
    })
}

/// The process the token is bound to: the caller, or its parent (pid and start time); `None`
/// when the parent is gone.
async fn bound_process(caller: &Workload, bind: Bind) -> Option<Workload> {
    if bind == Bind::Caller {
        return Some(caller.clone());
    }
    let (pid, start) = (caller.pid, caller.start_time);
    let parent = tokio::task::spawn_blocking(move || crate::attest::parent(pid, start))
        .await
        .ok()
        .flatten();
    let bound = parent.map(|(pid, start_time)| Workload {
        pid,
        start_time,
        selectors: caller.selectors.clone(),
    });
    if bound.is_none() {
        tracing::info!(pid, "the caller's parent process is unknown or gone");
    }
    bound
}

async fn token(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let ask = match ask(&headers, query) {
        Ok(ask) => ask,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let caller = match inner.attest(&peer).await {
        Ok(caller) => caller,
        Err(r) => return refused(r),
    };
    // Entries keep the server's order: the first match is the caller's default identity.
    let Some(entry) = caller.entries.first() else {
        return refused(Refusal::Denied);
    };
    let Some(bound) = bound_process(&caller.workload, ask.bind).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the caller's parent process is gone; ask with bind=self",
        );
    };
    let issuer = vec![inner.config.token_issuer.clone()];
    let jwt_svid = match inner.jwt_svid(&bound, entry, &issuer).await {
        Ok(t) => t,
        Err(e) => return refused(Refusal::jwt(e, &entry.id)),
    };
    let exchanged = inner
        .upstream
        .exchange(
            &jwt_svid,
            &ask.audience,
            ask.scope.as_deref(),
            ask.lease.as_deref(),
        )
        .await;
    match exchanged {
        Ok(resp) => {
            tracing::info!(pid = caller.workload.pid, bound_pid = bound.pid,
                spiffe_id = %entry.spiffe_id, audience = %ask.audience,
                "access token obtained for a workload");
            let mut response = if ask.bare {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(JWT_MEDIA_TYPE),
                    )],
                    resp.access_token,
                )
                    .into_response()
            } else {
                Json(resp).into_response()
            };
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => upstream_refused(e),
    }
}

/// A failed exchange as the token endpoint answers it.
fn upstream_refused(e: UpstreamError) -> Response {
    match e {
        UpstreamError::Refused {
            status,
            error: code,
            description,
        } => {
            // The server's verdict passes through: 400 stays 400, a refusal is 403, and its
            // own failures are the agent's bad gateway.
            let status = match status {
                400 => StatusCode::BAD_REQUEST,
                401 | 403 => StatusCode::FORBIDDEN,
                s if (400..500).contains(&s) => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            error(status, &code, description.unwrap_or_default())
        }
        e => {
            tracing::warn!(error = %e, "token exchange at the server failed");
            error(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the token exchange at the server failed",
            )
        }
    }
}
