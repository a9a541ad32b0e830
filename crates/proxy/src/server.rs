//! The proxy: accept HTTP/1.1 and HTTP/2 (prior knowledge) from callers, check each call's
//! token, and forward it with the route's key; `/.mayfly/healthz` and `/.mayfly/metrics` are
//! its own.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mayfly_client::status::{StatusListOptions, StatusLists};
use mayfly_config::{ProxyConfig, RevocationMode};
use mayfly_crypto::{Kek, SigningKey};
use mayfly_proto::path::NormalPath;
use mayfly_proto::{AuditEvent, Clock, Decision, EventKind};
use mayfly_store::{AuditLog, Store, StoreError};
use tokio::net::TcpListener;

use crate::audit::{AuditQueue, Usage};
use crate::body::{ProxyBody, full};
use crate::error::Refusal;
use crate::forward::{self, UpstreamClient};
use crate::keys::KeyRing;
use crate::revocation::{Revocation, RevocationCheck};
use crate::route::{Route, Router};
use crate::verify::{Caller, Issuer, Verifier};

/// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
const MAX_HEAD: usize = 64 * 1024;
/// Time a caller has to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time open calls get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// What the proxy needs.
pub struct ProxyOptions {
    /// `[proxy]`.
    pub config: ProxyConfig,
    /// The issuer whose tokens are accepted.
    pub issuer: String,
    /// The proxy's own client at the issuer, for introspection; required when
    /// `config.revocation` is introspection, unused with status lists.
    pub credentials: Option<ProxyCredentials>,
    /// The store holding the keys.
    pub store: Store,
    /// The master key the keys are sealed under.
    pub kek: Arc<Kek>,
    /// The clock (expiry of keys and tokens).
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: AuditLog,
}

/// The proxy's own client at the issuer (introspection).
pub struct ProxyCredentials {
    /// Its client id.
    pub client_id: String,
    /// Its key (introspection assertions).
    pub signer: SigningKey,
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration problem found while building routes or TLS.
    #[error("{0}")]
    Config(String),
    /// The store could not be read.
    #[error("cannot read the keys from the store: {0}")]
    Store(#[from] StoreError),
}

struct Inner {
    router: Router,
    keys: KeyRing,
    verifier: Verifier,
    revocation: RevocationCheck,
    client: UpstreamClient,
    audit: AuditQueue,
    usage: Usage,
    store: Store,
    kek: Arc<Kek>,
    clock: Arc<dyn Clock>,
    upstream_timeout: Duration,
    reload_interval: Duration,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// A running proxy; cheap to clone.
#[derive(Clone)]
pub struct Proxy(Arc<Inner>);

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.0.router.routes().len())
            .finish()
    }
}

fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        10.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// The revocation check `config.revocation` asks for.
fn revocation_check(
    config: &ProxyConfig,
    credentials: Option<ProxyCredentials>,
    issuer: Arc<Issuer>,
    verifier: &Verifier,
) -> Result<RevocationCheck, StartError> {
    match config.revocation {
        RevocationMode::Introspection => {
            let c = credentials.ok_or_else(|| {
                StartError::Config(
                    "proxy.revocation = \"introspection\" needs the proxy's own client (proxy.client_id and proxy.key_file); or set proxy.revocation = \"status_list\"".into(),
                )
            })?;
            Ok(RevocationCheck::Introspection(Revocation::new(
                issuer,
                c.client_id,
                c.signer,
                config.revocation_cache,
            )))
        }
        RevocationMode::StatusList => {
            let options = StatusListOptions::for_issuer(&issuer.issuer);
            let lists = StatusLists::new(options, verifier.key_source())
                .map_err(|e| StartError::Config(e.to_string()))?
                .with_fetch_hook(Box::new(|r| {
                    metrics::counter!("mayfly_status_list_fetches_total", "result" => r.as_str())
                        .increment(1);
                }));
            tracing::info!(
                "revocation: offline against the issuer's status lists (no introspection per token)"
            );
            Ok(RevocationCheck::StatusList(lists))
        }
    }
}

