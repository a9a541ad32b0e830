//! The file's shape, exactly as written, and its validation into [`crate::Config`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{
    AuditConfig, ClientConfig, Config, ConfigError, IssuerConfig, IssuerKeys, JwksSource,
    PoolConfig, ServerLimits, SigningAlg, TokensConfig,
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    listen: Option<String>,
    issuer: Option<String>,
    data_dir: Option<String>,
    database: Option<String>,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    clients: Vec<RawClient>,
    trust_domain: Option<String>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    spiffe: RawSpiffe,
    #[serde(default)]
    node_attestation: Vec<crate::node::RawNodeAttestation>,
    #[serde(default)]
    proxy: crate::proxy::RawProxy,
    #[serde(default)]
    leases: RawLeases,
    #[serde(default)]
    status_list: RawStatusList,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    grace: Option<String>,
    max_lifetime: Option<String>,
    ci_max_lifetime: Option<String>,
}

impl RawLeases {
    fn validate(&self, src: &str) -> Result<crate::LeasesConfig, ConfigError> {
        let grace = duration(src, "leases.grace", self.grace.as_ref(), "30s")?;
        let max_lifetime = duration(
            src,
            "leases.max_lifetime",
            self.max_lifetime.as_ref(),
            "24h",
        )?;
        let ci_max_lifetime = duration(
            src,
            "leases.ci_max_lifetime",
            self.ci_max_lifetime.as_ref(),
            "6h",
        )?;
        // Heartbeats come every grace/3: under 3 s they would be more than one a second.
        if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&grace) {
            return Err(ConfigError::new(
                src,
                "leases.grace",
                "must be between 3s and 1h",
                "use the default 30s",
            ));
        }
        for (key, d) in [
            ("leases.max_lifetime", max_lifetime),
            ("leases.ci_max_lifetime", ci_max_lifetime),
        ] {
            if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 24 * 3600) {
                return Err(ConfigError::new(
                    src,
                    key,
                    "must be between 1m and 7 days",
                    "use the default (24h for max_lifetime, 6h for ci_max_lifetime)",
                ));
            }
        }
        Ok(crate::LeasesConfig {
            grace,
            max_lifetime,
            ci_max_lifetime,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStatusList {
    size: Option<u64>,
    ttl: Option<String>,
}

impl RawStatusList {
    fn validate(&self, src: &str) -> Result<crate::StatusListConfig, ConfigError> {
        let size = self.size.unwrap_or(1 << 20);
        // Indexes are reserved in blocks of 256; a list is at most 16 Mi entries (2 MiB).
        if !(256..=1 << 24).contains(&size) || !size.is_multiple_of(256) {
            return Err(ConfigError::new(
                src,
                "status_list.size",
                "must be a multiple of 256 between 256 and 16777216",
                "use the default 1048576",
            ));
        }
        let ttl = duration(src, "status_list.ttl", self.ttl.as_ref(), "60s")?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&ttl) {
            return Err(ConfigError::new(
                src,
                "status_list.ttl",
                "must be between 1s and 1h",
                "use the default 60s (a revoked token is seen as revoked within it)",
            ));
        }
        Ok(crate::StatusListConfig { size, ttl })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpiffe {
    agent_listen: Option<String>,
    x509_svid_ttl: Option<String>,
    max_x509_svid_ttl: Option<String>,
    jwt_svid_ttl: Option<String>,
    ca_rotation: Option<String>,
    upstream_ca_cert: Option<String>,
    upstream_ca_key: Option<String>,
    #[serde(default)]
    server_dns_names: Vec<String>,
}

impl RawSpiffe {
    fn validate(self, src: &str, base: &Path) -> Result<crate::SpiffeConfig, ConfigError> {
        let agent_listen = match &self.agent_listen {
            None => None,
            Some(t) => Some(t.parse().map_err(|_| {
                ConfigError::new(
                    src,
                    "spiffe.agent_listen",
                    format!("`{t}` is not an address"),
                    "write IP:PORT, e.g. \"127.0.0.1:8443\" (port 0 picks a free port)",
                )
            })?),
        };
        let x509 = duration(
            src,
            "spiffe.x509_svid_ttl",
            self.x509_svid_ttl.as_ref(),
            "1h",
        )?;
        let max_x509 = duration(
            src,
            "spiffe.max_x509_svid_ttl",
            self.max_x509_svid_ttl.as_ref(),
            "24h",
        )?;
        let jwt = duration(src, "spiffe.jwt_svid_ttl", self.jwt_svid_ttl.as_ref(), "5m")?;
        let rotation = duration(src, "spiffe.ca_rotation", self.ca_rotation.as_ref(), "24h")?;
        for (key, d) in [
            ("spiffe.x509_svid_ttl", x509),
            ("spiffe.jwt_svid_ttl", jwt),
            ("spiffe.ca_rotation", rotation),
        ] {
            if d < Duration::from_secs(10) {
                return Err(ConfigError::new(
                    src,
                    key,
                    "is shorter than 10 seconds",
                    "use a lifetime of at least 10s",
                ));
            }
        }
        if x509 > max_x509 {
            return Err(ConfigError::new(
                src,
                "spiffe.x509_svid_ttl",
                "is above spiffe.max_x509_svid_ttl",
                "shorten it or raise max_x509_svid_ttl",
            ));
        }
        if rotation < max_x509 {
            // A CA must outlive every SVID it signs while it is still the signing CA.
            return Err(ConfigError::new(
                src,
                "spiffe.ca_rotation",
                "is shorter than spiffe.max_x509_svid_ttl",
                "make ca_rotation at least as long as the longest X.509-SVID lifetime",
            ));
        }
        let upstream_ca = match (self.upstream_ca_cert, self.upstream_ca_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((resolve(base, &c), resolve(base, &k))),
            _ => {
                return Err(ConfigError::new(
                    src,
                    "spiffe.upstream_ca_cert",
                    "upstream_ca_cert and upstream_ca_key go together",
                    "give both PEM files, or neither for a self-signed CA",
                ));
            }
        };
        Ok(crate::SpiffeConfig {
            agent_listen,
            x509_svid_ttl: x509,
            max_x509_svid_ttl: max_x509,
            jwt_svid_ttl: jwt,
            ca_rotation: rotation,
            upstream_ca,
            server_dns_names: self.server_dns_names,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    max_connections: Option<u32>,
    acquire_timeout: Option<String>,
    statement_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    issuer: String,
    preset: Option<String>,
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    jwks_file: Option<String>,
    jwks: Option<toml::Value>,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    max_token_age: Option<String>,
    trust_domain: Option<String>,
    identity: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    one_time_use: bool,
    client_auth: Option<String>,
    max_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    clock_skew: Option<String>,
    max_assertion_lifetime: Option<String>,
    signing_alg: Option<String>,
    key_rotation: Option<String>,
}

/// Where the JSON-lines copy of the audit log goes.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutput {
    /// Standard output (default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
    /// The file named by `audit.path`, appended to.
    File,
    /// No JSON copy (the store's log is still written).
    Off,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    output: Option<AuditOutput>,
    path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_body_bytes: Option<u64>,
    request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    jwks_file: Option<String>,
    jwks: Option<toml::Value>,
    jwks_uri: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    introspect: Vec<String>,
}

pub(crate) fn duration(
    src: &str,
    key: &str,
    v: Option<&String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = v.map_or(default, String::as_str);
    humantime::parse_duration(text).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("`{text}` is not a duration ({e})"),
            "write a duration such as \"30s\", \"5m\" or \"24h\"",
        )
    })
}

const MAX_TTL_CAP: Duration = Duration::from_secs(24 * 3600);

impl RawConfig {
    pub(crate) fn validate(self, src: &str, base: &Path) -> Result<Config, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text.parse().map_err(|_| {
            ConfigError::new(
                src,
                "listen",
                format!("`{listen_text}` is not an address"),
                "write IP:PORT, e.g. \"127.0.0.1:8080\" (port 0 picks a free port)",
            )
        })?;
        let issuer = match &self.issuer {
            None => None,
            Some(text) => Some(parse_issuer(src, text)?),
        };
        let listen_addr: std::net::SocketAddr = listen;
        if issuer.is_none() && !listen_addr.ip().is_loopback() {
            // http://0.0.0.0:8080 or a private address is not a name clients can rely on.
            return Err(ConfigError::new(
                src,
                "issuer",
                format!("listening on {listen_addr} needs an explicit issuer"),
                "set issuer = \"https://sts.example.com\" (the URL clients use; TLS terminated in front)",
            ));
        }
        let data_dir = resolve(base, self.data_dir.as_deref().unwrap_or("./mayfly-data"));

        let tokens = self.tokens.validate(src)?;
        let max_ttl = tokens.max_ttl;

        let audit = AuditConfig {
            output: self.audit.output.unwrap_or_default(),
            path: self.audit.path.as_deref().map(|p| resolve(base, p)),
        };
        if audit.output == AuditOutput::File && audit.path.is_none() {
            return Err(ConfigError::new(
                src,
                "audit.path",
                "audit.output is \"file\" but no path is set",
                "set audit.path = \"/var/log/mayfly/audit.jsonl\"",
            ));
        }

        let server = self.server.validate(src)?;

        let clients = validate_clients(self.clients, src, base)?;

        let pool = validate_pool(&self.pool, self.database.as_deref(), src)?;
        let trust_domain = match &self.trust_domain {
            Some(td) => td.clone(),
            None => issuer
                .as_ref()
                .and_then(|u| u.host_str())
                .unwrap_or("127.0.0.1")
                .to_ascii_lowercase(),
        };
        if trust_domain.is_empty()
            || !trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(ConfigError::new(
                src,
                "trust_domain",
                format!("`{trust_domain}` is not a SPIFFE trust domain name"),
                "use lowercase letters, digits, `.`, `-` and `_`, e.g. trust_domain = \"example.org\"",
            ));
        }
        let policy_dir = self.policy.dir.as_deref().map(|d| resolve(base, d));
        let spiffe = self.spiffe.validate(src, base)?;
        let proxy = self.proxy.validate(src, base)?;
        let issuers = validate_issuers(self.issuers, src, base, &trust_domain, max_ttl)?;
        let node_attestation = crate::node::validate(self.node_attestation, src, &issuers)?;
        let leases = self.leases.validate(src)?;
        let status_list = self.status_list.validate(src)?;

        Ok(Config {
            leases,
            status_list,
            spiffe,
            proxy,
            trust_domain,
            policy_dir,
            issuers,
            node_attestation,
            listen,
            issuer,
            data_dir,
            database: self.database,
            pool,
            tokens,
            audit,
            server,
            clients,
        })
    }
}

