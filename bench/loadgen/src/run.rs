//! `run`: token requests over keep-alive HTTP/1.1, closed or open loop.
//!
//! Every request carries its own ES256 assertion (fresh jti), all signed before the clock starts,
//! so the load generator's core spends its time on HTTP rather than on ECDSA.
//!
//! Closed loop: `--concurrency` connections, each sending its next request as soon as the previous
//! answer arrives; latency is send-to-answer. Open loop (`--rate`): request i is scheduled at
//! start + i / rate by a dispatcher thread, and its latency is measured from that scheduled time,
//! so time spent waiting for a free connection or a slow server counts (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::keys::{ClientKey, run_nonce, unix_now};
use crate::stats::{Latency, latency};

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Token endpoint, plain http (e.g. http://127.0.0.1:8080/oauth2/token).
    #[arg(long)]
    url: String,
    /// The assertion's `aud` (the server's issuer or token endpoint).
    #[arg(long)]
    aud: String,
    #[arg(long, default_value = "bench-client")]
    client_id: String,
    /// Directory holding client.pkcs8.der (from `keygen`).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "https://api.example.test")]
    resource: String,
    #[arg(long, default_value = "read")]
    scope: String,
    /// Requests to send (closed loop); with --rate and --duration, rate x duration is used.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Connections (one in-flight request each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open loop at this many requests per second (latency from the scheduled send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds: the open-loop run length, or a time cap on a closed-loop run.
    #[arg(long)]
    duration: Option<f64>,
    /// Untimed closed-loop requests sent first (they use their own assertions).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Runtime threads for the HTTP client (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's process id, to report its CPU use (and the rest of the machine's) during
    /// the measured phase.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// `client-credentials` (a fresh client assertion per request) or `token-exchange` (a fresh
    /// Kubernetes-shaped subject token per request, signed with the same key as its issuer's, and
    /// no client authentication).
    #[arg(long, default_value = "client-credentials")]
    grant: String,
    /// token-exchange: the subject tokens' `iss`.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    subject_issuer: String,
    /// An extra form parameter `NAME=VALUE` on every request (repeatable), e.g. `lease=ID`.
    #[arg(long = "param")]
    params: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    mode: &'static str,
    url: String,
    concurrency: usize,
    client_threads: usize,
    target_rate: Option<f64>,
    presigned_assertions: usize,
    presign_seconds: f64,
    warmup_requests: usize,
    sent: usize,
    ok: usize,
    error_count: usize,
    errors: BTreeMap<String, usize>,
    reconnects: usize,
    elapsed_s: f64,
    tokens_per_s: f64,
    /// CPU use in cores during the measured phase.
    cpu: CpuUse,
    latency_ms: Option<Latency>,
    /// Open loop only: how late the load generator picked up requests after their scheduled time
    /// (large values mean all connections were busy, or the generator itself fell behind).
    pickup_lag_ms: Option<Latency>,
    /// The first access token's JOSE header and its claim names, to show what was measured.
    token_header: Option<serde_json::Value>,
    token_claims: Option<Vec<String>>,
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must be plain http://HOST:PORT/PATH (no TLS in this benchmark)");
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: this benchmark only targets this machine");
    }
    Ok(Target {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
    })
}

