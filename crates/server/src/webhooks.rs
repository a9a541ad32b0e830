//! CI job end: `POST /webhooks/github` and `POST /webhooks/gitlab`. A verified delivery saying
//! a job (or a whole run) completed ends the CI leases of that job (or run), which revokes every
//! token exchanged from its identity token.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`, verified in
//!   constant time; `X-GitHub-Delivery` names the delivery; `X-GitHub-Event` the event.
//! - GitLab: `X-Gitlab-Token` equal to the secret token (compared in constant time), and, with a
//!   signing token configured, `webhook-signature` (`v1,<base64 HMAC-SHA256>` over
//!   `<webhook-id>.<webhook-timestamp>.<body>`, the timestamp within five minutes);
//!   `X-Gitlab-Event-UUID` (else `Idempotency-Key`, else `webhook-id`) names the delivery.
//!
//! An endpoint without a configured secret answers 404. A delivery already acted on (same id)
//! is ignored. A bad or missing signature is refused (401) and audited as a `deny` event whose
//! reason says which check failed; the secret never appears anywhere.

use std::net::SocketAddr;

use aws_lc_rs::{constant_time, digest, hmac};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use mayfly_proto::webhook::{self, CiEnd, Notice};
use mayfly_store::{CiSelector, Pending};
use mayfly_sts::{AuditEvent, Decision, EventKind};
use secrecy::{ExposeSecret, SecretString};

use crate::state::App;

/// Largest delivery accepted (GitHub caps payloads at 25 MB, but job events are a few KB).
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;
/// How long a delivery id is remembered (GitHub and GitLab redeliver within days at most).
const KEEP_DELIVERY: i64 = 7 * 24 * 3600;
/// The longest delivery id accepted (they are UUIDs).
const MAX_DELIVERY_ID: usize = 128;
/// How far a signed GitLab delivery's timestamp may be from our clock.
const SIGNATURE_TOLERANCE: i64 = 300;

/// Why a delivery was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookRefusal {
    /// No signature (or token) header.
    #[error("the delivery is not signed")]
    SignatureMissing,
    /// A signature header that is not of the documented form.
    #[error("the signature header is malformed")]
    SignatureMalformed,
    /// The signature (or token) does not match the configured secret.
    #[error("the signature does not verify")]
    SignatureInvalid,
    /// A signed GitLab delivery whose timestamp is too far from now.
    #[error("the signature's timestamp is too old or in the future")]
    SignatureStale,
    /// No usable delivery id.
    #[error("the delivery has no usable delivery id")]
    NoDeliveryId,
    /// A payload not of the documented shape.
    #[error("the payload is not of the documented shape")]
    BadPayload,
    /// Over [`MAX_WEBHOOK_BODY`].
    #[error("the body is too large")]
    TooLarge,
    /// The store failed.
    #[error("internal error; the event was logged")]
    Internal,
}

impl HookRefusal {
    fn reason(self) -> &'static str {
        match self {
            Self::SignatureMissing => "webhook_signature_missing",
            Self::SignatureMalformed => "webhook_signature_malformed",
            Self::SignatureInvalid => "webhook_signature_invalid",
            Self::SignatureStale => "webhook_signature_stale",
            Self::NoDeliveryId => "webhook_no_delivery_id",
            Self::BadPayload => "webhook_bad_payload",
            Self::TooLarge => "body_too_large",
            Self::Internal => "internal",
        }
    }

    fn response(self) -> Response {
        let (status, code) = match self {
            Self::SignatureMissing
            | Self::SignatureMalformed
            | Self::SignatureInvalid
            | Self::SignatureStale => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::NoDeliveryId | Self::BadPayload => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let body = serde_json::json!({"error": code, "error_description": self.to_string()});
        (status, axum::Json(body)).into_response()
    }
}

