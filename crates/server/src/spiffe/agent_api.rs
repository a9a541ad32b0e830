//! The agent API (`/agent/v1/*`, JSON over TLS): node attestation, the agent's SVID renewal,
//! its entries and bundle, SVID signing for its workloads, and workload-exit revocation.
//!
//! Every route but `attest` needs the agent's current X.509-SVID as the TLS client
//! certificate; an entry is only served to the agent that is its parent, and an SVID only
//! when the policy set allows it (`mayfly_sts::svid`; each entry's generated permit allows
//! it unless a `forbid` refuses it).

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use mayfly_proto::spiffe::{
    AgentAttestation, AgentSvidResponse, AttestRequest, EntryWire, MintJwtRequest, MintJwtResponse,
    RenewRequest, SignX509Request, SignX509Response, SyncResponse, WorkloadExitedRequest,
    WorkloadExitedResponse,
};
use mayfly_store::{CommitOutcome, JoinTokenOutcome, StoredAgent, StoredEntry};
use mayfly_sts::svid::{SvidGrant, SvidKind, SvidRequest};
use mayfly_sts::{AuditEvent, Decision, Denial, EventKind, Principal, PrincipalKind};

use super::tls::Peer;
use crate::state::App;

/// Largest agent API request body (CSRs and lists of jtis are small).
const MAX_BODY: usize = 64 * 1024;
/// Most JWT-SVID jtis one workload-exit report may carry.
const MAX_EXIT_JTIS: usize = 4096;

/// Refusals of the agent API, mapped to HTTP in [`ApiError::into_response`] only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("this route needs the agent's X.509-SVID as the TLS client certificate")]
    NoSvid,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("attestation failed: {0}")]
    Attestation(&'static str),
    #[error("the store is unavailable; retry")]
    Unavailable,
    #[error("signing failed")]
    Internal,
    /// A refusal of the issuance pipeline, answered as the token endpoint answers it.
    #[error(transparent)]
    Denied(Denial),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Denied(d) = &self {
            return crate::error::denial_response(d);
        }
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::NoSvid => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "access_denied"),
            ApiError::Attestation(_) => (StatusCode::FORBIDDEN, "attestation_failed"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            ApiError::Internal | ApiError::Denied(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
            }
        };
        let body = serde_json::json!({ "error": code, "error_description": self.to_string() });
        (status, Json(body)).into_response()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "agent API: store failure");
    ApiError::Unavailable
}

#[derive(Clone)]
struct Ctx {
    app: App,
    addr: SocketAddr,
}

/// The router for one connection (the peer's identity is fixed for the connection).
pub(crate) fn router(app: App, peer: Peer, addr: SocketAddr) -> Router {
    Router::new()
        .route("/agent/v1/attest", post(attest))
        .route("/agent/v1/renew", post(renew))
        .route("/agent/v1/sync", get(sync))
        .route("/agent/v1/svid/x509", post(svid_x509))
        .route("/agent/v1/svid/jwt", post(svid_jwt))
        .route("/agent/v1/workload-exited", post(workload_exited))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(Extension(peer))
        .with_state(Ctx { app, addr })
}

fn decode_b64(field: &str, v: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .map_err(|_| ApiError::BadRequest(format!("`{field}` is not base64")))
}

fn chain_b64(chain: &[Vec<u8>]) -> Vec<String> {
    chain.iter().map(|c| super::b64(c)).collect()
}

async fn audit(ctx: &Ctx, e: AuditEvent) -> Result<(), ApiError> {
    ctx.app
        .audit()
        .commit(mayfly_store::Pending::event(e))
        .await
        .map(|_| ())
        .map_err(unavailable)
}

fn event(ctx: &Ctx, kind: EventKind, decision: Decision, now: i64) -> AuditEvent {
    let mut e = AuditEvent::new(kind, now, decision);
    e.source = Some(ctx.addr.ip().to_string());
    e
}

