//! `mayfly exec` and script tokens from the agent, end to end: the real server, the real agent,
//! the real `mayfly exec`, and real child processes (`sh` scripts that record what they were
//! given and wait for a go file). Revocation is observed at RFC 7662 introspection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{AUD, peek};
use crate::spiffe::Domain;
use crate::support::{drain, mayfly_bin};

/// The heartbeat grace of the test servers' leases.
const GRACE: Duration = Duration::from_secs(3);

/// The command `mayfly exec` runs: records its token (both ways), the token file's path and
/// its environment, then waits for `$OUT/go` and exits with the code in `$OUT/go` (or when
/// `$OUT` is gone: a failed test leaves no process behind). SIGTERM makes it exit 42.
const CHILD: &str = r#"trap 'exit 42' TERM
env > "$OUT/env"
printf '%s' "$MAYFLY_TOKEN" > "$OUT/token.env"
printf '%s' "$MAYFLY_TOKEN_FILE" > "$OUT/token.path"
cat "$MAYFLY_TOKEN_FILE" > "$OUT/token.file"
echo $$ > "$OUT/pid.tmp" && mv "$OUT/pid.tmp" "$OUT/pid"
while [ ! -e "$OUT/go" ] && [ -d "$OUT" ]; do sleep 0.02; done
exit "$(cat "$OUT/go" 2>/dev/null || echo 0)"
"#;

/// A server with short lease graces, the `svc` client's key in a 0600 file, and the child
/// script; `extra` is appended to the config.
fn domain(extra: &str) -> (Domain, PathBuf) {
    domain_with(extra, |_| {})
}

/// As [`domain`], after `prepare(dir)` wrote the files `extra` names.
fn domain_with(extra: &str, prepare: impl FnOnce(&Path)) -> (Domain, PathBuf) {
    let d = Domain::start_with(
        "1h",
        &format!("[leases]\ngrace = \"{}s\"\n{extra}", GRACE.as_secs()),
        prepare,
    );
    let key = d.dir.path().join("svc.private.jwk.json");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        f.write_all(d.svc.to_private_jwk().unwrap().as_bytes())
            .unwrap();
    }
    std::fs::write(d.dir.path().join("child.sh"), CHILD).unwrap();
    (d, key)
}

/// A running `mayfly exec` and the directory its command writes to.
struct Exec {
    child: Child,
    stderr: Arc<Mutex<String>>,
    out: tempfile::TempDir,
}

impl Exec {
    /// `mayfly exec HOW --audience AUD --scope read -- sh child.sh`.
    fn start(d: &Domain, how: &[&str], env: &[(&str, &str)]) -> Exec {
        let out = tempfile::tempdir().unwrap();
        let mut child = Command::new(mayfly_bin())
            .arg("exec")
            .args(how)
            .args(["--audience", AUD, "--scope", "read", "--", "sh"])
            .arg(d.dir.path().join("child.sh"))
            .current_dir(d.dir.path())
            .env("OUT", out.path())
            .env("XDG_RUNTIME_DIR", out.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().unwrap(), stderr.clone(), None);
        Exec { child, stderr, out }
    }

