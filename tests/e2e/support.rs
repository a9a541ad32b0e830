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

pub use mayfly_testkit::TEST_MASTER_KEY;

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

/// A `mayfly` subcommand started by a test, with its output collected.
pub struct Spawned {
    /// The URL printed after the marker.
    pub url: String,
    /// The child process.
    pub child: Child,
    /// Everything it wrote to stdout.
    pub stdout: Arc<Mutex<String>>,
    /// Everything it wrote to stderr.
    pub stderr: Arc<Mutex<String>>,
}

impl Spawned {
    /// Start `mayfly SUBCOMMAND --config CONFIG` in `dir` with extra environment; waits (60 s at
    /// most) for a stderr line holding `marker` followed by a URL. With `cpus` (a `taskset -c`
    /// list), it runs on those CPUs only: how a sidecar with one core of its own runs.
    pub fn until_listening_on(
        cpus: Option<&str>,
        subcommand: &str,
        marker: &str,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Spawned {
        let mut cmd = match cpus {
            None => Command::new(mayfly_bin()),
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(mayfly_bin());
                c
            }
        };
        cmd.args([subcommand, "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .env("MAYFLY_MASTER_KEY", TEST_MASTER_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn mayfly");
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
                    if let Some(i) = line.find(marker) {
                        let url = line[i + marker.len()..]
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .to_string();
                        return Spawned {
                            url,
                            child,
                            stdout,
                            stderr,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mayfly {subcommand} did not start: {}",
                        stderr.lock().unwrap()
                    );
                }
            }
        }
    }
}

impl ServerProcess {
    /// Start `mayfly server --config CONFIG` in `dir` with extra environment; waits until it listens.
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_on(None, dir, config, env)
    }

    /// As [`ServerProcess::start`], on the CPUs in `cpus` (a `taskset -c` list) when given.
    pub fn start_on(
        cpus: Option<&str>,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let s = Spawned::until_listening_on(cpus, "server", "listening on ", dir, config, env);
        ServerProcess {
            issuer: s.url.trim_end_matches('/').to_string(),
            child: s.child,
            stdout: s.stdout,
            stderr: s.stderr,
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
