//! One pool of server connections for a (database, role) pair: idle connections, a count of
//! open ones, and a fair wait queue. A returned connection goes straight to the longest
//! waiter; a freed place in the count goes to a waiter too, who opens a new connection.
//!
//! Every place in the count is a [`Slot`], owned by the connection that fills it, so the count
//! cannot drift: dropping a connection anywhere frees its place.

use crate::backend::connect::{self, ConnectError, Connector, Upstream};
use crate::backend::params::SessionParams;
use crate::backend::server::ServerConn;
use crate::error::ClientError;
use crate::stats::servers::{ServerInfo, ServerState};
use crate::stats::totals::PoolStats;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, oneshot};
use tokio::time::sleep_until;

pub use crate::pool_key::PoolKey;
use checkout::Grant;
pub use limit::{DbLimit, Slot};
pub use queue::{Demand, Share};
use queue::{Queue, Rules, Waiter};

mod adaptive;
mod checkout;
mod give_back;
mod limit;
mod queue;

#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    pub lifetime: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub login_retry: Option<Duration>,
    pub wait_timeout: Option<Duration>,
    pub check_query: Option<String>,
    pub check_delay: Duration,
    pub fairness: Fairness,
}

/// Who goes first when the pool is busy (docs/pooling.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Fairness {
    /// The classes, and the class of clients that name none.
    pub classes: Arc<crate::config::Classes>,
    pub default_class: crate::config::Priority,
    /// How far ahead of a lower class a waiter goes, per class (priority_aging).
    pub aging: Duration,
    /// Places of pool_size only the high class may take (priority_reserve).
    pub reserve: usize,
    /// Waiters at which the lowest class is shed (shed_queue_length; 0: never).
    pub shed_queue: usize,
    /// Expected wait beyond which the lowest class is shed (shed_wait).
    pub shed_wait: Option<Duration>,
    /// Places kept for identities' dedicated budgets (dedicated_connections).
    pub dedicated: usize,
    /// Servers in use at once follow the upstream's latency (adaptive_limit).
    pub adaptive: bool,
}

impl Fairness {
    /// Whether the time each server is held is measured (shed_wait and adaptive_limit).
    fn times_holds(&self) -> bool {
        self.shed_wait.is_some() || self.adaptive
    }
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            classes: Arc::default(),
            default_class: crate::config::Priority::NORMAL,
            aging: Duration::from_secs(5),
            reserve: 0,
            shed_queue: 0,
            shed_wait: None,
            dedicated: 0,
            adaptive: false,
        }
    }
}

impl Pool {
    /// The grant rules now: the settings', and whether the database's shared part has room
    /// for a client not on a dedicated place.
    fn rules(&self, settings: &PoolSettings) -> Rules {
        Rules {
            shared_ok: !self.db.overcommitted(),
            ..settings.rules()
        }
    }
}

