//! The shared vocabulary of mayfly: OAuth 2.0 wire types, RFC error codes, server metadata,
//! introspection responses, SPIFFE IDs, the authorization query ([`Authorizer`]), the audit
//! event ([`AuditEvent`]) and the clock ([`Clock`]).
//!
//! This crate is serde only. It does no I/O and no cryptography (the system clock is its one
//! reading of the outside world); parsing a request body into
//! [`TokenRequest`] checks shape (required, duplicate and unknown-grant parameters), never trust.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod cache;
pub mod clock;
mod error;
mod form;
pub mod keys;
mod metadata;
pub mod path;
pub mod spiffe;
pub mod spiffe_id;

pub use audit::{AuditEvent, Decision, EventKind};
pub use authz::{ACTION_TOKEN, Authorizer, AuthzDecision, AuthzQuery, Principal, PrincipalKind};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, ErrorResponse};
pub use form::{Form, FormError};
pub use metadata::ServerMetadata;
pub use spiffe_id::{SpiffeId, SpiffeIdError};

/// The scopes of a `scope` value (RFC 6749 §3.3: space-delimited), empty pieces skipped.
pub fn scope_tokens(scope: Option<&str>) -> impl Iterator<Item = &str> {
    scope.unwrap_or("").split(' ').filter(|s| !s.is_empty())
}

use serde::{Deserialize, Serialize};

/// `client_assertion_type` for RFC 7523 client authentication (`private_key_jwt`).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `grant_type` of the OAuth 2.0 client credentials grant.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// OAuth 2.0 Token Exchange (RFC 8693 §2.1).
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// JWT bearer authorization grant (RFC 7523 §2.1).
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Token type identifier: a JWT (RFC 8693 §3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Token type identifier: an OpenID Connect ID token (RFC 8693 §3).
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Token type identifier: an OAuth access token (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The `typ` header value of an RFC 9068 JWT access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token (a JWT per RFC 9068).
    pub access_token: String,
    /// Always `Bearer` for now.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Granted scopes, space separated; present when any were granted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
    /// Token exchange only (RFC 8693 §2.2.1): the type of the issued token.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issued_token_type: Option<String>,
    /// The lease the token lives under (opened by `lease=new`, named by `lease=<id>`, or its
    /// CI job's), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lease_id: Option<String>,
}

/// Introspection response (RFC 7662 §2.2). Inactive tokens carry nothing but `active: false`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IntrospectionResponse {
    /// Whether the token is currently active.
    pub active: bool,
    /// Space-separated scopes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
    /// Client the token was issued to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_id: Option<String>,
    /// Token type (`Bearer`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_type: Option<String>,
    /// Expiry (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<i64>,
    /// Issued at (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iat: Option<i64>,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sub: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
    /// Token identifier.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jti: Option<String>,
}

impl IntrospectionResponse {
    /// The answer for any token that is not active, whatever the reason (RFC 7662 §2.2).
    pub fn inactive() -> Self {
        Self::default()
    }
}
