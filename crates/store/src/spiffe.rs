//! SPIFFE records: CA and JWT-SVID signing authorities (sealed like signing keys), registration
//! entries, join tokens, attested agents, and JWT-SVID revocations with the tokens they carried.
//!
//! The store keeps strings and bytes; parsing selectors, SPIFFE IDs and certificates is the
//! business of the engines above it.

use base64::Engine;
use mayfly_crypto::Kek;
use mayfly_proto::keys::KeyTimes;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::{Store, StoreError, db};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What an authority signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityKind {
    /// An X.509 CA that signs X.509-SVIDs.
    X509,
    /// A key that signs JWT-SVIDs.
    Jwt,
}

impl AuthorityKind {
    fn as_str(self) -> &'static str {
        match self {
            AuthorityKind::X509 => "x509",
            AuthorityKind::Jwt => "jwt",
        }
    }
}

/// An authority with its schedule, decrypted.
pub struct StoredAuthority {
    /// Lifecycle times (the `kid` is the authority id).
    pub times: KeyTimes,
    /// Public part: the CA certificate chain as PEM, or the public JWK.
    pub public: String,
    /// PKCS#8 private key.
    pub private_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("times", &self.times)
            .finish_non_exhaustive()
    }
}

/// A registration entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Entry id.
    pub id: String,
    /// SPIFFE ID a matching workload gets.
    pub spiffe_id: String,
    /// The agent's SPIFFE ID under which the entry applies.
    pub parent_id: String,
    /// Selectors (canonical strings, sorted).
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime, seconds.
    pub x509_ttl: i64,
    /// JWT-SVID lifetime, seconds.
    pub jwt_ttl: i64,
    /// Extra DNS names.
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Why a join token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinTokenOutcome {
    /// Consumed now by this call.
    Accepted,
    /// No such token, or the secret does not match.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Already used.
    AlreadyUsed,
}

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAgent {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// How it attested (`join_token`, `platform:<issuer>`).
    pub attestation: String,
    /// Serial (hex) of the X.509-SVID it last received.
    pub serial: String,
    /// When it last attested or renewed.
    pub attested_at: i64,
    /// When its current SVID expires.
    pub expires_at: i64,
}

/// What a workload-exit report revoked: only JWT-SVIDs the reporting agent minted count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnRevocation {
    /// JWT-SVIDs of this agent, now revoked (or already revoked).
    pub svids: usize,
    /// Access tokens minted from them, revoked now.
    pub tokens: Vec<String>,
    /// Reported jtis this agent did not mint (another agent's, unknown or expired): left alone.
    pub ignored: usize,
}

fn json_list(text: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt(format!("{what} is not a JSON list")))
}