/// The calling agent: its SVID must be the one the server last issued to it.
async fn agent(ctx: &Ctx, peer: &Peer) -> Result<String, ApiError> {
    let (id, serial) = peer.svid.as_ref().ok_or(ApiError::NoSvid)?;
    let sp = &ctx.app.spiffe();
    if !id.starts_with(&super::agent_prefix(&sp.p.trust_domain)) {
        return Err(ApiError::Forbidden(
            "the client certificate is not an agent's SVID",
        ));
    }
    let stored = ctx.app.store().get_agent(id).await.map_err(unavailable)?;
    match stored {
        // A superseded SVID (a copy of the agent's old key) cannot act for the agent.
        Some(a) if &a.serial == serial => Ok(id.clone()),
        Some(_) => Err(ApiError::Forbidden(
            "this SVID has been superseded; the agent must use its latest SVID or re-attest",
        )),
        // Never attested, or evicted by an operator (`mayfly agent evict`).
        None => Err(ApiError::Forbidden(
            "unknown or evicted agent; attest again",
        )),
    }
}

/// Sign the agent's own SVID (not yet recorded: see [`record_agent`]).
fn sign_agent_svid(
    ctx: &Ctx,
    agent_id: &str,
    csr: &str,
    now: i64,
) -> Result<(AgentSvidResponse, String), ApiError> {
    let sp = &ctx.app.spiffe();
    let csr = decode_b64("csr", csr)?;
    let ttl = sp.p.cfg.x509_svid_ttl.as_secs() as i64;
    let (chain, expires_at) = sp
        .sign_x509(&csr, agent_id, &[], ttl, now)
        .map_err(|e| ApiError::BadRequest(format!("the CSR was refused: {e}")))?;
    let serial = chain
        .first()
        .and_then(|leaf| mayfly_crypto::x509::SvidInfo::parse(leaf).ok())
        .map(|i| i.serial)
        .ok_or(ApiError::Internal)?;
    let resp = AgentSvidResponse {
        spiffe_id: agent_id.to_string(),
        chain: chain_b64(&chain),
        expires_at,
        bundle: sp.snapshot().bundle.clone(),
    };
    Ok((resp, serial))
}

/// Record the agent's SVID: from now on only this one authenticates it.
async fn record_agent(
    ctx: &Ctx,
    resp: &AgentSvidResponse,
    attestation: &str,
    serial: String,
    now: i64,
) -> Result<(), ApiError> {
    ctx.app
        .store()
        .upsert_agent(&StoredAgent {
            spiffe_id: resp.spiffe_id.clone(),
            attestation: attestation.to_string(),
            serial,
            attested_at: now,
            expires_at: resp.expires_at,
        })
        .await
        .map_err(unavailable)
}

/// Parse `<id>.<secret>`; the id is 16 lowercase hex digits.
pub(crate) fn split_join_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (ok_id && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}

