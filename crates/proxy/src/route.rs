//! Which route a request takes (by Host, else the longest path prefix) and the upstream URI it
//! is sent to: the route's prefix stripped, the rest joined to the upstream's base path, the
//! query kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use mayfly_config::{Inject, RouteConfig, RouteMatch};
use mayfly_policy::RoutePolicy;
use mayfly_proto::path::NormalPath;

use crate::error::Refusal;

/// One configured route, ready to match and forward.
#[derive(Debug)]
pub struct Route {
    /// Route name.
    pub name: String,
    /// Lower-case host, for host routes.
    host: Option<String>,
    /// Path prefix without its trailing `/` (empty: everything), for path routes.
    prefix: Option<String>,
    scheme: Scheme,
    authority: Authority,
    /// Upstream base path without its trailing `/`.
    base_path: String,
    /// Audience a token must carry.
    pub audience: String,
    /// Scopes a token must all carry.
    pub scopes: Vec<String>,
    /// The key-debt entry.
    pub key: String,
    /// How the key is injected.
    pub inject: Inject,
    /// Request headers removed before forwarding, beside the fixed ones.
    pub drop_headers: Vec<HeaderName>,
    /// The route's Cedar policy, if it has one (default deny within it).
    pub policy: Option<PolicySlot>,
    /// The upstream ignores ASCII case in paths: decide on and forward the lower-cased path.
    pub case_insensitive: bool,
    /// The upstream's `Host` header, built once.
    pub host_header: HeaderValue,
    /// Its metric handles.
    pub metrics: crate::stats::RouteMetrics,
}

/// A route's Cedar policy and the file it comes from, re-read by [`PolicySlot::refresh`] (the
/// proxy's reload loop) so that a changed policy takes effect without a restart.
#[derive(Debug)]
pub struct PolicySlot {
    file: PathBuf,
    /// The policy in force and the SHA-256 of the text it was parsed from.
    loaded: RwLock<(Arc<RoutePolicy>, [u8; 32])>,
    /// The last refresh error, so that a file left broken is reported once, not every reload.
    last_error: std::sync::Mutex<Option<String>>,
    /// One refresh at a time, so that a change is taken (and reported) once; inside, the
    /// digest of a changed text seen once and not yet acted on.
    refreshing: std::sync::Mutex<Option<[u8; 32]>>,
}

/// A policy file that could not be taken (the policy in force stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What was wrong, naming the route and the file.
    pub error: String,
    /// Whether this error differs from the previous refresh's: a file left broken is reported
    /// once, not every reload.
    pub first: bool,
}