impl PoolSettings {
    fn rules(&self) -> Rules {
        Rules {
            shared_ok: true,
            aging: self.fairness.aging,
            reserve: self.fairness.reserve,
            // A server over pool_size is a reserve_pool_size one, given only after
            // reserve_pool_timeout (try_slot's limit); once open it serves the queue.
            size: self.size + self.reserve_size,
            dedicated: self.fairness.dedicated,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the pool down with it; the data stays consistent
    // because no code path panics while holding these locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many of the most recently used idle connections `try_idle` looks through for the
/// client's own last one.
const AFFINITY_SCAN: usize = 64;

#[derive(Default)]
struct State {
    idle: Vec<ServerConn>,
    open: usize,
    waiters: Queue,
    next_waiter: u64,
    last_failure: Option<(Instant, ClientError)>,
    /// How long a client holds a server, on average lately (µs; for shed_wait).
    hold_us: f64,
    /// Until then an idle server is peeked at (a syscall) before it is handed out, not only
    /// asked of the reactor: one of this pool's servers was found closed, so the others may
    /// be too (a restart, a failover, a mass pg_terminate_backend) while the reactor, on a
    /// busy machine, has not yet seen their FINs.
    suspect_until: Option<Instant>,
}

/// How long a pool stays suspicious after finding one of its servers closed.
const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl State {
    fn suspect(&self, now: Instant) -> bool {
        self.suspect_until.is_some_and(|t| now < t)
    }

    /// One of the pool's servers was found closed at `now`.
    fn found_dead(&mut self, now: Instant) {
        self.suspect_until = Some(now + SUSPECT_FOR);
    }
}

pub struct Pool {
    pub key: PoolKey,
    /// Replaced by RELOAD (changed credentials or address) and RECONNECT: connections made
    /// to an older one are closed when they come back.
    upstream: ArcSwap<Upstream>,
    settings: ArcSwap<PoolSettings>,
    db: Arc<DbLimit>,
    state: Mutex<State>,
    conn_ids: Arc<AtomicU64>,
    /// Parameters a fresh server connection reports, shown to transaction-mode clients.
    defaults: Mutex<Option<SessionParams>>,
    pub stats: Arc<PoolStats>,
    /// Where its clients' meters add their counts; one for all of them.
    sinks: std::sync::OnceLock<Arc<crate::stats::meter::Sinks>>,
    /// Open server connections by id (SHOW SERVERS); changed on open and close only.
    servers: Mutex<HashMap<u64, Arc<ServerInfo>>>,
    /// PAUSE: checkouts wait until RESUME.
    paused: AtomicBool,
    resumed: Notify,
    connector: Arc<dyn Connector>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("server login failed recently: {0}")]
    RecentFailure(ClientError),
    #[error("no server connection within query_wait_timeout")]
    WaitTimeout,
    #[error("canceled while waiting for a server connection")]
    Canceled,
    #[error("{0}")]
    Shed(String),
    #[error("{who} already holds max_user_connections ({max}) servers of this pool")]
    ShareFull { who: Arc<str>, max: usize },
}

impl CheckoutError {
    pub fn to_client(&self) -> ClientError {
        match self {
            CheckoutError::Connect(e) => e.to_client(),
            CheckoutError::RecentFailure(e) => e.clone(),
            CheckoutError::WaitTimeout => ClientError::server_unavailable(
                "query_wait_timeout: no server connection became free in time",
            ),
            CheckoutError::Canceled => ClientError::canceled(),
            CheckoutError::Shed(why) => ClientError::over_limit(why.clone()),
            CheckoutError::ShareFull { .. } => ClientError::over_limit(self.to_string()),
        }
    }
}

/// Snapshot for stats and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
}

impl Pool {
    pub fn new(
        key: PoolKey,
        upstream: Upstream,
        settings: PoolSettings,
        db: Arc<DbLimit>,
        conn_ids: Arc<AtomicU64>,
        paused: bool,
    ) -> Arc<Pool> {
        Pool::with_connector(
            key,
            upstream,
            settings,
            db,
            conn_ids,
            paused,
            Arc::new(connect::Direct),
        )
    }

    /// A pool whose connections `connector` opens.
    pub fn with_connector(
        key: PoolKey,
        upstream: Upstream,
        settings: PoolSettings,
        db: Arc<DbLimit>,
        conn_ids: Arc<AtomicU64>,
        paused: bool,
        connector: Arc<dyn Connector>,
    ) -> Arc<Pool> {
        let top = settings.fairness.classes.top();
        let pool = Arc::new(Pool {
            key,
            upstream: ArcSwap::from_pointee(upstream),
            settings: ArcSwap::from_pointee(settings),
            db: db.clone(),
            state: Mutex::new(State {
                waiters: Queue::counting_into(db.dedicated_busy.clone(), top),
                ..State::default()
            }),
            conn_ids,
            defaults: Mutex::new(None),
            stats: Arc::new(PoolStats::default()),
            sinks: std::sync::OnceLock::new(),
            servers: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(paused),
            resumed: Notify::new(),
            connector,
        });
        lock(&db.pools).push(Arc::downgrade(&pool));
        pool
    }

    /// Servers that may be in use at once now: the adaptive limit, or None when it is off.
    pub fn concurrency_limit(&self) -> Option<usize> {
        lock(&self.state)
            .waiters
            .adaptive
            .as_ref()
            .map(|g| g.limit())
    }

