//! Token exchange (RFC 8693) and the JWT bearer grant (RFC 7523 §2.1): a subject token from a
//! trusted issuer (or one of our own tokens, to narrow it) becomes a short-lived token for one
//! audience, decided by the same policy path as every other grant.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use mayfly_proto::{
    Form, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_JWT, TokenResponse,
};
use mayfly_sts::federation::{
    ClientAuthRule, SubjectIdentity, claimed_issuer, verify_subject_token,
};
use mayfly_sts::{
    AccessTokenClaims, AllOf, AuditEvent, AuthenticatedClient, Authorizer, DecideInput, Decision,
    Denial, EventKind, Principal, PrincipalKind, act_claim, check_access_token, decide, narrow,
};
use serde_json::Value;

use crate::handlers::{Caller, authenticate, issue, source, token_params};
use crate::state::App;

/// A subject (or actor) token, verified and mapped.
enum Verified {
    /// From a trusted issuer.
    Federated {
        id: SubjectIdentity,
        client_auth: ClientAuthRule,
        one_time: bool,
        ttl_cap: i64,
        /// Set when the subject is one of our own JWT-SVIDs: its `jti`, so that the token is
        /// revoked with it when its workload exits.
        svid_jti: Option<String>,
    },
    /// One of our own live access tokens.
    Ours(AccessTokenClaims),
}

impl Verified {
    fn identity(&self) -> &str {
        match self {
            Self::Federated { id, .. } => &id.identity,
            Self::Ours(c) => &c.sub,
        }
    }

    /// The jti of one of our own tokens (a parent of the token derived from it).
    fn our_jti(&self) -> Option<&str> {
        match self {
            Self::Ours(c) => Some(&c.jti),
            Self::Federated { .. } => None,
        }
    }
}

/// Verify a JWT from a trusted issuer: pick the issuer by its (unverified) `iss`, verify with
/// its cached keys, and on an unknown `kid` refetch them once (rate-limited) and retry.
async fn federated(app: &App, token: &str, now: i64) -> Result<Verified, Denial> {
    let iss = claimed_issuer(token)?;
    if iss == app.0.settings.issuer {
        return own_jwt_svid(app, token, now).await;
    }
    let issuer = app.0.issuers.find(&iss).ok_or(Denial::UntrustedIssuer)?;
    let id = verify_federated(app, &issuer, token, now).await?;
    Ok(Verified::Federated {
        id,
        client_auth: issuer.trusted.client_auth,
        one_time: issuer.trusted.one_time_use,
        ttl_cap: issuer.trusted.max_ttl,
        svid_jti: None,
    })
}

/// A JWT-SVID this server minted (for a workload behind one of our agents): verified with the
/// trust domain's JWT-SVID keys, refused once its workload has exited.
async fn own_jwt_svid(app: &App, token: &str, now: i64) -> Result<Verified, Denial> {
    let sp = &app.0.spiffe;
    let keys = sp.snapshot().jwt_verifying.clone();
    let id = verify_subject_token(&app.0.settings, &app.0.svid_issuer, &keys, token, now)?;
    let jti = id
        .jti
        .clone()
        .ok_or(Denial::InvalidSubjectToken("the JWT-SVID has no jti"))?;
    if app
        .0
        .store
        .is_svid_revoked(&jti)
        .await
        .map_err(|_| Denial::Unavailable)?
    {
        return Err(Denial::InvalidSubjectToken(
            "the JWT-SVID was revoked: the workload it was issued to has exited",
        ));
    }
    Ok(Verified::Federated {
        id,
        client_auth: ClientAuthRule::Optional,
        one_time: false,
        ttl_cap: app.0.settings.max_ttl,
        svid_jti: Some(jti),
    })
}

/// Verify with the issuer's cached keys; on an unknown `kid` refetch once (rate-limited) and
/// retry.
async fn verify_federated(
    app: &App,
    issuer: &crate::issuers::Issuer,
    token: &str,
    now: i64,
) -> Result<SubjectIdentity, Denial> {
    let verify = |keys: &mayfly_crypto::VerifyingKeys| {
        verify_subject_token(&app.0.settings, &issuer.trusted, keys, token, now)
    };
    app.0.issuers.verify(issuer, now, verify).await
}

/// One of our own tokens, live and not revoked.
async fn ours(app: &App, token: &str, now: i64) -> Result<Verified, Denial> {
    let claims = check_access_token(&app.0.settings, &app.keys().verifying, token, now).ok_or(
        Denial::InvalidSubjectToken("not an active access token of this server"),
    )?;
    if app
        .0
        .store
        .is_revoked(&claims.jti)
        .await
        .map_err(|_| Denial::Unavailable)?
    {
        return Err(Denial::InvalidSubjectToken(
            "not an active access token of this server",
        ));
    }
    Ok(Verified::Ours(claims))
}

