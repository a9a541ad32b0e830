//! The agent's errors. None of them carries key material, a CSR or a token.

use crate::procs::JwtError;
use crate::upstream::UpstreamError;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A local file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the agent was doing (names the path).
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The socket path is in use by a live server, or is not a socket.
    #[error("{0}")]
    Socket(String),
    /// The directory of a socket could be changed by someone other than the agent (or root),
    /// or there is no safe default for it.
    #[error("socket directory {}: {reason}", path.display())]
    SocketDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A call to the server failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The agent could not make a key pair or a CSR.
    #[error("cannot make an SVID key or CSR: {0}")]
    Key(String),
    /// The server returned an X.509-SVID the agent will not hand out.
    #[error("the server returned an unusable X.509-SVID for entry {entry_id}: {reason}")]
    BadSvid {
        /// The entry id.
        entry_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The gRPC or HTTP server stopped with an error.
    #[error("server failed: {0}")]
    Serve(String),
}

impl AgentError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a workload gets nothing from the agent: one type, mapped once to a gRPC status
/// ([`Refusal::grpc`]) and once to an HTTP answer ([`Refusal::http`]), so the Workload API and
/// the token endpoint refuse alike. Messages are fixed texts: no caller detail leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// No sync has succeeded yet.
    #[error("the agent has not synced with its server yet")]
    NotReady,
    /// Not attested, or no entry matches. Callers see one generic message for all causes.
    #[error("no identity issued")]
    Denied,
    /// The agent holds JWT-SVIDs for as many processes as it tracks.
    #[error("too many workload processes hold JWT-SVIDs from this agent")]
    TooManyProcesses,
    /// This process holds as many JWT-SVIDs as it may.
    #[error("this process holds too many JWT-SVIDs")]
    TooManyJtis,
    /// The server could not mint the JWT-SVID.
    #[error("could not obtain a JWT-SVID from the server")]
    NoJwtSvid,
    /// The agent's own state is unusable.
    #[error("agent state is unavailable")]
    Internal,
}

impl Refusal {
    /// The refusal for a JWT-SVID that was not handed out; a server failure is logged here.
    pub(crate) fn jwt(e: JwtError, entry_id: &str) -> Self {
        match e {
            JwtError::TooManyProcesses => Self::TooManyProcesses,
            JwtError::TooManyJtis => Self::TooManyJtis,
            // The server's policy refused this identity the JWT-SVID.
            JwtError::Upstream(e) if e.is_denied() => Self::Denied,
            JwtError::Upstream(e) => {
                tracing::warn!(error = %e, entry = %entry_id, "minting a JWT-SVID failed");
                Self::NoJwtSvid
            }
            JwtError::Poisoned => Self::Internal,
        }
    }

    /// The Workload API's answer.
    pub(crate) fn grpc(self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::NotReady | Self::NoJwtSvid => tonic::Status::unavailable(message),
            Self::Denied => tonic::Status::permission_denied(message),
            Self::TooManyProcesses | Self::TooManyJtis => {
                tonic::Status::resource_exhausted(message)
            }
            Self::Internal => tonic::Status::internal(message),
        }
    }

    /// The token endpoint's answer: HTTP status and RFC 6749 error code (the message is the
    /// description). A limit is 429: the caller may retry once its older tokens have expired.
    pub(crate) fn http(self) -> (axum::http::StatusCode, &'static str) {
        use axum::http::StatusCode;
        match self {
            Self::NotReady | Self::NoJwtSvid => {
                (StatusCode::BAD_GATEWAY, "temporarily_unavailable")
            }
            Self::Denied => (StatusCode::FORBIDDEN, "access_denied"),
            Self::TooManyProcesses | Self::TooManyJtis => {
                (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable")
            }
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;
    use axum::http::StatusCode;
    use tonic::Code;

    #[test]
    fn each_refusal_has_one_grpc_and_one_http_answer() {
        let cases = [
            (
                Refusal::NotReady,
                Code::Unavailable,
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
            ),
            (
                Refusal::Denied,
                Code::PermissionDenied,
                StatusCode::FORBIDDEN,
                "access_denied",
            ),
            (
                Refusal::TooManyProcesses,
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
            ),
            (
                Refusal::TooManyJtis,
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
            ),
            (
                Refusal::NoJwtSvid,
                Code::Unavailable,
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
            ),
            (
                Refusal::Internal,
                Code::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
            ),
        ];
        for (r, code, status, error) in cases {
            let s = r.grpc();
            assert_eq!(s.code(), code, "{r:?}");
            assert_eq!(s.message(), r.to_string());
            assert_eq!(r.http(), (status, error), "{r:?}");
        }
    }
}
