//! `[proxy]` and `[[proxy.routes]]`: the legacy translation proxy (`mayfly proxy`), which holds
//! the static keys of key-only upstreams so that workloads present mayfly tokens instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;
use crate::raw::{duration, resolve};

/// `[proxy]`: where the proxy listens, how it checks tokens, and its routes.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Listen address (HTTP/1.1 and HTTP/2 with prior knowledge, cleartext; put TLS in front
    /// or keep it on loopback / a pod network).
    pub listen: SocketAddr,
    /// The issuer whose tokens are accepted; defaults to the top-level `issuer`.
    pub issuer: Option<url::Url>,
    /// The proxy's own client id at the token service, for introspection (revocation checks).
    pub client_id: Option<String>,
    /// Its private JWK (from `mayfly keygen`), signing its introspection assertions.
    pub key_file: Option<PathBuf>,
    /// How revoked tokens are found: introspection at the issuer, or its status lists.
    pub revocation: RevocationMode,
    /// How long an introspection answer ("still active") is reused for one token.
    pub revocation_cache: Duration,
    /// Extra PEM roots for upstream TLS, added to the system's.
    pub upstream_ca_file: Option<PathBuf>,
    /// Deadline for the upstream's response headers.
    pub upstream_timeout: Duration,
    /// How often the proxy looks for rotated, extended or expired keys in the store.
    pub reload_interval: Duration,
    /// Routes, in the order they are matched.
    pub routes: Vec<RouteConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            issuer: None,
            client_id: None,
            key_file: None,
            revocation: RevocationMode::Introspection,
            revocation_cache: Duration::from_secs(5),
            upstream_ca_file: None,
            upstream_timeout: Duration::from_secs(30),
            reload_interval: Duration::from_secs(2),
            routes: Vec::new(),
        }
    }
}

/// How the proxy learns that a token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationMode {
    /// RFC 7662 introspection at the issuer, one call per token per `revocation_cache`; needs
    /// `client_id` and `key_file`.
    #[default]
    Introspection,
    /// Offline, against the issuer's Token Status Lists (each fetched once per its `ttl`): no
    /// call to the issuer per token. A token without a `status` claim is refused.
    StatusList,
}

impl RevocationMode {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Introspection => "introspection",
            Self::StatusList => "status_list",
        }
    }
}

/// How a route picks its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// Requests whose path starts with this prefix (which is removed before forwarding).
    PathPrefix(String),
    /// Requests for this Host (any path).
    Host(String),
}

/// How the key is put into the upstream request. `{key}` in a template is the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// A header, e.g. `Authorization: Bearer {key}` or `X-Api-Key: {key}`.
    Header {
        /// Header name.
        name: String,
        /// Value template.
        template: String,
    },
    /// A query parameter holding the key.
    Query {
        /// Parameter name.
        param: String,
    },
    /// HTTP basic authentication, `user:password` with `{key}` in either part.
    Basic {
        /// `user:password` template.
        template: String,
    },
}

/// `[[proxy.routes]]`: one upstream.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Route name (in audit events and metrics).
    pub name: String,
    /// How requests are matched.
    pub matcher: RouteMatch,
    /// Upstream base URL: `https://`, or `http://` to a loopback host only (`127.0.0.0/8`,
    /// `[::1]`, `localhost`), checked at validation.
    pub upstream: url::Url,
    /// The audience a token must carry.
    pub audience: String,
    /// Scopes a token must all carry.
    pub scopes: Vec<String>,
    /// The key-debt entry holding the key (`mayfly debt add --name`); defaults to the route
    /// name.
    pub key: String,
    /// How the key is injected.
    pub inject: Inject,
    /// Request headers removed before forwarding (beside `Authorization`, hop-by-hop headers and
    /// the injected header, which always are).
    pub drop_headers: Vec<String>,
    /// A Cedar policy file deciding which workloads may make which calls through the route
    /// (beside audience and scopes); relative paths are from the config file's directory.
    pub policy_file: Option<PathBuf>,
    /// The upstream reads paths ignoring ASCII case: the path remainder is lower-cased before
    /// the policy decides and the upstream receives it, so `/Admin` cannot pass for another
    /// path than `/admin`. Off by default (paths are case-sensitive, RFC 3986 §6.2.2.1).
    pub case_insensitive_upstream: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    listen: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    key_file: Option<String>,
    revocation: Option<String>,
    revocation_cache: Option<String>,
    upstream_ca_file: Option<String>,
    upstream_timeout: Option<String>,
    reload_interval: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    path_prefix: Option<String>,
    host: Option<String>,
    upstream: String,
    audience: String,
    #[serde(default)]
    scopes: Vec<String>,
    key: Option<String>,
    inject: Option<RawInject>,
    #[serde(default)]
    drop_headers: Vec<String>,
    policy_file: Option<String>,
    #[serde(default)]
    case_insensitive_upstream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: Option<String>,
    value: Option<String>,
    query: Option<String>,
    basic: Option<String>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a URL's host is this machine: a loopback address, or `localhost` (which
