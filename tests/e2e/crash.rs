//! kill -9 under load: every token a client received has its audit event, the chain verifies,
//! and editing or deleting one event makes `mayfly audit verify` fail and name it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::Row;

use crate::fixture::*;
use crate::support::run_cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_audit_event() {
    let mut f = Fixture::start(&[("MAYFLY_AUDIT_OUTPUT", "off")]);
    let f_key = Arc::new(std::mem::replace(
        &mut f.key,
        mayfly_crypto::SigningKey::generate(mayfly_crypto::KeyAlg::ES256, None).unwrap(),
    ));
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (received, stop, key, issuer, http) = (
            received.clone(),
            stop.clone(),
            f_key.clone(),
            f.issuer(),
            f.http.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 2000 requests per task.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = now();
                let c = serde_json::json!({"iss": "svc", "sub": "svc", "aud": issuer, "jti": mayfly_crypto::random_id().unwrap(), "iat": n, "exp": n + 60});
                let a = key.sign_jwt(None, &c).unwrap();
                let body = form_urlencode(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("resource", AUD),
                    ("scope", "read"),
                ]);
                let r = http
                    .post(format!("{issuer}/oauth2/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 200 {
                    continue;
                }
                let Ok(v) = r.json::<serde_json::Value>().await else { break };
                received.lock().unwrap().push(v["access_token"].as_str().unwrap().to_string());
            }
        }));
    }
    // Kill once a few hundred tokens have gone out, while requests are in flight.
    loop {
        tokio::task::yield_now().await;
        if received.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    f.server.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let tokens = received.lock().unwrap().clone();
    assert!(tokens.len() >= 300);

    let db_path = f.dir.path().join("data").join("mayfly.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    for t in &tokens {
        let jti = peek(t)["jti"].as_str().unwrap().to_string();
        let row = sqlx::query("SELECT kind FROM audit_events WHERE jti = ?")
            .bind(&jti)
            .fetch_optional(&pool)
            .await
            .unwrap();
        let kind: String = row
            .unwrap_or_else(|| panic!("token {jti} was received but has no audit event"))
            .get("kind");
        assert_eq!(kind, "issue");
    }

    let dir = f.dir.path();
    let config = f.config.to_str().unwrap();
    let (code, out, err) = run_cli(dir, &["audit", "verify", "--config", config]);
    assert_eq!(code, 0, "verify after crash: {out} {err}");
    assert!(out.contains("intact"), "{out}");

    // Edit one event: verify fails and names it.
    let seq: i64 = sqlx::query(
        "SELECT seq FROM audit_events WHERE kind = 'issue' ORDER BY seq LIMIT 1 OFFSET 10",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("seq");
    sqlx::query(
        "UPDATE audit_events SET body = replace(body, '\"read\"', '\"admin\"') WHERE seq = ?",
    )
    .bind(seq)
    .execute(&pool)
    .await
    .unwrap();
    let (code, out, _) = run_cli(dir, &["audit", "verify", "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("event {seq}: EDITED")), "{out}");

    // Delete another: named too.
    let gone = seq + 20;
    sqlx::query("DELETE FROM audit_events WHERE seq = ?")
        .bind(gone)
        .execute(&pool)
        .await
        .unwrap();
    let (code, out, _) = run_cli(dir, &["audit", "verify", "--config", config]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("event {}: DELETED", gone + 1)),
        "{out}"
    );

    // Swap two events' contents (reordering): named.
    let a = seq + 40;
    let rows = sqlx::query(
        "SELECT seq, body, hash, prev_hash FROM audit_events WHERE seq IN (?, ?) ORDER BY seq",
    )
    .bind(a)
    .bind(a + 1)
    .fetch_all(&pool)
    .await
    .unwrap();
    let (b0, b1): (String, String) = (rows[0].get("body"), rows[1].get("body"));
    sqlx::query("UPDATE audit_events SET body = ? WHERE seq = ?")
        .bind(&b1)
        .bind(a)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET body = ? WHERE seq = ?")
        .bind(&b0)
        .bind(a + 1)
        .execute(&pool)
        .await
        .unwrap();
    let (code, out, _) = run_cli(dir, &["audit", "verify", "--config", config]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("event {a}: EDITED"))
            && out.contains(&format!("event {}: EDITED", a + 1)),
        "{out}"
    );
}
