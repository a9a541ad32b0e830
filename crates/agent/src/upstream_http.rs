//! The agent's link to the server: node attestation, then JSON over mutual TLS with the
//! agent's own X.509-SVID, renewed at half its life. The agent keeps its key and SVID in
//! memory only: nothing long-lived is written to its disk, and a restarted agent attests again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use mayfly_proto::spiffe::{
    AgentAttestation, AgentSvidResponse, AttestRequest, BundleWire, MintJwtRequest,
    MintJwtResponse, RenewRequest, SignX509Request, SignX509Response, SyncResponse,
    WorkloadExitedRequest, WorkloadExitedResponse,
};
use mayfly_spiffe::tls::{Authorities, SpiffeIdAuthorizer, SpiffeServerVerifier, SvidCertResolver};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// Longest accepted server response.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Deadline of one call to the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpUpstreamError {
    /// The server could not be reached or the TLS handshake failed.
    #[error("cannot reach the mayfly server at {url}: {detail}")]
    Unreachable {
        /// Which URL.
        url: String,
        /// Why (no secrets).
        detail: String,
    },
    /// The server refused (its `error` and `error_description`).
    #[error("the server refused ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Error code.
        error: String,
        /// Error description.
        description: String,
    },
    /// The answer was not what the protocol says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Local key or TLS setup failed.
    #[error("{0}")]
    Local(String),
}

/// How the agent proves itself at start (and again if its SVID lapsed).
#[derive(Clone)]
pub enum Attestation {
    /// A join token (single use: a restart needs a new one).
    JoinToken(Arc<Zeroizing<String>>),
    /// A platform token re-read from a file at each attestation (e.g. a projected Kubernetes
    /// service-account token), checked by the server's `[[issuers]]` entry `issuer`, which
    /// must be listed under `[[node_attestation]]`. Each token attests once (its `jti`).
    Platform {
        /// The `[[issuers]]` name.
        issuer: String,
        /// The token file.
        token_file: std::path::PathBuf,
    },
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attestation::JoinToken(_) => f.write_str("JoinToken(..)"),
            Attestation::Platform { issuer, token_file } => f
                .debug_struct("Platform")
                .field("issuer", issuer)
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// The agent's authenticated connection to the server.
pub struct HttpUpstream {
    base: String,
    issuer: String,
    trust_domain: String,
    authorities: Authorities,
    resolver: Arc<SvidCertResolver>,
    verifier: Arc<SpiffeServerVerifier>,
    /// Replaced after each renewal: pooled connections keep the identity of their handshake,
    /// and the server refuses a superseded SVID.
    mtls: std::sync::RwLock<reqwest::Client>,
    plain: reqwest::Client,
    spiffe_id: String,
    renew_at: AtomicI64,
    expires_at: AtomicI64,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("base", &self.base)
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

fn b64d(s: &str) -> Result<Vec<u8>, HttpUpstreamError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| HttpUpstreamError::Protocol("a certificate is not base64".into()))
}

