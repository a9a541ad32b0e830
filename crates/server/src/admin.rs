//! Operator endpoints: `POST /admin/v1/revocations` (revoke the live tokens a selector picks)
//! and `POST /admin/v1/leases/end` (end the leases of a CI run). The caller presents one of our
//! own access tokens (RFC 6750 bearer) whose `aud` is the admin audience (`[admin] audience`,
//! default `<issuer>/admin`) and whose `scope` holds `admin:tokens:revoke`. Every call, allowed
//! or refused, is audited; the operator is the event's `actor`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::audit::MAX_REVOKED_LISTED;
use mayfly_store::{CiSelector, LeaseEnd, Pending, RevokeSelector};
use mayfly_sts::{AccessTokenClaims, AuditEvent, Decision, EventKind};
use serde::Deserialize;

use crate::state::App;

/// The scope an operator's token must hold.
pub const ADMIN_SCOPE: &str = "admin:tokens:revoke";

/// Why an admin request was refused: the status, the RFC 6750 code, and the audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminRefusal {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    NoToken,
    /// Not a live access token of ours (signature, issuer, expiry), or revoked.
    #[error("the token is not a live access token of this server")]
    BadToken,
    /// Ours, but for another audience.
    #[error("the token is not meant for the admin endpoints")]
    WrongAudience,
    /// Ours and for us, without the admin scope.
    #[error("the token lacks the admin:tokens:revoke scope")]
    NoScope,
    /// The body is not the expected JSON.
    #[error("the body is not a valid request")]
    BadBody,
    /// The selector selects nothing (it would revoke everything).
    #[error("name at least one of jti, lease, identity, client, issuer")]
    EmptySelector,
    /// `since` is neither seconds since the epoch nor an RFC 3339 time.
    #[error("since is neither seconds since the epoch nor an RFC 3339 time")]
    BadSince,
    /// The body is larger than the limit.
    #[error("the body is too large")]
    TooLarge,
    /// The store failed.
    #[error("internal error; the event was logged")]
    Internal,
}

impl AdminRefusal {
    fn reason(self) -> &'static str {
        match self {
            Self::NoToken => "admin_no_token",
            Self::BadToken => "admin_token_invalid",
            Self::WrongAudience => "admin_wrong_audience",
            Self::NoScope => "admin_insufficient_scope",
            Self::BadBody => "admin_bad_request",
            Self::EmptySelector => "admin_empty_selector",
            Self::BadSince => "admin_bad_since",
            Self::TooLarge => "body_too_large",
            Self::Internal => "internal",
        }
    }

    /// The one mapping from a refusal to its response (RFC 6750 §3 for the bearer failures).
    pub(crate) fn response(self) -> Response {
        let (status, code) = match self {
            Self::NoToken | Self::BadToken | Self::WrongAudience => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            Self::NoScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::BadBody | Self::EmptySelector | Self::BadSince => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let body = serde_json::json!({"error": code, "error_description": self.to_string()});
        let mut r = (status, axum::Json(body)).into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let challenge = match self {
            Self::NoToken | Self::BadToken | Self::WrongAudience => {
                Some("Bearer realm=\"mayfly\", error=\"invalid_token\"")
            }
            Self::NoScope => Some(
                "Bearer realm=\"mayfly\", error=\"insufficient_scope\", scope=\"admin:tokens:revoke\"",
            ),
            _ => None,
        };
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

/// The audience an operator's token must carry.
fn admin_audience(app: &App) -> String {
    app.config()
        .admin
        .audience
        .clone()
        .unwrap_or_else(|| format!("{}/admin", app.issuer()))
}

/// Check the operator's token: ours, live, not revoked, for the admin audience, with the scope.
async fn operator(app: &App, headers: &HeaderMap) -> Result<AccessTokenClaims, AdminRefusal> {
    let token = crate::leases::bearer(headers).ok_or(AdminRefusal::NoToken)?;
    let now = app.clock().now();
    let keys = app.keys();
    let claims = mayfly_sts::check_access_token(app.settings(), &keys.verifying, token, now)
        .ok_or(AdminRefusal::BadToken)?;
    if app
        .store()
        .is_revoked(&claims.jti)
        .await
        .map_err(|_| AdminRefusal::Internal)?
    {
        return Err(AdminRefusal::BadToken);
    }
    if claims.aud != admin_audience(app) {
        return Err(AdminRefusal::WrongAudience);
    }
    if !mayfly_proto::scope_tokens(claims.scope.as_deref()).any(|s| s == ADMIN_SCOPE) {
        return Err(AdminRefusal::NoScope);
    }
    Ok(claims)
}

/// Record a refused admin call (durably) and answer it.
async fn refuse(
    app: &App,
    r: AdminRefusal,
    src: Option<String>,
    endpoint: &'static str,
) -> Response {
    let mut e = AuditEvent::new(EventKind::Deny, app.clock().now(), Decision::Deny);
    e.reason = Some(r.reason().to_string());
    e.source = src;
    e.route = Some(endpoint.to_string());
    tracing::info!(endpoint, reason = r.reason(), "admin request refused");
    metrics::counter!("mayfly_denials_total", "endpoint" => endpoint, "reason" => r.reason())
        .increment(1);
    if let Err(err) = app.audit().commit(Pending::event(e)).await {
        tracing::error!(error = %err, "cannot record a refused admin request");
        return AdminRefusal::Internal.response();
    }
    r.response()
}

/// Read a JSON body of at most the configured size.
async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    body: Body,
) -> Result<T, AdminRefusal> {
    let limit = app.config().server.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| AdminRefusal::TooLarge)?;
    serde_json::from_slice(&bytes).map_err(|_| AdminRefusal::BadBody)
}

