//! Which route a request takes (by Host, else the longest path prefix) and the upstream URI it
//! is sent to: the route's prefix stripped, the rest joined to the upstream's base path, the
//! query kept.

use hyper::Uri;
use hyper::header::HeaderName;
use hyper::http::uri::{Authority, Scheme};
use mayfly_config::{Inject, RouteConfig, RouteMatch};
use mayfly_policy::RoutePolicy;

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
    pub policy: Option<RoutePolicy>,
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
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    format!(
                        "route {}: cannot read policy_file {}: {e}",
                        c.name,
                        p.display()
                    )
                })?;
                Some(
                    RoutePolicy::parse(&text, &p.display().to_string())
                        .map_err(|e| format!("route {}: {e}", c.name))?,
                )
            }
            None => None,
        };
        Ok(Self {
            policy,
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

    /// The upstream URI for a request's path remainder and query (already rewritten).
    pub fn target(&self, rest: &str, query: Option<&str>) -> Result<Uri, Refusal> {
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
fn host_only(h: &str) -> String {
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(host, _)| host)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
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
    /// empty). Host routes win; then the longest matching path prefix. Paths with `.` or `..`
    /// segments (also percent-encoded) are refused, so a caller cannot climb out of the
    /// upstream's base path.
    pub fn find<'a, 'p>(
        &'a self,
        host: Option<&str>,
        path: &'p str,
    ) -> Result<(&'a Route, &'p str), Refusal> {
        if path.split('/').any(|seg| {
            matches!(
                seg.to_ascii_lowercase().replace("%2e", ".").as_str(),
                "." | ".."
            )
        }) {
            return Err(Refusal::BadRequest(
                "the path holds `.` or `..` segments; send a normalised path",
            ));
        }
        if let Some(h) = host.map(host_only)
            && let Some(r) = self.routes.iter().find(|r| r.host.as_deref() == Some(&h))
        {
            return Ok((r, path));
        }
        let mut best: Option<(&Route, &str)> = None;
        for r in &self.routes {
            let Some(p) = &r.prefix else { continue };
            let matched = path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'));
            if matched
                && best.is_none_or(|(b, _)| b.prefix.as_ref().is_some_and(|bp| bp.len() < p.len()))
            {
                best = Some((r, &path[p.len()..]));
            }
        }
        best.ok_or(Refusal::NoRoute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (rt, rest) = r.find(None, "/api/x/y").unwrap();
        assert_eq!((rt.name.as_str(), rest), ("a", "/x/y"));
        assert_eq!(
            rt.target(rest, Some("q=1")).unwrap().to_string(),
            "https://a.test/v1/x/y?q=1"
        );
        let (rt, rest) = r.find(None, "/api/b/z").unwrap();
        assert_eq!((rt.name.as_str(), rest), ("b", "/z"));
        assert_eq!(
            rt.target(rest, None).unwrap().to_string(),
            "http://127.0.0.1:9/z"
        );
        let (rt, rest) = r.find(None, "/api/b").unwrap();
        assert_eq!((rt.name.as_str(), rest), ("b", ""));
        assert_eq!(
            rt.target(rest, None).unwrap().to_string(),
            "http://127.0.0.1:9/"
        );
        // A prefix matches whole segments only.
        let (rt, _) = r.find(None, "/api/bc").unwrap();
        assert_eq!(rt.name, "a");
        assert_eq!(r.find(None, "/apix").unwrap_err(), Refusal::NoRoute);
        let (rt, rest) = r.find(Some("H.Proxy:8081"), "/api/x").unwrap();
        assert_eq!((rt.name.as_str(), rest), ("h", "/api/x"));
        assert_eq!(rt.target("", None).unwrap().to_string(), "https://h.test/");
        for bad in ["/api/../admin", "/api/%2e%2E/admin", "/api/./x"] {
            assert!(
                matches!(r.find(None, bad), Err(Refusal::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
