//! The adaptive concurrency limit (`adaptive_limit`): how many servers of a pool may be in
//! use at once, lowered when the upstream slows and raised when it recovers, so that an
//! overloaded database is not handed more concurrent work than it can finish.
//!
//! A gradient on latency, as Netflix's concurrency-limits (Gradient2) does it: each server
//! coming back is a sample of how long it was held. A short average follows the latency
//! now, a long one the usual latency; while the short one is above `TOLERANCE` times the
//! long one the limit shrinks in proportion (at most halving per sample), otherwise it grows
//! by about its square root. The long average drifts towards a new normal over about
//! `LONG_WINDOW` samples, and catches up at once with a recovery.

/// How much slower than usual is still "usual".
const TOLERANCE: f64 = 2.0;
/// Samples the long average spans.
const LONG_WINDOW: f64 = 600.0;
/// Weight of a sample in the short average.
const SHORT_WEIGHT: f64 = 0.1;
/// How far the limit moves towards its new value per sample.
const SMOOTHING: f64 = 0.2;

#[derive(Debug, Clone)]
pub(super) struct Gradient {
    limit: f64,
    min: f64,
    max: f64,
    short_us: f64,
    long_us: f64,
}

impl Gradient {
    /// Starts at `max` (pool_size): the limit only ever comes down from what is configured.
    pub(super) fn new(min: usize, max: usize) -> Gradient {
        let max = max.max(1) as f64;
        Gradient {
            limit: max,
            min: (min.max(1) as f64).min(max),
            max,
            short_us: 0.0,
            long_us: 0.0,
        }
    }

    /// New bounds (a RELOAD changed pool_size or min_pool_size).
    pub(super) fn bound(&mut self, min: usize, max: usize) {
        let max = max.max(1) as f64;
        self.max = max;
        self.min = (min.max(1) as f64).min(max);
        self.limit = self.limit.clamp(self.min, self.max);
    }

    /// Servers that may be in use at once now.
    pub(super) fn limit(&self) -> usize {
        self.limit.round() as usize
    }

    /// A server came back after `held_us`, with `in_use` servers in use before it did.
    pub(super) fn sample(&mut self, held_us: f64, in_use: usize) {
        let rtt = held_us.max(1.0);
        if self.long_us == 0.0 {
            self.short_us = rtt;
            self.long_us = rtt;
        }
        self.short_us += SHORT_WEIGHT * (rtt - self.short_us);
        self.long_us += (rtt - self.long_us) / LONG_WINDOW;
        // Recovered below the usual: the usual was a slow period's; forget it faster.
        if self.long_us > self.short_us * TOLERANCE {
            self.long_us *= 0.95;
        }
        let gradient = (TOLERANCE * self.long_us / self.short_us).clamp(0.5, 1.0);
        // A pool using little of its limit says nothing about a higher one.
        let growth = if (in_use as f64) < self.limit / 2.0 {
            0.0
        } else {
            self.limit.sqrt()
        };
        let target = self.limit * gradient + growth;
        self.limit =
            (self.limit * (1.0 - SMOOTHING) + target * SMOOTHING).clamp(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` samples of `rtt_us` from a saturated pool (every server the limit allows in use).
    fn feed(g: &mut Gradient, rtt_us: f64, n: usize) {
        for _ in 0..n {
            let in_use = g.limit();
            g.sample(rtt_us, in_use);
        }
    }

    #[test]
    fn the_limit_falls_when_latency_rises_and_recovers_after() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 200);
        assert_eq!(g.limit(), 16, "steady latency keeps the configured size");
        feed(&mut g, 20_000.0, 40);
        let slow = g.limit();
        assert!(
            slow <= 6,
            "a 20x slower upstream gets fewer servers: {slow}"
        );
        feed(&mut g, 1_000.0, 60);
        assert_eq!(g.limit(), 16, "restored when latency is back");
    }

    #[test]
    fn it_stays_within_its_bounds() {
        let mut g = Gradient::new(6, 8);
        feed(&mut g, 1_000.0, 10);
        feed(&mut g, 1_000_000.0, 30);
        assert_eq!(g.limit(), 6, "never below min_pool_size");
        feed(&mut g, 1.0, 500);
        assert_eq!(g.limit(), 8, "never above pool_size");
    }

    #[test]
    fn a_lasting_slowdown_becomes_the_new_normal() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 100);
        feed(&mut g, 10_000.0, 30);
        assert!(g.limit() < 8);
        // Hundreds of samples later the slower latency is what is usual.
        feed(&mut g, 10_000.0, 1_000);
        assert_eq!(g.limit(), 16);
    }

    #[test]
    fn an_idle_pool_does_not_grow_its_limit() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 10);
        feed(&mut g, 50_000.0, 30);
        let low = g.limit();
        for _ in 0..100 {
            g.sample(1_000.0, 0);
        }
        assert!(
            g.limit() <= low,
            "no growth without load to show it is safe"
        );
    }
}
