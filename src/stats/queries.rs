//! Per-fingerprint query statistics for SHOW QUERIES and /queries: calls, total/min/max time,
//! rows and errors for each (fingerprint, pool), bounded to `query_stats_max` entries. When
//! full, the entries that cost least in total are dropped (a tenth at a time, so a stream of
//! one-off statements costs one sweep per hundred, not one per statement).

use super::KeyHasher;
use crate::pool_key::PoolKey;
use dashmap::DashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One finished query as a client's meter saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub fingerprint: u64,
    pub text: Arc<str>,
    pub us: u64,
    pub rows: u64,
    pub error: bool,
}

#[derive(Debug)]
struct Tracked {
    key: PoolKey,
    text: Arc<str>,
    calls: AtomicU64,
    total_us: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
    rows: AtomicU64,
    errors: AtomicU64,
}

/// A copy of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRow {
    pub fingerprint: u64,
    pub database: String,
    pub role: String,
    pub text: Arc<str>,
    pub calls: u64,
    pub total_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub rows: u64,
    pub errors: u64,
}

impl QueryRow {
    pub fn mean_us(&self) -> u64 {
        self.total_us.checked_div(self.calls).unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct QueryStats {
    max: AtomicUsize,
    map: DashMap<(u64, PoolKey), Tracked, BuildHasherDefault<KeyHasher>>,
    /// Entries dropped to stay within `max`.
    evicted: AtomicU64,
}

impl QueryStats {
    pub fn new(max: usize) -> QueryStats {
        QueryStats {
            max: AtomicUsize::new(max),
            map: DashMap::default(),
            evicted: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max.load(Ordering::Relaxed) > 0
    }

    /// RELOAD: a new bound (0 turns tracking off and forgets what was kept).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        if max == 0 {
            self.map.clear();
        } else if self.map.len() > max {
            self.shrink(max);
        }
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds a client's finished queries and empties `samples`.
    pub fn record(&self, pool: &PoolKey, samples: &mut Vec<Sample>) {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            samples.clear();
            return;
        }
        for s in samples.drain(..) {
            let key = (s.fingerprint, pool.clone());
            if let Some(e) = self.map.get(&key) {
                add(&e, &s);
                continue;
            }
            let e = self.map.entry(key).or_insert_with(|| Tracked {
                key: pool.clone(),
                text: s.text.clone(),
                calls: AtomicU64::new(0),
                total_us: AtomicU64::new(0),
                min_us: AtomicU64::new(u64::MAX),
                max_us: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            });
            add(&e, &s);
            drop(e);
            if self.map.len() > max {
                self.shrink(max - max / 10);
            }
        }
    }

    /// Drops the entries with the least total time until `keep` remain.
    fn shrink(&self, keep: usize) {
        let mut costs: Vec<(u64, (u64, PoolKey))> = self
            .map
            .iter()
            .map(|e| (e.total_us.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        if costs.len() <= keep {
            return;
        }
        costs.sort_unstable_by_key(|(t, _)| *t);
        let n = costs.len() - keep;
        for (_, k) in costs.into_iter().take(n) {
            self.map.remove(&k);
        }
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Every entry, most total time first.
    pub fn rows(&self) -> Vec<QueryRow> {
        let mut v: Vec<QueryRow> = self
            .map
            .iter()
            .map(|e| {
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let calls = l(&e.calls);
                QueryRow {
                    fingerprint: e.key().0,
                    database: e.key.database.to_string(),
                    role: e.key.role.to_string(),
                    text: e.text.clone(),
                    calls,
                    total_us: l(&e.total_us),
                    min_us: if calls == 0 { 0 } else { l(&e.min_us) },
                    max_us: l(&e.max_us),
                    rows: l(&e.rows),
                    errors: l(&e.errors),
                }
            })
            .collect();
        v.sort_by(|a, b| {
            b.total_us
                .cmp(&a.total_us)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        v
    }
}

fn add(e: &Tracked, s: &Sample) {
    e.calls.fetch_add(1, Ordering::Relaxed);
    e.total_us.fetch_add(s.us, Ordering::Relaxed);
    e.min_us.fetch_min(s.us, Ordering::Relaxed);
    e.max_us.fetch_max(s.us, Ordering::Relaxed);
    e.rows.fetch_add(s.rows, Ordering::Relaxed);
    if s.error {
        e.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PoolKey {
        PoolKey {
            database: Arc::from("app"),
            role: Arc::from("r"),
        }
    }

    fn sample(fp: u64, us: u64) -> Sample {
        Sample {
            fingerprint: fp,
            text: Arc::from(format!("q{fp}")),
            us,
            rows: 2,
            error: fp == 3,
        }
    }

    #[test]
    fn aggregates_per_fingerprint() {
        let q = QueryStats::new(10);
        let mut s = vec![sample(1, 10), sample(1, 30), sample(3, 5)];
        q.record(&key(), &mut s);
        assert!(s.is_empty());
        let rows = q.rows();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(
            (
                r.fingerprint,
                r.calls,
                r.total_us,
                r.min_us,
                r.max_us,
                r.rows,
                r.errors
            ),
            (1, 2, 40, 10, 30, 4, 0)
        );
        assert_eq!(r.mean_us(), 20);
        assert_eq!((rows[1].calls, rows[1].errors), (1, 1));
    }

    #[test]
    fn bounded_by_dropping_the_cheapest() {
        let q = QueryStats::new(10);
        // One expensive query, then many cheap one-offs.
        q.record(&key(), &mut vec![sample(1000, 1_000_000)]);
        let mut s: Vec<_> = (1..=50).map(|i| sample(i, i)).collect();
        q.record(&key(), &mut s);
        assert!(q.len() <= 10, "{}", q.len());
        assert!(q.evicted() >= 41);
        assert_eq!(q.rows()[0].fingerprint, 1000, "the costly one stays");
        q.set_max(0);
        assert!(!q.enabled() && q.is_empty());
    }
}
