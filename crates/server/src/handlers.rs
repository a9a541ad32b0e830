//! Endpoint handlers: extract the request, make one call into the engine, answer.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_sts::{Denial, FormRequest};

use crate::error::denial_response;
use crate::reply::{commit, form_body, issued, respond, source};
use crate::state::App;

/// `POST /oauth2/token`.
pub(crate) async fn token(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let src = source(&addr);
    let (parts, body) = req.into_parts();
    let result = match form_body(&app, &parts.headers, body).await {
        Ok((body, http_auth)) => {
            let req = FormRequest {
                body: &body,
                http_auth,
                source: src.as_deref(),
            };
            issued(&app, mayfly_sts::token(&app.sts(), &req).await).await
        }
        Err(r) => Err(r),
    };
    respond(&app, "token", src, started, result).await
}

/// `POST /oauth2/introspect` (RFC 7662).
pub(crate) async fn introspect(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let src = source(&addr);
    let (parts, body) = req.into_parts();
    let result = match form_body(&app, &parts.headers, body).await {
        Ok((body, http_auth)) => {
            let req = FormRequest {
                body: &body,
                http_auth,
                source: src.as_deref(),
            };
            match mayfly_sts::introspect(&app.sts(), &req, app.introspect_grants()).await {
                Ok(out) => commit(&app, out).await,
                Err(r) => Err(r),
            }
        }
        Err(r) => Err(r),
    };
    respond(&app, "introspect", src, started, result).await
}

/// `POST /oauth2/revoke` (RFC 7009).
pub(crate) async fn revoke(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let src = source(&addr);
    let (parts, body) = req.into_parts();
    let result = match form_body(&app, &parts.headers, body).await {
        Ok((body, http_auth)) => {
            let req = FormRequest {
                body: &body,
                http_auth,
                source: src.as_deref(),
            };
            match mayfly_sts::revoke(&app.sts(), &req).await {
                Ok(out) => {
                    let revokes = out.record.revoke.is_some();
                    let r = commit(&app, out).await.map(|()| serde_json::json!({}));
                    if revokes && r.is_ok() {
                        metrics::counter!("mayfly_revocations_total", "path" => "client")
                            .increment(1);
                    }
                    r
                }
                Err(r) => Err(r),
            }
        }
        Err(r) => Err(r),
    };
    respond(&app, "revoke", src, started, result).await
}

/// Server metadata (RFC 8414) and OpenID configuration.
pub(crate) async fn metadata(State(app): State<App>) -> Response {
    let mut r = (StatusCode::OK, app.metadata().clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// The JWK Set: current, next and retired-but-live keys.
pub(crate) async fn jwks(State(app): State<App>) -> Response {
    let keys = app.keys();
    let mut r = (StatusCode::OK, keys.jwks.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    let cc = format!("public, max-age={}", app.schedule().jwks_max_age());
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// The trust domain's bundle in the SPIFFE trust bundle format (for federation with other
/// trust domains, SPIFFE Trust Domain and Bundle §4).
pub(crate) async fn spiffe_bundle(State(app): State<App>) -> Response {
    let snap = app.spiffe().snapshot();
    let mut r = (StatusCode::OK, snap.bundle_doc.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let cc = format!("public, max-age={}", snap.bundle.refresh_hint);
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// Liveness.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
pub(crate) async fn readyz(State(app): State<App>) -> Response {
    if app.store().ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
    }
}

/// Prometheus text format.
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    match app.prometheus() {
        Some(h) => {
            let mut r = h.render().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response(),
    }
}

/// Anything else.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not_found"})),
    )
        .into_response()
}

/// Per-request deadline: a request that takes longer is answered 503 and dropped.
pub(crate) async fn deadline(State(app): State<App>, req: Request, next: Next) -> Response {
    let limit = app.config().server.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => denial_response(&Denial::Unavailable),
    }
}
