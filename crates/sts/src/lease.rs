//! Leases and status-list slots as the engine sees them: the `lease` form parameter, the CI run
//! a CI identity token belongs to (and the deterministic id of its lease), and the lease link
//! and status slot an issued token's record carries. The server turns these into the store's
//! types in one place (`ports.rs`).

use serde_json::Value;

use crate::Denial;
use crate::ports::{Sts, World};

/// The form parameter that opens or names a lease.
pub const LEASE_PARAM: &str = "lease";

/// Longest lease id accepted in a request.
const MAX_LEASE_ID: usize = 128;

/// A token's place in a status list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSlot {
    /// The list's number (its URI is `{issuer}/statuslists/{list}`).
    pub list: i64,
    /// The token's index in it.
    pub idx: i64,
}

/// The URI of status list `list` of `issuer`.
pub fn status_list_uri(issuer: &str, list: i64) -> String {
    format!("{issuer}/statuslists/{list}")
}

/// The `status` claim of a token in `slot` (draft-ietf-oauth-status-list).
pub fn status_claim(issuer: &str, slot: StatusSlot) -> Value {
    serde_json::json!({"status_list": {"idx": slot.idx, "uri": status_list_uri(issuer, slot.list)}})
}

/// The CI platform whose identity tokens tie exchanged tokens to a job's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiProvider {
    /// GitHub Actions (`preset = "github-actions"`).
    GitHub,
    /// GitLab CI (`preset = "gitlab-ci"`).
    GitLab,
}

impl CiProvider {
    /// The provider of an issuer preset, if it is a CI platform's.
    pub fn from_preset(preset: &str) -> Option<Self> {
        match preset {
            "github-actions" => Some(Self::GitHub),
            "gitlab-ci" => Some(Self::GitLab),
            _ => None,
        }
    }

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
        }
    }
}

/// The CI run (and job) an identity token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiRun {
    /// The platform.
    pub provider: CiProvider,
    /// The repository (`owner/name`) or project path.
    pub project: String,
    /// GitHub `run_id`, GitLab `pipeline_id`.
    pub run: String,
    /// GitHub `run_attempt`.
    pub attempt: Option<String>,
    /// The job id, where the token carries one.
    pub job: Option<String>,
}

/// A claim as text: CI platforms send ids as strings, some as numbers.
fn text(claims: &Value, name: &str) -> Option<String> {
    let s = match claims.get(name)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty() && s.len() <= 256).then_some(s)
}

impl CiRun {
    /// The run a verified identity token of `provider` names; `None` when it names none
    /// (the token is then under no CI lease).
    ///
    /// GitHub's OIDC token carries `repository`, `run_id` and `run_attempt`, and
    /// `check_run_id`: "The check run ID of the current job" (GitHub Docs, "OpenID Connect
    /// reference", custom claims); a `workflow_job` webhook's `workflow_job.id` is that id.
    /// GitLab's ID token carries `project_path`, `pipeline_id` and `job_id`.
    pub fn from_claims(provider: CiProvider, claims: &Value) -> Option<Self> {
        let (project, run, attempt, job) = match provider {
            CiProvider::GitHub => (
                text(claims, "repository")?,
                text(claims, "run_id")?,
                text(claims, "run_attempt"),
                text(claims, "check_run_id"),
            ),
            CiProvider::GitLab => (
                text(claims, "project_path")?,
                text(claims, "pipeline_id")?,
                None,
                text(claims, "job_id"),
            ),
        };
        Some(Self {
            provider,
            project,
            run,
            attempt,
            job,
        })
    }

    /// The id of this job's lease: `ci-` and the first 32 hex digits of SHA-256 over
    /// "provider\nproject\nrun\nattempt\njob" (absent parts empty), so every token of the job
    /// shares it, on every replica.
    pub fn lease_id(&self) -> String {
        let input = format!(
            "{}\n{}\n{}\n{}\n{}",
            self.provider.as_str(),
            self.project,
            self.run,
            self.attempt.as_deref().unwrap_or(""),
            self.job.as_deref().unwrap_or("")
        );
        let digest = mayfly_crypto::sha256(input.as_bytes());
        let mut id = String::with_capacity(35);
        id.push_str("ci-");
        for b in &digest[..16] {
            id.push_str(&format!("{b:02x}"));
        }
        id
    }
}

/// Lease lifetimes, from `[leases]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Heartbeat grace of a `lease=new` lease, seconds.
    pub grace: i64,
    /// Hard end of a `lease=new` lease, seconds after its opening.
    pub max_lifetime: i64,
    /// Hard end of a CI job's lease, seconds after its opening.
    pub ci_max_lifetime: i64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            grace: 30,
            max_lifetime: 24 * 3600,
            ci_max_lifetime: 6 * 3600,
        }
    }
}

/// A stored lease, as far as issuing under it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// Its id.
    pub id: String,
    /// The principal that opened it.
    pub owner: String,
    /// Heartbeat grace in seconds, if heartbeated.
    pub grace: Option<i64>,
    /// Last heartbeat.
    pub heartbeat_at: i64,
    /// Hard end.
    pub expires_at: i64,
    /// Whether it has ended.
    pub ended: bool,
}

impl LeaseView {
    /// Whether it has ended, or is past its hard end or heartbeat grace at `now` (the reaper
    /// has not got to it yet).
    pub fn over(&self, now: i64) -> bool {
        self.ended
            || self.expires_at <= now
            || self.grace.is_some_and(|g| self.heartbeat_at + g < now)
    }
}

