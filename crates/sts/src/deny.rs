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
    #[error(
        "grant_type `{0}` is not supported; use client_credentials, urn:ietf:params:oauth:grant-type:token-exchange or urn:ietf:params:oauth:grant-type:jwt-bearer"
    )]
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
    /// The assertion's JWS header lists a critical extension (`crit`) mayfly does not
    /// understand (RFC 7515 §4.1.11).
    #[error(
        "client_assertion header lists critical extensions (crit) this server does not understand"
    )]
    UnsupportedCriticalHeader,
    /// The assertion's `typ` names another kind of token (an access token, for instance):
    /// RFC 8725 §3.11 forbids using one where the other is expected.
    #[error(
        "client_assertion typ `{0}` names another kind of token; use JWT or client-authentication+jwt, or leave typ out"
    )]
    AssertionWrongType(String),
    /// A requested scope is not allowed for this client.
    #[error("scope `{0}` is not allowed (for this principal and audience)")]
    ScopeNotAllowed(String),
    /// A requested audience/resource is not allowed for this client.
    #[error("audience `{0}` is not allowed for this principal")]
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
    /// The subject (or actor) token is not acceptable; the reason is fixed text.
    #[error("subject_token is not acceptable: {0}")]
    InvalidSubjectToken(&'static str),
    /// The subject token comes from an issuer that is not trusted.
    #[error("subject_token issuer is not trusted; add it under [[issuers]]")]
    UntrustedIssuer,
    /// The subject token's `aud` names none of the issuer's configured audiences.
    #[error("subject_token aud names none of the audiences configured for its issuer")]
    SubjectWrongAudience,
    /// The subject token has expired (beyond the skew).
    #[error("subject_token has expired")]
    SubjectExpired,
    /// The subject token was issued longer ago than the issuer's `max_token_age`.
    #[error("subject_token is older than its issuer's max_token_age ({0}s)")]
    SubjectTooOld(i64),
    /// The subject token's algorithm is not in the issuer's allow-list.
    #[error("subject_token algorithm {0} is not accepted for its issuer")]
    SubjectAlgorithmNotAllowed(String),
    /// No key of the issuer matches the subject token's kid, even after a refresh.
    #[error(
        "no key of the subject_token's issuer matches its kid, even after refreshing the issuer's keys"
    )]
    SubjectUnknownKey,
    /// The subject token was already exchanged and its issuer requires one-time use.
    #[error("subject_token has already been used; its issuer allows one exchange per token")]
    SubjectReplayed,
    /// The identity template cannot be filled from the subject token.
    #[error("cannot map the subject_token to a workload identity: {0}")]
    IdentityMapping(String),
    /// The mapped identity lies outside the trust domain configured for its issuer (a partner
    /// claiming an identity in our trust domain, or in another partner's).
    #[error("the subject_token's identity is outside the trust domain `{0}` of its issuer")]
    IdentityOutsideTrustDomain(String),
    /// The subject token's `typ` names another kind of token (RFC 8725 §3.11).
    #[error(
        "subject_token typ `{0}` names another kind of token (an access token or a client assertion)"
    )]
    SubjectWrongType(String),
    /// A mayfly access token presented as an actor was not issued for this server.
    #[error(
        "actor_token is an access token for another audience; an actor's token from this server must name the issuer (or its token endpoint) as its audience"
    )]
    ActorWrongAudience,
    /// The actor token was already used and its issuer allows one use per token.
    #[error("actor_token has already been used; its issuer allows one use per token")]
    ActorReplayed,
    /// The actor token's issuer requires client authentication and none was presented.
    #[error("client authentication is required for actor tokens of this issuer")]
    ActorClientAuthRequired,
    /// A `subject_token_type` or `actor_token_type` mayfly does not accept.
    #[error(
        "token type `{0}` is not supported; use urn:ietf:params:oauth:token-type:jwt, :id_token or :access_token"
    )]
    UnsupportedSubjectTokenType(String),
    /// A `requested_token_type` mayfly cannot issue.
    #[error(
        "requested_token_type `{0}` cannot be issued; mayfly issues urn:ietf:params:oauth:token-type:access_token (a JWT)"
    )]
    UnsupportedRequestedTokenType(String),
    /// Re-exchanging a mayfly token asked for a scope it does not carry.
    #[error("scope `{0}` is not in the subject token; re-exchange can only narrow scopes")]
    ScopeWidening(String),
    /// Re-exchanging a mayfly token asked for another audience.
    #[error("re-exchange can only keep or narrow the subject token's audience")]
    AudienceWidening,
    /// The requested lifetime exceeds what the subject token has left.
    #[error("requested lifetime exceeds the subject_token's remaining lifetime ({0}s)")]
    LifetimeBeyondSubject(i64),
    /// This issuer's tokens are exchanged only by an authenticated client.
    #[error("client authentication is required for subject tokens of this issuer")]
    ClientAuthRequired,
    /// RFC 7523 §2.1: a problem with the `assertion` grant is `invalid_grant`.
    #[error("{0}")]
    InvalidGrant(Box<Denial>),
    /// Policy refuses the workload this SVID (an X.509-SVID, or a JWT-SVID for this audience).
    #[error("policy does not allow this workload {}", crate::svid::what(*.0, .1))]
    SvidNotAllowed(crate::svid::SvidKind, String),
    /// `lease=<id>` names no lease of the caller's (unknown, or another principal's: the two
    /// read the same, so another owner's lease is never revealed).
    #[error("unknown lease; open a new lease with lease=new")]
    UnknownLease,
    /// `lease=<id>` names a lease that has ended (its tokens are revoked).
    #[error("lease {0} has ended; open a new lease with lease=new")]
    LeaseEnded(String),
    /// The CI job the identity token belongs to is over: its lease has ended.
    #[error("the CI job's lease has ended (the job is over); no more tokens are issued for it")]
    CiJobEnded,
    /// The store is unavailable.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// Something failed that the client cannot fix.
    #[error("internal error")]
    Internal,
}

