//! Client credentials: every refusal of `tests/e2e/rejections.rs`, one test each.

use jsonwebtoken::{EncodingKey, Header};
use mayfly_crypto::{KeyAlg, SigningKey};
use serde_json::json;

use super::world::*;
use crate::{Denial, PrincipalKind, assert_refused};

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn a_valid_assertion_is_issued_a_token_and_its_record() {
    let t = T::new();
    let o = t.cc(&[("scope", "read"), ("resource", API)]).unwrap();
    let c = peek(&o.value.response.access_token);
    assert_eq!(
        (c["sub"].as_str(), c["aud"].as_str()),
        (Some("svc"), Some(API))
    );
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    assert_eq!(o.value.response.scope.as_deref(), Some("read"));
    assert_eq!(o.value.response.issued_token_type, None);
    assert_eq!(o.value.authenticated_client.as_deref(), Some("svc"));
    let (client, jti, until) = o.record.consume_jti.clone().unwrap();
    assert_eq!((client.as_str(), until), ("svc", NOW + 60 + 30));
    assert!(jti.starts_with('j'));
    assert_eq!(o.record.event.client.as_deref(), Some("svc"));
    assert_eq!(o.record.event.policies, vec!["svc-api".to_string()]);
    assert_eq!(o.record.event.source.as_deref(), Some("192.0.2.1"));
    assert_eq!(o.grant.as_deref(), Some("client_credentials"));
}

#[test]
fn a_forged_payload_fails_the_signature() {
    let t = T::new();
    let good = t.assertion();
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = t.claims("svc");
    c["jti"] = json!("tampered");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_refused!(t.cc_with(&forged, &[]), Denial::BadSignature, InvalidClient);
}

#[test]
fn alg_none_is_refused() {
    let t = T::new();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(t.claims("svc").to_string().as_bytes())
    );
    assert_refused!(
        t.cc_with(&none, &[]),
        Denial::MalformedAssertion,
        InvalidClient
    );
}

/// The classic key-confusion attack: HMAC keyed with the client's public key.
#[test]
fn hmac_keyed_with_the_public_key_is_refused() {
    let t = T::new();
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("svc-key".into());
    let secret = t.svc.public_jwk().to_string();
    let hs = jsonwebtoken::encode(
        &h,
        &t.claims("svc"),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_refused!(
        t.cc_with(&hs, &[]),
        Denial::AlgorithmNotAllowed(_),
        InvalidClient
    );
}

#[test]
fn another_clients_key_is_unknown_to_this_client() {
    let t = T::new();
    let stolen = t.other.sign_jwt(None, &t.claims("svc")).unwrap();
    assert_refused!(t.cc_with(&stolen, &[]), Denial::UnknownKey, InvalidClient);
}

#[test]
fn an_unregistered_key_reusing_the_kid_fails_the_signature() {
    let t = T::new();
    let rogue = SigningKey::generate(KeyAlg::ES256, Some("svc-key")).unwrap();
    let a = rogue.sign_jwt(None, &t.claims("svc")).unwrap();
    assert_refused!(t.cc_with(&a, &[]), Denial::BadSignature, InvalidClient);
}

#[test]
fn an_assertion_expired_beyond_the_skew_is_refused() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["exp"] = json!(NOW - 60);
    c["iat"] = json!(NOW - 120);
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::AssertionExpired,
        InvalidClient
    );
}

#[test]
fn an_assertion_expired_within_the_skew_is_accepted() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["exp"] = json!(NOW - 10);
    issued(t.cc_with(&t.sign(&c), &[("resource", API)]));
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["nbf"] = json!(NOW + 120);
    c["exp"] = json!(NOW + 180);
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::AssertionNotYetValid,
        InvalidClient
    );
}

#[test]
fn iat_in_the_future_is_not_yet_valid() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["iat"] = json!(NOW + 120);
    c["exp"] = json!(NOW + 180);
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::AssertionNotYetValid,
        InvalidClient
    );
}

#[test]
fn exp_too_far_ahead_is_refused() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["exp"] = json!(NOW + 3600);
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::AssertionLifetimeTooLong(300),
        InvalidClient
    );
}

#[test]
fn exp_missing_is_refused() {
    let t = T::new();
    let mut c = t.claims("svc");
    c.as_object_mut().unwrap().remove("exp");
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::MissingClaim("exp"),
        InvalidClient
    );
}

fn with_aud(t: &T, aud: serde_json::Value) -> String {
    let mut c = t.claims("svc");
    c["aud"] = aud;
    t.sign(&c)
}

#[test]
fn another_audience_is_refused() {
    let t = T::new();
    let a = with_aud(&t, json!("https://evil.example"));
    assert_refused!(t.cc_with(&a, &[]), Denial::BadAudience, InvalidClient);
}

