//! The lifecycle of issued credentials: the registry of every access token and JWT-SVID we
//! issue, leases (a token lives only as long as its lease), status-list index allocation and
//! the revoked bits of each list, operator revocation by selector, and webhook deliveries
//! already acted on.
//!
//! Everything that revokes takes the audit head lock first (as [`crate::Store::revoke_svids`]
//! does), so a token recorded under a lease while the lease ends is either revoked by the end,
//! or sees the lease ended when it is recorded and is revoked at once.

use crate::StoreError;

/// A token's place in a status list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSlot {
    /// The list's number (its URI is `{issuer}/statuslists/{list}`).
    pub list: i64,
    /// The token's index in it.
    pub idx: i64,
}

/// A block of consecutive indexes reserved in one list: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusBlock {
    /// The list's number.
    pub list: i64,
    /// First index of the block.
    pub start: i64,
    /// One past the last index of the block.
    pub end: i64,
}

/// What opened a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// A token request with `lease=new` (`mayfly exec`, a script, any client).
    Grant,
    /// A token exchanged from a CI job's identity token: the lease of that job.
    Ci,
}

impl LeaseKind {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Ci => "ci",
        }
    }
}

/// The CI run (and job, where the platform's token names it) a lease belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiRun {
    /// `github` or `gitlab`.
    pub provider: String,
    /// The repository (`owner/name`) or project path.
    pub project: String,
    /// GitHub `run_id`, GitLab `pipeline_id`.
    pub run: String,
    /// GitHub `run_attempt`.
    pub attempt: Option<String>,
    /// The job id, where the identity token carries it.
    pub job: Option<String>,
}

/// A lease to open together with the token that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLease {
    /// Its id (random, or derived from the CI run so every token of a job shares it).
    pub id: String,
    /// What opened it.
    pub kind: LeaseKind,
    /// The principal that opened it: only it may issue under it.
    pub owner: String,
    /// The client that opened it.
    pub client_id: String,
    /// Heartbeat grace in seconds; `None`: no heartbeat (a CI lease ends by its job's end).
    pub grace: Option<i64>,
    /// Hard end, whatever the heartbeat.
    pub expires_at: i64,
    /// The CI run, for a CI lease.
    pub ci: Option<CiRun>,
}

/// How an issued token is tied to a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLink {
    /// Under this existing lease. If it has ended when the token is recorded, the token is
    /// revoked at once.
    Existing(String),
    /// Opens this lease (a CI lease that already exists is joined, and if it has ended the
    /// token is revoked at once).
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
}

/// A stored lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: String,
    /// What opened it.
    pub kind: LeaseKind,
    /// The principal that opened it.
    pub owner: String,
    /// The client that opened it.
    pub client_id: String,
    /// Heartbeat grace in seconds, if it is heartbeated.
    pub grace: Option<i64>,
    /// Last heartbeat (or its opening).
    pub heartbeat_at: i64,
    /// When it was opened.
    pub created_at: i64,
    /// Hard end.
    pub expires_at: i64,
    /// When it ended, if it has.
    pub ended_at: Option<i64>,
    /// Why it ended: `ended`, `heartbeat`, `expired`, `ci_job_completed`, `operator`.
    pub end_reason: Option<String>,
    /// The CI run, for a CI lease.
    pub ci: Option<CiRun>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// Renewed: the lease as it now stands.
    Renewed(Lease),
    /// The lease had already ended.
    Ended(Lease),
    /// No such lease.
    Unknown,
}

/// A lease that ended, and what its end revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEnd {
    /// The lease as it now stands (ended).
    pub lease: Lease,
    /// The jtis newly revoked (tokens under the lease and every token derived from them).
    pub revoked: Vec<String>,
    /// It had already ended before this call (nothing was revoked by it).
    pub already_ended: bool,
}

/// Which CI leases a job-end notice ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiSelector {
    /// `github` or `gitlab`.
    pub provider: String,
    /// The repository or project path.
    pub project: String,
    /// The run.
    pub run: String,
    /// The attempt, if the notice names one (only that attempt's leases end).
    pub attempt: Option<String>,
    /// The job, if the notice names one: leases of that job end, and leases of the run that
    /// name no job are left alone (they end with the run).
    pub job: Option<String>,
}

