//! Moving a deployment from the embedded SQLite store to PostgreSQL with `mayfly export` and
//! `mayfly import`, as an operator would: a token issued before the move still verifies against
//! the new server's `/jwks.json` and introspects as active, a revocation made before it still
//! holds, an assertion used before it is still refused, run-time clients still work, and
//! `mayfly audit verify` passes on PostgreSQL.

use std::path::{Path, PathBuf};

use mayfly_crypto::{SigningKey, VerifyingKeys};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, AUD, assert_error, form_urlencode, now};
use crate::support::{ServerProcess, keygen, run_cli};
use mayfly_testkit::{TestDb as Db, free_port};

/// The issuer both servers stand behind (it must not change with the move: it is in every
/// token and every client assertion's audience).
const ISSUER: &str = "http://127.0.0.1:9";

/// A config in `dir` on `port`, with the shared issuer, the client `svc`, and `database` when
/// given (else SQLite in `dir/data`).
fn config(dir: &Path, port: u16, database: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("mayfly.toml");
    let database = database.map_or(String::new(), |u| format!("database = \"{u}\"\n"));
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
issuer = "{ISSUER}"
data_dir = "{}"
{database}
[[clients]]
id = "svc"
jwks_file = "{}"
audiences = ["{AUD}"]
scopes = ["read"]
"#,
            dir.join("data").display(),
            dir.parent().unwrap().join("svc.jwks.json").display()
        ),
    )
    .unwrap();
    path
}

/// The X.509 authorities of the SPIFFE trust bundle (the server's CA), as served.
async fn spiffe_cas(base: &str) -> Vec<Value> {
    let b: Value = reqwest::get(format!("{base}/spiffe/bundle"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cas: Vec<Value> = b["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .cloned()
        .collect();
    assert!(!cas.is_empty(), "{b}");
    cas
}

fn assertion(key: &SigningKey, client: &str) -> String {
    let n = now();
    key.sign_jwt(
        None,
        &json!({"iss": client, "sub": client, "aud": ISSUER, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}),
    )
    .unwrap()
}

async fn post(base: &str, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencode(form))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn token(base: &str, assertion: &str) -> (u16, Value) {
    post(
        base,
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("resource", AUD),
            ("scope", "read"),
        ],
    )
    .await
}

/// `path` (introspect or revoke) for `token`, authenticated as `svc`.
async fn about(base: &str, path: &str, key: &SigningKey, token: &str) -> (u16, Value) {
    let a = assertion(key, "svc");
    post(
        base,
        path,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("token", token),
        ],
    )
    .await
}

async fn jwks(base: &str) -> Value {
    reqwest::get(format!("{base}/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    let mut k: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_moves_from_sqlite_to_postgresql() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let svc = SigningKey::generate(mayfly_crypto::KeyAlg::ES256, Some("svc-key")).unwrap();
    std::fs::write(
        r.join("svc.jwks.json"),
        json!({"keys": [svc.public_jwk()]}).to_string(),
    )
    .unwrap();
    let (rt_private, rt_jwks) = keygen(r, "rt", "EdDSA");
    let rt: SigningKey = SigningKey::from_private_jwk(
        &serde_json::from_str(&std::fs::read_to_string(rt_private).unwrap()).unwrap(),
    )
    .unwrap();

    // Before: the embedded SQLite store, with a run-time client.
    let lite_port = free_port();
    let lite = config(&r.join("sqlite"), lite_port, None);
    let lite = lite.to_str().unwrap();
    let (code, out, err) = run_cli(
        r,
        &[
            "client",
            "add",
            "--config",
            lite,
            "--id",
            "rt",
            "--jwks-file",
            rt_jwks.to_str().unwrap(),
            "--audience",
            AUD,
            "--scope",
            "read",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut before = ServerProcess::start(&r.join("sqlite"), Path::new(lite), &[]);
    let base = format!("http://127.0.0.1:{lite_port}");
    let used = assertion(&svc, "svc");
    let (s, body) = token(&base, &used).await;
    assert_eq!(s, 200, "{body}");
    let kept = body["access_token"].as_str().unwrap().to_string();
    let (s, body) = token(&base, &assertion(&svc, "svc")).await;
    assert_eq!(s, 200, "{body}");
    let revoked = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(about(&base, "/oauth2/revoke", &svc, &revoked).await.0, 200);
    assert_eq!(token(&base, &assertion(&rt, "rt")).await.0, 200);
    let jwks_before = kids(&jwks(&base).await);
    let cas_before = spiffe_cas(&base).await;
    before.kill9();

    // The move.
    let file = r.join("mayfly.export.jsonl");
    let (code, out, err) = run_cli(
        r,
        &["export", "--config", lite, "--out", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 signing keys"), "{out}");
    assert!(out.contains("1 revocations"), "{out}");
    assert!(out.contains("SPIFFE authorities"), "{out}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the export holds the audit log: owner only"
        );
    }
    let db = Db::create("mayfly_move").await;
    let pg_port = free_port();
    let pg = config(&r.join("postgres"), pg_port, Some(&db.url()));
    let pg = pg.to_str().unwrap();
    let (code, out, err) = run_cli(
        r,
        &["import", "--config", pg, "--in", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit chain verified"), "{out}");
    for secret in [
        "sealed_private",
        "postgres://",
        crate::support::TEST_MASTER_KEY,
    ] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
    // Once is all: the target is no longer empty.
    let (code, out, err) = run_cli(
        r,
        &["import", "--config", pg, "--in", file.to_str().unwrap()],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("not empty"), "{err}");
    // The schema is current; migrate says which versions the database has.
    let (code, out, err) = run_cli(r, &["migrate", "--config", pg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("   1  init")
            && out.contains("   3  spiffe")
            && out.contains("   4  key debt"),
        "{out}"
    );
    assert!(!out.contains("postgres://"), "{out}");

    // After: PostgreSQL, same master key, same issuer.
    let _after = ServerProcess::start(&r.join("postgres"), Path::new(pg), &[]);
    let base = format!("http://127.0.0.1:{pg_port}");
    let set = jwks(&base).await;
    assert_eq!(
        kids(&set),
        jwks_before,
        "the same signing keys, not new ones"
    );
    assert_eq!(
        spiffe_cas(&base).await,
        cas_before,
        "the same SPIFFE CA: SVIDs issued before the move still verify"
    );
    let keys = VerifyingKeys::from_jwks(&set).unwrap();
    let claims = mayfly_client::verify_access_token(&keys, &kept, ISSUER, Some(AUD)).unwrap();
    assert_eq!(claims["client_id"], "svc");
    let (s, body) = about(&base, "/oauth2/introspect", &svc, &kept).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["active"], true, "{body}");
    let (_, body) = about(&base, "/oauth2/introspect", &svc, &revoked).await;
    assert_eq!(body["active"], false, "the revocation moved too: {body}");
    // The assertion spent before the move stays spent.
    assert_error(&token(&base, &used).await, 401, "invalid_client");
    // The run-time client moved, and new tokens are signed with a moved key.
    let (s, body) = token(&base, &assertion(&rt, "rt")).await;
    assert_eq!(s, 200, "{body}");
    let fresh = body["access_token"].as_str().unwrap();
    mayfly_client::verify_access_token(&keys, fresh, ISSUER, Some(AUD)).unwrap();

    let (code, out, err) = run_cli(r, &["audit", "verify", "--config", pg]);
    assert_eq!(code, 0, "{out}{err}");
}