/// application/x-www-form-urlencoded for one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Signs `count` assertions across the cores this process may use.
fn presign(args: &RunArgs, count: usize) -> anyhow::Result<Vec<Bytes>> {
    let key = ClientKey::load(&args.key)?;
    let nonce = run_nonce()?;
    let iat = unix_now();
    let exchange = match args.grant.as_str() {
        "client-credentials" => false,
        "token-exchange" => true,
        other => anyhow::bail!("--grant {other}: use client-credentials or token-exchange"),
    };
    let mut extra = String::new();
    for p in &args.params {
        let (name, value) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param {p}: write NAME=VALUE"))?;
        extra.push_str(&format!("{}={}&", form_encode(name), form_encode(value)));
    }
    let prefix = if exchange {
        format!(
            "grant_type={}&subject_token_type={}&scope={}&audience={}&{extra}subject_token=",
            form_encode("urn:ietf:params:oauth:grant-type:token-exchange"),
            form_encode("urn:ietf:params:oauth:token-type:jwt"),
            form_encode(&args.scope),
            form_encode(&args.resource),
        )
    } else {
        format!(
            "grant_type=client_credentials&client_assertion_type={}&scope={}&resource={}&{extra}client_assertion=",
            form_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            form_encode(&args.scope),
            form_encode(&args.resource),
        )
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1));
    let chunk = count.div_ceil(threads.max(1));
    let parts: Vec<anyhow::Result<Vec<Bytes>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, nonce, prefix) = (&key, &nonce, &prefix);
                s.spawn(move || {
                    let range = (t * chunk)..((t + 1) * chunk).min(count);
                    range
                        .map(|i| {
                            let jti = format!("{nonce}-{i}");
                            let a = if exchange {
                                key.service_account_token(&args.subject_issuer, &jti, iat)?
                            } else {
                                key.assertion(&args.client_id, &args.aud, &jti, iat)?
                            };
                            Ok(Bytes::from(format!("{prefix}{a}")))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signing thread failed")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

/// Where a worker gets its next request: a shared counter (closed loop) or the dispatcher
/// (open loop), with the request's scheduled time.
enum Source {
    Counter {
        next: AtomicUsize,
        end: usize,
        deadline: Option<Instant>,
    },
    Scheduled(Mutex<mpsc::UnboundedReceiver<(usize, Instant)>>),
}

impl Source {
    async fn next(&self) -> Option<(usize, Option<Instant>)> {
        match self {
            Source::Counter {
                next,
                end,
                deadline,
            } => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                (i < *end).then_some((i, None))
            }
            Source::Scheduled(rx) => rx.lock().await.recv().await.map(|(i, t)| (i, Some(t))),
        }
    }
}

struct Shared {
    target: Target,
    bodies: Vec<Bytes>,
    record: bool,
    inspected: AtomicBool,
}

#[derive(Default)]
struct WorkerResult {
    sent: usize,
    ok: usize,
    latencies: Vec<u64>,
    pickup_lags: Vec<u64>,
    errors: BTreeMap<String, usize>,
    reconnects: usize,
    last_done: Option<Instant>,
    token: Option<(serde_json::Value, Vec<String>)>,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    shared: &Shared,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let req = Request::post(shared.target.path.as_str())
        .header(HOST, shared.target.host.as_str())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(body))?;
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((parts.status, bytes))
}

/// A process's user + system CPU seconds, from /proc/PID/stat (Linux only; None elsewhere).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this benchmark targets.
    Some((utime + stime) / 100.0)
}

/// CPU seconds the whole machine spent busy (all but idle and iowait), from /proc/stat.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy / 100.0)
}

/// CPU use during the measured phase, in cores (CPU seconds per wall second).
#[derive(Serialize, Default)]
struct CpuUse {
    /// The load generator itself: near 1.0 on its one pinned core would make it the limit.
    client: Option<f64>,
    /// The server (with --server-pid): near 1.0 on one core means the server was CPU-bound.
    server: Option<f64>,
    /// Everything else on the machine (with --server-pid): noise from other work, if well
    /// above zero.
    other: Option<f64>,
}

struct CpuSample {
    client: Option<f64>,
    server: Option<f64>,
    machine: Option<f64>,
    at: Instant,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> Self {
        Self {
            client: process_cpu_seconds("self"),
            server: server_pid.and_then(|p| process_cpu_seconds(&p.to_string())),
            machine: machine_busy_seconds(),
            at: Instant::now(),
        }
    }

    fn since(&self, before: &CpuSample) -> CpuUse {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| Some((a? - b?) / wall);
        let client = d(self.client, before.client);
        let server = d(self.server, before.server);
        let machine = d(self.machine, before.machine);
        let other = match (machine, server, client) {
            (Some(m), Some(s), Some(c)) => Some((m - s - c).max(0.0)),
            _ => None,
        };
        CpuUse {
            client,
            server,
            other,
        }
    }
}

fn error_key(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned());
    format!("{} {code}", status.as_u16())
}