impl RawTokens {
    fn validate(&self, src: &str) -> Result<TokensConfig, ConfigError> {
        let t = self;
        let default_ttl = duration(src, "tokens.default_ttl", t.default_ttl.as_ref(), "5m")?;
        let max_ttl = duration(src, "tokens.max_ttl", t.max_ttl.as_ref(), "1h")?;
        let clock_skew = duration(src, "tokens.clock_skew", t.clock_skew.as_ref(), "30s")?;
        let max_assertion_lifetime = duration(
            src,
            "tokens.max_assertion_lifetime",
            t.max_assertion_lifetime.as_ref(),
            "5m",
        )?;
        let key_rotation = duration(src, "tokens.key_rotation", t.key_rotation.as_ref(), "24h")?;
        if default_ttl.is_zero() || default_ttl > max_ttl {
            return Err(ConfigError::new(
                src,
                "tokens.default_ttl",
                "must be above zero and at most tokens.max_ttl",
                "shorten tokens.default_ttl or raise tokens.max_ttl",
            ));
        }
        if max_ttl > MAX_TTL_CAP {
            return Err(ConfigError::new(
                src,
                "tokens.max_ttl",
                "tokens longer than 24h defeat the point of short-lived credentials",
                "set tokens.max_ttl to 24h or less",
            ));
        }
        if clock_skew > Duration::from_secs(300) {
            return Err(ConfigError::new(
                src,
                "tokens.clock_skew",
                "more than 5m of skew accepts stale assertions",
                "set tokens.clock_skew to 5m or less; fix the clients' clocks (NTP)",
            ));
        }
        if max_assertion_lifetime.is_zero() || max_assertion_lifetime > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                src,
                "tokens.max_assertion_lifetime",
                "must be between 1s and 1h",
                "use the default 5m",
            ));
        }
        if key_rotation < Duration::from_secs(60) {
            return Err(ConfigError::new(
                src,
                "tokens.key_rotation",
                "rotating more often than every minute outruns JWKS caches",
                "set tokens.key_rotation to at least 1m (default 24h)",
            ));
        }
        let signing_alg = match t.signing_alg.as_deref().unwrap_or("EdDSA") {
            "EdDSA" => SigningAlg::EdDSA,
            "ES256" => SigningAlg::ES256,
            other => {
                return Err(ConfigError::new(
                    src,
                    "tokens.signing_alg",
                    format!("`{other}` is not supported"),
                    "use \"EdDSA\" (default) or \"ES256\"",
                ));
            }
        };
        Ok(TokensConfig {
            default_ttl,
            max_ttl,
            clock_skew,
            max_assertion_lifetime,
            signing_alg,
            key_rotation,
        })
    }
}

