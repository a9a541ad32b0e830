//! `mayfly scan` through the real binary: trees, git history (real `git`), image tarballs
//! (built here with Python's tarfile), stdin and .gz, reports, baselines, exit codes, and
//! `--to-debt` into a real SQLite inventory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{TEST_MASTER_KEY, mayfly_bin, run_cli, write_config};

/// Random-looking, format-valid AWS access key ids (no checksum in that format).
fn aws_key(seed: u32) -> String {
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let tail: String = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(B32[(x % 32) as usize])
        })
        .collect();
    format!("AKIA{tail}")
}

fn scan_json(dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["scan", "--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(dir, &all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v, err)
}

fn findings(v: &Value) -> Vec<Value> {
    v["findings"].as_array().unwrap().clone()
}

fn git(dir: &Path, args: &[&str], date: &str) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.test"])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_secret_added_then_removed_is_found_in_history_with_the_adding_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], "2026-01-01T00:00:00Z");
    std::fs::write(repo.join("README.md"), "# app\n").unwrap();
    git(&repo, &["add", "."], "2026-01-01T00:00:00Z");
    git(&repo, &["commit", "-qm", "init"], "2026-01-01T00:00:00Z");
    let key = aws_key(1);
    std::fs::write(
        repo.join("settings.py"),
        format!("DEBUG = True\nAWS_KEY = \"{key}\"\n"),
    )
    .unwrap();
    git(&repo, &["add", "."], "2026-01-02T00:00:00Z");
    git(
        &repo,
        &["commit", "-qm", "add settings"],
        "2026-01-02T00:00:00Z",
    );
    let adding = git(&repo, &["rev-parse", "HEAD"], "2026-01-02T00:00:00Z");
    std::fs::write(
        repo.join("settings.py"),
        "DEBUG = True\nAWS_KEY = os.environ[\"AWS_KEY\"]\n",
    )
    .unwrap();
    git(
        &repo,
        &["commit", "-qam", "read the key from the environment"],
        "2026-01-03T00:00:00Z",
    );
    // A second key only on a side branch.
    git(
        &repo,
        &["checkout", "-q", "-b", "side"],
        "2026-01-04T00:00:00Z",
    );
    let key2 = aws_key(2);
    std::fs::write(repo.join("deploy.sh"), format!("export AWS_KEY={key2}\n")).unwrap();
    git(&repo, &["add", "."], "2026-01-04T00:00:00Z");
    git(&repo, &["commit", "-qm", "deploy"], "2026-01-04T00:00:00Z");
    let side = git(&repo, &["rev-parse", "HEAD"], "2026-01-04T00:00:00Z");
    git(&repo, &["checkout", "-q", "main"], "2026-01-05T00:00:00Z");

    // The working tree is clean: a tree scan finds nothing; the history scan finds both.
    let (code, v, err) = scan_json(&repo, &["."]);
    assert_eq!(code, 0, "{err} {v}");
    let (code, v, err) = scan_json(tmp.path(), &["--git", "repo"]);
    assert_eq!(code, 1, "{err}");
    let mut f = findings(&v);
    f.sort_by_key(|x| x["path"].as_str().unwrap().to_string());
    assert_eq!(f.len(), 2, "{v}");
    assert_eq!(f[0]["path"], "deploy.sh");
    assert_eq!(f[0]["commit"], side.as_str());
    assert_eq!(f[0]["line"], 1);
    assert_eq!(f[1]["path"], "settings.py");
    assert_eq!(f[1]["commit"], adding.as_str());
    assert_eq!(f[1]["line"], 2);
    assert_eq!(f[1]["rule"], "aws-access-key-id");
    let text = v.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&key2),
        "a secret reached the report"
    );
}

/// Build an OCI image layout tarball: layer 1 (gzip) adds `app/.env` with a key, layer 2
/// (uncompressed) deletes it with a whiteout. Prints layer 1's digest.
const BUILD_IMAGE: &str = r#"
import hashlib, io, json, sys, tarfile, gzip
out, secret = sys.argv[1], sys.argv[2]
def tar_bytes(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in entries:
            i = tarfile.TarInfo(name); i.size = len(data); i.mtime = 0
            t.addfile(i, io.BytesIO(data))
    return b.getvalue()
l1 = gzip.compress(tar_bytes([("app/.env", f"PORT=8080\nAWS_ACCESS_KEY_ID={secret}\n".encode()),
                              ("app/main.py", b"print('hi')\n")]), mtime=0)
l2 = tar_bytes([("app/.wh..env", b""), ("app/VERSION", b"2\n")])
blobs = {}
def blob(data):
    d = hashlib.sha256(data).hexdigest(); blobs[d] = data; return d
config = json.dumps({"architecture": "amd64", "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Env": ["PATH=/usr/bin"]}}).encode()
cd, d1, d2 = blob(config), blob(l1), blob(l2)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d1, "size": len(l1)},
               {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + d2, "size": len(l2)}]}).encode()
md = blob(manifest)
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": len(manifest)}]}).encode()
with tarfile.open(out, "w") as t:
    def add(name, data):
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
    for d, data in blobs.items():
        add("blobs/sha256/" + d, data)
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", index)
print("sha256:" + d1)
"#;

