//! The one issuance pipeline: each grant's authenticator yields an [`Authenticated`], and
//! [`issue`] runs decide → mint for it, returning the token, the audit [`Record`] to commit
//! (before the token leaves) and the response. Refusals carry the typed [`Denial`] and what is
//! known of the caller, for the denial's audit event.

use mayfly_proto::{
    Form, GRANT_CLIENT_CREDENTIALS, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE, TokenResponse,
};
use serde_json::Value;

use crate::authz::Narrowing;
use crate::ports::{Sts, World};
use crate::{
    AccessTokenClaims, AllOf, AuditEvent, AuthenticatedClient, Authorizer, DecideInput, Decision,
    Denial, EventKind, MintExtras, Principal, PrincipalKind, TokenParams, decide, mint, narrow,
};

/// Longest client id echoed into a denial's audit event.
pub(crate) const MAX_CLAIMED_ID: usize = 128;

/// A form request as the HTTP adapter extracted it.
#[derive(Debug, Clone, Copy)]
pub struct FormRequest<'a> {
    /// The `application/x-www-form-urlencoded` body (size already bounded).
    pub body: &'a [u8],
    /// Whether the request carried an `Authorization` header (never accepted for clients).
    pub http_auth: bool,
    /// The source address, if known.
    pub source: Option<&'a str>,
}

/// What is known of the caller when a request is refused (for its audit event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The client id as claimed (clipped); not necessarily authenticated.
    pub claimed: Option<String>,
    /// The subject token's trusted issuer (name).
    pub subject_issuer: Option<String>,
    /// The subject token's `sub`.
    pub subject: Option<String>,
    /// The mapped workload identity.
    pub identity: Option<String>,
    /// The actor's identity (delegation).
    pub actor: Option<String>,
    /// The policies that decided.
    pub policies: Vec<String>,
}

impl Caller {
    /// The `deny` audit event for `denial` at `now`.
    pub fn deny_event(
        self,
        denial: &Denial,
        now: i64,
        grant: Option<&str>,
        source: Option<String>,
    ) -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::Deny, now, Decision::Deny);
        e.client = self.claimed;
        e.subject_issuer = self.subject_issuer;
        e.subject = self.subject.map(|s| s.chars().take(256).collect());
        e.identity = self.identity;
        e.actor = self.actor;
        e.policies = self.policies;
        e.grant = grant.map(|g| g.chars().take(64).collect());
        e.source = source;
        e.reason = Some(denial.reason().to_string());
        e
    }
}

/// A refused request: why, and who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub denial: Denial,
    /// What is known of the caller (boxed: refusals travel in `Err`).
    pub caller: Box<Caller>,
    /// The requested grant type, if the form named one.
    pub grant: Option<String>,
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Self {
            denial,
            caller: Box::default(),
            grant: None,
        }
    }
}

/// A single-use value to consume: (namespace, jti, keep until).
pub type Consume = (String, String, i64);

/// The audit record of an answered request, committed atomically with what it consumes, revokes
/// and links before the answer leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event.
    pub event: AuditEvent,
    /// The client assertion's jti: (client_id, jti, keep until).
    pub consume_jti: Option<Consume>,
    /// A one-time subject token: (issuer name, jti, keep until).
    pub consume_subject: Option<Consume>,
    /// A one-time actor token: (issuer name, jti, keep until).
    pub consume_actor: Option<Consume>,
    /// A token to revoke: (jti, client_id, exp).
    pub revoke: Option<(String, String, i64)>,
    /// The JWT-SVID `jti` the issued token was minted from.
    pub link_svid: Option<String>,
    /// Our own tokens the issued token derives from.
    pub parents: Vec<String>,
    /// The issued token's status-list slot.
    pub status: Option<crate::StatusSlot>,
    /// The lease the issued token lives under (opened with it, or existing).
    pub lease: Option<crate::LeaseLink>,
}

