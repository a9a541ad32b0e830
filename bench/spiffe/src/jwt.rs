//! FetchJWTSVID through the third-party `spiffe` crate client, answered from the agent's cache.
//!
//! The agent caches a JWT-SVID per (process, entry, audience) until half its lifetime, so only
//! this process's first call reaches the server; it is timed apart (`first_call_us`). Every
//! later call is compared with the token of the warm-up: a different token means the agent
//! minted again during the run (`token_changes`), i.e. not every call came from the cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use spiffe::WorkloadApiClient;

use crate::closed::closed_loop;
use crate::stats::{CpuSample, CpuUse, Latency, latency};

/// `mayfly-spiffebench jwt` options.
#[derive(clap::Args, Debug)]
pub struct JwtArgs {
    /// The agent's Workload API socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The JWT-SVID audience asked for.
    #[arg(long, default_value = "bench-aud")]
    pub audience: String,
    /// Concurrent clients, each with its own connection, each calling in a closed loop.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// At most this many measured calls ...
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// ... and none started after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured calls after the first one, before the clock starts.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// The agent's pid, to report its CPU use during the measured phase.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// A name for the report.
    #[arg(long, default_value = "jwt")]
    pub label: String,
}

#[derive(Serialize)]
struct Report {
    label: String,
    what: &'static str,
    client: &'static str,
    audience: String,
    concurrency: usize,
    calls: usize,
    seconds: f64,
    calls_per_s: f64,
    latency_us: Option<Latency>,
    /// This process's first call: the agent asked the server for the JWT-SVID.
    first_call_us: f64,
    token_changes: u64,
    errors: u64,
    error_kinds: std::collections::BTreeMap<String, u64>,
    cpu: CpuUse,
}

/// Run the benchmark; prints a JSON report on stdout. Fails if any call failed.
pub async fn run(args: JwtArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let endpoint = format!("unix:{}", args.socket.display());
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        clients.push(
            WorkloadApiClient::connect_to(&endpoint)
                .await
                .with_context(|| format!("cannot connect to the Workload API at {endpoint}"))?,
        );
    }
    let clients = Arc::new(clients);
    let aud = Arc::new(args.audience.clone());

    let t0 = Instant::now();
    let warm = clients[0]
        .fetch_jwt_token([aud.as_str()], None)
        .await
        .context("the first FetchJWTSVID failed")?;
    let first_call_us = t0.elapsed().as_secs_f64() * 1e6;
    let warm = Arc::new(warm);

    let make = {
        let clients = clients.clone();
        let aud = aud.clone();
        let warm = warm.clone();
        move |w: usize, _i: u64| {
            let clients = clients.clone();
            let aud = aud.clone();
            let warm = warm.clone();
            async move {
                let token = clients[w]
                    .fetch_jwt_token([aud.as_str()], None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(token == *warm)
            }
        }
    };
    // Every connection warm, the allocator and the agent's paths too.
    let warmup = args.warmup.max(args.concurrency as u64);
    let w = closed_loop(
        args.concurrency,
        warmup,
        Duration::from_secs(30),
        make.clone(),
    )
    .await?;
    anyhow::ensure!(w.error_count() == 0, "warm-up calls failed: {:?}", w.errors);

    let before = CpuSample::take(args.target_pid);
    let mut r = closed_loop(
        args.concurrency,
        args.requests,
        Duration::from_secs_f64(args.duration),
        make,
    )
    .await?;
    let cpu = CpuSample::take(args.target_pid).since(&before);
    let seconds = r.elapsed.as_secs_f64();
    let calls = r.samples.len();
    let report = Report {
        label: args.label,
        what: "FetchJWTSVID, one audience, answered from mayfly agent's cache",
        client: "spiffe crate (crates.io) WorkloadApiClient::fetch_jwt_token",
        audience: args.audience,
        concurrency: args.concurrency,
        calls,
        seconds,
        calls_per_s: calls as f64 / seconds.max(1e-9),
        latency_us: latency(&mut r.samples),
        first_call_us,
        token_changes: r.unexpected,
        errors: r.error_count(),
        error_kinds: r.errors,
        cpu,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(l) = report.latency_us {
        eprintln!(
            "[{}] {} calls in {:.2}s on {} connection(s): {:.0} calls/s; p50 {:.0} µs, p90 {:.0}, p99 {:.0}, max {:.0}; first call {:.0} µs; errors {}; token changes {}",
            report.label,
            calls,
            seconds,
            report.concurrency,
            report.calls_per_s,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.max_us,
            first_call_us,
            report.errors,
            report.token_changes
        );
    }
    anyhow::ensure!(report.errors == 0, "{} calls failed", report.errors);
    anyhow::ensure!(calls > 0, "no call was measured");
    Ok(())
}
