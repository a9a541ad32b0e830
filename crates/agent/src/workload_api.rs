//! The SPIFFE Workload API over tonic.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata (else `InvalidArgument`, as
//! the specification says), and the caller is attested on every call (and again on every
//! change pushed to a stream). A caller that matches no entry gets `PermissionDenied` with a
//! generic message and nothing else, for every call (the agent does not serve bundles or
//! validation to unidentified processes).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::agent::{Caller, Inner, Refusal};
use crate::error::AgentError;
use crate::peer::PeerInfo;
use crate::procs::JwtError;
use crate::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use crate::state::Snapshot;

/// The metadata every Workload API call must carry (it shows the call was not made by a
/// browser or a proxy tricked into reaching the socket).
const SECURITY_HEADER: &str = "workload.spiffe.io";

type Pushes<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serve the Workload API on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // Open streams never end by themselves; on shutdown they are ended first, so the server's
    // graceful shutdown (which waits for running calls) can finish.
    let (stop_tx, stop) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let service = SpiffeWorkloadApiServer::with_interceptor(
        WorkloadApi { inner, stop },
        require_security_header,
    );
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(crate::peer::incoming(listener), shutdown)
        .await
        .map_err(|e| AgentError::Serve(e.to_string()))
}

fn require_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(req),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn peer_of<T>(req: &Request<T>) -> PeerInfo {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .unwrap_or(PeerInfo(None))
}

struct WorkloadApi {
    inner: Arc<Inner>,
    /// Becomes true when the server shuts down.
    stop: watch::Receiver<bool>,
}

/// A response to push on a stream, with what it was built from (pushed again only when this
/// changes); `None` to wait for a change; an error ends the stream.
type Built<T> = Result<Option<(Vec<u64>, T)>, Status>;

/// A stream that pushes `build(caller)` now and after every state change that alters it,
/// re-attesting the caller each time; it ends with `PermissionDenied` if the caller no longer
/// matches any entry, or with the connection, or when the server shuts down.
fn pushes<T: Send + 'static>(
    inner: Arc<Inner>,
    peer: PeerInfo,
    rx: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Receiver<bool>,
    first: Caller,
    build: fn(&Caller) -> Built<T>,
) -> Pushes<T> {
    struct St {
        inner: Arc<Inner>,
        peer: PeerInfo,
        rx: watch::Receiver<Arc<Snapshot>>,
        stop: watch::Receiver<bool>,
        first: Option<Caller>,
        last: Option<Vec<u64>>,
        done: bool,
    }
    let st = St {
        inner,
        peer,
        rx,
        stop,
        first: Some(first),
        last: None,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let caller = match st.first.take() {
                Some(caller) => caller,
                None => {
                    tokio::select! {
                        changed = st.rx.changed() => changed.ok()?,
                        _ = st.stop.wait_for(|stop| *stop) => return None,
                    }
                    let snapshot = st.rx.borrow_and_update().clone();
                    match st.inner.attest_with(&st.peer, snapshot).await {
                        Ok(caller) => caller,
                        Err(refusal) => {
                            st.done = true;
                            return Some((Err(refusal.grpc()), st));
                        }
                    }
                }
            };
            match build(&caller) {
                Err(status) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
                Ok(Some((version, msg))) if st.last.as_ref() != Some(&version) => {
                    st.last = Some(version);
                    return Some((Ok(msg), st));
                }
                Ok(_) => {}
            }
        }
    }))
}

fn x509_svids(caller: &Caller) -> Built<X509svidResponse> {
    let snapshot = &caller.snapshot;
    // The server's policy refuses every identity this caller has: it gets nothing, as a caller
    // without an entry does.
    if caller
        .entries
        .iter()
        .all(|e| snapshot.denied.contains(&e.id) && !snapshot.svids.contains_key(&e.id))
    {
        return Err(Refusal::Denied.grpc());
    }
    let Some(bundle) = caller.snapshot.bundle.as_ref() else {
        return Ok(None);
    };
    let mut version = vec![bundle.generation];
    let mut svids = Vec::new();
    for entry in &caller.entries {
        if let Some(svid) = caller.snapshot.svids.get(&entry.id) {
            version.push(svid.generation);
            svids.push(X509svid {
                spiffe_id: entry.spiffe_id.clone(),
                x509_svid: svid.chain.clone(),
                x509_svid_key: svid.key.to_vec(),
                bundle: bundle.x509.clone(),
                hint: String::new(),
            });
        }
    }
    // Nothing signed yet (the server is slow or down): wait rather than send an empty list,
    // which clients treat as an error.
    if svids.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        version,
        X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        },
    )))
}