impl Record {
    /// `event`, consuming the authenticated client's assertion (if any).
    pub fn new(
        settings: &crate::Settings,
        event: AuditEvent,
        client: Option<&AuthenticatedClient>,
    ) -> Self {
        Self {
            event,
            consume_jti: client.map(|a| {
                (
                    a.client_id.clone(),
                    a.jti.clone(),
                    a.assertion_exp + settings.clock_skew,
                )
            }),
            consume_subject: None,
            consume_actor: None,
            revoke: None,
            link_svid: None,
            parents: Vec::new(),
            status: None,
            lease: None,
        }
    }
}

/// An answer that is ready once its record is committed.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The answer.
    pub value: T,
    /// What to commit first.
    pub record: Record,
    /// Who asked (for the denial's event, should the commit refuse a replay).
    pub caller: Caller,
    /// The grant type, for a denial's event.
    pub grant: Option<String>,
}

impl<T> Outcome<T> {
    /// The refusal when committing the record turned up `denial` (a replay, or an unavailable
    /// store). The JWT bearer grant reports a replayed assertion as `invalid_grant`.
    pub fn refused(self, denial: Denial) -> Refusal {
        Refusal::after_commit(denial, self.caller, self.grant)
    }
}

impl Refusal {
    /// The refusal when committing an answer's record turned up `denial`, for the caller and
    /// grant of that answer. The JWT bearer grant reports a replayed assertion as
    /// `invalid_grant`.
    pub fn after_commit(denial: Denial, caller: Caller, grant: Option<String>) -> Self {
        let denial = match grant.as_deref() {
            Some(GRANT_JWT_BEARER) => denial.for_assertion_grant(),
            _ => denial,
        };
        Self {
            denial,
            caller: Box::new(caller),
            grant,
        }
    }
}

/// A signed token and the facts the adapter logs and counts once it is recorded.
#[derive(Debug)]
pub struct Issued {
    /// The response body.
    pub response: TokenResponse,
    /// The token's `jti`.
    pub jti: String,
    /// The kid that signed it.
    pub kid: String,
    /// The token's `client_id` claim.
    pub client_id: String,
    /// The token's audience.
    pub audience: String,
    /// The authenticated client, if any (a bounded metric label; identities are not).
    pub authenticated_client: Option<String>,
    /// The grant type.
    pub grant_type: &'static str,
    /// The kind of lease this token opened (`grant` or `ci`), for the metric.
    pub lease_opened: Option<&'static str>,
}

/// Who the token is for, as an authenticator established it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// Kind.
    pub kind: PrincipalKind,
    /// client_id or SPIFFE ID: the token's `sub`.
    pub id: String,
    /// Identity attributes policies see.
    pub attrs: Vec<(String, String)>,
}

/// What the audit event says of a token-exchange subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAudit {
    /// The trusted issuer's name (`mayfly` for our own tokens).
    pub issuer: Option<String>,
    /// The subject token's `sub`.
    pub subject: Option<String>,
    /// The mapped identity.
    pub identity: Option<String>,
}

/// The one typed result of every grant's authenticator.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// The principal.
    pub principal: Subject,
    /// The token's `client_id` claim.
    pub client_id: String,
    /// The authenticated client (its assertion jti is consumed), if any.
    pub client: Option<AuthenticatedClient>,
    /// The audiences to pick from when the request names none (the single one is used).
    pub default_audiences: Vec<String>,
    /// A one-time subject token to consume.
    pub consume_subject: Option<Consume>,
    /// A one-time actor token to consume.
    pub consume_actor: Option<Consume>,
    /// Lifetime cap of the client or issuer, seconds.
    pub ttl_cap: i64,
    /// The subject token's `exp`: the new token never outlives it.
    pub subject_exp: Option<i64>,
    /// The `act` claim of the new token.
    pub act: Option<Value>,
    /// The current actor's identity, if a new actor was presented.
    pub actor: Option<String>,
    /// Our own tokens the new one derives from: revoking one revokes it.
    pub parents: Vec<String>,
    /// The JWT-SVID `jti` the token is minted from: revoked with it when its workload exits.
    pub link_svid: Option<String>,
    /// Re-exchange of one of our own tokens: the new one may only narrow it.
    pub narrowing: Option<AccessTokenClaims>,
    /// What the audit event says of the subject.
    pub audit: SubjectAudit,
    /// The CI run of a CI platform's identity token: the token is under its job's lease.
    pub ci: Option<crate::CiRun>,
}

