//! `execve` after `connect()` must not pass a connection off as the workload's: real
//! processes connect to the agent, then fork and exec a workload's binary (selected by
//! `unix:sha256` and `unix:path`) so that the pid the kernel recorded at `connect()` runs it,
//! while other code uses the connection.
//!
//! The roles are played by this test binary (the "launcher", which no entry selects) and a copy
//! of it with a few bytes appended (the "victim", another file with another hash, which the
//! entries select), run by [`exec_role`] according to `MAYFLY_EXEC_ROLE`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

mod support;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_agent::proto::X509svidRequest;
use mayfly_agent::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use support::{Fixture, assert_logged, capture_log, entry, logged, within};

const ROLE: &str = "MAYFLY_EXEC_ROLE";
const SOCKET: &str = "MAYFLY_EXEC_SOCKET";
const VICTIM: &str = "MAYFLY_EXEC_VICTIM";
const RESULT: &str = "MAYFLY_EXEC_RESULT";
const SYNC: &str = "MAYFLY_EXEC_SYNC";
const WAIT_PID: &str = "MAYFLY_EXEC_WAIT_PID";
const ON_STDIN: &str = "MAYFLY_EXEC_ON_STDIN";

/// The arguments that make a test binary run [`exec_role`] only.
const ROLE_ARGS: [&str; 4] = ["exec_role", "--exact", "--nocapture", "--test-threads=1"];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// Run as a launcher, attacker or victim process (a no-op in a normal test run).
#[test]
fn exec_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        // Fetch an X.509-SVID on the connection given as stdin (or a new one) and write the
        // outcome to the result file.
        "fetch" => {
            let stream = if std::env::var(ON_STDIN).is_ok() {
                std::os::unix::net::UnixStream::from(stdin_fd())
            } else {
                std::os::unix::net::UnixStream::connect(env(SOCKET)).unwrap()
            };
            if let Ok(pid) = std::env::var(WAIT_PID) {
                wait_until_runs(&pid, &env(VICTIM));
            }
            let outcome = fetch_on(stream);
            let result = PathBuf::from(env(RESULT));
            let tmp = result.with_extension("tmp");
            std::fs::write(&tmp, format!("{outcome}\n")).unwrap();
            std::fs::rename(tmp, result).unwrap();
        }
        // The victim's binary doing its own work: just live until killed.
        "hold" => std::thread::sleep(Duration::from_secs(600)),
        // Connect, hand the connection to a child running the launcher's code, and exec the
        // victim's binary (same pid) keeping the connection.
        "parent-execs" => {
            let sock = connect_and_sync();
            let me = std::process::id().to_string();
            #[allow(
                clippy::zombie_processes,
                reason = "this process execs next; the victim's binary it becomes never waits"
            )]
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(ROLE_ARGS)
                .env(ROLE, "fetch")
                .env(ON_STDIN, "1")
                .env(WAIT_PID, &me)
                .stdin(Stdio::from(OwnedFd::from(sock.try_clone().unwrap())))
                .spawn()
                .unwrap();
            let err = std::process::Command::new(env(VICTIM))
                .args(ROLE_ARGS)
                .env(ROLE, "hold")
                .stdin(Stdio::from(OwnedFd::from(sock)))
                .exec();
            panic!("exec failed: {err}");
        }
        // Connect, then become the victim's binary (same pid), which uses the connection.
        "self-exec" => {
            let sock = connect_and_sync();
            let err = std::process::Command::new(env(VICTIM))
                .args(ROLE_ARGS)
                .env(ROLE, "fetch")
                .env(ON_STDIN, "1")
                .stdin(Stdio::from(OwnedFd::from(sock)))
                .exec();
            panic!("exec failed: {err}");
        }
        // Connect, fork, and the child execs the victim's binary and uses the connection,
        // while the launcher keeps it open.
        "child-execs" => {
            let sock = connect_and_sync();
            let status = std::process::Command::new(env(VICTIM))
                .args(ROLE_ARGS)
                .env(ROLE, "fetch")
                .env(ON_STDIN, "1")
                .stdin(Stdio::from(OwnedFd::from(sock.try_clone().unwrap())))
                .status()
                .unwrap();
            assert!(status.success());
            drop(sock);
        }
        // Connect to the HTTP socket, ask once as the launcher (keep-alive: the agent has now
        // accepted the connection), then become the victim's binary, which asks again.
        "self-exec-http" => {
            let mut sock = std::os::unix::net::UnixStream::connect(env(SOCKET)).unwrap();
            let first = http_token(&mut sock);
            assert_eq!(first, 403, "the launcher itself is no workload");
            let err = std::process::Command::new(env(VICTIM))
                .args(ROLE_ARGS)
                .env(ROLE, "http-fetch")
                .env(ON_STDIN, "1")
                .stdin(Stdio::from(OwnedFd::from(sock)))
                .exec();
            panic!("exec failed: {err}");
        }
        // `GET /v1/token` on the connection given as stdin, or a new one.
        "http-fetch" => {
            let mut sock = if std::env::var(ON_STDIN).is_ok() {
                std::os::unix::net::UnixStream::from(stdin_fd())
            } else {
                std::os::unix::net::UnixStream::connect(env(SOCKET)).unwrap()
            };
            let status = http_token(&mut sock);
            let result = PathBuf::from(env(RESULT));
            let tmp = result.with_extension("tmp");
            std::fs::write(&tmp, format!("http {status}\n")).unwrap();
            std::fs::rename(tmp, result).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

/// One keep-alive `GET /v1/token` on `sock`; its status (the body is read and dropped).
fn http_token(sock: &mut std::os::unix::net::UnixStream) -> u16 {
    use std::io::{BufRead, Read, Write};
    sock.write_all(
        b"GET /v1/token?audience=https%3A%2F%2Fapi HTTP/1.1\r\nHost: agent\r\n\
          workload.spiffe.io: true\r\n\r\n",
    )
    .unwrap();
    // Byte by byte, so nothing past this response is consumed from the shared socket.
    let mut reader = std::io::BufReader::with_capacity(1, &*sock);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    status
}

/// Our stdin, which a launcher made the agent connection.
fn stdin_fd() -> OwnedFd {
    std::io::stdin().as_fd().try_clone_to_owned().unwrap()
}

/// Connect to the agent; with `MAYFLY_EXEC_SYNC`, wait until the agent has accepted the
/// connection (its HTTP/2 settings arrive; they are only peeked at, and stay for whoever
/// speaks gRPC on the connection next).
fn connect_and_sync() -> std::os::unix::net::UnixStream {
    let sock = std::os::unix::net::UnixStream::connect(env(SOCKET)).unwrap();
    if std::env::var(SYNC).is_ok() {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut byte = [0u8; 1];
        let (n, _) = rustix::net::recv(&sock, &mut byte[..], rustix::net::RecvFlags::PEEK).unwrap();
        assert_eq!(n, 1, "the agent closed the connection");
        sock.set_read_timeout(None).unwrap();
    }
    sock
}

/// Wait until process `pid` runs `exe` (the launcher has exec'd the victim's binary).
fn wait_until_runs(pid: &str, exe: &str) {
    for _ in 0..3000 {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == Path::new(exe)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} never ran {exe}");
}

/// `FetchX509SVID` on `stream`: "ok <ids>" or "err <gRPC code>".
fn fetch_on(stream: std::os::unix::net::UnixStream) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::UnixStream::from_std(stream).unwrap();
        let once = Arc::new(Mutex::new(Some(stream)));
        let channel = tonic::transport::Endpoint::try_from("http://agent.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let taken = once.lock().unwrap().take();
                async move {
                    let stream = taken.ok_or_else(|| std::io::Error::other("used once"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let first = match client.fetch_x509svid(req).await {
            Ok(resp) => resp.into_inner().message().await,
            Err(status) => Err(status),
        };
        match first {
            Ok(Some(msg)) => {
                let mut ids: Vec<String> = msg.svids.into_iter().map(|s| s.spiffe_id).collect();
                ids.sort();
                format!("ok {}", ids.join(","))
            }
            Ok(None) => "err stream-ended".into(),
            Err(status) => format!("err {:?}", status.code()),
        }
    })
}

/// Run a role process on the Workload API socket and return what its fetcher wrote.
async fn run_role(
    fx: &Fixture,
    victim: &Path,
    result: &Path,
    role: &str,
    sync: bool,
) -> (String, u32) {
    run_role_on(&fx.socket, victim, result, role, sync).await
}

/// Run a role process on `socket` and return what its fetcher wrote to `result`, with the
/// launcher's pid.
async fn run_role_on(
    socket: &Path,
    victim: &Path,
    result: &Path,
    role: &str,
    sync: bool,
) -> (String, u32) {
    let _ = std::fs::remove_file(result);
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(ROLE_ARGS)
        .env(ROLE, role)
        .env(SOCKET, socket)
        .env(VICTIM, victim)
        .env(RESULT, result)
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if sync {
        cmd.env(SYNC, "1");
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let outcome = within(role, async {
        loop {
            if let Ok(s) = std::fs::read_to_string(result) {
                return s.trim().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The launcher (or the victim's binary it became) may still be running.
    let _ = child.start_kill();
    let _ = child.wait().await;
    (outcome, pid)
}

fn exe_changed(pid: u32) -> String {
    format!("reason=process {pid} runs another executable than when it connected")
}

fn held_by_other(pid: u32) -> String {
    format!("reason=the connection of process {pid} is also held by process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_after_connect_is_refused() {
    capture_log();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    // The victim's binary: this test binary with bytes appended (still runs, other hash).
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.extend_from_slice(b"\nthe victim's build\n");
    let victim = dir_path.join("victim");
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hash = mayfly_crypto::hex(&mayfly_crypto::sha256(&bytes));
    let by_hash = entry("e-hash", "victim/by-hash", &[format!("unix:sha256:{hash}")]);
    let by_path = entry(
        "e-path",
        "victim/by-path",
        &[format!("unix:path:{}", victim.display())],
    );
    let fx = Fixture::start(vec![by_hash, by_path], |_| {}).await;
    let result = dir_path.join("result");

    // The victim's binary connecting itself is served both identities.
    let served = "ok spiffe://example.org/victim/by-hash,spiffe://example.org/victim/by-path";
    let got = run_role_victim(&fx, &victim, &result).await;
    assert_eq!(got, served);

    // Connect, fork a child with the launcher's code, exec the victim's binary in the parent
    // (the pid the agent knows) and fetch from the child: refused, whether the exec came after
    // the agent accepted the connection or raced it.
    let (got, pid) = run_role(&fx, &victim, &result, "parent-execs", true).await;
    assert_eq!(got, "err PermissionDenied", "parent-execs");
    assert_logged(&exe_changed(pid));
    let (got, pid) = run_role(&fx, &victim, &result, "parent-execs", false).await;
    assert_eq!(
        got, "err PermissionDenied",
        "parent-execs, racing the accept"
    );
    let (changed, held) = (exe_changed(pid), held_by_other(pid));
    assert!(
        logged().contains(&changed) || logged().contains(&held),
        "neither {changed:?} nor {held:?} in the log"
    );
    // Connect, then exec the victim's binary in the same process, which uses the connection.
    let (got, pid) = run_role(&fx, &victim, &result, "self-exec", true).await;
    assert_eq!(got, "err PermissionDenied", "self-exec");
    assert_logged(&exe_changed(pid));
    // Connect, fork, the child execs the victim's binary and uses the inherited connection.
    let (got, pid) = run_role(&fx, &victim, &result, "child-execs", true).await;
    assert_eq!(got, "err PermissionDenied", "child-execs");
    assert_logged(&held_by_other(pid));

    // The same on the HTTP socket: the launcher asks (403), then execs the victim's binary,
    // which asks on the same connection.
    let (got, pid) = run_role_on(&fx.http_socket, &victim, &result, "self-exec-http", false).await;
    assert_eq!(got, "http 403", "self-exec-http");
    assert_logged(&exe_changed(pid));
    assert!(fx.server.exchanges.lock().unwrap().is_empty());
    let got = run_victim_role(&fx.http_socket, &victim, &result, "http-fetch").await;
    assert_eq!(got, "http 200");

    // And the victim's binary is still served afterwards.
    let got = run_role_victim(&fx, &victim, &result).await;
    assert_eq!(got, served);
}

/// The victim's binary connecting to the Workload API itself.
async fn run_role_victim(fx: &Fixture, victim: &Path, result: &Path) -> String {
    run_victim_role(&fx.socket, victim, result, "fetch").await
}

/// The victim's binary connecting to `socket` itself, in `role`.
async fn run_victim_role(socket: &Path, victim: &Path, result: &Path, role: &str) -> String {
    let _ = std::fs::remove_file(result);
    let status = tokio::process::Command::new(victim)
        .args(ROLE_ARGS)
        .env(ROLE, role)
        .env(SOCKET, socket)
        .env(RESULT, result)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(result).unwrap().trim().to_string()
}

/// An open stream is re-attested before every push: once a process running another
/// executable holds the connection, the next push is a `PermissionDenied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_when_another_executable_holds_the_connection() {
    capture_log();
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let hash = mayfly_crypto::hex(&mayfly_crypto::sha256(&exe));
    let me = entry("e-me", "me/by-hash", &[format!("unix:sha256:{hash}")]);
    let fx = Fixture::start(vec![me], |c| c.sync_interval = Duration::from_millis(100)).await;
    let stream = tokio::net::UnixStream::connect(&fx.socket).await.unwrap();
    // A second handle on our end of the connection, to hand to another process later.
    let std_stream = stream.into_std().unwrap();
    let spare = std_stream.try_clone().unwrap();
    let stream = tokio::net::UnixStream::from_std(std_stream).unwrap();
    let once = Arc::new(Mutex::new(Some(stream)));
    let channel = tonic::transport::Endpoint::try_from("http://agent.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let taken = once.lock().unwrap().take();
            async move {
                let stream = taken.ok_or_else(|| std::io::Error::other("used once"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut req = tonic::Request::new(mayfly_agent::proto::X509BundlesRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut pushes = client.fetch_x509_bundles(req).await.unwrap().into_inner();
    let first = within("first push", pushes.message()).await.unwrap();
    assert!(first.is_some());

    // `sleep` now holds the connection too; then the bundle changes.
    let mut other = std::process::Command::new("sleep")
        .arg("600")
        .stdin(Stdio::from(OwnedFd::from(spare)))
        .spawn()
        .unwrap();
    fx.server.add_authority();
    let next = within("the push after the change", pushes.message()).await;
    other.kill().unwrap();
    other.wait().unwrap();
    let status = next.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let me = std::process::id();
    assert_logged(&format!("{} {}", held_by_other(me), other.id()));
}
