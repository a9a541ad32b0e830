//! What the agent needs from the mayfly server. The real implementation (HTTP + mutual TLS with
//! the agent's own X.509-SVID) lives in `upstream_http`; tests implement it with local crypto.

use std::future::Future;
use std::pin::Pin;

use mayfly_proto::TokenResponse;
use mayfly_proto::spiffe::{
    MintJwtResponse, SignX509Response, SyncResponse, WorkloadExitedRequest, WorkloadExitedResponse,
};

/// Why a call to the server failed. Variants never carry a token, a CSR or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The server could not be reached or the connection failed (retryable).
    #[error("server unreachable: {0}")]
    Transport(String),
    /// The server answered with an error (an RFC 6749 style `error` code, for the token
    /// endpoint; the HTTP status is kept so the agent can pass 4xx through).
    #[error("server refused the request ({status} {error})")]
    Refused {
        /// HTTP status the server answered with.
        status: u16,
        /// Error code (`invalid_request`, `access_denied`, `invalid_target`, ...).
        error: String,
        /// Human-readable description, when the server gave one.
        description: Option<String>,
    },
    /// The server's answer could not be used (malformed JSON, bad base64, ...).
    #[error("unusable response from the server: {0}")]
    BadResponse(String),
}

impl UpstreamError {
    /// The server's policy refused the request (403 `access_denied`, or the entry is not the
    /// agent's): the workload is told `PermissionDenied`, not that the server is unavailable.
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Refused { status: 403, .. })
    }
}

/// The server side of the agent, as the agent uses it.
///
/// Implementations write plain `async fn`s; the returned futures must be `Send` (the agent
/// calls them from spawned tasks):
///
/// ```ignore
/// impl Upstream for HttpUpstream {
///     async fn sync(&self) -> Result<SyncResponse, UpstreamError> { ... }
///     ...
/// }
/// ```
pub trait Upstream: Send + Sync + 'static {
    /// `GET /agent/v1/sync`: the entries whose parent is this agent, and the trust bundle.
    fn sync(&self) -> impl Future<Output = Result<SyncResponse, UpstreamError>> + Send;

    /// `POST /agent/v1/svid/x509`: have the server sign `csr_der` (PKCS#10, DER; the key was
    /// made by the agent) as the X.509-SVID of entry `entry_id`.
    fn sign_x509(
        &self,
        entry_id: &str,
        csr_der: &[u8],
    ) -> impl Future<Output = Result<SignX509Response, UpstreamError>> + Send;

    /// `POST /agent/v1/svid/jwt`: a JWT-SVID for entry `entry_id` with these audiences.
    fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> impl Future<Output = Result<MintJwtResponse, UpstreamError>> + Send;

    /// `POST /agent/v1/workload-exited`: a workload process exited; the server revokes what
    /// was issued to it.
    fn workload_exited(
        &self,
        request: WorkloadExitedRequest,
    ) -> impl Future<Output = Result<WorkloadExitedResponse, UpstreamError>> + Send;

    /// RFC 8693 token exchange at the server's token endpoint: `jwt_svid` as the subject token
    /// (`urn:ietf:params:oauth:token-type:jwt`), for `audience`, optional `scope`, and
    /// optional `lease` (`new` or a lease id, passed through as the `lease` parameter).
    fn exchange(
        &self,
        jwt_svid: &str,
        audience: &str,
        scope: Option<&str>,
        lease: Option<&str>,
    ) -> impl Future<Output = Result<TokenResponse, UpstreamError>> + Send;
}

/// So one server connection can be shared (`Agent::new(config, Arc::clone(&upstream))` while
/// another task renews the agent's own SVID through the same `Arc`).
impl<U: Upstream> Upstream for std::sync::Arc<U> {
    fn sync(&self) -> impl Future<Output = Result<SyncResponse, UpstreamError>> + Send {
        U::sync(self)
    }
    fn sign_x509(
        &self,
        entry_id: &str,
        csr_der: &[u8],
    ) -> impl Future<Output = Result<SignX509Response, UpstreamError>> + Send {
        U::sign_x509(self, entry_id, csr_der)
    }
    fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> impl Future<Output = Result<MintJwtResponse, UpstreamError>> + Send {
        U::mint_jwt(self, entry_id, audience)
    }
    fn workload_exited(
        &self,
        request: WorkloadExitedRequest,
    ) -> impl Future<Output = Result<WorkloadExitedResponse, UpstreamError>> + Send {
        U::workload_exited(self, request)
    }
    fn exchange(
        &self,
        jwt_svid: &str,
        audience: &str,
        scope: Option<&str>,
        lease: Option<&str>,
    ) -> impl Future<Output = Result<TokenResponse, UpstreamError>> + Send {
        U::exchange(self, jwt_svid, audience, scope, lease)
    }
}

/// A boxed, sendable future (the object-safe form of [`Upstream`], used inside the agent).
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, UpstreamError>> + Send + 'a>>;

/// Object-safe twin of [`Upstream`], so the agent's internals are not generic.
pub(crate) trait DynUpstream: Send + Sync + 'static {
    fn sync(&self) -> BoxFut<'_, SyncResponse>;
    fn sign_x509<'a>(
        &'a self,
        entry_id: &'a str,
        csr_der: &'a [u8],
    ) -> BoxFut<'a, SignX509Response>;
    fn mint_jwt<'a>(
        &'a self,
        entry_id: &'a str,
        audience: &'a [String],
    ) -> BoxFut<'a, MintJwtResponse>;
    fn workload_exited(&self, request: WorkloadExitedRequest)
    -> BoxFut<'_, WorkloadExitedResponse>;
    fn exchange<'a>(
        &'a self,
        jwt_svid: &'a str,
        audience: &'a str,
        scope: Option<&'a str>,
        lease: Option<&'a str>,
    ) -> BoxFut<'a, TokenResponse>;
}

impl<U: Upstream> DynUpstream for U {
    fn sync(&self) -> BoxFut<'_, SyncResponse> {
        Box::pin(Upstream::sync(self))
    }
    fn sign_x509<'a>(
        &'a self,
        entry_id: &'a str,
        csr_der: &'a [u8],
    ) -> BoxFut<'a, SignX509Response> {
        Box::pin(Upstream::sign_x509(self, entry_id, csr_der))
    }
    fn mint_jwt<'a>(
        &'a self,
        entry_id: &'a str,
        audience: &'a [String],
    ) -> BoxFut<'a, MintJwtResponse> {
        Box::pin(Upstream::mint_jwt(self, entry_id, audience))
    }
    fn workload_exited(
        &self,
        request: WorkloadExitedRequest,
    ) -> BoxFut<'_, WorkloadExitedResponse> {
        Box::pin(Upstream::workload_exited(self, request))
    }
    fn exchange<'a>(
        &'a self,
        jwt_svid: &'a str,
        audience: &'a str,
        scope: Option<&'a str>,
        lease: Option<&'a str>,
    ) -> BoxFut<'a, TokenResponse> {
        Box::pin(Upstream::exchange(self, jwt_svid, audience, scope, lease))
    }
}
