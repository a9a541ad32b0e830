//! `mayfly exec`: run a command with a token under a lease that lives exactly as long as the
//! command.
//!
//! It authenticates (a private key file, a platform token file, or the agent socket), opens a
//! lease (`lease=new`), and hands the child its access token in an environment variable and in
//! a file in a private directory (0700, the file 0600, replaced atomically). It refreshes the
//! token under the same lease before half its lifetime, heartbeats the lease at a third of its
//! grace, forwards signals, and when the child exits (however it exits) ends the lease, which
//! revokes every token issued under it, removes the directory and exits with the child's code.
//! If `mayfly exec` itself is killed, the heartbeat stops and the server ends the lease after
//! its grace. The child never gets the key: not its path, not its contents.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use mayfly_client::{ClientError, build_assertion, discover, post_token_form};
use mayfly_crypto::SigningKey;
use mayfly_proto::{JWT_BEARER_ASSERTION_TYPE, TokenResponse};
use mayfly_sts::{Clock, SystemClock};
use serde::Deserialize;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::time::{Instant, sleep_until};
use zeroize::Zeroizing;

/// `mayfly exec` arguments.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Issuer URL (the lease endpoints are under it). With --agent-socket it defaults to the
    /// token's issuer.
    #[arg(long, env = "MAYFLY_ISSUER")]
    server: Option<String>,
    /// Private JWK file (`private_key_jwt` with --client); with --platform-token it
    /// authenticates the client on the exchange.
    #[arg(long, requires = "client", conflicts_with = "agent_socket")]
    key: Option<PathBuf>,
    /// client_id (with --key).
    #[arg(long, requires = "key")]
    client: Option<String>,
    /// A platform identity token file (Kubernetes, GitHub Actions, GitLab CI, ...), exchanged
    /// (RFC 8693); read again at every refresh, as platforms rotate it.
    #[arg(long, conflicts_with = "agent_socket")]
    platform_token: Option<PathBuf>,
    /// The `mayfly agent` token socket (`--http-socket` of the agent).
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    /// Audience of the token.
    #[arg(long)]
    audience: Option<String>,
    /// A scope (repeat for several).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The environment variable that carries the token to the command.
    #[arg(long = "env", value_name = "NAME", default_value = "MAYFLY_TOKEN")]
    env_name: String,
    /// Only the token file (`MAYFLY_TOKEN_FILE`), no token in the environment.
    #[arg(long, conflicts_with = "env_name")]
    token_file_only: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Longest wait for the command to stop after SIGTERM when its lease ended, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest a lease id may be (it becomes a URL path segment).
const MAX_LEASE_ID: usize = 128;

/// How `mayfly exec` gets its tokens.
enum Source {
    /// `client_credentials` with `private_key_jwt`.
    Key { client: String, key: SigningKey },
    /// RFC 8693 exchange of a platform token file, client-authenticated when a key is given.
    Platform {
        file: PathBuf,
        client: Option<(String, SigningKey)>,
    },
    /// `GET /v1/token` on the agent's token socket, bound to this process (`bind=self`).
    Agent { http: reqwest::Client },
}

/// A token just obtained: the secret, its lifetime, and the claims `mayfly exec` needs.
struct Issued {
    token: Zeroizing<String>,
    expires_in: u64,
    lease: Option<String>,
    iss: Option<String>,
}

/// The claims read from a token of ours (without verifying it: it came from the issuer or
/// the agent, and is only held and handed on).
#[derive(Deserialize)]
struct Claims {
    lease: Option<String>,
    iss: Option<String>,
}

impl Issued {
    fn of(resp: TokenResponse) -> anyhow::Result<Self> {
        let token = Zeroizing::new(resp.access_token);
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok())
            .context("the issuer returned an access token that is not a JWT")?;
        Ok(Self {
            token,
            expires_in: resp.expires_in,
            lease: claims.lease,
            iss: claims.iss,
        })
    }
}

