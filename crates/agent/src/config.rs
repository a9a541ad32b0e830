//! Agent settings. The CLI fills this from `[agent]` in the config file.

use std::time::Duration;

/// How the agent behaves. Build with [`AgentConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The server's token issuer URL (`iss` of its access tokens). JWT-SVIDs the agent fetches
    /// for the HTTP `/v1/token` endpoint carry it as their audience, since the token endpoint
    /// is who consumes them.
    pub token_issuer: String,
    /// How often entries and the bundle are fetched from the server (default 5 s).
    pub sync_interval: Duration,
    /// Most workload processes tracked at once (processes holding JWT-SVIDs, whose exit the
    /// agent reports). When full, new processes get `ResourceExhausted` for JWT-SVIDs rather
    /// than JWT-SVIDs that could not be revoked at exit. Default 4096.
    pub max_processes: usize,
    /// Most JWT-SVID `jti`s remembered per process (default 1024).
    pub max_jtis_per_process: usize,
    /// Most cached JWT-SVIDs per process (distinct entry and audience sets; default 64).
    pub max_cached_jwts_per_process: usize,
    /// How long a `jti` is remembered after its JWT-SVID expires, because tokens exchanged for
    /// it may outlive it (default 1 h, the longest access token lifetime worth revoking).
    pub jti_retention: Duration,
    /// Clock skew allowed when validating JWT-SVIDs (`exp`, `nbf`; default 30 s).
    pub jwt_leeway: Duration,
    /// Most executable hashes cached by (device, inode, size, mtime) (default 256).
    pub max_hash_cache: usize,
}

impl AgentConfig {
    /// Defaults, with the server's token issuer URL.
    pub fn new(token_issuer: impl Into<String>) -> Self {
        Self {
            token_issuer: token_issuer.into(),
            sync_interval: Duration::from_secs(5),
            max_processes: 4096,
            max_jtis_per_process: 1024,
            max_cached_jwts_per_process: 64,
            jti_retention: Duration::from_secs(3600),
            jwt_leeway: Duration::from_secs(30),
            max_hash_cache: 256,
        }
    }
}
