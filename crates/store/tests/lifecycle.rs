//! The lifecycle of issued credentials on both backends: status slots across replicas, leases
//! (end, heartbeat, reaping by several replicas at once, CI job ends), operator revocation by
//! selector, webhook delivery dedup, the revoked bits of a list, and the purge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use mayfly_crypto::Kek;
use mayfly_proto::{AuditEvent, Decision, EventKind};
use mayfly_store::{
    AuditLog, AuditSink, CiRun, CiSelector, CommitOutcome, LeaseKind, LeaseLink, LeaseRenewal,
    NewLease, Pending, RevokeSelector, StatusBlock, StatusSlot, Store, StoreError,
};
use mayfly_testkit::TestDb;
use tokio::sync::Mutex;

/// A database and how to open more stores on it (a second replica).
struct Db {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    // Declared after the store: the database is dropped once the store's pool is gone.
    _pg: Option<TestDb>,
}

impl Db {
    async fn replica(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::open(&url).await.unwrap();
    Db {
        store,
        url,
        _dir: Some(dir),
        _pg: None,
    }
}

async fn postgres() -> Db {
    let db = TestDb::create("mayfly_life").await;
    let url = db.url();
    let store = Store::open(&url).await.unwrap();
    Db {
        store,
        url,
        _dir: None,
        _pg: Some(db),
    }
}

fn log(s: &Store) -> AuditLog {
    let kek = Arc::new(Kek::from_bytes(&[7u8; 32]).unwrap());
    AuditLog::start(
        s.clone(),
        kek,
        AuditSink::Off,
        600,
        Arc::new(mayfly_proto::SystemClock),
    )
}

/// An issue event of `jti` for `client` at `ts`, expiring at `exp`.
fn issue(jti: &str, client: &str, ts: i64, exp: i64) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Issue, ts, Decision::Allow);
    e.client = Some(client.into());
    e.jti = Some(jti.into());
    e.exp = Some(exp);
    e
}

fn pending(e: AuditEvent, status: Option<StatusSlot>, lease: Option<LeaseLink>) -> Pending {
    let mut p = Pending::event(e);
    p.status = status;
    p.lease = lease;
    p
}

