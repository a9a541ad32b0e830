//! Export and import between SQLite (a real file) and PostgreSQL (`TEST_PG_ADMIN_URL`, by
//! default the server on this machine; a fresh database per test): nothing is lost either way, the audit chain still verifies, and a
//! file that was cut short or edited is refused with the target left empty.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::sync::Arc;

use base64::Engine;
use mayfly_crypto::{Kek, KeyAlg};
use mayfly_proto::keys::KeyTimes;
use mayfly_proto::{AuditEvent, Clock, Decision, EventKind, SystemClock};
use mayfly_store::{
    AuditLog, AuditSink, AuthorityKind, CiRun, CommitOutcome, ImportOptions, JoinTokenOutcome,
    LeaseKind, LeaseLink, NewLease, Pending, RevokeSelector, StatusSlot, Store, StoredAgent,
    StoredClient, StoredEntry, TransferError,
};
use mayfly_sts::keys::{self, Schedule};
use mayfly_testkit::TestDb;

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    // Declared after the store: the database is dropped once the store's pool is gone.
    pg: Option<TestDb>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    Db {
        store,
        _dir: Some(dir),
        pg: None,
    }
}

/// A fresh PostgreSQL database at `TEST_PG_ADMIN_URL` (or the local server), dropped after.
async fn postgres() -> Db {
    let db = TestDb::create("mayfly_xfer").await;
    let store = Store::open(&db.url()).await.unwrap();
    Db {
        store,
        _dir: None,
        pg: Some(db),
    }
}

fn kek() -> Arc<Kek> {
    Arc::new(Kek::from_bytes(&[7u8; 32]).unwrap())
}

fn opts(k: &Kek) -> ImportOptions<'_> {
    ImportOptions {
        master_key: Some(k),
        replay_window: 0,
        now: SystemClock.now(),
    }
}

fn issue(jti: &str, ts: i64) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Issue, ts, Decision::Allow);
    e.client = Some("svc".into());
    e.jti = Some(jti.into());
    e.scopes = vec!["read".into()];
    e
}

fn clients() -> Vec<StoredClient> {
    vec![
        StoredClient {
            id: "rt-a".into(),
            jwks: r#"{"keys":[]}"#.into(),
            audiences: vec!["https://a".into()],
            scopes: vec!["read".into(), "write".into()],
            max_ttl: Some(60),
            created_at: 5,
        },
        StoredClient {
            id: "rt-b".into(),
            jwks: r#"{"keys":[{"kty":"OKP"}]}"#.into(),
            audiences: vec!["https://b".into()],
            scopes: vec![],
            max_ttl: None,
            created_at: 6,
        },
    ]
}

/// Keys, clients, and more audit events than one insert batch holds: assertions consumed,
/// a revocation, a one-time subject token.
async fn populate(s: &Store) {
    let k = kek();
    let sched = Schedule {
        rotation: 3600,
        max_ttl: 600,
        skew: 30,
    };
    s.apply_key_actions(&keys::plan(&[], 1_000, &sched), 1_000, KeyAlg::EdDSA, &k)
        .await
        .unwrap();
    for c in clients() {
        assert!(s.add_client(&c).await.unwrap());
    }
    let log = AuditLog::start(s.clone(), k, AuditSink::Off, 600, Arc::new(SystemClock));
    for i in 0..150 {
        let p = Pending {
            event: issue(&format!("t{i}"), 1_000 + i),
            consume_jti: Some(("svc".into(), format!("a{i}"), 2_000)),
            consume_subject: None,
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        };
        assert!(matches!(
            log.commit(p).await.unwrap(),
            CommitOutcome::Committed(_)
        ));
    }
    let mut e = AuditEvent::new(EventKind::Revoke, 1_200, Decision::Allow);
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
    log.commit(Pending {
        event: issue("t-sub", 1_201),
        consume_jti: None,
        consume_subject: Some(("k8s".into(), "s1".into(), 2_000)),
        consume_actor: None,
        revoke: None,
        link_svid: None,
        parents: Vec::new(),
        status: None,
        lease: None,
    })
    .await
    .unwrap();
    populate_spiffe(s, &log).await;
    populate_debt(s).await;
    populate_lifecycle(s, &log).await;
}