impl Store {
    /// Authorities of one kind, decrypted, oldest first.
    pub async fn load_authorities(
        &self,
        kind: AuthorityKind,
        kek: &Kek,
    ) -> Result<Vec<StoredAuthority>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, not_before, not_after, expires_at, public, sealed_private FROM spiffe_authorities WHERE kind = $1 ORDER BY not_before",
        )
        .bind(kind.as_str())
        .fetch_all(self.pool())
        .await
        .map_err(db("load SPIFFE authorities"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id").map_err(db("read authority"))?;
            let sealed: String = r.try_get("sealed_private").map_err(db("read authority"))?;
            let sealed = b64().decode(sealed).map_err(|_| {
                StoreError::Corrupt(format!("authority {id}: sealed key is not base64"))
            })?;
            let private_pkcs8 = kek.open(aad(kind, &id).as_bytes(), &sealed)?;
            out.push(StoredAuthority {
                times: KeyTimes {
                    created_at: r.try_get("created_at").map_err(db("read authority"))?,
                    not_before: r.try_get("not_before").map_err(db("read authority"))?,
                    not_after: r.try_get("not_after").map_err(db("read authority"))?,
                    expires_at: r.try_get("expires_at").map_err(db("read authority"))?,
                    kid: id,
                },
                public: r.try_get("public").map_err(db("read authority"))?,
                private_pkcs8,
            });
        }
        Ok(out)
    }

    /// Store a new authority, its private key sealed under the master key (bound to its kind
    /// and id, so a sealed key cannot be moved to another row).
    pub async fn insert_authority(
        &self,
        kind: AuthorityKind,
        times: &KeyTimes,
        public: &str,
        private_pkcs8: &[u8],
        kek: &Kek,
    ) -> Result<(), StoreError> {
        let sealed = b64().encode(kek.seal(aad(kind, &times.kid).as_bytes(), private_pkcs8)?);
        sqlx::query("INSERT INTO spiffe_authorities (id, kind, created_at, not_before, not_after, expires_at, public, sealed_private) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&times.kid).bind(kind.as_str()).bind(times.created_at).bind(times.not_before)
            .bind(times.not_after).bind(times.expires_at).bind(public).bind(sealed)
            .execute(self.pool()).await.map_err(db("insert SPIFFE authority"))?;
        Ok(())
    }

    /// Change an authority's schedule (manual rotation).
    pub async fn reschedule_authority(&self, t: &KeyTimes) -> Result<(), StoreError> {
        sqlx::query("UPDATE spiffe_authorities SET not_before = $1, not_after = $2, expires_at = $3 WHERE id = $4")
            .bind(t.not_before).bind(t.not_after).bind(t.expires_at).bind(&t.kid)
            .execute(self.pool()).await.map_err(db("reschedule SPIFFE authority"))?;
        Ok(())
    }

    /// Delete an authority whose SVIDs have all expired.
    pub async fn remove_authority(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM spiffe_authorities WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(db("remove SPIFFE authority"))?;
        Ok(())
    }

    /// Add a registration entry; `false` if an identical one (same parent, SPIFFE ID and
    /// selectors) exists.
    pub async fn add_entry(&self, e: &StoredEntry) -> Result<bool, StoreError> {
        let selectors = serde_json::to_string(&e.selectors)
            .map_err(|_| StoreError::Corrupt("selectors".into()))?;
        let dns = serde_json::to_string(&e.dns_names)
            .map_err(|_| StoreError::Corrupt("dns names".into()))?;
        let exists = sqlx::query(
            "SELECT 1 FROM spiffe_entries WHERE parent_id = $1 AND spiffe_id = $2 AND selectors = $3",
        )
        .bind(&e.parent_id)
        .bind(&e.spiffe_id)
        .bind(&selectors)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up entry"))?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query("INSERT INTO spiffe_entries (id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&e.id).bind(&e.spiffe_id).bind(&e.parent_id).bind(selectors)
            .bind(e.x509_ttl).bind(e.jwt_ttl).bind(dns).bind(e.created_at)
            .execute(self.pool()).await.map_err(db("insert entry"))?;
        Ok(true)
    }

    /// Remove an entry by id; `false` if there was none.
    pub async fn remove_entry(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM spiffe_entries WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(db("remove entry"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Entries, all of them or those under one parent, ordered by SPIFFE ID.
    pub async fn list_entries(&self, parent: Option<&str>) -> Result<Vec<StoredEntry>, StoreError> {
        // Literal SQL only (sqlx audits dynamic strings); an empty parent means every entry.
        let rows = sqlx::query(
            "SELECT id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, created_at FROM spiffe_entries WHERE ($1 = '' OR parent_id = $1) ORDER BY spiffe_id, id",
        )
        .bind(parent.unwrap_or("").to_string())
        .fetch_all(self.pool())
        .await
        .map_err(db("list entries"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id").map_err(db("read entry"))?;
            let selectors: String = r.try_get("selectors").map_err(db("read entry"))?;
            let dns: String = r.try_get("dns_names").map_err(db("read entry"))?;
            out.push(StoredEntry {
                selectors: json_list(&selectors, "entry selectors")?,
                dns_names: json_list(&dns, "entry DNS names")?,
                spiffe_id: r.try_get("spiffe_id").map_err(db("read entry"))?,
                parent_id: r.try_get("parent_id").map_err(db("read entry"))?,
                x509_ttl: r.try_get("x509_ttl").map_err(db("read entry"))?,
                jwt_ttl: r.try_get("jwt_ttl").map_err(db("read entry"))?,
                created_at: r.try_get("created_at").map_err(db("read entry"))?,
                id,
            });
        }
        Ok(out)
    }

    /// Record a new join token (only the SHA-256 of its secret part). `agent_id`, when given,
    /// is the SPIFFE ID the agent that uses it will get (stable across agent restarts, so its
    /// entries keep applying); otherwise one derived from the token id.
    pub async fn add_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: i64,
        expires_at: i64,
        agent_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, agent_id) VALUES ($1, $2, $3, $4, $5)")
            .bind(id).bind(secret_sha256).bind(now).bind(expires_at).bind(agent_id.map(str::to_string))
            .execute(self.pool()).await.map_err(db("insert join token"))?;
        Ok(())
    }

    /// Consume a join token; on success also returns the agent ID fixed at creation, if any.
    /// `secret_matches` compares the stored hash with the presented one (the caller does it in
    /// constant time). Single use holds across replicas: the update only succeeds while
    /// `used_at` is still NULL.
    pub async fn consume_join_token(
        &self,
        id: &str,
        secret_matches: impl FnOnce(&str) -> bool,
        now: i64,
    ) -> Result<(JoinTokenOutcome, Option<String>), StoreError> {
        let row = sqlx::query(
            "SELECT secret_sha256, expires_at, used_at, agent_id FROM join_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up join token"))?;
        let Some(row) = row else {
            return Ok((JoinTokenOutcome::Unknown, None));
        };
        let hash: String = row
            .try_get("secret_sha256")
            .map_err(db("read join token"))?;
        if !secret_matches(&hash) {
            return Ok((JoinTokenOutcome::Unknown, None));
        }
        let used: Option<i64> = row.try_get("used_at").map_err(db("read join token"))?;
        if used.is_some() {
            return Ok((JoinTokenOutcome::AlreadyUsed, None));
        }
        let expires_at: i64 = row.try_get("expires_at").map_err(db("read join token"))?;
        if now >= expires_at {
            return Ok((JoinTokenOutcome::Expired, None));
        }
        let agent_id: Option<String> = row.try_get("agent_id").map_err(db("read join token"))?;
        let r =
            sqlx::query("UPDATE join_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(db("consume join token"))?;
        Ok(if r.rows_affected() == 1 {
            (JoinTokenOutcome::Accepted, agent_id)
        } else {
            (JoinTokenOutcome::AlreadyUsed, None)
        })
    }

    /// Insert or update an agent after attestation or renewal.
    pub async fn upsert_agent(&self, a: &StoredAgent) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE spiffe_agents SET attestation = $1, serial = $2, attested_at = $3, expires_at = $4 WHERE spiffe_id = $5")
            .bind(&a.attestation).bind(&a.serial).bind(a.attested_at).bind(a.expires_at).bind(&a.spiffe_id)
            .execute(self.pool()).await.map_err(db("update agent"))?;
        if r.rows_affected() == 0 {
            sqlx::query("INSERT INTO spiffe_agents (spiffe_id, attestation, serial, attested_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&a.spiffe_id).bind(&a.attestation).bind(&a.serial).bind(a.attested_at).bind(a.expires_at)
                .execute(self.pool()).await.map_err(db("insert agent"))?;
        }
        Ok(())
    }

    /// One agent by SPIFFE ID.
    pub async fn get_agent(&self, spiffe_id: &str) -> Result<Option<StoredAgent>, StoreError> {
        let row = sqlx::query("SELECT spiffe_id, attestation, serial, attested_at, expires_at FROM spiffe_agents WHERE spiffe_id = $1")
            .bind(spiffe_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db("look up agent"))?;
        row.as_ref().map(agent_row).transpose()
    }

    /// Every attested agent, ordered by SPIFFE ID.
    pub async fn list_agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        let rows = sqlx::query("SELECT spiffe_id, attestation, serial, attested_at, expires_at FROM spiffe_agents ORDER BY spiffe_id")
            .fetch_all(self.pool())
            .await
            .map_err(db("list agents"))?;
        rows.iter().map(agent_row).collect()
    }

    /// Evict an agent: forget it, so its SVID no longer authenticates it; `false` if there was
    /// none. It may attest again only with a new join token or platform token.
    pub async fn remove_agent(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM spiffe_agents WHERE spiffe_id = $1")
            .bind(spiffe_id)
            .execute(self.pool())
            .await
            .map_err(db("evict agent"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Remember that `agent_id` minted the JWT-SVID `jti` (until `expires_at`), so that only
    /// that agent can report it as its workload's.
    pub async fn record_svid_minter(
        &self,
        jti: &str,
        agent_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO svid_minters (jti, agent_id, expires_at) VALUES ($1, $2, $3)")
            .bind(jti)
            .bind(agent_id)
            .bind(expires_at)
            .execute(self.pool())
            .await
            .map_err(db("record JWT-SVID minter"))?;
        Ok(())
    }

    /// Revoke, of `jtis`, the JWT-SVIDs that `agent_id` minted (see [`Store::revoke_svids`]);
    /// the others are counted and left alone, so no agent can revoke another's workloads.
    pub async fn revoke_own_svids(
        &self,
        agent_id: &str,
        jtis: &[String],
        now: i64,
        expires_at: i64,
    ) -> Result<OwnRevocation, StoreError> {
        let mut own = Vec::with_capacity(jtis.len());
        for jti in jtis {
            let row = sqlx::query("SELECT agent_id FROM svid_minters WHERE jti = $1")
                .bind(jti)
                .fetch_optional(self.pool())
                .await
                .map_err(db("look up JWT-SVID minter"))?;
            let minter: Option<String> = row
                .map(|r| r.try_get("agent_id"))
                .transpose()
                .map_err(db("read JWT-SVID minter"))?;
            if minter.as_deref() == Some(agent_id) && !own.contains(jti) {
                own.push(jti.clone());
            }
        }
        let tokens = self.revoke_svids(&own, now, expires_at).await?;
        Ok(OwnRevocation {
            svids: own.len(),
            ignored: jtis.len().saturating_sub(own.len()),
            tokens,
        })
    }

    /// Whether a JWT-SVID has been revoked.
    pub async fn is_svid_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM revoked_svids WHERE jti = $1")
            .bind(jti)
            .fetch_optional(self.pool())
            .await
            .map_err(db("JWT-SVID revocation lookup"))?;
        Ok(row.is_some())
    }

    /// Revoke JWT-SVIDs (each until `expires_at`), every access token minted from them, and
    /// every token derived from those.
    /// Returns the revoked token jtis. Idempotent.
    pub async fn revoke_svids(
        &self,
        jtis: &[String],
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool().begin().await.map_err(db("begin revocation"))?;
        // The audit committer links tokens to JWT-SVIDs under this same lock (see audit.rs).
        sqlx::query("UPDATE audit_head SET updated_at = updated_at WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(db("lock audit head"))?;
        let mut revoked = Vec::new();
        for jti in jtis {
            let present = sqlx::query("SELECT 1 FROM revoked_svids WHERE jti = $1")
                .bind(jti)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("JWT-SVID revocation lookup"))?;
            if present.is_none() {
                sqlx::query(
                    "INSERT INTO revoked_svids (jti, revoked_at, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(jti)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db("revoke JWT-SVID"))?;
            }
            let rows = sqlx::query(
                "SELECT token_jti, client_id, expires_at FROM svid_tokens WHERE svid_jti = $1",
            )
            .bind(jti)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("tokens of a JWT-SVID"))?;
            for r in rows {
                let token: String = r.try_get("token_jti").map_err(db("read token link"))?;
                let client: String = r.try_get("client_id").map_err(db("read token link"))?;
                let exp: i64 = r.try_get("expires_at").map_err(db("read token link"))?;
                // The token and every token derived from it (narrowed, exchanged, actor).
                revoked.extend(
                    crate::revocation::revoke_tree(&mut tx, &token, &client, exp, now).await?,
                );
            }
        }
        tx.commit().await.map_err(db("commit revocation"))?;
        Ok(revoked)
    }

    /// Delete expired SPIFFE records (revocations, token links, spent join tokens).
    pub async fn purge_expired_spiffe(&self, now: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for sql in [
            "DELETE FROM revoked_svids WHERE expires_at < $1",
            "DELETE FROM svid_tokens WHERE expires_at < $1",
            "DELETE FROM svid_minters WHERE expires_at < $1",
            // Kept a day past expiry so a late attempt is told "expired", not "unknown".
            "DELETE FROM join_tokens WHERE expires_at < $1 - 86400",
        ] {
            n += sqlx::query(sql)
                .bind(now)
                .execute(self.pool())
                .await
                .map_err(db("purge SPIFFE records"))?
                .rows_affected();
        }
        Ok(n)
    }
}

/// What an authority's sealed key is bound to: its kind (`x509`, `jwt`) and id. Also checked by
/// import, which sees the kind as stored text.
fn agent_row(r: &sqlx::any::AnyRow) -> Result<StoredAgent, StoreError> {
    Ok(StoredAgent {
        spiffe_id: r.try_get("spiffe_id").map_err(db("read agent"))?,
        attestation: r.try_get("attestation").map_err(db("read agent"))?,
        serial: r.try_get("serial").map_err(db("read agent"))?,
        attested_at: r.try_get("attested_at").map_err(db("read agent"))?,
        expires_at: r.try_get("expires_at").map_err(db("read agent"))?,
    })
}

pub(crate) fn sealed_aad(kind: &str, id: &str) -> String {
    format!("spiffe-{kind}:{id}")
}

fn aad(kind: AuthorityKind, id: &str) -> String {
    sealed_aad(kind.as_str(), id)
}
