//! Introspection (RFC 7662) and revocation (RFC 7009): who may see or revoke which token.

use mayfly_proto::IntrospectionResponse;

use crate::grants::{authenticate_client, presents_client};
use crate::pipeline::{Caller, FormRequest, MAX_CLAIMED_ID, Outcome, Record, Refusal, parse_form};
use crate::ports::{Sts, World};
use crate::{
    AccessTokenClaims, AuditEvent, AuthenticatedClient, Client, Decision, Denial, EventKind,
    check_access_token,
};

/// Who may introspect other clients' tokens, by audience: the `introspect = [...]` grants of
/// configured clients, and the proxy client, which sees its routes' audiences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntrospectGrants {
    /// (client_id, audiences whose tokens it may introspect).
    pub clients: Vec<(String, Vec<String>)>,
    /// The proxy's client id, if a proxy is configured.
    pub proxy_client: Option<String>,
    /// The audiences of the proxy's routes.
    pub proxy_audiences: Vec<String>,
}

impl IntrospectGrants {
    /// Whether `caller` may see tokens for `aud` that are not its own.
    pub fn granted(&self, caller: &str, aud: &str) -> bool {
        self.clients
            .iter()
            .find(|(id, _)| id == caller)
            .is_some_and(|(_, auds)| auds.iter().any(|a| a == aud))
            || (self.proxy_client.as_deref() == Some(caller)
                && self.proxy_audiences.iter().any(|a| a == aud))
    }

    /// Whether `caller` may see the token `claims`: its own tokens, and those for the audiences
    /// it was granted. Others are inactive to it (RFC 7662 §2.2: reveal nothing).
    pub fn visible(&self, caller: &str, claims: &AccessTokenClaims) -> bool {
        claims.client_id == caller || self.granted(caller, &claims.aud)
    }
}

/// Revocation by an authenticated client: only the client a token was issued to may revoke it.
/// A token that is not a live token of ours is nothing to do (RFC 7009 §2.2: answer 200).
pub fn may_revoke(caller: &str, claims: Option<&AccessTokenClaims>) -> Result<(), Denial> {
    match claims {
        Some(c) if c.client_id != caller => Err(Denial::NotTokenOwner),
        _ => Ok(()),
    }
}

/// Revocation without client authentication: the token is its own authorization (RFC 7009
/// §2.1) only when it is a live token of ours that no registered client owns (a token a
/// workload exchanged with its subject token alone).
pub fn may_revoke_by_bearer(
    claims: Option<&AccessTokenClaims>,
    owner_registered: bool,
) -> Result<(), Denial> {
    match claims {
        Some(_) if !owner_registered => Ok(()),
        _ => Err(Denial::MissingClientAuth),
    }
}

/// An authenticated client, the token its request names, and the token's claims when it is a
/// live token of ours.
async fn query<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &mayfly_proto::Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<
    (
        std::sync::Arc<Client>,
        AuthenticatedClient,
        Option<AccessTokenClaims>,
    ),
    Denial,
> {
    let (client, auth) = authenticate_client(sts, req, form, now, caller).await?;
    let token = form.get("token").ok_or(Denial::MissingParameter("token"))?;
    let keys = sts.world.access_token_keys();
    let claims = check_access_token(sts.settings, &keys, token, now);
    Ok((client, auth, claims))
}

fn outcome<T>(r: Result<(T, Record), Denial>, caller: Caller) -> Result<Outcome<T>, Refusal> {
    match r {
        Ok((value, record)) => Ok(Outcome {
            value,
            record,
            caller,
            grant: None,
        }),
        Err(denial) => Err(Refusal {
            denial,
            caller: Box::new(caller),
            grant: None,
        }),
    }
}

/// `POST /oauth2/introspect`.
pub async fn introspect<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    grants: &IntrospectGrants,
) -> Result<Outcome<IntrospectionResponse>, Refusal> {
    let mut caller = Caller::default();
    let r = introspect_steps(sts, req, grants, &mut caller).await;
    outcome(r, caller)
}

