//! Choosing a database's upstream for a new server connection (docs/resilience.md): the
//! candidates that fit the database's `target_session_attrs` as last seen, in the order to
//! try them (known fits, then unknown, then known misfits, since roles change; each group by
//! region, latency within `proximity_tolerance`, then fewest open servers). The caller checks
//! what each server says it is after login, as libpq does.

pub mod breaker;
mod connect;
pub mod endpoint;
pub mod health;
pub mod name;

pub use connect::{Via, Want, connect};

pub use endpoint::{Endpoint, Health, Role};
pub use name::{Name, Ttl};

use crate::backend::params::SessionParams;
use crate::config::SessionAttrs;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A database's upstreams and what its clients want of them.
#[derive(Clone)]
pub struct Route {
    pub attrs: SessionAttrs,
    /// Its upstreams as configured; each stands for one server or (a host name) several.
    pub names: Vec<Arc<Name>>,
    /// max_standby_lag in seconds (0: no bound).
    pub max_lag: f64,
    pub tolerance: Duration,
    /// This instance's region.
    pub region: Option<Arc<str>>,
    /// Failures in a row that open an endpoint's circuit, and its first backoff.
    pub failures: u32,
    pub backoff: Duration,
    /// server_connect_timeout: an attempt given less (what a connect's deadline left it)
    /// that times out says nothing against the server.
    pub attempt: Duration,
}

impl PartialEq for Route {
    /// The same servers wanted the same way (a RELOAD that changes any of it retires the
    /// connections opened under the old one).
    fn eq(&self, o: &Route) -> bool {
        self.attrs == o.attrs
            && self.max_lag == o.max_lag
            && self.tolerance == o.tolerance
            && self.region == o.region
            && self.failures == o.failures
            && self.backoff == o.backoff
            && self.names.len() == o.names.len()
            && self
                .names
                .iter()
                .zip(&o.names)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for Route {}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.names.iter().map(|n| &*n.host).collect();
        f.debug_struct("Route")
            .field("attrs", &self.attrs.as_str())
            .field("endpoints", &addrs)
            .finish()
    }
}

impl Route {
    /// Every server its upstreams stand for now.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.names
            .iter()
            .flat_map(|n| n.endpoints().to_vec())
            .collect()
    }

    /// Whether a connection wanting `attrs` from a client of `region` would be opened in
    /// that region now (its best candidate is there: healthy, fitting, circuit closed).
    pub fn leads_in(&self, region: &str, attrs: SessionAttrs) -> bool {
        if !self.names.iter().any(|n| n.region() == Some(region)) {
            return false;
        }
        let there = Route {
            attrs,
            region: Some(region.into()),
            ..self.clone()
        };
        let best = there.candidates(Instant::now()).into_iter().next();
        best.is_some_and(|e| e.region.as_deref() == Some(region) && there.rank(&e.health()) < 3)
    }

    /// The endpoints to try for a new connection, best first; those whose circuit is open
    /// are not there, and those failing their health checks come after the healthy ones of
    /// their kind (a missed check does not take a fitting primary away).
    pub fn candidates(&self, now: Instant) -> Vec<Arc<Endpoint>> {
        let seen: Vec<(Arc<Endpoint>, Health)> = self
            .endpoints()
            .into_iter()
            .map(|e| {
                let h = e.health();
                (e, h)
            })
            .filter(|(_, h)| h.breaker.state(now) != breaker::State::Open)
            .collect();
        let best = |rank: u8| {
            seen.iter()
                .filter(|(_, h)| self.rank(h) == rank && h.latency_us > 0.0)
                .map(|(_, h)| h.latency_us)
                .fold(f64::INFINITY, f64::min)
        };
        let tolerance = self.tolerance.as_secs_f64() * 1e6;
        let mut keyed: Vec<_> = seen
            .iter()
            .map(|(e, h)| {
                let rank = self.rank(h);
                let elsewhere = match (&self.region, &e.region) {
                    (Some(mine), Some(theirs)) => **mine != **theirs,
                    _ => false,
                };
                let far = h.latency_us > best(rank) + tolerance;
                let open = e.open.load(Ordering::Relaxed);
                (
                    (rank == 3, !h.healthy, rank, elsewhere, far, open),
                    e.clone(),
                )
            })
            .collect();
        keyed.sort_by_key(|(k, _)| *k);
        keyed.into_iter().map(|(_, e)| e).collect()
    }

    /// 0: fits as last seen (and is preferred); 1: not known yet; 2: fits but is not
    /// preferred (prefer-standby's primary); 3: did not fit when last seen.
    fn rank(&self, h: &Health) -> u8 {
        if h.role == Role::Unknown {
            return 1;
        }
        match (
            h.fits(self.attrs, self.max_lag),
            h.preferred(self.attrs, self.max_lag),
        ) {
            (true, true) => 0,
            (true, false) => 2,
            (false, _) => 3,
        }
    }

    /// The sum of its names' generations: it moves whenever a server changes role, health or
    /// lag, or an address leaves (a few atomic loads: read on every checkout of a routed
    /// connection).
    pub fn generation(&self) -> u64 {
        self.names.iter().map(|n| n.generation()).sum()
    }

    /// Whether the attrs need to know a server's role at all.
    pub fn needs_role(&self) -> bool {
        self.attrs != SessionAttrs::Any
    }
}

