//! Limits per identity (a `[[users]]` entry, an API key, a token subject): client
//! connections open, servers held at once in a pool (the [`Share`] the pool's queue honours)
//! and transactions per second (token buckets, one governor keyed limiter per quota). One
//! entry per identity with a client or call in flight; the last one out removes it, and
//! buckets that have filled up again are pruned, so a stream of distinct token subjects
//! cannot grow either table. A bucket outlives its clients until full: reconnecting, or
//! making MCP calls one at a time, does not start a fresh burst.

use crate::config::{IdentityLimits, OnLimit};
use crate::error::ClientError;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An identity's cap on the servers it holds at once in one pool.
#[derive(Debug, PartialEq, Eq)]
pub struct Share {
    /// The identity, as its limits are counted (`user:alice`, `key:batch-agent`, `sub:...`).
    pub who: Arc<str>,
    /// 0: no cap.
    pub max: usize,
    /// At the cap: refused (else it waits its turn).
    pub refuse: bool,
    /// Places of its pool kept for it alone (dedicated_connections).
    pub dedicated: usize,
}

struct Entry {
    /// Clients and calls holding it.
    refs: AtomicUsize,
    clients: AtomicUsize,
    /// Replaced when an admission brings other limits (a RELOAD): its clients count on.
    rules: ArcSwap<Rules>,
}

/// An identity's limits and what enforces them.
struct Rules {
    limits: IdentityLimits,
    share: Option<Arc<Share>>,
    rate: Option<Arc<Buckets>>,
}

type Buckets = DefaultKeyedRateLimiter<Box<str>>;

/// Admissions between two prunings of the buckets.
const PRUNE_EVERY: usize = 256;

#[derive(Default)]
pub struct Identities {
    table: DashMap<Box<str>, Arc<Entry>>,
    /// Buckets by quota (transactions_per_second, transaction_burst).
    rates: DashMap<(u32, u32), Arc<Buckets>>,
    admissions: AtomicUsize,
}

/// A client or call counted against its identity's limits until dropped.
pub struct Admitted {
    table: Arc<Identities>,
    who: Box<str>,
    entry: Arc<Entry>,
    client: bool,
}

/// Why a transaction may not start now.
pub enum RateVerdict {
    Go,
    /// Within the bucket after this long.
    WaitFor(Duration),
    Refused(ClientError),
}