impl PolicySlot {
    fn load(route: &str, file: &Path) -> Result<Self, String> {
        let text = read_text(route, file)?;
        let policy = parse(route, file, &text)?;
        Ok(Self {
            file: file.to_path_buf(),
            loaded: RwLock::new((Arc::new(policy), mayfly_crypto::sha256(text.as_bytes()))),
            last_error: std::sync::Mutex::new(None),
            refreshing: std::sync::Mutex::new(None),
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<RoutePolicy> {
        match self.loaded.read() {
            Ok(l) => l.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Whether `error` differs from the previous refresh's (`None`: that one succeeded).
    fn new_error(&self, error: Option<&str>) -> bool {
        let mut last = match self.last_error.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let changed = last.as_deref() != error;
        *last = error.map(str::to_string);
        changed
    }

    /// Read the file again (blocking file I/O). `Ok(Some(sha256))`: a changed policy now
    /// decides; `Ok(None)`: unchanged, or changed but not yet read the same twice in a row. An
    /// unreadable file or one that does not parse and fit the schema is [`Refused`], and the
    /// policy in force stays: a bad edit never opens a route.
    ///
    /// A changed text is acted on only when two refreshes in a row read it: a file rewritten in
    /// place can be caught half-written, and half a policy (its `forbid`s cut off) can allow
    /// more than the whole one.
    pub fn refresh(&self, route: &str) -> Result<Option<[u8; 32]>, Refused> {
        // One refresh at a time, its error bookkeeping included: the reload loop and an
        // explicit reload must not undo each other's.
        let mut seen_once = match self.refreshing.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let r = self.try_refresh(route, &mut seen_once);
        // A change read once and not yet acted on says nothing about the file yet.
        let pending = matches!(r, Ok(None)) && seen_once.is_some();
        let first = !pending && self.new_error(r.as_ref().err().map(|(k, _)| k.as_str()));
        r.map_err(|(_, error)| Refused { error, first })
    }

    /// The error comes with what makes it the same as the previous one: for a text that does
    /// not parse, the text's digest (Cedar lists some problems in no fixed order, so the
    /// message of one text can differ between readings).
    fn try_refresh(
        &self,
        route: &str,
        seen_once: &mut Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, (String, String)> {
        let text = read_text(route, &self.file).map_err(|e| (e.clone(), e))?;
        let digest = mayfly_crypto::sha256(text.as_bytes());
        let same = match self.loaded.read() {
            Ok(l) => l.1 == digest,
            Err(p) => p.into_inner().1 == digest,
        };
        if same {
            *seen_once = None;
            return Ok(None);
        }
        if seen_once.replace(digest) != Some(digest) {
            return Ok(None);
        }
        let policy = parse(route, &self.file, &text)
            .map_err(|e| (format!("parse:{}", mayfly_crypto::hex(&digest)), e))?;
        let mut l = match self.loaded.write() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        *l = (Arc::new(policy), digest);
        Ok(Some(digest))
    }
}

fn read_text(route: &str, file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| {
        format!(
            "route {route}: cannot read policy_file {}: {e}",
            file.display()
        )
    })
}

fn parse(route: &str, file: &Path, text: &str) -> Result<RoutePolicy, String> {
    RoutePolicy::parse(text, &file.display().to_string()).map_err(|e| format!("route {route}: {e}"))
}

impl Route {
    /// From config (already validated there).
    pub fn new(c: &RouteConfig) -> Result<Self, String> {
        let scheme = match c.upstream.scheme() {
            "https" => Scheme::HTTPS,
            "http" => Scheme::HTTP,
            other => return Err(format!("route {}: scheme {other} is not http(s)", c.name)),
        };
        let host = c
            .upstream
            .host_str()
            .ok_or_else(|| format!("route {}: upstream has no host", c.name))?;
        let authority = match c.upstream.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority: Authority = authority
            .parse()
            .map_err(|_| format!("route {}: upstream host is not usable", c.name))?;
        let (host, prefix) = match &c.matcher {
            RouteMatch::Host(h) => (Some(h.to_ascii_lowercase()), None),
            RouteMatch::PathPrefix(p) => (None, Some(p.trim_end_matches('/').to_string())),
        };
        let mut drop_headers = Vec::with_capacity(c.drop_headers.len());
        for h in &c.drop_headers {
            drop_headers.push(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("route {}: `{h}` is not a header name", c.name))?,
            );
        }
        let policy = match &c.policy_file {
            Some(p) => Some(PolicySlot::load(&c.name, p)?),
            None => None,
        };
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("route {}: upstream host is not usable", c.name))?;
        Ok(Self {
            policy,
            case_insensitive: c.case_insensitive_upstream,
            host_header,
            metrics: crate::stats::RouteMetrics::default(),
            name: c.name.clone(),
            host,
            prefix,
            scheme,
            authority,
            base_path: c.upstream.path().trim_end_matches('/').to_string(),
            audience: c.audience.clone(),
            scopes: c.scopes.clone(),
            key: c.key.clone(),
            inject: c.inject.clone(),
            drop_headers,
        })
    }

    /// The upstream's `Host` (authority).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream URI for a request's (normalised) path remainder and query (already
    /// rewritten): the upstream gets the path the route's policy decided on.
    pub fn target(&self, rest: &NormalPath<'_>, query: Option<&str>) -> Result<Uri, Refusal> {
        let rest = rest.as_str();
        let mut pq = String::with_capacity(self.base_path.len() + rest.len() + 64);
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Refusal::BadRequest("the request path cannot be forwarded"))
    }
}

/// The routes, in config order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// `host[:port]` → lower-case host.
/// The host of a `Host` value or authority: port and a trailing `.` removed (case kept: it is
/// compared ignoring ASCII case).
fn host_only(h: &str) -> &str {
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(host, _)| host)
    };
    h.trim_end_matches('.')
}

