//! Token exchange and the JWT bearer grant: every token-endpoint refusal of
//! `tests/e2e/federation*.rs` and `tests/e2e/revocation.rs`, one test each, and the positives
//! of identify → decide → mint (caps, subject expiry, delegation chain, parents).

use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::json;

use super::world::*;
use crate::grants::identify;
use crate::subject::Verified;
use crate::{Caller, Denial, PrincipalKind, assert_refused};

const ASK: &[(&str, &str)] = &[("audience", API), ("scope", "read")];

fn sa(t: &T) -> String {
    t.k8s(K8S, "payments", "api")
}

fn k8s_with(t: &T, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = t.k8s_claims(K8S, "payments", "api");
    edit(&mut c);
    t.idp.sign_jwt(None, &c).unwrap()
}

#[test]
fn a_kubernetes_token_is_exchanged_under_policy() {
    let t = T::new();
    let o = t.exchange(&sa(&t), ASK).unwrap();
    let c = peek(&o.value.response.access_token);
    assert_eq!(c["sub"], PAYMENTS_API);
    assert_eq!(c["client_id"], PAYMENTS_API);
    assert_eq!(
        o.value.response.issued_token_type.as_deref(),
        Some(TT_ACCESS)
    );
    let e = &o.record.event;
    assert_eq!(e.subject_issuer.as_deref(), Some("k8s"));
    assert_eq!(
        e.subject.as_deref(),
        Some("system:serviceaccount:payments:api")
    );
    assert_eq!(e.identity.as_deref(), Some(PAYMENTS_API));
    assert_eq!(e.client, None);
    assert!(o.record.consume_jti.is_none() && o.record.consume_subject.is_none());
    assert!(o.value.authenticated_client.is_none());
}

#[test]
fn a_forbid_decides_and_the_refusal_names_it() {
    let t = T::new();
    let ks = t.k8s(K8S, "kube-system", "api");
    let r = assert_refused!(
        t.exchange(&ks, ASK),
        Denial::TargetNotAllowed(_),
        InvalidTarget
    );
    assert_eq!(r.caller.policies, vec!["no-kube-system".to_string()]);
    assert_eq!(
        r.caller.identity.as_deref(),
        Some("spiffe://k8s.example.org/ns/kube-system/sa/api")
    );
    assert_eq!(r.grant.as_deref(), Some(EXCHANGE));
}

#[test]
fn a_scope_no_policy_grants_is_refused() {
    let t = T::new();
    assert_refused!(
        t.exchange(&sa(&t), &[("audience", API), ("scope", "write")]),
        Denial::ScopeNotAllowed(_),
        InvalidScope
    );
}

#[test]
fn a_lifetime_beyond_the_subjects_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["exp"] = json!(NOW + 120));
    assert_refused!(
        t.exchange(
            &s,
            &[("audience", API), ("scope", "read"), ("expires_in", "600")]
        ),
        Denial::LifetimeBeyondSubject(120),
        InvalidRequest
    );
}

#[test]
fn the_default_lifetime_is_clamped_to_the_subjects() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["exp"] = json!(NOW + 120));
    assert_eq!(issued(t.exchange(&s, ASK)).response.expires_in, 120);
}

#[test]
fn the_issuer_and_policy_caps_apply() {
    let t = T::new();
    let ci = t.k8s(CI, "payments", "batch");
    let i = issued(t.exchange(
        &ci,
        &[
            ("audience", DEPLOY),
            ("scope", "deploy"),
            ("expires_in", "500"),
        ],
    ));
    assert_eq!(i.response.expires_in, 120);
}

#[test]
fn a_one_time_subject_is_consumed_with_the_record() {
    let t = T::new();
    let ci = t.k8s(CI, "payments", "batch");
    let o = t
        .exchange(&ci, &[("audience", DEPLOY), ("scope", "deploy")])
        .unwrap();
    let (ns, jti, until) = o.record.consume_subject.clone().unwrap();
    assert_eq!(ns, "ci");
    assert_eq!(jti, peek(&ci)["jti"].as_str().unwrap());
    assert_eq!(until, NOW + 600 + 30);
}

