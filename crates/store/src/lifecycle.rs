//! The lifecycle of issued credentials: the registry of every access token and JWT-SVID we
//! issue, leases (a token lives only as long as its lease), status-list index allocation and
//! the revoked bits of each list, operator revocation by selector, and webhook deliveries
//! already acted on.
//!
//! Everything that revokes takes the audit head lock first (as [`crate::Store::revoke_svids`]
//! does), so a token recorded under a lease while the lease ends is either revoked by the end,
//! or sees the lease ended when it is recorded and is revoked at once.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::revocation::{Arg, revoke_issued};
use crate::{StoreError, db};

/// A token's place in a status list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl LeaseEnd {
    /// The one `lease_end` audit event of this end at `ts`: the lease, its reason, its owner
    /// and client, and the jtis revoked (listed up to [`mayfly_proto::audit::MAX_REVOKED_LISTED`],
    /// counted in full).
    pub fn audit_event(&self, ts: i64) -> mayfly_proto::AuditEvent {
        use mayfly_proto::audit::MAX_REVOKED_LISTED;
        use mayfly_proto::{AuditEvent, Decision, EventKind};
        let mut e = AuditEvent::new(EventKind::LeaseEnd, ts, Decision::Allow);
        e.lease = Some(self.lease.id.clone());
        e.reason = self.lease.end_reason.clone();
        e.client = Some(self.lease.client_id.clone());
        e.identity = Some(self.lease.owner.clone());
        e.revoked = self
            .revoked
            .iter()
            .take(MAX_REVOKED_LISTED)
            .cloned()
            .collect();
        e.revoked_count = Some(self.revoked.len() as u64);
        e
    }
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

impl LeaseKind {
    /// The kind stored as `s`.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "grant" => Some(Self::Grant),
            "ci" => Some(Self::Ci),
            _ => None,
        }
    }
}

/// The columns [`lease_row`] reads, in a `SELECT` or `RETURNING` list.
const LEASE_COLUMNS: &str = "id, kind, owner, client_id, grace, heartbeat_at, created_at, \
    expires_at, ended_at, end_reason, ci_provider, ci_project, ci_run, ci_attempt, ci_job";

/// Whether a lease's heartbeat grace or hard end has passed at `$1` (SQL, over `leases`).
const OVERDUE: &str = "(expires_at <= $1 OR (grace IS NOT NULL AND heartbeat_at + grace < $1))";

