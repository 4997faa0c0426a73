//! Health checks: every `health_check_interval`, each endpoint a pool has reached is asked
//! over a connection of its own (logged in as that pool) whether it is in recovery and how
//! far its replay is behind; the round trip is its latency. A failed check (or connect)
//! marks it unhealthy and counts against its circuit; `health_check_successes` passing checks
//! in a row bring it back.

use super::endpoint::{Endpoint, Role};
use crate::backend::connect::{self, ConnectError, Established};
use crate::backend::server::query_pairs;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The check's knobs (from `[general]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// Zero: no checks.
    pub interval: Duration,
    pub successes: u32,
    pub failures: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    /// max_standby_lag in seconds (0: no bound).
    pub max_lag: f64,
}

/// Whether it is in recovery and `default_transaction_read_only` ("true on"), and a standby's
/// replay lag in seconds: 0 when it has replayed all it received (an idle primary sends
/// nothing, which is not lag), else the age of the last transaction it replayed (none since
/// it started: since it started).
const CHECK: &str = "SELECT pg_catalog.pg_is_in_recovery()::text || ' ' || \
     pg_catalog.current_setting('default_transaction_read_only'), \
     CASE WHEN pg_catalog.pg_is_in_recovery() THEN \
     CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0 \
     ELSE extract(epoch FROM now() - coalesce(pg_catalog.pg_last_xact_replay_timestamp(), \
     pg_catalog.pg_postmaster_start_time())) END END::text";

/// Starts `e`'s checks (they end when the endpoint is forgotten).
pub fn spawn(e: &Arc<Endpoint>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(run(Arc::downgrade(e)));
}

async fn run(weak: Weak<Endpoint>) {
    let mut conn: Option<Established> = None;
    loop {
        let Some(checks) = weak.upgrade().map(|e| e.checks()) else {
            return;
        };
        // Checks off: look again later, in case a RELOAD turns them on.
        let pause = if checks.interval.is_zero() {
            Duration::from_secs(1)
        } else {
            checks.interval
        };
        tokio::time::sleep(pause).await;
        let Some(e) = weak.upgrade() else { return };
        if checks.interval.is_zero() {
            conn = None;
            e.unchecked();
            continue;
        }
        let Some(login) = e.login() else { continue };
        if conn.is_none() {
            match connect::establish(&login.at(&e), checks.timeout).await {
                Ok(c) => conn = Some(c),
                // The server answered: up, but this login cannot check it. Not its failure.
                Err(ConnectError::Refused(r)) if r.code != "57P03" => {
                    tracing::info!(upstream = %e.address(), error = %r, "health check login refused");
                    continue;
                }
                Err(err) => {
                    let why = format!("health check cannot connect: {err}");
                    e.failed(&why, checks.failures, checks.backoff);
                    e.checked(Err(why), checks.successes, checks.max_lag);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let start = Instant::now();
        match query_pairs(&mut c.stream, CHECK, checks.timeout).await {
            Ok(rows) => {
                let rtt = start.elapsed();
                let Some((state, lag)) = rows.into_iter().next() else {
                    conn = None;
                    continue;
                };
                let role = if state.starts_with("true") {
                    Role::Standby
                } else {
                    Role::Primary
                };
                e.learned(role, state.ends_with(" on"));
                let lag = lag.and_then(|l| l.parse::<f64>().ok());
                e.checked(Ok((rtt, lag)), checks.successes, checks.max_lag);
            }
            Err(err) => {
                conn = None;
                let why = format!("health check failed: {err}");
                e.failed(&why, checks.failures, checks.backoff);
                e.checked(Err(why), checks.successes, checks.max_lag);
            }
        }
    }
}
