//! Optional sampling of each upstream's pg_stat_activity (`activity_sample_interval`):
//! through one monitoring connection per database (logged in as that database's first
//! pool's role), the backends of that database are counted by state, wait event type and
//! owner (this proxy's own server connections, known by backend pid, or others), with the
//! age of the oldest open transaction. SHOW ACTIVITY, /activity and the
//! `pgsluice_upstream_backends` metrics read the last sample.
//!
//! A role without pg_read_all_stats (or pg_monitor) sees other roles' backends without
//! their state; those count as state "unknown".

use super::connect::{self, Upstream};
use super::server::query_pairs;
use crate::net::Stream;
use dashmap::DashMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The sampling query: pid, then state, wait event type and transaction age joined by tabs
/// (two text columns, what the proxy's internal query reader takes).
const SAMPLE_SQL: &str = "SELECT pid::text, concat_ws(E'\\t', coalesce(state, ''), \
    coalesce(wait_event_type, ''), coalesce(extract(epoch FROM now() - xact_start)::text, '')) \
    FROM pg_stat_activity WHERE datname = current_database() \
    AND backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// Backends of one kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    pub state: String,
    pub wait_event_type: String,
    /// "pgsluice" for this proxy's server connections, "other" for everyone else.
    pub owner: &'static str,
}

/// One database's last sample.
#[derive(Clone, Debug, Default)]
pub struct ActivitySample {
    pub groups: BTreeMap<Group, u64>,
    /// Age of the oldest open transaction, seconds (0: none open).
    pub longest_transaction: f64,
    /// When it was taken (Unix microseconds), and why the last attempt failed, if it did.
    pub at: u64,
    pub error: Option<String>,
}

/// The last sample of every database.
#[derive(Default)]
pub struct Activity {
    samples: DashMap<Arc<str>, Arc<ActivitySample>>,
}

impl Activity {
    pub fn all(&self) -> Vec<(Arc<str>, Arc<ActivitySample>)> {
        let mut v: Vec<_> = self
            .samples
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn store(&self, db: Arc<str>, s: ActivitySample) {
        self.samples.insert(db, Arc::new(s));
    }
}

/// Turns the query's rows into a sample; `ours` are this proxy's backend pids.
fn summarize(rows: &[(String, Option<String>)], ours: &HashSet<i32>) -> ActivitySample {
    let mut s = ActivitySample {
        at: crate::stats::unix_micros(),
        ..ActivitySample::default()
    };
    for (pid, rest) in rows {
        let rest = rest.as_deref().unwrap_or("");
        let mut parts = rest.split('\t');
        let state = parts.next().filter(|v| !v.is_empty()).unwrap_or("unknown");
        let wait = parts.next().filter(|v| !v.is_empty()).unwrap_or("none");
        let age: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let owner = match pid.parse::<i32>() {
            Ok(p) if ours.contains(&p) => "pgsluice",
            _ => "other",
        };
        let g = Group {
            state: state.to_owned(),
            wait_event_type: wait.to_owned(),
            owner,
        };
        *s.groups.entry(g).or_default() += 1;
        s.longest_transaction = s.longest_transaction.max(age);
    }
    s
}

/// The sampler's own connections, one per database, kept between rounds.
#[derive(Default)]
pub struct Sampler {
    conns: BTreeMap<Arc<str>, (Arc<Upstream>, Stream)>,
}

impl Sampler {
    /// Closes every connection (sampling turned off).
    pub fn clear(&mut self) {
        self.conns.clear();
    }

    /// One sample of `db`'s activity; `ours` are the pids of the proxy's own servers.
    pub async fn sample(
        &mut self,
        db: &Arc<str>,
        upstream: Arc<Upstream>,
        ours: &HashSet<i32>,
        timeout: Duration,
    ) -> ActivitySample {
        sample_one(&mut self.conns, db, upstream, ours, timeout).await
    }
}

async fn sample_one(
    conns: &mut BTreeMap<Arc<str>, (Arc<Upstream>, Stream)>,
    db: &Arc<str>,
    upstream: Arc<Upstream>,
    ours: &HashSet<i32>,
    timeout: Duration,
) -> ActivitySample {
    if conns
        .get(db)
        .is_some_and(|(u, _)| !Arc::ptr_eq(u, &upstream))
    {
        conns.remove(db);
    }
    if !conns.contains_key(db) {
        match connect::establish_own(&upstream, timeout, None).await {
            Ok(est) => {
                conns.insert(db.clone(), (upstream.clone(), est.stream));
            }
            Err(e) => {
                tracing::info!(database = %db, error = %e, "activity sampling: cannot connect");
                return failed(e.to_string());
            }
        }
    }
    let Some((_, stream)) = conns.get_mut(db) else {
        return failed("no connection".into());
    };
    match query_pairs(stream, SAMPLE_SQL, timeout).await {
        Ok(rows) => summarize(&rows, ours),
        Err(e) => {
            tracing::info!(database = %db, error = %e, "activity sampling failed");
            conns.remove(db);
            failed(e.to_string())
        }
    }
}

fn failed(error: String) -> ActivitySample {
    ActivitySample {
        at: crate::stats::unix_micros(),
        error: Some(error),
        ..ActivitySample::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_state_wait_and_owner() {
        let rows = vec![
            ("10".to_owned(), Some("idle\tClient\t".to_owned())),
            ("11".to_owned(), Some("active\t\t2.5".to_owned())),
            ("12".to_owned(), Some("idle\tClient\t".to_owned())),
            ("13".to_owned(), Some("\t\t".to_owned())),
        ];
        let ours: HashSet<i32> = [10, 11].into();
        let s = summarize(&rows, &ours);
        let g = |state: &str, wait: &str, owner| Group {
            state: state.into(),
            wait_event_type: wait.into(),
            owner,
        };
        assert_eq!(s.groups[&g("idle", "Client", "pgsluice")], 1);
        assert_eq!(s.groups[&g("idle", "Client", "other")], 1);
        assert_eq!(s.groups[&g("active", "none", "pgsluice")], 1);
        assert_eq!(s.groups[&g("unknown", "none", "other")], 1);
        assert_eq!(s.longest_transaction, 2.5);
    }
}
