//! One pool of server connections for a (database, role) pair: idle connections, a count of
//! open ones, and a fair wait queue. A returned connection goes straight to the longest
//! waiter; a freed place in the count goes to a waiter too, who opens a new connection.
//!
//! Every place in the count is a [`Slot`], owned by the connection that fills it, so the count
//! cannot drift: dropping a connection anywhere frees its place.

use super::connect::{self, ConnectError, Connector, Upstream};
use super::params::SessionParams;
use super::server::ServerConn;
use crate::error::ClientError;
use crate::stats::servers::{ServerInfo, ServerState};
use crate::stats::totals::PoolStats;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, oneshot};
use tokio::time::sleep_until;

pub use crate::pool_key::PoolKey;

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
}

/// Server connections open to one database across its pools (max_db_connections).
#[derive(Default)]
pub struct DbLimit {
    max: usize,
    open: AtomicUsize,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl DbLimit {
    pub fn new(max: usize) -> Arc<DbLimit> {
        Arc::new(DbLimit {
            max,
            ..DbLimit::default()
        })
    }

    fn try_acquire(&self) -> bool {
        if self.max == 0 {
            self.open.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// At the database cap, a pool with waiters takes the place of an idle connection of
    /// another pool: returned here to be closed (outside every lock), which frees its place.
    fn take_idle_elsewhere(&self, wanting: &Arc<Pool>) -> Option<ServerConn> {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        pools
            .iter()
            .filter(|p| !Arc::ptr_eq(p, wanting))
            .find_map(|p| {
                let mut st = lock(&p.state);
                // The least recently used goes: idle is ordered oldest-used first.
                (!st.idle.is_empty()).then(|| st.idle.remove(0))
            })
    }

    fn other_pool_waiting(&self, me: &Arc<Pool>) -> bool {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        pools
            .iter()
            .any(|p| !Arc::ptr_eq(p, me) && !lock(&p.state).waiters.is_empty())
    }

    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.max == 0 {
            return;
        }
        // A place under the database cap opened: give it to a pool of this database with waiters.
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            if pool.grant_free_place() {
                return;
            }
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

/// A place in a pool's count of open connections; frees itself on drop.
pub struct Slot {
    pool: Weak<Pool>,
    armed: bool,
    /// The server connection filling this place, once opened (for SHOW SERVERS).
    server: u64,
}

impl Slot {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            if let Some(pool) = self.pool.upgrade() {
                if self.server != 0 {
                    lock(&pool.servers).remove(&self.server);
                }
                pool.place_freed();
            }
        }
    }
}

// A connection is moved through these, never stored in bulk: boxing it would allocate on
// every hand-off instead.
#[allow(clippy::large_enum_variant)]
enum Grant {
    Conn(ServerConn),
    Slot(Slot),
}

#[allow(clippy::large_enum_variant)]
enum Step<'a> {
    Idle(ServerConn),
    Open(Slot),
    Fail(CheckoutError),
    /// Queued; true when the pool has room but its database is at max_db_connections.
    Wait(Ticket<'a>, bool),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct State {
    idle: Vec<ServerConn>,
    open: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    last_failure: Option<(Instant, ClientError)>,
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
        let pool = Arc::new(Pool {
            key,
            upstream: ArcSwap::from_pointee(upstream),
            settings: ArcSwap::from_pointee(settings),
            db: db.clone(),
            state: Mutex::new(State::default()),
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
                    key: self.key.clone(),
                    pool: self.stats.clone(),
                    queries: queries.clone(),
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
            // A larger pool has room for waiters now.
            while self.grant_free_place() {}
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

    fn try_slot(self: &Arc<Self>, st: &mut State, limit: usize) -> Option<Slot> {
        if st.open < limit && self.db.try_acquire() {
            st.open += 1;
            Some(Slot {
                pool: Arc::downgrade(self),
                armed: true,
                server: 0,
            })
        } else {
            None
        }
    }

    /// Gets a server connection: an idle one, a new one while the pool has room, or the next
    /// one released, waiting in FIFO order. `cancel` (already enabled) aborts the wait: a
    /// client's CancelRequest.
    pub async fn checkout(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
    ) -> Result<ServerConn, CheckoutError> {
        let start = tokio::time::Instant::now();
        // An owned snapshot, not a guard: this may wait for a long time (the fast path is
        // try_idle).
        let settings = self.settings();
        let deadline = settings.wait_timeout.map(|t| start + t);
        if self.is_paused() {
            self.wait_resumed(&mut cancel, deadline).await?;
        }
        let r = self
            .checkout_inner(cancel, &settings, start, deadline)
            .await;
        if let Ok(conn) = &r {
            conn.info.set_state(ServerState::Active);
            self.stats.assigned(start.elapsed().as_micros() as u64);
        }
        r
    }

    async fn checkout_inner(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
        settings: &PoolSettings,
        start: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<ServerConn, CheckoutError> {
        let mut reserve_at = (settings.reserve_size > 0).then(|| start + settings.reserve_timeout);
        loop {
            let mut ticket = match self.next_step() {
                Step::Idle(conn) => {
                    if let Some(conn) = self.vet(conn, settings).await {
                        return Ok(conn);
                    }
                    continue;
                }
                Step::Open(slot) => return self.open(slot).await,
                Step::Fail(e) => return Err(e),
                Step::Wait(ticket, at_db_cap) => {
                    if at_db_cap {
                        if let Some(idle) = self.db.take_idle_elsewhere(self) {
                            tracing::debug!(pool = %self.key, server = idle.id, "max_db_connections: closing an idle server of another pool");
                            drop(idle);
                        }
                    }
                    ticket
                }
            };
            let grant = loop {
                let Some(rx) = ticket.rx.as_mut() else {
                    break None;
                };
                tokio::select! {
                    g = rx => break g.ok(),
                    _ = cancel.as_mut() => return Err(CheckoutError::Canceled),
                    _ = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() => {
                        return Err(CheckoutError::WaitTimeout)
                    }
                    _ = sleep_until(reserve_at.unwrap_or(start)), if reserve_at.is_some() => {
                        reserve_at = None;
                        if let Some(slot) = self.reserve_slot(ticket.id) {
                            ticket.rx = None;
                            tracing::info!(pool = %self.key, "waited reserve_pool_timeout: opening a reserve connection");
                            return self.open(slot).await;
                        }
                    }
                }
            };
            ticket.rx = None;
            match grant {
                Some(Grant::Conn(conn)) => {
                    if let Some(conn) = self.vet(conn, settings).await {
                        return Ok(conn);
                    }
                }
                Some(Grant::Slot(slot)) => return self.open(slot).await,
                None => {}
            }
        }
    }

    /// Decides under the lock what a checkout does next; the awaiting happens outside it.
    fn next_step(self: &Arc<Self>) -> Step<'_> {
        let settings = self.settings.load();
        let mut st = lock(&self.state);
        if let Some(conn) = st.idle.pop() {
            return Step::Idle(conn);
        }
        if let Some((at, err)) = &st.last_failure {
            if settings.login_retry.is_some_and(|d| at.elapsed() < d) {
                return Step::Fail(CheckoutError::RecentFailure(err.clone()));
            }
        }
        if let Some(slot) = self.try_slot(&mut st, settings.size) {
            return Step::Open(slot);
        }
        let at_db_cap = st.open < settings.size;
        let id = st.next_waiter;
        st.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter { id, tx });
        let ticket = Ticket {
            pool: self,
            id,
            rx: Some(rx),
        };
        Step::Wait(ticket, at_db_cap)
    }

    /// A place in the reserve for a waiter that waited reserve_pool_timeout, taking it out of
    /// the queue. None if the reserve is full or the waiter was served meanwhile.
    fn reserve_slot(self: &Arc<Self>, waiter: u64) -> Option<Slot> {
        let settings = self.settings.load();
        let mut st = lock(&self.state);
        let at = st.waiters.iter().position(|w| w.id == waiter)?;
        let slot = self.try_slot(&mut st, settings.size + settings.reserve_size)?;
        st.waiters.remove(at);
        Some(slot)
    }

    /// The usual checkout without a future or a wait: the most recently used idle connection,
    /// when it passes [`Pool::vet`]'s checks without any I/O (same upstream, within
    /// server_lifetime, nothing arrived while idle, no check query due). None: use
    /// [`Pool::checkout`], which handles everything else (and finds that connection again).
    ///
    /// Among the few most recently used, the one `client` itself used last is preferred: it
    /// needs no hand-over reset (see [`super::server::Connection::hand_to`]).
    pub fn try_idle(&self, client: u64) -> Option<ServerConn> {
        if self.is_paused() {
            return None;
        }
        let settings = self.settings.load();
        let conn = {
            let mut st = lock(&self.state);
            let n = st.idle.len();
            let own = st.idle[n.saturating_sub(AFFINITY_SCAN)..]
                .iter()
                .rposition(|c| c.last_client == client)
                .map(|i| i + n.saturating_sub(AFFINITY_SCAN));
            match own {
                Some(i) => st.idle.remove(i),
                None => st.idle.pop()?,
            }
        };
        let now = Instant::now();
        let ready = Arc::ptr_eq(&conn.upstream, &self.upstream.load())
            && settings
                .lifetime
                .is_none_or(|l| now.saturating_duration_since(conn.created) < l)
            && (settings.check_query.is_none()
                || now.saturating_duration_since(conn.last_used) < settings.check_delay)
            && !conn.stream.has_pending_input_or_eof();
        if !ready {
            // Back where it was: checkout's full path deals with it.
            lock(&self.state).idle.push(conn);
            return None;
        }
        conn.info.set_state(ServerState::Active);
        self.stats.assigned(0);
        Some(conn)
    }

    /// Checks an idle connection before use: age, stray input or EOF, and the check query.
    async fn vet(&self, mut conn: ServerConn, settings: &PoolSettings) -> Option<ServerConn> {
        if !Arc::ptr_eq(&conn.upstream, &self.upstream.load()) {
            conn.terminate().await;
            return None;
        }
        // One clock read for both ages: this runs on every checkout.
        let now = Instant::now();
        if settings
            .lifetime
            .is_some_and(|l| now.saturating_duration_since(conn.created) >= l)
        {
            tracing::debug!(pool = %self.key, server = conn.id, "closing server past server_lifetime");
            conn.terminate().await;
            return None;
        }
        if conn.stream.has_pending_input_or_eof() {
            tracing::info!(pool = %self.key, server = conn.id, "idle server closed or sent data: evicted");
            return None;
        }
        if let Some(q) = &settings.check_query {
            if now.saturating_duration_since(conn.last_used) >= settings.check_delay {
                conn.info.set_state(ServerState::Tested);
                if let Err(e) = conn.run_internal(q, settings.connect_timeout).await {
                    tracing::info!(pool = %self.key, server = conn.id, error = %e, "server_check_query failed: evicted");
                    return None;
                }
            }
        }
        Some(conn)
    }

    async fn open(self: &Arc<Self>, mut slot: Slot) -> Result<ServerConn, CheckoutError> {
        let upstream = self.upstream();
        let timeout = self.settings.load().connect_timeout;
        match self.connector.establish(&upstream, timeout).await {
            Ok(est) => {
                self.stats.connects_ok.fetch_add(1, Ordering::Relaxed);
                lock(&self.state).last_failure = None;
                // Servers that logged in alike share one baseline list, so a client's cached
                // hand-over statement (frontend::session) matches all of them by pointer.
                let baseline = {
                    let mut d = lock(&self.defaults);
                    let shared = d.as_ref().filter(|p| **p == est.params).cloned();
                    let b = shared.unwrap_or_else(|| est.params.clone());
                    *d = Some(b.clone());
                    b
                };
                let now = Instant::now();
                // From 1: 0 means "no server" in SHOW CLIENTS and the slot's bookkeeping.
                let id = self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(pool = %self.key, server = id, pid = est.pid, "server connection opened");
                let (local_addr, local_port) = est.stream.local_addr();
                let info = Arc::new(ServerInfo::new(
                    id,
                    est.pid,
                    upstream.host.clone(),
                    upstream.port,
                    local_addr,
                    local_port,
                    est.stream.tls_description(),
                ));
                lock(&self.servers).insert(id, info.clone());
                slot.server = id;
                Ok(Box::new(super::server::Connection {
                    info,
                    stream: est.stream,
                    id,
                    pid: est.pid,
                    secret: est.secret,
                    baseline,
                    params: est.params,
                    last_client: 0,
                    reset_pending: false,
                    statements: Default::default(),
                    created: now,
                    last_used: now,
                    upstream,
                    _slot: slot,
                }))
            }
            Err(e) => {
                self.stats.connects_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %self.key, host = %upstream.host, port = upstream.port, error = %e, "server connection failed");
                lock(&self.state).last_failure = Some((Instant::now(), e.to_client()));
                drop(slot);
                Err(CheckoutError::Connect(e))
            }
        }
    }

    /// Returns a clean connection (idle, no transaction): to the longest waiter, else to idle.
    pub fn release(self: &Arc<Self>, mut conn: ServerConn) {
        conn.last_used = Instant::now();
        if !Arc::ptr_eq(&conn.upstream, &self.upstream.load()) {
            tracing::debug!(pool = %self.key, server = conn.id, "closing a connection to the previous upstream");
            tokio::spawn(conn.terminate());
            return;
        }
        let settings = self.settings.load();
        let mut st = lock(&self.state);
        if st.open > settings.size + settings.reserve_size {
            // RELOAD made the pool smaller.
            drop(st);
            tokio::spawn(conn.terminate());
            return;
        }
        conn.info.set_state(ServerState::Idle);
        while let Some(w) = st.waiters.pop_front() {
            match w.tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Slot(s)) => {
                    // Cannot happen: we sent a connection. Keep the count right regardless.
                    s.disarm();
                    return;
                }
            }
        }
        if self.db.max == 0 {
            // No database cap to share: back to idle under the same lock (every transaction).
            st.idle.push(conn);
            return;
        }
        drop(st);
        // At the database cap, an idle connection here would starve another pool's waiters:
        // close it so its place goes to them.
        if self.db.open.load(Ordering::Acquire) >= self.db.max && self.db.other_pool_waiting(self) {
            tracing::debug!(pool = %self.key, server = conn.id, "max_db_connections: giving this place to another pool");
            drop(conn);
            return;
        }
        lock(&self.state).idle.push(conn);
    }

