//! `MAYFLY_*` environment overrides: `MAYFLY_LISTEN`, `MAYFLY_TOKENS_DEFAULT_TTL`,
//! `MAYFLY_AUDIT_OUTPUT`, `MAYFLY_CLIENTS` (a TOML array of inline tables), ...
//! A value is read as TOML when it parses as a TOML value (numbers, arrays, inline tables) and as
//! a string otherwise.

use crate::ConfigError;

/// Variables that start with `MAYFLY_` but are not config keys.
const NOT_CONFIG: &[&str] = &[
    "MAYFLY_MASTER_KEY",
    "MAYFLY_MASTER_KEY_FILE",
    "MAYFLY_LOG",
    "MAYFLY_LOG_FORMAT",
    "MAYFLY_CONFIG",
    crate::hooks::GITHUB_SECRET_ENV,
    crate::hooks::GITLAB_SECRET_ENV,
];

/// Known keys: (environment suffix, table, key).
pub(crate) const KEYS: &[(&str, Option<&str>, &str)] = &[
    ("LISTEN", None, "listen"),
    ("ISSUER", None, "issuer"),
    ("DATA_DIR", None, "data_dir"),
    ("DATABASE_URL", None, "database"),
    ("POOL_MAX_CONNECTIONS", Some("pool"), "max_connections"),
    ("POOL_ACQUIRE_TIMEOUT", Some("pool"), "acquire_timeout"),
    ("POOL_STATEMENT_TIMEOUT", Some("pool"), "statement_timeout"),
    ("CLIENTS", None, "clients"),
    ("ISSUERS", None, "issuers"),
    ("NODE_ATTESTATION", None, "node_attestation"),
    ("TRUST_DOMAIN", None, "trust_domain"),
    ("POLICY_DIR", Some("policy"), "dir"),
    ("TOKENS_DEFAULT_TTL", Some("tokens"), "default_ttl"),
    ("TOKENS_MAX_TTL", Some("tokens"), "max_ttl"),
    ("TOKENS_CLOCK_SKEW", Some("tokens"), "clock_skew"),
    (
        "TOKENS_MAX_ASSERTION_LIFETIME",
        Some("tokens"),
        "max_assertion_lifetime",
    ),
    ("TOKENS_SIGNING_ALG", Some("tokens"), "signing_alg"),
    ("TOKENS_KEY_ROTATION", Some("tokens"), "key_rotation"),
    ("LEASES_GRACE", Some("leases"), "grace"),
    ("LEASES_MAX_LIFETIME", Some("leases"), "max_lifetime"),
    ("LEASES_CI_MAX_LIFETIME", Some("leases"), "ci_max_lifetime"),
    ("STATUS_LIST_SIZE", Some("status_list"), "size"),
    ("STATUS_LIST_TTL", Some("status_list"), "ttl"),
    ("AUDIT_OUTPUT", Some("audit"), "output"),
    ("AUDIT_PATH", Some("audit"), "path"),
    ("SERVER_MAX_BODY_BYTES", Some("server"), "max_body_bytes"),
    ("SERVER_REQUEST_TIMEOUT", Some("server"), "request_timeout"),
    ("SPIFFE_AGENT_LISTEN", Some("spiffe"), "agent_listen"),
    ("SPIFFE_X509_SVID_TTL", Some("spiffe"), "x509_svid_ttl"),
    (
        "SPIFFE_MAX_X509_SVID_TTL",
        Some("spiffe"),
        "max_x509_svid_ttl",
    ),
    ("SPIFFE_JWT_SVID_TTL", Some("spiffe"), "jwt_svid_ttl"),
    ("SPIFFE_CA_ROTATION", Some("spiffe"), "ca_rotation"),
    (
        "SPIFFE_UPSTREAM_CA_CERT",
        Some("spiffe"),
        "upstream_ca_cert",
    ),
    ("SPIFFE_UPSTREAM_CA_KEY", Some("spiffe"), "upstream_ca_key"),
    (
        "WEBHOOKS_GITHUB_SECRET_FILE",
        Some("webhooks"),
        "github_secret_file",
    ),
    (
        "WEBHOOKS_GITLAB_SECRET_FILE",
        Some("webhooks"),
        "gitlab_secret_file",
    ),
    (
        "WEBHOOKS_GITLAB_SIGNING_TOKEN_FILE",
        Some("webhooks"),
        "gitlab_signing_token_file",
    ),
    ("ADMIN_AUDIENCE", Some("admin"), "audience"),
    (
        "SPIFFE_SERVER_DNS_NAMES",
        Some("spiffe"),
        "server_dns_names",
    ),
];

/// `[proxy]` keys (its routes come from the file, or MAYFLY_PROXY_ROUTES as a TOML array).
pub(crate) const PROXY_KEYS: &[(&str, Option<&str>, &str)] = &[
    ("PROXY_LISTEN", Some("proxy"), "listen"),
    ("PROXY_ISSUER", Some("proxy"), "issuer"),
    ("PROXY_CLIENT_ID", Some("proxy"), "client_id"),
    ("PROXY_KEY_FILE", Some("proxy"), "key_file"),
    ("PROXY_REVOCATION", Some("proxy"), "revocation"),
    ("PROXY_REVOCATION_CACHE", Some("proxy"), "revocation_cache"),
    ("PROXY_UPSTREAM_CA_FILE", Some("proxy"), "upstream_ca_file"),
    ("PROXY_UPSTREAM_TIMEOUT", Some("proxy"), "upstream_timeout"),
    ("PROXY_RELOAD_INTERVAL", Some("proxy"), "reload_interval"),
    ("PROXY_ROUTES", Some("proxy"), "routes"),
];

pub(crate) fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("MAYFLY_"))
        .collect()
}

pub(crate) fn apply_overrides(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(suffix) = name.strip_prefix("MAYFLY_") else {
            continue;
        };
        if NOT_CONFIG.contains(&name.as_str()) {
            continue;
        }
        let src = format!("environment variable {name}");
        let Some((_, section, key)) = KEYS.iter().chain(PROXY_KEYS).find(|(s, _, _)| *s == suffix)
        else {
            return Err(ConfigError::new(
                &src,
                name.clone(),
                "not a mayfly setting",
                "unset it, or use one of MAYFLY_LISTEN, MAYFLY_ISSUER, MAYFLY_DATA_DIR, MAYFLY_TOKENS_DEFAULT_TTL, ... (conf/mayfly.full.toml lists them)",
            ));
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let target = match section {
            None => &mut *table,
            Some(sec) => {
                let entry = table
                    .entry(sec.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry.as_table_mut() {
                    Some(t) => t,
                    None => {
                        return Err(ConfigError::new(
                            &src,
                            sec.to_string(),
                            "is not a table in the file",
                            format!("write [{sec}] as a table"),
                        ));
                    }
                }
            }
        };
        target.insert(key.to_string(), parsed);
    }
    Ok(())
}
