use serde::{Deserialize, Serialize};

/// OAuth 2.0 error codes (RFC 6749 §5.2, RFC 8707 §2, RFC 7009 §2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed request: missing, duplicated or invalid parameter.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant (or subject token) is invalid.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// A requested scope is not allowed.
    InvalidScope,
    /// A requested resource or audience is not allowed (RFC 8707).
    InvalidTarget,
    /// The token type cannot be revoked (RFC 7009).
    UnsupportedTokenType,
    /// Unexpected failure; never carries details.
    ServerError,
    /// The server cannot serve now (storage unavailable, overloaded).
    TemporarilyUnavailable,
    /// The request is well formed and authenticated, but policy refuses it (RFC 6749 §4.1.2.1
    /// names this code; mayfly's agent API answers it with 403).
    AccessDenied,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::AccessDenied => "access_denied",
        }
    }

    /// The HTTP status RFC 6749 §5.2 gives this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidClient => 401,
            Self::AccessDenied => 403,
            Self::ServerError => 500,
            Self::TemporarilyUnavailable => 503,
            _ => 400,
        }
    }
}

/// Error response body (RFC 6749 §5.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error code.
    pub error: ErrorCode,
    /// Human-readable explanation; never contains a token, assertion or key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_description: Option<String>,
}
