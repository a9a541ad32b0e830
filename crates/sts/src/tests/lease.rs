//! Leases and status slots: `lease=new`, `lease=<id>`, CI job leases, and each refusal.

use serde_json::json;

use super::world::*;
use crate::{CiProvider, CiRun, Denial, LeaseLink, LeaseView, StatusSlot, assert_refused};

fn open_lease(t: &T, id: &str, owner: &str) -> LeaseView {
    let v = LeaseView {
        id: id.into(),
        owner: owner.into(),
        grace: Some(30),
        heartbeat_at: NOW,
        expires_at: NOW + 3600,
        ended: false,
    };
    t.mem.leases.lock().unwrap().insert(id.into(), v.clone());
    v
}

#[test]
fn lease_new_opens_a_lease_owned_by_the_principal() {
    let t = T::new();
    let o = t.cc(&[("resource", API), ("lease", "new")]).unwrap();
    let id = o.value.response.lease_id.clone().expect("lease_id");
    assert!(id.starts_with("l-"), "{id}");
    let Some(LeaseLink::Open(l)) = &o.record.lease else {
        panic!("{:?}", o.record.lease)
    };
    assert_eq!(
        (l.id.as_str(), l.owner.as_str(), l.client_id.as_str()),
        (id.as_str(), "svc", "svc")
    );
    assert_eq!(
        (l.grace, l.expires_at, l.ci.clone()),
        (Some(30), NOW + 86_400, None)
    );
    assert_eq!(o.value.lease_opened, Some("grant"));
    assert_eq!(o.record.event.lease.as_deref(), Some(id.as_str()));
    let c = peek(&o.value.response.access_token);
    assert_eq!(c["lease"], json!(id));
    assert_eq!(
        c["status"],
        json!({"status_list": {"idx": 0, "uri": format!("{ISSUER}/statuslists/1")}})
    );
    assert_eq!(o.record.status, Some(StatusSlot { list: 1, idx: 0 }));
    // Another lease=new opens another lease.
    let o2 = t.cc(&[("resource", API), ("lease", "new")]).unwrap();
    assert_ne!(o2.value.response.lease_id, Some(id));
}

#[test]
fn every_token_has_its_own_status_slot_and_no_lease_unless_asked() {
    let t = T::new();
    let a = t.cc(&[("resource", API)]).unwrap();
    let b = t.cc(&[("resource", API)]).unwrap();
    assert_eq!(a.record.status, Some(StatusSlot { list: 1, idx: 0 }));
    assert_eq!(b.record.status, Some(StatusSlot { list: 1, idx: 1 }));
    assert_eq!(
        (a.record.lease.clone(), a.value.response.lease_id.clone()),
        (None, None)
    );
    let c = peek(&b.value.response.access_token);
    assert_eq!(c["status"]["status_list"]["idx"], json!(1));
    assert!(c.get("lease").is_none());
    // The response carries no lease_id at all.
    let body = serde_json::to_value(&b.value.response).unwrap();
    assert!(body.get("lease_id").is_none(), "{body}");
}

#[test]
fn a_refused_request_takes_no_status_slot() {
    let t = T::new();
    let _ = refusal(t.cc(&[("resource", "https://nope.example")]));
    let a = t.cc(&[("resource", API)]).unwrap();
    assert_eq!(a.record.status, Some(StatusSlot { list: 1, idx: 0 }));
}

#[test]
fn lease_id_issues_under_the_existing_lease() {
    let t = T::new();
    open_lease(&t, "l-abc", "svc");
    let o = t.cc(&[("resource", API), ("lease", "l-abc")]).unwrap();
    assert_eq!(o.record.lease, Some(LeaseLink::Existing("l-abc".into())));
    assert_eq!(o.value.response.lease_id.as_deref(), Some("l-abc"));
    assert_eq!(o.value.lease_opened, None);
    assert_eq!(
        peek(&o.value.response.access_token)["lease"],
        json!("l-abc")
    );
}

#[test]
fn a_token_never_outlives_its_lease() {
    let t = T::new();
    let mut v = open_lease(&t, "l-short", "svc");
    v.expires_at = NOW + 100;
    t.mem.leases.lock().unwrap().insert("l-short".into(), v);
    let o = t.cc(&[("resource", API), ("lease", "l-short")]).unwrap();
    assert_eq!(o.value.response.expires_in, 100);
}

#[test]
fn an_unknown_lease_is_refused() {
    let t = T::new();
    let r = assert_refused!(
        t.cc(&[("resource", API), ("lease", "l-nope")]),
        Denial::UnknownLease,
        InvalidRequest
    );
    assert!(r.denial.to_string().contains("lease=new"));
}

#[test]
fn another_principals_lease_reads_as_unknown() {
    let t = T::new();
    open_lease(&t, "l-theirs", "other");
    let r = assert_refused!(
        t.cc(&[("resource", API), ("lease", "l-theirs")]),
        Denial::UnknownLease,
        InvalidRequest
    );
    assert_eq!(
        r.denial.to_string(),
        Denial::UnknownLease.to_string(),
        "never reveal that the lease exists"
    );
}

#[test]
fn an_ended_lease_is_refused() {
    let t = T::new();
    let mut v = open_lease(&t, "l-done", "svc");
    v.ended = true;
    t.mem.leases.lock().unwrap().insert("l-done".into(), v);
    let r = assert_refused!(
        t.cc(&[("resource", API), ("lease", "l-done")]),
        Denial::LeaseEnded(_),
        InvalidRequest
    );
    assert_eq!(r.denial, Denial::LeaseEnded("l-done".into()));
    assert!(r.denial.to_string().contains("has ended"));
    assert_eq!(r.denial.reason(), "lease_ended");
}

