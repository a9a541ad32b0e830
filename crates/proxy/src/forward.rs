//! The upstream side: a pooled hyper client over rustls (system roots plus
//! `upstream_ca_file`), never following redirects; the request rewritten for the upstream (the
//! caller's credentials and hop-by-hop headers out, the key in) and the response rewritten for
//! the caller (hop-by-hop headers and any header holding the key out, the body scrubbed).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, HOST, HeaderMap,
    HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mayfly_proto::path::NormalPath;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::body::{BoxError, ProxyBody};
use crate::error::Refusal;
use crate::keys::RouteKey;
use crate::route::Route;
use crate::scrub::{self, ScrubBody};

/// The client towards upstreams; request bodies stream straight from the caller.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Build the upstream client: TLS with the system's roots and those of `ca_file`.
pub fn client(ca_file: Option<&Path>) -> Result<UpstreamClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(p) = ca_file {
        let certs = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("cannot read proxy.upstream_ca_file {}: {e}", p.display()))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| {
                format!(
                    "proxy.upstream_ca_file {} is not PEM certificates: {e}",
                    p.display()
                )
            })?;
            roots
                .add(c)
                .map_err(|e| format!("proxy.upstream_ca_file {}: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "proxy.upstream_ca_file {} holds no certificate",
                p.display()
            ));
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted roots for upstream TLS (no system roots found, no proxy.upstream_ca_file): https upstreams will fail"
        );
    } else {
        tracing::debug!(
            system_roots = added,
            total = roots.len(),
            "upstream TLS roots loaded"
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(https))
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// headers the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        h.remove(n);
    }
}

/// The request for the upstream: the URI rewritten (the normalised path remainder the policy
/// decided on joined to the base path, the caller's query as it came, the key in the query
/// when the route says so), the caller's `Authorization`, hop-by-hop headers, the route's
/// `drop_headers` and any header named like the injected one removed, `Host` set to the
/// upstream's, the key injected, and `Accept-Encoding: identity` so that the response can be
/// scrubbed.
pub fn upstream_request(
    mut req: Request<Incoming>,
    route: &Route,
    rest: &NormalPath<'_>,
    query: Option<&str>,
    key: &RouteKey,
) -> Result<Request<Incoming>, Refusal> {
    let uri = match key.injection.query(query) {
        Some(q) => route.target(rest, Some(&q))?,
        None => route.target(rest, query)?,
    };
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    h.remove(AUTHORIZATION);
    // The upstream's own Host (the client would otherwise format one per request).
    h.insert(HOST, route.host_header.clone());
    for n in &route.drop_headers {
        h.remove(n);
    }
    if let Some(n) = key.injection.header_name() {
        h.remove(n);
    }
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some((n, v)) = key.injection.header() {
        h.insert(n, v);
    }
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Ok(req)
}

/// The caller's response: hop-by-hop headers and any header holding a form of the key
/// removed, the body scrubbed (so its length may change: `Content-Length` goes).
pub fn downstream_response(
    resp: Response<Incoming>,
    key: Arc<RouteKey>,
    route: &str,
    method: &Method,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let dropped = scrub::headers(&mut parts.headers, &key);
    if dropped > 0 {
        tracing::warn!(
            route,
            headers = dropped,
            "dropped upstream response headers that held the route's key"
        );
    }
    if !bodyless(parts.status, method) {
        parts.headers.remove(CONTENT_LENGTH);
    }
    let body = ScrubBody::new(body, key)
        .map_err(BoxError::from)
        .boxed_unsync();
    Response::from_parts(parts, body)
}

/// Answers that never have a body (RFC 9110 §6.4.1).
fn bodyless(status: StatusCode, method: &Method) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether an upstream response carries a body in a content coding other than `identity`
/// (RFC 9110 §8.4), which the scrubber cannot see into. Bodyless answers are fine.
pub fn encoded_body(resp: &Response<Incoming>, method: &Method) -> bool {
    !bodyless(resp.status(), method)
        && resp
            .headers()
            .get_all(CONTENT_ENCODING)
            .iter()
            .any(|v| match v.to_str() {
                Ok(list) => list
                    .split(',')
                    .map(str::trim)
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity")),
                Err(_) => true,
            })
}

/// An upstream failure's text for the log, unless it would hold the key.
pub fn describe(e: &hyper_util::client::legacy::Error, key: &RouteKey) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if key.injection.leaks_in(text.as_bytes()) {
        "(withheld: the error text held the key)".into()
    } else {
        text
    }
}