impl RawServer {
    fn validate(&self, src: &str) -> Result<ServerLimits, ConfigError> {
        let max_body_bytes = self.max_body_bytes.unwrap_or(16 * 1024);
        if !(1024..=1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::new(
                src,
                "server.max_body_bytes",
                "must be between 1024 and 1048576",
                "use the default 16384",
            ));
        }
        let request_timeout = duration(
            src,
            "server.request_timeout",
            self.request_timeout.as_ref(),
            "10s",
        )?;
        // The store's replay-window rebuild relies on no request outliving this bound.
        if request_timeout > Duration::from_secs(300)
            || request_timeout < Duration::from_millis(100)
        {
            return Err(ConfigError::new(
                src,
                "server.request_timeout",
                "must be between 100ms and 5m",
                "use the default 10s",
            ));
        }
        Ok(ServerLimits {
            max_body_bytes: max_body_bytes as usize,
            request_timeout,
        })
    }
}

/// The `[[clients]]`, each valid and with a distinct id.
fn validate_clients(
    raw: Vec<RawClient>,
    src: &str,
    base: &Path,
) -> Result<Vec<ClientConfig>, ConfigError> {
    let mut clients: Vec<ClientConfig> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let client = c.validate(src, base, i)?;
        if clients.iter().any(|o| o.id == client.id) {
            return Err(ConfigError::new(
                src,
                format!("clients[{i}].id"),
                format!("client `{}` is registered twice", client.id),
                "give each [[clients]] entry a distinct id",
            ));
        }
        clients.push(client);
    }
    Ok(clients)
}

