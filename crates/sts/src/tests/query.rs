//! Introspection visibility and the revocation rules (`tests/e2e/revocation.rs`).

use mayfly_proto::IntrospectionResponse;

use super::world::*;
use crate::{
    AccessTokenClaims, Denial, FormRequest, IntrospectGrants, Outcome, Refusal, assert_refused,
    may_revoke, may_revoke_by_bearer,
};

fn claims(client: &str, aud: &str) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISSUER.into(),
        sub: client.into(),
        aud: aud.into(),
        client_id: client.into(),
        scope: None,
        iat: NOW,
        exp: NOW + 60,
        jti: "j".into(),
        act: None,
        lease: None,
        status: None,
    }
}

fn grants() -> IntrospectGrants {
    IntrospectGrants {
        clients: vec![("rs".into(), vec![API.into()]), ("other".into(), vec![])],
        proxy_client: Some("proxy".into()),
        proxy_audiences: vec![OTHER.into()],
    }
}

#[test]
fn a_client_sees_its_own_tokens() {
    assert!(grants().visible("peer", &claims("peer", API)));
}

#[test]
fn a_client_granted_an_audience_sees_its_tokens() {
    assert!(grants().visible("rs", &claims("svc", API)));
    assert!(!grants().visible("rs", &claims("svc", OTHER)));
}

#[test]
fn a_client_without_a_grant_sees_no_other_clients_tokens() {
    assert!(!grants().visible("other", &claims("svc", API)));
    assert!(!grants().visible("nobody", &claims("svc", API)));
}

#[test]
fn the_proxy_client_sees_its_routes_audiences() {
    assert!(grants().visible("proxy", &claims("svc", OTHER)));
    assert!(!grants().visible("proxy", &claims("svc", API)));
    let none = IntrospectGrants {
        proxy_client: None,
        ..grants()
    };
    assert!(!none.visible("proxy", &claims("svc", OTHER)));
}

#[test]
fn only_the_owner_revokes() {
    assert_eq!(may_revoke("svc", Some(&claims("svc", API))), Ok(()));
    let d = may_revoke("peer", Some(&claims("svc", API))).unwrap_err();
    assert!(matches!(d, Denial::NotTokenOwner));
    assert_eq!(d.code(), mayfly_proto::ErrorCode::UnauthorizedClient);
    // Not a live token of ours: nothing to do, and 200 (RFC 7009 §2.2).
    assert_eq!(may_revoke("peer", None), Ok(()));
}

#[test]
fn a_bearer_revokes_only_a_token_no_registered_client_owns() {
    assert_eq!(
        may_revoke_by_bearer(Some(&claims("spiffe://td/w", API)), false),
        Ok(())
    );
    for (c, registered) in [(Some(claims("svc", API)), true), (None, false)] {
        let d = may_revoke_by_bearer(c.as_ref(), registered).unwrap_err();
        assert!(matches!(d, Denial::MissingClientAuth));
        assert_eq!(d.code(), mayfly_proto::ErrorCode::InvalidClient);
    }
}

fn introspect(
    t: &T,
    who_assertion: &str,
    token: &str,
) -> Result<Outcome<IntrospectionResponse>, Refusal> {
    let body = form(&[
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", who_assertion),
        ("token", token),
    ]);
    let req = FormRequest {
        body: &body,
        http_auth: false,
        source: None,
    };
    let g = IntrospectGrants {
        clients: vec![("gateway".into(), vec![API.into()])],
        ..IntrospectGrants::default()
    };
    block_on(crate::introspect(&t.sts(), &req, &g))
}

fn revoke(t: &T, pairs: &[(&str, &str)]) -> Result<Outcome<()>, Refusal> {
    let body = form(pairs);
    let req = FormRequest {
        body: &body,
        http_auth: false,
        source: Some("192.0.2.1"),
    };
    block_on(crate::revoke(&t.sts(), &req))
}

#[test]
fn the_owner_introspects_an_active_token() {
    let t = T::new();
    let tok = t.svc_token(API);
    let o = introspect(&t, &t.assertion(), &tok).unwrap();
    assert!(o.value.active);
    assert_eq!(o.value.client_id.as_deref(), Some("svc"));
    assert_eq!(o.record.event.reason.as_deref(), Some("active"));
    assert_eq!(
        o.record.consume_jti.as_ref().map(|c| c.0.as_str()),
        Some("svc")
    );
}

#[test]
fn a_granted_client_introspects_another_clients_token() {
    let t = T::new();
    let tok = t.svc_token(API);
    assert!(
        introspect(&t, &t.gateway_assertion(), &tok)
            .unwrap()
            .value
            .active
    );
}

#[test]
fn an_ungranted_client_sees_an_inactive_token_and_the_event_says_why() {
    let t = T::new();
    let tok = t.svc_token(API);
    let a = t.other.sign_jwt(None, &t.claims("other")).unwrap();
    let o = introspect(&t, &a, &tok).unwrap();
    assert_eq!(o.value, IntrospectionResponse::inactive());
    assert_eq!(
        o.record.event.reason.as_deref(),
        Some("introspection_not_granted")
    );
    assert_eq!(o.record.event.jti, None);
}

