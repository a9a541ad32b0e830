//! SPIFFE end to end: the real `mayfly server` with its agent API, the real `mayfly agent`, and
//! Workload API clients nobody here wrote (the `spiffe` crate, PyPI `spiffe`).
//!
//! Workloads are told apart the way the agent sees them: by executable (this test binary,
//! Python, copies of Python), by content hash, and by the gid the test starts them with.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_crypto::{KeyAlg, SigningKey};
use mayfly_testkit::free_port;
use serde_json::{Value, json};
use spiffe::{JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};

use crate::fixture::AUD;
use crate::support::{ServerProcess, drain, mayfly_bin, run_cli};

const TD: &str = "example.org";
const POLICIES: &str = r#"
@id("curl-may-read")
permit (
  principal == Workload::"spiffe://example.org/curl",
  action in [Action::"token", Action::"read"],
  resource == Audience::"https://api.example.test"
);
@id("python-may-read")
permit (
  principal == Workload::"spiffe://example.org/python",
  action in [Action::"token", Action::"read"],
  resource == Audience::"https://api.example.test"
);
"#;

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn python() -> PathBuf {
    std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/python/.venv/bin/python"),
    )
    .expect("interop/python/.venv (scripts/test creates it)")
}

fn site_packages() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../interop/python/.venv/lib/python3.11/site-packages")
}

fn py_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/python/spiffe_client.py")
}