#[test]
fn a_replayed_one_time_subject_is_refused() {
    let t = T::new();
    let ci = t.k8s(CI, "payments", "batch");
    let o = t
        .exchange(&ci, &[("audience", DEPLOY), ("scope", "deploy")])
        .unwrap();
    let r = o.refused(Denial::SubjectReplayed);
    assert!(matches!(r.denial, Denial::SubjectReplayed));
    assert_eq!(r.denial.code(), mayfly_proto::ErrorCode::InvalidRequest);
    assert_eq!(r.caller.subject_issuer.as_deref(), Some("ci"));
}

#[test]
fn a_replayed_jwt_bearer_assertion_is_invalid_grant() {
    let t = T::new();
    let ci = t.k8s(CI, "payments", "batch");
    let o = t
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &ci),
            ("audience", DEPLOY),
            ("scope", "deploy"),
        ])
        .unwrap();
    assert_eq!(o.value.response.issued_token_type, None);
    let r = o.refused(Denial::SubjectReplayed);
    assert!(matches!(&r.denial, Denial::InvalidGrant(d) if **d == Denial::SubjectReplayed));
    assert_eq!(r.denial.code(), mayfly_proto::ErrorCode::InvalidGrant);
    assert!(r.denial.recorded_at_commit());
}

#[test]
fn an_untrusted_issuer_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["iss"] = json!("https://evil.example"));
    assert_refused!(t.exchange(&s, ASK), Denial::UntrustedIssuer, InvalidRequest);
}

#[test]
fn another_audience_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["aud"] = json!(["someone-else"]));
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::SubjectWrongAudience,
        InvalidRequest
    );
}

#[test]
fn an_expired_subject_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["exp"] = json!(NOW - 60));
    assert_refused!(t.exchange(&s, ASK), Denial::SubjectExpired, InvalidRequest);
}

#[test]
fn a_subject_older_than_max_token_age_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| {
        c["iat"] = json!(NOW - 7200);
        c["nbf"] = json!(NOW - 7200);
    });
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::SubjectTooOld(3600),
        InvalidRequest
    );
}

#[test]
fn an_algorithm_outside_the_issuers_list_is_refused() {
    let t = T::new();
    let ed = SigningKey::generate(KeyAlg::EdDSA, Some("idp")).unwrap();
    let s = ed
        .sign_jwt(None, &t.k8s_claims(K8S, "payments", "api"))
        .unwrap();
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::SubjectAlgorithmNotAllowed(_),
        InvalidRequest
    );
}

#[test]
fn a_missing_template_claim_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| {
        c["kubernetes.io"]["serviceaccount"] = json!({"uid": "x"})
    });
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::IdentityMapping(_),
        InvalidRequest
    );
}

#[test]
fn an_unsafe_path_segment_is_refused() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["kubernetes.io"]["namespace"] = json!(".."));
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::IdentityMapping(_),
        InvalidRequest
    );
}

#[test]
fn an_unsupported_subject_token_type_is_refused() {
    let t = T::new();
    assert_refused!(
        t.exchange_typed(&sa(&t), "urn:ietf:params:oauth:token-type:saml2", ASK),
        Denial::UnsupportedSubjectTokenType(_),
        InvalidRequest
    );
}

#[test]
fn a_missing_subject_token_type_is_refused() {
    let t = T::new();
    let s = sa(&t);
    assert_refused!(
        t.post(&[("grant_type", EXCHANGE), ("subject_token", &s)]),
        Denial::MissingParameter("subject_token_type"),
        InvalidRequest
    );
}

#[test]
fn a_missing_subject_token_is_refused() {
    let t = T::new();
    assert_refused!(
        t.post(&[("grant_type", EXCHANGE), ("subject_token_type", TT_JWT)]),
        Denial::MissingParameter("subject_token"),
        InvalidRequest
    );
}

#[test]
fn an_unsupported_requested_token_type_is_refused() {
    let t = T::new();
    assert_refused!(
        t.exchange(
            &sa(&t),
            &[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:saml2"
            )]
        ),
        Denial::UnsupportedRequestedTokenType(_),
        InvalidRequest
    );
}