    /// A connection closed: its place goes to a waiter, or back to the pool and database.
    fn place_freed(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        while let Some(w) = st.waiters.pop_front() {
            let slot = Slot {
                pool: Arc::downgrade(self),
                armed: true,
                server: 0,
            };
            match w.tx.send(Grant::Slot(slot)) {
                Ok(()) => return,
                Err(Grant::Slot(s)) => s.disarm(),
                Err(Grant::Conn(_)) => return,
            }
        }
        st.open -= 1;
        drop(st);
        self.db.release();
    }

    /// Called when the database cap frees a place: true if a waiter here took it.
    fn grant_free_place(self: &Arc<Self>) -> bool {
        let mut st = lock(&self.state);
        if st.waiters.is_empty() {
            return false;
        }
        let size = self.settings.load().size;
        let Some(slot) = self.try_slot(&mut st, size) else {
            return false;
        };
        let mut slot = Some(slot);
        while let Some(w) = st.waiters.pop_front() {
            if let Some(s) = slot.take() {
                match w.tx.send(Grant::Slot(s)) {
                    Ok(()) => return true,
                    Err(Grant::Slot(s)) => slot = Some(s),
                    Err(Grant::Conn(_)) => return true,
                }
            }
        }
        if let Some(s) = slot {
            s.disarm();
        }
        st.open -= 1;
        drop(st);
        self.db.open.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Retires idle connections past server_idle_timeout (above min_pool_size) or
    /// server_lifetime, and opens connections up to min_pool_size. Run periodically.
    pub async fn maintain(self: &Arc<Self>) {
        let retired: Vec<ServerConn> = {
            let s = self.settings();
            let mut st = lock(&self.state);
            let mut keep = Vec::with_capacity(st.idle.len());
            let mut retired = Vec::new();
            let open = st.open;
            // Oldest-used first, so the least recently used are retired first.
            st.idle.sort_by_key(|c| c.last_used);
            for c in st.idle.drain(..) {
                let too_old = s.lifetime.is_some_and(|l| c.created.elapsed() >= l);
                let idle_long = s.idle_timeout.is_some_and(|t| c.last_used.elapsed() >= t);
                // Closed (or talking) while idle: gone from the counts now, not at its next
                // checkout.
                let dead = c.stream.has_pending_input_or_eof();
                if too_old || dead || (idle_long && open - retired.len() > s.min_size) {
                    retired.push(c);
                } else {
                    keep.push(c);
                }
            }
            // Least recently used first, most recently used last: checkout pops from the end,
            // so steady traffic keeps reusing the warmest servers and the rest can go idle
            // long enough for server_idle_timeout.
            st.idle = keep;
            retired
        };
        for c in retired {
            tracing::debug!(pool = %self.key, server = c.id, "retiring idle server connection");
            c.terminate().await;
        }
        let min_size = self.settings.load().min_size;
        loop {
            if self.is_paused() {
                break;
            }
            let slot = {
                let mut st = lock(&self.state);
                if st.open >= min_size {
                    break;
                }
                match self.try_slot(&mut st, min_size) {
                    Some(s) => s,
                    None => break,
                }
            };
            match self.open(slot).await {
                Ok(conn) => self.release(conn),
                Err(_) => break,
            }
        }
    }

    /// Closes every idle connection (shutdown).
    pub async fn close_idle(&self) {
        let idle: Vec<ServerConn> = std::mem::take(&mut lock(&self.state).idle);
        for c in idle {
            c.terminate().await;
        }
    }
}

/// A place in the wait queue; leaving it (timeout, cancel, client gone) takes the entry out,
/// and hands on anything granted in the meantime.
struct Ticket<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        lock(&self.pool.state).waiters.retain(|w| w.id != self.id);
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(c)) => self.pool.release(c),
            Ok(Grant::Slot(s)) => drop(s),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