fn me() -> PathBuf {
    std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    mayfly_crypto::hex(&mayfly_crypto::sha256(&std::fs::read(path).unwrap()))
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A trust domain: the server (agent API on a fixed port so a restart keeps the address).
pub(crate) struct Domain {
    pub(crate) dir: tempfile::TempDir,
    config: PathBuf,
    pub(crate) server: ServerProcess,
    agent_api: String,
    bundle: PathBuf,
    pub(crate) svc: SigningKey,
}

impl Domain {
    fn start(x509_ttl: &str) -> Domain {
        Self::start_with(x509_ttl, "", |_| {})
    }

    /// With `extra` appended to the config, after `prepare(dir)` wrote the files it names.
    pub(crate) fn start_with(x509_ttl: &str, extra: &str, prepare: impl FnOnce(&Path)) -> Domain {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let svc = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
        std::fs::write(
            dir.path().join("svc.jwks.json"),
            json!({"keys": [svc.public_jwk()]}).to_string(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/policies/schema.cedarschema"),
            dir.path().join("policies/schema.cedarschema"),
        )
        .unwrap();
        std::fs::write(dir.path().join("policies/spiffe.cedar"), POLICIES).unwrap();
        let port = free_port();
        let config = dir.path().join("mayfly.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = "{data}"
trust_domain = "{TD}"
[policy]
dir = "policies"
[spiffe]
agent_listen = "127.0.0.1:{port}"
x509_svid_ttl = "{x509_ttl}"
[[clients]]
id = "svc"
jwks_file = "svc.jwks.json"
audiences = ["{AUD}"]
scopes = ["read"]
introspect = ["{AUD}"]
{extra}
"#,
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        let server = ServerProcess::start(dir.path(), &config, &[]);
        let bundle = dir.path().join("bundle.pem");
        let mut d = Domain {
            dir,
            config,
            server,
            agent_api: format!("https://127.0.0.1:{port}"),
            bundle,
            svc,
        };
        let pem = d.cli_ok(&["bundle", "show"]);
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        std::fs::write(&d.bundle, pem).unwrap();
        d.wait_agent_api();
        d
    }

    fn wait_agent_api(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .server
            .stderr
            .lock()
            .unwrap()
            .contains("agent API on https://")
        {
            assert!(Instant::now() < deadline, "the agent API did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart_server(&mut self) {
        self.server.kill9();
        self.server = ServerProcess::start(self.dir.path(), &self.config, &[]);
        self.wait_agent_api();
    }

    /// `mayfly ARGS -c CONFIG`, which must succeed; returns stdout.
    pub(crate) fn cli_ok(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-c", self.config.to_str().unwrap()]);
        let (code, out, err) = run_cli(self.dir.path(), &all);
        assert_eq!(code, 0, "mayfly {args:?} failed: {err}");
        out
    }

    /// A join token for the agent `name`, in a 0600 file.
    pub(crate) fn join_token(&self, name: &str) -> PathBuf {
        let token = self.cli_ok(&["agent", "token", "create", "--agent-name", name]);
        let path = self.dir.path().join(format!(
            "{name}-{}.token",
            mayfly_crypto::random_id().unwrap()
        ));
        std::fs::write(&path, token.trim()).unwrap();
        path
    }

    pub(crate) fn entry(&self, spiffe_id: &str, agent: &str, selectors: &[String]) -> String {
        let parent = format!("spiffe://{TD}/mayfly/agent/{agent}");
        let mut args = vec![
            "entry",
            "add",
            "--spiffe-id",
            spiffe_id,
            "--parent",
            &parent,
        ];
        for s in selectors {
            args.extend(["--selector", s.as_str()]);
        }
        self.cli_ok(&args).trim().to_string()
    }

    /// Start `mayfly agent` with this join token; `Err(stderr)` if it exits before serving.
    pub(crate) fn agent(&self, token: &Path) -> Result<AgentProcess, String> {
        self.agent_attesting(&["--join-token-file", token.to_str().unwrap()])
    }

    /// Start `mayfly agent` attesting with `how` (join token or platform token arguments).
    fn agent_attesting(&self, how: &[&str]) -> Result<AgentProcess, String> {
        let id = mayfly_crypto::random_id().unwrap();
        let socket = self.dir.path().join(format!("agent-{id}.sock"));
        let http = self.dir.path().join(format!("agent-{id}-http.sock"));
        let mut child = Command::new(mayfly_bin())
            .args([
                "agent",
                "--server",
                &self.agent_api,
                "--issuer",
                &self.server.issuer,
                "--trust-domain",
                TD,
                "--trust-bundle",
                self.bundle.to_str().unwrap(),
            ])
            .args(how)
            .args([
                "--socket",
                socket.to_str().unwrap(),
                "--http-socket",
                http.to_str().unwrap(),
                "--sync-interval",
                "1s",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        drain(child.stderr.take().unwrap(), stderr.clone(), Some(tx));
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut api, mut http_up) = (false, false);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    api |= line.contains("SPIFFE Workload API listening");
                    http_up |= line.contains("agent token endpoint listening");
                    if api && http_up {
                        return Ok(AgentProcess {
                            child,
                            socket,
                            http,
                            stderr,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(stderr.lock().unwrap().clone());
                }
            }
        }
    }

    fn assertion(&self) -> String {
        let n = crate::fixture::now();
        self.svc
            .sign_jwt(
                None,
                &json!({"iss": "svc", "sub": "svc", "aud": self.server.issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}),
            )
            .unwrap()
    }

    /// RFC 7662 introspection by the client `svc`.
    pub(crate) async fn introspect(&self, token: &str) -> Value {
        let form = [
            ("token", token.to_string()),
            (
                "client_assertion_type",
                crate::fixture::ASSERTION_TYPE.to_string(),
            ),
            ("client_assertion", self.assertion()),
        ];
        reqwest::Client::new()
            .post(format!("{}/oauth2/introspect", self.server.issuer))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub(crate) struct AgentProcess {
    child: Child,
    socket: PathBuf,
    pub(crate) http: PathBuf,
    pub(crate) stderr: Arc<Mutex<String>>,
}

impl AgentProcess {
    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Retry `f` until it succeeds (the agent syncs entries every second), for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, WorkloadApiError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// Run the py-spiffe client as `exe` (Python or a copy of it), optionally with another gid.
fn run_python(exe: &Path, socket: &Path, gid: Option<u32>) -> Value {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.arg(py_client())
        .arg(socket)
        .arg(AUD)
        .env("PYTHONPATH", site_packages());
    if let Some(g) = gid {
        cmd.gid(g);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "python printed no JSON: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Run py-spiffe until it gets an identity (entries reach the agent within a sync).
fn python_identity(exe: &Path, socket: &Path, gid: Option<u32>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = run_python(exe, socket, gid);
        if v.get("error").is_none() || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_clients_fetch_svids_and_validate_through_the_agent() {
    let d = Domain::start("1h");
    d.entry(
        "spiffe://example.org/rust-test",
        "node-1",
        &[format!("unix:path:{}", me().display())],
    );
    d.entry(
        "spiffe://example.org/python",
        "node-1",
        &[format!("unix:path:{}", python().display())],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();

    // The Rust `spiffe` crate.
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let svid = eventually("X.509-SVID", || client.fetch_x509_svid()).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/rust-test"
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let bundle = bundles.get(&td()).expect("a bundle for example.org");
    // The leaf chains to an authority of the bundle (and of `mayfly bundle show`).
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
    let signer = bundle
        .authorities()
        .iter()
        .find(|a| {
            let (_, ca) = x509_parser::parse_x509_certificate(a.as_bytes()).unwrap();
            leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
        .expect("the SVID is signed by a bundle authority");
    let shown =
        mayfly_crypto::x509::certs_from_pem(&std::fs::read_to_string(&d.bundle).unwrap()).unwrap();
    assert!(shown.iter().any(|c| c == signer.as_bytes()));

    let jwt = client.fetch_jwt_svid([AUD], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://example.org/rust-test"
    );
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &[AUD]).unwrap();
    assert_eq!(local.spiffe_id(), jwt.spiffe_id());
    let validated = client.validate_jwt_token(AUD, jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
    // Validation through the agent checks the audience.
    assert!(
        client
            .validate_jwt_token("https://elsewhere.test", jwt.token())
            .await
            .is_err()
    );

    // PyPI `spiffe` (grpcio), as another executable: another identity.
    let py = python_identity(&python(), &agent.socket, None);
    assert_eq!(py["x509_spiffe_id"], "spiffe://example.org/python", "{py}");
    assert_eq!(py["jwt_spiffe_id"], "spiffe://example.org/python");
    assert_eq!(py["validated_spiffe_id"], "spiffe://example.org/python");
    assert_eq!(py["jwt_audience"], json!([AUD]));
    assert!(py["x509_authorities"].as_u64().unwrap() >= 1);
    assert!(py["jwt_authorities"].as_u64().unwrap() >= 1);

    // The bundle endpoint serves the same X.509 authorities in the SPIFFE bundle format.
    let doc: Value = reqwest::get(format!("{}/spiffe/bundle", d.server.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["use"] == "x509-svid"));
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    assert!(doc["spiffe_sequence"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_tell_workloads_apart_and_a_changed_binary_is_refused() {
    let d = Domain::start("1h");
    let py = python().display().to_string();
    let copy = d.dir.path().join("py-copy");
    let stranger = d.dir.path().join("py-stranger");
    // Three different binaries (a trailing byte keeps an ELF file runnable): same bytes
    // would have the same hash.
    std::fs::copy(python(), &copy).unwrap();
    std::fs::copy(python(), &stranger).unwrap();
    append(&copy, b"\0");
    append(&stranger, b"\0\0");
    d.entry(
        "spiffe://example.org/python",
        "node-1",
        &[format!("unix:path:{py}"), "unix:gid:0".into()],
    );
    d.entry(
        "spiffe://example.org/python-4242",
        "node-1",
        &[format!("unix:path:{py}"), "unix:gid:4242".into()],
    );
    d.entry(
        "spiffe://example.org/hashed",
        "node-1",
        &[format!("unix:sha256:{}", sha256_hex(&copy))],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();

    let a = python_identity(&python(), &agent.socket, None);
    assert_eq!(a["x509_spiffe_id"], "spiffe://example.org/python", "{a}");
    let b = python_identity(&python(), &agent.socket, Some(4242));
    assert_eq!(
        b["x509_spiffe_id"], "spiffe://example.org/python-4242",
        "{b}"
    );
    let c = python_identity(&copy, &agent.socket, None);
    assert_eq!(c["x509_spiffe_id"], "spiffe://example.org/hashed", "{c}");

    // No entry: denied, and nothing else.
    let e = run_python(&stranger, &agent.socket, None);
    assert!(
        e["detail"].as_str().unwrap().contains("PERMISSION_DENIED"),
        "{e}"
    );
    let e = run_python(&python(), &agent.socket, Some(4343));
    assert!(
        e["detail"].as_str().unwrap().contains("PERMISSION_DENIED"),
        "{e}"
    );

    // The hashed binary changes on disk: its sha256 selector no longer matches.
    append(&copy, b"\x01");
    let e = run_python(&copy, &agent.socket, None);
    assert!(
        e["detail"].as_str().unwrap().contains("PERMISSION_DENIED"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_restarts_keep_identities() {
    let mut d = Domain::start("1h");
    d.entry(
        "spiffe://example.org/rust-test",
        "node-1",
        &[format!("unix:path:{}", me().display())],
    );
    let token = d.join_token("node-1");
    let mut first = d.agent(&token).unwrap();

    // The same token again: refused, with the reason.
    let err = d.agent(&token).err().expect("a used join token is refused");
    assert!(err.contains("attestation_failed"), "{err}");
    assert!(err.contains("join token has already been used"), "{err}");
    // A made-up token: refused too.
    let bogus = d.dir.path().join("bogus.token");
    std::fs::write(&bogus, "0123456789abcdef.not-a-real-secret").unwrap();
    let err = d
        .agent(&bogus)
        .err()
        .expect("an unknown join token is refused");
    assert!(err.contains("join token is unknown"), "{err}");

    let client = WorkloadApiClient::connect_to(first.endpoint())
        .await
        .unwrap();
    let before = eventually("X.509-SVID", || client.fetch_x509_svid()).await;

    // Agent restart: nothing was kept on disk, so it attests again (a new token, same name),
    // and the entries under its name apply again.
    first.kill9();
    let second = d.agent(&d.join_token("node-1")).unwrap();
    let client = WorkloadApiClient::connect_to(second.endpoint())
        .await
        .unwrap();
    let again = eventually("X.509-SVID after agent restart", || {
        client.fetch_x509_svid()
    })
    .await;
    assert_eq!(again.spiffe_id(), before.spiffe_id());

    // Server restart: the CA survives (sealed in the store), so SVIDs issued before still
    // chain to the bundle, and the agent's own SVID still authenticates it (a JWT-SVID for a
    // new audience needs a round trip to the server).
    let held = client.fetch_x509_svid().await.unwrap();
    d.restart_server();
    let pem_after = d.cli_ok(&["bundle", "show"]);
    let roots = mayfly_crypto::x509::certs_from_pem(&pem_after).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(held.leaf().as_bytes()).unwrap();
    assert!(roots.iter().any(|r| {
        let (_, ca) = x509_parser::parse_x509_certificate(r).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    }));
    let jwt = eventually("JWT-SVID after server restart", || {
        client.fetch_jwt_svid(["https://after-restart.test"], None)
    })
    .await;
    assert_eq!(jwt.spiffe_id(), before.spiffe_id());
    assert!(
        second.stderr.lock().unwrap().contains("X.509-SVID issued"),
        "the agent logs its issuance"
    );
}

/// Python workload for the exit test: get a token from the agent's HTTP socket and a JWT-SVID
/// for the issuer from the Workload API (py-spiffe), print both, wait for stdin to close, exit.
const TOKEN_THEN_WAIT: &str = r#"
import http.client, json, socket, sys
from spiffe import WorkloadApiClient
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = C("agent")
c.request("GET", "/v1/token?audience=https%3A%2F%2Fapi.example.test&scope=read&bind=self",
          headers={"workload.spiffe.io": "true"})
r = c.getresponse()
out = {"status": r.status, "body": json.loads(r.read())}
if r.status == 200:
    w = WorkloadApiClient(socket_path="unix://" + sys.argv[2], default_timeout=10)
    out["jwt_svid"] = w.fetch_jwt_svid(audience={sys.argv[3]}).token
print(json.dumps(out), flush=True)
sys.stdin.read()
"#;

/// Exchange a JWT-SVID at the token endpoint (RFC 8693), as any SPIFFE workload can.
async fn exchange(d: &Domain, jwt_svid: &str) -> (u16, Value) {
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", jwt_svid),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", AUD),
        ("scope", "read"),
    ];
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/token", d.server.issuer))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_exits_has_its_tokens_revoked() {
    let d = Domain::start("1h");
    d.entry(
        "spiffe://example.org/python",
        "node-1",
        &[format!("unix:path:{}", python().display())],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut child, body) = loop {
        let mut child = Command::new(python())
            .args([
                "-c",
                TOKEN_THEN_WAIT,
                agent.http.to_str().unwrap(),
                agent.socket.to_str().unwrap(),
                &d.server.issuer,
            ])
            .env("PYTHONPATH", site_packages())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["status"] == 200 {
            break (child, v);
        }
        // Not synced yet (502) or no identity yet (403): this process ends, try again.
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(Instant::now() < deadline, "no token from /v1/token: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let token = body["body"]["access_token"].as_str().unwrap().to_string();
    let live = d.introspect(&token).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sub"], "spiffe://example.org/python");
    assert_eq!(live["aud"], AUD);
    // The same workload's JWT-SVID, exchanged directly.
    let jwt_svid = body["jwt_svid"].as_str().unwrap().to_string();
    let (status, direct) = exchange(&d, &jwt_svid).await;
    assert_eq!(status, 200, "{direct}");
    let direct = direct["access_token"].as_str().unwrap().to_string();
    assert_eq!(d.introspect(&direct).await["active"], true);

    // The workload exits: the agent sees it (pidfd) and the server revokes what it held.
    drop(child.stdin.take());
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.introspect(&token).await;
        if v["active"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "token still active after exit: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = d.server.stdout.lock().unwrap().clone();
    let exit = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "workload_exit")
        .expect("a workload_exit audit event");
    assert_eq!(exit["identity"], "spiffe://example.org/python");
    // One JWT-SVID: the agent's per-process cache served the same one for /v1/token and to
    // py-spiffe (same audience). Both tokens minted from it are revoked.
    assert!(
        exit["reason"]
            .as_str()
            .unwrap()
            .ends_with("exited: 1 JWT-SVIDs and 2 tokens revoked"),
        "{exit}"
    );
    assert_eq!(d.introspect(&direct).await["active"], false);
    // The JWT-SVID itself is dead too: exchanging it again is refused.
    let (status, refused) = exchange(&d, &jwt_svid).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_request", "{refused}");
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{refused}"
    );
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .contains("workload exit reported")
    );
}

// --- mutual TLS between two workloads with SVIDs from the agent -------------------------------

/// One side of the mTLS test, in a child process (this test binary run again with
/// `E2E_MTLS_ROLE` set; a no-op otherwise). Keeps its SVID and trust anchors current from the
/// agent's stream and prints `SVID <serial>` on every update.
///  - `server`: listens, prints `LISTEN <port>`, answers each connection with its own serial.
///  - `client`: per stdin line `connect PORT EXPECTED_ID`, opens a new connection and prints
///    `OK <server serial> <own serial>` or `ERR <reason>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_peer_process() {
    let Ok(role) = std::env::var("E2E_MTLS_ROLE") else {
        return;
    };
    let endpoint = std::env::var("E2E_MTLS_ENDPOINT").unwrap();
    let peer_id = std::env::var("E2E_MTLS_PEER").unwrap();
    use futures_util::StreamExt;
    // The agent may not have this entry yet (it syncs every second): retry for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut stream, first) = loop {
        let attempt = async {
            let client = WorkloadApiClient::connect_to(&endpoint).await?;
            let mut stream = client.stream_x509_contexts().await?;
            match stream.next().await {
                Some(Ok(first)) => Ok((stream, first)),
                Some(Err(e)) => Err(e),
                None => Err(WorkloadApiError::EmptyResponse),
            }
        };
        match attempt.await {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "no X.509-SVID: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (chain, key, roots) = material(&first);
    let resolver = Arc::new(mayfly_spiffe::tls::SvidCertResolver::new(&chain, &key).unwrap());
    let authorities = mayfly_spiffe::tls::Authorities::new(TD, roots).unwrap();
    let serial = Arc::new(Mutex::new(serial_of(&chain[0])));
    println!("SVID {}", serial.lock().unwrap());
    {
        let (resolver, authorities, serial) =
            (resolver.clone(), authorities.clone(), serial.clone());
        tokio::spawn(async move {
            while let Some(Ok(ctx)) = stream.next().await {
                let (chain, key, roots) = material(&ctx);
                resolver.rotate(&chain, &key).unwrap();
                authorities.replace(roots).unwrap();
                let s = serial_of(&chain[0]);
                if *serial.lock().unwrap() != s {
                    *serial.lock().unwrap() = s.clone();
                    println!("SVID {s}");
                }
            }
        });
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if role == "server" {
        let verifier = Arc::new(mayfly_spiffe::tls::SpiffeClientVerifier::new(
            authorities.clone(),
            mayfly_spiffe::tls::SpiffeIdAuthorizer::exact(&peer_id).unwrap(),
        ));
        let config = mayfly_spiffe::tls::server_config(resolver.clone(), verifier).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTEN {}", listener.local_addr().unwrap().port());
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let serial = serial.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let line = format!("{}\n", serial.lock().unwrap());
                    let _ = tls.write_all(line.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    } else {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for l in std::io::stdin().lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            let mut parts = line.split_whitespace();
            let (Some("connect"), Some(port), Some(expect)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let verifier = Arc::new(mayfly_spiffe::tls::SpiffeServerVerifier::new(
                authorities.clone(),
                mayfly_spiffe::tls::SpiffeIdAuthorizer::exact(expect).unwrap(),
            ));
            let config = mayfly_spiffe::tls::client_config(resolver.clone(), verifier).unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("workload.invalid").unwrap();
            match connector.connect(name, tcp).await {
                Ok(mut tls) => {
                    let mut got = String::new();
                    match tls.read_to_string(&mut got).await {
                        Ok(_) if !got.trim().is_empty() => {
                            println!("OK {} {}", got.trim(), serial.lock().unwrap())
                        }
                        // The server refused our certificate after the handshake.
                        other => println!("ERR server closed: {other:?}"),
                    }
                }
                Err(e) => println!("ERR {e}"),
            }
        }
    }
}

fn material(ctx: &spiffe::X509Context) -> (Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>) {
    let svid = ctx.default_svid().unwrap();
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let key = svid.private_key().as_bytes().to_vec();
    let roots = ctx
        .bundle_set()
        .get(&td())
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    (chain, key, roots)
}

fn serial_of(der: &[u8]) -> String {
    mayfly_crypto::x509::SvidInfo::parse(der).unwrap().serial
}

/// A child running [`mtls_peer_process`]; its stdout lines arrive on a channel.
struct Peer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Peer {
    fn start(role: &str, gid: u32, agent: &AgentProcess, peer: &str) -> Peer {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(me())
            .args([
                "spiffe::mtls_peer_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("E2E_MTLS_ROLE", role)
            .env("E2E_MTLS_ENDPOINT", agent.endpoint())
            .env("E2E_MTLS_PEER", peer)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Peer { child, lines }
    }

    /// What follows `prefix` on the next line holding it (other lines are skipped), within 60 s.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no `{prefix}` line in time; got {seen:?}"));
            seen.push(line.clone());
            // libtest may print `test NAME ... ` on the same line first.
            if let Some(i) = line.find(prefix) {
                return line[i + prefix.len()..].trim().to_string();
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workloads_use_their_svids_for_mutual_tls_across_a_rotation() {
    // 10 s SVIDs: the agent renews each at half its life and pushes it on the stream.
    let d = Domain::start("10s");
    let exe = format!("unix:path:{}", me().display());
    d.entry(
        "spiffe://example.org/mtls-server",
        "node-1",
        &[exe.clone(), "unix:gid:4242".into()],
    );
    d.entry(
        "spiffe://example.org/mtls-client",
        "node-1",
        &[exe, "unix:gid:4343".into()],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();
    let server = Peer::start("server", 4242, &agent, "spiffe://example.org/mtls-client");
    let server_serial = server.expect("SVID ");
    let port = server.expect("LISTEN ");
    let mut client = Peer::start("client", 4343, &agent, "spiffe://example.org/mtls-server");
    let client_serial = client.expect("SVID ");

    client.send(&format!("connect {port} spiffe://example.org/mtls-server"));
    let ok = client.expect("OK ");
    assert_eq!(ok, format!("{server_serial} {client_serial}"));
    // The client authorises the server's SPIFFE ID: expecting another ID fails.
    client.send(&format!("connect {port} spiffe://example.org/someone-else"));
    let err = client.expect("ERR ");
    assert!(!err.is_empty());

    // Both SVIDs rotate; connections opened afterwards use the new ones and still work.
    let server_new = server.expect("SVID ");
    let client_new = client.expect("SVID ");
    assert_ne!(server_new, server_serial);
    assert_ne!(client_new, client_serial);
    client.send(&format!("connect {port} spiffe://example.org/mtls-server"));
    let ok = client.expect("OK ");
    let (s, c) = ok.split_once(' ').unwrap();
    assert_ne!(s, server_serial, "the server presented its rotated SVID");
    assert_ne!(c, client_serial, "the client presented its rotated SVID");
}

// --- node attestation with a platform token ----------------------------------------------------

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// The `[[issuers]]` entry `k8s` (token exchange audience `mayfly`) and its node attestation
/// (audience `mayfly-node`, node named by the node-name claim, only the agent's service account).
const K8S_NODE_ATTESTATION: &str = r#"[[issuers]]
name = "k8s"
issuer = "https://kubernetes.default.svc.cluster.local"
preset = "kubernetes"
jwks_file = "k8s.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
max_token_age = "1h"

[[node_attestation]]
issuer = "k8s"
audience = "mayfly-node"
node_claims = ["/kubernetes.io/node/name"]
required_claims = { "/kubernetes.io/serviceaccount/name" = "mayfly-agent" }
max_token_lifetime = "10m"
"#;

/// A projected service-account token as the kubelet writes it for the agent's pod on `node`.
fn k8s_token_for(key: &SigningKey, sa: &str, node: &str, aud: Value) -> String {
    let n = crate::fixture::now();
    key.sign_jwt(
        None,
        &json!({
            "aud": aud, "iss": K8S_ISS, "iat": n, "nbf": n, "exp": n + 600,
            "jti": mayfly_crypto::random_id().unwrap(),
            "kubernetes.io": {
                "namespace": "spire-system",
                "node": {"name": node, "uid": "6f2c1c9e-0c2a-4a1e-9f1f-3b4c5d6e7f80"},
                "pod": {"name": "mayfly-agent-x2k4q", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": sa, "uid": "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"}
            },
            "sub": format!("system:serviceaccount:spire-system:{sa}")
        }),
    )
    .unwrap()
}

/// The token the agent's pod on `node-7` gets for the node-attestation audience.
fn k8s_token(key: &SigningKey, sa: &str) -> String {
    k8s_token_for(key, sa, "node-7", json!(["mayfly-node"]))
}

/// A server trusting `k8s` (with node attestation) whose keys are `k8s`, with `extra` config.
fn k8s_domain(k8s: &SigningKey, extra: &str) -> Domain {
    let jwks = json!({"keys": [k8s.public_jwk()]}).to_string();
    Domain::start_with("1h", &format!("{K8S_NODE_ATTESTATION}{extra}"), |dir| {
        std::fs::write(dir.join("k8s.jwks.json"), &jwks).unwrap()
    })
}

impl Domain {
    /// An agent in this process (the agent API client `mayfly agent` uses), attested with `how`.
    async fn upstream(
        &self,
        how: &mayfly_agent::Attestation,
    ) -> Result<mayfly_agent::HttpUpstream, mayfly_agent::HttpUpstreamError> {
        let pem = std::fs::read_to_string(&self.bundle).unwrap();
        let bundle = mayfly_crypto::x509::certs_from_pem(&pem).unwrap();
        mayfly_agent::HttpUpstream::attest(&self.agent_api, &self.server.issuer, TD, bundle, how)
            .await
    }

    /// Platform attestation with `token` (written to a file, as the kubelet does).
    async fn platform_upstream(
        &self,
        issuer: &str,
        token: &str,
    ) -> Result<mayfly_agent::HttpUpstream, mayfly_agent::HttpUpstreamError> {
        let file = self.dir.path().join(format!(
            "platform-{}.token",
            mayfly_crypto::random_id().unwrap()
        ));
        std::fs::write(&file, token).unwrap();
        self.upstream(&mayfly_agent::Attestation::Platform {
            issuer: issuer.into(),
            token_file: file,
        })
        .await
    }

    /// Join-token attestation of the agent `name`.
    async fn join_upstream(&self, name: &str) -> mayfly_agent::HttpUpstream {
        let token = std::fs::read_to_string(self.join_token(name)).unwrap();
        let how = mayfly_agent::Attestation::JoinToken(Arc::new(zeroize::Zeroizing::new(token)));
        self.upstream(&how).await.unwrap()
    }

    /// The audit events (JSON lines on the server's stdout) so far.
    fn audit_events(&self) -> Vec<Value> {
        self.server
            .stdout
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The audit events once `n` of them satisfy `pred` (the JSON lines reach the test through
    /// a pipe, after the response), within 30 s.
    fn audit_wait(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all: Vec<Value> = self.audit_events().into_iter().filter(&pred).collect();
            if all.len() >= n {
                return all;
            }
            assert!(Instant::now() < deadline, "audit events: {all:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The refusal's HTTP status, `error` and `error_description`.
fn refused<T: std::fmt::Debug>(
    r: Result<T, mayfly_agent::HttpUpstreamError>,
) -> (u16, String, String) {
    match r {
        Err(mayfly_agent::HttpUpstreamError::Refused {
            status,
            error,
            description,
        }) => (status, error, description),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An agent attests with its pod's service-account token, checked by the server's trusted
/// issuer `k8s` listed for node attestation (no join token anywhere), gets the agent ID of its
/// node, and serves the entries parented to that ID. A token signed by another key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_attests_with_a_platform_token() {
    let k8s = SigningKey::generate(KeyAlg::ES256, Some("k8s-sa")).unwrap();
    let d = k8s_domain(&k8s, "");
    let agent_id = "spiffe://example.org/mayfly/agent/k8s/node-7";
    d.cli_ok(&[
        "entry",
        "add",
        "--spiffe-id",
        "spiffe://example.org/on-k8s",
        "--parent",
        agent_id,
        "--selector",
        &format!("unix:path:{}", me().display()),
    ]);

    // Another key's token: refused, the agent says why and exits.
    let forged = SigningKey::generate(KeyAlg::ES256, Some("k8s-sa")).unwrap();
    let bad = d.dir.path().join("forged.token");
    std::fs::write(&bad, k8s_token(&forged, "mayfly-agent")).unwrap();
    let err = d
        .agent_attesting(&[
            "--platform-issuer",
            "k8s",
            "--platform-token-file",
            bad.to_str().unwrap(),
        ])
        .err()
        .expect("a forged platform token is refused");
    assert!(err.contains("attestation_failed"), "{err}");

    let good = d.dir.path().join("sa.token");
    std::fs::write(&good, k8s_token(&k8s, "mayfly-agent")).unwrap();
    let agent = d
        .agent_attesting(&[
            "--platform-issuer",
            "k8s",
            "--platform-token-file",
            good.to_str().unwrap(),
        ])
        .unwrap();
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let svid = eventually("X.509-SVID", || client.fetch_x509_svid()).await;
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/on-k8s");

    // Audited as a platform attestation of that agent ID.
    let attest = d.audit_wait(2, |e| e["kind"] == "agent_attest");
    let denied = attest
        .iter()
        .find(|e| e["decision"] == "deny")
        .unwrap_or_else(|| panic!("the forged attempt is audited: {attest:?}"));
    assert_eq!(denied["subject_issuer"], "k8s");
    assert_eq!(
        denied["reason"], "platform_token_refused: invalid_subject_token",
        "{denied}"
    );
    let ok = attest
        .iter()
        .find(|e| e["decision"] == "allow")
        .expect("an allowed attestation");
    assert_eq!(ok["identity"], agent_id);
    assert_eq!(ok["reason"], "platform:k8s");
}

/// Two nodes of one DaemonSet (same namespace and service account) attest with their own
/// tokens and get two agent IDs, each serving only its own entries; neither evicts the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_get_two_agent_ids() {
    let k8s = SigningKey::generate(KeyAlg::ES256, Some("k8s-sa")).unwrap();
    let d = k8s_domain(&k8s, "");
    // The tokens also name the exchange audience, so that the same tokens attested (as one
    // agent ID) before node attestation was gated.
    let aud = json!(["mayfly-node", "mayfly"]);
    let a = d
        .platform_upstream(
            "k8s",
            &k8s_token_for(&k8s, "mayfly-agent", "node-a", aud.clone()),
        )
        .await
        .unwrap();
    let b = d
        .platform_upstream("k8s", &k8s_token_for(&k8s, "mayfly-agent", "node-b", aud))
        .await
        .unwrap();
    assert_eq!(
        a.spiffe_id(),
        "spiffe://example.org/mayfly/agent/k8s/node-a"
    );
    assert_eq!(
        b.spiffe_id(),
        "spiffe://example.org/mayfly/agent/k8s/node-b"
    );
    d.entry(
        "spiffe://example.org/on-a",
        "k8s/node-a",
        &["unix:uid:0".into()],
    );
    d.entry(
        "spiffe://example.org/on-b",
        "k8s/node-b",
        &["unix:uid:0".into()],
    );
    // Both stay authenticated, each with its own entries.
    let ids = |r: mayfly_proto::spiffe::SyncResponse| -> Vec<String> {
        r.entries.into_iter().map(|e| e.spiffe_id).collect()
    };
    assert_eq!(ids(a.sync().await.unwrap()), ["spiffe://example.org/on-a"]);
    assert_eq!(ids(b.sync().await.unwrap()), ["spiffe://example.org/on-b"]);

    // A token for the exchange audience only (what any workload on the cluster can get) does
    // not attest, nor one of another service account.
    let (status, error, _) = refused(
        d.platform_upstream(
            "k8s",
            &k8s_token_for(&k8s, "mayfly-agent", "node-c", json!(["mayfly"])),
        )
        .await,
    );
    assert_eq!((status, error.as_str()), (403, "attestation_failed"));
    let (status, error, _) = refused(
        d.platform_upstream(
            "k8s",
            &k8s_token_for(&k8s, "some-workload", "node-c", json!(["mayfly-node"])),
        )
        .await,
    );
    assert_eq!((status, error.as_str()), (403, "attestation_failed"));
    let reasons: Vec<Value> = d
        .audit_wait(2, |e| {
            e["kind"] == "agent_attest" && e["decision"] == "deny"
        })
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        [
            "platform_token_refused: subject_wrong_audience",
            "platform_token_refused: required_claim_mismatch"
        ]
    );
}

/// An `[[issuers]]` entry that is not listed under `[[node_attestation]]` attests nothing, even
/// with a valid token for its (token-exchange) audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_not_listed_for_node_attestation_is_refused() {
    let k8s = SigningKey::generate(KeyAlg::ES256, Some("k8s-sa")).unwrap();
    let ci = SigningKey::generate(KeyAlg::ES256, Some("ci")).unwrap();
    let ci_jwks = json!({"keys": [ci.public_jwk()]}).to_string();
    let d = {
        let jwks = json!({"keys": [k8s.public_jwk()]}).to_string();
        Domain::start_with(
            "1h",
            &format!(
                r#"{K8S_NODE_ATTESTATION}
[[issuers]]
name = "ci"
issuer = "https://ci.example.test"
identity = "spiffe://{{trust_domain}}/ci/{{/sub}}"
jwks_file = "ci.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
"#
            ),
            |dir| {
                std::fs::write(dir.join("k8s.jwks.json"), &jwks).unwrap();
                std::fs::write(dir.join("ci.jwks.json"), &ci_jwks).unwrap();
            },
        )
    };
    let n = crate::fixture::now();
    let token = ci
        .sign_jwt(
            None,
            &json!({"iss": "https://ci.example.test", "sub": "runner-1", "aud": ["mayfly", "mayfly-node"],
                "iat": n, "exp": n + 300, "jti": mayfly_crypto::random_id().unwrap()}),
        )
        .unwrap();
    let (status, error, description) = refused(d.platform_upstream("ci", &token).await);
    assert_eq!((status, error.as_str()), (403, "attestation_failed"));
    assert!(
        description.contains("not allowed for node attestation"),
        "{description}"
    );
    // An issuer that is not configured at all: the same.
    let (status, error, _) = refused(d.platform_upstream("nope", &token).await);
    assert_eq!((status, error.as_str()), (403, "attestation_failed"));
    let denied = d.audit_wait(2, |e| {
        e["kind"] == "agent_attest" && e["decision"] == "deny"
    });
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0]["reason"], "node_attestation_not_allowed");
    assert_eq!(denied[0]["subject_issuer"], "ci");
    assert_eq!(denied[1]["reason"], "node_attestation_not_allowed");
    assert!(
        d.audit_events()
            .iter()
            .all(|e| !(e["kind"] == "agent_attest" && e["decision"] == "allow")),
        "nothing attested"
    );
}

/// A platform token attests once: presented again (a copy taken from the node, say), it is
/// refused, and the agent that used it first keeps its SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_platform_token_is_refused() {
    let k8s = SigningKey::generate(KeyAlg::ES256, Some("k8s-sa")).unwrap();
    let d = k8s_domain(&k8s, "");
    let token = k8s_token_for(
        &k8s,
        "mayfly-agent",
        "node-a",
        json!(["mayfly-node", "mayfly"]),
    );
    let first = d.platform_upstream("k8s", &token).await.unwrap();
    let (status, error, description) = refused(d.platform_upstream("k8s", &token).await);
    assert_eq!((status, error.as_str()), (403, "attestation_failed"));
    assert!(description.contains("already been used"), "{description}");
    let replay = d.audit_wait(1, |e| e["decision"] == "deny").remove(0);
    assert_eq!(replay["reason"], "subject_replayed", "{replay}");
    assert_eq!(replay["subject_issuer"], "k8s");
    assert_eq!(replay["identity"], first.spiffe_id());
    // The first agent was not replaced by the replay.
    first.sync().await.unwrap();
}

/// Agent A reports agent B's JWT-SVID as its exited workload's: nothing of B's is revoked (the
/// JWT-SVID and the token exchanged from it stay valid) and the report is audited as ignored.
/// B's own report revokes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_revoke_another_agents_jwt_svids() {
    let d = Domain::start("1h");
    let a = d.join_upstream("node-a").await;
    let b = d.join_upstream("node-b").await;
    let entry = d.entry(
        "spiffe://example.org/python",
        "node-b",
        &["unix:uid:0".into()],
    );
    let minted = b
        .mint_jwt(&entry, std::slice::from_ref(&d.server.issuer))
        .await
        .unwrap();
    let (status, exchanged) = exchange(&d, &minted.token).await;
    assert_eq!(status, 200, "{exchanged}");
    let token = exchanged["access_token"].as_str().unwrap().to_string();

    let report = mayfly_proto::spiffe::WorkloadExitedRequest {
        pid: 4242,
        spiffe_ids: vec!["spiffe://example.org/python".into()],
        jwt_svid_jtis: vec![minted.jti.clone()],
    };
    let r = a.workload_exited(&report).await.unwrap();
    assert_eq!(r.revoked_tokens, 0);
    assert_eq!(d.introspect(&token).await["active"], true);
    let (status, again) = exchange(&d, &minted.token).await;
    assert_eq!(status, 200, "B's JWT-SVID still exchanges: {again}");
    let exits = d.audit_wait(1, |e| e["kind"] == "workload_exit");
    assert_eq!(exits[0]["client"], a.spiffe_id());
    assert_eq!(
        exits[0]["reason"],
        "pid 4242 exited: 0 JWT-SVIDs and 0 tokens revoked, 1 ignored (not minted by this agent)"
    );

    // Its own agent's report revokes them.
    let r = b.workload_exited(&report).await.unwrap();
    assert_eq!(r.revoked_tokens, 2);
    assert_eq!(d.introspect(&token).await["active"], false);
    let (status, _) = exchange(&d, &minted.token).await;
    assert_eq!(status, 400);
}

/// `mayfly agent list` shows attested agents; `mayfly agent evict` makes the agent's SVID
/// worthless on every agent API route, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_agent_is_refused_on_every_route() {
    let d = Domain::start("1h");
    let a = d.join_upstream("node-a").await;
    let b = d.join_upstream("node-b").await;
    let entry = d.entry(
        "spiffe://example.org/python",
        "node-a",
        &["unix:uid:0".into()],
    );
    a.sync().await.unwrap();
    let listed: Vec<Value> = d
        .cli_ok(&["agent", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["spiffe_id"], a.spiffe_id());
    assert_eq!(listed[0]["attestation"], "join_token");
    assert!(listed[0]["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(listed[0]["expires_at"].as_i64() > listed[0]["attested_at"].as_i64());
    let table = d.cli_ok(&["agent", "list"]);
    assert!(
        table.contains(a.spiffe_id()) && table.contains("EXPIRES_AT"),
        "{table}"
    );

    let out = d.cli_ok(&["agent", "evict", a.spiffe_id()]);
    assert!(out.contains("evicted"), "{out}");
    let forbidden = (403, "access_denied".to_string());
    let code = |r: (u16, String, String)| (r.0, r.1);
    assert_eq!(code(refused(a.sync().await)), forbidden);
    assert_eq!(code(refused(a.renew().await)), forbidden);
    assert_eq!(
        code(refused(
            a.mint_jwt(&entry, &["https://x.test".into()]).await
        )),
        forbidden
    );
    assert_eq!(code(refused(a.sign_x509(&entry, b"csr").await)), forbidden);
    let report = mayfly_proto::spiffe::WorkloadExitedRequest {
        pid: 1,
        spiffe_ids: vec![],
        jwt_svid_jtis: vec![],
    };
    assert_eq!(code(refused(a.workload_exited(&report).await)), forbidden);
    // The other agent is untouched; evicting an unknown agent fails.
    b.sync().await.unwrap();
    let (code, _, err) = run_cli(
        d.dir.path(),
        &[
            "agent",
            "evict",
            a.spiffe_id(),
            "-c",
            d.config.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no agent"), "{err}");
    // Audited in the chain.
    let tail = d.cli_ok(&["audit", "tail", "-n", "20"]);
    let evicted = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["reason"] == "agent_evicted")
        .unwrap_or_else(|| panic!("an eviction event: {tail}"));
    assert_eq!(evicted["kind"], "agent_attest");
    assert_eq!(evicted["identity"], a.spiffe_id());
}

/// Forbids for the SVID policy test: no X.509-SVID for the test binary's identity, and no
/// JWT-SVID for one audience, whoever asks.
const SVID_FORBIDS: &str = r#"
@id("no-rust-x509")
forbid (principal == Workload::"spiffe://example.org/rust-test", action == Action::"svid_x509", resource);

@id("no-admin-jwt")
forbid (principal, action == Action::"svid_jwt", resource == Audience::"https://admin.example.test");
"#;

/// SVID issuance goes through the policy set: a `forbid` refuses one identity's X.509-SVID
/// and one JWT-SVID audience. The workload (the `spiffe` crate, through a real agent) is told
/// `PermissionDenied`, each refusal is a `deny` event naming the workload, the agent and the
/// policy, and an unaffected entry (Python) still gets both its SVIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_forbid_refuses_an_svid_with_permission_denied() {
    let d = Domain::start_with("1h", "", |dir| {
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/svid.cedar"), SVID_FORBIDS).unwrap();
    });
    d.entry(
        "spiffe://example.org/rust-test",
        "node-1",
        &[format!("unix:path:{}", me().display())],
    );
    d.entry(
        "spiffe://example.org/python",
        "node-1",
        &[format!("unix:path:{}", python().display())],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();

    // X.509: refused by the forbid (retried while the agent is still syncing).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_svid()).await;
        match r {
            Ok(Err(WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_))) => {
                break;
            }
            Ok(Ok(svid)) => panic!("an X.509-SVID was issued: {}", svid.spiffe_id()),
            other => {
                assert!(Instant::now() < deadline, "no PermissionDenied: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // JWT: the forbidden audience is refused, another one is not.
    let err = client
        .fetch_jwt_svid(["https://admin.example.test"], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_)
        ),
        "{err:?}"
    );
    let jwt = client.fetch_jwt_svid([AUD], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://example.org/rust-test"
    );

    // The unaffected entry gets both SVIDs.
    let py = python_identity(&python(), &agent.socket, None);
    assert_eq!(py["x509_spiffe_id"], "spiffe://example.org/python", "{py}");
    assert_eq!(py["jwt_spiffe_id"], "spiffe://example.org/python", "{py}");

    // Both refusals are in the audit chain, with the policy that refused.
    let tail = d.cli_ok(&["audit", "tail", "-n", "200"]);
    let events: Vec<Value> = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let denied = |policy: &str| {
        events
            .iter()
            .find(|e| e["kind"] == "deny" && e["policies"] == json!([policy]))
            .unwrap_or_else(|| panic!("a deny event by {policy}: {tail}"))
            .clone()
    };
    let x = denied("no-rust-x509");
    assert_eq!(x["decision"], "deny");
    assert_eq!(x["identity"], "spiffe://example.org/rust-test");
    assert_eq!(x["client"], "spiffe://example.org/mayfly/agent/node-1");
    assert_eq!(x["grant"], "svid_x509");
    assert_eq!(x["reason"], "svid_not_allowed");
    let j = denied("no-admin-jwt");
    assert_eq!(j["identity"], "spiffe://example.org/rust-test");
    assert_eq!(j["grant"], "svid_jwt");
    assert_eq!(j["audience"], "https://admin.example.test");
    assert_eq!(j["reason"], "svid_not_allowed");
    // Allowed SVIDs name the entry's generated permit.
    assert!(
        events.iter().any(|e| e["kind"] == "svid_issue"
            && e["identity"] == "spiffe://example.org/python"
            && e["policies"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("entry:"))),
        "{tail}"
    );
}
