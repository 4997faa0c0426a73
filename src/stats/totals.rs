//! Per-pool totals, PgBouncer's SHOW STATS counters: server assignments, transactions,
//! queries, bytes and times. The relay adds to them once per ReadyForQuery; averages per
//! `stats_period` are computed by the pool's maintenance task.

use super::histogram::Histogram;
use crate::config::MAX_CLASSES;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Totals {
    pub server_assignments: AtomicU64,
    pub xacts: AtomicU64,
    pub queries: AtomicU64,
    /// Bytes from clients (forwarded to servers) and to clients.
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    pub wait_us: AtomicU64,
    /// Parse messages from clients, and binds (PgBouncer's client_parse_count, bind_count).
    pub client_parses: AtomicU64,
    /// Parse messages the proxy sent servers: a client's Parse, or its statement given to
    /// a server that lacked it (a prepared statement cache miss).
    pub server_parses: AtomicU64,
    pub binds: AtomicU64,
}

/// A copy of the totals at one moment, or per-second averages over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub server_assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, o: Snapshot) -> Snapshot {
        Snapshot {
            server_assignments: self.server_assignments + o.server_assignments,
            xacts: self.xacts + o.xacts,
            queries: self.queries + o.queries,
            received: self.received + o.received,
            sent: self.sent + o.sent,
            xact_us: self.xact_us + o.xact_us,
            query_us: self.query_us + o.query_us,
            wait_us: self.wait_us + o.wait_us,
            client_parses: self.client_parses + o.client_parses,
            server_parses: self.server_parses + o.server_parses,
            binds: self.binds + o.binds,
        }
    }
}

impl Totals {
    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            server_assignments: l(&self.server_assignments),
            xacts: l(&self.xacts),
            queries: l(&self.queries),
            received: l(&self.received),
            sent: l(&self.sent),
            xact_us: l(&self.xact_us),
            query_us: l(&self.query_us),
            wait_us: l(&self.wait_us),
            client_parses: l(&self.client_parses),
            server_parses: l(&self.server_parses),
            binds: l(&self.binds),
        }
    }
}

impl Snapshot {
    /// PgBouncer's averages between two snapshots `secs` apart: counts and bytes per second,
    /// times per transaction, query or assignment (microseconds).
    pub fn averages(&self, earlier: &Snapshot, secs: f64) -> Snapshot {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let per_sec = |n: u64| {
            if secs > 0.0 {
                (n as f64 / secs) as u64
            } else {
                0
            }
        };
        let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        let xacts = d(self.xacts, earlier.xacts);
        let queries = d(self.queries, earlier.queries);
        let assignments = d(self.server_assignments, earlier.server_assignments);
        Snapshot {
            server_assignments: per_sec(assignments),
            xacts: per_sec(xacts),
            queries: per_sec(queries),
            received: per_sec(d(self.received, earlier.received)),
            sent: per_sec(d(self.sent, earlier.sent)),
            xact_us: per(d(self.xact_us, earlier.xact_us), xacts),
            query_us: per(d(self.query_us, earlier.query_us), queries),
            wait_us: per(d(self.wait_us, earlier.wait_us), assignments),
            client_parses: per_sec(d(self.client_parses, earlier.client_parses)),
            server_parses: per_sec(d(self.server_parses, earlier.server_parses)),
            binds: per_sec(d(self.binds, earlier.binds)),
        }
    }
}

