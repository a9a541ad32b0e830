//! The one place where engine denials become HTTP responses (RFC 6749 §5.2).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::{ErrorCode, ErrorResponse};
use mayfly_sts::Denial;

/// Map a denial to its status, headers and JSON body. The description is the denial's
/// `Display`, which never holds a token, an assertion or key material.
pub fn denial_response(d: &Denial) -> Response {
    let code = d.code();
    let status = match d {
        Denial::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
    };
    let description = match code {
        // Internal failures say nothing about internals.
        ErrorCode::ServerError => "internal error; the event was logged".to_string(),
        _ => d.to_string(),
    };
    let body = ErrorResponse {
        error: code,
        error_description: Some(description),
    };
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if *d == Denial::HttpAuthNotSupported {
        // RFC 6749 §5.2: a client that tried the Authorization header gets a challenge in the
        // scheme it used. Assertion-based failures get none (there is no scheme to name).
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mayfly\""),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let r = denial_response(&Denial::BadSignature);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = denial_response(&Denial::HttpAuthNotSupported);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"mayfly\""
        );
        assert_eq!(
            denial_response(&Denial::ScopeNotAllowed("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            denial_response(&Denial::BodyTooLarge(10)).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            denial_response(&Denial::Unavailable).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            denial_response(&Denial::Internal).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
