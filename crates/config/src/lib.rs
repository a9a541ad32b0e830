//! mayfly configuration: a TOML file plus `MAYFLY_*` environment overrides, turned into validated,
//! typed settings. This crate reads the config file and the files it names (client JWKS); it binds
//! no sockets and opens no databases.
//!
//! Every error names where the bad value came from (the file or the environment variable), the
//! key, what is wrong, and how to fix it.
#![forbid(unsafe_code)]

mod env;
mod hooks;
#[cfg(test)]
mod keys;
mod node;
mod proxy;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hooks::{AdminConfig, GITHUB_SECRET_ENV, GITLAB_SECRET_ENV, WebhooksConfig};
pub use node::NodeAttestationConfig;
pub use proxy::{Inject, ProxyConfig, RevocationMode, RouteConfig, RouteMatch};
pub use raw::AuditOutput;

/// What a client id must be: 1 to 128 printable characters, no whitespace (ids are joined with
/// spaces in logs and replay namespaces, and travel in `client_id` claims). The one rule for
/// config files and run-time registrations alike.
pub const CLIENT_ID_RULE: &str = "must be 1 to 128 printable characters without spaces";
/// How to fix a client id that breaks [`CLIENT_ID_RULE`].
pub const CLIENT_ID_FIX: &str = "pick an id like \"billing-worker\"";

/// Check a client id against [`CLIENT_ID_RULE`].
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A configuration problem, with where it came from and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {problem}\n  fix: {fix}")]
pub struct ConfigError {
    /// The file path or `environment variable NAME`.
    pub source_name: String,
    /// The key, in dotted form (`tokens.default_ttl`, `clients[0].jwks_file`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    fn new(
        source_name: &str,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            source_name: source_name.to_string(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Token-signing algorithm of the server's own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// Ed25519 (default).
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// `[tokens]`: lifetimes and signing.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// Lifetime of a token when the request and client set none.
    pub default_ttl: Duration,
    /// Upper bound of any token lifetime.
    pub max_ttl: Duration,
    /// Tolerance for clients' clocks on `iat`, `nbf` and `exp`.
    pub clock_skew: Duration,
    /// How far in the future a client assertion's `exp` may be.
    pub max_assertion_lifetime: Duration,
    /// Algorithm of the server's signing keys.
    pub signing_alg: SigningAlg,
    /// How often the signing key rotates.
    pub key_rotation: Duration,
}

/// `[audit]`: where the JSON-lines copy of the audit log goes (the hash-chained log in the
/// store is always written).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Destination of the JSON lines.
    pub output: AuditOutput,
    /// File for `output = "file"`.
    pub path: Option<PathBuf>,
}

/// `[server]`: HTTP limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Deadline for handling one request.
    pub request_timeout: Duration,
}

/// `[leases]`: how long tokens issued under a lease may live without it.
#[derive(Debug, Clone)]
pub struct LeasesConfig {
    /// A `lease=new` lease ends when no heartbeat came for this long.
    pub grace: Duration,
    /// A `lease=new` lease ends this long after it opened, whatever the heartbeat.
    pub max_lifetime: Duration,
    /// A CI job's lease ends this long after it opened, if its job's end was not reported.
    pub ci_max_lifetime: Duration,
}

/// `[status_list]`: the Token Status Lists that publish revocation.
#[derive(Debug, Clone)]
pub struct StatusListConfig {
    /// Entries per list; a new list opens when the current one is full.
    pub size: u64,
    /// How long a fetched list may be cached (its `ttl` claim).
    pub ttl: Duration,
}

/// `[spiffe]`: the X.509 CA, SVID lifetimes and the agent API.
#[derive(Debug, Clone)]
pub struct SpiffeConfig {
    /// Where the agent API listens (mutual TLS); `None`: agents cannot attest.
    pub agent_listen: Option<SocketAddr>,
    /// Default X.509-SVID lifetime (an entry may set its own, up to `max_x509_svid_ttl`).
    pub x509_svid_ttl: Duration,
    /// Longest X.509-SVID lifetime.
    pub max_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// How long one CA (and one JWT-SVID key) signs before the next takes over.
    pub ca_rotation: Duration,
    /// Upstream CA certificate and key (PEM files): the CA becomes an intermediate under it.
    pub upstream_ca: Option<(PathBuf, PathBuf)>,
    /// DNS names in the server's own X.509-SVID (for agents that dial a name).
    pub server_dns_names: Vec<String>,
}

/// Where a client's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWK Set given inline or read from `jwks_file` at load time.
    Static(serde_json::Value),
    /// A JWK Set fetched (and cached) from this URL.
    Uri(url::Url),
}

/// `[[clients]]`: one registered client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client_id.
    pub id: String,
    /// Its public keys.
    pub jwks: JwksSource,
    /// Audiences (resource indicators) it may request.
    pub audiences: Vec<String>,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Per-client lifetime cap (never above `tokens.max_ttl`).
    pub max_ttl: Option<Duration>,
    /// Audiences whose tokens (any client's) it may introspect, besides its own tokens: a
    /// resource server or the proxy in front of one. Nobody else sees other clients' tokens.
    pub introspect: Vec<String>,
}