    /// Clients waiting, by class rank.
    pub fn waiting_by_class(&self) -> [usize; crate::config::MAX_CLASSES] {
        lock(&self.state).waiters.counts()
    }

    pub fn counts(&self) -> PoolCounts {
        let st = lock(&self.state);
        PoolCounts {
            open: st.open,
            idle: st.idle.len(),
            waiting: st.waiters.len(),
        }
    }

    /// The meters' sinks: this pool's counters and the query fingerprint table.
    pub fn sinks(
        &self,
        queries: &Arc<crate::stats::queries::QueryStats>,
    ) -> Arc<crate::stats::meter::Sinks> {
        self.sinks
            .get_or_init(|| {
                Arc::new(crate::stats::meter::Sinks {
                    pool: self.stats.clone(),
                    queries: queries.clone(),
                    table: queries.table(&self.key),
                })
            })
            .clone()
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    pub fn upstream(&self) -> Arc<Upstream> {
        self.upstream.load_full()
    }

    /// The open server connections, by id.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        let mut v: Vec<_> = lock(&self.servers).values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// One of this pool's servers was found closed outside the pool (in a hand-over): the
    /// others are peeked at before they are handed out for a while.
    pub fn server_found_closed(&self) {
        lock(&self.state).found_dead(Instant::now());
    }

    /// The last attempt to open a server connection failed.
    pub fn upstream_failing(&self) -> bool {
        lock(&self.state).last_failure.is_some()
    }

    /// The circuit is open: a connection attempt failed less than server_login_retry ago,
    /// so checkouts that would connect fail at once (57P03) instead of trying again.
    pub fn circuit_open(&self) -> bool {
        let retry = self.settings.load().login_retry;
        let st = lock(&self.state);
        match (&st.last_failure, retry) {
            (Some((at, _)), Some(d)) => at.elapsed() < d,
            _ => false,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// PAUSE: new checkouts wait; connections in use finish what they are doing.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    /// RECONNECT: connections open now are closed as they come back (idle ones at once);
    /// new ones are made as needed.
    pub fn reconnect(&self) {
        let fresh = Upstream::clone(&self.upstream.load());
        self.upstream.store(Arc::new(fresh));
        self.close_idle_in_background();
    }

    /// RELOAD: new settings apply to the next checkout; a changed upstream (address, database
    /// or credentials) retires the connections to the old one.
    pub fn apply(self: &Arc<Self>, upstream: Upstream, settings: PoolSettings) {
        if **self.upstream.load() != upstream {
            tracing::info!(pool = %self.key, "upstream changed: reconnecting");
            self.upstream.store(Arc::new(upstream));
            self.close_idle_in_background();
        }
        if **self.settings.load() != settings {
            tracing::info!(pool = %self.key, pool_size = settings.size, "pool settings changed");
            self.settings.store(Arc::new(settings));
            // A larger pool has room for waiters now, and idle servers may be theirs.
            while self.grant_free_place() {}
            let settings = self.settings();
            let rules = self.rules(&settings);
            let mut st = lock(&self.state);
            st.waiters.top = settings.fairness.classes.top();
            if !settings.fairness.adaptive {
                st.waiters.adaptive = None;
            }
            self.serve_idle(&mut st, &rules);
        }
    }

    fn close_idle_in_background(&self) {
        let idle: Vec<ServerConn> = std::mem::take(&mut lock(&self.state).idle);
        if !idle.is_empty() {
            tokio::spawn(async move {
                for c in idle {
                    c.terminate().await;
                }
            });
        }
    }

    /// Waits while the pool is paused (or the wait is canceled or times out).
    async fn wait_resumed(
        &self,
        cancel: &mut Pin<&mut Notified<'_>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), CheckoutError> {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return Ok(());
            }
            tokio::select! {
                _ = resumed => {}
                _ = cancel.as_mut() => return Err(CheckoutError::Canceled),
                _ = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    return Err(CheckoutError::WaitTimeout)
                }
            }
        }
    }

    pub fn defaults(&self) -> Option<SessionParams> {
        lock(&self.defaults).clone()
    }
}

#[cfg(test)]
mod fairness_tests;
#[cfg(test)]
mod tests;
