//! A latency histogram of atomic buckets: observing is three relaxed atomic adds and no lock
//! (prometheus-client's own Histogram takes a lock per observation). Encoded by the
//! collector in [`crate::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in microseconds: 100 us .. 60 s.
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_us(d.as_micros() as u64);
    }

    pub fn observe_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets as (upper bound in seconds, count)).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BOUNDS_US.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = BOUNDS_US
                .get(i)
                .map(|&us| us as f64 / 1e6)
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        // The count is the +Inf bucket, so the exposition is consistent even mid-update.
        (sum, cumulative, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounded() {
        let h = Histogram::default();
        h.observe_us(50); // <= 100 us
        h.observe_us(100); // <= 100 us (upper bounds are inclusive)
        h.observe_us(101); // <= 250 us
        h.observe_us(90_000_000); // +Inf
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(b[0], (0.0001, 2));
        assert_eq!(b[1], (0.00025, 3));
        assert_eq!(b[b.len() - 2].1, 3);
        assert_eq!(b[b.len() - 1], (f64::INFINITY, 4));
        assert!((sum - 90.000251).abs() < 1e-9);
    }
}
