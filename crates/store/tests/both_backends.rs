//! The store's contract, run against SQLite (a real file) and PostgreSQL (`TEST_PG_ADMIN_URL`,
//! by default the server on this machine; a fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::sync::Arc;

use mayfly_crypto::{Kek, KeyAlg};
use mayfly_proto::{AuditEvent, Decision, EventKind};
use mayfly_store::{AuditLog, AuditSink, CommitOutcome, Pending, Store, StoredClient, TamperKind};
use mayfly_sts::keys::{self, Schedule};
use mayfly_testkit::TestDb;

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    // Declared after the store: the database is dropped once the store's pool is gone.
    _pg: Option<TestDb>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    Db {
        store,
        _dir: Some(dir),
        _pg: None,
    }
}

/// A fresh PostgreSQL database at `TEST_PG_ADMIN_URL` (or the local server), dropped after.
async fn postgres() -> Db {
    let db = TestDb::create("mayfly_test").await;
    let store = Store::open(&db.url()).await.unwrap();
    Db {
        store,
        _dir: None,
        _pg: Some(db),
    }
}

/// The audit committer's clock: the system's, as in production.
fn clock() -> Arc<dyn mayfly_proto::Clock> {
    Arc::new(mayfly_proto::SystemClock)
}

fn kek() -> Arc<Kek> {
    Arc::new(Kek::from_bytes(&[7u8; 32]).unwrap())
}

fn issue(jti: &str) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Issue, 1_000, Decision::Allow);
    e.client = Some("svc".into());
    e.jti = Some(jti.into());
    e.scopes = vec!["read".into()];
    e
}