async fn commit(log: &AuditLog, p: Pending) {
    assert!(matches!(
        log.commit(p).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
}

fn grant_lease(id: &str, owner: &str, grace: i64, expires_at: i64) -> LeaseLink {
    LeaseLink::Open(NewLease {
        id: id.into(),
        kind: LeaseKind::Grant,
        owner: owner.into(),
        client_id: owner.into(),
        grace: Some(grace),
        expires_at,
        ci: None,
    })
}

fn ci_lease(id: &str, run: &str, attempt: &str, job: Option<&str>) -> LeaseLink {
    LeaseLink::Open(NewLease {
        id: id.into(),
        kind: LeaseKind::Ci,
        owner: "repo:acme/app".into(),
        client_id: "-".into(),
        grace: None,
        expires_at: 100_000,
        ci: Some(CiRun {
            provider: "github".into(),
            project: "acme/app".into(),
            run: run.into(),
            attempt: Some(attempt.into()),
            job: job.map(str::to_string),
        }),
    })
}

/// A replica's allocator as the server runs it: blocks of 256, one at a time.
struct Slots {
    store: Store,
    block: Mutex<Option<(StatusBlock, i64)>>,
}

impl Slots {
    async fn next(&self, list_size: i64) -> StatusSlot {
        let mut b = self.block.lock().await;
        if b.as_ref().is_none_or(|(blk, next)| *next >= blk.end) {
            let blk = self
                .store
                .allocate_status(list_size, 256, 1_000)
                .await
                .unwrap();
            *b = Some((blk, blk.start));
        }
        let (blk, next) = b.as_mut().unwrap();
        let slot = StatusSlot {
            list: blk.list,
            idx: *next,
        };
        *next += 1;
        slot
    }
}

/// 1,000 concurrent issuances through two replicas (two stores, two committers, one database)
/// get 1,000 distinct status slots, and the registry holds each token at its slot: revoking
/// them all sets exactly those bits.
async fn distinct_slots_across_replicas(db: Db) {
    let replicas = [db.store.clone(), db.replica().await];
    let logs = [log(&replicas[0]), log(&replicas[1])];
    let slots = [
        Arc::new(Slots {
            store: replicas[0].clone(),
            block: Mutex::new(None),
        }),
        Arc::new(Slots {
            store: replicas[1].clone(),
            block: Mutex::new(None),
        }),
    ];
    // Lists of 768 (three blocks): the run fills one and opens more.
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (log, slots) = (logs[i % 2].clone(), slots[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            let slot = slots.next(768).await;
            let e = issue(&format!("t{i}"), "svc", 1_000, 5_000);
            commit(&log, pending(e, Some(slot), None)).await;
            slot
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        assert!(all.insert(t.await.unwrap()), "a slot was handed out twice");
    }
    assert_eq!(all.len(), 1000);
    let lists: BTreeSet<i64> = all.iter().map(|s| s.list).collect();
    assert!(lists.len() >= 2, "a new list opens when one is full");
    for l in &lists {
        assert_eq!(replicas[1].status_list_size(*l).await.unwrap(), Some(768));
    }
    let sel = RevokeSelector {
        client: Some("svc".into()),
        ..Default::default()
    };
    let revoked = replicas[0].revoke_selected(&sel, 2_000).await.unwrap();
    assert_eq!(revoked.len(), 1000);
    let mut bits = HashSet::new();
    for l in &lists {
        for idx in replicas[1].revoked_indexes(*l, 2_000).await.unwrap() {
            bits.insert(StatusSlot { list: *l, idx });
        }
    }
    assert_eq!(bits, all);
}

#[tokio::test]
async fn distinct_slots_sqlite() {
    distinct_slots_across_replicas(sqlite().await).await;
}

#[tokio::test]
async fn distinct_slots_postgres() {
    distinct_slots_across_replicas(postgres().await).await;
}

/// A lease opened through one replica and ended through the other revokes its tokens and
/// those derived from them, as the first replica sees; heartbeats; idempotent end.
async fn lease_end_across_replicas(db: Db) {
    let (a, b) = (db.store.clone(), db.replica().await);
    let la = log(&a);
    commit(
        &la,
        pending(
            issue("l1", "svc", 1_000, 9_000),
            None,
            Some(grant_lease("L", "svc", 30, 50_000)),
        ),
    )
    .await;
    commit(
        &la,
        pending(
            issue("l2", "svc", 1_010, 9_000),
            None,
            Some(LeaseLink::Existing("L".into())),
        ),
    )
    .await;
    // Derived from l2 (narrowed): not under the lease itself, revoked with it.
    let mut d = pending(issue("d1", "svc", 1_020, 9_000), None, None);
    d.parents = vec!["l2".into()];
    commit(&la, d).await;
    commit(&la, pending(issue("free", "svc", 1_020, 9_000), None, None)).await;

    let lease = b.lease("L").await.unwrap().unwrap();
    assert_eq!(
        (
            lease.kind,
            lease.owner.as_str(),
            lease.grace,
            lease.heartbeat_at,
            lease.expires_at
        ),
        (LeaseKind::Grant, "svc", Some(30), 1_000, 50_000)
    );
    assert_eq!(lease.ended_at, None);
    match b.renew_lease("L", 1_025).await.unwrap() {
        LeaseRenewal::Renewed(l) => assert_eq!(l.heartbeat_at, 1_025),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        b.renew_lease("nope", 1_025).await.unwrap(),
        LeaseRenewal::Unknown
    );
    assert_eq!(a.open_leases(10).await.unwrap().len(), 1);

    let end = b.end_lease("L", "ended", 1_030).await.unwrap().unwrap();
    assert!(!end.already_ended);
    let got: BTreeSet<String> = end.revoked.into_iter().collect();
    assert_eq!(got, ["d1", "l1", "l2"].map(String::from).into());
    assert_eq!(end.lease.ended_at, Some(1_030));
    assert_eq!(end.lease.end_reason.as_deref(), Some("ended"));
    for jti in ["l1", "l2", "d1"] {
        assert!(a.is_revoked(jti).await.unwrap(), "{jti}");
    }
    assert!(!a.is_revoked("free").await.unwrap());
    // Idempotent: a second end revokes nothing and says so.
    let again = a.end_lease("L", "ended", 1_040).await.unwrap().unwrap();
    assert!(again.already_ended && again.revoked.is_empty());
    assert_eq!(again.lease.ended_at, Some(1_030));
    assert!(a.end_lease("nope", "ended", 1_040).await.unwrap().is_none());
    assert!(matches!(
        a.renew_lease("L", 1_050).await.unwrap(),
        LeaseRenewal::Ended(l) if l.ended_at == Some(1_030)
    ));
    assert!(a.open_leases(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn lease_end_sqlite() {
    lease_end_across_replicas(sqlite().await).await;
}

#[tokio::test]
async fn lease_end_postgres() {
    lease_end_across_replicas(postgres().await).await;
}

/// Two replicas reaping at once end each overdue lease exactly once, for the right reason, and
/// leave the others open; a lease past its grace is not revived by a late heartbeat.
async fn overdue_leases_end_once(db: Db) {
    let (a, b) = (db.store.clone(), db.replica().await);
    let la = log(&a);
    // Opened at 1,000. Grace 30: overdue from 1,031. Hard end 1,500 for the x leases.
    for i in 0..40 {
        let (id, exp) = if i % 4 == 0 {
            (format!("x{i}"), 1_500)
        } else {
            (format!("h{i}"), 50_000)
        };
        commit(
            &la,
            pending(
                issue(&format!("t{i}"), "svc", 1_000, 9_000),
                None,
                Some(grant_lease(&id, "svc", 30, exp)),
            ),
        )
        .await;
    }
    // Kept alive: heartbeats at 1,025 (good until 1,055).
    for i in [1, 2, 3] {
        assert!(matches!(
            a.renew_lease(&format!("h{i}"), 1_025).await.unwrap(),
            LeaseRenewal::Renewed(_)
        ));
    }
    assert!(b.end_overdue_leases(1_030, 100).await.unwrap().is_empty());
    // At 1,040 every lease but h1..h3 is overdue (the x leases by heartbeat too).
    let mut tasks = Vec::new();
    for s in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            // Small limit: several rounds each, racing the other replica.
            loop {
                let ended = s.end_overdue_leases(1_040, 5).await.unwrap();
                if ended.is_empty() {
                    return out;
                }
                out.extend(ended);
            }
        }));
    }
    let mut ended = Vec::new();
    for t in tasks {
        ended.extend(t.await.unwrap());
    }
    let ids: Vec<&str> = ended.iter().map(|e| e.lease.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a lease was ended twice");
    assert_eq!(unique.len(), 37);
    assert!(!unique.contains("h1") && !unique.contains("h2") && !unique.contains("h3"));
    for e in &ended {
        assert_eq!(e.lease.end_reason.as_deref(), Some("heartbeat"));
        assert_eq!(e.revoked.len(), 1);
        assert!(a.is_revoked(&e.revoked[0]).await.unwrap());
    }
    // Late heartbeat on an overdue lease that nobody has reaped yet: not revived.
    assert!(matches!(
        a.renew_lease("h1", 1_060).await.unwrap(),
        LeaseRenewal::Ended(l) if l.ended_at.is_none()
    ));
    // Hard end: a lease heartbeated to the last second still ends at its expires_at.
    commit(
        &la,
        pending(
            issue("hard", "svc", 1_000, 9_000),
            None,
            Some(grant_lease("hard", "svc", 30, 1_100)),
        ),
    )
    .await;
    for t in [1_020, 1_045, 1_070, 1_095] {
        assert!(matches!(
            a.renew_lease("hard", t).await.unwrap(),
            LeaseRenewal::Renewed(_)
        ));
    }
    let ended = b.end_overdue_leases(1_100, 100).await.unwrap();
    let hard = ended.iter().find(|e| e.lease.id == "hard").unwrap();
    assert_eq!(hard.lease.end_reason.as_deref(), Some("expired"));
    assert!(a.is_revoked("hard").await.unwrap());
}

#[tokio::test]
async fn overdue_leases_sqlite() {
    overdue_leases_end_once(sqlite().await).await;
}

#[tokio::test]
async fn overdue_leases_postgres() {
    overdue_leases_end_once(postgres().await).await;
}

/// A token recorded under a lease that has already ended (or is unknown) is revoked at once;
/// a CI lease opened again by a later token of the job is joined, not reset.
async fn token_under_ended_lease(db: Db) {
    let s = &db.store;
    let l = log(s);
    commit(
        &l,
        pending(
            issue("a", "svc", 1_000, 9_000),
            None,
            Some(grant_lease("G", "svc", 30, 50_000)),
        ),
    )
    .await;
    s.end_lease("G", "ended", 1_010).await.unwrap().unwrap();
    commit(
        &l,
        pending(
            issue("late", "svc", 1_020, 9_000),
            None,
            Some(LeaseLink::Existing("G".into())),
        ),
    )
    .await;
    assert!(s.is_revoked("late").await.unwrap());
    commit(
        &l,
        pending(
            issue("ghost", "svc", 1_020, 9_000),
            None,
            Some(LeaseLink::Existing("gone".into())),
        ),
    )
    .await;
    assert!(s.is_revoked("ghost").await.unwrap());

    // CI: the job's first token opens the lease, the second joins it.
    commit(
        &l,
        pending(
            issue("c1", "-", 1_000, 9_000),
            None,
            Some(ci_lease("ci-1", "7", "1", Some("a"))),
        ),
    )
    .await;
    let mut second = ci_lease("ci-1", "7", "1", Some("a"));
    if let LeaseLink::Open(n) = &mut second {
        n.owner = "someone else".into();
    }
    commit(
        &l,
        pending(issue("c2", "-", 1_100, 9_000), None, Some(second)),
    )
    .await;
    let lease = s.lease("ci-1").await.unwrap().unwrap();
    assert_eq!(
        (lease.owner.as_str(), lease.created_at),
        ("repo:acme/app", 1_000)
    );
    assert_eq!(lease.ci.as_ref().unwrap().job.as_deref(), Some("a"));
    assert!(!s.is_revoked("c1").await.unwrap() && !s.is_revoked("c2").await.unwrap());
    // The job ends; a token asked for later by the same job is revoked as it is recorded.
    let sel = CiSelector {
        provider: "github".into(),
        project: "acme/app".into(),
        run: "7".into(),
        attempt: Some("1".into()),
        job: Some("a".into()),
    };
    let ends = s
        .end_ci_leases(&sel, "ci_job_completed", 1_200)
        .await
        .unwrap();
    assert_eq!(ends.len(), 1);
    commit(
        &l,
        pending(
            issue("c3", "-", 1_300, 9_000),
            None,
            Some(ci_lease("ci-1", "7", "1", Some("a"))),
        ),
    )
    .await;
    assert!(s.is_revoked("c3").await.unwrap());
    // A replayed request issues nothing: its lease is not opened.
    let mut p = pending(
        issue("r1", "svc", 1_300, 9_000),
        None,
        Some(grant_lease("R", "svc", 30, 50_000)),
    );
    p.consume_jti = Some(("svc".into(), "assert-1".into(), 9_000));
    commit(&l, p).await;
    let mut p = pending(
        issue("r2", "svc", 1_300, 9_000),
        None,
        Some(grant_lease("R2", "svc", 30, 50_000)),
    );
    p.consume_jti = Some(("svc".into(), "assert-1".into(), 9_000));
    assert!(matches!(
        l.commit(p).await.unwrap(),
        CommitOutcome::Replay(_)
    ));
    assert!(s.lease("R").await.unwrap().is_some());
    assert!(s.lease("R2").await.unwrap().is_none());
}

#[tokio::test]
async fn ended_lease_sqlite() {
    token_under_ended_lease(sqlite().await).await;
}

#[tokio::test]
async fn ended_lease_postgres() {
    token_under_ended_lease(postgres().await).await;
}

/// A job's end ends that job's leases only; an attempt's end that attempt's; a run's end
/// every lease of the run; other runs stay open.
async fn ci_leases_by_job_attempt_run(db: Db) {
    let s = &db.store;
    let l = log(s);
    let leases = [
        ("j1a", "7", "1", Some("a")),
        ("j1b", "7", "1", Some("b")),
        ("j1", "7", "1", None),
        ("j2a", "7", "2", Some("a")),
        ("o", "8", "1", Some("a")),
    ];
    for (id, run, attempt, job) in leases {
        commit(
            &l,
            pending(
                issue(&format!("t-{id}"), "-", 1_000, 9_000),
                None,
                Some(ci_lease(id, run, attempt, job)),
            ),
        )
        .await;
    }
    let sel = |attempt: Option<&str>, job: Option<&str>| CiSelector {
        provider: "github".into(),
        project: "acme/app".into(),
        run: "7".into(),
        attempt: attempt.map(str::to_string),
        job: job.map(str::to_string),
    };
    let ids = |ends: Vec<mayfly_store::LeaseEnd>| -> BTreeSet<String> {
        ends.into_iter().map(|e| e.lease.id).collect()
    };
    let e = s
        .end_ci_leases(&sel(Some("1"), Some("a")), "ci_job_completed", 1_100)
        .await
        .unwrap();
    assert_eq!(e[0].revoked, vec!["t-j1a".to_string()]);
    assert_eq!(ids(e), ["j1a".to_string()].into());
    let e = s
        .end_ci_leases(&sel(Some("2"), None), "ci_job_completed", 1_100)
        .await
        .unwrap();
    assert_eq!(ids(e), ["j2a".to_string()].into());
    // Another provider or project with the same run number: nothing.
    let mut other = sel(None, None);
    other.provider = "gitlab".into();
    assert!(
        s.end_ci_leases(&other, "ci_job_completed", 1_100)
            .await
            .unwrap()
            .is_empty()
    );
    let e = s
        .end_ci_leases(&sel(None, None), "ci_run_completed", 1_100)
        .await
        .unwrap();
    assert_eq!(ids(e), ["j1", "j1b"].map(String::from).into());
    assert!(s.is_revoked("t-j1b").await.unwrap() && s.is_revoked("t-j1").await.unwrap());
    assert!(!s.is_revoked("t-o").await.unwrap());
    let open: Vec<String> = s
        .open_leases(10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(open, vec!["o".to_string()]);
    assert_eq!(
        s.lease("j1b").await.unwrap().unwrap().end_reason.as_deref(),
        Some("ci_run_completed")
    );
}

#[tokio::test]
async fn ci_leases_sqlite() {
    ci_leases_by_job_attempt_run(sqlite().await).await;
}

#[tokio::test]
async fn ci_leases_postgres() {
    ci_leases_by_job_attempt_run(postgres().await).await;
}

/// The tokens [`revoke_by_selector`] selects from.
async fn selector_tokens(s: &Store, l: &AuditLog) {
    let e = |jti: &str, client: &str, identity: &str, issuer: Option<&str>, ts: i64| {
        let mut e = issue(jti, client, ts, 9_000);
        e.identity = Some(identity.into());
        e.subject_issuer = issuer.map(str::to_string);
        e
    };
    let evs = [
        e("j1", "c1", "spiffe://x/a", None, 1_000),
        e("j2", "c1", "spiffe://x/b", Some("gh"), 1_000),
        e("j3", "c2", "spiffe://x/b", Some("gh"), 1_100),
        e("j4", "c2", "spiffe://x/c", Some("gl"), 1_200),
        e("j5", "c3", "spiffe://x/d", None, 1_300),
        e("j6", "c3", "spiffe://x/d", None, 1_400),
    ];
    for ev in evs {
        commit(l, pending(ev, None, None)).await;
    }
    // Expired by the time of the revocation: not selected.
    commit(l, pending(issue("old", "c3", 500, 1_500), None, None)).await;
    commit(
        l,
        pending(
            issue("u1", "c4", 1_000, 9_000),
            None,
            Some(grant_lease("U", "c4", 30, 50_000)),
        ),
    )
    .await;
    s.record_issued_svid("svid1", "spiffe://x/w", None, 1_000, 9_000)
        .await
        .unwrap();
    let mut minted = pending(issue("m1", "c5", 1_000, 9_000), None, None);
    minted.link_svid = Some("svid1".into());
    commit(l, minted).await;
}

/// Each selector kind revokes what it names and no more; `since` narrows by issue time;
/// expired tokens are left alone; the empty selector is refused; JWT-SVIDs and what was minted
/// from them are revoked by identity.
async fn revoke_by_selector(db: Db) {
    let s = &db.store;
    selector_tokens(s, &log(s)).await;

    let now = 2_000;
    let rs = |sel: RevokeSelector| async move { s.revoke_selected(&sel, now).await.unwrap() };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert!(matches!(
        s.revoke_selected(
            &RevokeSelector {
                since: Some(0),
                ..Default::default()
            },
            now
        )
        .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        rs(RevokeSelector {
            jti: Some("j1".into()),
            ..Default::default()
        })
        .await,
        vec!["j1"]
    );
    assert_eq!(
        rs(RevokeSelector {
            jti: Some("j1".into()),
            ..Default::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        rs(RevokeSelector {
            identity: Some("spiffe://x/b".into()),
            since: Some(1_050),
            ..Default::default()
        })
        .await,
        vec!["j3"]
    );
    assert_eq!(
        rs(RevokeSelector {
            issuer: Some("gh".into()),
            ..Default::default()
        })
        .await,
        vec!["j2"]
    );
    assert_eq!(
        rs(RevokeSelector {
            client: Some("c3".into()),
            ..Default::default()
        })
        .await
        .len(),
        2
    );
    assert!(s.is_revoked("j5").await.unwrap() && s.is_revoked("j6").await.unwrap());
    assert!(!s.is_revoked("old").await.unwrap());
    assert_eq!(
        rs(RevokeSelector {
            issuer: Some("gl".into()),
            client: Some("c1".into()),
            ..Default::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert!(!s.is_revoked("j4").await.unwrap());
    // By lease: the lease ends (reason operator) and its token is revoked.
    assert_eq!(
        rs(RevokeSelector {
            lease: Some("U".into()),
            ..Default::default()
        })
        .await,
        vec!["u1"]
    );
    let u = s.lease("U").await.unwrap().unwrap();
    assert_eq!(
        (u.ended_at, u.end_reason.as_deref()),
        (Some(now), Some("operator"))
    );
    // A JWT-SVID by its identity: it and the token minted from it.
    assert_eq!(
        sorted(
            rs(RevokeSelector {
                identity: Some("spiffe://x/w".into()),
                ..Default::default()
            })
            .await
        ),
        vec!["m1", "svid1"]
    );
    assert!(s.is_svid_revoked("svid1").await.unwrap() && s.is_revoked("m1").await.unwrap());
    assert!(!s.is_revoked("j4").await.unwrap());
}

#[tokio::test]
async fn revoke_selected_sqlite() {
    revoke_by_selector(sqlite().await).await;
}

#[tokio::test]
async fn revoke_selected_postgres() {
    revoke_by_selector(postgres().await).await;
}

/// The revoked bits of a list are exactly the revoked, unexpired tokens' and JWT-SVIDs'
/// indexes; deliveries are acted on once; the purge removes what has expired and keeps the
/// rest (a list is kept while a token in it lives, plus a day).
async fn status_bits_deliveries_purge(db: Db) {
    let s = &db.store;
    let l = log(s);
    let blk = s.allocate_status(256, 256, 1_000).await.unwrap();
    assert_eq!((blk.start, blk.end), (0, 256));
    let slot = |idx| {
        Some(StatusSlot {
            list: blk.list,
            idx,
        })
    };
    // Several commits in a row: on SQLite the later ones take the one-round-trip path.
    for i in 0..8 {
        // The list's last exp (5,000) comes from the later commits only.
        let exp = match i {
            0 => 3_000,
            7 => 1_500,
            _ => 5_000,
        };
        commit(
            &l,
            pending(
                issue(&format!("s{i}"), "svc", 1_000, exp),
                slot(i * 3),
                None,
            ),
        )
        .await;
    }
    s.record_issued_svid("sv", "spiffe://x/w", slot(100), 1_000, 4_000)
        .await
        .unwrap();
    s.record_issued_svid("sv2", "spiffe://x/w2", slot(101), 1_000, 4_000)
        .await
        .unwrap();
    for jti in ["s1", "s4", "s7"] {
        s.revoke_selected(
            &RevokeSelector {
                jti: Some(jti.into()),
                ..Default::default()
            },
            1_100,
        )
        .await
        .unwrap();
    }
    s.revoke_svids(&["sv".to_string()], 1_100, 5_000)
        .await
        .unwrap();
    assert_eq!(
        s.revoked_indexes(blk.list, 1_200).await.unwrap(),
        vec![3, 12, 21, 100]
    );
    // s7 expired at 1,500.
    assert_eq!(
        s.revoked_indexes(blk.list, 2_000).await.unwrap(),
        vec![3, 12, 100]
    );
    assert!(
        s.revoked_indexes(blk.list + 1, 1_200)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.status_list_size(blk.list).await.unwrap(), Some(256));
    assert_eq!(s.status_list_size(blk.list + 1).await.unwrap(), None);

    assert!(s.first_delivery("github", "d1", 3_000).await.unwrap());
    assert!(!s.first_delivery("github", "d1", 3_000).await.unwrap());
    assert!(s.first_delivery("gitlab", "d1", 3_000).await.unwrap());

    // A lease ended at 1,010.
    commit(
        &l,
        pending(
            issue("le", "svc", 1_000, 5_000),
            None,
            Some(grant_lease("E", "svc", 30, 50_000)),
        ),
    )
    .await;
    s.end_lease("E", "ended", 1_010).await.unwrap();
    // A second list, current: never purged while it is the newest and not full.
    let blk2 = s.allocate_status(256, 128, 1_000).await.unwrap();
    assert_eq!((blk2.list, blk2.start), (blk.list + 1, 0));

    // At 4,000: the delivery and s7's registry row are gone; the rest stays.
    s.purge_expired(4_000).await.unwrap();
    assert!(s.first_delivery("github", "d1", 9_000).await.unwrap());
    assert_eq!(
        s.revoked_indexes(blk.list, 1_200).await.unwrap(),
        vec![3, 12, 100]
    );
    assert!(s.lease("E").await.unwrap().is_some());
    // A day after the list's last token expired (5,000): the full list goes; tokens' rows
    // went at their exp; the lease ended over a day ago goes; the newest list stays.
    s.purge_expired(5_000 + 86_400).await.unwrap();
    assert_eq!(s.status_list_size(blk.list).await.unwrap(), Some(256));
    s.purge_expired(5_001 + 86_400).await.unwrap();
    assert_eq!(s.status_list_size(blk.list).await.unwrap(), None);
    assert_eq!(s.status_list_size(blk2.list).await.unwrap(), Some(256));
    assert!(s.lease("E").await.unwrap().is_none());
    assert!(s.revoked_indexes(blk.list, 1_200).await.unwrap().is_empty());
    // A new list after the purge is numbered past every list ever opened.
    let blk3 = s.allocate_status(256, 256, 1_000).await.unwrap();
    assert_eq!(blk3.list, blk2.list + 1);
}

#[tokio::test]
async fn status_bits_sqlite() {
    status_bits_deliveries_purge(sqlite().await).await;
}

#[tokio::test]
async fn status_bits_postgres() {
    status_bits_deliveries_purge(postgres().await).await;
}