/// The `database` URL's scheme and the `[pool]` limits.
fn validate_pool(
    raw: &RawPool,
    database: Option<&str>,
    src: &str,
) -> Result<PoolConfig, ConfigError> {
    if let Some(url) = database
        && !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite://"))
    {
        return Err(ConfigError::new(
            src,
            "database",
            "is not a postgres:// (or sqlite://) URL",
            "write database = \"postgres://mayfly@db.internal/mayfly?sslmode=verify-full\", or leave it out for SQLite in data_dir",
        ));
    }
    let acquire_timeout = duration(
        src,
        "pool.acquire_timeout",
        raw.acquire_timeout.as_ref(),
        "3s",
    )?;
    let statement_timeout = duration(
        src,
        "pool.statement_timeout",
        raw.statement_timeout.as_ref(),
        "5s",
    )?;
    if raw.max_connections.is_some_and(|n| n == 0 || n > 1000) {
        return Err(ConfigError::new(
            src,
            "pool.max_connections",
            "must be between 1 and 1000",
            "leave it out for the default (16 on PostgreSQL)",
        ));
    }
    if acquire_timeout.is_zero() || statement_timeout.is_zero() {
        return Err(ConfigError::new(
            src,
            "pool",
            "timeouts must be above zero",
            "use the defaults (acquire_timeout 3s, statement_timeout 5s)",
        ));
    }
    Ok(PoolConfig {
        max_connections: raw.max_connections,
        acquire_timeout,
        statement_timeout,
    })
}

