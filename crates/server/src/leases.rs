//! Leases over HTTP: `POST /leases/{id}/renew` (the heartbeat) and `POST /leases/{id}/end`,
//! each authenticated by an access token of ours under that lease; the reaper that ends leases
//! whose heartbeat stopped or whose hard end passed; and the one `lease_end` audit event every
//! end is recorded with, whoever ended it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_store::{LeaseEnd, LeaseRenewal, Pending};
use mayfly_sts::AccessTokenClaims;
use serde_json::json;

use crate::state::App;

/// Leases the reaper ends per pass at most (the rest wait a second).
const REAP_BATCH: i64 = 100;

/// How often the reaper looks for overdue leases.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why a request to a lease endpoint is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// No usable bearer token of ours under this lease.
    #[error("a valid access token under this lease is required")]
    InvalidToken,
    /// The lease has ended: its tokens are revoked, the holder must stop.
    #[error("the lease has ended")]
    Ended,
    /// The store failed.
    #[error("the service is temporarily unavailable")]
    Unavailable,
}

impl IntoResponse for LeaseError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            Self::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::Ended => (StatusCode::CONFLICT, "lease_ended"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        };
        let body = json!({"error": code, "error_description": self.to_string()});
        let mut r = (status, axum::Json(body)).into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        r
    }
}

fn unavailable(e: mayfly_store::StoreError) -> LeaseError {
    tracing::error!(error = %e, "lease endpoint: the store failed");
    LeaseError::Unavailable
}

/// The bearer token of `headers`, if one is presented.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The claims of the presented access token of ours under lease `id`: signature, issuer,
/// expiry and lease claim. Revocation is each endpoint's own check: ending a lease twice with
/// a token its first end revoked is still answered, and so is a heartbeat that must learn the
/// lease ended.
async fn authorize(
    app: &App,
    headers: &HeaderMap,
    id: &str,
) -> Result<AccessTokenClaims, LeaseError> {
    let token = bearer(headers).ok_or(LeaseError::InvalidToken)?;
    let now = app.clock().now();
    let claims = mayfly_sts::check_access_token(app.settings(), &app.keys().verifying, token, now)
        .ok_or(LeaseError::InvalidToken)?;
    if claims.lease.as_deref() != Some(id) {
        return Err(LeaseError::InvalidToken);
    }
    Ok(claims)
}

/// `POST /leases/{id}/renew`: the heartbeat.
pub(crate) async fn renew(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, LeaseError> {
    let claims = authorize(&app, &headers, &id).await?;
    let now = app.clock().now();
    let store = app.store();
    // A token revoked by its lease's end still learns that the lease ended (409: stop), which
    // is what the holder must act on; any other revoked token is refused.
    if store.is_revoked(&claims.jti).await.map_err(unavailable)? {
        return match store.lease(&id).await.map_err(unavailable)? {
            Some(l) if l.ended_at.is_some() => Err(LeaseError::Ended),
            _ => Err(LeaseError::InvalidToken),
        };
    }
    // A heartbeat after the grace does not revive the lease: the store reports it ended, and
    // the reaper ends it within a second.
    match store.renew_lease(&id, now).await.map_err(unavailable)? {
        LeaseRenewal::Renewed(l) => {
            let grace = l
                .grace
                .unwrap_or(app.config().leases.grace.as_secs() as i64);
            let body = json!({"lease_id": l.id, "state": "open", "grace": grace,
                              "expires_at": l.expires_at});
            Ok(no_store(axum::Json(body).into_response()))
        }
        LeaseRenewal::Ended(_) => Err(LeaseError::Ended),
        LeaseRenewal::Unknown => Err(LeaseError::InvalidToken),
    }
}

/// `POST /leases/{id}/end`: end the lease, revoking every token under it. Idempotent.
pub(crate) async fn end(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, LeaseError> {
    let claims = authorize(&app, &headers, &id).await?;
    let now = app.clock().now();
    let end = app
        .store()
        .end_lease(&id, "ended", now)
        .await
        .map_err(unavailable)?
        .ok_or(LeaseError::InvalidToken)?;
    let revoked = if end.already_ended {
        0
    } else {
        record_end(&app, &end, Some(&claims)).await;
        end.revoked.len()
    };
    let body = json!({"lease_id": id, "state": "ended", "revoked": revoked});
    Ok(no_store(axum::Json(body).into_response()))
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Record a lease's end: one `lease_end` audit event naming the lease, the reason and what it
/// revoked (the first 1,000 jtis and the count), and the metrics. `by` is the
/// token that asked for the end, if a token holder did. An end that found the lease already
/// ended records nothing.
pub(crate) async fn record_end(app: &App, end: &LeaseEnd, by: Option<&AccessTokenClaims>) {
    if end.already_ended {
        return;
    }
    let reason = end.lease.end_reason.as_deref().unwrap_or("ended");
    let mut e = end.audit_event(app.clock().now());
    // The token that asked for the end (its jti, never the token).
    if let Some(c) = by {
        e.jti = Some(c.jti.clone());
    }
    if let Err(err) = app.audit().commit(Pending::event(e)).await {
        tracing::error!(error = %err, lease = %end.lease.id, "cannot record a lease's end in the audit log");
    }
    tracing::info!(lease = %end.lease.id, reason, revoked = end.revoked.len(), "lease ended");
    metrics::counter!("mayfly_leases_ended_total", "reason" => reason_label(reason)).increment(1);
    metrics::counter!("mayfly_revocations_total", "path" => "lease_end")
        .increment(end.revoked.len() as u64);
}

/// The bounded metric label of an end reason.
fn reason_label(reason: &str) -> &'static str {
    match reason {
        "ended" => "ended",
        "heartbeat" => "heartbeat",
        "expired" => "expired",
        "ci_job_completed" => "ci_job_completed",
        "operator" => "operator",
        _ => "other",
    }
}

/// End the overdue leases once (what the reaper does every second); returns how many ended.
pub async fn reap_once(app: &App) -> usize {
    let now = app.clock().now();
    match app.store().end_overdue_leases(now, REAP_BATCH).await {
        Ok(ends) => {
            for end in &ends {
                record_end(app, end, None).await;
            }
            ends.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "the lease reaper cannot read the store; retrying");
            0
        }
    }
}

/// Start the reaper: every second, end the leases whose heartbeat grace or hard end passed.
/// Each replica runs one; the store lets exactly one replica end each lease. It stops when the
/// app is dropped.
pub(crate) fn spawn_reaper(app: &App) {
    let weak = app.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = App::upgrade(&weak) else {
                return;
            };
            reap_once(&app).await;
        }
    });
}