/// The first token's header and claim names, so the report shows what was issued.
fn inspect_token(body: &[u8]) -> Option<(serde_json::Value, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = v.get("access_token")?.as_str()?;
    let mut parts = token.split('.');
    let header = serde_json::from_slice(&B64.decode(parts.next()?).ok()?).ok()?;
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts.next()?).ok()?).ok()?;
    let names = claims.as_object()?.keys().cloned().collect();
    Some((header, names))
}

async fn worker(shared: Arc<Shared>, source: Arc<Source>) -> WorkerResult {
    let mut r = WorkerResult::default();
    // Connect before the first request so connection set-up is not part of its latency; a
    // failure here is retried (and counted) at the first request.
    let mut conn = connect(shared.target.addr).await.ok();
    while let Some((i, scheduled)) = source.next().await {
        let picked = Instant::now();
        let start = scheduled.unwrap_or(picked);
        if let Some(s) = scheduled {
            r.pickup_lags
                .push(picked.saturating_duration_since(s).as_nanos() as u64);
        }
        r.sent += 1;
        if conn.is_none() {
            match connect(shared.target.addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    *r.errors.entry(format!("connect: {e}")).or_default() += 1;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match send(c, &shared, shared.bodies[i].clone()).await {
            Ok((status, body)) => {
                let done = Instant::now();
                r.last_done = Some(done);
                if status == StatusCode::OK {
                    r.ok += 1;
                    if shared.record {
                        r.latencies
                            .push(done.duration_since(start).as_nanos() as u64);
                        if !shared.inspected.swap(true, Ordering::Relaxed) {
                            r.token = inspect_token(&body);
                        }
                    }
                } else {
                    *r.errors.entry(error_key(status, &body)).or_default() += 1;
                }
            }
            Err(e) => {
                *r.errors.entry(format!("transport: {e}")).or_default() += 1;
                conn = None;
                r.reconnects += 1;
            }
        }
    }
    r
}

struct Phase {
    results: Vec<WorkerResult>,
    started: Instant,
}

/// Open loop: the dispatcher's channel, the rate and the request count.
type Dispatch = (mpsc::UnboundedSender<(usize, Instant)>, f64, usize);

async fn phase(
    shared: Arc<Shared>,
    source: Source,
    concurrency: usize,
    dispatch: Option<Dispatch>,
) -> Phase {
    let source = Arc::new(source);
    let started = Instant::now();
    if let Some((tx, rate, n)) = dispatch {
        spawn_dispatcher(tx, rate, n, started);
    }
    let handles: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(shared.clone(), source.clone())))
        .collect();
    let mut results = Vec::with_capacity(concurrency);
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => {
                let mut r = WorkerResult::default();
                r.errors.insert(format!("worker: {e}"), 1);
                results.push(r);
            }
        }
    }
    Phase { results, started }
}

/// Open loop: a thread that releases request i at `started + i / rate` (thread::sleep is
/// precise to tens of microseconds, tokio's timer only to a millisecond). Dropping the sender at
/// the end lets the workers finish.
fn spawn_dispatcher(
    tx: mpsc::UnboundedSender<(usize, Instant)>,
    rate: f64,
    n: usize,
    started: Instant,
) {
    std::thread::spawn(move || {
        for i in 0..n {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((i, at)).is_err() {
                return;
            }
        }
    });
}

/// Run the warm-up requests (not recorded); returns their errors, labelled as warm-up.
fn warmup(
    rt: &tokio::runtime::Runtime,
    args: &RunArgs,
    warm_bodies: Vec<Bytes>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut warm_errors = BTreeMap::new();
    if args.warmup > 0 {
        let shared = Arc::new(Shared {
            target: parse_url(&args.url)?,
            bodies: warm_bodies,
            record: false,
            inspected: AtomicBool::new(false),
        });
        let source = Source::Counter {
            next: AtomicUsize::new(0),
            end: args.warmup,
            deadline: None,
        };
        let p = rt.block_on(phase(shared, source, args.concurrency, None));
        for r in p.results {
            for (k, v) in r.errors {
                *warm_errors.entry(format!("warmup {k}")).or_default() += v;
            }
        }
    }

    Ok(warm_errors)
}