/// The expires_in, scope, resource and audience parameters.
pub fn token_params(form: &Form<'_>) -> Result<TokenParams, Denial> {
    let requested_ttl = match form.get("expires_in") {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            Denial::InvalidParameter("expires_in", "must be a whole number of seconds".into())
        })?),
    };
    Ok(TokenParams {
        scope: form.get("scope").map(str::to_string),
        resources: form
            .get_all("resource")
            .into_iter()
            .map(str::to_string)
            .collect(),
        audience: form.get("audience").map(str::to_string),
        requested_ttl,
        lease: crate::lease::lease_param(form.get(crate::lease::LEASE_PARAM))?,
    })
}

/// Parse a form body; `repeatable` names the parameters that may appear more than once.
pub(crate) fn parse_form<'a>(body: &'a [u8], repeatable: &[&str]) -> Result<Form<'a>, Denial> {
    Form::parse(body, repeatable).map_err(|e| Denial::MalformedRequest(e.to_string()))
}

/// Decide and mint for `a` at `now`, under the lease `params` asks for (or the CI job's): the
/// token, its issue record and the response. The ids of the deciding policies are appended to
/// `trace` (a denial's event names them).
pub async fn issue<W: World>(
    sts: &Sts<'_, W>,
    a: &Authenticated,
    params: &TokenParams,
    grant_type: &'static str,
    now: i64,
    source: Option<&str>,
    trace: &mut Vec<String>,
) -> Result<(Issued, Record), Denial> {
    let mut grant = decide_for(sts, a, params, grant_type, now, source, trace)?;
    let link = crate::lease::resolve(
        sts,
        &a.principal.id,
        &a.client_id,
        a.ci.as_ref(),
        params.lease.as_ref(),
        now,
    )
    .await?;
    // A token never outlives its lease's hard end.
    if let Some((l, hard_end)) = &link {
        grant.ttl = grant.ttl.min(hard_end - now);
        if grant.ttl <= 0 {
            return Err(Denial::LeaseEnded(l.id().chars().take(64).collect()));
        }
    }
    let (link, lease_id) = match link {
        Some((l, _)) => {
            let id = l.id().to_string();
            (Some(l), Some(id))
        }
        None => (None, None),
    };
    // Only a decided token takes a slot: refusals never use up a list.
    let slot = sts.world.status_slot().await?;
    let jti = mayfly_crypto::random_id().map_err(|_| Denial::Internal)?;
    let extras = MintExtras {
        status: Some(slot),
        lease: lease_id.as_deref(),
    };
    let minted = mint(
        sts.settings,
        &grant,
        &sts.world.signing_key(),
        now,
        jti,
        extras,
    )?;
    let client = a.client.as_ref().map(|c| c.client_id.as_str());
    let mut e = AuditEvent::new(EventKind::Issue, now, Decision::Allow);
    e.client = client.map(str::to_string);
    e.subject_issuer = a.audit.issuer.clone();
    e.subject = a.audit.subject.clone();
    e.identity = a.audit.identity.clone();
    e.actor = a.actor.clone();
    e.source = source.map(str::to_string);
    e.grant = Some(grant_type.into());
    e.audience = Some(grant.audience.clone());
    e.scopes = grant.scopes.clone();
    e.jti = Some(minted.jti.clone());
    e.exp = Some(minted.exp);
    e.policies = grant.policies.clone();
    e.lease = lease_id.clone();
    let mut record = Record::new(sts.settings, e, a.client.as_ref());
    record.consume_subject = a.consume_subject.clone();
    record.consume_actor = a.consume_actor.clone();
    record.link_svid = a.link_svid.clone();
    record.parents = a.parents.clone();
    record.status = Some(slot);
    let lease_opened = link.as_ref().and_then(crate::LeaseLink::opened_kind);
    record.lease = link;
    let issued = Issued {
        response: TokenResponse {
            access_token: minted.token,
            token_type: "Bearer".into(),
            expires_in: grant.ttl as u64,
            scope: (!grant.scopes.is_empty()).then(|| grant.scopes.join(" ")),
            issued_token_type: (grant_type == GRANT_TOKEN_EXCHANGE)
                .then(|| mayfly_proto::TOKEN_TYPE_ACCESS_TOKEN.into()),
            lease_id,
        },
        jti: minted.jti,
        kid: minted.kid,
        client_id: grant.client_id,
        audience: grant.audience,
        authenticated_client: client.map(str::to_string),
        grant_type,
        lease_opened,
    };
    Ok((issued, record))
}