impl Router {
    /// From the configured routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request, and the path remainder to forward (starting with `/`, or
    /// empty). Host routes win; then the longest matching path prefix. The path is normal
    /// (no dot segments, no `//`), so a prefix is matched on the path the upstream will get
    /// and the remainder cannot climb out of the upstream's base path.
    pub fn find<'a, 'p>(
        &'a self,
        host: Option<&str>,
        normal: &'p NormalPath<'_>,
    ) -> Result<(&'a Route, NormalPath<'p>), Refusal> {
        let path = normal.as_str();
        if let Some(h) = host.map(host_only)
            && let Some(r) = self.routes.iter().find(|r| {
                r.host
                    .as_deref()
                    .is_some_and(|rh| rh.eq_ignore_ascii_case(h))
            })
        {
            return Ok((r, normal.suffix(0).ok_or(Refusal::NoRoute)?));
        }
        let mut best: Option<(&Route, usize)> = None;
        for r in &self.routes {
            let Some(p) = &r.prefix else { continue };
            let matched = path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'));
            if matched && best.is_none_or(|(_, at)| at < p.len()) {
                best = Some((r, p.len()));
            }
        }
        // A prefix matched whole segments, so its end is a segment boundary.
        best.and_then(|(r, at)| Some((r, normal.suffix(at)?)))
            .ok_or(Refusal::NoRoute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_strips_port_and_dot() {
        assert_eq!(host_only("API.Example.test.:443"), "API.Example.test");
        assert_eq!(host_only("[::1]:8080"), "::1");
    }

    #[test]
    fn a_failing_policy_file_is_reported_once_per_distinct_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.cedar");
        std::fs::write(&f, "permit(principal, action, resource);").unwrap();
        let slot = PolicySlot::load("r", &f).unwrap();
        assert_eq!(slot.refresh("r"), Ok(None));
        assert!(!slot.new_error(None));
        assert!(slot.new_error(Some("broken")));
        assert!(!slot.new_error(Some("broken")));
        assert!(slot.new_error(Some("gone")));
        assert!(slot.new_error(None));
        // A change is taken on its second reading in a row, once.
        std::fs::write(&f, "forbid(principal, action, resource);").unwrap();
        assert!(slot.refresh("r").unwrap().is_none());
        assert!(slot.refresh("r").unwrap().is_some());
        assert!(slot.refresh("r").unwrap().is_none());
        // A text read once and then changed again (caught mid-write) is never taken.
        std::fs::write(
            &f,
            "forbid(principal, action, resource); permit(principal, action, resource);",
        )
        .unwrap();
        assert!(slot.refresh("r").unwrap().is_none());
        std::fs::write(&f, "permit(principal, action, resource);").unwrap();
        assert!(slot.refresh("r").unwrap().is_none());
        assert!(slot.refresh("r").unwrap().is_some());
    }

    fn route(name: &str, m: RouteMatch, upstream: &str) -> Route {
        Route::new(&RouteConfig {
            name: name.into(),
            matcher: m,
            upstream: url::Url::parse(upstream).unwrap(),
            audience: "a".into(),
            scopes: vec![],
            key: name.into(),
            inject: Inject::Query { param: "k".into() },
            drop_headers: vec!["cookie".into()],
            policy_file: None,
            case_insensitive_upstream: false,
        })
        .unwrap()
    }

    #[test]
    fn longest_prefix_host_and_join() {
        let r = Router::new(vec![
            route(
                "a",
                RouteMatch::PathPrefix("/api/".into()),
                "https://a.test/v1/",
            ),
            route(
                "b",
                RouteMatch::PathPrefix("/api/b".into()),
                "http://127.0.0.1:9/",
            ),
            route("h", RouteMatch::Host("h.proxy".into()), "https://h.test"),
        ]);
        let find = |host: Option<&str>, p: &str| {
            let n = NormalPath::new(p).unwrap();
            r.find(host, &n)
                .map(|(rt, rest)| (rt.name.clone(), rest.as_str().to_string()))
        };
        let target = |name: &str, rest: &str, q: Option<&str>| {
            let rt = r.routes().iter().find(|rt| rt.name == name).unwrap();
            rt.target(&NormalPath::new(rest).unwrap(), q)
                .unwrap()
                .to_string()
        };
        assert_eq!(find(None, "/api/x/y"), Ok(("a".into(), "/x/y".into())));
        assert_eq!(
            target("a", "/x/y", Some("q=1")),
            "https://a.test/v1/x/y?q=1"
        );
        assert_eq!(find(None, "/api/b/z"), Ok(("b".into(), "/z".into())));
        assert_eq!(target("b", "/z", None), "http://127.0.0.1:9/z");
        assert_eq!(find(None, "/api/b"), Ok(("b".into(), "".into())));
        let rt = &r.routes()[1];
        let n = NormalPath::new("/api/b").unwrap();
        let (_, rest) = r.find(None, &n).unwrap();
        assert_eq!(
            rt.target(&rest, None).unwrap().to_string(),
            "http://127.0.0.1:9/"
        );
        // A prefix matches whole segments only.
        assert_eq!(find(None, "/api/bc").unwrap().0, "a");
        assert_eq!(find(None, "/apix"), Err(Refusal::NoRoute));
        assert_eq!(
            find(Some("H.Proxy:8081"), "/api/x"),
            Ok(("h".into(), "/api/x".into()))
        );
        assert_eq!(target("h", "/", None), "https://h.test/");
        // Matched on the normal form: dot segments cannot climb out of a prefix into
        // another route's, nor out of the upstream's base path.
        assert_eq!(find(None, "/api/b/../x"), Ok(("a".into(), "/x".into())));
        assert_eq!(find(None, "/api//b//z"), Ok(("b".into(), "/z".into())));
        assert_eq!(
            find(None, "/api/b/%2e%2e/%2e%2e/admin"),
            Err(Refusal::NoRoute)
        );
    }
}
