//! Endpoint handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_proto::{
    Form, GRANT_CLIENT_CREDENTIALS, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE, IntrospectionResponse,
    JWT_BEARER_ASSERTION_TYPE, TokenResponse,
};
use mayfly_store::{CommitOutcome, Pending};
use mayfly_sts::{
    AccessTokenClaims, AuditEvent, AuthenticatedClient, Client, DecideInput, Decision, Denial,
    EventKind, Grant, Principal, PrincipalKind, TokenParams, authenticate_assertion,
    check_access_token, claimed_client_id, decide, mint,
};

use crate::error::denial_response;
use crate::state::App;

/// Longest client id echoed into a denial's audit event.
const MAX_CLAIMED_ID: usize = 128;

/// Read a form body within the size limit; [`parse_form`] then reads it without copying.
async fn read_form_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Denial> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(Denial::NotAForm);
    }
    let limit = app.0.config.server.max_body_bytes;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Denial::BodyTooLarge(limit))
}

fn parse_form<'a>(body: &'a [u8], repeatable: &[&str]) -> Result<Form<'a>, Denial> {
    Form::parse(body, repeatable).map_err(|e| Denial::MalformedRequest(e.to_string()))
}

/// What we know of the caller when a request is refused (for its audit event).
#[derive(Default)]
pub(crate) struct Caller {
    pub claimed: Option<String>,
    pub subject_issuer: Option<String>,
    pub subject: Option<String>,
    pub identity: Option<String>,
    pub actor: Option<String>,
    pub policies: Vec<String>,
}

/// Authenticate the client of a request by its `private_key_jwt` assertion. The assertion's jti
/// is consumed later, atomically with the request's audit event.
pub(crate) async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<(Arc<Client>, AuthenticatedClient), Denial> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(Denial::HttpAuthNotSupported);
    }
    let assertion_type = form.get("client_assertion_type");
    let assertion = form.get("client_assertion");
    let (assertion_type, assertion) = match (assertion_type, assertion) {
        (None, None) => return Err(Denial::MissingClientAuth),
        (Some(t), Some(a)) => (t, a),
        (None, Some(_)) => return Err(Denial::MissingParameter("client_assertion_type")),
        (Some(_), None) => return Err(Denial::MissingParameter("client_assertion")),
    };
    if assertion_type != JWT_BEARER_ASSERTION_TYPE {
        return Err(Denial::UnsupportedAssertionType);
    }
    caller.claimed = form
        .get("client_id")
        .map(|s| s.chars().take(MAX_CLAIMED_ID).collect());
    let claimed = claimed_client_id(assertion)?;
    caller.claimed = Some(claimed.clone());
    let (client, loaded_now) = app
        .0
        .clients
        .get_or_reload(&claimed, &app.0.store, now)
        .await
        .ok_or(Denial::UnknownClient)?;
    if loaded_now {
        // Just registered at run time (perhaps through another replica): its lists become
        // policies now, not at the next tick.
        app.reload_policy_if_changed().await;
    }
    let client_id = form.get("client_id");
    match authenticate_assertion(&app.0.settings, &client, assertion, client_id, now) {
        // A jwks_uri client may have rotated: refetch (at most every 30 s) and try once more.
        Err(Denial::UnknownKey) if app.0.clients.refresh_uri(&client.id, now, true).await => {
            let client = app.0.clients.get(&claimed).ok_or(Denial::UnknownClient)?;
            let auth = authenticate_assertion(&app.0.settings, &client, assertion, client_id, now)?;
            Ok((client, auth))
        }
        Ok(auth) => Ok((client, auth)),
        Err(d) => Err(d),
    }
}

pub(crate) fn source(addr: &SocketAddr) -> Option<String> {
    Some(addr.ip().to_string())
}

