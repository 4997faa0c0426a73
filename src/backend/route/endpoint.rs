//! One upstream server as pgsluice knows it: its address, and what was learned of it (primary
//! or standby, healthy, circuit, latency, lag), shared by every database that lists it.

use super::breaker::{Breaker, State};
use crate::backend::connect::Upstream;
use crate::config::{EndpointKind, SessionAttrs};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a server said it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Unknown,
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// What was learned of an endpoint; read and written under its lock, never per message.
#[derive(Debug, Clone)]
pub struct Health {
    pub role: Role,
    /// `default_transaction_read_only` is on there.
    pub read_only: bool,
    /// Its last checks passed (an endpoint starts healthy: its first connection tells).
    pub healthy: bool,
    successes: u32,
    pub breaker: Breaker,
    /// Round trip of its health check, averaged (EWMA); 0: not measured yet.
    pub latency_us: f64,
    /// How far a standby's replay is behind, in seconds.
    pub lag: Option<f64>,
    /// Further than max_standby_lag: out of the read rotation.
    pub lagging: bool,
    pub last_error: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            role: Role::Unknown,
            read_only: false,
            healthy: true,
            successes: 0,
            breaker: Breaker::default(),
            latency_us: 0.0,
            lag: None,
            lagging: false,
            last_error: None,
        }
    }
}

impl Health {
    /// Whether a connection wanting `attrs` may use this server as last seen. A standby
    /// lagging more than `max_lag` (seconds, 0: no bound) serves no reads.
    pub fn fits(&self, attrs: SessionAttrs, max_lag: f64) -> bool {
        let lagging = max_lag > 0.0 && self.lag.is_some_and(|l| l > max_lag);
        match attrs {
            SessionAttrs::Any => true,
            SessionAttrs::PreferStandby => !(self.role == Role::Standby && lagging),
            SessionAttrs::ReadWrite => self.role == Role::Primary && !self.read_only,
            SessionAttrs::Primary => self.role == Role::Primary,
            SessionAttrs::ReadOnly => {
                (self.role == Role::Standby && !lagging)
                    || (self.role == Role::Primary && self.read_only)
            }
            SessionAttrs::Standby => self.role == Role::Standby && !lagging,
        }
    }

    /// Whether a standby is what `attrs` would rather have (prefer-standby).
    pub fn preferred(&self, attrs: SessionAttrs, max_lag: f64) -> bool {
        let lagging = max_lag > 0.0 && self.lag.is_some_and(|l| l > max_lag);
        attrs != SessionAttrs::PreferStandby || (self.role == Role::Standby && !lagging)
    }
}