/// A token under a lease with a status slot, its lease, its list, and a webhook delivery.
async fn populate_lifecycle(s: &Store, log: &AuditLog) {
    let blk = s.allocate_status(1024, 256, 1_000).await.unwrap();
    let mut e = issue("t-lease", 1_300);
    e.exp = Some(9_000);
    let mut p = Pending::event(e);
    p.status = Some(StatusSlot {
        list: blk.list,
        idx: 5,
    });
    p.lease = Some(LeaseLink::Open(NewLease {
        id: "L1".into(),
        kind: LeaseKind::Ci,
        owner: "repo:acme/app".into(),
        client_id: "svc".into(),
        grace: None,
        expires_at: 20_000,
        ci: Some(CiRun {
            provider: "github".into(),
            project: "acme/app".into(),
            run: "7".into(),
            attempt: Some("1".into()),
            job: None,
        }),
    }));
    log.commit(p).await.unwrap();
    s.revoke_selected(
        &RevokeSelector {
            jti: Some("t-lease".into()),
            ..Default::default()
        },
        1_400,
    )
    .await
    .unwrap();
    assert!(s.first_delivery("github", "d-1", 9_000).await.unwrap());
}

/// The lifecycle records came along: the lease, the list, the token's revoked bit, the
/// delivery already seen.
async fn assert_lifecycle_complete(s: &Store) {
    let lease = s.lease("L1").await.unwrap().unwrap();
    assert_eq!(lease.kind, LeaseKind::Ci);
    assert_eq!(lease.ci.unwrap().attempt.as_deref(), Some("1"));
    assert_eq!(lease.grace, None);
    assert_eq!(s.status_list_size(1).await.unwrap(), Some(1024));
    assert_eq!(s.revoked_indexes(1, 2_000).await.unwrap(), vec![5]);
    assert!(!s.first_delivery("github", "d-1", 9_000).await.unwrap());
    // The next block continues after the imported allocation.
    let blk = s.allocate_status(1024, 256, 2_000).await.unwrap();
    assert_eq!((blk.list, blk.start), (1, 256));
}

fn debt(name: &str) -> mayfly_store::DebtEntry {
    mayfly_store::DebtEntry {
        name: name.into(),
        owner: "payments-team".into(),
        created_at: 1_000,
        expires_at: 90_000,
        routes: vec!["stripe".into()],
        fingerprint: "ab".repeat(32),
        wrapped: false,
        key_version: 1,
        updated_at: 1_000,
        extended_reason: None,
        found_at: None,
        last_used_at: None,
    }
}

/// Key debt: a wrapped key (sealed), a fingerprint-only finding, one identity's usage.
async fn populate_debt(s: &Store) {
    let k = kek();
    assert!(
        s.add_debt(&debt("stripe"), Some(b"sk_live_123"), &k)
            .await
            .unwrap()
    );
    let mut found = debt("found-in-repo");
    found.found_at = Some("repo@abc:app.py:3".into());
    assert!(s.add_debt(&found, None, &k).await.unwrap());
    s.record_debt_usage(&[mayfly_store::DebtUsage {
        name: "stripe".into(),
        identity: "spiffe://example.org/billing".into(),
        first_used_at: 1_100,
        last_used_at: 1_200,
        calls: 3,
    }])
    .await
    .unwrap();
}

fn entry() -> StoredEntry {
    StoredEntry {
        id: "e-1".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        parent_id: "spiffe://example.org/mayfly/agent/node-1".into(),
        selectors: vec!["unix:uid:1000".into(), "unix:user:web".into()],
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: vec!["web.internal".into()],
        created_at: 900,
    }
}