impl Source {
    fn from_args(args: &ExecArgs) -> anyhow::Result<Self> {
        let key = match (&args.key, &args.client) {
            (Some(path), Some(client)) => {
                Some((client.clone(), crate::keyfile::load_private_jwk(path)?))
            }
            _ => None,
        };
        match (&args.platform_token, &args.agent_socket, key) {
            (Some(file), None, client) => Ok(Self::Platform {
                file: file.clone(),
                client,
            }),
            (None, Some(socket), None) => {
                if args.audience.is_none() {
                    bail!("--audience is required with --agent-socket");
                }
                let http = reqwest::Client::builder()
                    .unix_socket(socket.as_path())
                    .timeout(Duration::from_secs(15))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .context("cannot build the agent client")?;
                Ok(Self::Agent { http })
            }
            (None, None, Some((client, key))) => Ok(Self::Key { client, key }),
            _ => bail!(
                "say how to authenticate: --key FILE --client ID, --platform-token FILE, or --agent-socket PATH"
            ),
        }
    }

    /// A token under `lease` (`new` or the lease id).
    async fn token(
        &self,
        http: &reqwest::Client,
        issuer: Option<&str>,
        args: &ExecArgs,
        lease: &str,
    ) -> anyhow::Result<Issued> {
        let scope = (!args.scopes.is_empty()).then(|| args.scopes.join(" "));
        let resp = match self {
            Self::Agent { http } => agent_token(http, args, scope, lease).await?,
            Self::Key { client, key } => {
                let issuer = issuer.context("--server (or MAYFLY_ISSUER) is required")?;
                let md = discover(http, issuer).await?;
                let mut form = client_auth(client, key, &md.issuer)?;
                form.push(("grant_type", "client_credentials".into()));
                push_ask(&mut form, args, scope, lease, "resource");
                post_token_form(http, &md, &form).await?
            }
            Self::Platform { file, client } => {
                let issuer = issuer.context("--server (or MAYFLY_ISSUER) is required")?;
                let subject = Zeroizing::new(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                );
                let md = discover(http, issuer).await?;
                let mut form = match client {
                    Some((client, key)) => client_auth(client, key, &md.issuer)?,
                    None => Vec::new(),
                };
                form.push(("grant_type", mayfly_proto::GRANT_TOKEN_EXCHANGE.into()));
                form.push(("subject_token", subject.trim().to_string()));
                form.push(("subject_token_type", mayfly_proto::TOKEN_TYPE_JWT.into()));
                push_ask(&mut form, args, scope, lease, "audience");
                post_token_form(http, &md, &form).await?
            }
        };
        Issued::of(resp)
    }
}

/// The `private_key_jwt` client authentication fields.
fn client_auth(
    client: &str,
    key: &SigningKey,
    issuer: &str,
) -> Result<Vec<(&'static str, String)>, ClientError> {
    let assertion = build_assertion(key, client, issuer, SystemClock.now())?;
    Ok(vec![
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
        ("client_assertion", assertion),
    ])
}

/// Audience (as `audience_param`), scope and lease.
fn push_ask(
    form: &mut Vec<(&'static str, String)>,
    args: &ExecArgs,
    scope: Option<String>,
    lease: &str,
    audience_param: &'static str,
) {
    if let Some(a) = &args.audience {
        form.push((audience_param, a.clone()));
    }
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    form.push(("lease", lease.to_string()));
}

/// An RFC 6749 style refusal body (the agent's and the lease endpoints').
#[derive(Deserialize)]
struct Refusal {
    error: String,
    error_description: Option<String>,
}

/// `GET /v1/token` on the agent's socket, bound to this process so that its exit (even by
/// SIGKILL) revokes the token at once.
async fn agent_token(
    http: &reqwest::Client,
    args: &ExecArgs,
    scope: Option<String>,
    lease: &str,
) -> anyhow::Result<TokenResponse> {
    let mut query: Vec<(&str, String)> = vec![
        ("audience", args.audience.clone().unwrap_or_default()),
        ("lease", lease.to_string()),
        ("bind", "self".into()),
    ];
    if let Some(s) = scope {
        query.push(("scope", s));
    }
    let url = reqwest::Url::parse_with_params("http://agent/v1/token", &query)
        .context("cannot build the agent request")?;
    let resp = http
        .get(url)
        .header("workload.spiffe.io", "true")
        .send()
        .await
        .context("cannot reach the agent socket")?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .context("the agent's answer was cut off")?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .context("the agent's answer is not a token response");
    }
    match serde_json::from_slice::<Refusal>(&bytes) {
        Ok(r) => Err(ClientError::Refused {
            error: r.error,
            description: r.error_description,
        }
        .into()),
        Err(_) => bail!("the agent answered {status}"),
    }
}