/// The `[[issuers]]`: each valid, with a distinct name, `iss` and trust domain, and a lifetime
/// cap within `tokens.max_ttl`.
fn validate_issuers(
    raw: Vec<RawIssuer>,
    src: &str,
    base: &Path,
    trust_domain: &str,
    max_ttl: Duration,
) -> Result<Vec<IssuerConfig>, ConfigError> {
    let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let iss = raw.validate(src, base, i, trust_domain)?;
        if issuers.iter().any(|o| o.name == iss.name) {
            return Err(ConfigError::new(
                src,
                format!("issuers[{i}].name"),
                format!("issuer name `{}` is used twice", iss.name),
                "give each [[issuers]] entry a distinct name",
            ));
        }
        if issuers.iter().any(|o| o.issuer == iss.issuer) {
            return Err(ConfigError::new(
                src,
                format!("issuers[{i}].issuer"),
                format!("issuer `{}` is configured twice", iss.issuer),
                "merge the two entries: a token's `iss` must pick exactly one",
            ));
        }
        if let Some(o) = issuers.iter().find(|o| o.trust_domain == iss.trust_domain) {
            return Err(ConfigError::new(
                src,
                format!("issuers[{i}].trust_domain"),
                format!(
                    "`{}` is already the trust domain of issuer `{}`: identities from two issuers would collide",
                    iss.trust_domain, o.name
                ),
                "give each [[issuers]] entry a trust domain of its own (or leave trust_domain out: the default is `<name>.<trust_domain>`)",
            ));
        }
        if iss.max_ttl.is_some_and(|t| t > max_ttl) {
            return Err(ConfigError::new(
                src,
                format!("issuers[{i}].max_ttl"),
                "is above tokens.max_ttl",
                "shorten it (or leave it out to use tokens.max_ttl)",
            ));
        }
        issuers.push(iss);
    }
    Ok(issuers)
}

/// A path from the file, relative to the file's folder (kept as written when that is `.`).
pub(crate) fn resolve(base: &Path, p: &str) -> std::path::PathBuf {
    if base == Path::new(".") {
        std::path::PathBuf::from(p)
    } else {
        base.join(p)
    }
}

pub(crate) fn parse_issuer(src: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| {
        ConfigError::new(
            src,
            "issuer",
            format!("`{text}` is not a URL ({e})"),
            "write the public base URL, e.g. \"https://sts.example.com\"",
        )
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            src,
            "issuer",
            "an issuer must not have a query or fragment (RFC 8414 section 2)",
            "remove everything after `?` or `#`",
        ));
    }
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(ConfigError::new(
            src,
            "issuer",
            "the issuer must be https (plain http only on loopback)",
            "use an https URL, or terminate TLS in front of mayfly",
        ));
    }
    Ok(url)
}

