//! A test server side for the agent: an rcgen CA that signs the agent's CSRs and an ES256 key
//! that mints JWT-SVIDs, all real crypto, plus a recorder for exits and exchanges.

#![allow(dead_code, reason = "each test uses a different part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use mayfly_agent::{Agent, AgentConfig, Upstream, UpstreamError};
use mayfly_crypto::SigningKey;
use mayfly_proto::TokenResponse;
use mayfly_proto::spiffe::{
    BundleWire, EntryWire, MintJwtResponse, SignX509Response, SyncResponse, WorkloadExitedRequest,
    WorkloadExitedResponse,
};
use serde_json::json;
use tokio::sync::mpsc;

pub const TD: &str = "example.org";
pub const ISSUER: &str = "https://mayfly.test";

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// Seconds since the Unix epoch.
pub use mayfly_testkit::now as unix_now;

pub fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

pub fn entry(id: &str, path: &str, selectors: &[String]) -> EntryWire {
    EntryWire {
        id: id.into(),
        spiffe_id: format!("spiffe://{TD}/{path}"),
        selectors: selectors.to_vec(),
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: vec![],
    }
}

struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    der: Vec<u8>,
}

fn new_ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { params, key, der }
}

/// (JWT-SVID audience, exchange audience, scope) of an exchange.
pub type Exchange = (Vec<String>, String, Option<String>);

/// What the test server recorded.
pub struct Server {
    ca: Ca,
    /// A second CA added to the bundle by [`Server::add_authority`].
    extra_ca: Mutex<Option<Vec<u8>>>,
    jwt_key: SigningKey,
    pub entries: Mutex<Vec<EntryWire>>,
    sequence: AtomicU64,
    pub signings: AtomicU64,
    exited_tx: mpsc::UnboundedSender<WorkloadExitedRequest>,
    pub exited_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkloadExitedRequest>>,
    pub exchanges: Mutex<Vec<Exchange>>,
    /// The `lease` parameter of each exchange, in order.
    pub leases: Mutex<Vec<Option<String>>>,
    /// The `jti` of the JWT-SVID presented in each exchange, in order.
    pub exchanged_jtis: Mutex<Vec<String>>,
    pub down: AtomicBool,
}

impl Server {
    pub fn new(entries: Vec<EntryWire>) -> Arc<Self> {
        let (exited_tx, exited_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            ca: new_ca("test CA"),
            extra_ca: Mutex::new(None),
            jwt_key: mayfly_testkit::keys::es256("jwt-1"),
            entries: Mutex::new(entries),
            sequence: AtomicU64::new(1),
            signings: AtomicU64::new(0),
            exited_tx,
            exited_rx: tokio::sync::Mutex::new(exited_rx),
            exchanges: Mutex::new(Vec::new()),
            leases: Mutex::new(Vec::new()),
            exchanged_jtis: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
        })
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca.der
    }

    /// Add a second CA to the bundle (a CA rotation's overlap).
    pub fn add_authority(&self) -> Vec<u8> {
        let der = new_ca("next CA").der;
        *self.extra_ca.lock().unwrap() = Some(der.clone());
        self.sequence.fetch_add(1, Ordering::SeqCst);
        der
    }

    fn bundle(&self) -> BundleWire {
        let mut x509 = vec![b64(&self.ca.der)];
        if let Some(extra) = &*self.extra_ca.lock().unwrap() {
            x509.push(b64(extra));
        }
        BundleWire {
            trust_domain: TD.into(),
            sequence: self.sequence.load(Ordering::SeqCst),
            x509_authorities: x509,
            jwt_authorities: json!({"keys": [self.jwt_key.public_jwk()]}),
            refresh_hint: 60,
        }
    }

    fn entry(&self, id: &str) -> Result<EntryWire, UpstreamError> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or(UpstreamError::Refused {
                status: 404,
                error: "not_found".into(),
                description: None,
            })
    }

    fn check_up(&self) -> Result<(), UpstreamError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(UpstreamError::Transport("server is down (test)".into()));
        }
        Ok(())
    }
}

/// The agent gets an `Arc<Server>` (through the crate's `Upstream for Arc<U>`).
impl Upstream for Server {
    async fn sync(&self) -> Result<SyncResponse, UpstreamError> {
        self.check_up()?;
        Ok(SyncResponse {
            entries: self.entries.lock().unwrap().clone(),
            bundle: self.bundle(),
        })
    }