/// `since`: seconds since the epoch, or an RFC 3339 time.
#[derive(Deserialize)]
#[serde(untagged)]
enum Since {
    Seconds(i64),
    Text(String),
}

/// The body of `POST /admin/v1/revocations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    jti: Option<String>,
    lease: Option<String>,
    identity: Option<String>,
    client: Option<String>,
    issuer: Option<String>,
    since: Option<Since>,
}

fn parse_since(s: Option<Since>) -> Result<Option<i64>, AdminRefusal> {
    Ok(match s {
        None => None,
        Some(Since::Seconds(t)) => Some(t),
        Some(Since::Text(t)) => Some(rfc3339(&t).ok_or(AdminRefusal::BadSince)?),
    })
}

/// Seconds since the epoch of an RFC 3339 time (`2026-12-01T00:00:00Z`, offsets allowed).
pub fn rfc3339(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok().or_else(|| {
        // humantime reads `Z` only; an explicit offset is applied by hand.
        let (base, sign, off) = match text.rfind(['+', '-']) {
            Some(i) if i > 10 => (&text[..i], &text[i..i + 1], &text[i + 1..]),
            _ => return None,
        };
        let (h, m) = off.split_once(':')?;
        let secs = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
        let t = humantime::parse_rfc3339_weak(base).ok()?;
        let d = std::time::Duration::from_secs(secs);
        if sign == "+" {
            t.checked_sub(d)
        } else {
            t.checked_add(d)
        }
    })?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// The audit event of an operator's revocation (the same shape from the CLI's local mode).
pub fn revoke_event(sel: &RevokeSelector, revoked: &[String], actor: &str, now: i64) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Revoke, now, Decision::Allow);
    e.jti = sel.jti.clone();
    e.lease = sel.lease.clone();
    e.identity = sel.identity.clone();
    e.client = sel.client.clone();
    e.subject_issuer = sel.issuer.clone();
    e.actor = Some(actor.to_string());
    e.reason = Some(match sel.since {
        Some(t) => format!("revoked_by_operator:since={t}"),
        None => "revoked_by_operator".to_string(),
    });
    e.revoked = revoked.iter().take(MAX_REVOKED_LISTED).cloned().collect();
    e.revoked_count = Some(revoked.len() as u64);
    e
}

/// Audit and count leases that ended (those that had already ended are skipped); returns the
/// number of leases ended and of tokens revoked. `path` labels the revocation metric.
pub(crate) async fn record_lease_ends(
    app: &App,
    ends: &[LeaseEnd],
    actor: Option<&str>,
    path: &'static str,
) -> Result<(usize, usize), mayfly_store::StoreError> {
    let now = app.clock().now();
    let (mut leases, mut tokens) = (0, 0);
    for end in ends.iter().filter(|e| !e.already_ended) {
        let mut e = end.audit_event(now);
        e.actor = actor.map(str::to_string);
        app.audit().commit(Pending::event(e)).await?;
        let reason = end.lease.end_reason.clone().unwrap_or_default();
        metrics::counter!("mayfly_leases_ended_total", "reason" => reason).increment(1);
        metrics::counter!("mayfly_revocations_total", "path" => path)
            .increment(end.revoked.len() as u64);
        tracing::info!(lease = %end.lease.id, revoked = end.revoked.len(), "lease ended");
        leases += 1;
        tokens += end.revoked.len();
    }
    Ok((leases, tokens))
}