fn is_scope_token(s: &str) -> bool {
    // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

const ISSUER_ALGS: &[&str] = &["RS256", "PS256", "ES256", "ES384", "EdDSA"];

/// Whether `td` is a SPIFFE trust domain name (lowercase letters, digits, `.`, `-`, `_`).
fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Policy attributes mayfly sets itself for every federated workload.
const RESERVED_ATTRIBUTES: &[&str] = &["issuer", "subject", "trust_domain"];

/// Issuer names policies see for mayfly's own tokens and JWT-SVIDs.
const RESERVED_ISSUER_NAMES: &[&str] = &["mayfly", "spiffe"];

impl RawIssuer {
    /// The issuer's trust domain: given, or `<name>.<own>`; never `own` (the server's).
    fn trust_domain(&self, src: &str, i: usize, own: &str) -> Result<String, ConfigError> {
        let key = format!("issuers[{i}].trust_domain");
        // A whole-ID template (`{/sub}`, the spiffe-jwt-svid preset) takes the trust domain
        // from the token: it must be named, since a default could never match it.
        let whole_id = match self.identity.as_deref() {
            Some(t) => t.starts_with("{/"),
            None => self.preset.as_deref() == Some("spiffe-jwt-svid"),
        };
        let td = match &self.trust_domain {
            Some(td) => td.clone(),
            None if whole_id => {
                return Err(ConfigError::new(
                    src,
                    key,
                    "an issuer whose identities are whole SPIFFE IDs from its tokens needs the trust domain it signs for",
                    "set trust_domain = \"partner.example\" (the federated trust domain; never this server's own)",
                ));
            }
            None => format!("{}.{own}", self.name.to_ascii_lowercase()),
        };
        if !is_trust_domain(&td) {
            return Err(ConfigError::new(
                src,
                key,
                format!("`{td}` is not a SPIFFE trust domain name"),
                "use lowercase letters, digits, `.`, `-` and `_`, e.g. trust_domain = \"k8s-prod.example.org\"",
            ));
        }
        if td == own {
            return Err(ConfigError::new(
                src,
                key,
                format!(
                    "`{td}` is this server's own trust domain: only mayfly's own JWT-SVIDs yield identities there, so a token from this issuer could claim any workload of ours"
                ),
                format!(
                    "give the issuer a trust domain of its own, e.g. trust_domain = \"{}.{own}\" (the default when trust_domain is left out)",
                    self.name.to_ascii_lowercase()
                ),
            ));
        }
        // A template with a literal host must name the issuer's trust domain.
        if let Some(host) = self
            .identity
            .as_deref()
            .and_then(|t| t.strip_prefix("spiffe://"))
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .filter(|h| *h != "{trust_domain}" && *h != td)
        {
            return Err(ConfigError::new(
                src,
                format!("issuers[{i}].identity"),
                format!(
                    "the identity template names trust domain `{host}`, but this issuer's is `{td}`"
                ),
                "write the template as \"spiffe://{trust_domain}/...\" (the issuer's trust domain)",
            ));
        }
        Ok(td)
    }

    /// A short name of allowed characters, not one mayfly reserves.
    fn check_name(&self, src: &str, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("issuers[{i}].{k}");
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::new(
                src,
                key("name"),
                "must be 1 to 64 letters, digits, `-`, `_` or `.`",
                "pick a short name like \"k8s-prod\"",
            ));
        }
        if RESERVED_ISSUER_NAMES.contains(&self.name.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::new(
                src,
                key("name"),
                format!(
                    "`{}` is reserved: policies see it as the issuer of mayfly's own tokens",
                    self.name
                ),
                "pick another name, like \"k8s-prod\"",
            ));
        }
        Ok(())
    }

    /// The `iss` to match, and an identity template or a known preset.
    fn check_identity_source(&self, src: &str, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("issuers[{i}].{k}");
        if self.issuer.is_empty() {
            return Err(ConfigError::new(
                src,
                key("issuer"),
                "is empty",
                "write the exact `iss` value of the tokens, e.g. \"https://token.actions.githubusercontent.com\"",
            ));
        }
        const PRESETS: &[&str] = &[
            "kubernetes",
            "github-actions",
            "gitlab-ci",
            "spiffe-jwt-svid",
        ];
        if let Some(p) = self.preset.as_deref().filter(|p| !PRESETS.contains(p)) {
            return Err(ConfigError::new(
                src,
                key("preset"),
                format!("unknown preset `{p}`"),
                "use one of \"kubernetes\", \"github-actions\", \"gitlab-ci\", \"spiffe-jwt-svid\", or set identity yourself",
            ));
        }
        if self.preset.is_none() && self.identity.is_none() {
            return Err(ConfigError::new(
                src,
                key("identity"),
                "an issuer needs an identity template or a preset",
                "set preset = \"kubernetes\" (or another preset), or identity = \"spiffe://{trust_domain}/...{/claim}...\"",
            ));
        }
        Ok(())
    }

    /// Attributes are JSON pointers and never shadow the ones mayfly sets.
    fn check_attributes(&self, src: &str, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("issuers[{i}].{k}");
        for (name, ptr) in &self.attributes {
            if RESERVED_ATTRIBUTES.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    src,
                    key(&format!("attributes.{name}")),
                    format!(
                        "`{name}` is set by mayfly for every workload and cannot come from a claim"
                    ),
                    "name the attribute differently, e.g. \"token_issuer\"",
                ));
            }
            if !ptr.starts_with('/') {
                return Err(ConfigError::new(
                    src,
                    key(&format!("attributes.{name}")),
                    format!("`{ptr}` is not a JSON pointer"),
                    "write a pointer into the token's claims, e.g. \"/kubernetes.io/namespace\"",
                ));
            }
        }
        Ok(())
    }

    fn validate(
        self,
        src: &str,
        base: &Path,
        i: usize,
        own_trust_domain: &str,
    ) -> Result<IssuerConfig, ConfigError> {
        let key = |k: &str| format!("issuers[{i}].{k}");
        self.check_name(src, i)?;
        let trust_domain = self.trust_domain(src, i, own_trust_domain)?;
        self.check_identity_source(src, i)?;
        self.check_attributes(src, i)?;
        let keys = match (self.jwks_uri, self.discovery, self.jwks_file, self.jwks) {
            (Some(uri), false, None, None) => {
                IssuerKeys::Uri(fetch_url(src, &key("jwks_uri"), &uri)?)
            }
            (None, true, None, None) => {
                let base_url = fetch_url(src, &key("issuer"), &self.issuer)?;
                IssuerKeys::Discovery(base_url)
            }
            (None, false, Some(file), None) => {
                IssuerKeys::Static(jwks_file(src, &key("jwks_file"), base, &file)?)
            }
            (None, false, None, Some(inline)) => {
                IssuerKeys::Static(jwks_inline(src, &key("jwks"), inline)?)
            }
            _ => {
                return Err(ConfigError::new(
                    src,
                    key("jwks_uri"),
                    "exactly one of jwks_uri, discovery = true, jwks_file and jwks must be set",
                    "keep one of the four",
                ));
            }
        };
        if let IssuerKeys::Static(v) = &keys {
            check_public_jwks(v).map_err(|p| {
                ConfigError::new(src, key("jwks"), p, "give the issuer's public JWK Set")
            })?;
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                src,
                key("audiences"),
                "a subject token's aud must be checked against at least one value",
                "list the audience the platform puts in tokens meant for mayfly, e.g. audiences = [\"mayfly\"]",
            ));
        }
        let algorithms = issuer_algorithms(self.algorithms, src, &key("algorithms"))?;
        let max_token_age = duration(
            src,
            &key("max_token_age"),
            self.max_token_age.as_ref(),
            "1h",
        )?;
        if max_token_age.is_zero() || max_token_age > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::new(
                src,
                key("max_token_age"),
                "must be between 1s and 7 days",
                "use the default 1h, or the platform's token lifetime",
            ));
        }
        let client_auth_required = match self.client_auth.as_deref().unwrap_or("optional") {
            "optional" => false,
            "required" => true,
            other => {
                return Err(ConfigError::new(
                    src,
                    key("client_auth"),
                    format!("`{other}` is not a rule"),
                    "use \"optional\" (the subject token is the credential) or \"required\"",
                ));
            }
        };
        let max_ttl = match self.max_ttl {
            None => None,
            Some(t) => Some(duration(src, &key("max_ttl"), Some(&t), "")?),
        };
        Ok(IssuerConfig {
            name: self.name,
            issuer: self.issuer,
            preset: self.preset,
            keys,
            audiences: self.audiences,
            algorithms,
            max_token_age,
            trust_domain,
            identity: self.identity,
            attributes: self.attributes.into_iter().collect(),
            one_time_use: self.one_time_use,
            client_auth_required,
            max_ttl,
        })
    }
}

