//! `mayfly debt`: the key-debt inventory through the real binary and a real SQLite store. Keys
//! go in on standard input or through a named variable, never argv, and never come back out.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{TEST_MASTER_KEY, mayfly_bin, run_cli, write_config};

const KEY: &str = "sk_live_51HxQ2eLkdIwHu7ixMayflyTestKey0001";
const NEW_KEY: &str = "sk_live_51HxQ2eLkdIwHu7ixMayflyTestKey0002";

/// Run `mayfly` with `stdin` piped in and extra environment.
fn run_with_stdin(
    dir: &Path,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut child = Command::new(mayfly_bin())
        .args(args)
        .current_dir(dir)
        .env("MAYFLY_MASTER_KEY", TEST_MASTER_KEY)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list(dir: &Path, cfg: &str) -> Vec<Value> {
    let (code, out, err) = run_cli(dir, &["debt", "list", "--json", "-c", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(KEY) && !out.contains(NEW_KEY));
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn days_from_now(days: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

#[test]
fn the_inventory_holds_owners_expiry_and_never_shows_a_key() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cfg = write_config(dir, "");
    let cfg = cfg.to_str().unwrap();
    let far = days_from_now(120);
    let soon = days_from_now(20);

    // From standard input (a trailing newline is not part of the key).
    let (code, out, err) = run_with_stdin(
        dir,
        &[
            "debt",
            "add",
            "-c",
            cfg,
            "--name",
            "stripe",
            "--owner",
            "payments-team",
            "--expires",
            &far,
            "--route",
            "stripe",
        ],
        &format!("{KEY}\n"),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("added `stripe` (wrapped"), "{out}");
    // From a named variable.
    let (code, out, err) = run_with_stdin(
        dir,
        &[
            "debt",
            "add",
            "-c",
            cfg,
            "--name",
            "sendgrid",
            "--owner",
            "growth",
            "--expires",
            &soon,
            "--key-env",
            "SENDGRID_KEY",
        ],
        "",
        &[("SENDGRID_KEY", "SG.fake-key-for-tests.abcdef")],
    );
    assert_eq!(code, 0, "{out}{err}");
    // A key the scanner found, by fingerprint only.
    let fp = mayfly_crypto::hex(&mayfly_crypto::sha256(b"AKIAIOSFODNN7FAKEKEY"));
    let (code, out, err) = run_cli(
        dir,
        &[
            "debt",
            "add",
            "-c",
            cfg,
            "--name",
            "aws-in-repo",
            "--owner",
            "platform",
            "--expires",
            &far,
            "--fingerprint",
            &fp,
            "--found-at",
            "repo@1a2b3c:deploy/env.sh:4",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    // Refusals that say what to do.
    for (args, stdin, want) in [
        (
            vec!["--name", "x", "--owner", "o", "--expires", "2027-02-30"],
            KEY,
            "is not a date",
        ),
        (
            vec!["--name", "x", "--owner", "o", "--expires", "2001-01-01"],
            KEY,
            "in the past",
        ),
        (
            vec!["--name", "x", "--owner", "o", "--expires", far.as_str()],
            "",
            "the key is empty",
        ),
        (
            vec![
                "--name",
                "stripe",
                "--owner",
                "o",
                "--expires",
                far.as_str(),
            ],
            KEY,
            "exists",
        ),
        (
            vec!["--name", "x y", "--owner", "o", "--expires", far.as_str()],
            KEY,
            "not an entry name",
        ),
    ] {
        let mut a = vec!["debt", "add", "-c", cfg];
        a.extend(args);
        let (code, out, err) = run_with_stdin(dir, &a, stdin, &[]);
        assert_eq!(code, 1, "{a:?}: {out}");
        assert!(err.contains(want), "{a:?}: {err}");
        assert!(!err.contains(KEY) && !out.contains(KEY));
    }
    // --expires is required: every key has an end.
    let (code, _, err) = run_with_stdin(
        dir,
        &["debt", "add", "-c", cfg, "--name", "y", "--owner", "o"],
        KEY,
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--expires"), "{err}");

    // Sorted by days left; the key itself is in neither output nor the database file in clear.
    let l = list(dir, cfg);
    let names: Vec<&str> = l.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sendgrid", "aws-in-repo", "stripe"]);
    assert_eq!(l[0]["days_left"], 20);
    assert_eq!(l[0]["owner"], "growth");
    assert_eq!(l[1]["wrapped"], false);
    assert_eq!(l[1]["fingerprint"], fp.as_str());
    assert_eq!(l[1]["found_at"], "repo@1a2b3c:deploy/env.sh:4");
    assert_eq!(l[2]["wrapped"], true);
    assert_eq!(l[2]["routes"][0], "stripe");
    assert_eq!(l[2]["expires"], far.as_str());
    let db = std::fs::read(dir.join("data/mayfly.db")).unwrap();
    assert!(
        !db.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "the key is sealed at rest"
    );
    let (code, table, _) = run_cli(dir, &["debt", "list", "-c", cfg]);
    assert_eq!(code, 0);
    assert!(
        table.contains("payments-team") && table.contains("20 (!)"),
        "{table}"
    );
    assert!(!table.contains(KEY));

    // Rotate: the same key again is refused; a new one bumps the version.
    let (code, _, err) = run_with_stdin(dir, &["debt", "rotate", "stripe", "-c", cfg], KEY, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds"), "{err}");
    let (code, out, err) =
        run_with_stdin(dir, &["debt", "rotate", "stripe", "-c", cfg], NEW_KEY, &[]);
    assert_eq!(code, 0, "{out}{err}");

    // Extend: a reason is required, and the move is audited with it.
    let later = days_from_now(200);
    let (code, _, err) = run_cli(
        dir,
        &[
            "debt", "extend", "sendgrid", "-c", cfg, "--until", &later, "--reason", "",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--reason"), "{err}");
    let (code, out, err) = run_cli(
        dir,
        &[
            "debt",
            "extend",
            "sendgrid",
            "-c",
            cfg,
            "--until",
            &later,
            "--reason",
            "vendor contract runs to Q3",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let l = list(dir, cfg);
    let sg = l.iter().find(|e| e["name"] == "sendgrid").unwrap();
    assert_eq!(sg["days_left"], 200);
    assert_eq!(sg["extended_reason"], "vendor contract runs to Q3");

    let (code, out, _) = run_cli(dir, &["audit", "tail", "-n", "10", "-c", cfg]);
    assert_eq!(code, 0);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let debt: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "debt_change")
        .collect();
    assert_eq!(debt.len(), 5, "3 adds, a rotation, an extension: {out}");
    let ext = debt.last().unwrap();
    assert_eq!(ext["route"], "sendgrid");
    assert!(
        ext["reason"]
            .as_str()
            .unwrap()
            .ends_with(&format!("to {later}: vendor contract runs to Q3")),
        "{ext}"
    );
    assert!(!out.contains(KEY) && !out.contains(NEW_KEY));
    let (code, out, err) = run_cli(dir, &["audit", "verify", "-c", cfg]);
    assert_eq!(code, 0, "{out}{err}");

    // Remove.
    let (code, _, _) = run_cli(dir, &["debt", "remove", "aws-in-repo", "-c", cfg]);
    assert_eq!(code, 0);
    let (code, _, err) = run_cli(dir, &["debt", "remove", "aws-in-repo", "-c", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("no entry"), "{err}");
    assert_eq!(list(dir, cfg).len(), 2);
}
