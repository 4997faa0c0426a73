//! The adaptive concurrency limit (`adaptive_limit`): how many servers of a pool may be in
//! use at once, lowered when the upstream slows and raised when it recovers, so that an
//! overloaded database is not handed more concurrent work than it can finish.
//!
//! A gradient on latency, as Netflix's concurrency-limits (Gradient2) does it: each server
//! coming back is a sample of the time its client's queries took on it. Samples are averaged
//! per window (twice the limit, at least 16; each clipped at 10 times the usual), and each
//! window updates the limit: while its average is above `TOLERANCE` times the long average
//! (the usual latency) the limit shrinks in proportion (at most halving), otherwise it grows
//! by about its square root. The long average drifts towards a new normal over about
//! `LONG_WINDOWS` windows, and catches up at once with a recovery.

/// How much slower than usual is still "usual".
const TOLERANCE: f64 = 2.0;
/// Windows the long average spans.
const LONG_WINDOWS: f64 = 30.0;
/// Samples per window, at least (else twice the limit): one update per window, from the
/// window's average, so one preempted transaction does not move the limit.
const MIN_WINDOW: u32 = 16;
/// A sample counts as at most this many times the usual latency.
const CLIP: f64 = 10.0;

#[derive(Debug, Clone)]
pub(super) struct Gradient {
    limit: f64,
    min: f64,
    max: f64,
    long_us: f64,
    window_sum: f64,
    window_n: u32,
    /// The most servers in use during the window.
    window_busy: usize,
}

impl Gradient {
    /// Starts at `max` (pool_size): the limit only ever comes down from what is configured.
    pub(super) fn new(min: usize, max: usize) -> Gradient {
        let max = max.max(1) as f64;
        Gradient {
            limit: max,
            min: (min.max(1) as f64).min(max),
            max,
            long_us: 0.0,
            window_sum: 0.0,
            window_n: 0,
            window_busy: 0,
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

    /// A server came back after `held_us` of work, with `in_use` servers in use before it did.
    pub(super) fn sample(&mut self, held_us: f64, in_use: usize) {
        let rtt = held_us.max(1.0);
        if self.long_us == 0.0 {
            self.long_us = rtt;
        }
        self.window_sum += rtt.min(self.long_us * CLIP);
        self.window_n += 1;
        self.window_busy = self.window_busy.max(in_use);
        let window = MIN_WINDOW.max(2 * self.limit() as u32);
        if self.window_n < window {
            return;
        }
        let short = self.window_sum / f64::from(self.window_n);
        let busy = std::mem::take(&mut self.window_busy);
        self.window_sum = 0.0;
        self.window_n = 0;
        self.long_us += (short - self.long_us) / LONG_WINDOWS;
        // Recovered below the usual: the usual was a slow period's; forget it faster.
        if self.long_us > short * TOLERANCE {
            self.long_us = (self.long_us + short) / 2.0;
        }
        let gradient = (TOLERANCE * self.long_us / short).clamp(0.5, 1.0);
        // A pool using little of its limit says nothing about a higher one.
        let growth = if (busy as f64) < self.limit / 2.0 {
            0.0
        } else {
            self.limit.sqrt()
        };
        // The window's average already smooths: no further damping.
        self.limit = (self.limit * gradient + growth).clamp(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `windows` windows of `rtt_us` samples from a saturated pool (every server the limit
    /// allows in use).
    fn feed(g: &mut Gradient, rtt_us: f64, windows: usize) {
        for _ in 0..windows {
            for _ in 0..MIN_WINDOW.max(2 * g.limit() as u32) {
                let in_use = g.limit();
                g.sample(rtt_us, in_use);
            }
        }
    }

    #[test]
    fn the_limit_falls_when_latency_rises_and_recovers_after() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 20);
        assert_eq!(g.limit(), 16, "steady latency keeps the configured size");
        feed(&mut g, 20_000.0, 10);
        let slow = g.limit();
        assert!(
            slow <= 6,
            "a 20x slower upstream gets fewer servers: {slow}"
        );
        feed(&mut g, 1_000.0, 15);
        assert_eq!(g.limit(), 16, "restored when latency is back");
    }

    #[test]
    fn one_slow_transaction_in_a_window_moves_nothing() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 20);
        for _ in 0..40 {
            for n in 0..32 {
                // One preempted or long transaction per window, 100x the rest.
                g.sample(if n == 0 { 100_000.0 } else { 1_000.0 }, 16);
            }
        }
        assert_eq!(g.limit(), 16);
    }

    #[test]
    fn it_stays_within_its_bounds() {
        let mut g = Gradient::new(6, 8);
        feed(&mut g, 1_000.0, 5);
        feed(&mut g, 1_000_000.0, 10);
        assert_eq!(g.limit(), 6, "never below min_pool_size");
        feed(&mut g, 1.0, 50);
        assert_eq!(g.limit(), 8, "never above pool_size");
    }

    #[test]
    fn a_lasting_slowdown_becomes_the_new_normal() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 20);
        feed(&mut g, 10_000.0, 8);
        assert!(g.limit() < 8, "{}", g.limit());
        // Many windows later the slower latency is what is usual.
        feed(&mut g, 10_000.0, 150);
        assert_eq!(g.limit(), 16);
    }

    #[test]
    fn an_idle_pool_does_not_grow_its_limit() {
        let mut g = Gradient::new(1, 16);
        feed(&mut g, 1_000.0, 5);
        feed(&mut g, 50_000.0, 10);
        let low = g.limit();
        for _ in 0..500 {
            g.sample(1_000.0, 0);
        }
        assert!(
            g.limit() <= low,
            "no growth without load to show it is safe"
        );
    }
}
