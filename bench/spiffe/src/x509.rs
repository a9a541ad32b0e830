//! X.509-SVID signings at the server: `POST /agent/v1/svid/x509` over the agent API's mutual
//! TLS, through the agent's own client (`mayfly_agent::HttpUpstream`), many in flight.
//!
//! The benchmark attests as an agent with a join token, finds its entry with `sync`, and signs
//! CSRs made before the clock starts (a distinct P-256 key per request), so the client's key
//! generation is not measured. Each signing on the server: the caller's agent record and entries
//! read from the store, the CSR's signature verified, the leaf built and signed (ECDSA P-256),
//! and its audit event committed (group commit, fsync) before the answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mayfly_agent::{Attestation, HttpUpstream};
use mayfly_crypto::x509::{SvidInfo, certs_from_pem, new_svid_key_and_csr};
use serde::Serialize;

use crate::closed::closed_loop;
use crate::stats::{CpuSample, CpuUse, Latency, latency};

/// `mayfly-spiffebench x509` options.
#[derive(clap::Args, Debug)]
pub struct X509Args {
    /// The server's agent API, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    pub server: String,
    /// The server's issuer URL (not called; `HttpUpstream` wants it).
    #[arg(long)]
    pub issuer: String,
    /// The trust domain.
    #[arg(long, default_value = "example.org")]
    pub trust_domain: String,
    /// PEM trust bundle (`mayfly bundle show`).
    #[arg(long)]
    pub trust_bundle: PathBuf,
    /// File holding a fresh join token for the benchmark's own agent identity.
    #[arg(long)]
    pub join_token_file: PathBuf,
    /// Sign for the entry with this SPIFFE ID (its parent must be the benchmark's agent).
    #[arg(long)]
    pub spiffe_id: String,
    /// Requests in flight (each on its own keep-alive mutual-TLS connection).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// At most this many measured signings (one CSR made per signing before the clock) ...
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// ... and none started after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured signings first (at least one per connection).
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// The server's pid, to report its CPU use during the measured phase.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// A name for the report.
    #[arg(long, default_value = "x509")]
    pub label: String,
}

#[derive(Serialize)]
struct Report {
    label: String,
    what: &'static str,
    concurrency: usize,
    signings: usize,
    seconds: f64,
    signings_per_s: f64,
    latency_us: Option<Latency>,
    /// Seconds spent making the CSRs before the clock started.
    csr_seconds: f64,
    errors: u64,
    error_kinds: std::collections::BTreeMap<String, u64>,
    /// Answers with an empty chain.
    unexpected: u64,
    /// What the first answer's leaf says.
    first_leaf: serde_json::Value,
    cpu: CpuUse,
}

/// Attest with the join token and find the entry to sign for.
async fn attest(args: &X509Args) -> anyhow::Result<(HttpUpstream, Arc<String>)> {
    let pem = std::fs::read_to_string(&args.trust_bundle)
        .with_context(|| format!("cannot read {}", args.trust_bundle.display()))?;
    let bundle = certs_from_pem(&pem)?;
    let token = std::fs::read_to_string(&args.join_token_file)
        .with_context(|| format!("cannot read {}", args.join_token_file.display()))?;
    let how = Attestation::JoinToken(Arc::new(zeroize::Zeroizing::new(token.trim().to_string())));
    let up = HttpUpstream::attest(&args.server, &args.issuer, &args.trust_domain, bundle, &how)
        .await
        .context("node attestation with the join token failed")?;
    let sync = up.sync().await.context("sync (the agent's entries)")?;
    let Some(entry) = sync.entries.iter().find(|e| e.spiffe_id == args.spiffe_id) else {
        bail!(
            "agent {} has no entry for {} (it has {})",
            up.spiffe_id(),
            args.spiffe_id,
            sync.entries.len()
        );
    };
    let entry_id = Arc::new(entry.id.clone());
    eprintln!(
        "[{}] attested as {}; signing for entry {} ({})",
        args.label,
        up.spiffe_id(),
        entry_id,
        args.spiffe_id
    );

    Ok((up, entry_id))
}