fn agent() -> StoredAgent {
    StoredAgent {
        spiffe_id: "spiffe://example.org/mayfly/agent/node-1".into(),
        attestation: "join_token".into(),
        serial: "0a1b".into(),
        attested_at: 1_000,
        expires_at: 4_600,
    }
}

/// The SPIFFE side: a CA and a JWT-SVID key (sealed), an entry, a used and an unused join
/// token, an agent, and a revoked JWT-SVID with a token minted from it and one minted from a
/// live one. Adds 2 audit events (the two mints).
async fn populate_spiffe(s: &Store, log: &AuditLog) {
    let k = kek();
    for (kind, id) in [(AuthorityKind::X509, "ca-1"), (AuthorityKind::Jwt, "jk-1")] {
        let t = KeyTimes {
            kid: id.into(),
            created_at: 1_000,
            not_before: 1_000,
            not_after: 90_000,
            expires_at: 180_000,
        };
        s.insert_authority(kind, &t, "PUBLIC", b"private pkcs8", &k)
            .await
            .unwrap();
    }
    assert!(s.add_entry(&entry()).await.unwrap());
    s.add_join_token(
        "used-token-0001",
        "hash-used",
        1_000,
        1_600,
        Some("spiffe://example.org/mayfly/agent/node-1"),
    )
    .await
    .unwrap();
    s.add_join_token("fresh-token-002", "hash-fresh", 1_000, 1_600, None)
        .await
        .unwrap();
    let (outcome, _) = s
        .consume_join_token("used-token-0001", |h| h == "hash-used", 1_100)
        .await
        .unwrap();
    assert_eq!(outcome, JoinTokenOutcome::Accepted);
    s.upsert_agent(&agent()).await.unwrap();
    for (token, svid) in [("t-svid-dead", "svid-dead"), ("t-svid-live", "svid-live")] {
        let mut e = issue(token, 1_300);
        e.exp = Some(5_000);
        let mut p = Pending::event(e);
        p.link_svid = Some(svid.into());
        log.commit(p).await.unwrap();
    }
    let revoked = s
        .revoke_svids(&["svid-dead".to_string()], 1_400, 5_000)
        .await
        .unwrap();
    assert_eq!(revoked, vec!["t-svid-dead".to_string()]);
}

/// What the SPIFFE side needs after a move: the CA opens under the same master key, single
/// use still holds, and a JWT-SVID revoked before the move takes its tokens with it, as does
/// one revoked after it.
async fn assert_spiffe_complete(s: &Store) {
    let k = kek();
    let cas = s.load_authorities(AuthorityKind::X509, &k).await.unwrap();
    assert_eq!(cas.len(), 1);
    assert_eq!(cas[0].times.kid, "ca-1");
    assert_eq!(&cas[0].private_pkcs8[..], b"private pkcs8");
    assert_eq!(
        s.load_authorities(AuthorityKind::Jwt, &k)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.list_entries(None).await.unwrap(), vec![entry()]);
    let (used, _) = s
        .consume_join_token("used-token-0001", |h| h == "hash-used", 1_200)
        .await
        .unwrap();
    assert_eq!(used, JoinTokenOutcome::AlreadyUsed);
    assert_eq!(
        s.get_agent(&agent().spiffe_id).await.unwrap(),
        Some(agent())
    );
    assert!(s.is_svid_revoked("svid-dead").await.unwrap());
    assert!(s.is_revoked("t-svid-dead").await.unwrap());
    assert!(!s.is_svid_revoked("svid-live").await.unwrap());
    assert!(!s.is_revoked("t-svid-live").await.unwrap());
    // Key debt: the wrapped key opens under the same master key; usage came along.
    let (e, key) = s.open_debt_key("stripe", &k).await.unwrap().unwrap();
    assert_eq!(&key[..], b"sk_live_123");
    assert_eq!(e.last_used_at, Some(1_200));
    assert!(
        s.open_debt_key("found-in-repo", &k)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.list_debt().await.unwrap().len(), 2);
    assert_eq!(s.debt_usage("stripe").await.unwrap()[0].calls, 3);
}