#[test]
fn a_secret_in_a_file_a_later_layer_deletes_is_found_with_its_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let key = aws_key(3);
    let out = Command::new("python3")
        .args(["-c", BUILD_IMAGE, "img.tar", &key])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layer1 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, v, err) = scan_json(tmp.path(), &["--image", "img.tar"]);
    assert_eq!(code, 1, "{err} {v}");
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0]["path"], "app/.env");
    assert_eq!(f[0]["layer"], layer1.as_str());
    assert_eq!(f[0]["line"], 2);
    assert!(!v.to_string().contains(&key));
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn reports_baselines_allow_comments_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (k1, k2, k3) = (aws_key(10), aws_key(11), aws_key(12));
    write(d, "src/a.py", &format!("KEY = \"{k1}\"\n"));
    write(
        d,
        "src/b.py",
        &format!("KEY = \"{k2}\"  # mayfly:allow: test fixture\n"),
    );
    write(d, "README.md", "nothing here\n");

    // Clean tree → 0; findings → 1; unreadable input → 2.
    let (code, v, _) = scan_json(d, &["README.md"]);
    assert_eq!((code, findings(&v).len()), (0, 0));
    let (code, v, _) = scan_json(d, &["src"]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v).len(), 1, "mayfly:allow suppresses b.py: {v}");
    assert_eq!(findings(&v)[0]["path"], "src/a.py");
    let (code, _, err) = run_cli(d, &["scan", "no-such-dir"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
    let (code, _, err) = run_cli(d, &["scan", "--baseline", "README.md", "src"]);
    assert_eq!(code, 2);
    assert!(err.contains("baseline"), "{err}");

    // A baseline written by --format json suppresses the known finding, not a new one.
    let (_, out, _) = run_cli(d, &["scan", "--format", "json", "src"]);
    std::fs::write(d.join("baseline.json"), out).unwrap();
    let (code, v, _) = scan_json(d, &["--baseline", "baseline.json", "src"]);
    assert_eq!((code, findings(&v).len()), (0, 0), "{v}");
    assert_eq!(v["stats"]["baseline_suppressed"], 1);
    write(d, "src/c.py", &format!("KEY = \"{k3}\"\n"));
    let (code, v, _) = scan_json(d, &["--baseline", "baseline.json", "src"]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v).len(), 1);
    assert_eq!(findings(&v)[0]["path"], "src/c.py");

    // SARIF 2.1.0 with the rule, the location and the fingerprint.
    let (code, out, _) = run_cli(d, &["scan", "--format", "sarif", "src/a.py"]);
    assert_eq!(code, 1);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let r = &s["runs"][0]["results"][0];
    assert_eq!(r["ruleId"], "aws-access-key-id");
    let loc = &r["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "src/a.py");
    assert_eq!(loc["region"]["startLine"], 1);
    assert_eq!(loc["region"]["startColumn"], 8);
    let idx = r["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(
        s["runs"][0]["tool"]["driver"]["rules"][idx]["id"],
        "aws-access-key-id"
    );
    assert!(r["partialFingerprints"]["mayfly/v1"].is_string());

    // Human report: masked, never the key; --reveal refuses a pipe.
    let (_, out, _) = run_cli(d, &["scan", "src"]);
    assert!(
        out.contains("src/a.py:1:8") && out.contains("AKIA…(20 chars)"),
        "{out}"
    );
    for k in [&k1, &k2, &k3] {
        assert!(!out.contains(k.as_str()));
    }
    let (code, out, err) = run_cli(d, &["scan", "--reveal", "src"]);
    assert_eq!(code, 2);
    assert!(out.is_empty() && err.contains("terminal"), "{err}");
}

#[test]
fn stdin_gzip_members_and_ignored_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = aws_key(20);
    // A build log on standard input.
    let mut child = Command::new(mayfly_bin())
        .args(["scan", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for i in 0..20_000 {
        log.push_str(&format!("step {i}: ok\n"));
    }
    log.push_str(&format!("+ export AWS_ACCESS_KEY_ID={key}\n"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(log.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(findings(&v)[0]["path"], "-");
    assert_eq!(findings(&v)[0]["line"], 20_001);

    // A rotated, gzipped log; an ignored file is skipped unless --no-ignore.
    let gz = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gz = gz;
    gz.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
    let bytes = gz.wait_with_output().unwrap().stdout;
    std::fs::create_dir(d.join("logs")).unwrap();
    std::fs::write(d.join("logs/build.log.1.gz"), bytes).unwrap();
    write(d, ".gitignore", "secret.txt\n");
    write(d, "secret.txt", &format!("{}\n", aws_key(21)));
    let (code, v, _) = scan_json(d, &["."]);
    assert_eq!(code, 1);
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0]["path"], "logs/build.log.1.gz");
    assert_eq!(f[0]["line"], 20_001);
    let (_, v, _) = scan_json(d, &["--no-ignore", "."]);
    assert_eq!(findings(&v).len(), 2, "{v}");
}

#[test]
fn findings_enter_the_key_debt_inventory_by_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = write_config(d, "");
    let cfg = cfg.to_str().unwrap();
    let (k1, k2) = (aws_key(30), aws_key(31));
    write(d, "src/a.env", &format!("AWS_ACCESS_KEY_ID={k1}\n"));
    write(
        d,
        "src/b.env",
        &format!("X=1\nAWS_ACCESS_KEY_ID={k2}\nAWS_ACCESS_KEY_ID={k1}\n"),
    );
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(90 * 86_400),
    )
    .to_string()[..10]
        .to_string();
    let args = [
        "scan",
        "src",
        "--to-debt",
        "--owner",
        "payments-team",
        "--expires",
        &expires,
        "-c",
        cfg,
    ];
    let (code, _, err) = run_cli(d, &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 added, 0 already there"), "{err}");
    let (code, out, err) = run_cli(d, &["debt", "list", "--json", "-c", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&k1) && !out.contains(&k2));
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2);
    let sha = |k: &str| {
        let mut h = mayfly_crypto::Sha256::new();
        h.update(k.as_bytes());
        mayfly_crypto::hex(&h.finish())
    };
    let e1 = list
        .iter()
        .find(|e| e["fingerprint"] == sha(&k1).as_str())
        .unwrap();
    assert_eq!(e1["owner"], "payments-team");
    assert_eq!(e1["found_at"], "src/a.env:1");
    assert!(list.iter().any(|e| e["fingerprint"] == sha(&k2).as_str()));
    // Again: nothing new; the audit log records the additions.
    let (code, _, err) = run_cli(d, &args);
    assert_eq!(code, 1);
    assert!(err.contains("0 added, 2 already there"), "{err}");
    let (code, out, _) = run_cli(d, &["audit", "tail", "-c", cfg, "-n", "10"]);
    assert_eq!(code, 0);
    assert!(out.contains("found at src/a.env:1"), "{out}");
    let _ = TEST_MASTER_KEY;
}

/// The labelled corpus (`bench/scan/corpus.py`, synthetic format-valid secrets of every rule
/// type and hard negatives): recall and precision at least 0.95 overall, and no type below 0.8.
#[test]
fn the_labelled_corpus_is_found_with_high_recall_and_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scan/corpus.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--out", corpus.to_str().unwrap(), "--seed", "7"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus.join("labels.json")).unwrap())
            .unwrap();
    let (code, v, err) = scan_json(&corpus, &["--no-ignore", "."]);
    assert_eq!(code, 1, "{err}");
    let found: Vec<(String, u64)> = findings(&v)
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    let positives = labels["positives"].as_array().unwrap();
    let covers = |p: &Value, file: &str, line: u64| {
        p["file"] == file
            && (p["line"].as_u64().unwrap()
                ..=p["end_line"]
                    .as_u64()
                    .unwrap_or(p["line"].as_u64().unwrap()))
                .contains(&line)
    };
    let true_pos = found
        .iter()
        .filter(|(f, l)| positives.iter().any(|p| covers(p, f, *l)))
        .count();
    let mut per_type: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for p in positives {
        let hit = found.iter().any(|(f, l)| covers(p, f, *l));
        let e = per_type
            .entry(p["type"].as_str().unwrap().to_string())
            .or_default();
        e.0 += u32::from(hit);
        e.1 += 1;
    }
    let recall = per_type.values().map(|x| x.0).sum::<u32>() as f64 / positives.len() as f64;
    let precision = true_pos as f64 / found.len().max(1) as f64;
    assert!(per_type.len() >= 60, "{} types", per_type.len());
    assert!(
        recall >= 0.95 && precision >= 0.95,
        "recall {recall}, precision {precision}"
    );
    for (t, (hit, all)) in &per_type {
        assert!(f64::from(*hit) / f64::from(*all) >= 0.8, "{t}: {hit}/{all}");
    }
}