/// An issuer's `algorithms`: when given, a non-empty list from the allow-list.
fn issuer_algorithms(
    list: Option<Vec<String>>,
    src: &str,
    key: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(match list {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    src,
                    key,
                    "is empty",
                    "list at least one of RS256, PS256, ES256, ES384, EdDSA",
                ));
            }
            if let Some(bad) = list.iter().find(|a| !ISSUER_ALGS.contains(&a.as_str())) {
                return Err(ConfigError::new(
                    src,
                    key,
                    format!("`{bad}` is not accepted (never `none`, never HMAC)"),
                    "use RS256, PS256, ES256, ES384 or EdDSA",
                ));
            }
            Some(list)
        }
    })
}

/// A JWK Set read from a file (relative paths start at the config file's folder).
fn jwks_file(
    src: &str,
    key: &str,
    base: &Path,
    file: &str,
) -> Result<serde_json::Value, ConfigError> {
    let path = resolve(base, file);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("cannot read `{}`: {e}", path.display()),
            "create it with `mayfly keygen` or correct the path (relative paths start at the config file's folder)",
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("`{}` is not JSON: {e}", path.display()),
            "the file must hold a JWK Set: {\"keys\": [...]}",
        )
    })
}

/// A JWK Set written inline in TOML.
fn jwks_inline(
    src: &str,
    key: &str,
    inline: toml::Value,
) -> Result<serde_json::Value, ConfigError> {
    serde_json::to_value(inline).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("cannot be read as JSON: {e}"),
            "write jwks = { keys = [ { kty = \"EC\", ... } ] }",
        )
    })
}