/// What a heartbeat learned.
enum Beat {
    /// The lease is open; heartbeat again within this grace (none: no heartbeat needed).
    Open(Option<Duration>),
    /// The lease has ended: its tokens are revoked and the command must stop.
    Ended,
    /// The token was refused (revoked or expired): get a new one under the lease.
    Unauthorized,
    /// The server could not be asked; try again soon.
    Failed(String),
}

#[derive(Deserialize)]
struct Renewed {
    grace: Option<u64>,
}

/// The lease endpoints of one lease.
struct Lease {
    id: String,
    base: String,
}

impl Lease {
    async fn post(
        &self,
        http: &reqwest::Client,
        action: &str,
        token: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        let url = format!("{}/leases/{}/{action}", self.base, self.id);
        let resp = http
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body.to_vec()))
    }

    async fn renew(&self, http: &reqwest::Client, token: &str) -> Beat {
        match self.post(http, "renew", token).await {
            Ok((status, body)) if status.is_success() => {
                match serde_json::from_slice::<Renewed>(&body) {
                    Ok(r) => Beat::Open(r.grace.filter(|g| *g > 0).map(Duration::from_secs)),
                    Err(e) => Beat::Failed(format!("unusable renew answer: {e}")),
                }
            }
            Ok((reqwest::StatusCode::CONFLICT, _)) => Beat::Ended,
            Ok((reqwest::StatusCode::UNAUTHORIZED, _)) => Beat::Unauthorized,
            Ok((status, _)) => Beat::Failed(format!("the lease endpoint answered {status}")),
            Err(e) => Beat::Failed(e),
        }
    }

    /// End the lease (idempotent at the server); returns how many tokens it revoked.
    async fn end(&self, http: &reqwest::Client, token: &str) -> Result<u64, String> {
        #[derive(Deserialize)]
        struct Ended {
            revoked: Option<u64>,
        }
        match self.post(http, "end", token).await? {
            (status, body) if status.is_success() => Ok(serde_json::from_slice::<Ended>(&body)
                .ok()
                .and_then(|e| e.revoked)
                .unwrap_or(0)),
            (status, _) => Err(format!("the lease endpoint answered {status}")),
        }
    }
}

/// The private directory holding the token file; removed when dropped.
struct TokenDir {
    dir: PathBuf,
    file: PathBuf,
}

