//! Limits per source address, checked when a connection is accepted (before any TLS or
//! SCRAM work is spent on it): open connections, connection attempts per second (a token
//! bucket, governor's keyed limiter), and a cooling-off period after repeated failed
//! authentications. Addresses in `limits_exempt` (loopback by default: a sidecar's clients
//! all come from 127.0.0.1) and unix sockets are never limited.

use crate::config::addresses::listed;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

pub use crate::config::LimitSettings as Settings;

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyAttempts,
    LockedOut,
}

impl Refusal {
    pub fn to_client(self) -> crate::error::ClientError {
        use crate::error::ClientError;
        match self {
            Refusal::TooManyConnections => {
                ClientError::limit("53300", "sorry, too many connections from this address")
            }
            Refusal::TooManyAttempts => ClientError::limit(
                "53300",
                "sorry, too many connection attempts from this address; slow down",
            ),
            Refusal::LockedOut => ClientError::not_authorized(
                "too many failed authentication attempts from this address; try again later",
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too many connections from address",
            Refusal::TooManyAttempts => "connection rate from address",
            Refusal::LockedOut => "address locked out after failed authentications",
        }
    }
}

struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

pub struct Limits {
    open: Arc<DashMap<IpAddr, usize>>,
    failures: DashMap<IpAddr, Failures>,
    attempts: arc_swap::ArcSwapOption<(u32, DefaultKeyedRateLimiter<IpAddr>)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            open: Arc::new(DashMap::new()),
            failures: DashMap::new(),
            attempts: arc_swap::ArcSwapOption::empty(),
        }
    }
}

/// A connection's place in its address's count; leaving it gives the place back.
pub struct AddressSlot {
    open: Option<(Arc<DashMap<IpAddr, usize>>, IpAddr)>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((open, addr)) = self.open.take() {
            open.remove_if_mut(&addr, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

impl Limits {
    fn exempt(s: &Settings, addr: Option<IpAddr>) -> Option<IpAddr> {
        addr.filter(|a| !listed(&s.exempt, *a))
    }

    /// Admits a new connection from `addr` (None: unix socket), or says why not.
    pub fn admit(&self, s: &Settings, addr: Option<IpAddr>) -> Result<AddressSlot, Refusal> {
        let Some(addr) = Self::exempt(s, addr) else {
            return Ok(AddressSlot { open: None });
        };
        if let Some(f) = self.failures.get(&addr)
            && f.locked_until.is_some_and(|t| Instant::now() < t)
        {
            return Err(Refusal::LockedOut);
        }
        if s.attempts_per_second > 0 {
            let limiter = self.limiter(s.attempts_per_second);
            if limiter.1.check_key(&addr).is_err() {
                return Err(Refusal::TooManyAttempts);
            }
        }
        let mut n = self.open.entry(addr).or_insert(0);
        if s.max_per_address > 0 && *n >= s.max_per_address {
            return Err(Refusal::TooManyConnections);
        }
        *n += 1;
        drop(n);
        Ok(AddressSlot {
            open: Some((self.open.clone(), addr)),
        })
    }

    /// The attempts limiter for `rate`, rebuilt when RELOAD changed the rate.
    fn limiter(&self, rate: u32) -> Arc<(u32, DefaultKeyedRateLimiter<IpAddr>)> {
        if let Some(l) = self.attempts.load_full()
            && l.0 == rate
        {
            return l;
        }
        let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.saturating_mul(2)).unwrap_or(per_second);
        let l = Arc::new((
            rate,
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        ));
        self.attempts.store(Some(l.clone()));
        l
    }

    /// A failed authentication from `addr`; true when it started a lockout.
    pub fn auth_failed(&self, s: &Settings, addr: Option<IpAddr>) -> bool {
        let Some(addr) = Self::exempt(s, addr) else {
            return false;
        };
        if s.failure_limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut f = self.failures.entry(addr).or_insert(Failures {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(f.since) > s.failure_window {
            f.count = 0;
            f.since = now;
        }
        f.count += 1;
        if f.count >= s.failure_limit && f.locked_until.is_none_or(|t| t <= now) {
            f.locked_until = Some(now + s.lockout);
            f.count = 0;
            f.since = now;
            return true;
        }
        false
    }

    /// Forgets what no longer matters: failures outside their window and ended lockouts,
    /// and the rate limiter's idle keys. Run periodically, so the maps stay bounded by the
    /// addresses seen recently.
    pub fn prune(&self, s: &Settings) {
        let now = Instant::now();
        self.failures.retain(|_, f| {
            f.locked_until.is_some_and(|t| now < t)
                || now.duration_since(f.since) <= s.failure_window
        });
        if let Some(l) = self.attempts.load_full() {
            l.1.retain_recent();
        }
    }

    /// Addresses locked out now (SHOW LISTS, tests).
    pub fn locked_out(&self) -> usize {
        let now = Instant::now();
        self.failures
            .iter()
            .filter(|f| f.locked_until.is_some_and(|t| now < t))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::addresses::Cidr;
    use std::time::Duration;

    fn settings() -> Settings {
        Settings {
            max_per_address: 2,
            attempts_per_second: 1000,
            failure_limit: 3,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_millis(200),
            exempt: vec![Cidr::try_from("127.0.0.0/8".to_string()).unwrap()],
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn connections_per_address_come_back() {
        let l = Limits::default();
        let s = settings();
        let a = l.admit(&s, ip("10.0.0.1")).unwrap();
        let _b = l.admit(&s, ip("10.0.0.1")).unwrap();
        assert_eq!(
            l.admit(&s, ip("10.0.0.1")).err(),
            Some(Refusal::TooManyConnections)
        );
        assert!(l.admit(&s, ip("10.0.0.2")).is_ok(), "another address");
        drop(a);
        assert!(l.admit(&s, ip("10.0.0.1")).is_ok());
        for _ in 0..10 {
            assert!(l.admit(&s, ip("127.0.0.1")).is_ok(), "exempt");
        }
    }

    #[test]
    fn lockout_and_recovery() {
        let l = Limits::default();
        let s = settings();
        assert!(!l.auth_failed(&s, ip("10.0.0.9")));
        assert!(!l.auth_failed(&s, ip("10.0.0.9")));
        assert!(l.auth_failed(&s, ip("10.0.0.9")));
        assert_eq!(l.admit(&s, ip("10.0.0.9")).err(), Some(Refusal::LockedOut));
        assert_eq!(l.locked_out(), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.admit(&s, ip("10.0.0.9")).is_ok());
        assert!(!l.auth_failed(&s, ip("127.0.0.1")), "exempt never locks");
    }

    #[test]
    fn attempts_are_rate_limited() {
        let l = Limits::default();
        let s = Settings {
            attempts_per_second: 5,
            max_per_address: 0,
            ..settings()
        };
        let ok = (0..30)
            .filter(|_| l.admit(&s, ip("10.0.0.3")).is_ok())
            .count();
        assert!((10..=11).contains(&ok), "burst of twice the rate: {ok}");
        assert!(l.admit(&s, ip("10.0.0.4")).is_ok());
    }
}
