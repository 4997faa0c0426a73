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

type Hashed = BuildHasherDefault<KeyHasher>;

/// One pool's entries by fingerprint. Its clients' meters hold it, so a statement's entry is
/// found by its fingerprint alone: no pool key hashed, compared or cloned per statement.
#[derive(Debug)]
pub struct PoolQueries {
    key: PoolKey,
    map: DashMap<u64, Tracked, Hashed>,
}

#[derive(Debug)]
pub struct QueryStats {
    max: AtomicUsize,
    pools: DashMap<PoolKey, Arc<PoolQueries>, Hashed>,
    /// Entries in all pools' tables (what `max` bounds).
    len: AtomicUsize,
    /// Entries dropped to stay within `max`.
    evicted: AtomicU64,
}

impl QueryStats {
    pub fn new(max: usize) -> QueryStats {
        QueryStats {
            max: AtomicUsize::new(max),
            pools: DashMap::default(),
            len: AtomicUsize::new(0),
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
            // Only what was removed is subtracted: a statement recorded meanwhile must not
            // leave the count off.
            for t in self.tables() {
                let mut n = 0;
                t.map.retain(|_, _| {
                    n += 1;
                    false
                });
                self.len.fetch_sub(n, Ordering::Relaxed);
            }
        } else if self.len() > max {
            self.shrink(max);
        }
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table of `pool`'s entries, made on first use; an empty one that no pool holds
    /// any more is forgotten when another pool's is made.
    pub fn table(&self, pool: &PoolKey) -> Arc<PoolQueries> {
        if let Some(t) = self.pools.get(pool) {
            return t.clone();
        }
        // Pools come and go (reloads, identities): forget the empty tables of gone ones.
        self.pools
            .retain(|_, t| Arc::strong_count(t) > 1 || !t.map.is_empty());
        self.pools
            .entry(pool.clone())
            .or_insert_with(|| {
                Arc::new(PoolQueries {
                    key: pool.clone(),
                    map: DashMap::default(),
                })
            })
            .clone()
    }

    /// Adds finished queries of `pool` and empties `samples` (for callers without a table).
    pub fn record(&self, pool: &PoolKey, samples: &mut Vec<Sample>) {
        self.record_in(&self.table(pool), samples);
    }

    /// Adds a client's finished queries to its pool's table and empties `samples`.
    pub fn record_in(&self, table: &PoolQueries, samples: &mut Vec<Sample>) {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            samples.clear();
            return;
        }
        for s in samples.drain(..) {
            if let Some(e) = table.map.get(&s.fingerprint) {
                add(&e, &s);
                continue;
            }
            let mut added = false;
            let e = table.map.entry(s.fingerprint).or_insert_with(|| {
                added = true;
                Tracked {
                    text: s.text.clone(),
                    calls: AtomicU64::new(0),
                    total_us: AtomicU64::new(0),
                    min_us: AtomicU64::new(u64::MAX),
                    max_us: AtomicU64::new(0),
                    rows: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                }
            });
            add(&e, &s);
            drop(e);
            if added && self.len.fetch_add(1, Ordering::Relaxed) + 1 > max {
                self.shrink(max - max / 10);
            }
        }
    }

    fn tables(&self) -> Vec<Arc<PoolQueries>> {
        self.pools.iter().map(|t| t.value().clone()).collect()
    }

    /// Drops the entries with the least total time until `keep` remain.
    fn shrink(&self, keep: usize) {
        let mut costs: Vec<(u64, u64, Arc<PoolQueries>)> = Vec::new();
        for t in self.tables() {
            for e in t.map.iter() {
                costs.push((e.total_us.load(Ordering::Relaxed), *e.key(), t.clone()));
            }
        }
        if costs.len() <= keep {
            return;
        }
        costs.sort_unstable_by_key(|(cost, ..)| *cost);
        let mut dropped = 0;
        let n = costs.len() - keep;
        for (_, fp, t) in costs.into_iter().take(n) {
            if t.map.remove(&fp).is_some() {
                dropped += 1;
            }
        }
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Every entry, most total time first.
    pub fn rows(&self) -> Vec<QueryRow> {
        let mut v: Vec<QueryRow> = Vec::new();
        for t in self.tables() {
            v.extend(t.map.iter().map(|e| {
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let calls = l(&e.calls);
                QueryRow {
                    fingerprint: *e.key(),
                    database: t.key.database.to_string(),
                    role: t.key.role.to_string(),
                    text: e.text.clone(),
                    calls,
                    total_us: l(&e.total_us),
                    min_us: if calls == 0 { 0 } else { l(&e.min_us) },
                    max_us: l(&e.max_us),
                    rows: l(&e.rows),
                    errors: l(&e.errors),
                }
            }));
        }
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
        assert!(q.rows().is_empty());
    }

    #[test]
    fn pools_keep_their_own_entries_under_one_bound() {
        let q = QueryStats::new(10);
        let other = PoolKey {
            database: Arc::from("other"),
            role: Arc::from("r2"),
        };
        let (mine, theirs) = (q.table(&key()), q.table(&other));
        // The same fingerprint in two pools is two entries, each with its pool's names.
        q.record_in(&mine, &mut vec![sample(7, 100), sample(7, 100)]);
        q.record_in(&theirs, &mut vec![sample(7, 50)]);
        let rows = q.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].database.as_str(),
                rows[0].role.as_str(),
                rows[0].calls
            ),
            ("app", "r", 2)
        );
        assert_eq!(
            (
                rows[1].database.as_str(),
                rows[1].role.as_str(),
                rows[1].calls
            ),
            ("other", "r2", 1)
        );
        // The bound counts both tables.
        q.record_in(&theirs, &mut (100..120).map(|i| sample(i, 1)).collect());
        assert!(q.len() <= 10 && q.rows().len() == q.len(), "{}", q.len());
        assert_eq!(q.rows()[0].fingerprint, 7, "the costly one stays");
        // An empty table nobody holds is forgotten when another pool comes.
        q.set_max(0);
        q.set_max(10);
        drop((mine, theirs));
        let _third = q.table(&PoolKey {
            database: Arc::from("third"),
            role: Arc::from("r3"),
        });
        assert_eq!(q.pools.len(), 1);
    }
}