    fn with_key(d: &Domain, key: &Path, env: &[(&str, &str)]) -> Exec {
        Exec::start(
            d,
            &[
                "--server",
                &d.server.issuer,
                "--key",
                key.to_str().unwrap(),
                "--client",
                "svc",
            ],
            env,
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// Wait (30 s at most) until the command has recorded what it was given.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.path("pid").exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "mayfly exec exited {status} before the command started: {}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "the command did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn command_pid(&self) -> String {
        self.read("pid").trim().to_string()
    }

    /// Let the command exit with `code`.
    fn go(&self, code: u8) {
        let tmp = self.path("go.tmp");
        std::fs::write(&tmp, code.to_string()).unwrap();
        std::fs::rename(tmp, self.path("go")).unwrap();
    }

    /// Wait (`within` at most) for `mayfly exec` to exit.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mayfly exec still runs: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // A command orphaned by a killed `mayfly exec` is let go too.
        let _ = std::fs::write(self.path("go"), "0");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(signal: &str, pid: &str) {
    let status = Command::new("kill").args([signal, pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Poll introspection every 20 ms until `token` is inactive; fails after `within`. Returns
/// how long it took.
async fn inactive_within(d: &Domain, token: &str, within: Duration, since: Instant) -> Duration {
    loop {
        let v = d.introspect(token).await;
        if v["active"] == false {
            return since.elapsed();
        }
        assert_eq!(v["active"], true, "{v}");
        assert!(
            since.elapsed() < within,
            "still active {:?} after: {v}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_hands_a_live_leased_token_and_revokes_it_when_the_command_exits() {
    let (d, key) = domain("");
    let key_path = key.to_str().unwrap();
    let mut exec = Exec::with_key(
        &d,
        &key,
        &[
            // Secrets in the caller's environment do not reach the command.
            ("MAYFLY_MASTER_KEY", crate::support::TEST_MASTER_KEY),
            ("MY_KEY_PATH", key_path),
        ],
    );
    exec.wait_started();
    let token = exec.read("token.env");
    assert_eq!(exec.read("token.file"), token);
    let claims = peek(&token);
    assert_eq!(claims["sub"], "svc");
    let lease = claims["lease"].as_str().expect("a lease claim").to_string();
    let live = d.introspect(&token).await;
    assert_eq!(live["active"], true, "{live}");

    // The token file: mode 0600 in a private 0700 directory under $XDG_RUNTIME_DIR.
    let file = PathBuf::from(exec.read("token.path"));
    let dir = file.parent().unwrap().to_path_buf();
    assert!(dir.starts_with(exec.out.path()), "{}", dir.display());
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));

    // The command's environment names no key and holds no secret but its token.
    let env = exec.read("env");
    for secret in [
        key_path,
        "svc.private.jwk",
        crate::support::TEST_MASTER_KEY,
        "MAYFLY_MASTER_KEY",
    ] {
        assert!(!env.contains(secret), "the command sees {secret}");
    }
    let private = d.svc.to_private_jwk().unwrap();
    let d_param: Value = serde_json::from_str(&private).unwrap();
    assert!(!env.contains(d_param["d"].as_str().unwrap()));

    // The command exits 7: so does mayfly exec, the lease is ended and the directory removed.
    let exited = Instant::now();
    exec.go(7);
    let took = inactive_within(&d, &token, Duration::from_secs(1), exited).await;
    let status = exec.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(7), "{}", exec.stderr.lock().unwrap());
    assert!(!dir.exists(), "the token directory is left behind");
    eprintln!("token of lease {lease} inactive {took:?} after the command was told to exit");
    // The lease is over: a heartbeat with its token is told so.
    let renew = reqwest::Client::new()
        .post(format!("{}/leases/{lease}/renew", d.server.issuer))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 409);
    let body: Value = renew.json().await.unwrap();
    assert_eq!(body["error"], "lease_ended", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_a_signal_ends_the_lease_and_sets_the_exit_code() {
    let (d, key) = domain("");
    let mut exec = Exec::with_key(&d, &key, &[]);
    exec.wait_started();
    let token = exec.read("token.file");
    let dir = PathBuf::from(exec.read("token.path"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(d.introspect(&token).await["active"], true);
    let killed = Instant::now();
    kill("-9", &exec.command_pid());
    let took = inactive_within(&d, &token, Duration::from_secs(1), killed).await;
    let status = exec.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(128 + 9));
    assert!(!dir.exists());
    eprintln!("inactive {took:?} after kill -9 of the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_forwarded_to_the_command() {
    let (d, key) = domain("");
    let mut exec = Exec::with_key(&d, &key, &[]);
    exec.wait_started();
    let token = exec.read("token.file");
    let sent = Instant::now();
    // SIGTERM to mayfly exec reaches the command, whose trap exits 42.
    kill("-TERM", &exec.child.id().to_string());
    let status = exec.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(42), "{}", exec.stderr.lock().unwrap());
    inactive_within(&d, &token, Duration::from_secs(1), sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_exec_stops_heartbeating_and_the_lease_ends_after_its_grace() {
    let (d, key) = domain("");
    let mut exec = Exec::with_key(&d, &key, &[]);
    exec.wait_started();
    let token = exec.read("token.file");
    let killed = Instant::now();
    exec.child.kill().unwrap();
    exec.child.wait().unwrap();
    // Nothing ended the lease: the token lives on until the grace has passed ...
    assert_eq!(d.introspect(&token).await["active"], true);
    // ... and the reaper (every second) ends the lease within the grace after the last
    // heartbeat, plus its period.
    let took = inactive_within(&d, &token, GRACE + Duration::from_secs(2), killed).await;
    assert!(
        took > Duration::from_millis(500),
        "ended too soon: {took:?}"
    );
    eprintln!("inactive {took:?} after mayfly exec was killed (grace {GRACE:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ended_elsewhere_stops_the_command() {
    let (d, key) = domain("");
    let mut exec = Exec::with_key(&d, &key, &[]);
    exec.wait_started();
    let token = exec.read("token.file");
    let lease = peek(&token)["lease"].as_str().unwrap().to_string();
    let ended = reqwest::Client::new()
        .post(format!("{}/leases/{lease}/end", d.server.issuer))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let body: Value = ended.json().await.unwrap();
    assert_eq!(body["state"], "ended", "{body}");
    // The next heartbeat (a third of the grace) finds the lease over: SIGTERM to the command
    // (its trap exits 42) and mayfly exec exits 1, saying why.
    let status = exec.wait_exit(GRACE + Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let stderr = exec.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains(&format!("lease {lease} has ended")),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "a token in the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_in_the_file_under_the_same_lease() {
    let (d, key) = domain("[tokens]\ndefault_ttl = \"4s\"\n");
    let mut exec = Exec::with_key(&d, &key, &[]);
    exec.wait_started();
    let first = exec.read("token.file");
    let file = PathBuf::from(exec.read("token.path"));
    // Refreshed at half of 4 s.
    let deadline = Instant::now() + Duration::from_secs(6);
    let second = loop {
        let now = std::fs::read_to_string(&file).unwrap();
        if now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the token file was not refreshed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(peek(&second)["lease"], peek(&first)["lease"]);
    assert_eq!(d.introspect(&second).await["active"], true);
    let exited = Instant::now();
    exec.go(0);
    inactive_within(&d, &second, Duration::from_secs(1), exited).await;
    assert_eq!(exec.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refusals_say_why_without_the_token_or_key() {
    let (d, key) = domain("");
    // The issuer refuses the audience: the OAuth error and its description, exit 1.
    let out = Command::new(mayfly_bin())
        .args(["exec", "--server", &d.server.issuer, "--key"])
        .arg(&key)
        .args([
            "--client",
            "svc",
            "--audience",
            "https://elsewhere.test",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the issuer refused: invalid_target"),
        "{stderr}"
    );
    // Unreachable server.
    let out = Command::new(mayfly_bin())
        .args(["exec", "--server", "http://127.0.0.1:9", "--key"])
        .arg(&key)
        .args(["--client", "svc", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // A command that does not exist: 127, and the lease it opened is ended.
    let out = Command::new(mayfly_bin())
        .args(["exec", "--server", &d.server.issuer, "--key"])
        .arg(&key)
        .args([
            "--client",
            "svc",
            "--audience",
            AUD,
            "--",
            "/nonexistent/cmd",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
}

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// A Kubernetes issuer trusted for token exchange, and a policy letting the `payments`
/// namespace have read tokens for the API.
const K8S: &str = r#"[[issuers]]
name = "k8s"
issuer = "https://kubernetes.default.svc.cluster.local"
preset = "kubernetes"
jwks_file = "k8s.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
max_token_age = "1h"
"#;

const K8S_POLICY: &str = r#"permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "k8s" && principal has namespace && principal.namespace == "payments" };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_platform_token_file() {
    use mayfly_crypto::{KeyAlg, SigningKey};
    let k8s = SigningKey::generate(KeyAlg::ES256, Some("k8s-1")).unwrap();
    let jwks = serde_json::json!({"keys": [k8s.public_jwk()]}).to_string();
    let (d, _) = domain_with(K8S, |dir| {
        std::fs::write(dir.join("k8s.jwks.json"), &jwks).unwrap();
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/k8s.cedar"), K8S_POLICY).unwrap();
    });
    let n = crate::fixture::now();
    let platform = k8s
        .sign_jwt(
            None,
            &serde_json::json!({
                "aud": ["mayfly"], "iss": K8S_ISS, "iat": n, "nbf": n, "exp": n + 600,
                "kubernetes.io": {
                    "namespace": "payments",
                    "serviceaccount": {"name": "api", "uid": "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"}
                },
                "sub": "system:serviceaccount:payments:api"
            }),
        )
        .unwrap();
    let file = d.dir.path().join("sa.token");
    std::fs::write(&file, &platform).unwrap();
    let mut exec = Exec::start(
        &d,
        &[
            "--server",
            &d.server.issuer,
            "--platform-token",
            file.to_str().unwrap(),
        ],
        &[],
    );
    exec.wait_started();
    let token = exec.read("token.file");
    let claims = peek(&token);
    assert!(claims["lease"].is_string(), "{claims}");
    assert_eq!(d.introspect(&token).await["active"], true);
    // The command sees neither the platform token nor where it is.
    let env = exec.read("env");
    assert!(!env.contains(&platform) && !env.contains("sa.token"));
    let exited = Instant::now();
    exec.go(0);
    inactive_within(&d, &token, Duration::from_secs(1), exited).await;
    assert_eq!(exec.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

// --- the agent ---------------------------------------------------------------------------

/// A server and an agent serving `spiffe://example.org/curl` to every process of this uid.
fn agent_domain() -> (Domain, crate::spiffe::AgentProcess) {
    let (d, _) = domain("");
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    d.entry(
        "spiffe://example.org/curl",
        "node-1",
        &[format!("unix:uid:{}", uid.unwrap())],
    );
    let agent = d.agent(&d.join_token("node-1")).unwrap();
    (d, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_the_agent_is_revoked_when_killed() {
    let (d, agent) = agent_domain();
    let socket = agent.http.to_str().unwrap().to_string();
    // The agent may not have synced its entries yet: start again until the command runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exec = loop {
        let mut exec = Exec::start(&d, &["--agent-socket", &socket], &[]);
        let started = Instant::now();
        while !exec.path("pid").exists() && exec.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(20));
        }
        if exec.path("pid").exists() {
            break exec;
        }
        assert!(Instant::now() < deadline, "{}", exec.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    };
    let token = exec.read("token.file");
    let claims = peek(&token);
    assert_eq!(claims["sub"], "spiffe://example.org/curl");
    assert!(claims["lease"].is_string(), "{claims}");
    assert_eq!(d.introspect(&token).await["active"], true);
    // The token is bound to mayfly exec itself: the agent reports its death at once.
    let killed = Instant::now();
    exec.child.kill().unwrap();
    exec.child.wait().unwrap();
    let took = inactive_within(&d, &token, GRACE, killed).await;
    eprintln!("agent-bound token inactive {took:?} after mayfly exec was killed");
}

/// The README's script lines, with the agent's socket path put in.
fn readme_lines(socket: &Path) -> (String, String) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let block = |first: &str| -> String {
        let i = lines
            .iter()
            .position(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("README has no line starting {first:?}"));
        // The command and its continuation lines.
        let mut end = i;
        while lines[end].ends_with('\\') {
            end += 1;
        }
        lines[i..=end]
            .join("\n")
            .replace("/run/mayfly/token.sock", socket.to_str().unwrap())
    };
    (
        block("curl --unix-socket /run/mayfly/token.sock"),
        block("TOKEN=$(curl"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_script_example_gives_tokens_that_live_while_the_script_runs() {
    let (d, agent) = agent_domain();
    let (print_json, assign) = readme_lines(&agent.http);
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("script.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{print_json}\n{assign}\nprintf '%s' \"$TOKEN\" > \"$OUT/token\"\n\
             while [ ! -e \"$OUT/go\" ] && [ -d \"$OUT\" ]; do sleep 0.02; done\n"
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut child, json, token) = loop {
        let _ = std::fs::remove_file(out.path().join("go"));
        let _ = std::fs::remove_file(out.path().join("token"));
        let mut child = Command::new("sh")
            .arg(&script)
            .env("OUT", out.path())
            .stdout(std::fs::File::create(out.path().join("stdout")).unwrap())
            .spawn()
            .unwrap();
        while !out.path().join("token").exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let token = std::fs::read_to_string(out.path().join("token")).unwrap();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("stdout")).unwrap())
                .unwrap_or(Value::Null);
        if !token.is_empty() && json["access_token"].is_string() {
            break (child, json, token);
        }
        // Not synced yet: this script ends, try again.
        std::fs::write(out.path().join("go"), "").unwrap();
        child.wait().unwrap();
        assert!(Instant::now() < deadline, "no token: {json}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let printed = json["access_token"].as_str().unwrap().to_string();
    // curl has exited (the script went on after it); both tokens follow the script, which
    // still runs: they stay active (checked for half a second, long enough for a token bound
    // to curl to have been revoked).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(500) {
        for t in [&printed, &token] {
            let v = d.introspect(t).await;
            assert_eq!(v["active"], true, "{v}");
            assert_eq!(v["sub"], "spiffe://example.org/curl");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(out.path().join("go"), "").unwrap();
    assert!(child.wait().unwrap().success());
    let exited = Instant::now();
    for t in [&printed, &token] {
        let took = inactive_within(&d, t, Duration::from_secs(1), exited).await;
        eprintln!("script token inactive {took:?} after the script exited");
    }
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .contains("workload exit reported")
    );
}
