//! An upstream as configured (a host name, an IP literal or a unix socket directory) and the
//! servers it stands for. A name is looked up and each of its addresses becomes an endpoint
//! with its own health and circuit; it is looked up again every `dns_max_ttl` (after a failed
//! lookup, `dns_nxdomain_ttl`, keeping the addresses found before). An address that leaves
//! retires the connections opened through the routes listing the name; one that stays keeps
//! what was learned of it.

use super::endpoint::Endpoint;
use super::health::{self, Checks};
use crate::config::{EndpointKind, UpstreamEntry};
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How long lookups stand: (dns_max_ttl, dns_nxdomain_ttl).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ttl {
    pub found: Duration,
    pub failed: Duration,
}

pub struct Name {
    pub host: Box<str>,
    pub port: u16,
    region: Option<Box<str>>,
    kind: EndpointKind,
    tenant: Option<Box<str>>,
    /// A host name, looked up (an IP literal or a socket directory is its one endpoint).
    looked_up: bool,
    now: ArcSwap<Addresses>,
    /// The last lookup: when, and whether it failed. One lookup at a time.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
    ttl: Mutex<Ttl>,
    checks: Mutex<Checks>,
    /// Why the last lookup failed.
    error: Mutex<Option<String>>,
}

/// The servers a name stands for, and the generations of those that left (so that the
/// routes' generation, a sum, never goes back when one leaves); swapped as one.
#[derive(Default)]
struct Addresses {
    endpoints: Arc<Vec<Arc<Endpoint>>>,
    departed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `host` is used as it is: a unix socket directory or an IP literal.
fn literal(host: &str) -> bool {
    host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
}

impl Name {
    pub fn new(entry: &UpstreamEntry, port: u16) -> Name {
        let looked_up = !literal(&entry.host);
        let name = Name {
            host: entry.host.as_str().into(),
            port,
            region: entry.region.as_deref().map(Box::from),
            kind: entry.kind,
            tenant: entry.tenant.as_deref().map(Box::from),
            looked_up,
            now: ArcSwap::from_pointee(Addresses::default()),
            last: tokio::sync::Mutex::new(None),
            ttl: Mutex::new(Ttl::default()),
            checks: Mutex::new(Checks::default()),
            error: Mutex::new(None),
        };
        if !looked_up {
            name.store(vec![name.endpoint(None)], 0);
        }
        name
    }

    /// A name standing for `e` alone (tests of routes).
    #[cfg(test)]
    pub fn of(e: Arc<Endpoint>) -> Name {
        let entry = UpstreamEntry {
            host: crate::config::Text::new(&*e.host),
            port: Some(e.port),
            region: None,
            kind: e.kind,
            tenant: None,
        };
        let name = Name::new(&entry, e.port);
        name.store(vec![e], 0);
        name
    }

    fn endpoint(&self, addr: Option<SocketAddr>) -> Arc<Endpoint> {
        let e = Arc::new(Endpoint::new(
            &self.host,
            self.port,
            addr,
            self.region.as_deref(),
            self.kind,
            self.tenant.as_deref(),
        ));
        e.set_checks(*lock(&self.checks));
        e
    }

    /// Starts its endpoints' health checks and, for a host name, its lookups (all of it ends
    /// when the name is forgotten).
    pub fn start(self: &Arc<Self>) {
        for e in self.endpoints().iter() {
            health::spawn(e);
        }
        if self.looked_up && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(refresh(Arc::downgrade(self)));
        }
    }

    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    fn store(&self, endpoints: Vec<Arc<Endpoint>>, departed: u64) {
        self.now.store(Arc::new(Addresses {
            endpoints: Arc::new(endpoints),
            departed,
        }));
    }

