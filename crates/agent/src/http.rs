//! `GET /v1/token?audience=...&scope=...` on a second unix socket: for scripts that want a
//! mayfly access token without speaking gRPC. The caller is attested like a Workload API
//! caller; its first entry's JWT-SVID (audience: the server's token issuer) is exchanged at the
//! server (RFC 8693) for an access token, returned as the token endpoint's JSON.
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
}

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

async fn token(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    if headers.get(SECURITY_HEADER).map(HeaderValue::as_bytes) != Some(b"true") {
        tracing::info!(
            reason = "security header missing",
            "agent token request refused"
        );
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the header `workload.spiffe.io: true` is required",
        );
    }
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed query string",
        );
    };
    let Some(audience) = query.audience.filter(|a| !a.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "audience is required",
        );
    };
    let scope = query.scope.filter(|s| !s.is_empty());
    let caller = match inner.attest(&peer).await {
        Ok(caller) => caller,
        Err(r) => return refused(r),
    };
    // Entries keep the server's order: the first match is the caller's default identity.
    let Some(entry) = caller.entries.first() else {
        return refused(Refusal::Denied);
    };
    let issuer = vec![inner.config.token_issuer.clone()];
    let jwt_svid = match inner.jwt_svid(&caller.workload, entry, &issuer).await {
        Ok(t) => t,
        Err(e) => return refused(Refusal::jwt(e, &entry.id)),
    };
    match inner
        .upstream
        .exchange(&jwt_svid, &audience, scope.as_deref())
        .await
    {
        Ok(resp) => {
            tracing::info!(pid = caller.workload.pid, spiffe_id = %entry.spiffe_id, %audience,
                "access token obtained for a workload");
            let mut response = Json(resp).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(UpstreamError::Refused {
            status,
            error: code,
            description,
        }) => {
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
        Err(e) => {
            tracing::warn!(error = %e, "token exchange at the server failed");
            error(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the token exchange at the server failed",
            )
        }
    }
}
