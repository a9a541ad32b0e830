//! What every form endpoint shares around its one call into the engine: reading the body,
//! committing the answer's record, recording and counting a refusal, and answering.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mayfly_store::Pending;
use mayfly_sts::{Denial, Issued, Outcome, Refusal};

use crate::error::denial_response;
use crate::state::App;

/// The request's source address, for audit events.
pub(crate) fn source(addr: &SocketAddr) -> Option<String> {
    Some(addr.ip().to_string())
}

/// Read a form body within the size limit, and whether the request tried HTTP authentication.
pub(crate) async fn form_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, bool), Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(Denial::NotAForm.into());
    }
    let limit = app.config().server.max_body_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Denial::BodyTooLarge(limit))?;
    Ok((body, headers.contains_key(header::AUTHORIZATION)))
}

/// Commit an answer's record; only then may the answer leave.
pub(crate) async fn commit<T>(app: &App, out: Outcome<T>) -> Result<T, Refusal> {
    let Outcome {
        value,
        record,
        caller,
        grant,
    } = out;
    match app.commit(record).await {
        Ok(()) => Ok(value),
        Err(d) => Err(Refusal::after_commit(d, caller, grant)),
    }
}

/// Commit an issued token's record, then log and count it.
pub(crate) async fn issued(
    app: &App,
    out: Result<Outcome<Issued>, Refusal>,
) -> Result<mayfly_proto::TokenResponse, Refusal> {
    let t = commit(app, out?).await?;
    // debug, not info: the audit log already has one line per token, durably.
    tracing::debug!(client = %t.client_id, jti = %t.jti, aud = %t.audience, kid = %t.kid, "token issued");
    // Workload identities are unbounded: only registered clients become metric labels.
    let client = t.authenticated_client.unwrap_or_else(|| "-".to_string());
    metrics::counter!("mayfly_tokens_issued_total", "client" => client, "grant" => t.grant_type)
        .increment(1);
    if let Some(kind) = t.lease_opened {
        metrics::counter!("mayfly_leases_opened_total", "kind" => kind).increment(1);
    }
    Ok(t.response)
}

/// Record a refusal (durably), count it, and build the error response.
async fn deny(app: &App, endpoint: &'static str, r: Refusal, src: Option<String>) -> Response {
    let d = r.denial;
    let e = (*r.caller).deny_event(&d, app.clock().now(), r.grant.as_deref(), src);
    tracing::info!(
        endpoint,
        reason = d.reason(),
        client = e.client.as_deref().unwrap_or("-"),
        "request denied"
    );
    metrics::counter!("mayfly_denials_total", "endpoint" => endpoint, "reason" => d.reason())
        .increment(1);
    // A replay was already recorded atomically with the jti check.
    if !d.recorded_at_commit()
        && let Err(err) = app.audit().commit(Pending::event(e)).await
    {
        tracing::error!(error = %err, "cannot record a denial");
        return denial_response(&Denial::Unavailable);
    }
    denial_response(&d)
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// Answer a request: the JSON body with `no-store`, or the recorded refusal; and time it.
pub(crate) async fn respond<T: serde::Serialize>(
    app: &App,
    endpoint: &'static str,
    src: Option<String>,
    started: Instant,
    result: Result<T, Refusal>,
) -> Response {
    let resp = match result {
        Ok(body) => no_store(axum::Json(body).into_response()),
        Err(r) => deny(app, endpoint, r, src).await,
    };
    metrics::histogram!("mayfly_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    resp
}