/// Where a delivery came from, for events and metrics.
#[derive(Clone, Copy)]
enum Source {
    Github,
    Gitlab,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
        }
    }
    fn endpoint(self) -> &'static str {
        match self {
            Self::Github => "webhook_github",
            Self::Gitlab => "webhook_gitlab",
        }
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// GitHub's `X-Hub-Signature-256` over `body` under `secret`.
pub(crate) fn verify_github(
    secret: &SecretString,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), HookRefusal> {
    let sig = header_str(headers, "x-hub-signature-256").ok_or(HookRefusal::SignatureMissing)?;
    let tag = sig
        .strip_prefix("sha256=")
        .and_then(hex_decode)
        .filter(|t| t.len() == 32)
        .ok_or(HookRefusal::SignatureMalformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    hmac::verify(&key, body, &tag).map_err(|_| HookRefusal::SignatureInvalid)
}

/// GitLab's `X-Gitlab-Token`, compared in constant time (both sides hashed first, so that
/// neither the content nor the length of the secret shows in the timing).
fn verify_gitlab_token(secret: &SecretString, headers: &HeaderMap) -> Result<(), HookRefusal> {
    let got = header_str(headers, "x-gitlab-token").ok_or(HookRefusal::SignatureMissing)?;
    let a = digest::digest(&digest::SHA256, got.as_bytes());
    let b = digest::digest(&digest::SHA256, secret.expose_secret().as_bytes());
    constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref())
        .map_err(|_| HookRefusal::SignatureInvalid)
}

/// GitLab's signing token (Standard Webhooks): `webhook-signature` holds space-separated
/// `v1,<base64>` entries, one of which must be HMAC-SHA256 under the token's key over
/// `<webhook-id>.<webhook-timestamp>.<body>`.
pub(crate) fn verify_gitlab_signature(
    token: &SecretString,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), HookRefusal> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some(id), Some(ts), Some(sigs)) = (
        header_str(headers, "webhook-id"),
        header_str(headers, "webhook-timestamp"),
        header_str(headers, "webhook-signature"),
    ) else {
        return Err(HookRefusal::SignatureMissing);
    };
    let ts_num: i64 = ts.parse().map_err(|_| HookRefusal::SignatureMalformed)?;
    let key = token
        .expose_secret()
        .strip_prefix("whsec_")
        .and_then(|k| b64.decode(k).ok())
        .ok_or(HookRefusal::Internal)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut signed = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mut any = false;
    for entry in sigs.split(' ').filter(|s| !s.is_empty()) {
        let Some(tag) = entry.strip_prefix("v1,").and_then(|t| b64.decode(t).ok()) else {
            continue;
        };
        any = true;
        if hmac::verify(&key, &signed, &tag).is_ok() {
            // Checked after the signature, so a forged timestamp is never reported as stale.
            if (now - ts_num).abs() > SIGNATURE_TOLERANCE {
                return Err(HookRefusal::SignatureStale);
            }
            return Ok(());
        }
    }
    Err(if any {
        HookRefusal::SignatureInvalid
    } else {
        HookRefusal::SignatureMalformed
    })
}

/// Record a refused delivery (durably) and answer it.
async fn refuse(app: &App, src: Source, r: HookRefusal, addr: Option<String>) -> Response {
    let mut e = AuditEvent::new(EventKind::Deny, app.clock().now(), Decision::Deny);
    e.reason = Some(r.reason().to_string());
    e.source = addr;
    e.route = Some(format!("webhooks/{}", src.name()));
    tracing::info!(
        source = src.name(),
        reason = r.reason(),
        "webhook delivery refused"
    );
    metrics::counter!("mayfly_denials_total", "endpoint" => src.endpoint(), "reason" => r.reason())
        .increment(1);
    if let Err(err) = app.audit().commit(Pending::event(e)).await {
        tracing::error!(error = %err, "cannot record a refused webhook delivery");
        return HookRefusal::Internal.response();
    }
    r.response()
}

fn accepted(why: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"ignored": why})),
    )
        .into_response()
}