async fn attest(
    State(ctx): State<Ctx>,
    Json(req): Json<AttestRequest>,
) -> Result<Json<AgentSvidResponse>, ApiError> {
    let now = ctx.app.clock().now();
    let sp = &ctx.app.spiffe();
    let td = sp.p.trust_domain.clone();
    let mut consume = None;
    let (agent_id, how) = match &req.attestation {
        AgentAttestation::JoinToken { token } => {
            let Some((id, secret)) = split_join_token(token) else {
                return refuse(&ctx, now, None, "join token is malformed").await;
            };
            let presented = super::join_secret_hash(secret);
            let (outcome, fixed_id) = ctx
                .app
                .store()
                .consume_join_token(
                    id,
                    |stored| mayfly_crypto::ct_eq(stored.as_bytes(), presented.as_bytes()),
                    now,
                )
                .await
                .map_err(unavailable)?;
            let agent_id =
                fixed_id.unwrap_or_else(|| format!("{}join/{id}", super::agent_prefix(&td)));
            match outcome {
                JoinTokenOutcome::Accepted => {}
                JoinTokenOutcome::Unknown => {
                    return refuse(&ctx, now, Some(id), "join token is unknown").await;
                }
                JoinTokenOutcome::Expired => {
                    return refuse(&ctx, now, Some(id), "join token has expired").await;
                }
                JoinTokenOutcome::AlreadyUsed => {
                    return refuse(&ctx, now, Some(id), "join token has already been used").await;
                }
            }
            (agent_id, "join_token".to_string())
        }
        AgentAttestation::Platform { issuer, token } => {
            let node = match super::node_attest::verify(&ctx.app, issuer, token, now).await {
                Ok(n) => n,
                Err(refusal) => {
                    // Audited with the machine-readable reason; the agent is told no more.
                    let mut e = event(&ctx, EventKind::AgentAttest, Decision::Deny, now);
                    e.reason = Some(refusal.reason());
                    e.subject_issuer = Some(issuer.chars().take(64).collect());
                    audit(&ctx, e).await?;
                    return Err(ApiError::Attestation(refusal.message()));
                }
            };
            // Single use: consumed atomically with the attestation's audit event, in the same
            // namespace as the issuer's one-time subject tokens, until the token expires.
            consume = Some((
                issuer.clone(),
                node.jti,
                node.exp.saturating_add(ctx.app.settings().clock_skew),
            ));
            (node.agent_id, format!("platform:{issuer}"))
        }
    };
    let (resp, serial) = sign_agent_svid(&ctx, &agent_id, &req.csr, now)?;
    let mut e = event(&ctx, EventKind::AgentAttest, Decision::Allow, now);
    e.identity = Some(agent_id.clone());
    e.reason = Some(how.clone());
    e.exp = Some(resp.expires_at);
    // The audit commit decides single use before the agent is recorded: a replayed platform
    // token never replaces the SVID of the agent that used it first.
    let mut pending = mayfly_store::Pending::event(e);
    pending.consume_subject = consume;
    match ctx.app.audit().commit(pending).await.map_err(unavailable)? {
        CommitOutcome::Committed(_) => {}
        CommitOutcome::SubjectReplay(_)
        | CommitOutcome::Replay(_)
        | CommitOutcome::ActorReplay(_) => {
            tracing::warn!(agent = %agent_id, "replayed platform token refused");
            return Err(ApiError::Attestation(
                "the platform token has already been used",
            ));
        }
    }
    record_agent(&ctx, &resp, &how, serial, now).await?;
    tracing::info!(agent = %agent_id, "agent attested");
    Ok(Json(resp))
}

async fn refuse<T>(
    ctx: &Ctx,
    now: i64,
    token_id: Option<&str>,
    why: &'static str,
) -> Result<T, ApiError> {
    let mut e = event(ctx, EventKind::AgentAttest, Decision::Deny, now);
    e.reason = Some(why.replace(' ', "_"));
    e.subject = token_id.map(|t| format!("join token {t}"));
    audit(ctx, e).await?;
    Err(ApiError::Attestation(why))
}

async fn renew(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<RenewRequest>,
) -> Result<Json<AgentSvidResponse>, ApiError> {
    let now = ctx.app.clock().now();
    let agent_id = agent(&ctx, &peer).await?;
    let how = ctx
        .app
        .store()
        .get_agent(&agent_id)
        .await
        .map_err(unavailable)?
        .map(|a| a.attestation)
        .unwrap_or_default();
    let (resp, serial) = sign_agent_svid(&ctx, &agent_id, &req.csr, now)?;
    record_agent(&ctx, &resp, &how, serial, now).await?;
    let mut e = event(&ctx, EventKind::SvidIssue, Decision::Allow, now);
    e.identity = Some(agent_id);
    e.reason = Some("agent_renewal".into());
    e.exp = Some(resp.expires_at);
    audit(&ctx, e).await?;
    Ok(Json(resp))
}

fn entry_wire(e: StoredEntry) -> EntryWire {
    EntryWire {
        id: e.id,
        spiffe_id: e.spiffe_id,
        selectors: e.selectors,
        x509_ttl: e.x509_ttl.max(0) as u64,
        jwt_ttl: e.jwt_ttl.max(0) as u64,
        dns_names: e.dns_names,
    }
}