/// `[pool]`: the database connection pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections (default 4 on SQLite, 16 on PostgreSQL).
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before it is refused (503).
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`.
    pub statement_timeout: Duration,
}

/// Where a trusted issuer's keys come from.
#[derive(Debug, Clone)]
pub enum IssuerKeys {
    /// A JWK Set given inline or read from `jwks_file`.
    Static(serde_json::Value),
    /// Fetched (and cached) from this URL.
    Uri(url::Url),
    /// Found through `{issuer}/.well-known/openid-configuration`.
    Discovery(url::Url),
}

/// `[[issuers]]`: a platform whose identity tokens mayfly accepts as subject tokens.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Short name (policies see it as the `issuer` attribute).
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// `kubernetes`, `github-actions`, `gitlab-ci` or `spiffe-jwt-svid`.
    pub preset: Option<String>,
    /// Its keys.
    pub keys: IssuerKeys,
    /// A subject token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Accepted algorithms (`None`: the preset's, or RS256 and ES256).
    pub algorithms: Option<Vec<String>>,
    /// Oldest `iat` accepted.
    pub max_token_age: Duration,
    /// The trust domain its identities lie in (`{trust_domain}` in the template): given, or
    /// `<name>.<trust_domain>`. Never the server's own trust domain, and never another
    /// issuer's, so that identities from two issuers cannot collide.
    pub trust_domain: String,
    /// Identity template (`None`: the preset's).
    pub identity: Option<String>,
    /// Extra policy attributes: (name, JSON pointer).
    pub attributes: Vec<(String, String)>,
    /// Each token may be exchanged once (by `jti`).
    pub one_time_use: bool,
    /// A registered client must authenticate as well.
    pub client_auth_required: bool,
    /// Lifetime cap for tokens from this issuer's subject tokens.
    pub max_ttl: Option<Duration>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Issuer identifier; `None` means `http://<bound address>`.
    pub issuer: Option<url::Url>,
    /// Directory for the SQLite database and the default master key file.
    pub data_dir: PathBuf,
    /// Database URL (`database`); `None` means SQLite at `data_dir/mayfly.db`.
    pub database: Option<String>,
    /// Connection pool settings.
    pub pool: PoolConfig,
    /// Token settings.
    pub tokens: TokensConfig,
    /// Audit output.
    pub audit: AuditConfig,
    /// HTTP limits.
    pub server: ServerLimits,
    /// Clients registered in config.
    pub clients: Vec<ClientConfig>,
    /// SPIFFE trust domain of the identities mayfly maps (default: the issuer's host).
    pub trust_domain: String,
    /// Directory of Cedar policies and their schema (`None`: policies generated from clients).
    pub policy_dir: Option<PathBuf>,
    /// Trusted issuers of subject tokens.
    pub issuers: Vec<IssuerConfig>,
    /// `[[node_attestation]]`: the issuers whose platform tokens may attest agents.
    pub node_attestation: Vec<NodeAttestationConfig>,
    /// SPIFFE issuing.
    pub spiffe: SpiffeConfig,
    /// `[proxy]`: the legacy translation proxy (`mayfly proxy`).
    pub proxy: ProxyConfig,
    /// `[webhooks]`: the CI platforms' job-end notices.
    pub webhooks: WebhooksConfig,
    /// `[admin]`: the operator endpoints.
    pub admin: AdminConfig,
    /// `[leases]`.
    pub leases: LeasesConfig,
    /// `[status_list]`.
    pub status_list: StatusListConfig,
}

impl Config {
    /// The embedded default: no file, environment overrides only.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::from_toml_str("", "embedded default", Path::new("."), &env::process_env())
    }

    /// Load and validate a config file, applying `MAYFLY_*` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                &name,
                "(file)",
                format!("cannot read the config file: {e}"),
                "check the path and its permissions",
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml_str(&text, &name, base, &env::process_env())
    }

    /// Parse TOML text. `base` resolves relative file paths; `env` holds `MAYFLY_*` overrides.
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        base: &Path,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new(
                source_name,
                "(syntax)",
                e.message().to_string(),
                location_hint(text, e.span()),
            )
        })?;
        env::apply_overrides(&mut table, env)?;
        let raw: raw::RawConfig = table.try_into().map_err(|e: toml::de::Error| {
            ConfigError::new(
                source_name,
                "(schema)",
                e.message().to_string(),
                "remove or correct the key; `conf/mayfly.full.toml` lists every key",
            )
        })?;
        raw.validate(source_name, base, env)
    }

    /// The `[tokens]` lifetime cap for a client: the smaller of its own cap and the global one.
    pub fn client_max_ttl(&self, client: &ClientConfig) -> Duration {
        client
            .max_ttl
            .map_or(self.tokens.max_ttl, |c| c.min(self.tokens.max_ttl))
    }
}

fn location_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!("correct the TOML syntax at line {line}")
        }
        None => "correct the TOML syntax".to_string(),
    }
}

#[cfg(test)]
mod tests;