/// A lease to open together with the token that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLease {
    /// Its id.
    pub id: String,
    /// The principal that opens it.
    pub owner: String,
    /// The client that opens it.
    pub client_id: String,
    /// Heartbeat grace in seconds; `None` for a CI lease (it ends with its job).
    pub grace: Option<i64>,
    /// Hard end.
    pub expires_at: i64,
    /// The CI run, for a CI lease.
    pub ci: Option<CiRun>,
}

/// How an issued token is tied to a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLink {
    /// Under this existing lease.
    Existing(String),
    /// Opens this lease (a CI lease that exists already is joined).
    Open(NewLease),
}

impl LeaseLink {
    /// The lease's id.
    pub fn id(&self) -> &str {
        match self {
            Self::Existing(id) => id,
            Self::Open(l) => &l.id,
        }
    }

    /// The metric label of a lease this token opens (`grant` or `ci`), if it opens one.
    pub fn opened_kind(&self) -> Option<&'static str> {
        match self {
            Self::Existing(_) => None,
            Self::Open(l) if l.ci.is_some() => Some("ci"),
            Self::Open(_) => Some("grant"),
        }
    }
}

/// What the `lease` parameter asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRequest {
    /// `lease=new`: open a lease.
    New,
    /// `lease=<id>`: issue under this open lease.
    Existing(String),
}

/// Parse the `lease` parameter.
pub fn lease_param(value: Option<&str>) -> Result<Option<LeaseRequest>, Denial> {
    let Some(v) = value else { return Ok(None) };
    if v == "new" {
        return Ok(Some(LeaseRequest::New));
    }
    if v.is_empty()
        || v.len() > MAX_LEASE_ID
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Denial::InvalidParameter(
            LEASE_PARAM,
            "must be `new` or a lease id".into(),
        ));
    }
    Ok(Some(LeaseRequest::Existing(v.to_string())))
}

/// The lease a token of `principal` (client `client_id`) is issued under, and the lease's hard
/// end (the token never outlives it); `None` when it is under none.
///
/// A CI identity token's exchange is under its job's lease unless it asks for a lease of its
/// own (`lease=new`, or one it opened): that is how `mayfly exec` inside a job ends its tokens
/// when its command exits without ending the job's other tokens. Either way, once the job has
/// ended nothing more is issued for it, and no lease outlives the job's.
pub(crate) async fn resolve<W: World>(
    sts: &Sts<'_, W>,
    principal: &str,
    client_id: &str,
    ci: Option<&CiRun>,
    req: Option<&LeaseRequest>,
    now: i64,
) -> Result<Option<(LeaseLink, i64)>, Denial> {
    let cfg = sts.world.lease_settings();
    let Some(run) = ci else {
        return own_lease(sts, principal, client_id, req, now, i64::MAX).await;
    };
    let id = run.lease_id();
    let job = sts.world.lease(&id).await?;
    if job.as_ref().is_some_and(|v| v.over(now)) {
        return Err(Denial::CiJobEnded);
    }
    let job_end = job
        .as_ref()
        .map_or(now + cfg.ci_max_lifetime, |v| v.expires_at);
    match req {
        Some(LeaseRequest::Existing(x)) if *x != id => {
            own_lease(sts, principal, client_id, req, now, job_end).await
        }
        Some(LeaseRequest::New) => own_lease(sts, principal, client_id, req, now, job_end).await,
        _ if job.is_some() => Ok(Some((LeaseLink::Existing(id), job_end))),
        _ => {
            let l = NewLease {
                id,
                owner: principal.to_string(),
                client_id: client_id.to_string(),
                grace: None,
                expires_at: job_end,
                ci: Some(run.clone()),
            };
            Ok(Some((LeaseLink::Open(l), job_end)))
        }
    }
}

/// A lease the principal asked for (`lease=new` or one it opened), ending no later than `cap`.
async fn own_lease<W: World>(
    sts: &Sts<'_, W>,
    principal: &str,
    client_id: &str,
    req: Option<&LeaseRequest>,
    now: i64,
    cap: i64,
) -> Result<Option<(LeaseLink, i64)>, Denial> {
    match req {
        None => Ok(None),
        Some(LeaseRequest::New) => {
            let id = format!(
                "l-{}",
                mayfly_crypto::random_id().map_err(|_| Denial::Internal)?
            );
            let expires_at = (now + sts.world.lease_settings().max_lifetime).min(cap);
            let l = NewLease {
                id,
                owner: principal.to_string(),
                client_id: client_id.to_string(),
                grace: Some(sts.world.lease_settings().grace),
                expires_at,
                ci: None,
            };
            Ok(Some((LeaseLink::Open(l), expires_at)))
        }
        Some(LeaseRequest::Existing(id)) => match sts.world.lease(id).await? {
            // Another principal's lease is as unknown as a lease that does not exist.
            Some(v) if v.owner != principal => Err(Denial::UnknownLease),
            Some(v) if v.over(now) => Err(Denial::LeaseEnded(id.chars().take(64).collect())),
            Some(v) => Ok(Some((LeaseLink::Existing(v.id), v.expires_at.min(cap)))),
            None => Err(Denial::UnknownLease),
        },
    }
}
