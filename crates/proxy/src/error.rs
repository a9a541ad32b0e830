//! Every way a call is refused or fails, mapped to HTTP in exactly one place
//! ([`Refusal::response`]). No variant carries a token, a key or an upstream URL.

use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::body::{ProxyBody, full};

/// Why the proxy answered instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No `Authorization: Bearer` token (RFC 6750 §3.1: no error code).
    #[error("this route needs a mayfly access token: send Authorization: Bearer TOKEN")]
    MissingToken,
    /// The token is malformed, not ours, expired, for another audience, or revoked.
    #[error("{0}")]
    InvalidToken(String),
    /// The token lacks a scope the route needs.
    #[error("this route needs the scope(s) {0}")]
    InsufficientScope(String),
    /// The request is malformed (bad path, several tokens, ...).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request path cannot be normalised safely (encoded `/` or `\\`, NUL, ...).
    #[error("{0}")]
    BadPath(#[from] mayfly_proto::path::PathError),
    /// No route matches.
    #[error("no route of this proxy matches this host and path")]
    NoRoute,
    /// The route's Cedar policy does not allow this call for this workload.
    #[error("the policy of route {route} does not allow {method} {path} for this workload")]
    PolicyDenied {
        /// Route.
        route: String,
        /// HTTP method.
        method: String,
        /// Path below the route's prefix.
        path: String,
    },
    /// The route's static key expired.
    #[error(
        "the static key of route {route} expired on {date}; its owner {owner} must move off it, or extend it: mayfly debt extend {entry} --until YYYY-MM-DD --reason TEXT"
    )]
    KeyExpired {
        /// Route.
        route: String,
        /// The expiry date (`YYYY-MM-DD`, the last day it was valid).
        date: String,
        /// The entry's owner.
        owner: String,
        /// The key-debt entry.
        entry: String,
    },
    /// The route's key is not in the store (or cannot be used).
    #[error("route {route} has no usable key: {why}")]
    NoKey {
        /// Route.
        route: String,
        /// What to do.
        why: String,
    },
    /// The issuer could not be asked (JWKS or introspection): fail closed.
    #[error("cannot check the token with the issuer right now; retry shortly")]
    IssuerUnavailable,
    /// The upstream could not be reached or failed mid-way.
    #[error("the upstream of route {0} could not be reached")]
    UpstreamUnreachable(String),
    /// The upstream did not answer in time.
    #[error("the upstream of route {0} did not answer in time")]
    UpstreamTimeout(String),
    /// The upstream sent a compressed body (ignoring `Accept-Encoding: identity`): the proxy
    /// cannot scrub the key out of it, so it is not passed on. The encoding is not named: the
    /// header is the upstream's text, and could hold the key.
    #[error(
        "the upstream of route {0} sent a compressed response (Content-Encoding), which the proxy cannot check for the route's key; configure the upstream to honour Accept-Encoding: identity"
    )]
    UpstreamEncoded(String),
}

impl Refusal {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Refusal::InsufficientScope(_)
            | Refusal::KeyExpired { .. }
            | Refusal::PolicyDenied { .. } => StatusCode::FORBIDDEN,
            Refusal::BadRequest(_) | Refusal::BadPath(_) => StatusCode::BAD_REQUEST,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::NoKey { .. } | Refusal::IssuerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamUnreachable(_) | Refusal::UpstreamEncoded(_) => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` code (also the audit reason).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken(_) => "invalid_token",
            Refusal::InsufficientScope(_) => "insufficient_scope",
            Refusal::BadRequest(_) | Refusal::BadPath(_) => "invalid_request",
            Refusal::NoRoute => "not_found",
            Refusal::KeyExpired { .. } => "key_expired",
            Refusal::PolicyDenied { .. } => "access_denied",
            Refusal::NoKey { .. } => "key_unavailable",
            Refusal::IssuerUnavailable => "temporarily_unavailable",
            Refusal::UpstreamUnreachable(_) => "upstream_error",
            Refusal::UpstreamTimeout(_) => "upstream_timeout",
            Refusal::UpstreamEncoded(_) => "upstream_encoding",
        }
    }

    /// The audit event's `reason`: the `error` code, or for a refused path what was wrong
    /// with it (`path_encoded_slash`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadPath(e) => e.reason(),
            _ => self.code(),
        }
    }

    /// The JSON error response, with `WWW-Authenticate` for token problems (RFC 6750 §3).
    pub fn response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.to_string(),
        });
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        let challenge = match self {
            Refusal::MissingToken => Some("Bearer"),
            Refusal::InvalidToken(_) => Some("Bearer error=\"invalid_token\""),
            Refusal::InsufficientScope(_) => Some("Bearer error=\"insufficient_scope\""),
            _ => None,
        };
        if let Some(c) = challenge {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let r = Refusal::MissingToken.response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r = Refusal::InvalidToken("expired".into()).response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let r = Refusal::InsufficientScope("write".into()).response();
        assert_eq!(r.status(), 403);
        let e = Refusal::KeyExpired {
            route: "stripe".into(),
            date: "2026-01-31".into(),
            owner: "payments".into(),
            entry: "stripe".into(),
        };
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("mayfly debt extend stripe --until"));
        let e = Refusal::UpstreamEncoded("stripe".into());
        assert_eq!((e.status().as_u16(), e.code()), (502, "upstream_encoding"));
    }
}