async fn introspect_steps<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    grants: &IntrospectGrants,
    caller: &mut Caller,
) -> Result<(IntrospectionResponse, Record), Denial> {
    let form = parse_form(req.body, &[])?;
    let now = sts.clock.now();
    let (client, auth, claims) = query(sts, req, &form, now, caller).await?;
    let hidden = claims
        .as_ref()
        .is_some_and(|c| !grants.visible(&client.id, c));
    let visible = claims.filter(|_| !hidden);
    let active = match &visible {
        Some(c) => !sts.world.is_revoked(&c.jti).await?,
        None => false,
    };
    let mut e = AuditEvent::new(EventKind::Introspect, now, Decision::Allow);
    e.client = Some(client.id.clone());
    e.jti = visible.as_ref().map(|c| c.jti.clone());
    e.source = req.source.map(str::to_string);
    let reason = if hidden {
        "introspection_not_granted"
    } else if active {
        "active"
    } else {
        "inactive"
    };
    e.reason = Some(reason.into());
    let record = Record::new(sts.settings, e, Some(&auth));
    let response = match visible {
        Some(c) if active => IntrospectionResponse {
            active: true,
            scope: c.scope,
            client_id: Some(c.client_id),
            token_type: Some("Bearer".into()),
            exp: Some(c.exp),
            iat: Some(c.iat),
            sub: Some(c.sub),
            aud: Some(c.aud),
            iss: Some(c.iss),
            jti: Some(c.jti),
        },
        _ => IntrospectionResponse::inactive(),
    };
    Ok((response, record))
}

/// `POST /oauth2/revoke`: the answer is an empty JSON object.
pub async fn revoke<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
) -> Result<Outcome<()>, Refusal> {
    let mut caller = Caller::default();
    let r = revoke_steps(sts, req, &mut caller).await;
    outcome(r, caller)
}

async fn revoke_steps<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    caller: &mut Caller,
) -> Result<((), Record), Denial> {
    let form = parse_form(req.body, &[])?;
    let now = sts.clock.now();
    if !presents_client(req, &form) {
        return revoke_by_bearer(sts, req, &form, now, caller).await;
    }
    let (client, auth, claims) = query(sts, req, &form, now, caller).await?;
    may_revoke(&client.id, claims.as_ref())?;
    let mut e = AuditEvent::new(EventKind::Revoke, now, Decision::Allow);
    e.client = Some(client.id.clone());
    e.jti = claims.as_ref().map(|c| c.jti.clone());
    e.exp = claims.as_ref().map(|c| c.exp);
    e.source = req.source.map(str::to_string);
    let reason = if claims.is_some() {
        "revoked"
    } else {
        "not_a_live_token"
    };
    e.reason = Some(reason.into());
    let mut record = Record::new(sts.settings, e, Some(&auth));
    record.revoke = claims.map(|c| (c.jti, c.client_id, c.exp));
    Ok(((), record))
}

async fn revoke_by_bearer<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    form: &mayfly_proto::Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<((), Record), Denial> {
    let token = form.get("token").ok_or(Denial::MissingParameter("token"))?;
    let keys = sts.world.access_token_keys();
    let claims = check_access_token(sts.settings, &keys, token, now);
    let owner_registered = match &claims {
        Some(c) => {
            caller.identity = Some(c.sub.clone());
            let registered = sts.world.client(&c.client_id, now).await.is_some();
            if registered {
                // A registered client's token: only that client, authenticated, may revoke it.
                caller.claimed = Some(c.client_id.chars().take(MAX_CLAIMED_ID).collect());
            }
            registered
        }
        None => false,
    };
    may_revoke_by_bearer(claims.as_ref(), owner_registered)?;
    let Some(c) = claims else {
        return Err(Denial::MissingClientAuth);
    };
    let mut e = AuditEvent::new(EventKind::Revoke, now, Decision::Allow);
    e.identity = Some(c.sub.clone());
    e.jti = Some(c.jti.clone());
    e.exp = Some(c.exp);
    e.source = req.source.map(str::to_string);
    e.reason = Some("revoked_by_bearer".into());
    let mut record = Record::new(sts.settings, e, None);
    record.revoke = Some((c.jti, c.client_id, c.exp));
    Ok(((), record))
}
