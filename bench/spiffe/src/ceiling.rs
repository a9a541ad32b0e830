//! The in-process signing ceiling on one thread: `X509Ca::sign_svid` in a loop (the CSR parsed
//! and its signature verified, the leaf built and signed with ECDSA P-256), as the server's
//! handler calls it, with no HTTP, TLS, store or audit.

use std::time::{Duration, Instant};

use mayfly_crypto::x509::{SvidInfo, X509Ca, new_svid_key_and_csr};
use serde::Serialize;

/// Distinct CSRs cycled through (made before the clock starts).
const CSR_POOL: usize = 256;

#[derive(Serialize)]
struct Report {
    label: String,
    what: &'static str,
    seconds_per_measurement: f64,
    /// `sign_svid` alone.
    sign_svid_per_s: f64,
    /// `sign_svid` plus `SvidInfo::parse` of the leaf (the handler reads its serial for the
    /// audit event).
    sign_svid_and_parse_per_s: f64,
}

fn measure(seconds: f64, mut op: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    // Warm up for a tenth of the time, then count.
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 10.0);
    let mut i = 0usize;
    while Instant::now() < warm {
        op(i)?;
        i += 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..16 {
            op(i)?;
            i += 1;
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn unix_now() -> anyhow::Result<i64> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?)
}

/// Measure for `seconds` each; prints a JSON report on stdout.
pub fn run(seconds: f64, label: &str) -> anyhow::Result<()> {
    let now = unix_now()?;
    let ca = X509Ca::self_signed("example.org", now - 60, now + 86_400)?;
    let csrs = (0..CSR_POOL)
        .map(|_| new_svid_key_and_csr().map(|(_key, csr)| csr))
        .collect::<Result<Vec<_>, _>>()?;
    let id = "spiffe://example.org/bench";
    let sign = |i: usize| -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(ca.sign_svid(&csrs[i % CSR_POOL], id, &[], now - 30, now + 3600)?)
    };
    let sign_svid_per_s = measure(seconds, |i| sign(i).map(|_| ()))?;
    let sign_svid_and_parse_per_s = measure(seconds, |i| {
        let chain = sign(i)?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("empty chain"))?;
        SvidInfo::parse(leaf)?;
        Ok(())
    })?;
    let report = Report {
        label: label.to_string(),
        what: "mayfly_crypto::x509::X509Ca::sign_svid on one thread (self-signed P-256 CA, P-256 CSRs)",
        seconds_per_measurement: seconds,
        sign_svid_per_s,
        sign_svid_and_parse_per_s,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "[{label}] sign_svid {sign_svid_per_s:.0}/s; with the leaf parsed {sign_svid_and_parse_per_s:.0}/s"
    );
    Ok(())
}
