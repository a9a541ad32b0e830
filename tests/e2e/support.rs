//! Start the real `mayfly` binary as a user would, on 127.0.0.1 port 0, in a temporary data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path to the `mayfly` binary built for this test run.
pub fn mayfly_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mayfly"))
}

/// A master key for tests (32 bytes, base64); real deployments generate their own.
pub const TEST_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Run `mayfly ARGS` to completion in `dir`; returns (status code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(mayfly_bin())
        .args(args)
        .current_dir(dir)
        .env("MAYFLY_MASTER_KEY", TEST_MASTER_KEY)
        .output()
        .expect("run mayfly");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Generate a client key pair with `mayfly keygen`; returns (private JWK path, public JWKS path).
pub fn keygen(dir: &Path, name: &str, alg: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    let (code, _o, e) = run_cli(
        dir,
        &[
            "keygen",
            "--alg",
            alg,
            "--kid",
            name,
            "--out",
            prefix.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "keygen failed: {e}");
    (
        dir.join(format!("{name}.private.jwk.json")),
        dir.join(format!("{name}.jwks.json")),
    )
}

/// A running `mayfly server` child process; killed on drop.
pub struct ServerProcess {
    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    /// The child process.
    pub child: Child,
    /// Everything the server wrote to stdout (audit JSON lines).
    pub stdout: Arc<Mutex<String>>,
    /// Everything the server wrote to stderr (logs).
    pub stderr: Arc<Mutex<String>>,
}

pub fn drain(
    r: impl std::io::Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    tx: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            let mut b = buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
}

impl ServerProcess {
    /// Start `mayfly server --config CONFIG` in `dir` with extra environment; waits until it listens.
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(mayfly_bin());
        cmd.args(["server", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .env("MAYFLY_MASTER_KEY", TEST_MASTER_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mayfly server");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        drain(child.stdout.take().unwrap(), stdout.clone(), None);
        drain(child.stderr.take().unwrap(), stderr.clone(), Some(tx));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("listening on ") {
                        let url = line[i + "listening on ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .trim_end_matches('/')
                            .to_string();
                        return ServerProcess {
                            issuer: url,
                            child,
                            stdout,
                            stderr,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("server did not start: {}", stderr.lock().unwrap());
                }
            }
        }
    }

    /// SIGKILL the server and wait for it to die.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Write a config file for one client into `dir`; `listen` on port 0, issuer derived from it.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("mayfly.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}