impl Identities {
    /// Counts one client (`client`) or call of `who`: 53300 when its client connections are at
    /// max_user_client_connections. Limits changed by RELOAD apply from the next admission
    /// on (to clients admitted since; a connected client keeps its share of a pool).
    pub fn admit(
        self: &Arc<Self>,
        who: &str,
        limits: IdentityLimits,
        client: bool,
    ) -> Result<Admitted, ClientError> {
        let entry = {
            let slot = self
                .table
                .entry(who.into())
                .or_insert_with(|| Arc::new(self.entry(who, limits)));
            if slot.rules.load().limits != limits {
                slot.rules.store(Arc::new(self.rules(who, limits)));
            }
            let e = slot.value();
            let max = limits.max_user_client_connections;
            if client && max > 0 && e.clients.load(Ordering::Acquire) >= max {
                drop(slot);
                self.forget_if_unused(who);
                return Err(ClientError::over_limit_fatal(format!(
                    "too many client connections for {who} (max_user_client_connections {max})"
                )));
            }
            e.refs.fetch_add(1, Ordering::AcqRel);
            if client {
                e.clients.fetch_add(1, Ordering::AcqRel);
            }
            e.clone()
        };
        if self
            .admissions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.prune();
        }
        Ok(Admitted {
            table: self.clone(),
            who: who.into(),
            entry,
            client,
        })
    }

    fn forget_if_unused(&self, who: &str) {
        self.table
            .remove_if(who, |_, e| e.refs.load(Ordering::Acquire) == 0);
    }

    /// Drops the buckets that are full again (as good as new).
    pub fn prune(&self) {
        for b in self.rates.iter() {
            b.retain_recent();
            b.shrink_to_fit();
        }
    }

    /// Buckets held (for tests and SHOW MEM-style accounting).
    pub fn buckets(&self) -> usize {
        self.rates.iter().map(|b| b.len()).sum()
    }

    fn entry(&self, who: &str, limits: IdentityLimits) -> Entry {
        Entry {
            refs: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            rules: ArcSwap::from_pointee(self.rules(who, limits)),
        }
    }

    fn rules(&self, who: &str, limits: IdentityLimits) -> Rules {
        let shared = limits.max_user_connections > 0 || limits.dedicated_connections > 0;
        let share = shared.then(|| {
            Arc::new(Share {
                who: who.into(),
                max: limits.max_user_connections,
                refuse: limits.at_max_user_connections == OnLimit::Refuse,
                dedicated: limits.dedicated_connections,
            })
        });
        let rate = NonZeroU32::new(limits.transactions_per_second).map(|per_second| {
            let burst = NonZeroU32::new(limits.transaction_burst).unwrap_or(per_second);
            let quota = (per_second.get(), burst.get());
            self.rates
                .entry(quota)
                .or_insert_with(|| {
                    Arc::new(RateLimiter::keyed(
                        Quota::per_second(per_second).allow_burst(burst),
                    ))
                })
                .clone()
        });
        Rules {
            limits,
            share,
            rate,
        }
    }

    /// Identities with a client or call in flight.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl Admitted {
    /// The share of a pool it may hold, if limited.
    pub fn share(&self) -> Option<Arc<Share>> {
        self.entry.rules.load().share.clone()
    }

    /// Whether it has a transaction rate to check.
    pub fn rate_limited(&self) -> bool {
        self.entry.rules.load().rate.is_some()
    }

    /// Takes a transaction from its bucket, or says how long to wait, or refuses (53400).
    pub fn start_transaction(&self) -> RateVerdict {
        let rules = self.entry.rules.load();
        let Some(rate) = &rules.rate else {
            return RateVerdict::Go;
        };
        match rate.check_key(&self.who) {
            Ok(()) => RateVerdict::Go,
            Err(not_until) => {
                let l = &rules.limits;
                if l.over_transaction_rate == OnLimit::Wait {
                    use governor::clock::Clock;
                    let now = governor::clock::DefaultClock::default().now();
                    return RateVerdict::WaitFor(not_until.wait_time_from(now));
                }
                RateVerdict::Refused(ClientError::over_rate(format!(
                    "{} is over its transaction rate (transactions_per_second {}, transaction_burst {}); retry shortly",
                    self.who, l.transactions_per_second, l.transaction_burst
                )))
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.client {
            self.entry.clients.fetch_sub(1, Ordering::AcqRel);
        }
        if self.entry.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.table.forget_if_unused(&self.who);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(clients: usize, rate: u32) -> IdentityLimits {
        IdentityLimits {
            max_user_client_connections: clients,
            transactions_per_second: rate,
            transaction_burst: rate,
            over_transaction_rate: OnLimit::Refuse,
            ..IdentityLimits::default()
        }
    }

    #[test]
    fn client_connections_are_capped_per_identity_and_the_table_empties() {
        let t = Arc::new(Identities::default());
        let a = t.admit("key:a", limits(2, 0), true).unwrap();
        let b = t.admit("key:a", limits(2, 0), true).unwrap();
        let err = t.admit("key:a", limits(2, 0), true).err().unwrap();
        assert_eq!(err.code, "53300");
        assert!(err.message.contains("max_user_client_connections 2"));
        // Another identity, and a call (not a connection) of the same one, are unaffected.
        let other = t.admit("key:b", limits(2, 0), true).unwrap();
        let call = t.admit("key:a", limits(2, 0), false).unwrap();
        drop((a, b, other, call));
        assert!(t.is_empty(), "nothing is kept for identities that left");
    }

    #[test]
    fn the_rate_refuses_beyond_its_burst() {
        let t = Arc::new(Identities::default());
        let a = t.admit("sub:x", limits(0, 3), true).unwrap();
        let verdicts: Vec<bool> = (0..5)
            .map(|_| matches!(a.start_transaction(), RateVerdict::Go))
            .collect();
        assert_eq!(verdicts, [true, true, true, false, false]);
        match a.start_transaction() {
            RateVerdict::Refused(e) => {
                assert_eq!(e.code, "53400");
                assert!(e.message.contains("transactions_per_second 3"), "{e}");
            }
            _ => panic!("expected a refusal"),
        }
        // Its own bucket only.
        let b = t.admit("sub:y", limits(0, 3), true).unwrap();
        assert!(matches!(b.start_transaction(), RateVerdict::Go));
        // Leaving and coming back does not refill it.
        drop(a);
        let a = t.admit("sub:x", limits(0, 3), true).unwrap();
        assert!(matches!(a.start_transaction(), RateVerdict::Refused(_)));
    }

    #[test]
    fn full_buckets_are_pruned() {
        let t = Arc::new(Identities::default());
        for n in 0..100 {
            let a = t.admit(&format!("sub:{n}"), limits(0, 1000), true).unwrap();
            assert!(matches!(a.start_transaction(), RateVerdict::Go));
        }
        assert_eq!(t.buckets(), 100);
        std::thread::sleep(Duration::from_millis(5));
        t.prune();
        assert_eq!(
            t.buckets(),
            0,
            "a millisecond refills one transaction of 1000/s"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn new_limits_apply_to_an_identity_that_stays_connected() {
        let t = Arc::new(Identities::default());
        let _a = t.admit("key:a", limits(3, 0), true).unwrap();
        let _b = t.admit("key:a", limits(3, 0), true).unwrap();
        // RELOAD tightened it to 2: the third is refused although two never left.
        let err = t.admit("key:a", limits(2, 0), true).err().unwrap();
        assert!(
            err.message.contains("max_user_client_connections 2"),
            "{err}"
        );
    }

    #[test]
    fn waiting_at_the_rate_says_for_how_long() {
        let t = Arc::new(Identities::default());
        let l = IdentityLimits {
            over_transaction_rate: OnLimit::Wait,
            ..limits(0, 10)
        };
        let a = t.admit("sub:x", l, true).unwrap();
        for _ in 0..10 {
            assert!(matches!(a.start_transaction(), RateVerdict::Go));
        }
        match a.start_transaction() {
            RateVerdict::WaitFor(d) => assert!(d <= Duration::from_millis(100), "{d:?}"),
            _ => panic!("expected a wait"),
        }
    }
}
