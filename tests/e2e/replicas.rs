//! Three `mayfly server` processes sharing one PostgreSQL database (the server on this machine,
//! a fresh database per test), reached through a TCP relay the test can cut: replicas are
//! interchangeable, a replica killed under load loses nothing, and with the database gone every
//! token request is refused (503) while keys and metadata keep being served, until it returns.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::{Value, json};

use crate::fixture::{ASSERTION_TYPE, AUD, assert_error, form_urlencode, now, peek};
use crate::support::{ServerProcess, run_cli};
use mayfly_testkit::pg::parts as pg_parts;
use mayfly_testkit::{TestDb as Db, free_port};

/// The issuer every replica shares (they stand behind one name, as behind a load balancer).
const ISSUER: &str = "http://127.0.0.1:9";

/// A TCP relay to PostgreSQL that the test can take down (new connections are closed at once,
/// open ones are cut) and bring back.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(pg_parts().1).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Relay { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn write_replica_config(dir: &Path, port: u16, db_url: &str) -> std::path::PathBuf {
    let path = dir.join("mayfly.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
issuer = "{ISSUER}"
data_dir = "{}"
database = "{db_url}"
[tokens]
key_rotation = "1m"
[pool]
acquire_timeout = "1s"
[[clients]]
id = "svc"
jwks_file = "{}"
# The issuer too: a token of ours acts as an actor only when it is addressed to us.
audiences = ["{AUD}", "{ISSUER}"]
scopes = ["read"]
"#,
            dir.join("data").display(),
            dir.parent().unwrap().join("svc.jwks.json").display()
        ),
    )
    .unwrap();
    path
}

struct Replica {
    url: String,
    server: ServerProcess,
    _dir: tempfile::TempDir,
}