/// resolves to one only, RFC 6761 §6.3).
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl RawProxy {
    pub(crate) fn validate(self, src: &str, base: &Path) -> Result<ProxyConfig, ConfigError> {
        let d = ProxyConfig::default();
        let listen = match &self.listen {
            None => d.listen,
            Some(t) => t.parse().map_err(|_| {
                ConfigError::new(
                    src,
                    "proxy.listen",
                    format!("`{t}` is not an address"),
                    "write IP:PORT, e.g. \"127.0.0.1:8081\" (port 0 picks a free port)",
                )
            })?,
        };
        let issuer = match &self.issuer {
            None => None,
            Some(t) => Some(crate::raw::parse_issuer(src, t).map_err(|mut e| {
                e.key = "proxy.issuer".into();
                e
            })?),
        };
        if self.client_id.is_some() != self.key_file.is_some() {
            return Err(ConfigError::new(
                src,
                "proxy.client_id",
                "client_id and key_file go together",
                "register the proxy as a client (mayfly keygen; mayfly client add) and give both",
            ));
        }
        let revocation = match self.revocation.as_deref() {
            None | Some("introspection") => RevocationMode::Introspection,
            Some("status_list") => RevocationMode::StatusList,
            Some(other) => {
                return Err(ConfigError::new(
                    src,
                    "proxy.revocation",
                    format!("`{other}` is not a revocation mode"),
                    "use \"introspection\" (ask the issuer, needs client_id and key_file) or \"status_list\" (offline, the issuer's status lists)",
                ));
            }
        };
        let revocation_cache = duration(
            src,
            "proxy.revocation_cache",
            self.revocation_cache.as_ref(),
            "5s",
        )?;
        if revocation_cache > Duration::from_secs(300) {
            return Err(ConfigError::new(
                src,
                "proxy.revocation_cache",
                "is longer than 5 minutes: a revoked token would keep working that long",
                "use a few seconds, e.g. \"5s\"",
            ));
        }
        let upstream_timeout = duration(
            src,
            "proxy.upstream_timeout",
            self.upstream_timeout.as_ref(),
            "30s",
        )?;
        let reload_interval = duration(
            src,
            "proxy.reload_interval",
            self.reload_interval.as_ref(),
            "2s",
        )?;
        if reload_interval < Duration::from_millis(100) || reload_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                src,
                "proxy.reload_interval",
                "must be between 100ms and 60s",
                "use a couple of seconds, e.g. \"2s\"",
            ));
        }
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            let route = r.validate(src, i, base)?;
            if routes.iter().any(|o| o.name == route.name) {
                return Err(ConfigError::new(
                    src,
                    format!("proxy.routes[{i}].name"),
                    format!("route name `{}` is used twice", route.name),
                    "give each route a distinct name",
                ));
            }
            if routes.iter().any(|o| o.matcher == route.matcher) {
                return Err(ConfigError::new(
                    src,
                    format!("proxy.routes[{i}]"),
                    "matches the same requests as an earlier route",
                    "give it another path_prefix or host",
                ));
            }
            routes.push(route);
        }
        Ok(ProxyConfig {
            listen,
            issuer,
            client_id: self.client_id,
            key_file: self.key_file.map(|p| resolve(base, &p)),
            revocation,
            revocation_cache,
            upstream_ca_file: self.upstream_ca_file.map(|p| resolve(base, &p)),
            upstream_timeout,
            reload_interval,
            routes,
        })
    }
}