/// Act on a verified delivery: ignore it, or (once per delivery id) end the leases it names.
async fn act(
    app: &App,
    src: Source,
    delivery: &str,
    notice: Result<Notice, webhook::PayloadError>,
    addr: Option<String>,
) -> Response {
    let end: CiEnd = match notice {
        Ok(Notice::End(e)) => e,
        Ok(Notice::Ignored(why)) => return accepted(why),
        Err(_) => return refuse(app, src, HookRefusal::BadPayload, addr).await,
    };
    let now = app.clock().now();
    match app
        .store()
        .first_delivery(src.name(), delivery, now + KEEP_DELIVERY)
        .await
    {
        Ok(true) => {}
        Ok(false) => return accepted("delivery already acted on"),
        Err(e) => {
            tracing::error!(error = %e, "cannot record a webhook delivery");
            return refuse(app, src, HookRefusal::Internal, addr).await;
        }
    }
    let sel = CiSelector {
        provider: end.provider.to_string(),
        project: end.project,
        run: end.run,
        attempt: end.attempt,
        job: end.job,
    };
    let ended = match app
        .store()
        .end_ci_leases(&sel, "ci_job_completed", now)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot end CI leases");
            return refuse(app, src, HookRefusal::Internal, addr).await;
        }
    };
    match crate::admin::record_lease_ends(app, &ended, None, "ci_webhook").await {
        Ok((leases, _)) => {
            let mut r = (
                StatusCode::OK,
                axum::Json(serde_json::json!({"ended": leases})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot record the end of CI leases");
            HookRefusal::Internal.response()
        }
    }
}

/// The delivery id: present, short, printable.
fn delivery_id<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| header_str(headers, n))
        .filter(|d| {
            !d.is_empty() && d.len() <= MAX_DELIVERY_ID && d.bytes().all(|b| b.is_ascii_graphic())
        })
}

async fn read_body(body: Body) -> Result<Bytes, HookRefusal> {
    axum::body::to_bytes(body, MAX_WEBHOOK_BODY)
        .await
        .map_err(|_| HookRefusal::TooLarge)
}

fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not_found"})),
    )
        .into_response()
}

/// `POST /webhooks/github`.
pub(crate) async fn github(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(secret) = app.config().webhooks.github_secret.clone() else {
        return not_configured();
    };
    let src = Source::Github;
    let addr = crate::reply::source(&addr);
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return refuse(&app, src, r, addr).await,
    };
    if let Err(r) = verify_github(&secret, &parts.headers, &body) {
        return refuse(&app, src, r, addr).await;
    }
    let Some(delivery) = delivery_id(&parts.headers, &["x-github-delivery"]) else {
        return refuse(&app, src, HookRefusal::NoDeliveryId, addr).await;
    };
    let event = header_str(&parts.headers, "x-github-event").unwrap_or("");
    let notice = webhook::github(event, &body);
    act(&app, src, delivery, notice, addr).await
}