fn no_store(body: serde_json::Value) -> Response {
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /admin/v1/revocations`.
pub(crate) async fn revocations(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    const ENDPOINT: &str = "admin_revocations";
    let src = crate::reply::source(&addr);
    let (parts, body) = req.into_parts();
    let claims = match operator(&app, &parts.headers).await {
        Ok(c) => c,
        Err(r) => return refuse(&app, r, src, ENDPOINT).await,
    };
    let parsed = json_body::<RevocationRequest>(&app, body)
        .await
        .and_then(|r| {
            let sel = RevokeSelector {
                jti: r.jti,
                lease: r.lease,
                identity: r.identity,
                client: r.client,
                issuer: r.issuer,
                since: parse_since(r.since)?,
            };
            if sel.is_empty() {
                return Err(AdminRefusal::EmptySelector);
            }
            Ok(sel)
        });
    let sel = match parsed {
        Ok(s) => s,
        Err(r) => return refuse(&app, r, src, ENDPOINT).await,
    };
    let now = app.clock().now();
    let revoked = match app.store().revoke_selected(&sel, now).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "operator revocation failed");
            return refuse(&app, AdminRefusal::Internal, src, ENDPOINT).await;
        }
    };
    let mut e = revoke_event(&sel, &revoked, &claims.sub, now);
    e.source = src;
    if let Err(err) = app.audit().commit(Pending::event(e)).await {
        tracing::error!(error = %err, "cannot record an operator revocation");
        return AdminRefusal::Internal.response();
    }
    metrics::counter!("mayfly_revocations_total", "path" => "operator")
        .increment(revoked.len() as u64);
    tracing::info!(operator = %claims.sub, revoked = revoked.len(), "operator revocation");
    no_store(serde_json::json!({
        "revoked": revoked.len(),
        "jtis": revoked.iter().take(MAX_REVOKED_LISTED).collect::<Vec<_>>(),
    }))
}

/// The body of `POST /admin/v1/leases/end`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CiRunRequest {
    provider: String,
    project: String,
    run: String,
    attempt: Option<String>,
    job: Option<String>,
}

/// `POST /admin/v1/leases/end`: end the leases of a CI run (or one job of it).
pub(crate) async fn end_leases(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    const ENDPOINT: &str = "admin_leases_end";
    let src = crate::reply::source(&addr);
    let (parts, body) = req.into_parts();
    let claims = match operator(&app, &parts.headers).await {
        Ok(c) => c,
        Err(r) => return refuse(&app, r, src, ENDPOINT).await,
    };
    let sel = match json_body::<CiRunRequest>(&app, body).await.and_then(|r| {
        if !matches!(r.provider.as_str(), "github" | "gitlab")
            || r.project.is_empty()
            || r.run.is_empty()
        {
            return Err(AdminRefusal::BadBody);
        }
        Ok(CiSelector {
            provider: r.provider,
            project: r.project,
            run: r.run,
            attempt: r.attempt,
            job: r.job,
        })
    }) {
        Ok(s) => s,
        Err(r) => return refuse(&app, r, src, ENDPOINT).await,
    };
    let now = app.clock().now();
    let ended = match app.store().end_ci_leases(&sel, "operator", now).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "ending CI leases failed");
            return refuse(&app, AdminRefusal::Internal, src, ENDPOINT).await;
        }
    };
    match record_lease_ends(&app, &ended, Some(&claims.sub), "operator").await {
        Ok((leases, tokens)) => no_store(serde_json::json!({"ended": leases, "revoked": tokens})),
        Err(err) => {
            tracing::error!(error = %err, "cannot record the end of leases");
            AdminRefusal::Internal.response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_and_without_offsets() {
        assert_eq!(rfc3339("2026-12-01T00:00:00Z"), Some(1_796_083_200));
        assert_eq!(rfc3339("2026-12-01T02:00:00+02:00"), Some(1_796_083_200));
        assert_eq!(rfc3339("2026-11-30T22:00:00-02:00"), Some(1_796_083_200));
        assert_eq!(rfc3339("yesterday"), None);
    }

    #[test]
    fn refusals_carry_their_rfc_6750_challenges() {
        let r = AdminRefusal::BadToken.response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let r = AdminRefusal::NoScope.response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("insufficient_scope")
        );
        assert_eq!(
            AdminRefusal::EmptySelector.response().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