/// A URL mayfly fetches keys from: https, or http on loopback only.
fn fetch_url(src: &str, key: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| {
        ConfigError::new(
            src,
            key,
            format!("`{text}` is not a URL ({e})"),
            "write an https URL",
        )
    })?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(ConfigError::new(
            src,
            key,
            "keys fetched over plain http can be swapped in transit",
            "use an https URL (plain http is allowed on loopback only)",
        ));
    }
    Ok(url)
}

impl RawClient {
    fn validate(self, src: &str, base: &Path, i: usize) -> Result<ClientConfig, ConfigError> {
        let key = |k: &str| format!("clients[{i}].{k}");
        if !crate::valid_client_id(&self.id) {
            return Err(ConfigError::new(
                src,
                key("id"),
                crate::CLIENT_ID_RULE,
                crate::CLIENT_ID_FIX,
            ));
        }
        let jwks = match (self.jwks_file, self.jwks, self.jwks_uri) {
            (Some(file), None, None) => {
                JwksSource::Static(jwks_file(src, &key("jwks_file"), base, &file)?)
            }
            (None, Some(inline), None) => {
                JwksSource::Static(jwks_inline(src, &key("jwks"), inline)?)
            }
            (None, None, Some(uri)) => {
                let url = fetch_url(src, &key("jwks_uri"), &uri)?;
                JwksSource::Uri(url)
            }
            _ => {
                return Err(ConfigError::new(
                    src,
                    key("jwks_file"),
                    "exactly one of jwks_file, jwks and jwks_uri must be set",
                    "keep one of the three",
                ));
            }
        };
        if let JwksSource::Static(v) = &jwks {
            check_public_jwks(v).map_err(|p| {
                ConfigError::new(
                    src,
                    key("jwks"),
                    p,
                    "register the public JWK Set (`mayfly keygen` writes NAME.jwks.json)",
                )
            })?;
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::new(
                src,
                key("audiences"),
                "a client needs at least one non-empty audience",
                "list the APIs it may call, e.g. audiences = [\"https://api.example.test\"]",
            ));
        }
        if let Some(bad) = self.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(ConfigError::new(
                src,
                key("scopes"),
                format!("`{bad}` is not a valid scope token"),
                "scopes are single words of printable ASCII without spaces, quotes or backslashes",
            ));
        }
        let max_ttl = match self.max_ttl {
            None => None,
            Some(t) => Some(duration(src, &key("max_ttl"), Some(&t), "")?),
        };
        if self.introspect.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::new(
                src,
                key("introspect"),
                "an audience to introspect is empty",
                "list the audiences whose tokens this client may introspect, e.g. introspect = [\"https://api.example.test\"]",
            ));
        }
        Ok(ClientConfig {
            id: self.id,
            jwks,
            audiences: self.audiences,
            scopes: self.scopes,
            max_ttl,
            introspect: self.introspect,
        })
    }
}

/// A registered JWK Set must be an object with a non-empty `keys` array of public keys.
fn check_public_jwks(v: &serde_json::Value) -> Result<(), String> {
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWK Set (no `keys` array)")?;
    if keys.is_empty() {
        return Err("the JWK Set has no keys".into());
    }
    for k in keys {
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| k.get(m).is_some())
        {
            return Err("the JWK Set holds private or symmetric key material; it must never leave the client".into());
        }
    }
    Ok(())
}