/// `POST /webhooks/gitlab`.
pub(crate) async fn gitlab(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let hooks = &app.config().webhooks;
    let (token, signing) = (
        hooks.gitlab_secret.clone(),
        hooks.gitlab_signing_token.clone(),
    );
    if token.is_none() && signing.is_none() {
        return not_configured();
    }
    let src = Source::Gitlab;
    let addr = crate::reply::source(&addr);
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return refuse(&app, src, r, addr).await,
    };
    let now = app.clock().now();
    let verified = token
        .as_ref()
        .map_or(Ok(()), |t| verify_gitlab_token(t, &parts.headers))
        .and_then(|()| {
            signing.as_ref().map_or(Ok(()), |s| {
                verify_gitlab_signature(s, &parts.headers, &body, now)
            })
        });
    if let Err(r) = verified {
        return refuse(&app, src, r, addr).await;
    }
    let names = ["x-gitlab-event-uuid", "idempotency-key", "webhook-id"];
    let Some(delivery) = delivery_id(&parts.headers, &names) else {
        return refuse(&app, src, HookRefusal::NoDeliveryId, addr).await;
    };
    let notice = webhook::gitlab(&body);
    act(&app, src, delivery, notice, addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn github_signatures_verify_only_under_the_secret() {
        // GitHub's documented test vector ("Validating webhook deliveries").
        let secret = SecretString::from("It's a Secret to Everybody".to_string());
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_github(&secret, &headers(&[("x-hub-signature-256", good)]), body),
            Ok(())
        );
        let other = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"another secret"), body);
        let bad = format!("sha256={}", hex(other.as_ref()));
        for (h, want) in [
            (headers(&[]), HookRefusal::SignatureMissing),
            (
                headers(&[("x-hub-signature-256", "sha1=abcd")]),
                HookRefusal::SignatureMalformed,
            ),
            (
                headers(&[("x-hub-signature-256", "sha256=zz")]),
                HookRefusal::SignatureMalformed,
            ),
            (
                headers(&[("x-hub-signature-256", &bad)]),
                HookRefusal::SignatureInvalid,
            ),
        ] {
            assert_eq!(verify_github(&secret, &h, body), Err(want));
        }
        // The same signature over another body.
        assert_eq!(
            verify_github(
                &secret,
                &headers(&[("x-hub-signature-256", good)]),
                b"Hello"
            ),
            Err(HookRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn gitlab_tokens_and_signatures() {
        let secret = SecretString::from("gitlab-secret-token-1".to_string());
        assert_eq!(
            verify_gitlab_token(
                &secret,
                &headers(&[("x-gitlab-token", "gitlab-secret-token-1")])
            ),
            Ok(())
        );
        assert_eq!(
            verify_gitlab_token(
                &secret,
                &headers(&[("x-gitlab-token", "gitlab-secret-token-2")])
            ),
            Err(HookRefusal::SignatureInvalid)
        );
        assert_eq!(
            verify_gitlab_token(&secret, &headers(&[])),
            Err(HookRefusal::SignatureMissing)
        );

        let b64 = base64::engine::general_purpose::STANDARD;
        let raw_key = [7u8; 32];
        let token = SecretString::from(format!("whsec_{}", b64.encode(raw_key)));
        let body = br#"{"object_kind":"build"}"#;
        let now = 1_800_000_000;
        let sign = |ts: i64| {
            let msg = format!("msg_1.{ts}.{}", String::from_utf8_lossy(body));
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &raw_key), msg.as_bytes());
            format!("v1,{}", b64.encode(tag.as_ref()))
        };
        let h = |ts: i64, sig: &str| {
            headers(&[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", sig),
            ])
        };
        assert_eq!(
            verify_gitlab_signature(&token, &h(now, &sign(now)), body, now),
            Ok(())
        );
        // Several signatures (a key rotation): one valid is enough.
        let two = format!("v1,AAAA {}", sign(now));
        assert_eq!(
            verify_gitlab_signature(&token, &h(now, &two), body, now),
            Ok(())
        );
        assert_eq!(
            verify_gitlab_signature(&token, &h(now, &sign(now)), b"{}", now),
            Err(HookRefusal::SignatureInvalid)
        );
        assert_eq!(
            verify_gitlab_signature(&token, &h(now - 600, &sign(now - 600)), body, now),
            Err(HookRefusal::SignatureStale)
        );
        assert_eq!(
            verify_gitlab_signature(&token, &h(now, "v2,xyz"), body, now),
            Err(HookRefusal::SignatureMalformed)
        );
        assert_eq!(
            verify_gitlab_signature(&token, &headers(&[]), body, now),
            Err(HookRefusal::SignatureMissing)
        );
    }

    #[test]
    fn delivery_ids_are_short_and_printable() {
        let h = headers(&[("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        assert!(delivery_id(&h, &["x-github-delivery"]).is_some());
        let long = "a".repeat(200);
        let h = headers(&[("x-github-delivery", &long)]);
        assert!(delivery_id(&h, &["x-github-delivery"]).is_none());
        let h = headers(&[("idempotency-key", "k-1")]);
        assert_eq!(
            delivery_id(&h, &["x-gitlab-event-uuid", "idempotency-key"]),
            Some("k-1")
        );
    }
}