/// Record a denial (durably), count it, and build the error response.
async fn deny(
    app: &App,
    endpoint: &'static str,
    d: Denial,
    caller: Caller,
    src: Option<String>,
    grant: Option<&str>,
) -> Response {
    let mut e = AuditEvent::new(EventKind::Deny, app.0.clock.now(), Decision::Deny);
    e.client = caller.claimed;
    e.subject_issuer = caller.subject_issuer;
    e.subject = caller.subject.map(|s| s.chars().take(256).collect());
    e.identity = caller.identity;
    e.actor = caller.actor;
    e.policies = caller.policies;
    e.grant = grant.map(|g| g.chars().take(64).collect());
    e.source = src;
    e.reason = Some(d.reason().to_string());
    tracing::info!(
        endpoint,
        reason = d.reason(),
        client = e.client.as_deref().unwrap_or("-"),
        "request denied"
    );
    metrics::counter!("mayfly_denials_total", "endpoint" => endpoint, "reason" => d.reason())
        .increment(1);
    let recorded = |d: &Denial| {
        matches!(
            d,
            Denial::ReplayedJti | Denial::SubjectReplayed | Denial::ActorReplayed
        )
    };
    if !(recorded(&d) || matches!(&d, Denial::InvalidGrant(inner) if recorded(inner))) {
        // A replay was already recorded atomically with the jti check.
        if let Err(err) = app.0.audit.commit(Pending::event(e)).await {
            tracing::error!(error = %err, "cannot record a denial");
            return denial_response(&Denial::Unavailable);
        }
    }
    denial_response(&d)
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn observe(endpoint: &'static str, started: Instant) {
    metrics::histogram!("mayfly_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
}

/// Commit `event` atomically with consuming the caller's assertion jti (and, for revocation,
/// recording the revoked token). A jti seen before turns into `ReplayedJti`.
async fn commit_consuming(
    app: &App,
    event: AuditEvent,
    auth: AuthenticatedClient,
    revoke: Option<(String, String, i64)>,
) -> Result<(), Denial> {
    let mut p = consuming(app, event, Some(auth));
    p.revoke = revoke;
    commit_event(app, p).await
}

/// `event` with the consumption of the caller's assertion jti, if a client authenticated.
fn consuming(app: &App, event: AuditEvent, auth: Option<AuthenticatedClient>) -> Pending {
    let skew = app.0.settings.clock_skew;
    let mut p = Pending::event(event);
    p.consume_jti = auth.map(|a| (a.client_id, a.jti, a.assertion_exp + skew));
    p
}

/// Commit an event atomically with what it consumes, revokes and links (see [`Pending`]); a
/// single-use value seen before turns into its replay denial.
pub(crate) async fn commit_event(app: &App, pending: Pending) -> Result<(), Denial> {
    match app.0.audit.commit(pending).await {
        Ok(CommitOutcome::Committed(_)) => Ok(()),
        Ok(CommitOutcome::Replay(_)) => Err(Denial::ReplayedJti),
        Ok(CommitOutcome::SubjectReplay(_)) => Err(Denial::SubjectReplayed),
        Ok(CommitOutcome::ActorReplay(_)) => Err(Denial::ActorReplayed),
        Err(err) => {
            tracing::error!(error = %err, "audit commit failed; the response is withheld");
            Err(Denial::Unavailable)
        }
    }
}

/// Answer a request: the JSON body with `no-store`, or the recorded denial; and time it.
async fn respond<T: serde::Serialize>(
    app: &App,
    endpoint: &'static str,
    addr: &SocketAddr,
    started: Instant,
    caller: Caller,
    grant: Option<&str>,
    result: Result<T, Denial>,
) -> Response {
    let resp = match result {
        Ok(body) => no_store(axum::Json(body).into_response()),
        Err(d) => deny(app, endpoint, d, caller, source(addr), grant).await,
    };
    observe(endpoint, started);
    resp
}

/// The expires_in, scope, resource and audience parameters.
pub(crate) fn token_params(form: &Form<'_>) -> Result<TokenParams, Denial> {
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
    })
}