/// Which live tokens an operator revokes. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeSelector {
    /// One token.
    pub jti: Option<String>,
    /// Every token under a lease (the lease ends too).
    pub lease: Option<String>,
    /// Every token issued to this identity (token `sub`).
    pub identity: Option<String>,
    /// Every token issued to this client.
    pub client: Option<String>,
    /// Every token exchanged from this trusted issuer's tokens.
    pub issuer: Option<String>,
    /// Only tokens issued at or after this time.
    pub since: Option<i64>,
}

impl RevokeSelector {
    /// Whether it selects anything at all (an empty selector is refused: it would revoke
    /// everything).
    pub fn is_empty(&self) -> bool {
        self.jti.is_none()
            && self.lease.is_none()
            && self.identity.is_none()
            && self.client.is_none()
            && self.issuer.is_none()
    }
}

impl crate::Store {
    /// Reserve `n` consecutive status indexes in the current list of `list_size` entries,
    /// opening the next list when the current one cannot hold them. One statement per
    /// reservation: replicas never receive the same index.
    pub async fn allocate_status(
        &self,
        list_size: i64,
        n: i64,
        now: i64,
    ) -> Result<StatusBlock, StoreError> {
        let _ = (list_size, n, now);
        todo!("allocate a status block")
    }

    /// The size of list `list`, if it exists.
    pub async fn status_list_size(&self, list: i64) -> Result<Option<i64>, StoreError> {
        let _ = list;
        todo!("status list size")
    }

    /// The indexes of list `list` whose tokens (or JWT-SVIDs) are revoked and not yet expired.
    pub async fn revoked_indexes(&self, list: i64, now: i64) -> Result<Vec<i64>, StoreError> {
        let _ = (list, now);
        todo!("revoked indexes")
    }

    /// Record a JWT-SVID we minted (for its status bit and operator revocation).
    pub async fn record_issued_svid(
        &self,
        jti: &str,
        identity: &str,
        slot: Option<StatusSlot>,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let _ = (jti, identity, slot, issued_at, expires_at);
        todo!("record issued svid")
    }

    /// The lease `id`.
    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let _ = id;
        todo!("lease")
    }

    /// Heartbeat: push the lease's heartbeat to `now` if it is open.
    pub async fn renew_lease(&self, id: &str, now: i64) -> Result<LeaseRenewal, StoreError> {
        let _ = (id, now);
        todo!("renew lease")
    }

    /// End lease `id` for `reason`, revoking every token under it (and every token derived
    /// from those) in the same transaction. `None`: no such lease.
    pub async fn end_lease(
        &self,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<LeaseEnd>, StoreError> {
        let _ = (id, reason, now);
        todo!("end lease")
    }

    /// End the open CI leases `sel` selects, as [`Self::end_lease`] does.
    pub async fn end_ci_leases(
        &self,
        sel: &CiSelector,
        reason: &str,
        now: i64,
    ) -> Result<Vec<LeaseEnd>, StoreError> {
        let _ = (sel, reason, now);
        todo!("end ci leases")
    }

    /// End up to `limit` open leases whose heartbeat grace or hard end has passed at `now`.
    /// Each is claimed by one statement, so of several replicas exactly one ends each lease.
    pub async fn end_overdue_leases(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<LeaseEnd>, StoreError> {
        let _ = (now, limit);
        todo!("end overdue leases")
    }

    /// Open leases, newest first (at most `limit`).
    pub async fn open_leases(&self, limit: i64) -> Result<Vec<Lease>, StoreError> {
        let _ = limit;
        todo!("open leases")
    }

    /// Revoke every live token `sel` selects (and every token derived from them); with
    /// `sel.lease`, the lease ends too. Returns the jtis newly revoked.
    pub async fn revoke_selected(
        &self,
        sel: &RevokeSelector,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let _ = (sel, now);
        todo!("revoke selected")
    }

    /// Remember webhook delivery `delivery` from `source` until `keep_until`. `false`: it was
    /// already seen (a replay; act on it no more).
    pub async fn first_delivery(
        &self,
        source: &str,
        delivery: &str,
        keep_until: i64,
    ) -> Result<bool, StoreError> {
        let _ = (source, delivery, keep_until);
        todo!("first delivery")
    }
}