async fn by_type(app: &App, token: &str, token_type: &str, now: i64) -> Result<Verified, Denial> {
    match token_type {
        TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN => federated(app, token, now).await,
        TOKEN_TYPE_ACCESS_TOKEN => ours(app, token, now).await,
        other => Err(Denial::UnsupportedSubjectTokenType(
            other.chars().take(80).collect(),
        )),
    }
}

/// An actor token, under the subject's rules and one more: one of our own access tokens acts
/// only if it was issued to be presented here (its audience is this server), not any token of
/// ours a resource server was given.
async fn actor(app: &App, token: &str, token_type: &str, now: i64) -> Result<Verified, Denial> {
    let v = by_type(app, token, token_type, now).await?;
    if let Verified::Ours(c) = &v {
        let s = &app.0.settings;
        let aud = c.aud.trim_end_matches('/');
        if aud != s.issuer && aud != s.token_endpoint {
            return Err(Denial::ActorWrongAudience);
        }
    }
    Ok(v)
}

/// Authenticate the client when it sent an assertion (or must).
async fn optional_client(
    app: &App,
    headers: &HeaderMap,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<Option<AuthenticatedClient>, Denial> {
    if form.get("client_assertion").is_none()
        && form.get("client_assertion_type").is_none()
        && !headers.contains_key(axum::http::header::AUTHORIZATION)
    {
        return Ok(None);
    }
    let (_, auth) = authenticate(app, headers, form, now, caller).await?;
    Ok(Some(auth))
}

fn note_subject(caller: &mut Caller, v: &Verified) {
    match v {
        Verified::Federated { id, .. } => {
            caller.subject_issuer = Some(id.issuer_name.clone());
            caller.subject = Some(id.subject.clone());
            caller.identity = Some(id.identity.clone());
        }
        Verified::Ours(c) => {
            caller.subject_issuer = Some("mayfly".into());
            caller.subject = Some(c.sub.clone());
            caller.identity = Some(c.sub.clone());
        }
    }
}

/// Decide and issue for a verified subject (shared by both grants).
#[allow(clippy::too_many_arguments)] // one call site per grant; a struct would only rename them
async fn finish(
    app: &App,
    subject: Verified,
    actor: Option<Verified>,
    auth: Option<AuthenticatedClient>,
    form: &Form<'_>,
    grant_type: &'static str,
    now: i64,
    addr: &SocketAddr,
    caller: &mut Caller,
) -> Result<TokenResponse, Denial> {
    let params = token_params(form)?;
    // Our own tokens this one derives from (subject, actor): revoking one revokes it.
    let parents: Vec<String> = [Some(&subject), actor.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|v| v.our_jti().map(str::to_string))
        .collect();
    let prior_act: Option<&Value> = match &subject {
        Verified::Ours(c) => c.act.as_ref(),
        Verified::Federated { .. } => None,
    };
    let act = match &actor {
        Some(a) => {
            caller.actor = Some(a.identity().to_string());
            Some(act_claim(a.identity(), prior_act)?)
        }
        None => prior_act.cloned(),
    };
    // The actor's token is held to its issuer's rules as a subject token would be.
    let consume_actor = match &actor {
        Some(Verified::Federated {
            id,
            client_auth,
            one_time,
            ..
        }) => {
            if *client_auth == ClientAuthRule::Required && auth.is_none() {
                return Err(Denial::ActorClientAuthRequired);
            }
            match (&id.jti, one_time) {
                (Some(jti), true) => Some((
                    id.issuer_name.clone(),
                    jti.clone(),
                    id.exp + app.0.settings.clock_skew,
                )),
                _ => None,
            }
        }
        _ => None,
    };
    let client_id_auth = auth.as_ref().map(|a| a.client_id.clone());
    let src = source(addr);
    let mut link_svid = None;
    let (grant, mut e, consume) = match &subject {
        Verified::Federated {
            id,
            client_auth,
            one_time,
            ttl_cap,
            svid_jti,
        } => {
            link_svid = svid_jti.clone();
            if *client_auth == ClientAuthRule::Required && auth.is_none() {
                return Err(Denial::ClientAuthRequired);
            }
            let input = DecideInput {
                principal: Principal {
                    kind: PrincipalKind::Workload,
                    id: &id.identity,
                    attrs: &id.attrs,
                },
                client_id: client_id_auth.as_deref().unwrap_or(&id.identity),
                authenticated_client: client_id_auth.as_deref(),
                grant_type,
                default_audiences: &[],
                ttl_cap: *ttl_cap,
                subject_exp: Some(id.exp),
                act,
                source: src.as_deref().unwrap_or(""),
                now,
            };
            let grant = decide(
                &app.0.settings,
                &app.0.policies as &dyn Authorizer,
                input,
                &params,
                &mut caller.policies,
            )?;
            let consume = match (&id.jti, one_time) {
                (Some(jti), true) => Some((
                    id.issuer_name.clone(),
                    jti.clone(),
                    id.exp + app.0.settings.clock_skew,
                )),
                _ => None,
            };
            let mut e = AuditEvent::new(EventKind::Issue, now, Decision::Allow);
            e.subject_issuer = Some(id.issuer_name.clone());
            e.subject = Some(id.subject.clone());
            e.identity = Some(id.identity.clone());
            (grant, e, consume)
        }
        Verified::Ours(orig) => {
            let (params, narrowing) = narrow(orig, &params)?;
            let kind = if orig.sub.starts_with("spiffe://") {
                PrincipalKind::Workload
            } else {
                PrincipalKind::Client
            };
            // What policies see of a re-exchanged token's subject: it came from mayfly.
            let attrs = [
                ("issuer".to_string(), "mayfly".to_string()),
                ("subject".to_string(), orig.sub.clone()),
            ];
            let input = DecideInput {
                principal: Principal {
                    kind,
                    id: &orig.sub,
                    attrs: &attrs,
                },
                client_id: client_id_auth.as_deref().unwrap_or(&orig.client_id),
                authenticated_client: client_id_auth.as_deref(),
                grant_type,
                default_audiences: &[],
                ttl_cap: app.0.settings.max_ttl,
                subject_exp: Some(orig.exp),
                act,
                source: src.as_deref().unwrap_or(""),
                now,
            };
            // Narrowing alone needs no new decision; a new actor is a delegation, which the
            // policy set decides too (with `context.actor`).
            let policies = &app.0.policies as &dyn Authorizer;
            let both = AllOf(&narrowing, policies);
            let authz: &dyn Authorizer = if actor.is_some() { &both } else { &narrowing };
            let grant = decide(&app.0.settings, authz, input, &params, &mut caller.policies)?;
            let mut e = AuditEvent::new(EventKind::Issue, now, Decision::Allow);
            e.subject_issuer = Some("mayfly".into());
            e.subject = Some(orig.sub.clone());
            e.identity = Some(orig.sub.clone());
            (grant, e, None)
        }
    };
    e.client = client_id_auth;
    e.actor = caller.actor.clone();
    e.source = src;
    issue(
        app,
        grant,
        grant_type,
        e,
        auth,
        consume,
        consume_actor,
        link_svid,
        parents,
        now,
    )
    .await
}

/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`.
pub(crate) async fn token_exchange(
    app: &App,
    headers: &HeaderMap,
    form: &Form<'_>,
    now: i64,
    addr: &SocketAddr,
    caller: &mut Caller,
) -> Result<TokenResponse, Denial> {
    if let Some(t) = form.get("requested_token_type")
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(Denial::UnsupportedRequestedTokenType(
            t.chars().take(80).collect(),
        ));
    }
    let token = form
        .get("subject_token")
        .ok_or(Denial::MissingParameter("subject_token"))?;
    let token_type = form
        .get("subject_token_type")
        .ok_or(Denial::MissingParameter("subject_token_type"))?;
    let auth = optional_client(app, headers, form, now, caller).await?;
    let subject = by_type(app, token, token_type, now).await?;
    note_subject(caller, &subject);
    let actor = match (form.get("actor_token"), form.get("actor_token_type")) {
        (None, None) => None,
        (Some(t), Some(tt)) => Some(actor(app, t, tt, now).await?),
        (Some(_), None) => return Err(Denial::MissingParameter("actor_token_type")),
        (None, Some(_)) => return Err(Denial::MissingParameter("actor_token")),
    };
    let mut resp = finish(
        app,
        subject,
        actor,
        auth,
        form,
        GRANT_TOKEN_EXCHANGE,
        now,
        addr,
        caller,
    )
    .await?;
    resp.issued_token_type = Some(TOKEN_TYPE_ACCESS_TOKEN.into());
    Ok(resp)
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with `assertion` from a trusted
/// issuer, under the same trust rules as a token-exchange subject token.
pub(crate) async fn jwt_bearer(
    app: &App,
    headers: &HeaderMap,
    form: &Form<'_>,
    now: i64,
    addr: &SocketAddr,
    caller: &mut Caller,
) -> Result<TokenResponse, Denial> {
    let token = form
        .get("assertion")
        .ok_or(Denial::MissingParameter("assertion"))?;
    let auth = optional_client(app, headers, form, now, caller).await?;
    let subject = federated(app, token, now).await?;
    note_subject(caller, &subject);
    finish(
        app,
        subject,
        None,
        auth,
        form,
        GRANT_JWT_BEARER,
        now,
        addr,
        caller,
    )
    .await
}