#[test]
fn a_revoked_token_is_inactive() {
    let t = T::new();
    let tok = t.svc_token(API);
    t.mem
        .revoked
        .lock()
        .unwrap()
        .insert(peek(&tok)["jti"].as_str().unwrap().into());
    let o = introspect(&t, &t.assertion(), &tok).unwrap();
    assert!(!o.value.active);
    assert_eq!(o.record.event.reason.as_deref(), Some("inactive"));
}

#[test]
fn introspection_needs_the_token_parameter() {
    let t = T::new();
    let body = form(&[
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &t.assertion()),
    ]);
    let req = FormRequest {
        body: &body,
        http_auth: false,
        source: None,
    };
    let r = block_on(crate::introspect(
        &t.sts(),
        &req,
        &IntrospectGrants::default(),
    ));
    assert_refused!(r, Denial::MissingParameter("token"), InvalidRequest);
}

#[test]
fn introspection_needs_client_authentication() {
    let t = T::new();
    let tok = t.svc_token(API);
    assert_refused!(
        revoke_or_introspect_without_client(&t, &tok),
        Denial::MissingClientAuth,
        InvalidClient
    );
}

fn revoke_or_introspect_without_client(
    t: &T,
    tok: &str,
) -> Result<Outcome<IntrospectionResponse>, Refusal> {
    let body = form(&[("token", tok)]);
    let req = FormRequest {
        body: &body,
        http_auth: false,
        source: None,
    };
    block_on(crate::introspect(
        &t.sts(),
        &req,
        &IntrospectGrants::default(),
    ))
}

#[test]
fn the_owner_revokes_its_token() {
    let t = T::new();
    let tok = t.svc_token(API);
    let a = t.assertion();
    let o = revoke(
        &t,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("token", &tok),
        ],
    )
    .unwrap();
    let jti = peek(&tok)["jti"].as_str().unwrap().to_string();
    assert_eq!(o.record.revoke, Some((jti, "svc".into(), NOW + 300)));
    assert_eq!(o.record.event.reason.as_deref(), Some("revoked"));
}

#[test]
fn another_client_cannot_revoke() {
    let t = T::new();
    let tok = t.svc_token(API);
    let a = t.gateway_assertion();
    assert_refused!(
        revoke(
            &t,
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
                ("token", &tok)
            ]
        ),
        Denial::NotTokenOwner,
        UnauthorizedClient
    );
}

#[test]
fn revoking_garbage_with_a_client_is_nothing_to_do() {
    let t = T::new();
    let a = t.assertion();
    let o = revoke(
        &t,
        &[
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("token", "x.y.z"),
        ],
    )
    .unwrap();
    assert_eq!(o.record.revoke, None);
    assert_eq!(o.record.event.reason.as_deref(), Some("not_a_live_token"));
}

#[test]
fn a_workload_revokes_its_own_token_by_presenting_it() {
    let t = T::new();
    let wl = issued(t.exchange(&t.k8s(K8S, "payments", "api"), &[("audience", API)]))
        .response
        .access_token;
    let o = revoke(&t, &[("token", &wl)]).unwrap();
    assert_eq!(o.record.event.reason.as_deref(), Some("revoked_by_bearer"));
    assert_eq!(o.record.event.identity.as_deref(), Some(PAYMENTS_API));
    assert!(o.record.revoke.is_some() && o.record.consume_jti.is_none());
}

#[test]
fn a_registered_clients_token_is_not_revoked_by_its_bearer() {
    let t = T::new();
    let tok = t.svc_token(API);
    let r = assert_refused!(
        revoke(&t, &[("token", &tok)]),
        Denial::MissingClientAuth,
        InvalidClient
    );
    assert_eq!(r.caller.claimed.as_deref(), Some("svc"));
}

#[test]
fn garbage_without_a_client_is_missing_client_authentication() {
    let t = T::new();
    assert_refused!(
        revoke(&t, &[("token", "x.y.z")]),
        Denial::MissingClientAuth,
        InvalidClient
    );
}

#[test]
fn revocation_by_bearer_needs_the_token_parameter() {
    let t = T::new();
    assert_refused!(
        revoke(&t, &[]),
        Denial::MissingParameter("token"),
        InvalidRequest
    );
}

#[test]
fn a_denials_event_says_what_is_known_of_the_caller() {
    let caller = crate::Caller {
        claimed: Some("svc".into()),
        subject: Some("s".repeat(300)),
        policies: vec!["p".into()],
        ..Default::default()
    };
    let e = caller.deny_event(
        &Denial::BadSignature,
        NOW,
        Some(&"g".repeat(100)),
        Some("192.0.2.1".into()),
    );
    assert_eq!(e.reason.as_deref(), Some("bad_signature"));
    assert_eq!(e.client.as_deref(), Some("svc"));
    assert_eq!(e.subject.map(|s| s.len()), Some(256));
    assert_eq!(e.grant.map(|g| g.len()), Some(64));
    assert_eq!(e.policies, vec!["p".to_string()]);
    assert_eq!(e.decision, crate::Decision::Deny);
}
