//! Latency percentiles from a sorted vector: exact, and small enough at benchmark sizes.

use serde::Serialize;

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// `samples` in nanoseconds; sorted in place.
pub fn latency(samples: &mut [u64]) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    // Nearest-rank percentile: the smallest sample with at least q of all samples at or below it.
    let pick = |q: f64| {
        let rank = (q * n as f64).ceil() as usize;
        samples[rank.clamp(1, n) - 1] as f64 / 1e6
    };
    let sum: f64 = samples.iter().map(|&s| s as f64).sum();
    Some(Latency {
        p50_ms: pick(0.50),
        p90_ms: pick(0.90),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        max_ms: samples[n - 1] as f64 / 1e6,
        mean_ms: sum / n as f64 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().map(|ms| ms * 1_000_000).collect();
        let l = latency(&mut v).unwrap();
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
    }
}
