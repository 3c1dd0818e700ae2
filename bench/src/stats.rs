//! Latency samples and per-target summaries.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

/// What one session task measured.
#[derive(Default)]
pub struct SessionStats {
    /// Latencies of successful calls, in nanoseconds.
    pub samples: Vec<u64>,
    /// Counted calls that failed, by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// The first error message seen per kind.
    pub first_error: BTreeMap<&'static str, String>,
    /// The last counted completion, relative to the start of measurement.
    pub last_end: Duration,
}

impl SessionStats {
    /// Adds one failed call.
    pub fn error(&mut self, kind: &'static str, detail: &str) {
        *self.errors.entry(kind).or_insert(0) += 1;
        self.first_error
            .entry(kind)
            .or_insert_with(|| detail.chars().take(300).collect());
    }

    /// Folds another session's results into this one.
    pub fn merge(&mut self, other: SessionStats) {
        self.samples.extend(other.samples);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_insert(0) += n;
        }
        for (k, v) in other.first_error {
            self.first_error.entry(k).or_insert(v);
        }
        self.last_end = self.last_end.max(other.last_end);
    }
}

/// Nearest-rank percentile of sorted nanosecond samples, in microseconds.
pub fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied().unwrap_or(0) as f64 / 1000.0
}

/// The numbers reported for one target.
pub struct Summary {
    /// Counted calls (ok + errors).
    pub requests: u64,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Failed calls by kind.
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// First error message per kind.
    pub first_error: BTreeMap<&'static str, String>,
    /// Length of the measured window, in seconds.
    pub elapsed_s: f64,
    /// Successful calls per second over the window.
    pub throughput: f64,
    /// Latency percentiles of successful calls, in µs.
    pub p50: f64,
    /// 90th percentile, µs.
    pub p90: f64,
    /// 99th percentile, µs.
    pub p99: f64,
    /// Slowest successful call, µs.
    pub max: f64,
    /// Mean of successful calls, µs.
    pub mean: f64,
}

impl Summary {
    /// Summarises merged stats over a window of `elapsed`.
    pub fn new(mut s: SessionStats, elapsed: Duration) -> Summary {
        s.samples.sort_unstable();
        let ok = s.samples.len() as u64;
        let errors: u64 = s.errors.values().sum();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mean = if s.samples.is_empty() {
            0.0
        } else {
            s.samples.iter().map(|&x| x as f64).sum::<f64>() / s.samples.len() as f64 / 1000.0
        };
        Summary {
            requests: ok + errors,
            ok,
            errors,
            errors_by_kind: s.errors,
            first_error: s.first_error,
            elapsed_s: secs,
            throughput: ok as f64 / secs,
            p50: percentile_us(&s.samples, 0.50),
            p90: percentile_us(&s.samples, 0.90),
            p99: percentile_us(&s.samples, 0.99),
            max: percentile_us(&s.samples, 1.0),
            mean,
        }
    }

    /// Whether most calls failed (or none succeeded).
    pub fn mostly_failed(&self) -> bool {
        self.ok == 0 || self.errors * 2 > self.requests
    }

    /// Machine-readable form.
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_rps": round(self.throughput, 1),
            "latency_us": {
                "p50": round(self.p50, 1),
                "p90": round(self.p90, 1),
                "p99": round(self.p99, 1),
                "max": round(self.max, 1),
                "mean": round(self.mean, 1),
            },
        })
    }
}

/// Rounds to `digits` decimals (for JSON output).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_us(&v, 0.5), 50.0);
        assert_eq!(percentile_us(&v, 0.99), 99.0);
        assert_eq!(percentile_us(&v, 1.0), 100.0);
        assert_eq!(percentile_us(&[], 0.5), 0.0);
        assert_eq!(percentile_us(&[7000], 0.01), 7.0);
    }

    #[test]
    fn failure_rule() {
        let mut s = SessionStats {
            samples: vec![1, 2],
            ..Default::default()
        };
        s.error("http", "HTTP 500");
        s.error("http", "HTTP 500");
        s.error("rpc", "x");
        let sum = Summary::new(s, Duration::from_secs(1));
        assert_eq!(sum.requests, 5);
        assert!(sum.mostly_failed());
        assert_eq!(sum.errors_by_kind.get("http"), Some(&2));
    }
}