    async fn sign_x509(
        &self,
        entry_id: &str,
        csr_der: &[u8],
    ) -> Result<SignX509Response, UpstreamError> {
        self.check_up()?;
        let entry = self.entry(entry_id)?;
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| UpstreamError::BadResponse(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(entry.dns_names.clone()).unwrap();
        params.subject_alt_names.insert(
            0,
            rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(entry.spiffe_id.as_str()).unwrap(),
            ),
        );
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut serial = mayfly_crypto::random_bytes(16).unwrap();
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.into());
        let now = unix_now();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(u64::try_from(now - 30).unwrap());
        let expires_at = now + i64::try_from(entry.x509_ttl).unwrap();
        params.not_after = epoch + Duration::from_secs(u64::try_from(expires_at).unwrap());
        let issuer = rcgen::Issuer::from_params(&self.ca.params, &self.ca.key);
        let cert = params.signed_by(&csr.public_key, &issuer).unwrap();
        self.signings.fetch_add(1, Ordering::SeqCst);
        Ok(SignX509Response {
            chain: vec![b64(cert.der())],
            expires_at,
        })
    }

    async fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<MintJwtResponse, UpstreamError> {
        self.check_up()?;
        let entry = self.entry(entry_id)?;
        let now = unix_now();
        let exp = now + i64::try_from(entry.jwt_ttl).unwrap();
        let jti = mayfly_crypto::random_id().unwrap();
        let claims = json!({
            "sub": entry.spiffe_id, "aud": audience, "exp": exp, "iat": now, "jti": jti,
        });
        let token = self.jwt_key.sign_jwt(Some("JWT"), &claims).unwrap();
        Ok(MintJwtResponse {
            token,
            jti,
            expires_at: exp,
        })
    }

    async fn workload_exited(
        &self,
        request: WorkloadExitedRequest,
    ) -> Result<WorkloadExitedResponse, UpstreamError> {
        self.check_up()?;
        let revoked = request.jwt_svid_jtis.len() as u64;
        self.exited_tx.send(request).unwrap();
        Ok(WorkloadExitedResponse {
            revoked_tokens: revoked,
        })
    }

    async fn exchange(
        &self,
        jwt_svid: &str,
        audience: &str,
        scope: Option<&str>,
        lease: Option<&str>,
    ) -> Result<TokenResponse, UpstreamError> {
        if audience == "unreachable" {
            return Err(UpstreamError::Transport("connection refused (test)".into()));
        }
        if audience == "forbidden" {
            return Err(UpstreamError::Refused {
                status: 400,
                error: "invalid_target".into(),
                description: Some("no such audience".into()),
            });
        }
        let claims = jwt_claims(jwt_svid);
        let aud: Vec<String> = serde_json::from_value(claims["aud"].clone()).unwrap();
        self.exchanges
            .lock()
            .unwrap()
            .push((aud, audience.into(), scope.map(str::to_string)));
        self.leases.lock().unwrap().push(lease.map(str::to_string));
        self.exchanged_jtis
            .lock()
            .unwrap()
            .push(claims["jti"].as_str().unwrap().to_string());
        Ok(TokenResponse {
            access_token: format!("at-for-{}", claims["sub"].as_str().unwrap()),
            token_type: "Bearer".into(),
            expires_in: 300,
            scope: scope.map(str::to_string),
            issued_token_type: Some("urn:ietf:params:oauth:token-type:access_token".into()),
            lease_id: None,
        })
    }
}

/// The payload of a JWT, unverified (tests only).
pub use mayfly_testkit::peek as jwt_claims;

/// An agent with its Workload API and HTTP sockets in a temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub server: Arc<Server>,
    pub agent: Agent,
    pub socket: PathBuf,
    pub http_socket: PathBuf,
}

impl Fixture {
    pub async fn start(entries: Vec<EntryWire>, tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        let server = Server::new(entries);
        let mut config = AgentConfig::new(ISSUER);
        tweak(&mut config);
        let agent = Agent::new(config, server.clone());
        agent.sync_now().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let http_socket = dir.path().join("agent-http.sock");
        let never = std::future::pending::<()>;
        tokio::spawn({
            let agent = agent.clone();
            async move { agent.run(never()).await }
        });
        tokio::spawn({
            let (agent, socket) = (agent.clone(), socket.clone());
            async move { agent.serve(&socket, never()).await.unwrap() }
        });
        tokio::spawn({
            let (agent, socket) = (agent.clone(), http_socket.clone());
            async move { agent.serve_http(&socket, never()).await.unwrap() }
        });
        wait_for_socket(&socket).await;
        wait_for_socket(&http_socket).await;
        Self {
            dir,
            server,
            agent,
            socket,
            http_socket,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub async fn client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.endpoint())
            .await
            .unwrap()
    }
}

async fn wait_for_socket(path: &Path) {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never came up", path.display());
}

/// Await `fut`, failing the test after a generous bound (never a timing assertion).
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The agent's log in this test process (every test's agent), to find refusal reasons in;
/// [`capture_log`] starts it.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_log() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

pub fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

pub fn assert_logged(reason: &str) {
    let log = logged();
    assert!(log.contains(reason), "{reason:?} not in the log:\n{log}");
}