fn b64e(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn local(e: impl std::fmt::Display) -> HttpUpstreamError {
    HttpUpstreamError::Local(e.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn client(config: rustls::ClientConfig) -> Result<reqwest::Client, HttpUpstreamError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(local)
}

async fn call<Req: Serialize, Resp: DeserializeOwned>(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Req>,
) -> Result<Resp, HttpUpstreamError> {
    let mut rb = http.request(method, url);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| HttpUpstreamError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| HttpUpstreamError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
    if bytes.len() > MAX_RESPONSE {
        return Err(HttpUpstreamError::Protocol("response too large".into()));
    }
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        return Err(HttpUpstreamError::Refused {
            status: status.as_u16(),
            error: s("error"),
            description: s("error_description"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| HttpUpstreamError::Protocol(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl HttpUpstream {
    /// Attest to the server at `base` (`https://host:port` of its agent API), trusting the
    /// server only if it presents `spiffe://<trust_domain>/mayfly/server` under one of
    /// `trust_bundle` (DER certificates, from the operator). `issuer` is the server's issuer URL
    /// (token endpoint for the token-exchange convenience).
    pub async fn attest(
        base: &str,
        issuer: &str,
        trust_domain: &str,
        trust_bundle: Vec<Vec<u8>>,
        how: &Attestation,
    ) -> Result<Self, HttpUpstreamError> {
        let base = base.trim_end_matches('/').to_string();
        let authorities = Authorities::new(trust_domain, trust_bundle).map_err(local)?;
        let server_id = format!("spiffe://{trust_domain}/mayfly/server");
        let verifier = Arc::new(SpiffeServerVerifier::new(
            authorities.clone(),
            SpiffeIdAuthorizer::exact(&server_id).map_err(local)?,
        ));
        // Attestation comes before the agent has an SVID: server authentication only.
        let anon = client(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(local)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth(),
        )?;
        let resp = attest_once(&anon, &base, how).await?;
        let (chain, key) = resp_material(&resp)?;
        let resolver = Arc::new(SvidCertResolver::new(&chain, &key.1).map_err(local)?);
        let mtls = client(
            mayfly_spiffe::tls::client_config(resolver.clone(), verifier.clone()).map_err(local)?,
        )?;
        let plain = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(local)?;
        let me = HttpUpstream {
            base,
            issuer: issuer.trim_end_matches('/').to_string(),
            trust_domain: trust_domain.to_string(),
            authorities,
            resolver,
            verifier,
            mtls: std::sync::RwLock::new(mtls),
            plain,
            spiffe_id: resp.0.spiffe_id.clone(),
            renew_at: AtomicI64::new(0),
            expires_at: AtomicI64::new(0),
        };
        me.take(&resp.0, key.0)?;
        Ok(me)
    }

    /// Record a fresh SVID (and bundle) from attest or renew.
    fn take(&self, resp: &AgentSvidResponse, not_before: i64) -> Result<(), HttpUpstreamError> {
        self.authorities
            .replace(decode_authorities(&resp.bundle)?)
            .map_err(local)?;
        self.expires_at.store(resp.expires_at, Ordering::Relaxed);
        self.renew_at.store(
            mayfly_spiffe::rotation::renew_at(not_before, resp.expires_at),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// The mutual-TLS client for the current SVID.
    fn mtls(&self) -> reqwest::Client {
        match self.mtls.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The agent's SPIFFE ID.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The server's issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// When the agent's SVID should be renewed (unix seconds).
    pub fn renew_at(&self) -> i64 {
        self.renew_at.load(Ordering::Relaxed)
    }

    /// Renew the agent's own SVID with a fresh key (mutual TLS with the current one).
    pub async fn renew(&self) -> Result<(), HttpUpstreamError> {
        let (key, csr) = mayfly_crypto::x509::new_svid_key_and_csr().map_err(local)?;
        let resp: AgentSvidResponse = call(
            &self.mtls(),
            reqwest::Method::POST,
            &format!("{}/agent/v1/renew", self.base),
            Some(&RenewRequest { csr: b64e(&csr) }),
        )
        .await?;
        let chain = resp
            .chain
            .iter()
            .map(|c| b64d(c))
            .collect::<Result<Vec<_>, _>>()?;
        self.resolver.rotate(&chain, &key).map_err(local)?;
        // New connections from now on: the old ones authenticated with the superseded SVID.
        let fresh = client(
            mayfly_spiffe::tls::client_config(self.resolver.clone(), self.verifier.clone())
                .map_err(local)?,
        )?;
        if let Ok(mut c) = self.mtls.write() {
            *c = fresh;
        }
        self.take(&resp, now())?;
        tracing::info!(agent = %self.spiffe_id, expires_at = resp.expires_at, "agent SVID renewed");
        Ok(())
    }

    /// Keep the agent's SVID fresh until the process ends: renew at half life, retry every few
    /// seconds on failure. Returns (an error) only when the SVID has expired unrenewed.
    pub async fn renew_forever(self: Arc<Self>) -> HttpUpstreamError {
        loop {
            let wait = (self.renew_at() - now()).max(0) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match self.renew().await {
                Ok(()) => {}
                Err(e) => {
                    if now() >= self.expires_at.load(Ordering::Relaxed) {
                        return e;
                    }
                    tracing::warn!(error = %e, "agent SVID renewal failed; retrying");
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        }
    }

    /// Entries for this agent and the bundle.
    pub async fn sync(&self) -> Result<SyncResponse, HttpUpstreamError> {
        let r: SyncResponse = call::<(), _>(
            &self.mtls(),
            reqwest::Method::GET,
            &format!("{}/agent/v1/sync", self.base),
            None,
        )
        .await?;
        // New CAs reach the agent's own TLS trust here too.
        self.authorities
            .replace(decode_authorities(&r.bundle)?)
            .map_err(local)?;
        Ok(r)
    }

    /// Have the server sign a workload's CSR for an entry.
    pub async fn sign_x509(
        &self,
        entry_id: &str,
        csr_der: &[u8],
    ) -> Result<SignX509Response, HttpUpstreamError> {
        call(
            &self.mtls(),
            reqwest::Method::POST,
            &format!("{}/agent/v1/svid/x509", self.base),
            Some(&SignX509Request {
                entry_id: entry_id.to_string(),
                csr: b64e(csr_der),
            }),
        )
        .await
    }

    /// A JWT-SVID for an entry.
    pub async fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<MintJwtResponse, HttpUpstreamError> {
        call(
            &self.mtls(),
            reqwest::Method::POST,
            &format!("{}/agent/v1/svid/jwt", self.base),
            Some(&MintJwtRequest {
                entry_id: entry_id.to_string(),
                audience: audience.to_vec(),
            }),
        )
        .await
    }

    /// Report an exited workload.
    pub async fn workload_exited(
        &self,
        req: &WorkloadExitedRequest,
    ) -> Result<WorkloadExitedResponse, HttpUpstreamError> {
        call(
            &self.mtls(),
            reqwest::Method::POST,
            &format!("{}/agent/v1/workload-exited", self.base),
            Some(req),
        )
        .await
    }

    /// Exchange a JWT-SVID for an access token at the issuer's token endpoint (RFC 8693),
    /// under `lease` (`new` or a lease id) when given.
    pub async fn exchange(
        &self,
        jwt_svid: &str,
        audience: Option<&str>,
        scope: Option<&str>,
        lease: Option<&str>,
    ) -> Result<mayfly_proto::TokenResponse, HttpUpstreamError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", mayfly_proto::GRANT_TOKEN_EXCHANGE),
            ("subject_token", jwt_svid),
            ("subject_token_type", mayfly_proto::TOKEN_TYPE_JWT),
        ];
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(l) = lease {
            form.push(("lease", l));
        }
        let url = format!("{}/oauth2/token", self.issuer);
        let resp = self
            .plain
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| HttpUpstreamError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e),
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HttpUpstreamError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e),
            })?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            return Err(HttpUpstreamError::Refused {
                status: status.as_u16(),
                error: s("error"),
                description: s("error_description"),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| HttpUpstreamError::Protocol(e.to_string()))
    }
}

/// The DER X.509 authorities of a bundle.
pub fn decode_authorities(b: &BundleWire) -> Result<Vec<Vec<u8>>, HttpUpstreamError> {
    b.x509_authorities.iter().map(|c| b64d(c)).collect()
}

/// (chain, (not_before, key)) of a fresh attestation.
#[allow(clippy::type_complexity)]
fn resp_material(
    resp: &(AgentSvidResponse, Zeroizing<Vec<u8>>),
) -> Result<(Vec<Vec<u8>>, (i64, Zeroizing<Vec<u8>>)), HttpUpstreamError> {
    let chain = resp
        .0
        .chain
        .iter()
        .map(|c| b64d(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((chain, (now(), resp.1.clone())))
}

async fn attest_once(
    anon: &reqwest::Client,
    base: &str,
    how: &Attestation,
) -> Result<(AgentSvidResponse, Zeroizing<Vec<u8>>), HttpUpstreamError> {
    let (key, csr) = mayfly_crypto::x509::new_svid_key_and_csr().map_err(local)?;
    let attestation = match how {
        Attestation::JoinToken(t) => AgentAttestation::JoinToken {
            token: t.as_str().to_string(),
        },
        Attestation::Platform { issuer, token_file } => {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                HttpUpstreamError::Local(format!(
                    "cannot read the platform token {}: {e}",
                    token_file.display()
                ))
            })?;
            AgentAttestation::Platform {
                issuer: issuer.clone(),
                token: token.trim().to_string(),
            }
        }
    };
    let resp: AgentSvidResponse = call(
        anon,
        reqwest::Method::POST,
        &format!("{base}/agent/v1/attest"),
        Some(&AttestRequest {
            attestation,
            csr: b64e(&csr),
        }),
    )
    .await?;
    Ok((resp, key))
}

impl From<HttpUpstreamError> for crate::UpstreamError {
    fn from(e: HttpUpstreamError) -> Self {
        match e {
            HttpUpstreamError::Refused {
                status,
                error,
                description,
            } => crate::UpstreamError::Refused {
                status,
                error,
                description: Some(description),
            },
            HttpUpstreamError::Protocol(p) => crate::UpstreamError::BadResponse(p),
            other => crate::UpstreamError::Transport(other.to_string()),
        }
    }
}

impl crate::Upstream for HttpUpstream {
    async fn sync(&self) -> Result<SyncResponse, crate::UpstreamError> {
        Ok(HttpUpstream::sync(self).await?)
    }

    async fn sign_x509(
        &self,
        entry_id: &str,
        csr_der: &[u8],
    ) -> Result<SignX509Response, crate::UpstreamError> {
        Ok(HttpUpstream::sign_x509(self, entry_id, csr_der).await?)
    }

    async fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<MintJwtResponse, crate::UpstreamError> {
        Ok(HttpUpstream::mint_jwt(self, entry_id, audience).await?)
    }

    async fn workload_exited(
        &self,
        request: WorkloadExitedRequest,
    ) -> Result<WorkloadExitedResponse, crate::UpstreamError> {
        Ok(HttpUpstream::workload_exited(self, &request).await?)
    }

    async fn exchange(
        &self,
        jwt_svid: &str,
        audience: &str,
        scope: Option<&str>,
        lease: Option<&str>,
    ) -> Result<mayfly_proto::TokenResponse, crate::UpstreamError> {
        Ok(HttpUpstream::exchange(self, jwt_svid, Some(audience), scope, lease).await?)
    }
}