fn lease_row(r: &AnyRow) -> Result<Lease, StoreError> {
    let e = || db("read lease");
    let kind: String = r.try_get("kind").map_err(e())?;
    let kind = LeaseKind::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown lease kind {kind:?}")))?;
    let provider: Option<String> = r.try_get("ci_provider").map_err(e())?;
    let project: Option<String> = r.try_get("ci_project").map_err(e())?;
    let run: Option<String> = r.try_get("ci_run").map_err(e())?;
    let ci = match (provider, project, run) {
        (Some(provider), Some(project), Some(run)) => Some(CiRun {
            provider,
            project,
            run,
            attempt: r.try_get("ci_attempt").map_err(e())?,
            job: r.try_get("ci_job").map_err(e())?,
        }),
        _ => None,
    };
    Ok(Lease {
        id: r.try_get("id").map_err(e())?,
        kind,
        owner: r.try_get("owner").map_err(e())?,
        client_id: r.try_get("client_id").map_err(e())?,
        grace: r.try_get("grace").map_err(e())?,
        heartbeat_at: r.try_get("heartbeat_at").map_err(e())?,
        created_at: r.try_get("created_at").map_err(e())?,
        expires_at: r.try_get("expires_at").map_err(e())?,
        ended_at: r.try_get("ended_at").map_err(e())?,
        end_reason: r.try_get("end_reason").map_err(e())?,
        ci,
    })
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Take the audit head lock: the committer records tokens (and their leases and links) under
/// it, so a revocation holding it either sees a token or is seen by it.
pub(crate) async fn lock_head(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("UPDATE audit_head SET updated_at = updated_at WHERE id = 1")
        .execute(&mut **tx)
        .await
        .map_err(db("lock audit head"))?;
    Ok(())
}

/// Revoke every live token under the lease `lease` (just claimed as ended), and what derives
/// from them.
async fn revoke_lease_tokens(tx: &mut Tx, lease: Lease, now: i64) -> Result<LeaseEnd, StoreError> {
    let revoked = revoke_issued(tx, "i.lease_id = $2", &[Arg::Text(lease.id.clone())], now).await?;
    Ok(LeaseEnd {
        lease,
        revoked,
        already_ended: false,
    })
}

/// Claim the open leases an `UPDATE leases SET ended_at = $1, end_reason = ... WHERE ...
/// RETURNING` statement ends, and revoke their tokens, in `tx`.
async fn end_claimed(
    tx: &mut Tx,
    q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    now: i64,
) -> Result<Vec<LeaseEnd>, StoreError> {
    let rows = q.fetch_all(&mut **tx).await.map_err(db("end leases"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let lease = lease_row(r)?;
        out.push(revoke_lease_tokens(tx, lease, now).await?);
    }
    Ok(out)
}

impl crate::Store {
    /// Reserve `n` consecutive status indexes in the current list of `list_size` entries,
    /// opening the next list when the current one cannot hold them. One statement per
    /// reservation: replicas never receive the same index. Lists are numbered from 1.
    pub async fn allocate_status(
        &self,
        list_size: i64,
        n: i64,
        now: i64,
    ) -> Result<StatusBlock, StoreError> {
        if n <= 0 || n > list_size {
            return Err(StoreError::Invalid(
                "a status block must hold at least one index and fit in a list",
            ));
        }
        // A concurrent replica opening the same next list makes the insert a no-op: then the
        // block comes from that list. A few rounds suffice; more means something is wrong.
        for _ in 0..16 {
            let row = sqlx::query(
                "UPDATE status_lists SET next_idx = next_idx + $1 \
                 WHERE id = (SELECT max(id) FROM status_lists) AND next_idx + $1 <= size \
                 RETURNING id, next_idx",
            )
            .bind(n)
            .fetch_optional(self.pool())
            .await
            .map_err(db("allocate status block"))?;
            if let Some(r) = row {
                let list: i64 = r.try_get("id").map_err(db("read status block"))?;
                let next: i64 = r.try_get("next_idx").map_err(db("read status block"))?;
                return Ok(StatusBlock {
                    list,
                    start: next - n,
                    end: next,
                });
            }
            let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM status_lists")
                .fetch_one(self.pool())
                .await
                .map_err(db("newest status list"))?;
            let id = max.unwrap_or(0) + 1;
            let opened = sqlx::query(
                "INSERT INTO status_lists (id, size, next_idx, created_at, last_exp) \
                 VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(list_size)
            .bind(n)
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(db("open status list"))?;
            if opened.rows_affected() == 1 {
                return Ok(StatusBlock {
                    list: id,
                    start: 0,
                    end: n,
                });
            }
        }
        Err(StoreError::Corrupt(
            "status list allocation kept conflicting".into(),
        ))
    }

    /// The size of list `list`, if it exists.
    pub async fn status_list_size(&self, list: i64) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT size FROM status_lists WHERE id = $1")
            .bind(list)
            .fetch_optional(self.pool())
            .await
            .map_err(db("status list size"))
    }

    /// The indexes of list `list` whose tokens (or JWT-SVIDs) are revoked and not yet expired
    /// (a token whose `exp` is `now` still counts), ascending.
    pub async fn revoked_indexes(&self, list: i64, now: i64) -> Result<Vec<i64>, StoreError> {
        // Driven from the revocations, which are few, rather than the list's up to 2^20 rows.
        sqlx::query_scalar(
            "SELECT i.idx FROM revoked_tokens r JOIN issued_tokens i \
             ON i.expires_at = r.expires_at AND i.jti = r.jti \
             WHERE i.list_id = $1 AND i.idx IS NOT NULL AND r.expires_at >= $2 \
             UNION \
             SELECT i.idx FROM revoked_svids r JOIN issued_tokens i ON i.jti = r.jti \
             WHERE i.kind = 'svid' AND i.list_id = $1 AND i.idx IS NOT NULL \
             AND i.expires_at >= $2 \
             ORDER BY 1",
        )
        .bind(list)
        .bind(now)
        .fetch_all(self.pool())
        .await
        .map_err(db("revoked status indexes"))
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
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db("begin record JWT-SVID"))?;
        sqlx::query(
            "INSERT INTO issued_tokens (jti, kind, client_id, identity, issuer, lease_id, \
             list_id, idx, issued_at, expires_at) \
             VALUES ($1, 'svid', '-', $2, NULL, NULL, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(identity)
        .bind(slot.map(|s| s.list))
        .bind(slot.map(|s| s.idx))
        .bind(issued_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db("record JWT-SVID"))?;
        if let Some(s) = slot {
            bump_last_exp(&mut tx, s.list, expires_at).await?;
        }
        tx.commit().await.map_err(db("commit record JWT-SVID"))
    }

    /// The lease `id`.
    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up lease"))?;
        row.as_ref().map(lease_row).transpose()
    }

    /// Heartbeat: push the lease's heartbeat to `now` if it is open. A lease whose grace or
    /// hard end has passed is not revived: it is reported ended (the reaper ends it).
    pub async fn renew_lease(&self, id: &str, now: i64) -> Result<LeaseRenewal, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE leases SET heartbeat_at = $1 WHERE id = $2 AND ended_at IS NULL \
             AND NOT {OVERDUE} RETURNING {LEASE_COLUMNS}"
        )))
        .bind(now)
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db("renew lease"))?;
        if let Some(r) = row {
            return Ok(LeaseRenewal::Renewed(lease_row(&r)?));
        }
        Ok(match self.lease(id).await? {
            Some(l) => LeaseRenewal::Ended(l),
            None => LeaseRenewal::Unknown,
        })
    }

    /// End lease `id` for `reason`, revoking every token under it (and every token derived
    /// from those) in the same transaction. `None`: no such lease.
    pub async fn end_lease(
        &self,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<LeaseEnd>, StoreError> {
        let mut tx = self.pool().begin().await.map_err(db("begin lease end"))?;
        lock_head(&mut tx).await?;
        let sql = format!(
            "UPDATE leases SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL \
             RETURNING {LEASE_COLUMNS}"
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(reason)
            .bind(id);
        let ended = end_claimed(&mut tx, q, now).await?.pop();
        let out = match ended {
            Some(end) => Some(end),
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("look up lease"))?
            .as_ref()
            .map(lease_row)
            .transpose()?
            .map(|lease| LeaseEnd {
                lease,
                revoked: Vec::new(),
                already_ended: true,
            }),
        };
        tx.commit().await.map_err(db("commit lease end"))?;
        Ok(out)
    }

    /// End the open CI leases `sel` selects, as [`Self::end_lease`] does.
    pub async fn end_ci_leases(
        &self,
        sel: &CiSelector,
        reason: &str,
        now: i64,
    ) -> Result<Vec<LeaseEnd>, StoreError> {
        let mut sql = String::from(
            "UPDATE leases SET ended_at = $1, end_reason = $2 WHERE kind = 'ci' \
             AND ended_at IS NULL AND ci_provider = $3 AND ci_project = $4 AND ci_run = $5",
        );
        let mut n = 5;
        for (col, v) in [("ci_attempt", &sel.attempt), ("ci_job", &sel.job)] {
            if v.is_some() {
                n += 1;
                sql.push_str(&format!(" AND {col} = ${n}"));
            }
        }
        sql.push_str(&format!(" RETURNING {LEASE_COLUMNS}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(reason)
            .bind(sel.provider.as_str())
            .bind(sel.project.as_str())
            .bind(sel.run.as_str());
        for v in [&sel.attempt, &sel.job].into_iter().flatten() {
            q = q.bind(v.as_str());
        }
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db("begin CI lease end"))?;
        lock_head(&mut tx).await?;
        let out = end_claimed(&mut tx, q, now).await?;
        tx.commit().await.map_err(db("commit CI lease end"))?;
        Ok(out)
    }

    /// End up to `limit` open leases whose heartbeat grace or hard end has passed at `now`.
    /// Each is claimed by one statement, so of several replicas exactly one ends each lease.
    /// Reasons: `expired` (hard end) or `heartbeat`.
    pub async fn end_overdue_leases(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<LeaseEnd>, StoreError> {
        // Most seconds nothing is overdue: look first, without the audit head lock that every
        // issuance takes.
        let any = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM leases WHERE ended_at IS NULL AND {OVERDUE} LIMIT 1"
        )))
        .bind(now)
        .fetch_optional(self.pool())
        .await
        .map_err(db("find overdue leases"))?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE leases SET ended_at = $1, \
             end_reason = CASE WHEN expires_at <= $1 THEN 'expired' ELSE 'heartbeat' END \
             WHERE id IN (SELECT id FROM leases WHERE ended_at IS NULL AND {OVERDUE} \
             ORDER BY expires_at LIMIT $2) AND ended_at IS NULL RETURNING {LEASE_COLUMNS}"
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit);
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db("begin lease reaping"))?;
        lock_head(&mut tx).await?;
        let out = end_claimed(&mut tx, q, now).await?;
        tx.commit().await.map_err(db("commit lease reaping"))?;
        Ok(out)
    }

    /// Open leases, newest first (at most `limit`).
    pub async fn open_leases(&self, limit: i64) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE ended_at IS NULL \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(db("list open leases"))?;
        rows.iter().map(lease_row).collect()
    }

    /// Revoke every live token `sel` selects (and every token derived from them); with
    /// `sel.lease`, the lease ends too (reason `operator`), which revokes every token under
    /// it whatever the other fields say. Returns the jtis newly revoked (JWT-SVIDs included).
    /// An empty selector is refused with [`StoreError::Invalid`].
    pub async fn revoke_selected(
        &self,
        sel: &RevokeSelector,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        if sel.is_empty() {
            return Err(StoreError::Invalid(
                "a revocation must name a jti, lease, identity, client or issuer",
            ));
        }
        let mut filter = Vec::new();
        let mut args = Vec::new();
        for (col, v) in [
            ("i.jti", &sel.jti),
            ("i.lease_id", &sel.lease),
            ("i.identity", &sel.identity),
            ("i.client_id", &sel.client),
            ("i.issuer", &sel.issuer),
        ] {
            if let Some(v) = v {
                args.push(Arg::Text(v.clone()));
                filter.push(format!("{col} = ${}", args.len() + 1));
            }
        }
        if let Some(since) = sel.since {
            args.push(Arg::Int(since));
            filter.push(format!("i.issued_at >= ${}", args.len() + 1));
        }
        let mut tx = self.pool().begin().await.map_err(db("begin revocation"))?;
        lock_head(&mut tx).await?;
        let mut revoked = Vec::new();
        if let Some(lease) = &sel.lease {
            let sql = format!(
                "UPDATE leases SET ended_at = $1, end_reason = 'operator' \
                 WHERE id = $2 AND ended_at IS NULL RETURNING {LEASE_COLUMNS}"
            );
            let q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(lease.as_str());
            for end in end_claimed(&mut tx, q, now).await? {
                revoked.extend(end.revoked);
            }
        }
        for jti in revoke_issued(&mut tx, &filter.join(" AND "), &args, now).await? {
            if !revoked.contains(&jti) {
                revoked.push(jti);
            }
        }
        tx.commit().await.map_err(db("commit revocation"))?;
        Ok(revoked)
    }

    /// Remember webhook delivery `delivery` from `source` until `keep_until`. `false`: it was
    /// already seen (a replay; act on it no more).
    pub async fn first_delivery(
        &self,
        source: &str,
        delivery: &str,
        keep_until: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO webhook_deliveries (source, delivery, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(delivery)
        .bind(keep_until)
        .execute(self.pool())
        .await
        .map_err(db("record webhook delivery"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Delete the lifecycle's expired records (part of [`Self::purge_expired`]): registry
    /// rows of expired tokens, webhook deliveries past their keep time, leases ended more than
    /// a day ago, and status lists that are full (or no longer allocated from) and whose every
    /// token expired more than a day ago (the day covers blocks a replica reserved there but
    /// has not used up yet).
    pub(crate) async fn purge_lifecycle(&self, now: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for sql in [
            "DELETE FROM issued_tokens WHERE expires_at < $1",
            "DELETE FROM webhook_deliveries WHERE expires_at < $1",
            "DELETE FROM leases WHERE ended_at IS NOT NULL AND ended_at < $1 - 86400",
            "DELETE FROM status_lists WHERE last_exp < $1 - 86400 \
             AND (next_idx >= size OR id < (SELECT max(id) FROM status_lists))",
        ] {
            n += sqlx::query(sql)
                .bind(now)
                .execute(self.pool())
                .await
                .map_err(db("purge lifecycle records"))?
                .rows_affected();
        }
        Ok(n)
    }
}

/// Keep list `list`'s `last_exp` at least `exp` (the list is published until then).
pub(crate) async fn bump_last_exp(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    list: i64,
    exp: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE status_lists SET last_exp = $1 WHERE id = $2 AND last_exp < $1")
        .bind(exp)
        .bind(list)
        .execute(&mut **tx)
        .await
        .map_err(db("keep status list's last exp"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event of a lease end names the lease and reason, and lists at most 1,000 jtis while
    /// counting them all.
    #[test]
    fn lease_end_event_caps_the_list_not_the_count() {
        let lease = Lease {
            id: "L".into(),
            kind: LeaseKind::Grant,
            owner: "spiffe://x/a".into(),
            client_id: "c".into(),
            grace: Some(30),
            heartbeat_at: 1,
            created_at: 1,
            expires_at: 10,
            ended_at: Some(5),
            end_reason: Some("heartbeat".into()),
            ci: None,
        };
        let end = LeaseEnd {
            lease,
            revoked: (0..1500).map(|i| format!("j{i}")).collect(),
            already_ended: false,
        };
        let e = end.audit_event(5);
        assert_eq!(e.kind, mayfly_proto::EventKind::LeaseEnd);
        assert_eq!(e.lease.as_deref(), Some("L"));
        assert_eq!(e.reason.as_deref(), Some("heartbeat"));
        assert_eq!(e.revoked.len(), 1000);
        assert_eq!(e.revoked[999], "j999");
        assert_eq!(e.revoked_count, Some(1500));
        assert_eq!(e.identity.as_deref(), Some("spiffe://x/a"));
    }
}
