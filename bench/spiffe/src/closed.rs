//! A closed loop: C workers, each sending its next call when the previous one answers, until a
//! shared budget of calls is spent or a deadline passes. Latency is send-to-answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one closed-loop run observed.
pub struct LoopResult {
    /// Latency of every successful call, nanoseconds (unsorted).
    pub samples: Vec<u64>,
    /// Successful calls whose answer was not the expected one (see [`closed_loop`]).
    pub unexpected: u64,
    /// Failed calls by error text (trimmed to 200 characters).
    pub errors: BTreeMap<String, u64>,
    /// Wall time from the first call to the last answer.
    pub elapsed: Duration,
}

impl LoopResult {
    /// Failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Run `call(worker, index)` on `concurrency` tasks, `requests` calls in all at most, none
/// started after `duration`. `call` answers `Ok(true)` for the expected answer, `Ok(false)`
/// for a successful but unexpected one, `Err(text)` for a failure.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    requests: u64,
    duration: Duration,
    call: F,
) -> anyhow::Result<LoopResult>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, String>> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let call = call.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(4096);
            let mut unexpected = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= end {
                    break;
                }
                let t0 = Instant::now();
                let r = call(worker, i).await;
                let ns = t0.elapsed().as_nanos() as u64;
                match r {
                    Ok(expected) => {
                        samples.push(ns);
                        if !expected {
                            unexpected += 1;
                        }
                    }
                    Err(e) => *errors.entry(e.chars().take(200).collect()).or_default() += 1,
                }
            }
            (samples, unexpected, errors)
        }));
    }
    let mut out = LoopResult {
        samples: Vec::new(),
        unexpected: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (samples, unexpected, errors) = t.await?;
        out.samples.extend(samples);
        out.unexpected += unexpected;
        for (k, v) in errors {
            *out.errors.entry(k).or_default() += v;
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_and_outcomes_are_counted() {
        let r = closed_loop(4, 100, Duration::from_secs(10), |_, i| async move {
            match i % 10 {
                0 => Err("boom".to_string()),
                1 => Ok(false),
                _ => Ok(true),
            }
        })
        .await
        .unwrap();
        assert_eq!(r.samples.len(), 90);
        assert_eq!(r.unexpected, 10);
        assert_eq!(r.error_count(), 10);
        assert_eq!(r.errors["boom"], 10);
    }
}