fn ours(t: &T) -> String {
    issued(t.exchange(&sa(t), ASK)).response.access_token
}

#[test]
fn a_reexchange_cannot_widen_scopes() {
    let t = T::new();
    let o = ours(&t);
    assert_refused!(
        t.exchange_typed(&o, TT_ACCESS, &[("scope", "read write"), ("audience", API)]),
        Denial::ScopeWidening(_),
        InvalidScope
    );
}

#[test]
fn a_reexchange_cannot_change_the_audience() {
    let t = T::new();
    let o = ours(&t);
    assert_refused!(
        t.exchange_typed(&o, TT_ACCESS, &[("scope", "read"), ("audience", DEPLOY)]),
        Denial::AudienceWidening,
        InvalidTarget
    );
}

#[test]
fn a_reexchange_narrows_and_names_its_parent() {
    let t = T::new();
    let o = ours(&t);
    let jti = peek(&o)["jti"].as_str().unwrap().to_string();
    let out = t
        .exchange_typed(&o, TT_ACCESS, &[("scope", "read"), ("audience", API)])
        .unwrap();
    assert_eq!(out.record.event.policies, vec![format!("narrowing:{jti}")]);
    assert_eq!(out.record.parents, vec![jti]);
    assert_eq!(out.record.event.subject_issuer.as_deref(), Some("mayfly"));
    assert_eq!(peek(&out.value.response.access_token)["sub"], PAYMENTS_API);
}

#[test]
fn a_revoked_token_of_ours_is_not_a_subject() {
    let t = T::new();
    let o = ours(&t);
    t.mem
        .revoked
        .lock()
        .unwrap()
        .insert(peek(&o)["jti"].as_str().unwrap().into());
    assert_refused!(
        t.exchange_typed(&o, TT_ACCESS, ASK),
        Denial::InvalidSubjectToken(_),
        InvalidRequest
    );
}

#[test]
fn a_foreign_access_token_is_not_ours() {
    let t = T::new();
    let s = sa(&t);
    assert_refused!(
        t.exchange_typed(&s, TT_ACCESS, ASK),
        Denial::InvalidSubjectToken(_),
        InvalidRequest
    );
}

#[test]
fn an_expired_token_of_ours_is_not_a_subject() {
    let t = T::new();
    let o = ours(&t);
    t.clock.advance(3600);
    assert_refused!(
        t.exchange_typed(&o, TT_ACCESS, ASK),
        Denial::InvalidSubjectToken(_),
        InvalidRequest
    );
}

#[test]
fn an_unknown_issuer_key_is_refused() {
    let t = T::new();
    let k = SigningKey::generate(KeyAlg::ES256, Some("unknown")).unwrap();
    let s = k
        .sign_jwt(None, &t.k8s_claims(K8S, "payments", "api"))
        .unwrap();
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::SubjectUnknownKey,
        InvalidRequest
    );
}

#[test]
fn an_unreachable_issuer_is_temporarily_unavailable() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["iss"] = json!(DOWN));
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::Unavailable,
        TemporarilyUnavailable
    );
}

#[test]
fn an_issuer_can_require_client_authentication() {
    let t = T::new();
    let s = t.k8s(STRICT, "payments", "api");
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::ClientAuthRequired,
        InvalidClient
    );
}

#[test]
fn an_authenticated_client_satisfies_the_issuer_and_is_named() {
    let t = T::new();
    let s = sa(&t);
    let a = t.gateway_assertion();
    let o = t
        .exchange(
            &s,
            &[
                ("audience", API),
                ("scope", "read"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
            ],
        )
        .unwrap();
    assert_eq!(peek(&o.value.response.access_token)["client_id"], "gateway");
    assert_eq!(
        o.record.consume_jti.as_ref().map(|c| c.0.as_str()),
        Some("gateway")
    );
    assert_eq!(o.record.event.client.as_deref(), Some("gateway"));
}

#[test]
fn a_bad_client_assertion_fails_the_exchange() {
    let t = T::new();
    let s = sa(&t);
    let bad = t.other.sign_jwt(None, &t.claims("gateway")).unwrap();
    assert_refused!(
        t.exchange(
            &s,
            &[
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &bad)
            ]
        ),
        Denial::UnknownKey,
        InvalidClient
    );
}

