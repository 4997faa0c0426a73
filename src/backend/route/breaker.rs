//! One upstream's circuit breaker: closed while it answers; open after `circuit_failures`
//! connect or check failures in a row, when nothing is sent there; after a backoff, half-open:
//! one probe may go, and its result closes the circuit or opens it again for twice as long
//! (up to [`MAX_BACKOFF`]).

use std::time::{Duration, Instant};

const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    /// Open since, and for how long before a probe.
    opened: Option<(Instant, Duration)>,
    /// A probe is out (half-open).
    probing: bool,
}

impl Breaker {
    pub fn state(&self, now: Instant) -> State {
        match self.opened {
            None => State::Closed,
            Some((at, wait)) if now < at + wait && !self.probing => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether a connection may be tried now; in half-open, only the one probe (this call
    /// takes it).
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if self.probing => false,
            State::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    /// How long until a probe may go (zero unless open).
    pub fn retry_in(&self, now: Instant) -> Duration {
        match self.opened {
            Some((at, wait)) if !self.probing => (at + wait).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// The probe went and said nothing (abandoned): another may go.
    pub fn release_probe(&mut self) {
        self.probing = false;
    }

    pub fn success(&mut self) {
        *self = Breaker::default();
    }

    /// A failure; returns true when it opened the circuit.
    pub fn failure(&mut self, now: Instant, threshold: u32, backoff: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.opened {
            Some((_, wait)) if self.probing => {
                self.probing = false;
                self.opened = Some((now, (wait * 2).min(MAX_BACKOFF)));
                false
            }
            Some(_) => false,
            None if self.failures >= threshold.max(1) => {
                self.opened = Some((now, backoff));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_backoff_and_closes_on_success() {
        let t = Instant::now();
        let backoff = Duration::from_secs(2);
        let mut b = Breaker::default();
        assert!(!b.failure(t, 3, backoff));
        assert!(!b.failure(t, 3, backoff));
        assert_eq!(b.state(t), State::Closed);
        assert!(b.failure(t, 3, backoff), "the third failure opens it");
        assert_eq!(b.state(t), State::Open);
        assert!(!b.admit(t + Duration::from_secs(1)));
        assert_eq!(
            b.retry_in(t + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // After the backoff one probe goes, and no second one while it is out.
        let later = t + backoff;
        assert_eq!(b.state(later), State::HalfOpen);
        assert!(b.admit(later));
        assert!(!b.admit(later));
        // It fails: open again, twice as long.
        b.failure(later, 3, backoff);
        assert_eq!(b.state(later + Duration::from_secs(3)), State::Open);
        assert!(b.admit(later + Duration::from_secs(4)));
        b.success();
        assert_eq!(b.state(later + Duration::from_secs(4)), State::Closed);
        assert!(b.admit(later + Duration::from_secs(4)));
    }

    #[test]
    fn an_abandoned_probe_frees_the_half_open_circuit() {
        let t = Instant::now();
        let mut b = Breaker::default();
        b.failure(t, 1, Duration::from_secs(1));
        let later = t + Duration::from_secs(1);
        assert!(b.admit(later));
        assert!(!b.admit(later), "one probe at a time");
        // Its client went away before the server said anything.
        b.release_probe();
        assert!(b.admit(later), "the next attempt may probe");
    }

    #[test]
    fn the_backoff_stops_doubling_at_a_minute() {
        let mut t = Instant::now();
        let mut b = Breaker::default();
        b.failure(t, 1, Duration::from_secs(40));
        for _ in 0..3 {
            t += MAX_BACKOFF;
            assert!(b.admit(t));
            b.failure(t, 1, Duration::from_secs(40));
        }
        assert_eq!(b.retry_in(t), MAX_BACKOFF);
    }
}
