//! Interop with npm clients nobody here wrote: `openid-client` (discovery, client_credentials with
//! private_key_jwt and RFC 8707 resource, introspection, revocation) and `jose` (RFC 9068 access
//! token verification against `jwks_uri`), and token exchange (RFC 8693) through openid-client's
//! `genericGrantRequest` with a Kubernetes-shaped subject token that jose signs. The JavaScript lives in `interop/node/`, pinned by its
//! `package-lock.json`; this test starts the real server and runs `node --test` there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{ServerProcess, keygen, write_config};

const CLIENT_ID: &str = "node-client";
const AUDIENCE: &str = "https://api.example.test";
const SCOPE: &str = "read write";
const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const INTEROP_SCHEMA: &str = r#"
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String, namespace?: String, service_account?: String,
  repository?: String, repository_owner?: String, ref?: String, environment?: String,
  workflow?: String, actor?: String, project_path?: String, pipeline_source?: String,
  trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read", "write" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
"#;
const INTEROP_POLICY: &str = r#"
@id("payments-api-read")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "k8s" && principal has namespace && principal.namespace == "payments" };
"#;
/// Generous: node's own per-test timeouts (30 s) fire first; this only catches a wedged process.
const NODE_DEADLINE: Duration = Duration::from_secs(180);

fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../interop/node"))
}

/// What a finished (or killed) child left: its status (`None` if killed at the deadline), stdout
/// and stderr.
type Finished = (Option<ExitStatus>, String, String);

/// Run `cmd` to completion (or kill it at `deadline`), collecting stdout and stderr.
pub(crate) fn run_with_deadline(mut cmd: Command, deadline: Duration) -> std::io::Result<Finished> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = |h: std::thread::JoinHandle<String>| {
        h.join()
            .unwrap_or_else(|_| "<reader thread panicked>".into())
    };
    Ok((status, text(out), text(err)))
}

#[test]
fn openid_client_and_jose_interop() {
    let node_dir = interop_dir();
    assert!(
        node_dir.join("node_modules").join("openid-client").is_dir()
            && node_dir.join("node_modules").join("jose").is_dir(),
        "interop/node/node_modules is missing or incomplete ({}): run `npm ci --prefix interop/node` \
         from the repository root first (.ci/run does this)",
        node_dir.display()
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (client_key, client_jwks) = keygen(dir, CLIENT_ID, "ES256");
    let (other_key, _other_jwks) = keygen(dir, "other", "ES256");
    // A Kubernetes-like issuer whose tokens node signs with jose, trusted by the server.
    let (k8s_key, k8s_jwks) = keygen(dir, "k8s-issuer", "ES256");
    std::fs::create_dir(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/schema.cedarschema"), INTEROP_SCHEMA).unwrap();
    std::fs::write(dir.join("policies/workloads.cedar"), INTEROP_POLICY).unwrap();
    let config = write_config(
        dir,
        &format!(
            "trust_domain = \"example.org\"\n[policy]\ndir = \"policies\"\n\
             [[clients]]\nid = \"{CLIENT_ID}\"\njwks_file = \"{}\"\naudiences = [\"{AUDIENCE}\"]\n\
             scopes = [\"read\", \"write\"]\n\
             [[issuers]]\nname = \"k8s\"\nissuer = \"{K8S_ISSUER}\"\npreset = \"kubernetes\"\n\
             jwks_file = \"{}\"\naudiences = [\"mayfly\"]\nalgorithms = [\"ES256\"]\n",
            client_jwks.display(),
            k8s_jwks.display()
        ),
    );
    let server = ServerProcess::start(dir, &config, &[]);

    let mut cmd = Command::new(std::env::var_os("MAYFLY_NODE").unwrap_or_else(|| "node".into()));
    cmd.arg("--test")
        .current_dir(&node_dir)
        .env("MAYFLY_ISSUER", &server.issuer)
        .env("MAYFLY_CLIENT_ID", CLIENT_ID)
        .env("MAYFLY_CLIENT_KEY", &client_key)
        .env("MAYFLY_OTHER_KEY", &other_key)
        .env("MAYFLY_AUDIENCE", AUDIENCE)
        .env("MAYFLY_SCOPE", SCOPE)
        .env("MAYFLY_SUBJECT_ISSUER", K8S_ISSUER)
        .env("MAYFLY_SUBJECT_KEY", &k8s_key)
        .env_remove("NODE_OPTIONS");
    let (status, stdout, stderr) = run_with_deadline(cmd, NODE_DEADLINE)
        .unwrap_or_else(|e| panic!("could not run `node --test` (is Node.js 20+ on PATH?): {e}"));

    let report = |what: &str| {
        format!(
            "{what}\n--- node stdout ---\n{stdout}\n--- node stderr ---\n{stderr}\n\
             --- mayfly server stderr ---\n{}",
            server.stderr.lock().unwrap()
        )
    };
    match status {
        None => panic!(
            "{}",
            report(&format!(
                "`node --test` did not finish within {NODE_DEADLINE:?}"
            ))
        ),
        Some(s) if !s.success() => panic!("{}", report(&format!("`node --test` failed: {s}"))),
        Some(_) => println!("{}", report("`node --test` passed")),
    }
    assert_node_ran_tests(&stdout, &node_dir);
}

/// Guard against a green run that tested nothing (e.g. the test file was renamed away).
fn assert_node_ran_tests(stdout: &str, node_dir: &Path) {
    let passed = stdout
        .lines()
        .filter_map(|l| l.trim_start_matches(['#', 'ℹ', ' ']).strip_prefix("pass "))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .next_back();
    assert!(
        passed.is_some_and(|n| n > 0),
        "`node --test` in {} reported no passing test:\n{stdout}",
        node_dir.display()
    );
}
