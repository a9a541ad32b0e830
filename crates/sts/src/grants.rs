//! One authenticator per grant: client credentials (a client assertion), token exchange (a
//! subject token, an optional actor token, an optional client) and the JWT bearer grant (an
//! assertion from a trusted issuer). Each yields an [`Authenticated`] and the request's
//! [`TokenParams`]; [`crate::issue`] does the rest. Subject and actor tokens are verified in
//! [`crate::subject`].

use std::sync::Arc;

use mayfly_proto::{Form, JWT_BEARER_ASSERTION_TYPE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use serde_json::Value;

use crate::pipeline::{
    Authenticated, Caller, FormRequest, MAX_CLAIMED_ID, Subject, SubjectAudit, token_params,
};
use crate::ports::{Sts, World};
use crate::subject::{Verified, by_type, federated};
use crate::{
    AuthenticatedClient, Client, Denial, PrincipalKind, Settings, TokenParams, act_claim,
    authenticate_assertion, claimed_client_id,
};

/// Authenticate the client of a request by its `private_key_jwt` assertion. The assertion's jti
/// is consumed later, atomically with the request's audit event.
pub(crate) async fn authenticate_client<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<(Arc<Client>, AuthenticatedClient), Denial> {
    if req.http_auth {
        return Err(Denial::HttpAuthNotSupported);
    }
    let (assertion_type, assertion) = match (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) {
        (None, None) => return Err(Denial::MissingClientAuth),
        (Some(t), Some(a)) => (t, a),
        (None, Some(_)) => return Err(Denial::MissingParameter("client_assertion_type")),
        (Some(_), None) => return Err(Denial::MissingParameter("client_assertion")),
    };
    if assertion_type != JWT_BEARER_ASSERTION_TYPE {
        return Err(Denial::UnsupportedAssertionType);
    }
    let client_id = form.get("client_id");
    caller.claimed = client_id.map(|s| s.chars().take(MAX_CLAIMED_ID).collect());
    let claimed = claimed_client_id(assertion)?;
    caller.claimed = Some(claimed.clone());
    let client = sts
        .world
        .client(&claimed, now)
        .await
        .ok_or(Denial::UnknownClient)?;
    match authenticate_assertion(sts.settings, &client, assertion, client_id, now) {
        // A client that publishes its keys at a URL may have rotated: refetch once and retry.
        Err(Denial::UnknownKey) => match sts.world.refresh_keys(&client.id, now).await? {
            Some(client) => {
                let auth =
                    authenticate_assertion(sts.settings, &client, assertion, client_id, now)?;
                Ok((client, auth))
            }
            None => Err(Denial::UnknownKey),
        },
        Ok(auth) => Ok((client, auth)),
        Err(d) => Err(d),
    }
}

/// Whether the request presents client authentication (an assertion, or an attempt at HTTP
/// authentication, which is then refused).
pub(crate) fn presents_client(req: &FormRequest<'_>, form: &Form<'_>) -> bool {
    form.get("client_assertion").is_some()
        || form.get("client_assertion_type").is_some()
        || req.http_auth
}

/// Authenticate the client when it sent an assertion (or must).
async fn optional_client<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<Option<AuthenticatedClient>, Denial> {
    if !presents_client(req, form) {
        return Ok(None);
    }
    let (_, auth) = authenticate_client(sts, req, form, now, caller).await?;
    Ok(Some(auth))
}

/// `grant_type=client_credentials`: the client is the principal.
pub(crate) async fn client_credentials<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<(Authenticated, TokenParams), Denial> {
    let (client, auth) = authenticate_client(sts, req, form, now, caller).await?;
    let params = token_params(form)?;
    Ok((for_client(&client, auth), params))
}

/// What a client authenticated by its assertion may be issued as itself.
pub fn for_client(client: &Client, auth: AuthenticatedClient) -> Authenticated {
    Authenticated {
        principal: Subject {
            kind: PrincipalKind::Client,
            id: client.id.clone(),
            attrs: Vec::new(),
        },
        client_id: client.id.clone(),
        client: Some(auth),
        default_audiences: client.audiences.clone(),
        consume_subject: None,
        consume_actor: None,
        ttl_cap: client.max_ttl,
        subject_exp: None,
        act: None,
        actor: None,
        parents: Vec::new(),
        link_svid: None,
        narrowing: None,
        audit: SubjectAudit::default(),
        ci: None,
    }
}

fn note_subject(caller: &mut Caller, v: &Verified) {
    let (issuer, subject, identity) = match v {
        Verified::Federated { id, .. } => (id.issuer_name.as_str(), &id.subject, &id.identity),
        Verified::Ours(c) => ("mayfly", &c.sub, &c.sub),
    };
    caller.subject_issuer = Some(issuer.to_string());
    caller.subject = Some(subject.clone());
    caller.identity = Some(identity.clone());
}

/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693).
pub(crate) async fn token_exchange<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<(Authenticated, TokenParams), Denial> {
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
    let auth = optional_client(sts, req, form, now, caller).await?;
    let subject = by_type(sts, token, token_type, now).await?;
    note_subject(caller, &subject);
    let actor = match (form.get("actor_token"), form.get("actor_token_type")) {
        (None, None) => None,
        (Some(t), Some(tt)) => Some(crate::subject::actor(sts, t, tt, now).await?),
        (Some(_), None) => return Err(Denial::MissingParameter("actor_token_type")),
        (None, Some(_)) => return Err(Denial::MissingParameter("actor_token")),
    };
    let params = token_params(form)?;
    let a = identify(sts.settings, subject, actor, auth, caller)?;
    Ok((a, params))
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 §2.1) with `assertion`
/// from a trusted issuer, under the same trust rules as a token-exchange subject token.
pub(crate) async fn jwt_bearer<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<(Authenticated, TokenParams), Denial> {
    let token = form
        .get("assertion")
        .ok_or(Denial::MissingParameter("assertion"))?;
    let auth = optional_client(sts, req, form, now, caller).await?;
    let subject = federated(sts, token, now).await?;
    note_subject(caller, &subject);
    let params = token_params(form)?;
    let a = identify(sts.settings, subject, None, auth, caller)?;
    Ok((a, params))
}

