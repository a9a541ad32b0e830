//! The operator CLI against a real data directory and a real server.

use std::os::unix::fs::PermissionsExt;

use crate::support::{ServerProcess, keygen, run_cli, write_config};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn embedded_default_creates_private_data_dir_and_prints_quickstart() {
    let dir = tempfile::tempdir().unwrap();
    // Only the port is overridden, so the test cannot collide with anything on 8080.
    let mut cmd = std::process::Command::new(crate::support::mayfly_bin());
    cmd.arg("server")
        .current_dir(dir.path())
        .env_remove("MAYFLY_MASTER_KEY")
        .env("MAYFLY_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = String::new();
    while let Some(Ok(l)) = lines.next() {
        seen.push_str(&l);
        seen.push('\n');
        if l.contains("mayfly token inspect") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("listening on http://127.0.0.1:"), "{seen}");
    assert!(seen.contains("quickstart"), "{seen}");
    assert!(
        seen.contains("master key"),
        "warns about the generated master key: {seen}"
    );
    let data = dir.path().join("mayfly-data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("master.key")), 0o600);
    assert!(data.join("mayfly.db").exists());
}

#[test]
fn config_check_names_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "[tokens]\ndefault_ttl = \"2m\"\n");
    let (code, out, err) = run_cli(dir.path(), &["config", "check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tokens]\ndefault_ttl = \"five minutes\"\n").unwrap();
    let (code, _, err) = run_cli(dir.path(), &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml") && err.contains("tokens.default_ttl") && err.contains("fix:"),
        "{err}"
    );

    std::fs::write(&bad, "[tokens]\ndefault_ttl = \"5m\"\nsurprise = 1\n").unwrap();
    let (code, _, err) = run_cli(dir.path(), &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml") && err.contains("surprise"),
        "{err}"
    );

    std::fs::write(
        &bad,
        "[[clients]]\nid = \"a\"\njwks_file = \"missing.json\"\naudiences = [\"x\"]\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("clients[0].jwks_file") && err.contains("missing.json"),
        "{err}"
    );
}

#[tokio::test]
async fn keygen_clients_tokens_and_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (private, public) = keygen(d, "w1", "ES256");
    assert_eq!(mode(&private), 0o600);
    let config = write_config(d, "");
    let cfg = config.to_str().unwrap();

    let (code, out, err) = run_cli(
        d,
        &[
            "client",
            "add",
            "--config",
            cfg,
            "--id",
            "w1",
            "--jwks-file",
            public.to_str().unwrap(),
            "--audience",
            "https://api.example.test",
            "--scope",
            "read",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_cli(
        d,
        &[
            "client",
            "add",
            "--config",
            cfg,
            "--id",
            "w1",
            "--jwks-file",
            public.to_str().unwrap(),
            "--audience",
            "x",
        ],
    );
    assert_eq!(code, 1, "duplicate id refused");
    assert!(err.contains("already exists"), "{err}");
    // A private JWK is not accepted as a registration.
    let (code, _, _) = run_cli(
        d,
        &[
            "client",
            "add",
            "--config",
            cfg,
            "--id",
            "w2",
            "--jwks-file",
            private.to_str().unwrap(),
            "--audience",
            "x",
        ],
    );
    assert_eq!(code, 1);

    let server = ServerProcess::start(d, &config, &[]);
    let iss = server.issuer.clone();
    let (code, token, err) = run_cli(
        d,
        &[
            "token",
            "get",
            "--issuer",
            &iss,
            "--client-id",
            "w1",
            "--key",
            private.to_str().unwrap(),
            "--audience",
            "https://api.example.test",
            "--scope",
            "read",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let (code, out, err) = run_cli(
        d,
        &[
            "token",
            "inspect",
            "--issuer",
            &iss,
            "--audience",
            "https://api.example.test",
            &token,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"client_id\": \"w1\"") && err.contains("expires in"),
        "{out}{err}"
    );
    let (code, _, err) = run_cli(
        d,
        &[
            "token",
            "get",
            "--issuer",
            &iss,
            "--client-id",
            "w1",
            "--key",
            private.to_str().unwrap(),
            "--audience",
            "https://api.example.test",
            "--scope",
            "write",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid_scope"), "{err}");
    let kid_before =
        crate::fixture::peek(&format!("x.{}", token.split('.').next().unwrap()))["kid"]
            .as_str()
            .unwrap()
            .to_string();

    // Rotation: refused while the next key is younger than the JWKS cache lifetime, forced here.
    let (code, _, err) = run_cli(d, &["keys", "rotate", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
    let (code, out, err) = run_cli(d, &["keys", "rotate", "--config", cfg, "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, list, _) = run_cli(d, &["keys", "list", "--config", cfg]);
    let current = list
        .lines()
        .find(|l| l.contains("current"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_ne!(current, kid_before);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&kid_before) && l.contains("retired")),
        "{list}"
    );
    drop(server);
    let server = ServerProcess::start(d, &config, &[]);
    let (_, token2, _) = run_cli(
        d,
        &[
            "token",
            "get",
            "--issuer",
            &server.issuer,
            "--client-id",
            "w1",
            "--key",
            private.to_str().unwrap(),
            "--audience",
            "https://api.example.test",
        ],
    );
    let kid_after =
        crate::fixture::peek(&format!("x.{}", token2.trim().split('.').next().unwrap()))["kid"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(kid_after, current, "the promoted key signs");

    let (code, out, _) = run_cli(d, &["client", "list", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(out.contains("w1"));
    let (code, _, _) = run_cli(d, &["client", "remove", "--config", cfg, "w1"]);
    assert_eq!(code, 0);
    let (code, _, _) = run_cli(d, &["client", "remove", "--config", cfg, "w1"]);
    assert_eq!(code, 1);
    let (code, out, _) = run_cli(d, &["audit", "verify", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    let (_, tail, _) = run_cli(d, &["audit", "tail", "--config", cfg, "-n", "50"]);
    assert!(
        tail.contains("client_removed") && tail.contains("manual_key_rescheduled"),
        "{tail}"
    );
}