/// What a server's login parameters say it is: PostgreSQL 14 and later report
/// `in_hot_standby` and `default_transaction_read_only`. None: it did not say (an older server
/// or a pooler), and a query must tell.
pub fn role_from_params(p: &SessionParams) -> Option<(Role, bool)> {
    let standby = p.reported.get("in_hot_standby")?;
    let read_only = p.reported.get("default_transaction_read_only") == Some("on");
    let role = if standby == "on" {
        Role::Standby
    } else {
        Role::Primary
    };
    Some((role, read_only))
}

/// The query that tells when the parameters do not.
pub const ROLE_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.current_setting('default_transaction_read_only')";

/// Every upstream pgsluice knows, by what it is, shared by the databases that list it: one
/// lookup, and per server one health check and one circuit.
#[derive(Default)]
pub struct Endpoints {
    by_addr: DashMap<EndpointKey, Arc<Name>>,
}

/// (host, port, tenant, kind, region): an entry changed in any of these is a new upstream,
/// so a RELOAD that makes a server a transaction pooler retires the connections made before.
type EndpointKey = (String, u16, Option<String>, &'static str, Option<String>);

impl Endpoints {
    /// The upstream for this entry, made (and its lookups and health checks started) on
    /// first use; it follows `checks` and `ttl` from then on.
    pub fn get(
        &self,
        entry: &crate::config::UpstreamEntry,
        default_port: u16,
        checks: health::Checks,
        ttl: Ttl,
    ) -> Arc<Name> {
        let port = entry.port.unwrap_or(default_port);
        let key = (
            entry.host.to_string(),
            port,
            entry.tenant.as_ref().map(|t| t.to_string()),
            entry.kind.as_str(),
            entry.region.as_ref().map(|r| r.to_string()),
        );
        match self.by_addr.entry(key) {
            dashmap::Entry::Occupied(o) => {
                o.get().configure(checks, ttl);
                o.get().clone()
            }
            dashmap::Entry::Vacant(v) => {
                let n = Arc::new(Name::new(entry, port));
                n.configure(checks, ttl);
                v.insert(n.clone());
                n.start();
                n
            }
        }
    }

    /// Forgets upstreams no database lists and no connection uses any more (after a
    /// RELOAD): their lookups and checks stop and their metrics go.
    pub fn prune(&self) {
        self.by_addr.retain(|_, n| {
            Arc::strong_count(n) > 1 || n.endpoints().iter().any(|e| Arc::strong_count(e) > 1)
        });
    }

    /// Every server, in the order of their addresses.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        let mut v: Vec<_> = self
            .by_addr
            .iter()
            .flat_map(|n| n.value().endpoints().to_vec())
            .collect();
        v.sort_by(|a, b| {
            (&a.host, a.port, &a.tenant, a.addr).cmp(&(&b.host, b.port, &b.tenant, b.addr))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointKind;

    fn endpoint(port: u16, region: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            "127.0.0.1",
            port,
            None,
            Some(region),
            EndpointKind::Postgres,
            None,
        ))
    }

    fn route(attrs: SessionAttrs, endpoints: &[Arc<Endpoint>]) -> Route {
        Route {
            attrs,
            names: endpoints
                .iter()
                .map(|e| Arc::new(Name::of(e.clone())))
                .collect(),
            max_lag: 10.0,
            tolerance: Duration::from_millis(2),
            region: Some("here".into()),
            failures: 3,
            backoff: Duration::from_secs(5),
            attempt: Duration::from_secs(15),
        }
    }

    fn ports(v: &[Arc<Endpoint>]) -> Vec<u16> {
        v.iter().map(|e| e.port).collect()
    }

    #[test]
    fn known_fits_go_first_then_unknown_then_misfits() {
        let (a, b, c) = (
            endpoint(1, "here"),
            endpoint(2, "here"),
            endpoint(3, "here"),
        );
        a.learned(Role::Standby, false);
        c.learned(Role::Primary, false);
        let now = Instant::now();
        let rw = route(SessionAttrs::ReadWrite, &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ports(&rw.candidates(now)), [3, 2, 1]);
        let ro = route(
            SessionAttrs::PreferStandby,
            &[c.clone(), b.clone(), a.clone()],
        );
        assert_eq!(ports(&ro.candidates(now)), [1, 2, 3]);
        // An open circuit takes a server out; an unhealthy one goes after the healthy ones.
        for _ in 0..3 {
            c.failed("refused", 3, Duration::from_secs(5));
        }
        assert_eq!(ports(&rw.candidates(now)), [2, 1]);
        b.checked(Err("check failed".into()), 2, 0.0);
        assert_eq!(
            ports(&rw.candidates(now)),
            [2, 1],
            "unhealthy, but before misfits"
        );
        let (d, f) = (endpoint(4, "here"), endpoint(5, "here"));
        d.learned(Role::Primary, false);
        f.learned(Role::Primary, false);
        d.checked(Err("check failed".into()), 2, 0.0);
        let two = route(SessionAttrs::ReadWrite, &[d.clone(), f.clone()]);
        assert_eq!(ports(&two.candidates(now)), [5, 4], "healthy ones first");
    }

    #[test]
    fn the_nearer_region_and_latency_win_then_fewer_open_servers() {
        let (a, b, c) = (endpoint(1, "far"), endpoint(2, "here"), endpoint(3, "here"));
        for e in [&a, &b, &c] {
            e.learned(Role::Primary, false);
        }
        a.checked(Ok((Duration::from_micros(100), None)), 1, 0.0);
        b.checked(Ok((Duration::from_micros(25_000), None)), 1, 0.0);
        c.checked(Ok((Duration::from_micros(1_000), None)), 1, 0.0);
        let r = route(SessionAttrs::Any, &[a.clone(), b.clone(), c.clone()]);
        let now = Instant::now();
        // Same region first; within it the 1 ms one is near, the 25 ms one is not.
        assert_eq!(ports(&r.candidates(now)), [3, 2, 1]);
        // Within the tolerance, the one with fewer open servers.
        b.checked(Ok((Duration::from_micros(1_000), None)), 1, 0.0);
        for _ in 0..20 {
            b.checked(Ok((Duration::from_micros(1_500), None)), 1, 0.0);
        }
        c.opened();
        assert_eq!(ports(&r.candidates(now))[..2], [2, 3]);
    }

    #[test]
    fn roles_come_from_the_login_parameters_when_reported() {
        let mut p = SessionParams::default();
        assert_eq!(role_from_params(&p), None);
        p.reported.set("in_hot_standby", "on");
        assert_eq!(role_from_params(&p), Some((Role::Standby, false)));
        p.reported.set("in_hot_standby", "off");
        p.reported.set("default_transaction_read_only", "on");
        assert_eq!(role_from_params(&p), Some((Role::Primary, true)));
    }
}
