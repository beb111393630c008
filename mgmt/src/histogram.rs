//! Fixed-bucket latency histograms: a few relaxed atomic adds per observation, constant
//! memory, and the Prometheus exposition of a snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) for I/O latencies: 100 µs .. 5 s.
pub const IO_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Upper bounds (seconds) for remap hold times: 500 µs .. 10 s.
pub const HOLD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 10.0,
];

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus one for larger values (not cumulative).
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

/// What a histogram holds at one moment (cumulative bucket counts, as exported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_secs: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Ordering::Relaxed);
            buckets.push((*b, acc));
        }
        let count = acc + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_secs: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Write the `_bucket`, `_sum` and `_count` lines of `h` as metric `name` with the
/// label text `labels` (e.g. `node="n1",op="read"`). HELP/TYPE lines are the caller's.
pub fn write_series(o: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (b, n) in &h.buckets {
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
    }
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", h.sum_secs);
    let _ = writeln!(o, "{name}_count{{{labels}}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: counted there
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_secs - 2.0065).abs() < 1e-9, "{}", s.sum_secs);
        let mut o = String::new();
        write_series(&mut o, "x_seconds", "node=\"n\"", &s);
        assert_eq!(
            o,
            "x_seconds_bucket{node=\"n\",le=\"0.001\"} 2\nx_seconds_bucket{node=\"n\",le=\"0.01\"} 3\n\
             x_seconds_bucket{node=\"n\",le=\"+Inf\"} 4\nx_seconds_sum{node=\"n\"} 2.0065\nx_seconds_count{node=\"n\"} 4\n"
        );
    }
}