#[test]
fn a_partner_cannot_claim_our_trust_domain() {
    let t = T::new();
    let c = json!({"iss": PARTNER, "aud": "mayfly", "sub": "spiffe://example.org/ns/payments/sa/api", "iat": NOW, "exp": NOW + 60});
    let s = t.idp.sign_jwt(None, &c).unwrap();
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::IdentityOutsideTrustDomain(_),
        InvalidRequest
    );
}

#[test]
fn the_jwt_bearer_grant_reports_the_trust_domain_as_invalid_grant() {
    let t = T::new();
    let c = json!({"iss": PARTNER, "aud": "mayfly", "sub": "spiffe://example.org/w", "iat": NOW, "exp": NOW + 60});
    let s = t.idp.sign_jwt(None, &c).unwrap();
    let r = assert_refused!(
        t.post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &s),
            ("audience", API)
        ]),
        Denial::InvalidGrant(_),
        InvalidGrant
    );
    assert_eq!(r.denial.reason(), "identity_outside_trust_domain");
}

#[test]
fn the_jwt_bearer_grant_reports_an_untrusted_issuer_as_invalid_grant() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["iss"] = json!("https://evil.example"));
    let r = assert_refused!(
        t.post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &s),
            ("audience", API)
        ]),
        Denial::InvalidGrant(_),
        InvalidGrant
    );
    assert_eq!(r.denial.reason(), "untrusted_issuer");
}

#[test]
fn the_jwt_bearer_grant_needs_an_assertion() {
    let t = T::new();
    assert_refused!(
        t.post(&[("grant_type", JWT_BEARER), ("audience", API)]),
        Denial::MissingParameter("assertion"),
        InvalidRequest
    );
}

#[test]
fn the_jwt_bearer_grant_reports_a_lifetime_beyond_the_subject_as_invalid_grant() {
    let t = T::new();
    let s = k8s_with(&t, |c| c["exp"] = json!(NOW + 120));
    assert_refused!(
        t.post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &s),
            ("audience", API),
            ("expires_in", "600")
        ]),
        Denial::InvalidGrant(_),
        InvalidGrant
    );
}

#[test]
fn two_clusters_with_identical_claims_are_distinct_identities() {
    let t = T::new();
    let dev = t.k8s(K8S_DEV, "payments", "api");
    let r = assert_refused!(
        t.exchange(&dev, ASK),
        Denial::TargetNotAllowed(_),
        InvalidTarget
    );
    assert_eq!(r.caller.subject_issuer.as_deref(), Some("k8s-dev"));
    assert_eq!(
        r.caller.identity.as_deref(),
        Some("spiffe://k8s-dev.example.org/ns/payments/sa/api")
    );
}

#[test]
fn an_actor_access_token_for_another_audience_is_refused() {
    let t = T::new();
    let for_api = t.svc_token(API);
    assert_refused!(
        t.exchange(
            &sa(&t),
            &[
                ("audience", API),
                ("actor_token", &for_api),
                ("actor_token_type", TT_ACCESS)
            ]
        ),
        Denial::ActorWrongAudience,
        InvalidRequest
    );
}

#[test]
fn an_actor_access_token_for_this_server_acts() {
    let t = T::new();
    let for_us = issued(t.cc(&[("audience", ISSUER)])).response.access_token;
    let parent = peek(&for_us)["jti"].as_str().unwrap().to_string();
    let o = t
        .exchange(
            &sa(&t),
            &[
                ("audience", API),
                ("actor_token", &for_us),
                ("actor_token_type", TT_ACCESS),
            ],
        )
        .unwrap();
    assert_eq!(
        peek(&o.value.response.access_token)["act"],
        json!({"sub": "svc"})
    );
    assert_eq!(o.record.event.actor.as_deref(), Some("svc"));
    assert_eq!(o.record.parents, vec![parent]);
}