fn x509_bundles(caller: &Caller) -> Built<X509BundlesResponse> {
    Ok(caller.snapshot.bundle.as_ref().map(|bundle| {
        (
            vec![bundle.generation],
            X509BundlesResponse {
                crl: Vec::new(),
                bundles: HashMap::from([(bundle.td_id.clone(), bundle.x509.clone())]),
            },
        )
    }))
}

fn jwt_bundles(caller: &Caller) -> Built<JwtBundlesResponse> {
    Ok(caller.snapshot.bundle.as_ref().map(|bundle| {
        (
            vec![bundle.generation],
            JwtBundlesResponse {
                bundles: HashMap::from([(bundle.td_id.clone(), bundle.jwks.clone())]),
            },
        )
    }))
}

impl WorkloadApi {
    async fn start_stream<T: Send + 'static>(
        &self,
        peer: PeerInfo,
        build: fn(&Caller) -> Built<T>,
    ) -> Result<Response<Pushes<T>>, Status> {
        // Subscribe first, so no change between the attestation and the stream is missed.
        let mut rx = self.inner.state.subscribe();
        let snapshot = rx.borrow_and_update().clone();
        let caller = self
            .inner
            .attest_with(&peer, snapshot)
            .await
            .map_err(|r| r.grpc())?;
        Ok(Response::new(pushes(
            self.inner.clone(),
            peer,
            rx,
            self.stop.clone(),
            caller,
            build,
        )))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Pushes<X509svidResponse>;
    type FetchX509BundlesStream = Pushes<X509BundlesResponse>;
    type FetchJWTBundlesStream = Pushes<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.start_stream(peer_of(&request), x509_svids).await
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.start_stream(peer_of(&request), x509_bundles).await
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.start_stream(peer_of(&request), jwt_bundles).await
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let peer = peer_of(&request);
        let req = request.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let caller = self.inner.attest(&peer).await.map_err(|r| r.grpc())?;
        let entries: Vec<_> = caller
            .entries
            .iter()
            .filter(|e| req.spiffe_id.is_empty() || e.spiffe_id == req.spiffe_id)
            .collect();
        if entries.is_empty() {
            // Asked for an identity it does not have: the same answer as having none.
            return Err(Refusal::Denied.grpc());
        }
        let mut svids = Vec::with_capacity(entries.len());
        for entry in entries {
            let token = match self
                .inner
                .jwt_svid(&caller.workload, entry, &req.audience)
                .await
            {
                Ok(token) => token,
                // Policy refuses this identity (for these audiences): the workload gets its
                // other identities, or `PermissionDenied` if none is left.
                Err(JwtError::Upstream(e)) if e.is_denied() => {
                    tracing::info!(entry = %entry.id, "the server's policy refused a JWT-SVID");
                    continue;
                }
                Err(e) => return Err(Refusal::jwt(e, &entry.id).grpc()),
            };
            svids.push(Jwtsvid {
                spiffe_id: entry.spiffe_id.clone(),
                svid: token,
                hint: String::new(),
            });
        }
        if svids.is_empty() {
            return Err(Refusal::Denied.grpc());
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let peer = peer_of(&request);
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let caller = self.inner.attest(&peer).await.map_err(|r| r.grpc())?;
        let bundle = caller
            .snapshot
            .bundle
            .as_ref()
            .ok_or_else(|| Refusal::NotReady.grpc())?;
        let leeway = i64::try_from(self.inner.config.jwt_leeway.as_secs()).unwrap_or(0);
        let (spiffe_id, claims) = crate::jwt::validate(bundle, &req.svid, &req.audience, leeway)
            .map_err(|reason| {
                tracing::debug!(pid = caller.workload.pid, %reason, "JWT-SVID did not validate");
                Status::invalid_argument(format!("JWT-SVID is not valid: {reason}"))
            })?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(crate::jwt::to_struct(claims)),
        }))
    }
}
