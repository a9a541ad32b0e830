//! Latency percentiles and CPU accounting shared by the benchmarks.

use std::time::Instant;

use serde::Serialize;

/// Latency percentiles of one run, in microseconds.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest call.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

/// Nearest-rank percentiles of `samples` (nanoseconds; sorted in place). `None` when empty.
pub fn latency(samples: &mut [u64]) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    // The smallest sample with at least q of all samples at or below it.
    let pick = |q: f64| {
        let rank = (q * n as f64).ceil() as usize;
        samples[rank.clamp(1, n) - 1] as f64 / 1e3
    };
    let sum: f64 = samples.iter().map(|&s| s as f64).sum();
    Some(Latency {
        p50_us: pick(0.50),
        p90_us: pick(0.90),
        p99_us: pick(0.99),
        p999_us: pick(0.999),
        max_us: samples[n - 1] as f64 / 1e3,
        mean_us: sum / n as f64 / 1e3,
    })
}

/// A process's user + system CPU seconds, from /proc/PID/stat (Linux only; None elsewhere).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
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

/// CPU use during a measured phase, in cores (CPU seconds per wall second).
#[derive(Serialize, Default, Debug)]
pub struct CpuUse {
    /// This benchmark process: near 1.0 on its one pinned core would make it the limit.
    pub client: Option<f64>,
    /// The process under test (`--target-pid`): near 1.0 on one core means it was CPU-bound.
    pub target: Option<f64>,
    /// Everything else on the machine: noise from other work, if well above zero.
    pub other: Option<f64>,
}

/// CPU counters at one instant.
pub struct CpuSample {
    client: Option<f64>,
    target: Option<f64>,
    machine: Option<f64>,
    at: Instant,
}

impl CpuSample {
    /// Read the counters now (`target_pid`: the process under test, if known).
    pub fn take(target_pid: Option<u32>) -> Self {
        Self {
            client: process_cpu_seconds("self"),
            target: target_pid.and_then(|p| process_cpu_seconds(&p.to_string())),
            machine: machine_busy_seconds(),
            at: Instant::now(),
        }
    }

    /// CPU use between `before` and this sample.
    pub fn since(&self, before: &CpuSample) -> CpuUse {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| Some((a? - b?) / wall);
        let client = d(self.client, before.client);
        let target = d(self.target, before.target);
        let machine = d(self.machine, before.machine);
        let other = match (machine, target, client) {
            (Some(m), Some(s), Some(c)) => Some((m - s - c).max(0.0)),
            (Some(m), None, Some(c)) => Some((m - c).max(0.0)),
            _ => None,
        };
        CpuUse {
            client,
            target,
            other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().map(|us| us * 1_000).collect();
        let l = latency(&mut v).unwrap();
        assert_eq!(l.p50_us, 50.0);
        assert_eq!(l.p90_us, 90.0);
        assert_eq!(l.p99_us, 99.0);
        assert_eq!(l.max_us, 100.0);
        assert!(latency(&mut []).is_none());
    }

    #[test]
    fn own_cpu_is_readable() {
        let a = CpuSample::take(Some(std::process::id()));
        let b = CpuSample::take(Some(std::process::id()));
        let u = b.since(&a);
        assert!(u.client.is_some() && u.target.is_some());
    }
}
