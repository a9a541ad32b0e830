//! A route's metric handles, registered on first use and kept: a call then updates two atomics
//! instead of building its label set (two `String`s) and looking it up in the recorder twice.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// `mayfly_proxy_requests_total` by status and `mayfly_proxy_request_duration_seconds`, for
/// one route. Registered lazily, so after the proxy has installed its recorder.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    duration: OnceLock<Histogram>,
    /// One counter per status seen; HTTP statuses are three digits, so this stays small.
    by_status: Mutex<Vec<(u16, Counter)>>,
}

impl RouteMetrics {
    /// One call on `route` answered with `status` after `latency`.
    pub fn record(&self, route: &str, status: u16, latency: Duration) {
        self.duration
            .get_or_init(|| {
                metrics::histogram!("mayfly_proxy_request_duration_seconds", "route" => route.to_string())
            })
            .record(latency.as_secs_f64());
        let mut by_status = match self.by_status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.increment(1),
            None => {
                let c = metrics::counter!("mayfly_proxy_requests_total", "route" => route.to_string(), "status" => status.to_string());
                c.increment(1);
                by_status.push((status, c));
            }
        }
    }
}