/// Revoking the live JWT-SVID on a store that was imported revokes the token linked before the
/// move.
async fn assert_links_survive(s: &Store) {
    let revoked = s
        .revoke_svids(&["svid-live".to_string()], 1_500, 5_000)
        .await
        .unwrap();
    assert_eq!(revoked, vec!["t-svid-live".to_string()]);
}

async fn export(s: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    s.export(&mut out, &SystemClock).await.unwrap();
    out
}

/// The row lines: everything but the header (which holds the export time) and the trailer.
fn rows(file: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// What a server needs after the move is all there and intact.
async fn assert_complete(s: &Store) {
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 155);
    assert_eq!(s.load_keys(&kek()).await.unwrap().len(), 2);
    assert_eq!(s.list_clients().await.unwrap(), clients());
    assert!(s.is_revoked("t1").await.unwrap());
    assert!(!s.is_revoked("t2").await.unwrap());
    assert_spiffe_complete(s).await;
}

async fn assert_empty(s: &Store) {
    assert!(s.load_keys(&kek()).await.unwrap().is_empty());
    assert!(s.list_clients().await.unwrap().is_empty());
    assert!(s.audit_tail(1).await.unwrap().is_empty());
    let report = s.audit_verify(&kek()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// `from` -> `to` -> `back`: every hop keeps every row, byte for byte.
async fn round_trip(from: Db, to: Db, back: Db) {
    let k = kek();
    populate(&from.store).await;
    let first = export(&from.store).await;
    let sum = to.store.import(&first[..], &opts(&k)).await.unwrap();
    assert_eq!(sum.counts.signing_keys, 2);
    assert_eq!(sum.counts.clients, 2);
    assert_eq!(sum.counts.revoked_tokens, 3);
    assert_eq!(sum.counts.spiffe_authorities, 2);
    assert_eq!(sum.counts.spiffe_entries, 1);
    assert_eq!(sum.counts.join_tokens, 2);
    assert_eq!(sum.counts.spiffe_agents, 1);
    assert_eq!(sum.counts.revoked_svids, 1);
    assert_eq!(sum.counts.svid_tokens, 2);
    assert_eq!(sum.counts.debt_keys, 2);
    assert_eq!(sum.counts.debt_usage, 1);
    assert_eq!(sum.counts.issued_tokens, 3);
    assert_eq!(sum.counts.leases, 1);
    assert_eq!(sum.counts.status_lists, 1);
    assert_eq!(sum.counts.webhook_deliveries, 1);
    assert_eq!(sum.counts.audit_events, 155);
    assert_eq!(sum.counts.audit_head, 1);
    assert_eq!(sum.schema_version, 7);
    assert_eq!(sum.replay_records_derived, 0, "the events are long past");
    assert_complete(&to.store).await;
    let second = export(&to.store).await;
    assert_eq!(rows(&first), rows(&second));

    back.store.import(&second[..], &opts(&k)).await.unwrap();
    assert_complete(&back.store).await;
    assert_eq!(rows(&export(&back.store).await), rows(&first));

    // The chain goes on where it stopped.
    let log = AuditLog::start(
        to.store.clone(),
        k.clone(),
        AuditSink::Off,
        600,
        Arc::new(SystemClock),
    );
    let seq = log
        .commit(Pending::event(issue("after", 2_000)))
        .await
        .unwrap();
    assert_eq!(seq, CommitOutcome::Committed(156));
    let report = to.store.audit_verify(&k).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_links_survive(&to.store).await;
    assert_lifecycle_complete(&to.store).await;
}

#[tokio::test]
async fn sqlite_to_postgres_and_back() {
    round_trip(sqlite().await, postgres().await, sqlite().await).await;
}

#[tokio::test]
async fn postgres_to_sqlite_and_back() {
    let from = postgres().await;
    let to = sqlite().await;
    let back = postgres().await;
    round_trip(from, to, back).await;
}

/// The header's export time is the given clock's.
#[tokio::test]
async fn the_file_is_dated_by_the_given_clock() {
    let db = sqlite().await;
    let mut out = Vec::new();
    db.store
        .export(&mut out, &mayfly_proto::ManualClock::new(1_234_567))
        .await
        .unwrap();
    let header: serde_json::Value =
        serde_json::from_str(std::str::from_utf8(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(header["exported_at"], 1_234_567);
}

#[tokio::test]
async fn the_file_holds_sealed_keys_only_and_says_what_it_holds() {
    let db = sqlite().await;
    populate(&db.store).await;
    let file = export(&db.store).await;
    let text = String::from_utf8(file.clone()).unwrap();
    for a in [AuthorityKind::X509, AuthorityKind::Jwt] {
        for ca in db.store.load_authorities(a, &kek()).await.unwrap() {
            let clear = base64::engine::general_purpose::STANDARD.encode(&*ca.private_pkcs8);
            assert!(!text.contains(&clear), "a SPIFFE authority key in clear");
        }
    }
    assert!(!text.contains("private pkcs8"));
    assert!(!text.contains("sk_live_123"), "a legacy key in clear");
    for k in db.store.load_keys(&kek()).await.unwrap() {
        let der = k.key.to_pkcs8().unwrap();
        for enc in [
            base64::engine::general_purpose::STANDARD.encode(&*der),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*der),
            mayfly_crypto::hex(&der),
        ] {
            assert!(!text.contains(&enc), "a private key in clear");
        }
    }
    assert!(!text.contains(r#"\"d\""#), "no private JWK member");

    let lines: Vec<&str> = text.lines().collect();
    let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["mayfly_export"], 1);
    assert_eq!(header["schema_version"], 7);
    assert_eq!(header["source"], "sqlite");
    assert_eq!(header["counts"]["audit_events"], 155);
    assert_eq!(header["counts"]["spiffe_authorities"], 2);
    assert_eq!(header["counts"]["signing_keys"], 2);
    let row: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(row["table"], "signing_keys");
    assert!(row["row"]["sealed_private"].is_string());
    // The trailer's digest is the plain SHA-256 of the lines before it.
    let trailer: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    let body_len = file.len() - lines[lines.len() - 1].len() - 1;
    assert_eq!(
        trailer["sha256"],
        mayfly_crypto::hex(&mayfly_crypto::sha256(&file[..body_len]))
    );
    assert_eq!(trailer["counts"], header["counts"]);
}

#[tokio::test]
async fn import_refuses_a_store_that_is_not_empty() {
    let k = kek();
    let src = sqlite().await;
    populate(&src.store).await;
    let file = export(&src.store).await;
    let err = src.store.import(&file[..], &opts(&k)).await.unwrap_err();
    assert!(matches!(err, TransferError::NotEmpty(_)), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_complete(&src.store).await;

    // One run-time client is enough to refuse, on either backend.
    for target in [sqlite().await, postgres().await] {
        target.store.add_client(&clients()[0]).await.unwrap();
        let err = target.store.import(&file[..], &opts(&k)).await.unwrap_err();
        assert!(matches!(err, TransferError::NotEmpty(_)), "{err}");
        assert_eq!(target.store.list_clients().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn an_edited_byte_fails_the_checksum_and_leaves_the_target_empty() {
    let k = kek();
    let src = sqlite().await;
    populate(&src.store).await;
    let file = export(&src.store).await;
    let target = postgres().await;

    // A scope of a run-time client, still valid JSON: only the checksum can tell.
    let at = file.windows(8).position(|w| w == br#"\"read\""#).unwrap();
    let mut edited = file.clone();
    edited[at + 3] = b'o';
    let err = target
        .store
        .import(&edited[..], &opts(&k))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Checksum), "{err}");
    assert_empty(&target.store).await;

    // Any single byte, anywhere: refused, and nothing stays behind.
    let step = file.len() / 23;
    for at in (0..file.len()).step_by(step) {
        let mut edited = file.clone();
        edited[at] ^= 0x01;
        assert!(
            target.store.import(&edited[..], &opts(&k)).await.is_err(),
            "byte {at} edited"
        );
    }
    assert_empty(&target.store).await;
    target.store.import(&file[..], &opts(&k)).await.unwrap();
    assert_complete(&target.store).await;
}

#[tokio::test]
async fn a_truncated_file_is_refused_and_leaves_the_target_empty() {
    let k = kek();
    let src = sqlite().await;
    populate(&src.store).await;
    let file = export(&src.store).await;
    let target = postgres().await;
    let last_line = file[..file.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let first_line = file.iter().position(|b| *b == b'\n').unwrap() + 1;
    for cut in [
        last_line,      // no trailer
        file.len() - 1, // the trailer's newline
        file.len() / 2, // in the middle of a row
        first_line,     // the header alone
        first_line - 1, // half a header
        0,              // nothing
    ] {
        let err = target
            .store
            .import(&file[..cut], &opts(&k))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Truncated(_) | TransferError::NotAnExport(_)
            ),
            "cut at {cut}: {err}"
        );
    }
    assert_empty(&target.store).await;
    // Rows dropped from the middle: the counts and the checksum disagree.
    let text = String::from_utf8(file.clone()).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.contains(r#""jti":"t7""#))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(without.len() < text.len());
    let err = target
        .store
        .import(without.as_bytes(), &opts(&k))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Checksum), "{err}");
    assert_empty(&target.store).await;
    target.store.import(&file[..], &opts(&k)).await.unwrap();
    assert_complete(&target.store).await;
}

#[tokio::test]
async fn import_refuses_another_master_key_and_future_files() {
    let src = sqlite().await;
    populate(&src.store).await;
    let file = export(&src.store).await;
    let target = sqlite().await;
    let other = Kek::from_bytes(&[8u8; 32]).unwrap();
    let err = target
        .store
        .import(&file[..], &opts(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::WrongMasterKey(_)), "{err}");
    assert_empty(&target.store).await;

    let text = String::from_utf8(file).unwrap();
    let newer_format = text.replacen(r#""mayfly_export":1"#, r#""mayfly_export":2"#, 1);
    let err = target
        .store
        .import(newer_format.as_bytes(), &opts(&kek()))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Format(2)), "{err}");
    let newer_schema = text.replacen(r#""schema_version":7"#, r#""schema_version":99"#, 1);
    let err = target
        .store
        .import(newer_schema.as_bytes(), &opts(&kek()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    let err = target
        .store
        .import(&b"{\"hello\":1}\n"[..], &opts(&kek()))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NotAnExport(_)), "{err}");
    assert_empty(&target.store).await;
}

/// SQLite remembers consumed assertion and subject-token jtis in memory (rebuilt from the log);
/// PostgreSQL in `used_jti`. Moving to PostgreSQL fills that table from the events of the
/// replay window, so an assertion used just before the move is still refused after it.
#[tokio::test]
async fn consumed_jtis_stay_consumed_after_a_move_to_postgres() {
    let k = kek();
    let now = SystemClock.now();
    let src = sqlite().await;
    let log = AuditLog::start(
        src.store.clone(),
        k.clone(),
        AuditSink::Off,
        600,
        Arc::new(SystemClock),
    );
    let recent = |assertion: Option<&str>, subject: Option<&str>, ts: i64| Pending {
        event: issue("t", ts),
        consume_jti: assertion.map(|a| ("svc".to_string(), a.to_string(), ts + 600)),
        consume_subject: subject.map(|s| ("k8s".to_string(), s.to_string(), ts + 600)),
        consume_actor: None,
        revoke: None,
        link_svid: None,
        parents: Vec::new(),
        status: None,
        lease: None,
    };
    for p in [
        recent(Some("a-old"), None, now - 10_000),
        recent(Some("a-new"), None, now - 5),
        recent(None, Some("s-new"), now - 5),
    ] {
        assert!(matches!(
            log.commit(p).await.unwrap(),
            CommitOutcome::Committed(_)
        ));
    }
    drop(log);
    let file = export(&src.store).await;

    let target = postgres().await;
    let sum = target
        .store
        .import(
            &file[..],
            &ImportOptions {
                master_key: Some(&k),
                replay_window: 600,
                now,
            },
        )
        .await
        .unwrap();
    // The assertion from the log; the one-time subject token travels in `used_jti` itself (SQLite
    // keeps those until their exp).
    assert_eq!(sum.replay_records_derived, 1);
    assert_eq!(sum.counts.used_jti, 1);
    let log = AuditLog::start(
        target.store.clone(),
        k.clone(),
        AuditSink::Off,
        600,
        Arc::new(SystemClock),
    );
    assert!(matches!(
        log.commit(recent(Some("a-new"), None, now)).await.unwrap(),
        CommitOutcome::Replay(_)
    ));
    assert!(matches!(
        log.commit(recent(None, Some("s-new"), now)).await.unwrap(),
        CommitOutcome::SubjectReplay(_)
    ));
    assert!(matches!(
        log.commit(recent(Some("a-old"), None, now)).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    let report = target.store.audit_verify(&k).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 6);
}

#[tokio::test]
async fn applied_migrations_are_listed_on_both_backends() {
    for db in [sqlite().await, postgres().await] {
        let applied = db.store.applied_migrations().await.unwrap();
        let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(applied[0].description, "init");
        assert_eq!(applied[2].description, "spiffe");
    }
}

/// Every table of the live schema is in an export, on both backends: a table added by a later
/// migration and forgotten here would otherwise be dropped silently by a move.
#[tokio::test]
async fn every_table_of_the_schema_is_exported() {
    use sqlx::Row;
    let mut want = mayfly_store::exported_tables();
    want.sort_unstable();
    let lite = sqlite().await;
    let path = lite._dir.as_ref().unwrap().path().join("t.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut live: Vec<String> = rows.iter().map(|r| r.get::<String, _>("name")).collect();
    live.sort_unstable();
    assert_eq!(live, want, "SQLite");

    let pg = postgres().await;
    let url = pg.pg.as_ref().unwrap().url();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut live: Vec<String> = rows.iter().map(|r| r.get::<String, _>("name")).collect();
    live.sort_unstable();
    assert_eq!(live, want, "PostgreSQL");
}

/// A file written before the SPIFFE tables existed (its counts lack them) still imports.
#[tokio::test]
async fn a_file_from_before_spiffe_imports() {
    let k = kek();
    let src = sqlite().await;
    let sched = Schedule {
        rotation: 3600,
        max_ttl: 600,
        skew: 30,
    };
    src.store
        .apply_key_actions(&keys::plan(&[], 1_000, &sched), 1_000, KeyAlg::EdDSA, &k)
        .await
        .unwrap();
    let text = String::from_utf8(export(&src.store).await).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let strip = |line: &str| {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let counts = v["counts"].as_object_mut().unwrap();
        for t in [
            "spiffe_authorities",
            "spiffe_entries",
            "join_tokens",
            "spiffe_agents",
            "revoked_svids",
            "svid_tokens",
            "svid_minters",
        ] {
            assert_eq!(counts.remove(t), Some(serde_json::json!(0)));
        }
        v
    };
    let mut body = format!("{}\n", strip(lines[0]));
    for l in &lines[1..lines.len() - 1] {
        body.push_str(l);
        body.push('\n');
    }
    let mut trailer = strip(lines[lines.len() - 1]);
    trailer["sha256"] = mayfly_crypto::hex(&mayfly_crypto::sha256(body.as_bytes())).into();
    let old = format!("{body}{trailer}\n");
    let target = postgres().await;
    let sum = target
        .store
        .import(old.as_bytes(), &opts(&k))
        .await
        .unwrap();
    assert_eq!(sum.counts.signing_keys, 2);
    assert_eq!(target.store.load_keys(&k).await.unwrap().len(), 2);
}
