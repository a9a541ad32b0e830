//! The audit chain's head lives in the database, so someone with write access (but no master
//! key) can cut the newest events and move the head back unnoticed by `mayfly audit verify`
//! alone. The anchors the server writes to its audit output find the cut.

use sqlx::Row;

use crate::fixture::*;
use crate::support::run_cli;

#[tokio::test]
async fn a_cut_tail_is_found_by_the_anchors_in_the_audit_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    let out_s = out.to_str().unwrap().to_string();
    let mut f = Fixture::start(&[
        ("MAYFLY_AUDIT_OUTPUT", "file"),
        ("MAYFLY_AUDIT_PATH", &out_s),
    ]);
    for _ in 0..5 {
        let (s, body) = f
            .token_with(&f.assertion(), &[("resource", AUD), ("scope", "read")])
            .await;
        assert_eq!(s, 200, "{body}");
    }
    // The committer anchors an idle log within its interval: wait (bounded) for the line.
    let anchored = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(mayfly_store::Anchor::parse_line)
            .map(|a| a.seq)
            .max()
    };
    let deadline = std::time::Instant::now()
        + mayfly_store::ANCHOR_INTERVAL
        + std::time::Duration::from_secs(20);
    let anchored_seq = loop {
        if let Some(seq) = anchored() {
            break seq;
        }
        assert!(std::time::Instant::now() < deadline, "no anchor written");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    f.server.kill9();

    let dir_s = f.dir.path();
    let config = f.config.to_str().unwrap().to_string();
    let verify = |anchor: Option<&str>| {
        let mut args = vec!["audit", "verify", "--config", config.as_str()];
        if let Some(a) = anchor {
            args.extend(["--anchor", a]);
        }
        run_cli(dir_s, &args)
    };
    let (code, text, err) = verify(Some(&out_s));
    assert_eq!(code, 0, "{text} {err}");
    assert!(text.contains("anchors up to event"), "{text}");

    // The insider cuts the last two events and moves the head back to what remains.
    let db = f.dir.path().join("data").join("mayfly.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let keep = anchored_seq - 2;
    sqlx::query("DELETE FROM audit_events WHERE seq > ?")
        .bind(keep)
        .execute(&pool)
        .await
        .unwrap();
    let hash: String = sqlx::query("SELECT hash FROM audit_events WHERE seq = ?")
        .bind(keep)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("hash");
    sqlx::query("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")
        .bind(keep)
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // The chain alone cannot tell: every remaining link verifies.
    let (code, text, _) = verify(None);
    assert_eq!(code, 0, "{text}");
    // The anchor can.
    let (code, text, _) = verify(Some(&out_s));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("event {anchored_seq}: TRUNCATED")),
        "{text}"
    );

    // An anchor the insider writes without the master key is named as forged.
    let forged = mayfly_store::Anchor {
        seq: keep,
        hash,
        ts: now(),
        mac: "00".repeat(32),
    };
    let fake = dir.path().join("forged.jsonl");
    std::fs::write(&fake, format!("{}\n", forged.line())).unwrap();
    let (code, text, _) = verify(Some(fake.to_str().unwrap()));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("event {keep}: FORGED ANCHOR")),
        "{text}"
    );

    // A file with no anchors is an operator error, said as such.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"kind\":\"issue\"}\n").unwrap();
    let (code, _, err) = verify(Some(empty.to_str().unwrap()));
    assert_ne!(code, 0);
    assert!(err.contains("holds no audit anchors"), "{err}");
}