/// Sign `grant`, record it (with the single-use values it consumes), and build the answer.
#[allow(clippy::too_many_arguments)] // three call sites; each argument is one piece of the grant's record
pub(crate) async fn issue(
    app: &App,
    grant: Grant,
    grant_type: &'static str,
    mut e: AuditEvent,
    auth: Option<AuthenticatedClient>,
    subject: Option<(String, String, i64)>,
    actor: Option<(String, String, i64)>,
    link_svid: Option<String>,
    parents: Vec<String>,
    now: i64,
) -> Result<TokenResponse, Denial> {
    let jti = mayfly_crypto::random_id().map_err(|_| Denial::Internal)?;
    let minted = mint(&app.0.settings, &grant, &app.keys().current, now, jti)?;
    e.grant = Some(grant_type.into());
    e.audience = Some(grant.audience.clone());
    e.scopes = grant.scopes.clone();
    e.jti = Some(minted.jti.clone());
    e.exp = Some(minted.exp);
    e.policies = grant.policies.clone();
    // Workload identities are unbounded: only registered clients become metric labels.
    let client_label = auth
        .as_ref()
        .map_or_else(|| "-".to_string(), |a| a.client_id.clone());
    // The token leaves only once its event (and each single use) is durable.
    let mut p = consuming(app, e, auth);
    p.consume_subject = subject;
    p.consume_actor = actor;
    p.link_svid = link_svid;
    p.parents = parents;
    commit_event(app, p).await?;
    // debug, not info: the audit log already has one line per token, durably.
    tracing::debug!(client = %grant.client_id, jti = %minted.jti, aud = %grant.audience, kid = %minted.kid, "token issued");
    metrics::counter!("mayfly_tokens_issued_total", "client" => client_label, "grant" => grant_type).increment(1);
    Ok(TokenResponse {
        access_token: minted.token,
        token_type: "Bearer".into(),
        expires_in: grant.ttl as u64,
        scope: (!grant.scopes.is_empty()).then(|| grant.scopes.join(" ")),
        issued_token_type: None,
    })
}

async fn client_credentials(
    app: &App,
    headers: &HeaderMap,
    form: &Form<'_>,
    now: i64,
    addr: &SocketAddr,
    caller: &mut Caller,
) -> Result<TokenResponse, Denial> {
    let (client, auth) = authenticate(app, headers, form, now, caller).await?;
    let params = token_params(form)?;
    let src = source(addr);
    let input = DecideInput {
        principal: Principal {
            kind: PrincipalKind::Client,
            id: &client.id,
            attrs: &[],
        },
        client_id: &client.id,
        authenticated_client: Some(&client.id),
        grant_type: GRANT_CLIENT_CREDENTIALS,
        default_audiences: &client.audiences,
        ttl_cap: client.max_ttl,
        subject_exp: None,
        act: None,
        source: src.as_deref().unwrap_or(""),
        now,
    };
    let grant = decide(
        &app.0.settings,
        &app.0.policies,
        input,
        &params,
        &mut caller.policies,
    )?;
    let mut e = AuditEvent::new(EventKind::Issue, now, Decision::Allow);
    e.client = Some(grant.client_id.clone());
    e.source = src;
    issue(
        app,
        grant,
        GRANT_CLIENT_CREDENTIALS,
        e,
        Some(auth),
        None,
        None,
        None,
        Vec::new(),
        now,
    )
    .await
}

/// `POST /oauth2/token`.
pub(crate) async fn token(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut caller = Caller::default();
    let mut grant_type = None;
    let result = async {
        let body = read_form_body(&app, &parts.headers, body).await?;
        let form = parse_form(&body, &["resource"])?;
        grant_type = form.get("grant_type").map(str::to_string);
        let gt = form
            .get("grant_type")
            .ok_or(Denial::MissingParameter("grant_type"))?;
        let now = app.0.clock.now();
        match gt {
            GRANT_CLIENT_CREDENTIALS => {
                client_credentials(&app, &parts.headers, &form, now, &addr, &mut caller).await
            }
            GRANT_TOKEN_EXCHANGE => {
                crate::exchange::token_exchange(
                    &app,
                    &parts.headers,
                    &form,
                    now,
                    &addr,
                    &mut caller,
                )
                .await
            }
            // RFC 7523 §3.1: a bad assertion grant is `invalid_grant`.
            GRANT_JWT_BEARER => {
                crate::exchange::jwt_bearer(&app, &parts.headers, &form, now, &addr, &mut caller)
                    .await
                    .map_err(Denial::for_assertion_grant)
            }
            other => Err(Denial::UnsupportedGrantType(
                other.chars().take(64).collect(),
            )),
        }
    }
    .await;
    respond(
        &app,
        "token",
        &addr,
        started,
        caller,
        grant_type.as_deref(),
        result,
    )
    .await
}