impl RawRoute {
    fn validate(self, src: &str, i: usize, base: &Path) -> Result<RouteConfig, ConfigError> {
        let key = |k: &str| format!("proxy.routes[{i}].{k}");
        if !is_token(&self.name) || self.name.len() > 64 {
            return Err(ConfigError::new(
                src,
                key("name"),
                format!("`{}` is not a route name", self.name),
                "use up to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        let matcher = route_match(self.path_prefix, self.host, src, i)?;
        let upstream = route_upstream(&self.upstream, src, i)?;
        if self.audience.is_empty() {
            return Err(ConfigError::new(
                src,
                key("audience"),
                "is empty",
                "name the audience tokens for this route must carry, e.g. \"https://api.stripe.com\"",
            ));
        }
        let Some(raw_inject) = self.inject else {
            return Err(ConfigError::new(
                src,
                key("inject"),
                "is missing: the route must say how the key goes into the upstream request",
                "e.g. inject = { header = \"Authorization\", value = \"Bearer {key}\" }, inject = { query = \"api_key\" } or inject = { basic = \"{key}:\" }",
            ));
        };
        let inject = raw_inject.validate(src, i)?;
        let mut drop_headers = Vec::with_capacity(self.drop_headers.len());
        for h in self.drop_headers {
            if !is_token(&h) {
                return Err(ConfigError::new(
                    src,
                    key("drop_headers"),
                    format!("`{h}` is not a header name"),
                    "list header names, e.g. drop_headers = [\"cookie\"]",
                ));
            }
            drop_headers.push(h.to_ascii_lowercase());
        }
        Ok(RouteConfig {
            key: self.key.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            matcher,
            upstream,
            audience: self.audience,
            scopes: self.scopes,
            inject,
            drop_headers,
            policy_file: self.policy_file.map(|p| resolve(base, &p)),
            case_insensitive_upstream: self.case_insensitive_upstream,
        })
    }
}

/// What a route matches on: exactly one of a path prefix (in normal form) or a host.
fn route_match(
    path_prefix: Option<String>,
    host: Option<String>,
    src: &str,
    i: usize,
) -> Result<RouteMatch, ConfigError> {
    let key = |k: &str| format!("proxy.routes[{i}].{k}");
    Ok(match (path_prefix, host) {
        (Some(p), None) => {
            if !p.starts_with('/') || p.contains(['?', '#']) || p.contains("..") {
                return Err(ConfigError::new(
                    src,
                    key("path_prefix"),
                    format!("`{p}` is not a path prefix"),
                    "start it with `/`, e.g. path_prefix = \"/stripe/\"",
                ));
            }
            // Request paths are matched in normal form: a prefix in any other would
            // never match.
            match mayfly_proto::path::NormalPath::new(&p) {
                Ok(n) if !n.rewritten() => {}
                Ok(n) => {
                    return Err(ConfigError::new(
                        src,
                        key("path_prefix"),
                        format!("`{p}` is not in the normal form requests are matched in"),
                        format!("write it as path_prefix = \"{}\"", n.as_str()),
                    ));
                }
                Err(e) => {
                    return Err(ConfigError::new(
                        src,
                        key("path_prefix"),
                        format!("`{p}` is not a path prefix: {e}"),
                        "write a plain path, e.g. path_prefix = \"/stripe/\"",
                    ));
                }
            }
            RouteMatch::PathPrefix(p)
        }
        (None, Some(h)) => {
            if h.is_empty() || h.contains(['/', ' ']) {
                return Err(ConfigError::new(
                    src,
                    key("host"),
                    format!("`{h}` is not a host name"),
                    "write the Host clients use, e.g. host = \"stripe.proxy.internal\"",
                ));
            }
            RouteMatch::Host(h.to_ascii_lowercase())
        }
        _ => {
            return Err(ConfigError::new(
                src,
                key("path_prefix"),
                "a route matches by path_prefix or by host, exactly one of them",
                "set path_prefix = \"/name/\" or host = \"name.proxy.internal\"",
            ));
        }
    })
}

/// A base URL the proxy may forward to: plain http only to loopback.
fn route_upstream(text: &str, src: &str, i: usize) -> Result<url::Url, ConfigError> {
    let key = |k: &str| format!("proxy.routes[{i}].{k}");
    let upstream = url::Url::parse(text).map_err(|e| {
        ConfigError::new(
            src,
            key("upstream"),
            format!("`{}` is not a URL ({e})", text),
            "write the upstream's base URL, e.g. \"https://api.stripe.com\"",
        )
    })?;
    if !matches!(upstream.scheme(), "https" | "http")
        || upstream.host_str().is_none()
        || upstream.query().is_some()
        || upstream.fragment().is_some()
        || !upstream.username().is_empty()
        || upstream.password().is_some()
    {
        return Err(ConfigError::new(
            src,
            key("upstream"),
            format!("`{upstream}` is not a base URL the proxy can forward to"),
            "use https://host[:port][/base/path] with no query, fragment or credentials",
        ));
    }
    // The key crosses this hop in the clear over plain http: only where nobody else can
    // see it (the host itself).
    if upstream.scheme() == "http" && !is_loopback(&upstream) {
        return Err(ConfigError::new(
            src,
            key("upstream"),
            format!(
                "`{upstream}` is plain http to a host that is not loopback: the route's key would cross the network in the clear"
            ),
            "use https:// (add the upstream's CA with proxy.upstream_ca_file if it is private); plain http is for 127.0.0.1, [::1] or localhost only",
        ));
    }
    Ok(upstream)
}

impl RawInject {
    /// How the key goes into the request: exactly one of header (with value), query or basic.
    fn validate(self, src: &str, i: usize) -> Result<Inject, ConfigError> {
        let key = |k: &str| format!("proxy.routes[{i}].{k}");
        Ok(match self {
            RawInject {
                header: Some(h),
                value,
                query: None,
                basic: None,
            } => {
                if !is_token(&h) {
                    return Err(ConfigError::new(
                        src,
                        key("inject.header"),
                        format!("`{h}` is not a header name"),
                        "e.g. inject = { header = \"X-Api-Key\", value = \"{key}\" }",
                    ));
                }
                let template = value.unwrap_or_else(|| "{key}".into());
                if !template.contains("{key}") || template.contains(['\r', '\n']) {
                    return Err(ConfigError::new(
                        src,
                        key("inject.value"),
                        "must hold `{key}` once, on one line",
                        "e.g. value = \"Bearer {key}\"",
                    ));
                }
                Inject::Header {
                    name: h.to_ascii_lowercase(),
                    template,
                }
            }
            RawInject {
                query: Some(q),
                header: None,
                value: None,
                basic: None,
            } => {
                if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
                    return Err(ConfigError::new(
                        src,
                        key("inject.query"),
                        format!("`{q}` is not a query parameter name"),
                        "e.g. inject = { query = \"api_key\" }",
                    ));
                }
                Inject::Query { param: q }
            }
            RawInject {
                basic: Some(b),
                header: None,
                value: None,
                query: None,
            } => {
                if !b.contains("{key}") || !b.contains(':') {
                    return Err(ConfigError::new(
                        src,
                        key("inject.basic"),
                        "must be `user:password` with `{key}` in one part",
                        "e.g. inject = { basic = \"{key}:\" } (key as user, empty password)",
                    ));
                }
                Inject::Basic { template: b }
            }
            _ => {
                return Err(ConfigError::new(
                    src,
                    key("inject"),
                    "says neither exactly one of header (with value), query or basic",
                    "e.g. inject = { header = \"Authorization\", value = \"Bearer {key}\" }, inject = { query = \"api_key\" } or inject = { basic = \"{key}:\" }",
                ));
            }
        })
    }
}