struct Cluster {
    replicas: Vec<Replica>,
    relay: Relay,
    db: Db,
    key: SigningKey,
    root: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let db = Db::create("mayfly_rep").await;
        let relay = Relay::start().await;
        let root = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
        std::fs::write(
            root.path().join("svc.jwks.json"),
            json!({"keys": [key.public_jwk()]}).to_string(),
        )
        .unwrap();
        let db_url = format!(
            "postgres://{}127.0.0.1:{}/{}",
            pg_parts().0,
            relay.port,
            db.name()
        );
        // All three start at once: migrations and the first keys must not race.
        let mut starting = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir_in(root.path()).unwrap();
            let port = free_port();
            let config = write_replica_config(dir.path(), port, &db_url);
            starting.push(tokio::task::spawn_blocking(move || {
                let server = ServerProcess::start(dir.path(), &config, &[]);
                Replica {
                    url: format!("http://127.0.0.1:{port}"),
                    server,
                    _dir: dir,
                }
            }));
        }
        let mut replicas = Vec::new();
        for s in starting {
            replicas.push(s.await.unwrap());
        }
        Cluster {
            replicas,
            relay,
            db,
            key,
            root,
            http: reqwest::Client::new(),
        }
    }

    fn assertion(&self) -> String {
        let n = now();
        self.key
            .sign_jwt(
                None,
                &json!({"iss": "svc", "sub": "svc", "aud": ISSUER, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}),
            )
            .unwrap()
    }

    async fn post(&self, r: usize, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        post(&self.http, &self.replicas[r].url, path, form).await
    }

    async fn token_at(&self, r: usize, assertion: &str) -> (u16, Value) {
        self.post(
            r,
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

    async fn jwks_kids(&self, r: usize) -> Vec<String> {
        let v: Value = self
            .http
            .get(format!("{}/jwks.json", self.replicas[r].url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut kids: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        kids.sort();
        kids
    }

    /// The newest audit event's body.
    async fn last_event(&self) -> Value {
        let pool = sqlx::PgPool::connect(&self.db.url()).await.unwrap();
        let (body,): (String,) =
            sqlx::query_as("SELECT body FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        serde_json::from_str(&body).unwrap()
    }

    /// The jtis of issued tokens the shared database holds audit events for.
    async fn audited_jtis(&self) -> HashSet<String> {
        let pool = sqlx::PgPool::connect(&self.db.url()).await.unwrap();
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT jti FROM audit_events WHERE kind = 'issue'")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.into_iter().filter_map(|(j,)| j).collect()
    }
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    match http
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencode(form))
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        // A killed replica: no answer at all.
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_postgresql() {
    let c = Cluster::start().await;

    // One key schedule: every replica publishes the same JWKS (current and next key), although
    // all three started together on an empty database.
    let kids = c.jwks_kids(0).await;
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert_eq!(c.jwks_kids(1).await, kids);
    assert_eq!(c.jwks_kids(2).await, kids);

    // A token issued by replica 0 introspects at replica 1 and is revoked at replica 2.
    let (s, body) = c.token_at(0, &c.assertion()).await;
    assert_eq!(s, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    assert!(kids.contains(&peek_kid(&token)));
    let cr = &c;
    let introspect = |r: usize| {
        let (a, t) = (cr.assertion(), token.clone());
        async move {
            cr.post(
                r,
                "/oauth2/introspect",
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", &t),
                ],
            )
            .await
        }
    };
    assert_eq!(introspect(1).await.1["active"], true);
    let a = c.assertion();
    let (s, _) = c
        .post(
            2,
            "/oauth2/revoke",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", &token),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(introspect(0).await.1["active"], false);

    // An assertion used at one replica is refused at another.
    let a = c.assertion();
    assert_eq!(c.token_at(1, &a).await.0, 200);
    assert_error(&c.token_at(2, &a).await, 401, "invalid_client");
    assert_error(&c.token_at(1, &a).await, 401, "invalid_client");

    // A client registered at run time, through the shared database, is known to every replica
    // at once (a replica reloads the registry on an unknown client id, at most once a second).
    let late = SigningKey::generate(KeyAlg::EdDSA, Some("late-key")).unwrap();
    let late_jwks = c.root.path().join("late.jwks.json");
    std::fs::write(&late_jwks, json!({"keys": [late.public_jwk()]}).to_string()).unwrap();
    let (code, out, err) = run_cli(
        c.replicas[0]._dir.path(),
        &[
            "client",
            "add",
            "--config",
            "mayfly.toml",
            "--id",
            "late",
            "--jwks-file",
            late_jwks.to_str().unwrap(),
            "--audience",
            AUD,
            "--scope",
            "read",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    for r in 0..3 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let n = now();
            let a = late
                .sign_jwt(None, &json!({"iss": "late", "sub": "late", "aud": ISSUER, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}))
                .unwrap();
            let (s, body) = c.token_at(r, &a).await;
            if s == 200 {
                assert_eq!(
                    peek(body["access_token"].as_str().unwrap())["client_id"],
                    "late"
                );
                break;
            }
            assert_error(&(s, body), 401, "invalid_client");
            assert!(
                std::time::Instant::now() < deadline,
                "replica {r} never learned the new client"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    // Rotation: one CLI run against the database; every replica signs with the new key within
    // seconds (each picks it up on its next tick).
    // The published next key becomes the signing key.
    let signing = peek_kid(&token);
    let new_kid = kids.iter().find(|k| **k != signing).unwrap().clone();
    let cli_dir = c.replicas[0]._dir.path();
    let (code, out, err) = run_cli(
        cli_dir,
        &["keys", "rotate", "--force", "--config", "mayfly.toml"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut pending: HashSet<usize> = (0..3).collect();
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "replicas {pending:?} still sign with the old key"
        );
        for r in pending.clone() {
            let (s, body) = c.token_at(r, &c.assertion()).await;
            assert_eq!(s, 200, "{body}");
            if peek_kid(body["access_token"].as_str().unwrap()) == new_kid {
                pending.remove(&r);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let kids = c.jwks_kids(0).await;
    assert_eq!(c.jwks_kids(1).await, kids);
    assert_eq!(c.jwks_kids(2).await, kids);

    // Load on all three; replica 2 is killed -9 in the middle. The others keep serving, and
    // every token a client received has its audit event.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (http, base, received, stop) = (
            c.http.clone(),
            c.replicas[w % 3].url.clone(),
            received.clone(),
            stop.clone(),
        );
        let key: Value = serde_json::from_str(&c.key.to_private_jwk().unwrap()).unwrap();
        workers.push(tokio::spawn(async move {
            let key = SigningKey::from_private_jwk(&key).unwrap();
            let mut ok = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let n = now();
                let a = key
                    .sign_jwt(None, &json!({"iss": "svc", "sub": "svc", "aud": ISSUER, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60}))
                    .unwrap();
                let (s, body) = post(
                    &http,
                    &base,
                    "/oauth2/token",
                    &[
                        ("grant_type", "client_credentials"),
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", &a),
                        ("resource", AUD),
                    ],
                )
                .await;
                if s == 200 {
                    ok += 1;
                    received
                        .lock()
                        .unwrap()
                        .push(peek(body["access_token"].as_str().unwrap())["jti"].as_str().unwrap().to_string());
                }
            }
            ok
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let mut victim = c.replicas.into_iter();
    let (r0, r1, mut r2) = (
        victim.next().unwrap(),
        victim.next().unwrap(),
        victim.next().unwrap(),
    );
    r2.server.kill9();
    let at_kill = received.lock().unwrap().len();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(w.await.unwrap());
    }
    let got: Vec<String> = received.lock().unwrap().clone();
    assert!(got.len() > at_kill, "the surviving replicas kept issuing");
    let c = Cluster {
        replicas: vec![r0, r1],
        ..c
    };
    let audited = c.audited_jtis().await;
    let missing: Vec<&String> = got.iter().filter(|j| !audited.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "tokens without audit events: {missing:?}"
    );

    // The database becomes unreachable: token requests are refused with 503 while it is gone,
    // keys and metadata are still served, and issuance resumes by itself when it returns.
    c.relay.down();
    let got = c.token_at(0, &c.assertion()).await;
    assert_error(&got, 503, "temporarily_unavailable");
    let got = c.token_at(1, &c.assertion()).await;
    assert_error(&got, 503, "temporarily_unavailable");
    assert_eq!(c.jwks_kids(0).await, kids);
    let md = c
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            c.replicas[1].url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(md.status(), 200);
    let ready = c
        .http
        .get(format!("{}/readyz", c.replicas[0].url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    c.relay.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut after = Vec::new();
    for r in 0..2 {
        loop {
            let (s, body) = c.token_at(r, &c.assertion()).await;
            if s == 200 {
                after.push(
                    peek(body["access_token"].as_str().unwrap())["jti"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
                break;
            }
            assert_eq!(s, 503, "{body}");
            assert!(
                std::time::Instant::now() < deadline,
                "issuance did not resume"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let audited = c.audited_jtis().await;
    assert!(after.iter().all(|j| audited.contains(j)));

    // The chain written by three concurrent replicas verifies as one.
    let (code, out, err) = run_cli(
        c.replicas[0]._dir.path(),
        &["audit", "verify", "--config", "mayfly.toml"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let _ = (&c.root, per_worker);
}

fn peek_kid(token: &str) -> String {
    mayfly_testkit::peek_header(token)["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A chain three deep: a client token, narrowed by token exchange without client
/// authentication, then exchanged again with another token of ours as actor. Each step runs at
/// another replica. Revoking the root at one replica makes all three inactive at every replica;
/// the actor's own token stays active. An operator's `mayfly token revoke --jti` does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_revokes_its_derived_tokens_at_every_replica() {
    const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
    let c = Cluster::start().await;
    let token = |v: &(u16, Value)| -> String {
        assert_eq!(v.0, 200, "{}", v.1);
        v.1["access_token"].as_str().unwrap().to_string()
    };
    let root = token(&c.token_at(0, &c.assertion()).await);
    // An actor token of ours must be addressed to the token service itself.
    let a = c.assertion();
    let actor = token(
        &c.post(
            1,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("resource", ISSUER),
            ],
        )
        .await,
    );
    let narrowed = token(
        &c.post(
            1,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &root),
                ("subject_token_type", AT),
                ("scope", "read"),
            ],
        )
        .await,
    );
    let delegated = token(
        &c.post(
            2,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &narrowed),
                ("subject_token_type", AT),
                ("actor_token", &actor),
                ("actor_token_type", AT),
            ],
        )
        .await,
    );
    assert!(peek(&delegated)["act"].is_object(), "{}", peek(&delegated));
    let cr = &c;
    let active = |r: usize, t: String| async move {
        let a = cr.assertion();
        let (s, v) = cr
            .post(
                r,
                "/oauth2/introspect",
                &[
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("token", &t),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["active"] == true
    };
    for t in [&root, &narrowed, &delegated, &actor] {
        assert!(active(0, t.clone()).await);
    }
    let a = c.assertion();
    let (s, v) = c
        .post(
            0,
            "/oauth2/revoke",
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", &root),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for r in 0..3 {
        for t in [&root, &narrowed, &delegated] {
            assert!(!active(r, t.clone()).await, "replica {r}: {}", peek(t));
        }
        assert!(active(r, actor.clone()).await, "the actor's own token");
    }
    // The narrowed token is dead as a subject too.
    let (s, v) = c
        .post(
            2,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &narrowed),
                ("subject_token_type", AT),
            ],
        )
        .await;
    assert_error(&(s, v), 400, "invalid_request");
    assert_eq!(c.last_event().await["reason"], "invalid_subject_token");

    // The operator revokes the actor's token by jti: the tokens derived from it go too.
    let second = token(
        &c.post(
            0,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &actor),
                ("subject_token_type", AT),
            ],
        )
        .await,
    );
    let jti = peek(&actor)["jti"].as_str().unwrap().to_string();
    let (code, out, err) = run_cli(
        c.replicas[1]._dir.path(),
        &["token", "revoke", "--config", "mayfly.toml", "--jti", &jti],
    );
    assert_eq!(code, 0, "{out}{err}");
    for r in 0..3 {
        assert!(!active(r, actor.clone()).await);
        assert!(!active(r, second.clone()).await);
    }
    let (code, _, err) = run_cli(
        c.replicas[1]._dir.path(),
        &[
            "token",
            "revoke",
            "--config",
            "mayfly.toml",
            "--jti",
            "no-such-jti",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("no token with jti `no-such-jti` was issued by this deployment"),
        "{err}"
    );
}
