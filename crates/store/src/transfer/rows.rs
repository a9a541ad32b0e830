//! The rows of an export: one type per table, read from and bound to either backend, and the
//! batched inserts of an import.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Backend, StoreError, db};

/// Rows per multi-row INSERT (well under both backends' bind-parameter limits), and the bytes
/// buffered at most before they are sent.
pub(super) const ROWS_PER_INSERT: usize = 64;
pub(super) const BATCH_BYTES: usize = 4 << 20;

/// The tables an export holds, in the order it holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Table {
    SigningKeys,
    Clients,
    RevokedTokens,
    UsedJti,
    SpiffeAuthorities,
    SpiffeEntries,
    JoinTokens,
    SpiffeAgents,
    RevokedSvids,
    SvidTokens,
    SvidMinters,
    TokenParents,
    DebtKeys,
    DebtUsage,
    IssuedTokens,
    Leases,
    StatusLists,
    WebhookDeliveries,
    AuditEvents,
    AuditHead,
}

impl Table {
    pub(super) const ALL: [Table; 20] = [
        Table::SigningKeys,
        Table::Clients,
        Table::RevokedTokens,
        Table::UsedJti,
        Table::SpiffeAuthorities,
        Table::SpiffeEntries,
        Table::JoinTokens,
        Table::SpiffeAgents,
        Table::RevokedSvids,
        Table::SvidTokens,
        Table::SvidMinters,
        Table::TokenParents,
        Table::DebtKeys,
        Table::DebtUsage,
        Table::IssuedTokens,
        Table::Leases,
        Table::StatusLists,
        Table::WebhookDeliveries,
        Table::AuditEvents,
        Table::AuditHead,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Table::SigningKeys => "signing_keys",
            Table::Clients => "clients",
            Table::RevokedTokens => "revoked_tokens",
            Table::UsedJti => "used_jti",
            Table::SpiffeAuthorities => "spiffe_authorities",
            Table::SpiffeEntries => "spiffe_entries",
            Table::JoinTokens => "join_tokens",
            Table::SpiffeAgents => "spiffe_agents",
            Table::RevokedSvids => "revoked_svids",
            Table::SvidTokens => "svid_tokens",
            Table::SvidMinters => "svid_minters",
            Table::TokenParents => "token_parents",
            Table::DebtKeys => "debt_keys",
            Table::DebtUsage => "debt_usage",
            Table::IssuedTokens => "issued_tokens",
            Table::Leases => "leases",
            Table::StatusLists => "status_lists",
            Table::WebhookDeliveries => "webhook_deliveries",
            Table::AuditEvents => "audit_events",
            Table::AuditHead => "audit_head",
        }
    }

    pub(super) fn columns(self) -> &'static [&'static str] {
        match self {
            Table::SigningKeys => &[
                "kid",
                "alg",
                "created_at",
                "not_before",
                "not_after",
                "expires_at",
                "public_jwk",
                "sealed_private",
            ],
            Table::Clients => &["id", "jwks", "audiences", "scopes", "max_ttl", "created_at"],
            Table::RevokedTokens => &["jti", "client_id", "revoked_at", "expires_at"],
            Table::UsedJti => &["client_id", "jti", "expires_at"],
            Table::SpiffeAuthorities => &[
                "id",
                "kind",
                "created_at",
                "not_before",
                "not_after",
                "expires_at",
                "public",
                "sealed_private",
            ],
            Table::SpiffeEntries => &[
                "id",
                "spiffe_id",
                "parent_id",
                "selectors",
                "x509_ttl",
                "jwt_ttl",
                "dns_names",
                "created_at",
            ],
            Table::JoinTokens => &[
                "id",
                "secret_sha256",
                "created_at",
                "expires_at",
                "used_at",
                "agent_id",
            ],
            Table::SpiffeAgents => &[
                "spiffe_id",
                "attestation",
                "serial",
                "attested_at",
                "expires_at",
            ],
            Table::RevokedSvids => &["jti", "revoked_at", "expires_at"],
            Table::SvidTokens => &["svid_jti", "token_jti", "client_id", "expires_at"],
            Table::SvidMinters => &["jti", "agent_id", "expires_at"],
            Table::TokenParents => &["parent_jti", "child_jti", "client_id", "expires_at"],
            Table::DebtKeys => &[
                "name",
                "owner",
                "created_at",
                "expires_at",
                "routes",
                "fingerprint",
                "sealed_key",
                "key_version",
                "updated_at",
                "extended_reason",
                "found_at",
                "last_used_at",
            ],
            Table::DebtUsage => &["name", "identity", "first_used_at", "last_used_at", "calls"],
            Table::IssuedTokens => &[
                "jti",
                "kind",
                "client_id",
                "identity",
                "issuer",
                "lease_id",
                "list_id",
                "idx",
                "issued_at",
                "expires_at",
            ],
            Table::Leases => &[
                "id",
                "kind",
                "owner",
                "client_id",
                "grace",
                "heartbeat_at",
                "created_at",
                "expires_at",
                "ended_at",
                "end_reason",
                "ci_provider",
                "ci_project",
                "ci_run",
                "ci_attempt",
                "ci_job",
            ],
            Table::StatusLists => &["id", "size", "next_idx", "created_at", "last_exp"],
            Table::WebhookDeliveries => &["source", "delivery", "expires_at"],
            Table::AuditEvents => &["seq", "ts", "kind", "jti", "body", "prev_hash", "hash"],
            Table::AuditHead => &["id", "seq", "hash", "updated_at"],
        }
    }

    /// The primary key, compared bytewise on both backends (PostgreSQL would otherwise sort
    /// text by the database's collation), so both write the same rows in the same order.
    pub(super) fn order_by(self, backend: Backend) -> String {
        let text = |c: &str| match backend {
            Backend::Postgres => format!("{c} COLLATE \"C\""),
            Backend::Sqlite => c.to_string(),
        };
        match self {
            Table::SigningKeys => text("kid"),
            Table::Clients => text("id"),
            Table::RevokedTokens => text("jti"),
            Table::UsedJti => format!("{}, {}", text("client_id"), text("jti")),
            Table::SpiffeAuthorities | Table::SpiffeEntries | Table::JoinTokens => text("id"),
            Table::SpiffeAgents => text("spiffe_id"),
            Table::RevokedSvids | Table::SvidMinters => text("jti"),
            Table::SvidTokens => format!("{}, {}", text("svid_jti"), text("token_jti")),
            Table::TokenParents => format!("{}, {}", text("parent_jti"), text("child_jti")),
            Table::DebtKeys => text("name"),
            Table::DebtUsage => format!("{}, {}", text("name"), text("identity")),
            Table::IssuedTokens => text("jti"),
            Table::Leases => text("id"),
            Table::StatusLists => "id".into(),
            Table::WebhookDeliveries => format!("{}, {}", text("source"), text("delivery")),
            Table::AuditEvents => "seq".into(),
            Table::AuditHead => "id".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SigningKeyRow {
    pub(super) kid: String,
    pub(super) alg: String,
    pub(super) created_at: i64,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) expires_at: i64,
    pub(super) public_jwk: String,
    /// AES-256-GCM under the master key, base64, exactly as stored.
    pub(super) sealed_private: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientRow {
    pub(super) id: String,
    pub(super) jwks: String,
    pub(super) audiences: String,
    pub(super) scopes: String,
    pub(super) max_ttl: Option<i64>,
    pub(super) created_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokedRow {
    pub(super) jti: String,
    pub(super) client_id: String,
    pub(super) revoked_at: i64,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsedJtiRow {
    pub(super) client_id: String,
    pub(super) jti: String,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthorityRow {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) created_at: i64,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) expires_at: i64,
    pub(super) public: String,
    /// AES-256-GCM under the master key, base64, exactly as stored.
    pub(super) sealed_private: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryRow {
    pub(super) id: String,
    pub(super) spiffe_id: String,
    pub(super) parent_id: String,
    pub(super) selectors: String,
    pub(super) x509_ttl: i64,
    pub(super) jwt_ttl: i64,
    pub(super) dns_names: String,
    pub(super) created_at: i64,
}

/// Only the SHA-256 of a join token's secret is stored, so the file holds no usable token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinTokenRow {
    pub(super) id: String,
    pub(super) secret_sha256: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) used_at: Option<i64>,
    pub(super) agent_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentRow {
    pub(super) spiffe_id: String,
    pub(super) attestation: String,
    pub(super) serial: String,
    pub(super) attested_at: i64,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokedSvidRow {
    pub(super) jti: String,
    pub(super) revoked_at: i64,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SvidTokenRow {
    pub(super) svid_jti: String,
    pub(super) token_jti: String,
    pub(super) client_id: String,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SvidMinterRow {
    pub(super) jti: String,
    pub(super) agent_id: String,
    pub(super) expires_at: i64,
}

/// A token derived from another token of ours.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenParentRow {
    pub(super) parent_jti: String,
    pub(super) child_jti: String,
    pub(super) client_id: String,
    pub(super) expires_at: i64,
}

/// A legacy key, sealed under the master key as stored (or none: known by fingerprint only).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DebtKeyRow {
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) routes: String,
    pub(super) fingerprint: String,
    pub(super) sealed_key: Option<String>,
    pub(super) key_version: i64,
    pub(super) updated_at: i64,
    pub(super) extended_reason: Option<String>,
    pub(super) found_at: Option<String>,
    pub(super) last_used_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DebtUsageRow {
    pub(super) name: String,
    pub(super) identity: String,
    pub(super) first_used_at: i64,
    pub(super) last_used_at: i64,
    pub(super) calls: i64,
}

/// An access token or JWT-SVID we issued, until it expires.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuedTokenRow {
    pub(super) jti: String,
    pub(super) kind: String,
    pub(super) client_id: String,
    pub(super) identity: String,
    pub(super) issuer: Option<String>,
    pub(super) lease_id: Option<String>,
    pub(super) list_id: Option<i64>,
    pub(super) idx: Option<i64>,
    pub(super) issued_at: i64,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeaseRow {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) owner: String,
    pub(super) client_id: String,
    pub(super) grace: Option<i64>,
    pub(super) heartbeat_at: i64,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) ended_at: Option<i64>,
    pub(super) end_reason: Option<String>,
    pub(super) ci_provider: Option<String>,
    pub(super) ci_project: Option<String>,
    pub(super) ci_run: Option<String>,
    pub(super) ci_attempt: Option<String>,
    pub(super) ci_job: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusListRow {
    pub(super) id: i64,
    pub(super) size: i64,
    pub(super) next_idx: i64,
    pub(super) created_at: i64,
    pub(super) last_exp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookDeliveryRow {
    pub(super) source: String,
    pub(super) delivery: String,
    pub(super) expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditEventRow {
    pub(super) seq: i64,
    pub(super) ts: i64,
    pub(super) kind: String,
    pub(super) jti: Option<String>,
    pub(super) body: String,
    pub(super) prev_hash: String,
    pub(super) hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditHeadRow {
    pub(super) id: i64,
    pub(super) seq: i64,
    pub(super) hash: String,
    pub(super) updated_at: i64,
}

/// One row line: `{"table": NAME, "row": {COLUMN: VALUE, ...}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "table",
    content = "row",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub(super) enum Entry {
    SigningKeys(SigningKeyRow),
    Clients(ClientRow),
    RevokedTokens(RevokedRow),
    UsedJti(UsedJtiRow),
    SpiffeAuthorities(AuthorityRow),
    SpiffeEntries(EntryRow),
    JoinTokens(JoinTokenRow),
    SpiffeAgents(AgentRow),
    RevokedSvids(RevokedSvidRow),
    SvidTokens(SvidTokenRow),
    SvidMinters(SvidMinterRow),
    TokenParents(TokenParentRow),
    DebtKeys(DebtKeyRow),
    DebtUsage(DebtUsageRow),
    IssuedTokens(IssuedTokenRow),
    Leases(LeaseRow),
    StatusLists(StatusListRow),
    WebhookDeliveries(WebhookDeliveryRow),
    AuditEvents(AuditEventRow),
    AuditHead(AuditHeadRow),
}

/// One column of a row being exported.
fn g<T>(r: &AnyRow, c: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    r.try_get(c).map_err(db("read a row to export"))
}

impl Entry {
    pub(super) fn table(&self) -> Table {
        match self {
            Entry::SigningKeys(_) => Table::SigningKeys,
            Entry::Clients(_) => Table::Clients,
            Entry::RevokedTokens(_) => Table::RevokedTokens,
            Entry::UsedJti(_) => Table::UsedJti,
            Entry::SpiffeAuthorities(_) => Table::SpiffeAuthorities,
            Entry::SpiffeEntries(_) => Table::SpiffeEntries,
            Entry::JoinTokens(_) => Table::JoinTokens,
            Entry::SpiffeAgents(_) => Table::SpiffeAgents,
            Entry::RevokedSvids(_) => Table::RevokedSvids,
            Entry::SvidTokens(_) => Table::SvidTokens,
            Entry::SvidMinters(_) => Table::SvidMinters,
            Entry::TokenParents(_) => Table::TokenParents,
            Entry::DebtKeys(_) => Table::DebtKeys,
            Entry::DebtUsage(_) => Table::DebtUsage,
            Entry::IssuedTokens(_) => Table::IssuedTokens,
            Entry::Leases(_) => Table::Leases,
            Entry::StatusLists(_) => Table::StatusLists,
            Entry::WebhookDeliveries(_) => Table::WebhookDeliveries,
            Entry::AuditEvents(_) => Table::AuditEvents,
            Entry::AuditHead(_) => Table::AuditHead,
        }
    }

    pub(super) fn read(t: Table, r: &AnyRow) -> Result<Entry, StoreError> {
        Ok(match t {
            Table::SigningKeys => Entry::SigningKeys(SigningKeyRow {
                kid: g(r, "kid")?,
                alg: g(r, "alg")?,
                created_at: g(r, "created_at")?,
                not_before: g(r, "not_before")?,
                not_after: g(r, "not_after")?,
                expires_at: g(r, "expires_at")?,
                public_jwk: g(r, "public_jwk")?,
                sealed_private: g(r, "sealed_private")?,
            }),
            Table::Clients => Entry::Clients(ClientRow {
                id: g(r, "id")?,
                jwks: g(r, "jwks")?,
                audiences: g(r, "audiences")?,
                scopes: g(r, "scopes")?,
                max_ttl: g(r, "max_ttl")?,
                created_at: g(r, "created_at")?,
            }),
            Table::RevokedTokens => Entry::RevokedTokens(RevokedRow {
                jti: g(r, "jti")?,
                client_id: g(r, "client_id")?,
                revoked_at: g(r, "revoked_at")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::UsedJti => Entry::UsedJti(UsedJtiRow {
                client_id: g(r, "client_id")?,
                jti: g(r, "jti")?,
                expires_at: g(r, "expires_at")?,
            }),
            _ => Self::read_spiffe(t, r)?,
        })
    }

    /// The SPIFFE tables' rows.
    fn read_spiffe(t: Table, r: &AnyRow) -> Result<Entry, StoreError> {
        Ok(match t {
            Table::SpiffeAuthorities => Entry::SpiffeAuthorities(AuthorityRow {
                id: g(r, "id")?,
                kind: g(r, "kind")?,
                created_at: g(r, "created_at")?,
                not_before: g(r, "not_before")?,
                not_after: g(r, "not_after")?,
                expires_at: g(r, "expires_at")?,
                public: g(r, "public")?,
                sealed_private: g(r, "sealed_private")?,
            }),
            Table::SpiffeEntries => Entry::SpiffeEntries(EntryRow {
                id: g(r, "id")?,
                spiffe_id: g(r, "spiffe_id")?,
                parent_id: g(r, "parent_id")?,
                selectors: g(r, "selectors")?,
                x509_ttl: g(r, "x509_ttl")?,
                jwt_ttl: g(r, "jwt_ttl")?,
                dns_names: g(r, "dns_names")?,
                created_at: g(r, "created_at")?,
            }),
            Table::JoinTokens => Entry::JoinTokens(JoinTokenRow {
                id: g(r, "id")?,
                secret_sha256: g(r, "secret_sha256")?,
                created_at: g(r, "created_at")?,
                expires_at: g(r, "expires_at")?,
                used_at: g(r, "used_at")?,
                agent_id: g(r, "agent_id")?,
            }),
            Table::SpiffeAgents => Entry::SpiffeAgents(AgentRow {
                spiffe_id: g(r, "spiffe_id")?,
                attestation: g(r, "attestation")?,
                serial: g(r, "serial")?,
                attested_at: g(r, "attested_at")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::RevokedSvids => Entry::RevokedSvids(RevokedSvidRow {
                jti: g(r, "jti")?,
                revoked_at: g(r, "revoked_at")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::SvidTokens => Entry::SvidTokens(SvidTokenRow {
                svid_jti: g(r, "svid_jti")?,
                token_jti: g(r, "token_jti")?,
                client_id: g(r, "client_id")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::SvidMinters => Entry::SvidMinters(SvidMinterRow {
                jti: g(r, "jti")?,
                agent_id: g(r, "agent_id")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::TokenParents => Entry::TokenParents(TokenParentRow {
                parent_jti: g(r, "parent_jti")?,
                child_jti: g(r, "child_jti")?,
                client_id: g(r, "client_id")?,
                expires_at: g(r, "expires_at")?,
            }),
            _ => Self::read_debt_and_audit(t, r)?,
        })
    }

    /// The key-debt and audit tables' rows.
    fn read_debt_and_audit(t: Table, r: &AnyRow) -> Result<Entry, StoreError> {
        Ok(match t {
            Table::DebtKeys => Entry::DebtKeys(DebtKeyRow {
                name: g(r, "name")?,
                owner: g(r, "owner")?,
                created_at: g(r, "created_at")?,
                expires_at: g(r, "expires_at")?,
                routes: g(r, "routes")?,
                fingerprint: g(r, "fingerprint")?,
                sealed_key: g(r, "sealed_key")?,
                key_version: g(r, "key_version")?,
                updated_at: g(r, "updated_at")?,
                extended_reason: g(r, "extended_reason")?,
                found_at: g(r, "found_at")?,
                last_used_at: g(r, "last_used_at")?,
            }),
            Table::DebtUsage => Entry::DebtUsage(DebtUsageRow {
                name: g(r, "name")?,
                identity: g(r, "identity")?,
                first_used_at: g(r, "first_used_at")?,
                last_used_at: g(r, "last_used_at")?,
                calls: g(r, "calls")?,
            }),
            Table::AuditEvents => Entry::AuditEvents(AuditEventRow {
                seq: g(r, "seq")?,
                ts: g(r, "ts")?,
                kind: g(r, "kind")?,
                jti: g(r, "jti")?,
                body: g(r, "body")?,
                prev_hash: g(r, "prev_hash")?,
                hash: g(r, "hash")?,
            }),
            Table::AuditHead => Entry::AuditHead(AuditHeadRow {
                id: g(r, "id")?,
                seq: g(r, "seq")?,
                hash: g(r, "hash")?,
                updated_at: g(r, "updated_at")?,
            }),
            other => Self::read_lifecycle(other, r)?,
        })
    }

    /// The lifecycle tables' rows (issued tokens, leases, status lists, webhook deliveries).
    fn read_lifecycle(t: Table, r: &AnyRow) -> Result<Entry, StoreError> {
        Ok(match t {
            Table::IssuedTokens => Entry::IssuedTokens(IssuedTokenRow {
                jti: g(r, "jti")?,
                kind: g(r, "kind")?,
                client_id: g(r, "client_id")?,
                identity: g(r, "identity")?,
                issuer: g(r, "issuer")?,
                lease_id: g(r, "lease_id")?,
                list_id: g(r, "list_id")?,
                idx: g(r, "idx")?,
                issued_at: g(r, "issued_at")?,
                expires_at: g(r, "expires_at")?,
            }),
            Table::Leases => Entry::Leases(LeaseRow {
                id: g(r, "id")?,
                kind: g(r, "kind")?,
                owner: g(r, "owner")?,
                client_id: g(r, "client_id")?,
                grace: g(r, "grace")?,
                heartbeat_at: g(r, "heartbeat_at")?,
                created_at: g(r, "created_at")?,
                expires_at: g(r, "expires_at")?,
                ended_at: g(r, "ended_at")?,
                end_reason: g(r, "end_reason")?,
                ci_provider: g(r, "ci_provider")?,
                ci_project: g(r, "ci_project")?,
                ci_run: g(r, "ci_run")?,
                ci_attempt: g(r, "ci_attempt")?,
                ci_job: g(r, "ci_job")?,
            }),
            Table::StatusLists => Entry::StatusLists(StatusListRow {
                id: g(r, "id")?,
                size: g(r, "size")?,
                next_idx: g(r, "next_idx")?,
                created_at: g(r, "created_at")?,
                last_exp: g(r, "last_exp")?,
            }),
            Table::WebhookDeliveries => Entry::WebhookDeliveries(WebhookDeliveryRow {
                source: g(r, "source")?,
                delivery: g(r, "delivery")?,
                expires_at: g(r, "expires_at")?,
            }),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "no reader for table {}",
                    other.name()
                )));
            }
        })
    }

    /// Bind this row's values in column order.
    pub(super) fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        match self {
            Entry::SigningKeys(r) => q
                .bind(r.kid.as_str())
                .bind(r.alg.as_str())
                .bind(r.created_at)
                .bind(r.not_before)
                .bind(r.not_after)
                .bind(r.expires_at)
                .bind(r.public_jwk.as_str())
                .bind(r.sealed_private.as_str()),
            Entry::Clients(r) => q
                .bind(r.id.as_str())
                .bind(r.jwks.as_str())
                .bind(r.audiences.as_str())
                .bind(r.scopes.as_str())
                .bind(r.max_ttl)
                .bind(r.created_at),
            Entry::RevokedTokens(r) => q
                .bind(r.jti.as_str())
                .bind(r.client_id.as_str())
                .bind(r.revoked_at)
                .bind(r.expires_at),
            Entry::UsedJti(r) => q
                .bind(r.client_id.as_str())
                .bind(r.jti.as_str())
                .bind(r.expires_at),
            Entry::SpiffeAuthorities(r) => q
                .bind(r.id.as_str())
                .bind(r.kind.as_str())
                .bind(r.created_at)
                .bind(r.not_before)
                .bind(r.not_after)
                .bind(r.expires_at)
                .bind(r.public.as_str())
                .bind(r.sealed_private.as_str()),
            Entry::SpiffeEntries(r) => q
                .bind(r.id.as_str())
                .bind(r.spiffe_id.as_str())
                .bind(r.parent_id.as_str())
                .bind(r.selectors.as_str())
                .bind(r.x509_ttl)
                .bind(r.jwt_ttl)
                .bind(r.dns_names.as_str())
                .bind(r.created_at),
            Entry::JoinTokens(r) => q
                .bind(r.id.as_str())
                .bind(r.secret_sha256.as_str())
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.used_at)
                .bind(r.agent_id.as_deref()),
            Entry::SpiffeAgents(r) => q
                .bind(r.spiffe_id.as_str())
                .bind(r.attestation.as_str())
                .bind(r.serial.as_str())
                .bind(r.attested_at)
                .bind(r.expires_at),
            Entry::RevokedSvids(r) => q.bind(r.jti.as_str()).bind(r.revoked_at).bind(r.expires_at),
            Entry::SvidTokens(r) => q
                .bind(r.svid_jti.as_str())
                .bind(r.token_jti.as_str())
                .bind(r.client_id.as_str())
                .bind(r.expires_at),
            Entry::SvidMinters(r) => q
                .bind(r.jti.as_str())
                .bind(r.agent_id.as_str())
                .bind(r.expires_at),
            Entry::TokenParents(r) => q
                .bind(r.parent_jti.as_str())
                .bind(r.child_jti.as_str())
                .bind(r.client_id.as_str())
                .bind(r.expires_at),
            Entry::DebtKeys(r) => q
                .bind(r.name.as_str())
                .bind(r.owner.as_str())
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.routes.as_str())
                .bind(r.fingerprint.as_str())
                .bind(r.sealed_key.as_deref())
                .bind(r.key_version)
                .bind(r.updated_at)
                .bind(r.extended_reason.as_deref())
                .bind(r.found_at.as_deref())
                .bind(r.last_used_at),
            Entry::DebtUsage(r) => q
                .bind(r.name.as_str())
                .bind(r.identity.as_str())
                .bind(r.first_used_at)
                .bind(r.last_used_at)
                .bind(r.calls),
            Entry::IssuedTokens(_)
            | Entry::Leases(_)
            | Entry::StatusLists(_)
            | Entry::WebhookDeliveries(_) => self.bind_lifecycle(q),
            Entry::AuditEvents(r) => q
                .bind(r.seq)
                .bind(r.ts)
                .bind(r.kind.as_str())
                .bind(r.jti.as_deref())
                .bind(r.body.as_str())
                .bind(r.prev_hash.as_str())
                .bind(r.hash.as_str()),
            Entry::AuditHead(r) => q
                .bind(r.id)
                .bind(r.seq)
                .bind(r.hash.as_str())
                .bind(r.updated_at),
        }
    }

    /// Bind a lifecycle table's row (see [`Self::bind`]).
    fn bind_lifecycle<'q>(&self, q: Query<'q>) -> Query<'q> {
        match self {
            Entry::IssuedTokens(r) => q
                .bind(r.jti.as_str())
                .bind(r.kind.as_str())
                .bind(r.client_id.as_str())
                .bind(r.identity.as_str())
                .bind(r.issuer.as_deref())
                .bind(r.lease_id.as_deref())
                .bind(r.list_id)
                .bind(r.idx)
                .bind(r.issued_at)
                .bind(r.expires_at),
            Entry::Leases(r) => q
                .bind(r.id.as_str())
                .bind(r.kind.as_str())
                .bind(r.owner.as_str())
                .bind(r.client_id.as_str())
                .bind(r.grace)
                .bind(r.heartbeat_at)
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.ended_at)
                .bind(r.end_reason.as_deref())
                .bind(r.ci_provider.as_deref())
                .bind(r.ci_project.as_deref())
                .bind(r.ci_run.as_deref())
                .bind(r.ci_attempt.as_deref())
                .bind(r.ci_job.as_deref()),
            Entry::StatusLists(r) => q
                .bind(r.id)
                .bind(r.size)
                .bind(r.next_idx)
                .bind(r.created_at)
                .bind(r.last_exp),
            Entry::WebhookDeliveries(r) => q
                .bind(r.source.as_str())
                .bind(r.delivery.as_str())
                .bind(r.expires_at),
            _ => q,
        }
    }
}

pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;
pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// `INSERT INTO table (cols) VALUES (..), (..)SUFFIX` for `rows` rows; anonymous placeholders on
/// SQLite, as the audit committer uses (it binds them faster).
pub(super) fn insert_sql(backend: Backend, t: Table, rows: usize, suffix: &str) -> String {
    use std::fmt::Write as _;
    let cols = t.columns();
    let mut s = format!("INSERT INTO {} ({}) VALUES", t.name(), cols.join(", "));
    let mut n = 0;
    for r in 0..rows {
        s.push_str(if r == 0 { " (" } else { ", (" });
        for c in 0..cols.len() {
            n += 1;
            let sep = if c == 0 { "" } else { ", " };
            let _ = match backend {
                Backend::Sqlite => write!(s, "{sep}?"),
                Backend::Postgres => write!(s, "{sep}${n}"),
            };
        }
        s.push(')');
    }
    s.push_str(suffix);
    s
}

/// Rows of one table waiting to be inserted together.
pub(super) struct Batch {
    pub(super) rows: Vec<Entry>,
    pub(super) bytes: usize,
}

impl Batch {
    pub(super) async fn flush(&mut self, backend: Backend, tx: &mut Tx) -> Result<(), StoreError> {
        let Some(t) = self.rows.first().map(Entry::table) else {
            return Ok(());
        };
        let sql = insert_sql(backend, t, self.rows.len(), "");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in &self.rows {
            q = r.bind(q);
        }
        q.execute(&mut **tx)
            .await
            .map_err(db("insert imported rows"))?;
        self.rows.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Single-use values that the audit log shows were consumed within the replay window, for the
/// PostgreSQL `used_jti` table. Mirrors the SQLite committer's rebuild at start (same events,
/// same namespaces: a client id, or `issuer NAME` for subject tokens).
pub(super) struct Derived {
    pub(super) since: i64,
    pub(super) window: i64,
    pub(super) rows: Vec<(String, String, i64)>,
    pub(super) added: u64,
}

impl Derived {
    pub(super) fn add(&mut self, ev: &AuditEventRow) {
        if self.window <= 0 || ev.ts < self.since {
            return;
        }
        let Ok(e) = serde_json::from_str::<mayfly_proto::AuditEvent>(&ev.body) else {
            return;
        };
        let until = e.ts + self.window;
        if let (Some(client), Some(jti)) = (e.client, e.assertion_jti) {
            self.rows.push((client, jti, until));
        }
        if let (Some(iss), Some(jti)) = (e.subject_issuer, e.subject_jti) {
            self.rows.push((format!("issuer {iss}"), jti, until));
        }
    }

    pub(super) async fn flush(&mut self, backend: Backend, tx: &mut Tx) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let sql = insert_sql(
            backend,
            Table::UsedJti,
            self.rows.len(),
            " ON CONFLICT DO NOTHING",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (ns, jti, until) in &self.rows {
            q = q.bind(ns.as_str()).bind(jti.as_str()).bind(*until);
        }
        let r = q
            .execute(&mut **tx)
            .await
            .map_err(db("insert replay records"))?;
        self.added += r.rows_affected();
        self.rows.clear();
        Ok(())
    }
}