async fn audit_chain_replay_and_revocation(db: Db) {
    let s = &db.store;
    let log = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    // Concurrent commits batch together; each jti is consumed once.
    let mut handles = Vec::new();
    for i in 0..50 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut p = Pending::event(issue(&format!("t{i}")));
            p.consume_jti = Some(("svc".into(), format!("a{}", i % 25), 2_000));
            log.commit(p).await.unwrap()
        }));
    }
    let mut committed = 0;
    let mut replays = 0;
    for h in handles {
        match h.await.unwrap() {
            CommitOutcome::Committed(_) => committed += 1,
            CommitOutcome::Replay(_) => replays += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (committed, replays),
        (25, 25),
        "each assertion jti is accepted exactly once"
    );
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 50);

    // Revocation commits atomically with its event.
    let mut e = AuditEvent::new(EventKind::Revoke, 1_001, Decision::Allow);
    e.jti = Some("t1".into());
    log.commit(Pending {
        event: e,
        consume_jti: None,
        consume_subject: None,
        consume_actor: None,
        revoke: Some(("t1".into(), "svc".into(), 5_000)),
        link_svid: None,
        parents: Vec::new(),
        status: None,
        lease: None,
    })
    .await
    .unwrap();
    assert!(s.is_revoked("t1").await.unwrap());
    assert!(!s.is_revoked("t2").await.unwrap());
    // Purge drops replay records (PostgreSQL keeps them in a table) and revocations.
    assert!(s.purge_expired(10_000).await.unwrap() >= 1);
    assert!(!s.is_revoked("t1").await.unwrap());

    // One-time subject tokens: single use per issuer, in their own namespace (a client
    // assertion with the same jti, or the same jti from another issuer, is another value).
    let subject = |iss: &str, jti: &str, client_jti: Option<&str>| Pending {
        event: issue("x"),
        consume_jti: client_jti.map(|j| ("svc".to_string(), j.to_string(), 2_000)),
        consume_subject: Some((iss.into(), jti.into(), 2_000)),
        consume_actor: None,
        revoke: None,
        link_svid: None,
        parents: Vec::new(),
        status: None,
        lease: None,
    };
    assert!(matches!(
        log.commit(subject("k8s", "s1", None)).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    assert!(matches!(
        log.commit(subject("k8s", "s1", None)).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
    assert!(matches!(
        log.commit(subject("github", "s1", Some("s1")))
            .await
            .unwrap(),
        CommitOutcome::Committed(_)
    ));
    // Both consumed in one commit: a replayed assertion is reported as such.
    assert!(matches!(
        log.commit(subject("gitlab", "s9", Some("s1")))
            .await
            .unwrap(),
        CommitOutcome::Replay(_)
    ));
    // One-time actor tokens share the issuer's namespace: a token used once, as subject or as
    // actor, is refused in either role after; the denial says it was the actor.
    let actor = |iss: &str, jti: &str| Pending {
        event: issue("x"),
        consume_jti: None,
        consume_subject: None,
        consume_actor: Some((iss.into(), jti.into(), 2_000)),
        revoke: None,
        link_svid: None,
        parents: Vec::new(),
        status: None,
        lease: None,
    };
    assert!(matches!(
        log.commit(actor("k8s", "a1")).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    assert!(matches!(
        log.commit(actor("k8s", "a1")).await.unwrap(),
        CommitOutcome::ActorReplay(_)
    ));
    assert!(matches!(
        log.commit(actor("k8s", "s1")).await.unwrap(),
        CommitOutcome::ActorReplay(_)
    ));
    let tail = s.audit_tail(1).await.unwrap();
    let last: serde_json::Value = serde_json::from_str(&tail[0].body).unwrap();
    assert_eq!(last["reason"], "actor_replayed");

    // A wrong master key cannot vouch for the chain.
    let other = Kek::from_bytes(&[8u8; 32]).unwrap();
    let bad = s.audit_verify(&other).await.unwrap();
    assert!(
        bad.problems
            .iter()
            .any(|(seq, k, _)| *seq == 1 && *k == TamperKind::Edited)
    );
}

/// A restarted server still refuses every assertion jti consumed within the replay window (on
/// SQLite the committer rebuilds its map by walking the log back from the newest event, over
/// more than one page), and does not let one from before the window block anything.
async fn replay_window_survives_restart(db: Db) {
    use mayfly_proto::Clock;
    let s = &db.store;
    let now = mayfly_proto::SystemClock.now();
    let window = 600;
    let at = |ts: i64, jti: &str, assertion: &str, keep: i64| {
        let mut e = issue(jti);
        e.ts = ts;
        Pending {
            event: e,
            consume_jti: Some(("svc".into(), assertion.into(), keep)),
            consume_subject: None,
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        }
    };
    let first = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    let old = now - 100_000;
    assert!(matches!(
        first
            .commit(at(old, "t-old", "a-old", old + window))
            .await
            .unwrap(),
        CommitOutcome::Committed(_)
    ));
    let mut handles = Vec::new();
    for i in 0..1_100 {
        let log = first.clone();
        let p = at(now, &format!("t{i}"), &format!("a{i}"), now + window);
        handles.push(tokio::spawn(async move { log.commit(p).await.unwrap() }));
    }
    for h in handles {
        assert!(matches!(h.await.unwrap(), CommitOutcome::Committed(_)));
    }
    drop(first);
    s.purge_expired(now).await.unwrap();

    let second = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    for a in ["a0", "a550", "a1099"] {
        assert!(
            matches!(
                second
                    .commit(at(now, "t-again", a, now + window))
                    .await
                    .unwrap(),
                CommitOutcome::Replay(_)
            ),
            "{a} must stay consumed across the restart"
        );
    }
    assert!(matches!(
        second
            .commit(at(now, "t-new", "a-old", now + window))
            .await
            .unwrap(),
        CommitOutcome::Committed(_)
    ));
    // Subject tokens consumed before the restart stay consumed too.
    let sub = |jti: &str| {
        let mut e = issue("t-sub");
        e.ts = now;
        Pending {
            event: e,
            consume_jti: None,
            consume_subject: Some(("k8s".into(), jti.into(), now + window)),
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        }
    };
    let third = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    assert!(matches!(
        third.commit(sub("st-1")).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    drop(third);
    let fourth = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    assert!(matches!(
        fourth.commit(sub("st-1")).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 1 + 1_100 + 3 + 1 + 2);
}

async fn keys_and_clients(db: Db) {
    let s = &db.store;
    let k = kek();
    let sched = Schedule {
        rotation: 3600,
        max_ttl: 600,
        skew: 30,
    };
    let actions = keys::plan(&[], 1_000, &sched);
    s.apply_key_actions(&actions, 1_000, KeyAlg::EdDSA, &k)
        .await
        .unwrap();
    let loaded = s.load_keys(&k).await.unwrap();
    assert_eq!(loaded.len(), 2);
    let times: Vec<_> = loaded.iter().map(|k| k.times.clone()).collect();
    assert_eq!(
        keys::current(&times, 1_000).unwrap().kid,
        loaded[0].key.kid()
    );
    // Sealed under the master key: another key cannot open them.
    assert!(
        s.load_keys(&Kek::from_bytes(&[9u8; 32]).unwrap())
            .await
            .is_err()
    );

    let c = StoredClient {
        id: "rt".into(),
        jwks: r#"{"keys":[]}"#.into(),
        audiences: vec!["https://a".into()],
        scopes: vec!["read".into()],
        max_ttl: Some(60),
        created_at: 5,
    };
    assert!(s.add_client(&c).await.unwrap());
    assert!(!s.add_client(&c).await.unwrap(), "ids are unique");
    assert_eq!(s.list_clients().await.unwrap(), vec![c]);
    assert!(s.remove_client("rt").await.unwrap());
    assert!(!s.remove_client("rt").await.unwrap());
}

#[tokio::test]
async fn audit_sqlite() {
    audit_chain_replay_and_revocation(sqlite().await).await;
}

#[tokio::test]
async fn audit_postgres() {
    audit_chain_replay_and_revocation(postgres().await).await;
}

#[tokio::test]
async fn replay_window_sqlite() {
    replay_window_survives_restart(sqlite().await).await;
}

#[tokio::test]
async fn replay_window_postgres() {
    replay_window_survives_restart(postgres().await).await;
}

/// Two writers on one log (a server's committer and a CLI command on the same file, or two
/// replicas): each commits after the other moved the head, by one event or by as many as the
/// next batch holds, and the chain stays whole. SQLite's committer takes a one-round-trip path
/// while the head is where it left it, and must notice when it is not.
async fn two_writers_interleave(db: Db) {
    let s = &db.store;
    let a = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    let b = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    let mut n = 0;
    let mut commit = |log: &AuditLog| {
        n += 1;
        let log = log.clone();
        let p = Pending {
            event: issue(&format!("w{n}")),
            consume_jti: Some(("svc".into(), format!("wa{n}"), 2_000)),
            consume_subject: None,
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        };
        async move { log.commit(p).await.unwrap() }
    };
    let mut seqs = Vec::new();
    // a, b, a, a, b, b, a: every change of writer finds the head moved (by 1 or by 2).
    for w in [&a, &b, &a, &a, &b, &b, &a, &b, &a] {
        match commit(w).await {
            CommitOutcome::Committed(seq) => seqs.push(seq),
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(seqs, (1..=9).collect::<Vec<i64>>());
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 9);
}

#[tokio::test]
async fn two_writers_sqlite() {
    two_writers_interleave(sqlite().await).await;
}

#[tokio::test]
async fn two_writers_postgres() {
    two_writers_interleave(postgres().await).await;
}

/// A database written by the first schema keeps every audit event, byte for byte, when the
/// SQLite-only migration 2 moves the log into a rowid table.
#[tokio::test]
async fn sqlite_migration_2_keeps_the_log() {
    use sqlx::Executor;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        let v1 = Migrator::with_migrations(vec![Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(include_str!("../migrations/0001_init.sql")),
            false,
        )]);
        v1.run(&pool).await.unwrap();
        for seq in 1..=3 {
            pool.execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO audit_events (seq, ts, kind, jti, body, prev_hash, hash) \
                 VALUES ({seq}, {seq}, 'issue', 'j{seq}', '{{\"n\":{seq}}}', 'p{seq}', 'h{seq}')"
            )))
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = Store::open_sqlite(&path).await.unwrap();
    let tail = store.audit_tail(10).await.unwrap();
    let got: Vec<_> = tail
        .iter()
        .map(|e| {
            (
                e.seq,
                e.body.as_str(),
                e.prev_hash.as_str(),
                e.hash.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, r#"{"n":1}"#, "p1", "h1"),
            (2, r#"{"n":2}"#, "p2", "h2"),
            (3, r#"{"n":3}"#, "p3", "h3")
        ]
    );
}

#[tokio::test]
async fn keys_clients_sqlite() {
    keys_and_clients(sqlite().await).await;
}

#[tokio::test]
async fn keys_clients_postgres() {
    keys_and_clients(postgres().await).await;
}

/// Join tokens: one use each, refused after expiry, wrong secrets look unknown; a JWT-SVID's
/// revocation takes the tokens minted from it, including one linked after the revocation.
async fn spiffe_records(db: Db) {
    use mayfly_store::JoinTokenOutcome;
    let s = &db.store;
    s.add_join_token(
        "aaaaaaaaaaaaaaaa",
        "hash-a",
        1000,
        1600,
        Some("spiffe://td/mayfly/agent/n"),
    )
    .await
    .unwrap();
    s.add_join_token("bbbbbbbbbbbbbbbb", "hash-b", 1000, 1600, None)
        .await
        .unwrap();
    let eq = |want: &'static str| move |h: &str| h == want;
    assert_eq!(
        s.consume_join_token("aaaaaaaaaaaaaaaa", eq("wrong"), 1100)
            .await
            .unwrap(),
        (JoinTokenOutcome::Unknown, None)
    );
    assert_eq!(
        s.consume_join_token("cccccccccccccccc", eq("hash-a"), 1100)
            .await
            .unwrap(),
        (JoinTokenOutcome::Unknown, None)
    );
    assert_eq!(
        s.consume_join_token("aaaaaaaaaaaaaaaa", eq("hash-a"), 1100)
            .await
            .unwrap(),
        (
            JoinTokenOutcome::Accepted,
            Some("spiffe://td/mayfly/agent/n".to_string())
        )
    );
    assert_eq!(
        s.consume_join_token("aaaaaaaaaaaaaaaa", eq("hash-a"), 1101)
            .await
            .unwrap(),
        (JoinTokenOutcome::AlreadyUsed, None)
    );
    assert_eq!(
        s.consume_join_token("bbbbbbbbbbbbbbbb", eq("hash-b"), 1600)
            .await
            .unwrap(),
        (JoinTokenOutcome::Expired, None)
    );

    // Tokens minted from JWT-SVIDs are linked in the audit commit.
    let log = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    let minted = |token: &str, svid: &str| {
        let mut e = issue(token);
        e.exp = Some(5_000);
        let mut p = Pending::event(e);
        p.link_svid = Some(svid.to_string());
        p
    };
    log.commit(minted("t1", "svid-1")).await.unwrap();
    log.commit(minted("t2", "svid-1")).await.unwrap();
    log.commit(minted("t3", "svid-2")).await.unwrap();
    let revoked = s
        .revoke_svids(&["svid-1".to_string()], 1200, 4_000)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(s.is_revoked("t1").await.unwrap() && s.is_revoked("t2").await.unwrap());
    assert!(!s.is_revoked("t3").await.unwrap());
    assert!(s.is_svid_revoked("svid-1").await.unwrap());
    // Idempotent.
    assert!(
        s.revoke_svids(&["svid-1".to_string()], 1201, 4_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A token linked to an already revoked JWT-SVID is revoked as it commits.
    log.commit(minted("t4", "svid-1")).await.unwrap();
    assert!(s.is_revoked("t4").await.unwrap());
}

/// A workload-exit report revokes only the JWT-SVIDs the reporting agent minted (and the
/// tokens minted from them); evicted agents are gone from the list.
async fn agent_owned_svids(db: Db) {
    use mayfly_store::StoredAgent;
    let s = &db.store;
    let (a, b) = ("spiffe://td/mayfly/agent/a", "spiffe://td/mayfly/agent/b");
    s.record_svid_minter("svid-a", a, 5_000).await.unwrap();
    s.record_svid_minter("svid-b", b, 5_000).await.unwrap();
    let log = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    let mut e = issue("t-b");
    e.exp = Some(5_000);
    let mut p = Pending::event(e);
    p.link_svid = Some("svid-b".into());
    log.commit(p).await.unwrap();

    let jtis = ["svid-a", "svid-b", "svid-unknown"].map(String::from);
    let r = s.revoke_own_svids(a, &jtis, 1_200, 5_000).await.unwrap();
    assert_eq!((r.svids, r.ignored), (1, 2));
    assert!(r.tokens.is_empty());
    assert!(s.is_svid_revoked("svid-a").await.unwrap());
    assert!(!s.is_svid_revoked("svid-b").await.unwrap());
    assert!(!s.is_revoked("t-b").await.unwrap());
    // Its own agent may.
    let r = s
        .revoke_own_svids(b, &jtis[1..2], 1_201, 5_000)
        .await
        .unwrap();
    assert_eq!(
        (r.svids, r.ignored, r.tokens),
        (1, 0, vec!["t-b".to_string()])
    );
    // Expired records are purged.
    s.purge_expired_spiffe(6_000).await.unwrap();
    let r = s
        .revoke_own_svids(a, &jtis[..1], 6_001, 9_000)
        .await
        .unwrap();
    assert_eq!((r.svids, r.ignored), (0, 1));

    for id in [b, a] {
        s.upsert_agent(&StoredAgent {
            spiffe_id: id.into(),
            attestation: "join_token".into(),
            serial: "01".into(),
            attested_at: 1_000,
            expires_at: 4_600,
        })
        .await
        .unwrap();
    }
    let ids = |v: Vec<StoredAgent>| v.into_iter().map(|a| a.spiffe_id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_agents().await.unwrap()), [a, b]);
    assert!(s.remove_agent(a).await.unwrap());
    assert!(!s.remove_agent(a).await.unwrap());
    assert_eq!(s.get_agent(a).await.unwrap(), None);
    assert_eq!(ids(s.list_agents().await.unwrap()), [b]);
}

#[tokio::test]
async fn agent_owned_svids_sqlite() {
    agent_owned_svids(sqlite().await).await;
}

#[tokio::test]
async fn agent_owned_svids_postgres() {
    agent_owned_svids(postgres().await).await;
}

#[tokio::test]
async fn spiffe_records_sqlite() {
    spiffe_records(sqlite().await).await;
}

#[tokio::test]
async fn spiffe_records_postgres() {
    spiffe_records(postgres().await).await;
}

/// Key debt: wrapped keys sealed and opened under the master key (and not under another), a
/// fingerprint-only entry holds no key, rotation bumps the version, extension keeps its reason,
/// usage aggregates per identity, removal takes the usage with it.
#[allow(clippy::too_many_lines)] // one contract, checked step by step in the order a key lives
async fn debt_records(db: Db) {
    use mayfly_store::{DebtEntry, DebtUsage};
    let s = &db.store;
    let k = kek();
    let entry = |name: &str, expires_at: i64| DebtEntry {
        name: name.into(),
        owner: "payments-team".into(),
        created_at: 1_000,
        expires_at,
        routes: vec![name.into()],
        fingerprint: format!("{:064x}", expires_at),
        wrapped: false,
        key_version: 0,
        updated_at: 0,
        extended_reason: None,
        found_at: None,
        last_used_at: None,
    };
    assert!(
        s.add_debt(&entry("stripe", 9_000), Some(b"sk_live_1"), &k)
            .await
            .unwrap()
    );
    assert!(
        !s.add_debt(&entry("stripe", 9_000), Some(b"other"), &k)
            .await
            .unwrap(),
        "name taken"
    );
    let mut found = entry("found", 5_000);
    found.found_at = Some("repo@abc:src/a.py:3".into());
    assert!(s.add_debt(&found, None, &k).await.unwrap());

    // Soonest expiry first; only the wrapped one holds a key.
    let list = s.list_debt().await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["found", "stripe"]
    );
    assert!(!list[0].wrapped && list[1].wrapped);
    assert_eq!(list[1].key_version, 1);
    assert_eq!(list[0].found_at.as_deref(), Some("repo@abc:src/a.py:3"));
    let (e, key) = s.open_debt_key("stripe", &k).await.unwrap().unwrap();
    assert_eq!(&key[..], b"sk_live_1");
    assert_eq!(e.owner, "payments-team");
    assert!(s.open_debt_key("found", &k).await.unwrap().is_none());
    assert!(s.open_debt_key("nope", &k).await.unwrap().is_none());
    let other = Kek::from_bytes(&[9u8; 32]).unwrap();
    assert!(
        s.open_debt_key("stripe", &other).await.is_err(),
        "another master key cannot open it"
    );
    assert_eq!(
        s.debt_by_fingerprint(&found.fingerprint)
            .await
            .unwrap()
            .len(),
        1
    );

    // Rotation: new key, new version; a fingerprint-only entry can be wrapped this way.
    assert!(
        s.rotate_debt_key("stripe", b"sk_live_2", "ff", 2_000, &k)
            .await
            .unwrap()
    );
    let (e, key) = s.open_debt_key("stripe", &k).await.unwrap().unwrap();
    assert_eq!(
        (
            &key[..],
            e.key_version,
            e.fingerprint.as_str(),
            e.updated_at
        ),
        (&b"sk_live_2"[..], 2, "ff", 2_000)
    );
    assert!(
        !s.rotate_debt_key("nope", b"x", "ff", 2_000, &k)
            .await
            .unwrap()
    );

    // Extension keeps the reason and bumps the version (proxies reload the expiry).
    assert!(
        s.extend_debt("stripe", 20_000, "vendor migration in Q2", 2_100)
            .await
            .unwrap()
    );
    let e = s.get_debt("stripe").await.unwrap().unwrap();
    assert_eq!((e.expires_at, e.key_version), (20_000, 3));
    assert_eq!(e.extended_reason.as_deref(), Some("vendor migration in Q2"));

    // Usage: aggregated per identity across flushes.
    let used = |id: &str, first, last, calls| DebtUsage {
        name: "stripe".into(),
        identity: id.into(),
        first_used_at: first,
        last_used_at: last,
        calls,
    };
    s.record_debt_usage(&[
        used("spiffe://td/a", 3_000, 3_010, 5),
        used("spiffe://td/b", 3_001, 3_001, 1),
    ])
    .await
    .unwrap();
    s.record_debt_usage(&[used("spiffe://td/a", 3_100, 3_200, 2)])
        .await
        .unwrap();
    let u = s.debt_usage("stripe").await.unwrap();
    assert_eq!(u.len(), 2);
    assert_eq!(
        (
            u[0].identity.as_str(),
            u[0].first_used_at,
            u[0].last_used_at,
            u[0].calls
        ),
        ("spiffe://td/a", 3_000, 3_200, 7)
    );
    assert_eq!(
        s.get_debt("stripe").await.unwrap().unwrap().last_used_at,
        Some(3_200)
    );
    // The inventory's one-query form gives the same lists, by entry.
    let all = s.all_debt_usage().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["stripe"], u);

    assert!(s.remove_debt("stripe").await.unwrap());
    assert!(!s.remove_debt("stripe").await.unwrap());
    assert!(s.debt_usage("stripe").await.unwrap().is_empty());
    assert!(s.all_debt_usage().await.unwrap().is_empty());
    assert!(s.get_debt("stripe").await.unwrap().is_none());
}

#[tokio::test]
async fn debt_records_sqlite() {
    debt_records(sqlite().await).await;
}

#[tokio::test]
async fn debt_records_postgres() {
    debt_records(postgres().await).await;
}

/// Revoking a token revokes every token derived from it (narrowed, exchanged, with it as
/// actor), at any depth; a token derived from one already revoked is revoked as it is recorded;
/// a workload's exit (revoke_svids) reaches the tokens derived from its JWT-SVID's tokens.
async fn revocation_reaches_derived_tokens(db: Db) {
    let s = &db.store;
    let log = AuditLog::start(s.clone(), kek(), AuditSink::Off, 600, clock());
    let issued = |jti: &str, parents: &[&str], svid: Option<&str>| {
        let mut e = issue(jti);
        e.exp = Some(5_000);
        let mut p = Pending::event(e);
        p.parents = parents.iter().map(|p| p.to_string()).collect();
        p.link_svid = svid.map(str::to_string);
        p
    };
    for p in [
        issued("root", &[], None),
        issued("actor", &[], None),
        issued("narrowed", &["root"], None),
        issued("delegated", &["narrowed", "actor"], None),
        issued("deeper", &["delegated"], None),
        issued("sibling", &["actor"], None),
    ] {
        assert!(matches!(
            log.commit(p).await.unwrap(),
            CommitOutcome::Committed(_)
        ));
    }
    let mut e = AuditEvent::new(EventKind::Revoke, 1_001, Decision::Allow);
    e.jti = Some("root".into());
    let mut p = Pending::event(e);
    p.revoke = Some(("root".into(), "svc".into(), 5_000));
    log.commit(p).await.unwrap();
    for jti in ["root", "narrowed", "delegated", "deeper"] {
        assert!(s.is_revoked(jti).await.unwrap(), "{jti} must be revoked");
    }
    for jti in ["actor", "sibling"] {
        assert!(
            !s.is_revoked(jti).await.unwrap(),
            "{jti} is not derived from root"
        );
    }
    // Minted while its parent was being revoked: recorded after, revoked as it is recorded.
    log.commit(issued("late", &["narrowed"], None))
        .await
        .unwrap();
    assert!(s.is_revoked("late").await.unwrap());

    // A workload exits: its JWT-SVID's token and the tokens derived from that one.
    log.commit(issued("from-svid", &[], Some("svid-1")))
        .await
        .unwrap();
    log.commit(issued("from-svid-narrowed", &["from-svid"], None))
        .await
        .unwrap();
    let revoked = s
        .revoke_svids(&["svid-1".to_string()], 1_002, 5_000)
        .await
        .unwrap();
    assert_eq!(revoked, vec!["from-svid", "from-svid-narrowed"]);
    assert!(s.is_revoked("from-svid-narrowed").await.unwrap());
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn derived_revocation_sqlite() {
    revocation_reaches_derived_tokens(sqlite().await).await;
}

#[tokio::test]
async fn derived_revocation_postgres() {
    revocation_reaches_derived_tokens(postgres().await).await;
}

/// A one-time subject token stays consumed until its own exp (+ skew), not only for the
/// assertion window, across a restart: consumed long before "now" (a clock moved on past the
/// window) but still valid, it is refused after the restart.
async fn subject_remembered_until_its_exp(db: Db) {
    use mayfly_proto::Clock;
    let s = &db.store;
    let now = mayfly_proto::SystemClock.now();
    let window = 360;
    let sub = |ts: i64| {
        let mut e = issue("t-sub");
        e.ts = ts;
        let mut p = Pending::event(e);
        // The token is valid for an hour after it was consumed.
        p.consume_subject = Some(("github".into(), "gh-1".into(), now - 1_000 + 3_600 + 30));
        p
    };
    let first = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    assert!(matches!(
        first.commit(sub(now - 1_000)).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    drop(first);
    s.purge_expired(now).await.unwrap();
    let second = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    assert!(matches!(
        second.commit(sub(now)).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
    // And without a restart.
    assert!(matches!(
        second.commit(sub(now)).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
}

#[tokio::test]
async fn subject_until_exp_sqlite() {
    subject_remembered_until_its_exp(sqlite().await).await;
}

#[tokio::test]
async fn subject_until_exp_postgres() {
    subject_remembered_until_its_exp(postgres().await).await;
}

/// A one-time token consumed as an actor is remembered until its own `exp` across a restart
/// too (it shares the subject tokens' namespace), and is then refused in either role.
async fn actor_remembered_until_its_exp(db: Db) {
    use mayfly_proto::Clock;
    let s = &db.store;
    let now = mayfly_proto::SystemClock.now();
    let window = 360;
    let until = now - 1_000 + 3_600 + 30;
    let first = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    let mut e = issue("t-act");
    e.ts = now - 1_000;
    let mut p = Pending::event(e);
    p.consume_actor = Some(("github".into(), "gh-act".into(), until));
    assert!(matches!(
        first.commit(p).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    drop(first);
    s.purge_expired(now).await.unwrap();
    let second = AuditLog::start(s.clone(), kek(), AuditSink::Off, window, clock());
    let mut p = Pending::event(issue("t-act-2"));
    p.consume_actor = Some(("github".into(), "gh-act".into(), until));
    assert!(matches!(
        second.commit(p).await.unwrap(),
        CommitOutcome::ActorReplay(_)
    ));
    let mut p = Pending::event(issue("t-act-3"));
    p.consume_subject = Some(("github".into(), "gh-act".into(), until));
    assert!(matches!(
        second.commit(p).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
}

#[tokio::test]
async fn actor_until_exp_sqlite() {
    actor_remembered_until_its_exp(sqlite().await).await;
}

#[tokio::test]
async fn actor_until_exp_postgres() {
    actor_remembered_until_its_exp(postgres().await).await;
}

/// The committer reads time from the clock it is given: what a restart still remembers of a
/// consumed one-time subject token (SQLite's rebuilt window) follows that clock, not the
/// system's.
#[tokio::test]
async fn the_injected_clock_ages_the_replay_window() {
    let db = sqlite().await;
    let s = &db.store;
    let t0 = 1_000_000;
    let until = t0 + 3_600;
    let at =
        |t: i64| -> Arc<dyn mayfly_proto::Clock> { Arc::new(mayfly_proto::ManualClock::new(t)) };
    let first = AuditLog::start(s.clone(), kek(), AuditSink::Off, 360, at(t0));
    let mut e = issue("c-1");
    e.ts = t0;
    let mut p = Pending::event(e);
    p.consume_subject = Some(("github".into(), "gh-once".into(), until));
    assert!(matches!(
        first.commit(p).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    drop(first);
    let again = |clock| {
        let log = AuditLog::start(s.clone(), kek(), AuditSink::Off, 360, clock);
        async move {
            let mut e = issue("c-2");
            e.ts = t0;
            let mut p = Pending::event(e);
            p.consume_subject = Some(("github".into(), "gh-once".into(), until));
            log.commit(p).await.unwrap()
        }
    };
    assert!(matches!(
        again(at(until - 1)).await,
        CommitOutcome::SubjectReplay(_)
    ));
    assert!(matches!(
        again(at(until + 100_000)).await,
        CommitOutcome::Committed(_)
    ));
}