fn with_actor(actor: &str) -> [(&str, &str); 3] {
    [
        ("audience", API),
        ("actor_token", actor),
        ("actor_token_type", TT_JWT),
    ]
}

#[test]
fn a_one_time_actor_is_consumed_and_its_replay_refused() {
    let t = T::new();
    let once = t.k8s(CI, "payments", "batch");
    let o = t.exchange(&sa(&t), &with_actor(&once));
    let o = match o {
        Ok(o) => o,
        Err(r) => panic!("{:?}", r.denial),
    };
    assert_eq!(
        o.record.consume_actor.as_ref().map(|c| c.0.as_str()),
        Some("ci")
    );
    let r = o.refused(Denial::ActorReplayed);
    assert!(matches!(r.denial, Denial::ActorReplayed));
    assert_eq!(r.denial.code(), mayfly_proto::ErrorCode::InvalidRequest);
    assert_eq!(
        r.caller.actor.as_deref(),
        Some("spiffe://ci.example.org/ns/payments/sa/batch")
    );
}

#[test]
fn an_actor_whose_issuer_requires_a_client_needs_one() {
    let t = T::new();
    let strict = t.k8s(STRICT, "payments", "batch");
    assert_refused!(
        t.exchange(&sa(&t), &with_actor(&strict)),
        Denial::ActorClientAuthRequired,
        InvalidClient
    );
}

#[test]
fn an_actor_token_without_its_type_is_refused() {
    let t = T::new();
    let a = t.k8s(K8S, "payments", "gateway");
    assert_refused!(
        t.exchange(&sa(&t), &[("actor_token", &a)]),
        Denial::MissingParameter("actor_token_type"),
        InvalidRequest
    );
}

#[test]
fn an_actor_token_type_without_a_token_is_refused() {
    let t = T::new();
    assert_refused!(
        t.exchange(&sa(&t), &[("actor_token_type", TT_JWT)]),
        Denial::MissingParameter("actor_token"),
        InvalidRequest
    );
}

#[test]
fn a_delegation_on_the_narrowing_path_is_decided_by_policy() {
    let t = T::new();
    let o = ours(&t);
    let jti = peek(&o)["jti"].as_str().unwrap().to_string();
    let gw = t.k8s(K8S, "payments", "gateway");
    let out = t
        .exchange_typed(
            &o,
            TT_ACCESS,
            &[("actor_token", &gw), ("actor_token_type", TT_JWT)],
        )
        .unwrap();
    assert_eq!(
        out.record.event.policies,
        vec![format!("narrowing:{jti}"), "gateway-acts".to_string()]
    );
    assert_eq!(
        peek(&out.value.response.access_token)["act"],
        json!({"sub": PAYMENTS_GATEWAY})
    );
}

#[test]
fn a_delegation_policy_does_not_permit_refuses() {
    let t = T::new();
    let o = ours(&t);
    let batch = t.k8s(K8S, "payments", "batch");
    let r = assert_refused!(
        t.exchange_typed(
            &o,
            TT_ACCESS,
            &[("actor_token", &batch), ("actor_token_type", TT_JWT)]
        ),
        Denial::TargetNotAllowed(_),
        InvalidTarget
    );
    assert_eq!(
        r.caller.actor.as_deref(),
        Some("spiffe://k8s.example.org/ns/payments/sa/batch")
    );
}

#[test]
fn a_client_assertion_is_not_a_subject_token() {
    let t = T::new();
    let s = t
        .idp
        .sign_jwt(
            Some("client-authentication+jwt"),
            &t.k8s_claims(K8S, "payments", "api"),
        )
        .unwrap();
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::SubjectWrongType(_),
        InvalidRequest
    );
}

#[test]
fn our_own_jwt_svid_is_a_subject_linked_to_its_token() {
    let t = T::new();
    let s = t.own_svid("spiffe://example.org/w", "svid-1");
    let o = t.exchange(&s, ASK).unwrap();
    assert_eq!(o.record.link_svid.as_deref(), Some("svid-1"));
    assert_eq!(o.record.event.subject_issuer.as_deref(), Some("spiffe"));
}

