//! The agent's errors. None of them carries key material, a CSR or a token.

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