/// The first signing, checked in full: a leaf for `spiffe_id`.
async fn first_leaf(
    up: &HttpUpstream,
    entry_id: &str,
    csr: &[u8],
    spiffe_id: &str,
) -> anyhow::Result<serde_json::Value> {
    // The first signing, checked in full.
    let first = up.sign_x509(entry_id, csr).await?;
    Ok({
        let der = first
            .chain
            .first()
            .context("the first answer has an empty chain")?;
        let der = base64_decode(der)?;
        let info = SvidInfo::parse(&der)?;
        anyhow::ensure!(
            info.spiffe_id == spiffe_id && !info.is_ca,
            "the first SVID is not a leaf for {}: {info:?}",
            spiffe_id
        );
        serde_json::json!({
            "spiffe_id": info.spiffe_id,
            "lifetime_s": info.not_after - info.not_before,
            "chain_len": first.chain.len(),
        })
    })
}

/// Run the benchmark; prints a JSON report on stdout. Fails if any signing failed.
pub async fn run(args: X509Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let (up, entry_id) = attest(&args).await?;

    let warmup = args.warmup.max(args.concurrency as u64);
    let t0 = Instant::now();
    let n = usize::try_from(args.requests.saturating_add(warmup))?;
    let mut csrs = Vec::with_capacity(n);
    for _ in 0..n {
        csrs.push(new_svid_key_and_csr()?.1);
    }
    let csr_seconds = t0.elapsed().as_secs_f64();
    let csrs = Arc::new(csrs);
    let up = Arc::new(up);

    // The first signing, checked in full.
    let first_leaf = first_leaf(&up, &entry_id, &csrs[0], &args.spiffe_id).await?;

    let make = |offset: u64| {
        let up = up.clone();
        let csrs = csrs.clone();
        let entry_id = entry_id.clone();
        move |_w: usize, i: u64| {
            let up = up.clone();
            let csrs = csrs.clone();
            let entry_id = entry_id.clone();
            async move {
                let idx = usize::try_from(i + offset).map_err(|e| e.to_string())? % csrs.len();
                let r = up
                    .sign_x509(&entry_id, &csrs[idx])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(!r.chain.is_empty())
            }
        }
    };
    // One connection (with its mutual-TLS handshake) per worker, before the clock.
    let w = closed_loop(
        args.concurrency,
        warmup,
        Duration::from_secs(60),
        make(args.requests),
    )
    .await?;
    anyhow::ensure!(
        w.error_count() == 0,
        "warm-up signings failed: {:?}",
        w.errors
    );

    let before = CpuSample::take(args.target_pid);
    let mut r = closed_loop(
        args.concurrency,
        args.requests,
        Duration::from_secs_f64(args.duration),
        make(0),
    )
    .await?;
    let cpu = CpuSample::take(args.target_pid).since(&before);
    let seconds = r.elapsed.as_secs_f64();
    let signings = r.samples.len();
    let report = Report {
        label: args.label,
        what: "POST /agent/v1/svid/x509 over mutual TLS (HTTP/1.1 keep-alive), mayfly_agent::HttpUpstream::sign_x509",
        concurrency: args.concurrency,
        signings,
        seconds,
        signings_per_s: signings as f64 / seconds.max(1e-9),
        latency_us: latency(&mut r.samples),
        csr_seconds,
        errors: r.error_count(),
        error_kinds: r.errors,
        unexpected: r.unexpected,
        first_leaf,
        cpu,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(l) = report.latency_us {
        eprintln!(
            "[{}] {} signings in {:.2}s, {} in flight: {:.0}/s; p50 {:.2} ms, p90 {:.2}, p99 {:.2}, max {:.2}; errors {}",
            report.label,
            signings,
            seconds,
            report.concurrency,
            report.signings_per_s,
            l.p50_us / 1e3,
            l.p90_us / 1e3,
            l.p99_us / 1e3,
            l.max_us / 1e3,
            report.errors
        );
    }
    anyhow::ensure!(report.errors == 0, "{} signings failed", report.errors);
    anyhow::ensure!(report.unexpected == 0, "{} empty chains", report.unexpected);
    anyhow::ensure!(signings > 0, "no signing was measured");
    Ok(())
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}