#[test]
fn a_revoked_jwt_svid_is_refused() {
    let t = T::new();
    t.mem.svid_revoked.lock().unwrap().insert("svid-1".into());
    let s = t.own_svid("spiffe://example.org/w", "svid-1");
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::InvalidSubjectToken(_),
        InvalidRequest
    );
}

#[test]
fn a_jwt_svid_without_a_jti_is_refused() {
    let t = T::new();
    let c = json!({"iss": ISSUER, "aud": [ISSUER], "sub": "spiffe://example.org/w", "iat": NOW, "exp": NOW + 300});
    let s = t.svid.sign_jwt(None, &c).unwrap();
    assert_refused!(
        t.exchange(&s, ASK),
        Denial::InvalidSubjectToken(_),
        InvalidRequest
    );
}

fn federated(t: &T, token: &str) -> Verified {
    block_on(crate::subject::federated(&t.sts(), token, NOW)).unwrap()
}

#[test]
fn identify_nests_the_prior_actor_chain() {
    let t = T::new();
    let mut c = t.k8s_claims(K8S, "payments", "api");
    c["iss"] = json!(ISSUER);
    let prior = crate::AccessTokenClaims {
        iss: ISSUER.into(),
        sub: PAYMENTS_API.into(),
        aud: API.into(),
        client_id: "c".into(),
        scope: Some("read".into()),
        iat: NOW,
        exp: NOW + 100,
        jti: "parent".into(),
        act: Some(json!({"sub": "spiffe://k8s.example.org/ns/payments/sa/first"})),
        lease: None,
        status: None,
    };
    let actor = federated(&t, &t.k8s(K8S, "payments", "gateway"));
    let mut caller = Caller::default();
    let a = identify(
        &t.settings,
        Verified::Ours(prior),
        Some(actor),
        None,
        &mut caller,
    )
    .unwrap();
    assert_eq!(
        a.act,
        Some(
            json!({"sub": PAYMENTS_GATEWAY, "act": {"sub": "spiffe://k8s.example.org/ns/payments/sa/first"}})
        )
    );
    assert_eq!((a.subject_exp, a.ttl_cap), (Some(NOW + 100), 3600));
    assert_eq!(a.parents, vec!["parent".to_string()]);
    assert_eq!(a.client_id, "c");
    assert_eq!(a.principal.kind, PrincipalKind::Workload);
    assert!(a.narrowing.is_some());
}

#[test]
fn identify_refuses_a_delegation_chain_deeper_than_five() {
    let t = T::new();
    let mut act = json!({"sub": "a0"});
    for i in 1..5 {
        act = json!({"sub": format!("a{i}"), "act": act});
    }
    let prior = crate::AccessTokenClaims {
        iss: ISSUER.into(),
        sub: "svc".into(),
        aud: API.into(),
        client_id: "svc".into(),
        scope: None,
        iat: NOW,
        exp: NOW + 100,
        jti: "p".into(),
        act: Some(act),
        lease: None,
        status: None,
    };
    let actor = federated(&t, &t.k8s(K8S, "payments", "gateway"));
    let d = identify(
        &t.settings,
        Verified::Ours(prior),
        Some(actor),
        None,
        &mut Caller::default(),
    )
    .unwrap_err();
    assert!(matches!(d, Denial::InvalidSubjectToken(_)));
    assert_eq!(d.code(), mayfly_proto::ErrorCode::InvalidRequest);
}

#[test]
fn identify_takes_the_issuers_cap_and_the_subjects_expiry() {
    let t = T::new();
    let v = federated(&t, &t.k8s(CI, "payments", "batch"));
    let a = identify(&t.settings, v, None, None, &mut Caller::default()).unwrap();
    assert_eq!((a.ttl_cap, a.subject_exp), (600, Some(NOW + 600)));
    assert_eq!(a.client_id, "spiffe://ci.example.org/ns/payments/sa/batch");
    assert!(
        a.principal
            .attrs
            .contains(&("issuer".to_string(), "ci".to_string()))
    );
    assert!(a.consume_subject.is_some() && a.act.is_none() && a.parents.is_empty());
}