impl TokenDir {
    /// A new directory (0700) under `$XDG_RUNTIME_DIR`, else the temporary directory. Its
    /// name is random and it must not exist, so nobody can have prepared it.
    fn create() -> anyhow::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("mayfly-exec-{}", mayfly_crypto::random_id()?));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let file = dir.join("token");
        Ok(Self { dir, file })
    }

    /// Replace the token file atomically: a new 0600 file, renamed over the old one, so a
    /// reader sees the old token or the new one, never a part.
    fn write(&self, token: &str) -> anyhow::Result<()> {
        let tmp = self
            .dir
            .join(format!("token.{}", mayfly_crypto::random_id()?));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(token.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("cannot replace {}", self.file.display()))
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("mayfly: warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Environment variables the command must not see: the ones naming mayfly keys or secrets,
/// and any whose value is the path of the key or platform token file.
fn hidden_env(secret_files: &[&Path]) -> Vec<OsString> {
    let canon: Vec<PathBuf> = secret_files
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    std::env::vars_os()
        .filter(|(name, value)| {
            let n = name.to_string_lossy().to_ascii_uppercase();
            let secret_name = n.starts_with("MAYFLY_")
                && ["KEY", "SECRET", "PASSWORD", "TOKEN"]
                    .iter()
                    .any(|w| n.contains(w));
            let value = Path::new(value);
            secret_name || secret_files.contains(&value) || canon.iter().any(|p| p == value)
        })
        .map(|(name, _)| name)
        .collect()
}

/// The signals passed on to the command: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2.
struct Signals([SignalStream; 6]);

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let on = |kind| signal(kind).context("cannot handle signals");
        Ok(Self([
            on(SignalKind::interrupt())?,
            on(SignalKind::terminate())?,
            on(SignalKind::hangup())?,
            on(SignalKind::quit())?,
            on(SignalKind::user_defined1())?,
            on(SignalKind::user_defined2())?,
        ]))
    }

    /// The next signal this process receives.
    async fn recv(&mut self) -> rustix::process::Signal {
        use rustix::process::Signal;
        let [int, term, hup, quit, usr1, usr2] = &mut self.0;
        tokio::select! {
            _ = int.recv() => Signal::INT,
            _ = term.recv() => Signal::TERM,
            _ = hup.recv() => Signal::HUP,
            _ = quit.recv() => Signal::QUIT,
            _ = usr1.recv() => Signal::USR1,
            _ = usr2.recv() => Signal::USR2,
        }
    }
}

/// Pass `sig` on to the command, except SIGINT and SIGQUIT when this process is in the
/// foreground process group of the terminal on standard input: the key press (Ctrl-C,
/// Ctrl-\\) signalled the whole group, the command included, and passing it on would deliver
/// it twice (many programs take a second SIGINT as "quit without cleaning up").
fn forward_signal(child: &Child, sig: rustix::process::Signal) {
    use rustix::process::Signal;
    let from_terminal = (sig == Signal::INT || sig == Signal::QUIT)
        && rustix::termios::tcgetpgrp(std::io::stdin())
            .is_ok_and(|group| group == rustix::process::getpgrp());
    if !from_terminal {
        send_signal(child, sig);
    }
}

fn send_signal(child: &Child, sig: rustix::process::Signal) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid
        && let Err(e) = rustix::process::kill_process(pid, sig)
    {
        eprintln!("mayfly: warning: cannot signal the command: {e}");
    }
}

/// How the run ended.
enum Ending {
    /// The command exited.
    Exited(ExitStatus),
    /// The lease ended under the command, which was stopped.
    LeaseEnded,
}

/// The running state: the current token, when to refresh it, when to heartbeat.
struct Run<'a> {
    args: &'a ExecArgs,
    source: &'a Source,
    http: reqwest::Client,
    issuer: Option<String>,
    lease: Lease,
    dir: TokenDir,
    current: Issued,
    refresh_at: Instant,
    beat_at: Option<Instant>,
}

/// When to refresh a token that lives `expires_in` seconds: at half its life.
fn half_life(expires_in: u64) -> Instant {
    Instant::now() + Duration::from_millis(expires_in.saturating_mul(500).max(1000))
}

/// A third of the grace, and never more often than five times a second.
fn beat_interval(grace: Duration) -> Duration {
    (grace / 3).max(Duration::from_millis(200))
}