#[test]
fn an_audience_list_naming_anyone_else_is_refused() {
    let t = T::new();
    let a = with_aud(&t, json!([ISSUER, "https://evil.example"]));
    assert_refused!(t.cc_with(&a, &[]), Denial::BadAudience, InvalidClient);
}

#[test]
fn an_empty_audience_list_is_refused() {
    let t = T::new();
    let a = with_aud(&t, json!([]));
    assert_refused!(t.cc_with(&a, &[]), Denial::BadAudience, InvalidClient);
}

#[test]
fn a_numeric_audience_is_refused() {
    let t = T::new();
    let a = with_aud(&t, json!(42));
    assert_refused!(t.cc_with(&a, &[]), Denial::BadAudience, InvalidClient);
}

#[test]
fn the_issuer_alone_or_the_token_endpoint_is_a_good_audience() {
    let t = T::new();
    issued(t.cc_with(&with_aud(&t, json!([ISSUER])), &[("resource", API)]));
    issued(t.cc_with(&with_aud(&t, json!(TOKEN_ENDPOINT)), &[("resource", API)]));
}

#[test]
fn iss_other_than_the_client_is_refused() {
    let t = T::new();
    let mut c = t.claims("svc");
    c["iss"] = json!("someone-else");
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::IssuerSubjectMismatch,
        InvalidClient
    );
}

#[test]
fn a_missing_jti_is_refused() {
    let t = T::new();
    let mut c = t.claims("svc");
    c.as_object_mut().unwrap().remove("jti");
    assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::MissingClaim("jti"),
        InvalidClient
    );
}

/// The store finds the replay when it commits the record; the refusal names the client.
#[test]
fn a_replayed_jti_is_refused_with_the_client_named() {
    let t = T::new();
    let o = t.cc(&[("resource", API)]).unwrap();
    let r = o.refused(Denial::ReplayedJti);
    assert_eq!(r.denial, Denial::ReplayedJti);
    assert_eq!(r.denial.code(), mayfly_proto::ErrorCode::InvalidClient);
    assert!(r.denial.recorded_at_commit());
    assert_eq!(r.caller.claimed.as_deref(), Some("svc"));
}

#[test]
fn an_unknown_client_is_refused() {
    let t = T::new();
    let mut c = t.claims("nobody");
    c["iss"] = json!("nobody");
    let r = assert_refused!(
        t.cc_with(&t.sign(&c), &[]),
        Denial::UnknownClient,
        InvalidClient
    );
    assert_eq!(r.caller.claimed.as_deref(), Some("nobody"));
}

#[test]
fn a_disagreeing_client_id_parameter_is_refused() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("client_id", "other")]),
        Denial::ClientIdMismatch,
        InvalidClient
    );
}

#[test]
fn a_scope_no_policy_grants_is_refused() {
    let t = T::new();
    let r = assert_refused!(
        t.cc(&[("scope", "read admin"), ("resource", API)]),
        Denial::ScopeNotAllowed(_),
        InvalidScope
    );
    assert_eq!(r.caller.policies, vec!["svc-api".to_string()]);
}

#[test]
fn a_resource_no_policy_grants_is_refused() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("resource", "https://billing.example")]),
        Denial::TargetNotAllowed(_),
        InvalidTarget
    );
}

#[test]
fn an_audience_no_policy_grants_is_refused() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("audience", "https://billing.example")]),
        Denial::TargetNotAllowed(_),
        InvalidTarget
    );
}

#[test]
fn two_resources_at_once_are_refused() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("resource", API), ("resource", OTHER)]),
        Denial::MultipleTargets,
        InvalidTarget
    );
}

#[test]
fn a_client_with_two_audiences_must_name_one() {
    let t = T::new();
    assert_refused!(t.cc(&[]), Denial::TargetRequired, InvalidTarget);
}

#[test]
fn duplicate_parameters_are_malformed() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("scope", "read"), ("scope", "write")]),
        Denial::MalformedRequest(_),
        InvalidRequest
    );
}

#[test]
fn an_unsupported_grant_type_is_refused() {
    let t = T::new();
    let r = assert_refused!(
        t.post(&[
            ("grant_type", "password"),
            ("client_assertion_type", ASSERTION_TYPE)
        ]),
        Denial::UnsupportedGrantType(_),
        UnsupportedGrantType
    );
    assert_eq!(r.grant.as_deref(), Some("password"));
}

#[test]
fn a_missing_grant_type_is_refused() {
    let t = T::new();
    assert_refused!(
        t.post(&[("scope", "read")]),
        Denial::MissingParameter("grant_type"),
        InvalidRequest
    );
}

#[test]
fn no_client_authentication_is_refused() {
    let t = T::new();
    assert_refused!(
        t.post(&[("grant_type", "client_credentials")]),
        Denial::MissingClientAuth,
        InvalidClient
    );
}

#[test]
fn http_authentication_is_refused() {
    let t = T::new();
    assert_refused!(
        t.post_as(&[("grant_type", "client_credentials")], true),
        Denial::HttpAuthNotSupported,
        InvalidClient
    );
}