impl Denial {
    /// The same refusal for the JWT bearer grant (RFC 7523 §3.1), where a problem with the
    /// `assertion` (what token exchange calls the subject token) is `invalid_grant`.
    pub fn for_assertion_grant(self) -> Self {
        use Denial::*;
        match self {
            d @ (InvalidSubjectToken(_)
            | UntrustedIssuer
            | SubjectWrongAudience
            | SubjectExpired
            | SubjectTooOld(_)
            | SubjectAlgorithmNotAllowed(_)
            | SubjectUnknownKey
            | SubjectReplayed
            | IdentityMapping(_)
            | IdentityOutsideTrustDomain(_)
            | SubjectWrongType(_)
            | LifetimeBeyondSubject(_)) => InvalidGrant(Box::new(d)),
            d => d,
        }
    }

    /// Whether the store already recorded this refusal atomically with the single-use check
    /// that found a replay; its denial event must not be written twice.
    pub fn recorded_at_commit(&self) -> bool {
        match self {
            Denial::ReplayedJti | Denial::SubjectReplayed | Denial::ActorReplayed => true,
            Denial::InvalidGrant(inner) => inner.recorded_at_commit(),
            _ => false,
        }
    }

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
            | ReplayedJti
            | UnsupportedCriticalHeader
            | AssertionWrongType(_) => ErrorCode::InvalidClient,
            ScopeNotAllowed(_) | ScopeWidening(_) => ErrorCode::InvalidScope,
            TargetNotAllowed(_) | TargetRequired | MultipleTargets | AudienceWidening => {
                ErrorCode::InvalidTarget
            }
            // RFC 8693 §2.2.2: an invalid or unacceptable subject or actor token is
            // `invalid_request`.
            InvalidSubjectToken(_)
            | UntrustedIssuer
            | SubjectWrongAudience
            | SubjectExpired
            | SubjectTooOld(_)
            | SubjectAlgorithmNotAllowed(_)
            | SubjectUnknownKey
            | SubjectReplayed
            | IdentityMapping(_)
            | IdentityOutsideTrustDomain(_)
            | SubjectWrongType(_)
            | ActorWrongAudience
            | ActorReplayed
            | UnsupportedSubjectTokenType(_)
            | UnsupportedRequestedTokenType(_)
            | LifetimeBeyondSubject(_) => ErrorCode::InvalidRequest,
            UnknownLease | LeaseEnded(_) | CiJobEnded => ErrorCode::InvalidRequest,
            ClientAuthRequired | ActorClientAuthRequired => ErrorCode::InvalidClient,
            InvalidGrant(_) => ErrorCode::InvalidGrant,
            NotTokenOwner => ErrorCode::UnauthorizedClient,
            SvidNotAllowed(..) => ErrorCode::AccessDenied,
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
            UnsupportedCriticalHeader => "unsupported_crit",
            AssertionWrongType(_) => "assertion_wrong_type",
            ScopeNotAllowed(_) => "scope_not_allowed",
            TargetNotAllowed(_) => "target_not_allowed",
            TargetRequired => "target_required",
            MultipleTargets => "multiple_targets",
            NotTokenOwner => "not_token_owner",
            InvalidSubjectToken(_) => "invalid_subject_token",
            UntrustedIssuer => "untrusted_issuer",
            SubjectWrongAudience => "subject_wrong_audience",
            SubjectExpired => "subject_expired",
            SubjectTooOld(_) => "subject_too_old",
            SubjectAlgorithmNotAllowed(_) => "subject_algorithm_not_allowed",
            SubjectUnknownKey => "subject_unknown_key",
            SubjectReplayed => "subject_replayed",
            IdentityMapping(_) => "identity_mapping",
            IdentityOutsideTrustDomain(_) => "identity_outside_trust_domain",
            SubjectWrongType(_) => "subject_wrong_type",
            ActorWrongAudience => "actor_wrong_audience",
            ActorReplayed => "actor_replayed",
            ActorClientAuthRequired => "actor_client_auth_required",
            UnsupportedSubjectTokenType(_) => "unsupported_subject_token_type",
            UnsupportedRequestedTokenType(_) => "unsupported_requested_token_type",
            ScopeWidening(_) => "scope_widening",
            AudienceWidening => "audience_widening",
            LifetimeBeyondSubject(_) => "lifetime_beyond_subject",
            ClientAuthRequired => "client_auth_required",
            SvidNotAllowed(..) => "svid_not_allowed",
            UnknownLease => "unknown_lease",
            LeaseEnded(_) => "lease_ended",
            CiJobEnded => "ci_job_ended",
            InvalidGrant(inner) => inner.reason(),
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}