/// The decision for `a`: narrowing of a re-exchanged token, and the policy set.
fn decide_for<W: World>(
    sts: &Sts<'_, W>,
    a: &Authenticated,
    params: &TokenParams,
    grant_type: &'static str,
    now: i64,
    source: Option<&str>,
    trace: &mut Vec<String>,
) -> Result<crate::Grant, Denial> {
    let (params, narrowing): (TokenParams, Option<Narrowing>) = match &a.narrowing {
        Some(orig) => {
            let (p, n) = narrow(orig, params)?;
            (p, Some(n))
        }
        None => (params.clone(), None),
    };
    // Narrowing alone needs no new decision; a new actor is a delegation, which the policy set
    // decides too (with `context.actor`).
    let both;
    let authz: &dyn Authorizer = match &narrowing {
        None => sts.authorizer,
        Some(n) if a.actor.is_some() => {
            both = AllOf(n, sts.authorizer);
            &both
        }
        Some(n) => n,
    };
    let input = DecideInput {
        principal: Principal {
            kind: a.principal.kind,
            id: &a.principal.id,
            attrs: &a.principal.attrs,
        },
        client_id: &a.client_id,
        authenticated_client: a.client.as_ref().map(|c| c.client_id.as_str()),
        grant_type,
        default_audiences: &a.default_audiences,
        ttl_cap: a.ttl_cap,
        subject_exp: a.subject_exp,
        act: a.act.clone(),
        source: source.unwrap_or(""),
        now,
    };
    decide(sts.settings, authz, input, &params, trace)
}

/// `POST /oauth2/token`: parse the form, run the grant's authenticator, then decide and mint.
pub async fn token<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
) -> Result<Outcome<Issued>, Refusal> {
    let mut caller = Caller::default();
    let mut grant = None;
    match token_steps(sts, req, &mut caller, &mut grant).await {
        Ok((value, record)) => Ok(Outcome {
            value,
            record,
            caller,
            grant,
        }),
        Err(denial) => Err(Refusal {
            denial,
            caller: Box::new(caller),
            grant,
        }),
    }
}

async fn token_steps<W: World>(
    sts: &Sts<'_, W>,
    req: &FormRequest<'_>,
    caller: &mut Caller,
    grant: &mut Option<String>,
) -> Result<(Issued, Record), Denial> {
    let form = parse_form(req.body, &["resource"])?;
    *grant = form.get("grant_type").map(str::to_string);
    let gt = form
        .get("grant_type")
        .ok_or(Denial::MissingParameter("grant_type"))?;
    let now = sts.clock.now();
    let (gt, authenticated) = match gt {
        GRANT_CLIENT_CREDENTIALS => (
            GRANT_CLIENT_CREDENTIALS,
            crate::grants::client_credentials(sts, req, &form, now, caller).await,
        ),
        GRANT_TOKEN_EXCHANGE => (
            GRANT_TOKEN_EXCHANGE,
            crate::grants::token_exchange(sts, req, &form, now, caller).await,
        ),
        GRANT_JWT_BEARER => (
            GRANT_JWT_BEARER,
            crate::grants::jwt_bearer(sts, req, &form, now, caller).await,
        ),
        other => {
            return Err(Denial::UnsupportedGrantType(
                other.chars().take(64).collect(),
            ));
        }
    };
    // RFC 7523 §3.1: a bad assertion grant is `invalid_grant`.
    let refine = |d: Denial| match gt {
        GRANT_JWT_BEARER => d.for_assertion_grant(),
        _ => d,
    };
    let (a, params) = authenticated.map_err(refine)?;
    issue(sts, &a, &params, gt, now, req.source, &mut caller.policies)
        .await
        .map_err(refine)
}