/// What introspection and revocation share: an authenticated caller and the token it names
/// (with its claims when it is a live token of ours).
struct TokenQuery {
    client: Arc<Client>,
    auth: AuthenticatedClient,
    claims: Option<AccessTokenClaims>,
    now: i64,
}

async fn token_query(
    app: &App,
    parts: &Parts,
    body: Body,
    caller: &mut Caller,
) -> Result<TokenQuery, Denial> {
    let body = read_form_body(app, &parts.headers, body).await?;
    let form = parse_form(&body, &[])?;
    let now = app.0.clock.now();
    query_form(app, parts, &form, now, caller).await
}

async fn query_form(
    app: &App,
    parts: &Parts,
    form: &Form<'_>,
    now: i64,
    caller: &mut Caller,
) -> Result<TokenQuery, Denial> {
    let (client, auth) = authenticate(app, &parts.headers, form, now, caller).await?;
    let token = form.get("token").ok_or(Denial::MissingParameter("token"))?;
    let claims = check_access_token(&app.0.settings, &app.keys().verifying, token, now);
    Ok(TokenQuery {
        client,
        auth,
        claims,
        now,
    })
}

/// `POST /oauth2/introspect` (RFC 7662).
pub(crate) async fn introspect(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut caller = Caller::default();
    let result = async {
        let TokenQuery {
            client,
            auth,
            claims,
            now,
        } = token_query(&app, &parts, body, &mut caller).await?;
        // A client sees its own tokens, and tokens for the audiences it was granted introspection
        // of: `introspect` in its config, or, for the `[proxy]` client of this config, its
        // routes' audiences. Others are inactive (RFC 7662 §2.2: reveal nothing).
        let granted = |aud: &str| {
            let cfg = &app.0.config;
            cfg.clients
                .iter()
                .find(|c| c.id == client.id)
                .is_some_and(|c| c.introspect.iter().any(|a| a == aud))
                || (cfg.proxy.client_id.as_deref() == Some(client.id.as_str())
                    && cfg.proxy.routes.iter().any(|r| r.audience == aud))
        };
        let hidden = claims
            .as_ref()
            .is_some_and(|c| c.client_id != client.id && !granted(&c.aud));
        let visible = claims.filter(|_| !hidden);
        let active = match &visible {
            Some(c) => !app
                .0
                .store
                .is_revoked(&c.jti)
                .await
                .map_err(|_| Denial::Unavailable)?,
            None => false,
        };
        let mut e = AuditEvent::new(EventKind::Introspect, now, Decision::Allow);
        e.client = Some(client.id.clone());
        e.jti = visible.as_ref().map(|c| c.jti.clone());
        e.source = source(&addr);
        e.reason = Some(
            if hidden {
                "introspection_not_granted"
            } else if active {
                "active"
            } else {
                "inactive"
            }
            .into(),
        );
        commit_consuming(&app, e, auth, None).await?;
        Ok(match visible {
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
        })
    }
    .await;
    respond(&app, "introspect", &addr, started, caller, None, result).await
}