async fn sync(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<SyncResponse>, ApiError> {
    let agent_id = agent(&ctx, &peer).await?;
    let entries = ctx
        .app
        .store()
        .list_entries(Some(&agent_id))
        .await
        .map_err(unavailable)?;
    Ok(Json(SyncResponse {
        entries: entries.into_iter().map(entry_wire).collect(),
        bundle: ctx.app.spiffe().snapshot().bundle.clone(),
    }))
}

/// The entry `id`, if the calling agent is its parent.
async fn own_entry(ctx: &Ctx, agent_id: &str, id: &str) -> Result<StoredEntry, ApiError> {
    let entries = ctx
        .app
        .store()
        .list_entries(Some(agent_id))
        .await
        .map_err(unavailable)?;
    entries
        .into_iter()
        .find(|e| e.id == id)
        .ok_or(ApiError::Forbidden("no such entry under this agent"))
}

/// May the entry's workload have this SVID? Asks the policy set (after a reload if the set in
/// force predates the entry); a refusal is audited as a `deny` naming the workload, the agent
/// and the policies that refused, and answered `access_denied` (403).
async fn decide_svid(
    ctx: &Ctx,
    agent_id: &str,
    entry: &StoredEntry,
    kind: SvidKind,
    audiences: &[String],
    now: i64,
) -> Result<SvidGrant, ApiError> {
    let app = &ctx.app;
    if !app.policies().knows_entry(&entry.id) {
        // Added since the last tick (here or through another replica).
        app.reload_policy_if_changed().await;
    }
    let td = &app.spiffe().p.trust_domain;
    let attrs = [
        ("issuer".to_string(), app.settings().issuer.clone()),
        ("subject".to_string(), entry.spiffe_id.clone()),
        ("trust_domain".to_string(), td.clone()),
    ];
    let trust_domain_id = format!("spiffe://{td}");
    let source = ctx.addr.ip().to_string();
    let req = SvidRequest {
        kind,
        workload: Principal {
            kind: PrincipalKind::Workload,
            id: &entry.spiffe_id,
            attrs: &attrs,
        },
        agent: agent_id,
        trust_domain_id: &trust_domain_id,
        audiences,
        ttl: match kind {
            SvidKind::X509 => entry.x509_ttl,
            SvidKind::Jwt => entry.jwt_ttl,
        },
        source: &source,
        now,
    };
    let mut trace = Vec::new();
    match mayfly_sts::svid::decide_svid(app.policies(), &req, &mut trace) {
        Ok(grant) => Ok(grant),
        Err(d) => {
            let mut e = event(ctx, EventKind::Deny, Decision::Deny, now);
            e.client = Some(agent_id.to_string());
            e.identity = Some(entry.spiffe_id.clone());
            e.grant = Some(kind.action().to_string());
            e.audience = Some(match kind {
                SvidKind::X509 => trust_domain_id,
                SvidKind::Jwt => audiences.join(" "),
            });
            e.policies = trace;
            e.reason = Some(d.reason().to_string());
            audit(ctx, e).await?;
            tracing::info!(agent = %agent_id, spiffe_id = %entry.spiffe_id, action = kind.action(), "SVID refused by policy");
            Err(ApiError::Denied(d))
        }
    }
}

async fn svid_x509(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<SignX509Request>,
) -> Result<Json<SignX509Response>, ApiError> {
    let now = ctx.app.clock().now();
    let agent_id = agent(&ctx, &peer).await?;
    let entry = own_entry(&ctx, &agent_id, &req.entry_id).await?;
    let csr = decode_b64("csr", &req.csr)?;
    let grant = decide_svid(&ctx, &agent_id, &entry, SvidKind::X509, &[], now).await?;
    let (chain, expires_at) = ctx
        .app
        .spiffe()
        .sign_x509(&csr, &entry.spiffe_id, &entry.dns_names, grant.ttl, now)
        .map_err(|e| ApiError::BadRequest(format!("the CSR was refused: {e}")))?;
    let mut e = event(&ctx, EventKind::SvidIssue, Decision::Allow, now);
    e.client = Some(agent_id);
    e.identity = Some(entry.spiffe_id);
    e.policies = grant.policies;
    e.reason = Some("x509_svid".into());
    e.jti = chain
        .first()
        .and_then(|l| mayfly_crypto::x509::SvidInfo::parse(l).ok())
        .map(|i| format!("serial:{}", i.serial));
    e.exp = Some(expires_at);
    audit(&ctx, e).await?;
    Ok(Json(SignX509Response {
        chain: chain_b64(&chain),
        expires_at,
    }))
}

async fn svid_jwt(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<MintJwtRequest>,
) -> Result<Json<MintJwtResponse>, ApiError> {
    let now = ctx.app.clock().now();
    let agent_id = agent(&ctx, &peer).await?;
    if req.audience.is_empty() || req.audience.len() > 16 {
        return Err(ApiError::BadRequest(
            "`audience` must hold 1 to 16 values".into(),
        ));
    }
    if req.audience.iter().any(|a| a.is_empty() || a.len() > 512) {
        return Err(ApiError::BadRequest(
            "each audience must be 1 to 512 characters".into(),
        ));
    }
    let entry = own_entry(&ctx, &agent_id, &req.entry_id).await?;
    let grant = decide_svid(&ctx, &agent_id, &entry, SvidKind::Jwt, &req.audience, now).await?;
    // A JWT-SVID has a status-list slot like an access token: its bit is set when its
    // workload exits.
    let slot = mayfly_sts::Lifecycle::status_slot(&ctx.app)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let (token, jti, expires_at) = ctx
        .app
        .spiffe()
        .mint_jwt(&entry.spiffe_id, &req.audience, grant.ttl, now, Some(slot))
        .map_err(|_| ApiError::Internal)?;
    // Only the agent that minted a JWT-SVID may later report its workload's exit.
    ctx.app
        .store()
        .record_svid_minter(&jti, &agent_id, expires_at)
        .await
        .map_err(unavailable)?;
    ctx.app
        .store()
        .record_issued_svid(
            &jti,
            &entry.spiffe_id,
            Some(crate::ports::store_slot(slot)),
            now,
            expires_at,
        )
        .await
        .map_err(unavailable)?;
    let mut e = event(&ctx, EventKind::SvidIssue, Decision::Allow, now);
    e.client = Some(agent_id);
    e.identity = Some(entry.spiffe_id);
    e.audience = Some(req.audience.join(" "));
    e.policies = grant.policies;
    e.reason = Some("jwt_svid".into());
    e.jti = Some(jti.clone());
    e.exp = Some(expires_at);
    audit(&ctx, e).await?;
    Ok(Json(MintJwtResponse {
        token,
        jti,
        expires_at,
    }))
}

async fn workload_exited(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<WorkloadExitedRequest>,
) -> Result<Json<WorkloadExitedResponse>, ApiError> {
    let now = ctx.app.clock().now();
    let agent_id = agent(&ctx, &peer).await?;
    if req.jwt_svid_jtis.len() > MAX_EXIT_JTIS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_EXIT_JTIS} jtis per report"
        )));
    }
    let keep_until = now + ctx.app.spiffe().jwt_max_ttl();
    let r = ctx
        .app
        .store()
        .revoke_own_svids(&agent_id, &req.jwt_svid_jtis, now, keep_until)
        .await
        .map_err(unavailable)?;
    let mut e = event(&ctx, EventKind::WorkloadExit, Decision::Allow, now);
    e.client = Some(agent_id.clone());
    e.identity = req.spiffe_ids.first().cloned();
    let mut reason = format!(
        "pid {} exited: {} JWT-SVIDs and {} tokens revoked",
        req.pid,
        r.svids,
        r.tokens.len()
    );
    if r.ignored > 0 {
        reason.push_str(&format!(
            ", {} ignored (not minted by this agent)",
            r.ignored
        ));
    }
    e.reason = Some(reason);
    audit(&ctx, e).await?;
    metrics::counter!("mayfly_revocations_total", "path" => "workload_exit")
        .increment(r.svids as u64 + r.tokens.len() as u64);
    tracing::info!(agent = %agent_id, pid = req.pid, svids = r.svids, ignored = r.ignored, tokens = r.tokens.len(), "workload exited; revoked what it held");
    Ok(Json(WorkloadExitedResponse {
        revoked_tokens: r.tokens.len() as u64,
    }))
}