/// Identify the principal of a verified subject (and actor): the delegation chain, the
/// issuers' client-authentication rules, the single uses to consume and the lifetime caps
/// (re-exchanged tokens of ours are capped by the global maximum).
pub fn identify(
    settings: &Settings,
    subject: Verified,
    actor: Option<Verified>,
    client: Option<AuthenticatedClient>,
    caller: &mut Caller,
) -> Result<Authenticated, Denial> {
    let (skew, max_ttl) = (settings.clock_skew, settings.max_ttl);
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
    if actor.as_ref().is_some_and(Verified::requires_client) && client.is_none() {
        return Err(Denial::ActorClientAuthRequired);
    }
    let consume_actor = actor.as_ref().and_then(|a| a.consume(skew));
    if subject.requires_client() && client.is_none() {
        return Err(Denial::ClientAuthRequired);
    }
    let consume_subject = subject.consume(skew);
    let client_id = client.as_ref().map(|c| c.client_id.clone());
    let base = |principal: Subject, token_client: &str, audit: SubjectAudit| Authenticated {
        principal,
        client_id: client_id
            .clone()
            .unwrap_or_else(|| token_client.to_string()),
        client: client.clone(),
        default_audiences: Vec::new(),
        consume_subject: consume_subject.clone(),
        consume_actor: consume_actor.clone(),
        ttl_cap: max_ttl,
        subject_exp: None,
        act: act.clone(),
        actor: caller.actor.clone(),
        parents: parents.clone(),
        link_svid: None,
        narrowing: None,
        audit,
        ci: None,
    };
    Ok(match subject {
        Verified::Federated {
            id,
            ttl_cap,
            svid_jti,
            ..
        } => {
            let audit = SubjectAudit {
                issuer: Some(id.issuer_name.clone()),
                subject: Some(id.subject.clone()),
                identity: Some(id.identity.clone()),
            };
            let principal = Subject {
                kind: PrincipalKind::Workload,
                id: id.identity.clone(),
                attrs: id.attrs,
            };
            Authenticated {
                ttl_cap,
                subject_exp: Some(id.exp),
                link_svid: svid_jti,
                ci: id.ci,
                ..base(principal, &id.identity, audit)
            }
        }
        Verified::Ours(orig) => {
            let kind = if orig.sub.starts_with("spiffe://") {
                PrincipalKind::Workload
            } else {
                PrincipalKind::Client
            };
            // What policies see of a re-exchanged token's subject: it came from mayfly.
            let principal = Subject {
                kind,
                id: orig.sub.clone(),
                attrs: vec![
                    ("issuer".to_string(), "mayfly".to_string()),
                    ("subject".to_string(), orig.sub.clone()),
                ],
            };
            let audit = SubjectAudit {
                issuer: Some("mayfly".into()),
                subject: Some(orig.sub.clone()),
                identity: Some(orig.sub.clone()),
            };
            let mut a = Authenticated {
                subject_exp: Some(orig.exp),
                ..base(principal, &orig.client_id, audit)
            };
            a.narrowing = Some(orig);
            a
        }
    })
}