/// After a failure, try again in a while: a tenth of what is left, between 1 s and 30 s.
fn retry_in(left: Duration) -> Instant {
    Instant::now() + (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// What a refresh came to.
enum Refreshed {
    /// A new token is in the file.
    Done,
    /// The issuer refused (the lease is over, or this identity may no longer have it).
    Refused,
    /// The issuer could not be asked; tried again later.
    Later,
}

impl Run<'_> {
    /// A new token under the lease, written to the file.
    async fn refresh(&mut self) -> anyhow::Result<Refreshed> {
        let got = self
            .source
            .token(
                &self.http,
                self.issuer.as_deref(),
                self.args,
                &self.lease.id,
            )
            .await;
        match got {
            Ok(issued) => {
                self.dir.write(&issued.token)?;
                self.refresh_at = half_life(issued.expires_in);
                self.current = issued;
                Ok(Refreshed::Done)
            }
            Err(e) => {
                eprintln!("mayfly: warning: cannot refresh the token: {e:#}");
                let left = self.refresh_at.saturating_duration_since(Instant::now());
                self.refresh_at =
                    retry_in(left.max(Duration::from_secs(self.current.expires_in / 2)));
                let refused = matches!(
                    e.downcast_ref::<ClientError>(),
                    Some(ClientError::Refused { .. })
                );
                Ok(if refused {
                    Refreshed::Refused
                } else {
                    Refreshed::Later
                })
            }
        }
    }

    /// Refresh when the token is half way; `false` when the lease is over.
    async fn on_refresh_timer(&mut self) -> anyhow::Result<bool> {
        if let Refreshed::Refused = self.refresh().await? {
            // Refused under the lease: a heartbeat now tells whether the lease has ended; if
            // it is open, the current token stays good until it expires and refresh retries.
            self.beat_at = Some(Instant::now());
        }
        Ok(true)
    }

    /// Heartbeat; `false` when the lease is over.
    async fn heartbeat(&mut self) -> anyhow::Result<bool> {
        match self.lease.renew(&self.http, &self.current.token).await {
            Beat::Open(grace) => {
                self.beat_at = grace.map(|g| Instant::now() + beat_interval(g));
                Ok(true)
            }
            Beat::Ended => Ok(false),
            // Our token is no longer good (a lease that ended revokes its tokens): a new one
            // under the lease tells whether the lease is still open.
            Beat::Unauthorized => match self.refresh().await? {
                Refreshed::Refused => Ok(false),
                Refreshed::Done | Refreshed::Later => {
                    self.beat_at = Some(Instant::now() + Duration::from_secs(1));
                    Ok(true)
                }
            },
            Beat::Failed(e) => {
                eprintln!("mayfly: warning: lease heartbeat failed: {e}");
                self.beat_at = Some(Instant::now() + Duration::from_secs(1));
                Ok(true)
            }
        }
    }

    /// Refresh, heartbeat and forward signals until the command exits or the lease ends.
    async fn supervise(&mut self, child: &mut Child) -> anyhow::Result<Ending> {
        let mut signals = Signals::new()?;
        loop {
            // No heartbeat needed: a deadline far away stands for "never".
            let beat_at = self
                .beat_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let open = tokio::select! {
                status = child.wait() => {
                    return Ok(Ending::Exited(status.context("cannot wait for the command")?));
                }
                sig = signals.recv() => {
                    forward_signal(child, sig);
                    true
                }
                () = sleep_until(self.refresh_at) => self.on_refresh_timer().await?,
                () = sleep_until(beat_at) => self.heartbeat().await?,
            };
            if !open {
                return Ok(Ending::LeaseEnded);
            }
        }
    }
}

/// Stop the command: SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`].
async fn stop(child: &mut Child) {
    send_signal(child, rustix::process::Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        send_signal(child, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

/// The exit code for a command's status: its own code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

fn spawn(args: &ExecArgs, dir: &TokenDir, token: &str) -> std::io::Result<Child> {
    let mut secret_files: Vec<&Path> = Vec::new();
    secret_files.extend(args.key.as_deref());
    secret_files.extend(args.platform_token.as_deref());
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for name in hidden_env(&secret_files) {
        cmd.env_remove(name);
    }
    cmd.env_remove(&args.env_name);
    if !args.token_file_only {
        cmd.env(&args.env_name, token);
    }
    cmd.env("MAYFLY_TOKEN_FILE", &dir.file);
    cmd.spawn()
}

/// `mayfly exec`.
pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    if args.env_name.is_empty() || args.env_name.contains(['=', '\0']) {
        bail!("--env must name an environment variable (no `=`)");
    }
    let source = Source::from_args(&args)?;
    if matches!(source, Source::Key { .. }) {
        // The key stays in this process's memory for refreshes; a non-dumpable process cannot
        // be read through /proc or ptrace by the command it runs (same user).
        let _ =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    }
    let http = mayfly_client::http()?;
    let issuer = args
        .server
        .as_ref()
        .map(|s| s.trim_end_matches('/').to_string());
    let first = source
        .token(&http, issuer.as_deref(), &args, "new")
        .await
        .context("cannot get a token")?;
    let id = first
        .lease
        .clone()
        .filter(|l| {
            !l.is_empty()
                && l.len() <= MAX_LEASE_ID
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .context("the issuer did not put the token under a lease (does it support leases?)")?;
    let base = issuer
        .clone()
        .or_else(|| first.iss.clone())
        .context("the token names no issuer; give --server")?;
    let lease = Lease {
        id,
        base: base.trim_end_matches('/').to_string(),
    };
    let dir = TokenDir::create()?;
    dir.write(&first.token)?;
    let mut run = Run {
        args: &args,
        source: &source,
        http,
        issuer,
        lease,
        dir,
        refresh_at: half_life(first.expires_in),
        current: first,
        beat_at: Some(Instant::now()),
    };
    // The first heartbeat learns the grace (and that the lease endpoint answers).
    if !run.heartbeat().await? {
        bail!(
            "the lease {} ended before the command started",
            run.lease.id
        );
    }
    let started = spawn(&args, &run.dir, &run.current.token);
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            finish(&run).await;
            let what = args.command[0].to_string_lossy();
            eprintln!("mayfly: error: cannot run {what}: {e}");
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
    };
    let ending = run.supervise(&mut child).await;
    let ending = match ending {
        Ok(ending) => ending,
        Err(e) => {
            stop(&mut child).await;
            finish(&run).await;
            return Err(e);
        }
    };
    match ending {
        Ending::Exited(status) => {
            finish(&run).await;
            Ok(exit_code(status))
        }
        Ending::LeaseEnded => {
            eprintln!(
                "mayfly: error: lease {} has ended or its tokens are refused; stopping the command",
                run.lease.id
            );
            stop(&mut child).await;
            finish(&run).await;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// End the lease (revoking its tokens); the token directory goes when `run` is dropped.
async fn finish(run: &Run<'_>) {
    match run.lease.end(&run.http, &run.current.token).await {
        Ok(revoked) => {
            tracing::debug!(lease = %run.lease.id, revoked, "lease ended");
        }
        Err(e) => eprintln!(
            "mayfly: warning: cannot end lease {} ({e}); it ends when its heartbeat grace passes",
            run.lease.id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_command() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(exit_code(ExitStatus::from_raw(0)), ExitCode::SUCCESS);
        // Killed by SIGKILL (9): 128 + 9.
        assert_eq!(exit_code(ExitStatus::from_raw(9)), ExitCode::from(137));
    }

    #[test]
    fn the_token_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TokenDir::create().unwrap();
        dir.write("first").unwrap();
        dir.write("second").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.dir), 0o700);
        assert_eq!(mode(&dir.file), 0o600);
        assert_eq!(std::fs::read_to_string(&dir.file).unwrap(), "second");
        // Only the token: no temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir.dir).unwrap().count(), 1);
        let path = dir.dir.clone();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn intervals() {
        assert_eq!(
            beat_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            beat_interval(Duration::from_millis(300)),
            Duration::from_millis(200)
        );
        let now = Instant::now();
        let at = half_life(600);
        assert!(at >= now + Duration::from_secs(300) && at < now + Duration::from_secs(301));
    }
}