/// Fold the workers' results into the report.
fn tally(report: &mut Report, p: Phase, cpu: CpuUse) {
    let mut lats = Vec::new();
    let mut lags = Vec::new();
    let mut last = p.started;
    for r in p.results {
        report.sent += r.sent;
        report.ok += r.ok;
        report.reconnects += r.reconnects;
        for (k, v) in r.errors {
            *report.errors.entry(k).or_default() += v;
        }
        lats.extend(r.latencies);
        lags.extend(r.pickup_lags);
        if let Some(d) = r.last_done {
            last = last.max(d);
        }
        if let Some((h, c)) = r.token {
            report.token_header = Some(h);
            report.token_claims = Some(c);
        }
    }
    report.error_count = report.errors.values().sum();
    report.elapsed_s = last.duration_since(p.started).as_secs_f64();
    if report.elapsed_s > 0.0 {
        report.tokens_per_s = report.ok as f64 / report.elapsed_s;
    }
    report.cpu = cpu;
    report.latency_ms = latency(&mut lats);
    report.pickup_lag_ms = latency(&mut lags);
}

/// One line on standard error: the throughput and latency of the run.
fn print_summary(report: &Report) {
    let l = report.latency_ms;
    eprintln!(
        "{}: ok {} errors {} in {:.2}s = {:.0} tokens/s; p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        if report.label.is_empty() {
            report.mode
        } else {
            report.label.as_str()
        },
        report.ok,
        report.error_count,
        report.elapsed_s,
        report.tokens_per_s,
        l.map_or(0.0, |l| l.p50_ms),
        l.map_or(0.0, |l| l.p99_ms),
        l.map_or(0.0, |l| l.max_ms),
    );
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let target = parse_url(&args.url)?;
    let n = match (args.rate, args.duration) {
        (Some(rate), Some(d)) => (rate * d).round() as usize,
        _ => args.requests,
    };
    if n == 0 || args.concurrency == 0 {
        bail!("nothing to send: requests and concurrency must be positive");
    }
    let total = n + args.warmup;
    eprintln!("signing {total} assertions before timing...");
    let t0 = Instant::now();
    let mut bodies = presign(&args, total)?;
    let presign_seconds = t0.elapsed().as_secs_f64();
    eprintln!("signed {total} in {presign_seconds:.2}s");
    let warm_bodies: Vec<Bytes> = bodies.drain(n..).collect();

    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };

    let warm_errors = warmup(&rt, &args, warm_bodies)?;

    let shared = Arc::new(Shared {
        target,
        bodies,
        record: true,
        inspected: AtomicBool::new(false),
    });
    let (source, dispatch) = match args.rate {
        Some(rate) if rate > 0.0 => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Source::Scheduled(Mutex::new(rx)), Some((tx, rate, n)))
        }
        Some(_) => bail!("--rate must be positive"),
        None => {
            let deadline = args
                .duration
                .map(|d| Instant::now() + Duration::from_secs_f64(d));
            (
                Source::Counter {
                    next: AtomicUsize::new(0),
                    end: n,
                    deadline,
                },
                None,
            )
        }
    };
    let open_loop = dispatch.is_some();
    let cpu0 = CpuSample::take(args.server_pid);
    let p = rt.block_on(phase(shared, source, args.concurrency, dispatch));
    let cpu1 = CpuSample::take(args.server_pid);

    let mut report = Report {
        label: args.label.clone(),
        mode: if open_loop {
            "open-loop"
        } else {
            "closed-loop"
        },
        url: args.url.clone(),
        concurrency: args.concurrency,
        client_threads: args.threads.max(1),
        target_rate: args.rate,
        presigned_assertions: total,
        presign_seconds,
        warmup_requests: args.warmup,
        sent: 0,
        ok: 0,
        error_count: 0,
        errors: warm_errors,
        reconnects: 0,
        elapsed_s: 0.0,
        tokens_per_s: 0.0,
        cpu: CpuUse::default(),
        latency_ms: None,
        pickup_lag_ms: None,
        token_header: None,
        token_claims: None,
    };
    tally(&mut report, p, cpu1.since(&cpu0));

    println!("{}", serde_json::to_string_pretty(&report)?);
    print_summary(&report);
    if report.error_count > 0 || report.ok == 0 {
        bail!(
            "{} errors, {} ok: this run measured error paths, not tokens",
            report.error_count,
            report.ok
        );
    }
    Ok(())
}