#[test]
fn bad_escapes_are_malformed() {
    let t = T::new();
    let req = crate::FormRequest {
        body: b"grant_type=%zz",
        http_auth: false,
        source: None,
    };
    let r = block_on(crate::token(&t.sts(), &req));
    assert_refused!(r, Denial::MalformedRequest(_), InvalidRequest);
}

#[test]
fn a_body_that_is_not_utf8_is_malformed() {
    let t = T::new();
    let req = crate::FormRequest {
        body: &[b'a', b'=', 0xff, 0xfe],
        http_auth: false,
        source: None,
    };
    let r = block_on(crate::token(&t.sts(), &req));
    assert_refused!(r, Denial::MalformedRequest(_), InvalidRequest);
}

#[test]
fn an_assertion_without_its_type_is_refused() {
    let t = T::new();
    let a = t.assertion();
    assert_refused!(
        t.post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion", &a)
        ]),
        Denial::MissingParameter("client_assertion_type"),
        InvalidRequest
    );
}

#[test]
fn an_assertion_type_without_an_assertion_is_refused() {
    let t = T::new();
    assert_refused!(
        t.post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE)
        ]),
        Denial::MissingParameter("client_assertion"),
        InvalidRequest
    );
}

#[test]
fn another_assertion_type_is_refused() {
    let t = T::new();
    let a = t.assertion();
    assert_refused!(
        t.post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:example:saml"),
            ("client_assertion", &a)
        ]),
        Denial::UnsupportedAssertionType,
        InvalidClient
    );
}

#[test]
fn garbage_for_an_assertion_is_malformed() {
    let t = T::new();
    assert_refused!(
        t.cc_with("not.a.jwt", &[]),
        Denial::MalformedAssertion,
        InvalidClient
    );
}

#[test]
fn expires_in_must_be_a_number() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("resource", API), ("expires_in", "soon")]),
        Denial::InvalidParameter("expires_in", _),
        InvalidRequest
    );
}

#[test]
fn expires_in_must_be_positive() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("resource", API), ("expires_in", "0")]),
        Denial::InvalidParameter("expires_in", _),
        InvalidRequest
    );
}

#[test]
fn token_is_not_a_scope() {
    let t = T::new();
    assert_refused!(
        t.cc(&[("resource", API), ("scope", "read token")]),
        Denial::ScopeNotAllowed(_),
        InvalidScope
    );
}

#[test]
fn a_critical_header_extension_is_refused() {
    let t = T::new();
    let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("svc-key".into());
    h.crit = Some(vec!["urn:example:must-understand".into()]);
    h.extras.insert("urn:example:must-understand", true);
    let der = t.svc.to_pkcs8().unwrap();
    let a = jsonwebtoken::encode(&h, &t.claims("svc"), &EncodingKey::from_ec_der(&der)).unwrap();
    let r = assert_refused!(
        t.cc_with(&a, &[("resource", API)]),
        Denial::UnsupportedCriticalHeader,
        InvalidClient
    );
    assert_eq!(r.caller.claimed.as_deref(), Some("svc"));
}

#[test]
fn an_access_token_is_not_an_assertion() {
    let t = T::new();
    let a = t.svc.sign_jwt(Some("at+jwt"), &t.claims("svc")).unwrap();
    assert_refused!(
        t.cc_with(&a, &[]),
        Denial::AssertionWrongType(_),
        InvalidClient
    );
}

/// A client that rotated its published keys is refetched once and then authenticates.
#[test]
fn a_rotated_client_key_is_refetched_once() {
    let t = T::new();
    let a = t.rotated.sign_jwt(None, &t.claims("rotating")).unwrap();
    let i = issued(t.cc_with(&a, &[("resource", API)]));
    assert_eq!(i.client_id, "rotating");
}

#[test]
fn the_requested_lifetime_is_capped_by_policy_and_client() {
    let t = T::new();
    let i = issued(t.cc(&[("resource", API), ("expires_in", "60")]));
    assert_eq!(i.response.expires_in, 60);
    let i = issued(t.cc(&[("resource", API), ("expires_in", "99999")]));
    assert_eq!(i.response.expires_in, 3600);
}

#[test]
fn a_client_is_its_own_principal() {
    let t = T::new();
    let auth = crate::AuthenticatedClient {
        client_id: "svc".into(),
        jti: "j".into(),
        assertion_exp: NOW + 60,
    };
    let c = t.mem.clients["svc"].clone();
    let a = crate::grants::for_client(&c, auth);
    assert_eq!(a.principal.kind, PrincipalKind::Client);
    assert_eq!((a.client_id.as_str(), a.ttl_cap), ("svc", 3600));
    assert_eq!(
        a.default_audiences,
        vec![API.to_string(), OTHER.to_string()]
    );
    assert!(a.subject_exp.is_none() && a.act.is_none() && a.parents.is_empty());
}