    /// The servers it stands for now (none while a name has never resolved).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.now.load().endpoints.clone()
    }

    /// Moves forward whenever one of its servers changes role, health or lag (an address
    /// leaving retires only its own connections: [`Endpoint::departed`]).
    pub fn generation(&self) -> u64 {
        let now = self.now.load();
        now.departed + now.endpoints.iter().map(|e| e.generation()).sum::<u64>()
    }

    /// The configuration's knobs, for its endpoints now and those it finds later.
    pub fn configure(&self, checks: Checks, ttl: Ttl) {
        *lock(&self.checks) = checks;
        *lock(&self.ttl) = ttl;
        for e in self.endpoints().iter() {
            e.set_checks(checks);
        }
    }

    /// Why its last lookup failed, if it did.
    pub fn lookup_error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// Looks the name up again if its last lookup is older than it may be; returns how long
    /// the outcome stands.
    pub async fn fresh(&self) -> Duration {
        let ttl = *lock(&self.ttl);
        if !self.looked_up {
            return ttl.found;
        }
        let mut last = self.last.lock().await;
        let stands = |failed| if failed { ttl.failed } else { ttl.found };
        if let Some((at, failed)) = *last
            && at.elapsed() < stands(failed)
        {
            return stands(failed) - at.elapsed();
        }
        let found = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map(|a| a.collect::<Vec<_>>());
        let failed = match found {
            Ok(addrs) if !addrs.is_empty() => {
                *lock(&self.error) = None;
                self.found(addrs);
                false
            }
            Ok(_) => self.lookup_failed("no addresses".into()),
            Err(e) => self.lookup_failed(e.to_string()),
        };
        *last = Some((Instant::now(), failed));
        stands(failed)
    }

    fn lookup_failed(&self, why: String) -> bool {
        tracing::warn!(upstream = %self.host, error = %why, "upstream host name lookup failed; its addresses found before stay");
        *lock(&self.error) = Some(why);
        true
    }

    /// A lookup found `addrs`: each is an endpoint, those known before kept as they are; those
    /// that left are marked so, and their connections retire.
    fn found(&self, mut addrs: Vec<SocketAddr>) {
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(*a));
        let before = self.now.load_full();
        let old = &before.endpoints;
        let left: Vec<&Arc<Endpoint>> = old
            .iter()
            .filter(|e| !e.addr.is_some_and(|a| addrs.contains(&a)))
            .collect();
        if left.is_empty() && old.len() == addrs.len() {
            return;
        }
        // New addresses are checked with the login their neighbours were.
        let login = old.iter().find_map(|e| e.login());
        let new: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|a| match old.iter().find(|e| e.addr == Some(*a)) {
                Some(e) => e.clone(),
                None => {
                    let e = self.endpoint(Some(*a));
                    if let Some(l) = &login {
                        e.remember_login(l);
                    }
                    health::spawn(&e);
                    e
                }
            })
            .collect();
        for e in &left {
            e.depart();
        }
        let gone: u64 = left.iter().map(|e| e.generation()).sum();
        tracing::info!(upstream = %self.host, addresses = ?addrs, "upstream host name resolved");
        self.store(new, before.departed + gone);
    }
}

/// Looks `name` up every `dns_max_ttl` (at least every second), so that an address that left
/// retires its connections even when no new one is opened.
async fn refresh(weak: Weak<Name>) {
    loop {
        let Some(name) = weak.upgrade() else { return };
        let stands = name.fresh().await.max(Duration::from_secs(1));
        drop(name);
        tokio::time::sleep(stands).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::route::Role;

    fn name(host: &str) -> Name {
        let entry: UpstreamEntry = toml::from_str(&format!("host = \"{host}\"")).unwrap();
        Name::new(&entry, 5432)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literals_are_one_endpoint_and_names_wait_for_their_lookup() {
        for host in ["10.0.0.1", "::1", "[::1]", "/var/run/postgresql"] {
            let n = name(host);
            assert_eq!(n.endpoints().len(), 1, "{host}");
            assert_eq!(n.endpoints()[0].addr, None);
        }
        assert!(name("db.example.com").endpoints().is_empty());
    }

    #[test]
    fn each_address_is_an_endpoint_and_one_that_stays_keeps_what_was_learned() {
        let n = name("db.example.com");
        n.found(vec![
            addr("10.0.0.1:5432"),
            addr("10.0.0.2:5432"),
            addr("10.0.0.1:5432"),
        ]);
        let first = n.endpoints();
        assert_eq!(first.len(), 2, "duplicates are one endpoint");
        assert_eq!(first[1].address(), "db.example.com/10.0.0.2:5432");
        first[0].learned(Role::Primary, false);
        first[0].learned(Role::Standby, false);
        let before = n.generation();

        // The same addresses in another order change nothing.
        n.found(vec![addr("10.0.0.2:5432"), addr("10.0.0.1:5432")]);
        assert_eq!(n.generation(), before);
        assert!(Arc::ptr_eq(&n.endpoints()[0], &first[0]));

        // A new address joins, one leaves: only the one that left is marked departed (its
        // connections retire), and the generation never goes back.
        n.found(vec![addr("10.0.0.2:5432"), addr("10.0.0.3:5432")]);
        assert!(first[0].departed() && !first[1].departed());
        assert_eq!(n.generation(), before);
        let now = n.endpoints();
        assert!(Arc::ptr_eq(&now[0], &first[1]), "kept with its health");
        now[1].learned(Role::Primary, false);
        now[1].learned(Role::Standby, false);
        assert!(n.generation() > before);
    }
}
