//! The agent API's TLS listener: the server presents its own X.509-SVID
//! (`spiffe://<td>/mayfly/server`), agents present theirs (optional, because attestation comes
//! before an agent has one). Trust anchors and the server's SVID are replaced in place on each
//! tick, so CA rotation applies to new connections without a restart.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_crypto::x509;
use mayfly_spiffe::tls::{Authorities, SpiffeClientVerifier, SpiffeIdAuthorizer, SvidCertResolver};

use super::{Params, Snapshot, SpiffeError};
use crate::state::App;

/// Who is on the other end of an agent API connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The SPIFFE ID and certificate serial (hex) of the client's SVID, if it sent one.
    pub svid: Option<(String, String)>,
}

pub(crate) struct TlsState {
    authorities: Authorities,
    resolver: Arc<SvidCertResolver>,
    config: Arc<rustls::ServerConfig>,
    renew_at: AtomicI64,
    ca: Mutex<String>,
}

impl TlsState {
    pub(crate) fn new(p: &Params, snap: &Snapshot, now: i64) -> Result<Self, SpiffeError> {
        let authorities = Authorities::new(&p.trust_domain, snap.roots.clone()).map_err(tls_err)?;
        let (chain, key, renew_at) = server_svid(p, snap, now)?;
        let resolver = Arc::new(SvidCertResolver::new(&chain, &key).map_err(tls_err)?);
        let verifier = Arc::new(SpiffeClientVerifier::optional(
            authorities.clone(),
            SpiffeIdAuthorizer::member_of(&p.trust_domain).map_err(tls_err)?,
        ));
        let config = Arc::new(
            mayfly_spiffe::tls::server_config(resolver.clone(), verifier).map_err(tls_err)?,
        );
        Ok(TlsState {
            authorities,
            resolver,
            config,
            renew_at: AtomicI64::new(renew_at),
            ca: Mutex::new(snap.ca.fingerprint()),
        })
    }

    /// New trust anchors; a new server SVID when half its life has passed or the CA changed.
    pub(crate) fn update(&self, p: &Params, snap: &Snapshot, now: i64) -> Result<(), SpiffeError> {
        self.authorities
            .replace(snap.roots.clone())
            .map_err(tls_err)?;
        let fp = snap.ca.fingerprint();
        let ca_changed = self.ca.lock().map(|c| *c != fp).unwrap_or(true);
        if ca_changed || now >= self.renew_at.load(Ordering::Relaxed) {
            let (chain, key, renew_at) = server_svid(p, snap, now)?;
            self.resolver.rotate(&chain, &key).map_err(tls_err)?;
            self.renew_at.store(renew_at, Ordering::Relaxed);
            if let Ok(mut c) = self.ca.lock() {
                *c = fp;
            }
        }
        Ok(())
    }
}

fn tls_err(e: impl std::fmt::Display) -> SpiffeError {
    SpiffeError::Tls(e.to_string())
}

/// A fresh key and X.509-SVID for the server itself; returns (chain, PKCS#8, renew at).
#[allow(clippy::type_complexity)]
fn server_svid(
    p: &Params,
    snap: &Snapshot,
    now: i64,
) -> Result<(Vec<Vec<u8>>, zeroize::Zeroizing<Vec<u8>>, i64), SpiffeError> {
    let (key, csr) = x509::new_svid_key_and_csr()?;
    let mut dns = p.cfg.server_dns_names.clone();
    if !dns.iter().any(|d| d == "localhost") {
        dns.push("localhost".into());
    }
    let ttl = p.cfg.x509_svid_ttl.as_secs() as i64;
    let (chain, not_after) = p.sign_x509(
        snap,
        &csr,
        &super::server_id(&p.trust_domain),
        &dns,
        ttl,
        now,
    )?;
    Ok((
        chain,
        key,
        mayfly_spiffe::rotation::renew_at(now, not_after),
    ))
}

/// Serve the agent API on `listener` (TLS) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = app.spiffe().tls.config.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "agent API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A handshake that does not finish in time is dropped (slowloris).
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "agent API TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let svid = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| x509::SvidInfo::parse(leaf.as_ref()).ok())
                .map(|i| (i.spiffe_id, i.serial));
            let router = super::agent_api::router(app, Peer { svid }, addr);
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(peer = %addr, error = %e, "agent API connection ended");
            }
        });
    }
}