/// Everything a pool counts: totals, latency histograms, and the last period's averages.
#[derive(Debug)]
pub struct PoolStats {
    pub totals: Totals,
    pub query_latency: Histogram,
    pub xact_latency: Histogram,
    pub wait_latency: Histogram,
    /// Prepared statements found on the server, and closed there to make room (misses are
    /// `totals.server_parses`).
    pub prepared_hits: AtomicU64,
    pub prepared_evictions: AtomicU64,
    pub connects_ok: AtomicU64,
    pub connects_failed: AtomicU64,
    /// Servers handed to clients, and clients shed, by class rank.
    pub served: [AtomicU64; MAX_CLASSES],
    pub shed: [AtomicU64; MAX_CLASSES],
    /// Checkouts that waited at their identity's max_user_connections, and transactions
    /// that waited for their identity's rate.
    pub share_waits: AtomicU64,
    pub rate_waits: AtomicU64,
    /// Server errors relayed, by SQLSTATE class (errors are rare: a lock is fine).
    errors: Mutex<Vec<([u8; 2], u64)>>,
    period: Mutex<Period>,
}

#[derive(Debug)]
struct Period {
    started: Instant,
    at_start: Snapshot,
    averages: Snapshot,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            totals: Totals::default(),
            query_latency: Histogram::default(),
            xact_latency: Histogram::default(),
            wait_latency: Histogram::default(),
            prepared_hits: AtomicU64::new(0),
            prepared_evictions: AtomicU64::new(0),
            connects_ok: AtomicU64::new(0),
            connects_failed: AtomicU64::new(0),
            served: Default::default(),
            shed: Default::default(),
            share_waits: AtomicU64::new(0),
            rate_waits: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            period: Mutex::new(Period {
                started: Instant::now(),
                at_start: Snapshot::default(),
                averages: Snapshot::default(),
            }),
        }
    }
}

impl PoolStats {
    pub fn served(&self, class: crate::config::Priority) {
        self.served[class.index().min(MAX_CLASSES - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn shed(&self, class: crate::config::Priority) {
        self.shed[class.index().min(MAX_CLASSES - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// A server connection went to a client after `wait_us` of waiting.
    pub fn assigned(&self, wait_us: u64) {
        self.totals
            .server_assignments
            .fetch_add(1, Ordering::Relaxed);
        self.totals.wait_us.fetch_add(wait_us, Ordering::Relaxed);
        self.wait_latency.observe_us(wait_us);
    }

    /// A server ErrorResponse with this SQLSTATE went to a client.
    pub fn server_error(&self, sqlstate: &str) {
        let b = sqlstate.as_bytes();
        let class = [
            b.first().copied().unwrap_or(b'?'),
            b.get(1).copied().unwrap_or(b'?'),
        ];
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match errors.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => errors.push((class, 1)),
        }
    }

    pub fn error_classes(&self) -> Vec<(String, u64)> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors
            .iter()
            .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
            .collect()
    }

    /// Closes the averaging period once `period` seconds have passed.
    pub fn roll_period(&self, period: f64) {
        let mut p = self.period.lock().unwrap_or_else(|e| e.into_inner());
        let secs = p.started.elapsed().as_secs_f64();
        if secs < period {
            return;
        }
        let now = self.totals.snapshot();
        p.averages = now.averages(&p.at_start, secs);
        p.at_start = now;
        p.started = Instant::now();
    }

    pub fn averages(&self) -> Snapshot {
        self.period
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .averages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_per_second_and_per_event() {
        let a = Snapshot::default();
        let b = Snapshot {
            server_assignments: 20,
            xacts: 100,
            queries: 300,
            received: 6_000,
            sent: 12_000,
            xact_us: 50_000,
            query_us: 30_000,
            wait_us: 2_000,
            client_parses: 40,
            server_parses: 10,
            binds: 70,
        };
        let avg = b.averages(&a, 10.0);
        assert_eq!(avg.xacts, 10);
        assert_eq!(avg.queries, 30);
        assert_eq!(avg.received, 600);
        assert_eq!(avg.sent, 1_200);
        assert_eq!(avg.xact_us, 500);
        assert_eq!(avg.query_us, 100);
        assert_eq!(avg.wait_us, 100);
        assert_eq!(avg.server_assignments, 2);
        assert_eq!((avg.client_parses, avg.binds), (4, 7));
        assert_eq!(a.averages(&a, 10.0), Snapshot::default());
    }
}