pub struct Endpoint {
    pub host: Box<str>,
    pub port: u16,
    /// One of the addresses `host` resolved to (None: `host` is an IP literal or a unix
    /// socket directory, connected to as it is).
    pub addr: Option<SocketAddr>,
    pub region: Option<Box<str>>,
    pub kind: EndpointKind,
    pub tenant: Option<Box<str>>,
    health: Mutex<Health>,
    /// Bumped when its role changes: connections opened before are retired (read on every
    /// checkout of one of its connections, so an atomic, not under the lock).
    generation: AtomicU64,
    /// Its host name no longer resolves to it: its connections retire.
    departed: std::sync::atomic::AtomicBool,
    /// Servers of every pool open there now (the tie-breaker between near endpoints).
    pub open: AtomicUsize,
    /// How health checks log in: the latest pool login that reached it.
    login: Mutex<Option<Arc<Upstream>>>,
    /// The health checks' knobs as the configuration has them now.
    checks: Mutex<super::health::Checks>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Endpoint {
    pub fn new(
        host: &str,
        port: u16,
        addr: Option<SocketAddr>,
        region: Option<&str>,
        kind: EndpointKind,
        tenant: Option<&str>,
    ) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            addr,
            region: region.map(Box::from),
            kind,
            tenant: tenant.map(Box::from),
            health: Mutex::new(Health::default()),
            generation: AtomicU64::new(0),
            departed: Default::default(),
            open: AtomicUsize::new(0),
            login: Mutex::new(None),
            checks: Mutex::new(super::health::Checks::default()),
        }
    }

    /// `host:port`, IPv6 literals bracketed; `name/address:port` for one of a name's
    /// addresses.
    pub fn address(&self) -> String {
        match self.addr {
            Some(a) => format!("{}/{a}", self.host),
            None if self.host.starts_with('/')
                || !self.host.contains(':')
                || self.host.starts_with('[') =>
            {
                format!("{}:{}", self.host, self.port)
            }
            None => format!("[{}]:{}", self.host, self.port),
        }
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    pub fn breaker_state(&self, now: Instant) -> State {
        lock(&self.health).breaker.state(now)
    }

    /// Whether a connection may be tried now (the breaker's say), and whether it is the
    /// half-open circuit's probe.
    pub fn admit(&self, now: Instant) -> Option<bool> {
        let mut h = lock(&self.health);
        let probe = h.breaker.state(now) == State::HalfOpen;
        h.breaker.admit(now).then_some(probe)
    }

    /// The server answered: it is `role` (and read-only or not).
    pub fn learned(&self, role: Role, read_only: bool) {
        let mut h = lock(&self.health);
        if h.role != role || h.read_only != read_only {
            // Learning it the first time changes no choice made before.
            if h.role != Role::Unknown {
                tracing::warn!(upstream = %self.address(), from = h.role.as_str(), to = role.as_str(), "upstream changed role");
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            h.role = role;
            h.read_only = read_only;
        }
        h.breaker.success();
        h.last_error = None;
    }

    /// An attempt ended without saying anything of the server (its client went away): a
    /// half-open circuit's probe is free for the next one.
    pub fn abandoned(&self) {
        lock(&self.health).breaker.release_probe();
    }

    /// A connection got through, or the server answered it.
    pub fn reached(&self) {
        let mut h = lock(&self.health);
        h.breaker.success();
        h.last_error = None;
    }

    /// A connection or check failed; returns true when that opened the circuit.
    pub fn failed(&self, error: &str, threshold: u32, backoff: Duration) -> bool {
        let mut h = lock(&self.health);
        h.last_error = Some(error.to_owned());
        let opened = h.breaker.failure(Instant::now(), threshold, backoff);
        if opened {
            tracing::warn!(upstream = %self.address(), error, "circuit open: no connections go there until a probe succeeds");
        }
        opened
    }

    /// A health check's outcome: `Ok((latency, lag))` or the error. Becoming unhealthy or
    /// healthy, or a standby falling more than `max_lag` behind (0: no bound) or catching up,
    /// retires the connections of the databases that list it (they choose again).
    pub fn checked(
        &self,
        outcome: Result<(Duration, Option<f64>), String>,
        needed: u32,
        max_lag: f64,
    ) {
        let mut h = lock(&self.health);
        let lagging = |h: &Health| max_lag > 0.0 && h.lag.is_some_and(|l| l > max_lag);
        let (was_healthy, was_lagging) = (h.healthy, lagging(&h));
        self.apply_check(&mut h, outcome, needed);
        h.lagging = lagging(&h);
        if was_healthy != h.healthy || was_lagging != lagging(&h) {
            if lagging(&h) {
                tracing::warn!(upstream = %self.address(), lag = h.lag, "standby lags more than max_standby_lag: out of the read rotation");
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn apply_check(
        &self,
        h: &mut Health,
        outcome: Result<(Duration, Option<f64>), String>,
        needed: u32,
    ) {
        match outcome {
            Ok((rtt, lag)) => {
                let us = rtt.as_secs_f64() * 1e6;
                h.latency_us = if h.latency_us == 0.0 {
                    us
                } else {
                    h.latency_us * 0.7 + us * 0.3
                };
                h.lag = lag;
                h.successes = h.successes.saturating_add(1);
                if !h.healthy && h.successes >= needed {
                    tracing::info!(upstream = %self.address(), "upstream healthy again");
                    h.healthy = true;
                }
            }
            Err(e) => {
                if h.healthy {
                    tracing::warn!(upstream = %self.address(), error = %e, "upstream unhealthy");
                }
                h.healthy = false;
                h.successes = 0;
                h.last_error = Some(e);
            }
        }
    }

    /// Checks were turned off: what they said last no longer ranks it.
    pub fn unchecked(&self) {
        let mut h = lock(&self.health);
        h.healthy = true;
        h.lagging = false;
        h.lag = None;
    }

    /// Its name's lookup no longer finds it.
    pub fn depart(&self) {
        self.departed.store(true, Ordering::Release);
    }

    pub fn departed(&self) -> bool {
        self.departed.load(Ordering::Acquire)
    }

    /// The generation connections opened now carry.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A login that just worked on its database: the checks use the latest (a rotated
    /// password or a removed user does not strand them).
    pub fn remember_login(&self, up: &Upstream) {
        let mut l = lock(&self.login);
        if l.as_deref()
            .is_none_or(|old| old.user != up.user || old.password != up.password)
        {
            // A copy without the route: the route holds this endpoint, which would then hold
            // itself and never be forgotten.
            *l = Some(Arc::new(Upstream {
                route: None,
                ..up.clone()
            }));
        }
    }

    pub fn set_checks(&self, checks: super::health::Checks) {
        *lock(&self.checks) = checks;
    }

    pub fn checks(&self) -> super::health::Checks {
        *lock(&self.checks)
    }

    pub fn login(&self) -> Option<Arc<Upstream>> {
        lock(&self.login).clone()
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_target_session_attrs_accepts() {
        let primary = Health {
            role: Role::Primary,
            ..Health::default()
        };
        let standby = Health {
            role: Role::Standby,
            lag: Some(1.0),
            ..Health::default()
        };
        let lagging = Health {
            lag: Some(30.0),
            ..standby.clone()
        };
        use SessionAttrs::*;
        for (attrs, p, s, l) in [
            (Any, true, true, true),
            (ReadWrite, true, false, false),
            (Primary, true, false, false),
            (ReadOnly, false, true, false),
            (Standby, false, true, false),
            (PreferStandby, true, true, false),
        ] {
            assert_eq!(
                (
                    primary.fits(attrs, 10.0),
                    standby.fits(attrs, 10.0),
                    lagging.fits(attrs, 10.0)
                ),
                (p, s, l),
                "{attrs:?}"
            );
        }
        assert!(standby.preferred(PreferStandby, 10.0));
        assert!(!lagging.preferred(PreferStandby, 10.0));
        assert!(lagging.fits(Standby, 0.0), "no bound: lag does not matter");
    }
}