#[test]
fn user_rules_add_to_and_switch_off_built_in_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "app.cfg",
        &format!(
            "internal = acme_7f3k9q2m5x8v1b4n6z0c\naws = {}\n",
            aws_key(40)
        ),
    );
    write(
        d,
        "ours.toml",
        "disable = [\"aws-access-key-id\"]\n[[rule]]\nid = \"acme-key\"\ndescription = \"ACME key\"\nkeywords_exact = [\"acme_\"]\nregex = '\\b(?P<s>acme_[a-z0-9]{20})\\b'\n",
    );
    let (code, v, err) = scan_json(d, &["--rules", "ours.toml", "app.cfg"]);
    assert_eq!(code, 1, "{err}");
    let rules: Vec<_> = findings(&v).iter().map(|f| f["rule"].clone()).collect();
    assert_eq!(rules, vec!["acme-key"]);
    write(
        d,
        "bad.toml",
        "[[rule]]\nid = \"x\"\ndescription = \"d\"\nregex = \"(\"\nkeywords = [\"ab\"]\n",
    );
    let (code, out, err) = run_cli(d, &["scan", "--rules", "bad.toml", "app.cfg"]);
    assert_eq!(code, 2);
    assert!(
        out.is_empty() && err.contains("bad.toml") && err.contains("does not compile"),
        "{err}"
    );
}