/// `Authorization: Bearer TOKEN` (scheme case-insensitive, exactly one header).
fn bearer(h: &HeaderMap) -> Result<&str, Refusal> {
    let mut all = h.get_all(AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Err(Refusal::MissingToken);
    };
    if all.next().is_some() {
        return Err(Refusal::BadRequest("send one Authorization header"));
    }
    let v = v
        .to_str()
        .map_err(|_| Refusal::InvalidToken("the Authorization header is not text".into()))?;
    match v.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            Ok(t.trim())
        }
        _ => Err(Refusal::MissingToken),
    }
}

/// What one call came to, for the audit log and metrics.
struct Outcome<'a> {
    /// `None`: refused before a route was chosen (a path that cannot be normalised).
    route: Option<&'a Route>,
    caller: Option<Caller>,
    status: u16,
    reason: &'a str,
    allowed: bool,
}

impl Proxy {
    /// Build the proxy and load the routes' keys once (a missing key is logged, not fatal;
    /// an unreadable store is). Starts the reload loop.
    pub async fn start(o: ProxyOptions) -> Result<Self, StartError> {
        let routes = o
            .config
            .routes
            .iter()
            .map(Route::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Config)?;
        let client =
            forward::client(o.config.upstream_ca_file.as_deref()).map_err(StartError::Config)?;
        let http = mayfly_client::http().map_err(|e| StartError::Config(e.to_string()))?;
        let issuer = Arc::new(Issuer::new(http, &o.issuer));
        let verifier =
            Verifier::new(issuer.clone()).map_err(|e| StartError::Config(e.to_string()))?;
        let revocation = revocation_check(&o.config, o.credentials, issuer, &verifier)?;
        let inner = Inner {
            router: Router::new(routes),
            keys: KeyRing::default(),
            verifier,
            revocation,
            client,
            audit: AuditQueue::new(o.audit),
            usage: Usage::default(),
            store: o.store,
            kek: o.kek,
            clock: o.clock,
            upstream_timeout: o.config.upstream_timeout,
            reload_interval: o.config.reload_interval,
            metrics: metrics_handle(),
        };
        let proxy = Proxy(Arc::new(inner));
        proxy.reload().await?;
        // Warm the JWKS cache; failure is not fatal (the issuer may start later).
        proxy.0.verifier.warm(proxy.0.clock.now()).await;
        let weak = Arc::downgrade(&proxy.0);
        let every = proxy.0.reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = Proxy(inner).reload().await {
                    tracing::warn!(error = %e, "cannot reload keys from the store; keeping the loaded ones");
                }
            }
        });
        Ok(proxy)
    }

    /// Look at the store now (rotated, extended, added or removed keys) and flush key usage.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let i = &self.0;
        self.reload_policies().await;
        i.usage.flush(&i.store).await;
        i.keys
            .reload(&i.store, &i.kek, i.router.routes(), i.clock.now())
            .await
    }

    /// Re-read the routes' policy files; a file that changed and still fits the schema takes
    /// effect now, one that does not is logged (and counted) and the policy in force stays.
    /// Each outcome is also a `policy_change` audit event: who may call what through a key is
    /// as much the log's business as the calls themselves.
    async fn reload_policies(&self) {
        // File reads and Cedar parsing off the runtime's workers, which serve calls.
        let me = self.clone();
        let outcomes = match tokio::task::spawn_blocking(move || me.refresh_policies()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "route policy refresh failed; the policies in force stay");
                return;
            }
        };
        for (route, decision, reason) in outcomes {
            let mut e = AuditEvent::new(EventKind::PolicyChange, self.0.clock.now(), decision);
            e.route = Some(route);
            e.reason = Some(reason);
            self.0.audit.record(e).await;
        }
    }

    /// Refresh every route's policy (blocking); the changes and first failures, to audit.
    fn refresh_policies(&self) -> Vec<(String, Decision, String)> {
        let mut outcomes = Vec::new();
        for r in self.0.router.routes() {
            let Some(slot) = &r.policy else { continue };
            match slot.refresh(&r.name) {
                Ok(None) => {}
                Ok(Some(digest)) => {
                    let sha = mayfly_crypto::hex(&digest);
                    tracing::info!(route = %r.name, sha256 = %sha, "route policy changed; the new one decides from now on");
                    outcomes.push((r.name.clone(), Decision::Allow, format!("sha256:{sha}")));
                }
                Err(refused) if refused.first => {
                    metrics::counter!("mayfly_proxy_policy_reload_failures_total", "route" => r.name.clone()).increment(1);
                    tracing::error!(error = %refused.error, "route policy not reloaded; the one in force stays");
                    outcomes.push((r.name.clone(), Decision::Deny, "policy_refused".into()));
                }
                Err(_) => {}
            }
        }
        outcomes
    }

    /// Number of routes.
    pub fn routes(&self) -> usize {
        self.0.router.routes().len()
    }

    /// Serve callers on `listener` until `shutdown` resolves; then let open calls finish (up
    /// to 30 s), wait for their audit events and flush key usage.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(MAX_HEAD)
            .header_read_timeout(HEAD_TIMEOUT)
            .timer(TokioTimer::new());
        builder
            .http2()
            .max_header_list_size(MAX_HEAD as u32)
            .max_concurrent_streams(256)
            .timer(TokioTimer::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("calls still open after 30 s at shutdown; closing them");
        }
        self.finish().await;
        Ok(())
    }

    /// Wait for queued audit events and write key usage (clean shutdown).
    pub async fn finish(&self) {
        if !self.0.audit.drain(Duration::from_secs(10)).await {
            tracing::error!("audit events still uncommitted after 10 s at shutdown");
        }
        self.0.usage.flush(&self.0.store).await;
    }

    /// One call.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        match req.uri().path() {
            "/.mayfly/healthz" => {
                return json_response(200, r#"{"status":"ok"}"#);
            }
            "/.mayfly/metrics" => {
                return match &self.0.metrics {
                    Some(h) => {
                        let mut r = Response::new(full(h.render()));
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    }
                    None => json_response(
                        503,
                        r#"{"error":"temporarily_unavailable","error_description":"metrics are not available in this process"}"#,
                    ),
                };
            }
            _ => {}
        }
        // The URI is taken out of the request (leaving `/`, no allocation) so that the
        // normalised path can borrow it while the request moves on to the upstream.
        let uri = std::mem::take(req.uri_mut());
        let now = self.0.clock.now();
        let path = match NormalPath::new(uri.path()) {
            Ok(p) => p,
            Err(e) => {
                let refusal = Refusal::BadPath(e);
                tracing::info!(
                    error = refusal.reason(),
                    "refused a path that cannot be normalised safely"
                );
                metrics::counter!("mayfly_proxy_requests_total", "route" => "", "status" => refusal.status().as_str().to_string()).increment(1);
                let resp = refusal.response();
                self.audit(
                    Outcome {
                        route: None,
                        caller: None,
                        status: resp.status().as_u16(),
                        reason: refusal.reason(),
                        allowed: false,
                    },
                    now,
                    started.elapsed(),
                )
                .await;
                return resp;
            }
        };
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()));
        let (route, rest) = match self.0.router.find(host, &path) {
            Ok(found) => found,
            Err(refusal) => {
                metrics::counter!("mayfly_proxy_requests_total", "route" => "", "status" => refusal.status().as_str().to_string()).increment(1);
                return refusal.response();
            }
        };
        // One spelling per path for an upstream that ignores case, decided and forwarded.
        let rest = if route.case_insensitive {
            rest.into_ascii_lowercase()
        } else {
            rest
        };
        let mut caller: Option<Caller> = None;
        let result = self
            .forward(req, route, &rest, uri.query(), now, &mut caller)
            .await;
        let latency = started.elapsed();
        let (resp, reason, allowed) = match result {
            Ok(resp) => (resp, "forwarded", true),
            Err(refusal) => {
                tracing::info!(route = %route.name, jti = caller.as_ref().map_or("-", |c| c.jti.as_str()), error = refusal.code(), "refused");
                (refusal.response(), refusal.reason(), false)
            }
        };
        let status = resp.status().as_u16();
        route.metrics.record(&route.name, status, latency);
        self.audit(
            Outcome {
                route: Some(route),
                caller,
                status,
                reason,
                allowed,
            },
            now,
            latency,
        )
        .await;
        resp
    }

    /// Check the token and the route's policy, and forward: the policy decides on `rest`, the
    /// normalised path, and the upstream is sent that same path.
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
        rest: &NormalPath<'_>,
        query: Option<&str>,
        now: i64,
        caller_out: &mut Option<Caller>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let i = &self.0;
        let token = bearer(req.headers())?;
        let caller = i.verifier.verify(token, route, now).await?;
        let caller = caller_out.insert(caller);
        i.revocation.check(token, caller, now).await?;
        crate::verify::check_scopes(caller, route)?;
        if let Some(slot) = &route.policy {
            let policy = slot.current();
            // Decoded (so that `/%61dmin` is `/admin` to a `forbid`), and with the same
            // segments as the path forwarded: normalising refused `%2F` and removed `..`.
            let path = rest.decoded();
            let d = policy.decide(&mayfly_policy::RouteRequest {
                subject: &caller.sub,
                client_id: caller.client_id.as_deref().unwrap_or(""),
                method: req.method().as_str(),
                route: &route.name,
                path: &path,
                audience: &route.audience,
                scopes: &caller.scopes,
            });
            if !d.allow {
                tracing::info!(route = %route.name, jti = %caller.jti, reasons = ?d.reasons, "the route policy denied the call");
                return Err(Refusal::PolicyDenied {
                    route: route.name.clone(),
                    method: req.method().to_string(),
                    path: path.into_owned(),
                });
            }
        }
        let key = i.keys.get(route, now)?;
        let method = req.method().clone();
        let up = forward::upstream_request(req, route, rest, query, &key)?;
        let resp = match tokio::time::timeout(i.upstream_timeout, i.client.request(up)).await {
            Err(_) => {
                tracing::warn!(route = %route.name, jti = %caller.jti, "the upstream did not answer in time");
                return Err(Refusal::UpstreamTimeout(route.name.clone()));
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, jti = %caller.jti, error = %forward::describe(&e, &key), "the upstream could not be reached");
                return Err(Refusal::UpstreamUnreachable(route.name.clone()));
            }
            Ok(Ok(r)) => r,
        };
        i.usage.record(&key.entry, &caller.sub, now);
        if forward::encoded_body(&resp, &method) {
            tracing::warn!(route = %route.name, jti = %caller.jti, "the upstream sent a compressed body despite Accept-Encoding: identity; refused, it cannot be scrubbed");
            return Err(Refusal::UpstreamEncoded(route.name.clone()));
        }
        tracing::debug!(route = %route.name, jti = %caller.jti, status = resp.status().as_u16(), "forwarded");
        Ok(forward::downstream_response(
            resp,
            key,
            &route.name,
            &method,
        ))
    }

    async fn audit(&self, o: Outcome<'_>, now: i64, latency: Duration) {
        let mut e = AuditEvent::new(
            EventKind::ProxyCall,
            now,
            if o.allowed {
                Decision::Allow
            } else {
                Decision::Deny
            },
        );
        e.route = o.route.map(|r| r.name.clone());
        e.audience = o.route.map(|r| r.audience.clone());
        e.status = Some(o.status);
        e.latency_us = Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        e.reason = Some(o.reason.to_string());
        if let Some(c) = o.caller {
            e.identity = Some(c.sub);
            e.client = c.client_id;
            e.jti = Some(c.jti);
            e.exp = Some(c.exp);
            e.scopes = c.scopes;
        }
        self.0.audit.record(e).await;
    }
}

fn json_response(status: u16, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
