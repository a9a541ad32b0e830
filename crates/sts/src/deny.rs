use mayfly_proto::ErrorCode;

/// Why the pipeline refused a request: becomes both the RFC error and the audit reason.
/// Descriptions never contain a token, an assertion or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The body is not a well-formed form.
    #[error("{0}")]
    MalformedRequest(String),
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The content type is not a form.
    #[error("Content-Type must be application/x-www-form-urlencoded")]
    NotAForm,
    /// A required parameter is missing.
    #[error("missing parameter `{0}`")]
    MissingParameter(&'static str),
    /// A parameter has a value we do not accept.
    #[error("invalid parameter `{0}`: {1}")]
    InvalidParameter(&'static str, String),
    /// The grant type is not supported.
    #[error("grant_type `{0}` is not supported; use client_credentials")]
    UnsupportedGrantType(String),
    /// No client authentication was presented.
    #[error(
        "client authentication is required: send client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and a client_assertion (private_key_jwt)"
    )]
    MissingClientAuth,
    /// The client tried HTTP authentication (client_secret_basic), which mayfly does not offer.
    #[error(
        "HTTP Basic client authentication (client secrets) is not supported: use private_key_jwt"
    )]
    HttpAuthNotSupported,
    /// The assertion type is not jwt-bearer.
    #[error("client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer")]
    UnsupportedAssertionType,
    /// The assertion is not a well-formed signed JWT.
    #[error("client_assertion is not a well-formed signed JWT")]
    MalformedAssertion,
    /// The assertion's algorithm is not allowed.
    #[error(
        "client_assertion algorithm {0} is not accepted; use ES256, ES384, EdDSA, RS256 or PS256"
    )]
    AlgorithmNotAllowed(String),
    /// No such client.
    #[error("unknown client")]
    UnknownClient,
    /// No registered key of the client matches the assertion's kid/alg.
    #[error("no registered key of this client matches the assertion's kid and alg")]
    UnknownKey,
    /// The signature does not verify.
    #[error("client_assertion signature does not verify with the client's registered keys")]
    BadSignature,
    /// `iss` and `sub` must both equal the client_id.
    #[error("client_assertion iss and sub must both equal the client_id")]
    IssuerSubjectMismatch,
    /// `client_id` parameter disagrees with the assertion.
    #[error("client_id parameter does not match the client_assertion")]
    ClientIdMismatch,
    /// `aud` does not name this server.
    #[error(
        "client_assertion aud must be the issuer identifier or the token endpoint URL, and nothing else"
    )]
    BadAudience,
    /// A required claim is missing or has the wrong type.
    #[error("client_assertion claim `{0}` is missing or not valid")]
    MissingClaim(&'static str),
    /// The assertion expired (beyond the skew).
    #[error("client_assertion has expired")]
    AssertionExpired,
    /// The assertion's `exp` is too far in the future.
    #[error("client_assertion exp is too far in the future (at most {0}s ahead)")]
    AssertionLifetimeTooLong(i64),
    /// `nbf` or `iat` is in the future beyond the skew.
    #[error("client_assertion is not yet valid (nbf or iat in the future)")]
    AssertionNotYetValid,
    /// The `jti` was already used.
    #[error("client_assertion jti has already been used")]
    ReplayedJti,
    /// A requested scope is not allowed for this client.
    #[error("scope `{0}` is not allowed for this client")]
    ScopeNotAllowed(String),
    /// A requested audience/resource is not allowed for this client.
    #[error("audience `{0}` is not allowed for this client")]
    TargetNotAllowed(String),
    /// No audience was named and the client has several.
    #[error("name the audience with `resource` or `audience`; this client may call several")]
    TargetRequired,
    /// More than one audience was requested.
    #[error("one audience per token: request one `resource` at a time")]
    MultipleTargets,
    /// The caller may not act on this token.
    #[error("the token was not issued to this client")]
    NotTokenOwner,
    /// The store is unavailable.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// Something failed that the client cannot fix.
    #[error("internal error")]
    Internal,
}

impl Denial {
    /// The RFC error code.
    pub fn code(&self) -> ErrorCode {
        use Denial::*;
        match self {
            MalformedRequest(_) | BodyTooLarge(_) | NotAForm | MissingParameter(_)
            | InvalidParameter(..) => ErrorCode::InvalidRequest,
            UnsupportedGrantType(_) => ErrorCode::UnsupportedGrantType,
            MissingClientAuth
            | HttpAuthNotSupported
            | UnsupportedAssertionType
            | MalformedAssertion
            | AlgorithmNotAllowed(_)
            | UnknownClient
            | UnknownKey
            | BadSignature
            | IssuerSubjectMismatch
            | ClientIdMismatch
            | BadAudience
            | MissingClaim(_)
            | AssertionExpired
            | AssertionLifetimeTooLong(_)
            | AssertionNotYetValid
            | ReplayedJti => ErrorCode::InvalidClient,
            ScopeNotAllowed(_) => ErrorCode::InvalidScope,
            TargetNotAllowed(_) | TargetRequired | MultipleTargets => ErrorCode::InvalidTarget,
            NotTokenOwner => ErrorCode::UnauthorizedClient,
            Unavailable => ErrorCode::TemporarilyUnavailable,
            Internal => ErrorCode::ServerError,
        }
    }

    /// A stable, machine-readable reason for audit events and metric labels (bounded set).
    pub fn reason(&self) -> &'static str {
        use Denial::*;
        match self {
            MalformedRequest(_) => "malformed_request",
            BodyTooLarge(_) => "body_too_large",
            NotAForm => "not_a_form",
            MissingParameter(_) => "missing_parameter",
            InvalidParameter(..) => "invalid_parameter",
            UnsupportedGrantType(_) => "unsupported_grant_type",
            MissingClientAuth => "missing_client_auth",
            HttpAuthNotSupported => "http_auth_not_supported",
            UnsupportedAssertionType => "unsupported_assertion_type",
            MalformedAssertion => "malformed_assertion",
            AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            UnknownClient => "unknown_client",
            UnknownKey => "unknown_key",
            BadSignature => "bad_signature",
            IssuerSubjectMismatch => "iss_sub_mismatch",
            ClientIdMismatch => "client_id_mismatch",
            BadAudience => "bad_audience",
            MissingClaim(_) => "missing_claim",
            AssertionExpired => "assertion_expired",
            AssertionLifetimeTooLong(_) => "assertion_lifetime_too_long",
            AssertionNotYetValid => "assertion_not_yet_valid",
            ReplayedJti => "replayed_jti",
            ScopeNotAllowed(_) => "scope_not_allowed",
            TargetNotAllowed(_) => "target_not_allowed",
            TargetRequired => "target_required",
            MultipleTargets => "multiple_targets",
            NotTokenOwner => "not_token_owner",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}