/// `POST /oauth2/revoke` (RFC 7009).
pub(crate) async fn revoke(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut caller = Caller::default();
    let result = async {
        let body = read_form_body(&app, &parts.headers, body).await?;
        let form = parse_form(&body, &[])?;
        let now = app.0.clock.now();
        if form.get("client_assertion").is_none()
            && form.get("client_assertion_type").is_none()
            && !parts.headers.contains_key(header::AUTHORIZATION)
        {
            return revoke_by_bearer(&app, &form, now, &addr, &mut caller).await;
        }
        let TokenQuery {
            client,
            auth,
            claims,
            now,
        } = query_form(&app, &parts, &form, now, &mut caller).await?;
        // Invalid, expired or foreign tokens: nothing to do, and RFC 7009 §2.2 says answer 200.
        if claims.as_ref().is_some_and(|c| c.client_id != client.id) {
            return Err(Denial::NotTokenOwner);
        }
        let mut e = AuditEvent::new(EventKind::Revoke, now, Decision::Allow);
        e.client = Some(client.id.clone());
        e.jti = claims.as_ref().map(|c| c.jti.clone());
        e.exp = claims.as_ref().map(|c| c.exp);
        e.source = source(&addr);
        e.reason = Some(
            if claims.is_some() {
                "revoked"
            } else {
                "not_a_live_token"
            }
            .into(),
        );
        let revoke = claims.map(|c| (c.jti, c.client_id, c.exp));
        commit_consuming(&app, e, auth, revoke).await?;
        Ok(serde_json::json!({}))
    }
    .await;
    respond(&app, "revoke", &addr, started, caller, None, result).await
}

/// A revocation request without client authentication: the token is its own authorization
/// (RFC 7009 §2.1) when no registered client owns it, as for a token exchanged by a workload
/// that authenticated with its subject token alone. Anything else needs the owning client.
async fn revoke_by_bearer(
    app: &App,
    form: &Form<'_>,
    now: i64,
    addr: &SocketAddr,
    caller: &mut Caller,
) -> Result<serde_json::Value, Denial> {
    let token = form.get("token").ok_or(Denial::MissingParameter("token"))?;
    let Some(c) = check_access_token(&app.0.settings, &app.keys().verifying, token, now) else {
        return Err(Denial::MissingClientAuth);
    };
    caller.identity = Some(c.sub.clone());
    if app
        .0
        .clients
        .get_or_reload(&c.client_id, &app.0.store, now)
        .await
        .is_some()
    {
        // A registered client's token: only that client, authenticated, may revoke it.
        caller.claimed = Some(c.client_id.chars().take(MAX_CLAIMED_ID).collect());
        return Err(Denial::MissingClientAuth);
    }
    let mut e = AuditEvent::new(EventKind::Revoke, now, Decision::Allow);
    e.identity = Some(c.sub.clone());
    e.jti = Some(c.jti.clone());
    e.exp = Some(c.exp);
    e.source = source(addr);
    e.reason = Some("revoked_by_bearer".into());
    let revoke = Some((c.jti, c.client_id, c.exp));
    let mut p = Pending::event(e);
    p.revoke = revoke;
    commit_event(app, p).await?;
    Ok(serde_json::json!({}))
}

/// Server metadata (RFC 8414) and OpenID configuration.
pub(crate) async fn metadata(State(app): State<App>) -> Response {
    let mut r = (StatusCode::OK, app.0.metadata.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// The JWK Set: current, next and retired-but-live keys.
pub(crate) async fn jwks(State(app): State<App>) -> Response {
    let keys = app.keys();
    let mut r = (StatusCode::OK, keys.jwks.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    let cc = format!("public, max-age={}", app.0.schedule.jwks_max_age());
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// The trust domain's bundle in the SPIFFE trust bundle format (for federation with other
/// trust domains, SPIFFE Trust Domain and Bundle §4).
pub(crate) async fn spiffe_bundle(State(app): State<App>) -> Response {
    let snap = app.0.spiffe.snapshot();
    let mut r = (StatusCode::OK, snap.bundle_doc.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let cc = format!("public, max-age={}", snap.bundle.refresh_hint);
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// Liveness.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
pub(crate) async fn readyz(State(app): State<App>) -> Response {
    if app.0.store.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
    }
}

/// Prometheus text format.
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    match &app.0.prometheus {
        Some(h) => {
            let mut r = h.render().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response(),
    }
}

/// Anything else.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not_found"})),
    )
        .into_response()
}

/// Per-request deadline: a request that takes longer is answered 503 and dropped.
pub(crate) async fn deadline(State(app): State<App>, req: Request, next: Next) -> Response {
    let limit = app.0.config.server.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => denial_response(&Denial::Unavailable),
    }
}