#[test]
fn a_lease_past_its_heartbeat_grace_is_refused_before_the_reaper_ends_it() {
    let t = T::new();
    let mut v = open_lease(&t, "l-silent", "svc");
    v.heartbeat_at = NOW - 31;
    t.mem.leases.lock().unwrap().insert("l-silent".into(), v);
    assert_refused!(
        t.cc(&[("resource", API), ("lease", "l-silent")]),
        Denial::LeaseEnded(_),
        InvalidRequest
    );
}

#[test]
fn a_malformed_lease_parameter_is_refused() {
    let t = T::new();
    for bad in ["a b", "x/../y", &"x".repeat(129)] {
        assert_refused!(
            t.cc(&[("resource", API), ("lease", bad)]),
            Denial::InvalidParameter("lease", _),
            InvalidRequest
        );
    }
}

#[test]
fn a_ci_token_is_under_its_jobs_deterministic_lease() {
    let t = T::new();
    let job = t.gha(json!({"run_id": "42", "run_attempt": "1", "check_run_id": 777}));
    let o = t.exchange(&job, &[("audience", API)]).unwrap();
    // SHA-256("github\nacme/app\n42\n1\n777"), first 32 hex digits.
    let want = "ci-9e3144d78f7e19e27f115d8ed076d9dc";
    assert_eq!(o.value.response.lease_id.as_deref(), Some(want));
    let Some(LeaseLink::Open(l)) = &o.record.lease else {
        panic!("{:?}", o.record.lease)
    };
    assert_eq!(
        (l.id.as_str(), l.grace, l.expires_at),
        (want, None, NOW + 6 * 3600)
    );
    assert_eq!(
        l.ci,
        Some(CiRun {
            provider: CiProvider::GitHub,
            project: "acme/app".into(),
            run: "42".into(),
            attempt: Some("1".into()),
            job: Some("777".into()),
        })
    );
    assert_eq!(o.value.lease_opened, Some("ci"));
    // Once the lease exists, the job's next token joins it, and so does one naming it.
    open_lease(&t, want, GHA_ID);
    let again = t.exchange(&job, &[("audience", API)]).unwrap();
    assert_eq!(again.record.lease, Some(LeaseLink::Existing(want.into())));
    let named = t
        .exchange(&job, &[("audience", API), ("lease", want)])
        .unwrap();
    assert_eq!(named.record.lease, Some(LeaseLink::Existing(want.into())));
}

#[test]
fn a_ci_job_may_open_a_lease_of_its_own_that_ends_with_the_job_at_the_latest() {
    let t = T::new();
    let job = t.gha(json!({"run_id": "42", "run_attempt": "1", "check_run_id": "777"}));
    let mut v = open_lease(&t, "ci-9e3144d78f7e19e27f115d8ed076d9dc", GHA_ID);
    v.expires_at = NOW + 600;
    t.mem.leases.lock().unwrap().insert(v.id.clone(), v);
    let o = t
        .exchange(&job, &[("audience", API), ("lease", "new")])
        .unwrap();
    let Some(LeaseLink::Open(l)) = &o.record.lease else {
        panic!("{:?}", o.record.lease)
    };
    // Its own heartbeated lease, capped at the job's hard end.
    assert!(l.id.starts_with("l-"), "{}", l.id);
    assert_eq!(
        (l.grace, l.expires_at, l.ci.clone()),
        (Some(30), NOW + 600, None)
    );
    // Once the job has ended, not even a lease of its own is opened.
    let mut v = open_lease(&t, "ci-9e3144d78f7e19e27f115d8ed076d9dc", GHA_ID);
    v.ended = true;
    t.mem.leases.lock().unwrap().insert(v.id.clone(), v);
    assert_refused!(
        t.exchange(&job, &[("audience", API), ("lease", "new")]),
        Denial::CiJobEnded,
        InvalidRequest
    );
}

#[test]
fn gitlab_runs_derive_their_lease_id_the_same_way() {
    let run = CiRun {
        provider: CiProvider::GitLab,
        project: "group/proj".into(),
        run: "99".into(),
        attempt: None,
        job: Some("5".into()),
    };
    assert_eq!(run.lease_id(), "ci-0f866a88e0e986bb5df390c8a1180d20");
    let claims = json!({"project_path": "group/proj", "pipeline_id": "99", "job_id": 5});
    assert_eq!(CiRun::from_claims(CiProvider::GitLab, &claims), Some(run));
}

#[test]
fn a_ci_token_for_an_ended_job_is_refused() {
    let t = T::new();
    let job = t.gha(json!({"run_id": "42", "run_attempt": "1", "check_run_id": "777"}));
    let mut v = open_lease(&t, "ci-9e3144d78f7e19e27f115d8ed076d9dc", GHA_ID);
    v.ended = true;
    v.grace = None;
    t.mem.leases.lock().unwrap().insert(v.id.clone(), v);
    let r = assert_refused!(
        t.exchange(&job, &[("audience", API)]),
        Denial::CiJobEnded,
        InvalidRequest
    );
    assert_eq!(r.denial.reason(), "ci_job_ended");
}

#[test]
fn a_ci_token_cannot_name_a_lease_it_does_not_own() {
    let t = T::new();
    open_lease(&t, "l-mine", "svc");
    let job = t.gha(json!({"run_id": "42"}));
    assert_refused!(
        t.exchange(&job, &[("audience", API), ("lease", "l-mine")]),
        Denial::UnknownLease,
        InvalidRequest
    );
}

#[test]
fn a_ci_token_without_its_run_is_under_no_lease() {
    let t = T::new();
    let o = t.exchange(&t.gha(json!({})), &[("audience", API)]).unwrap();
    assert_eq!(o.record.lease, None);
}
