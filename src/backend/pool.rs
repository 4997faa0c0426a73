//! One pool of server connections for a (database, role) pair: idle connections, a count of
//! open ones, and a fair wait queue. A returned connection goes straight to the longest
//! waiter; a freed place in the count goes to a waiter too, who opens a new connection.
//!
//! Every place in the count is a [`Slot`], owned by the connection that fills it, so the count
//! cannot drift: dropping a connection anywhere frees its place.

use super::connect::{self, ConnectError, Upstream};
use super::params::SessionParams;
use super::server::ServerConn;
use crate::error::ClientError;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::oneshot;
use tokio::time::sleep_until;

/// The pool key: the database clients name, and the upstream role the connections log in as.
/// Agent identities mapped to the same role share a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: Arc<str>,
    pub role: Arc<str>,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.role)
    }
}

#[derive(Clone, Debug)]
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

/// A place in a pool's count of open connections; frees itself on drop.
pub struct Slot {
    pool: Weak<Pool>,
    armed: bool,
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
    pub upstream: Arc<Upstream>,
    pub settings: PoolSettings,
    db: Arc<DbLimit>,
    state: Mutex<State>,
    conn_ids: Arc<AtomicU64>,
    /// Parameters a fresh server connection reports, shown to transaction-mode clients.
    defaults: Mutex<Option<SessionParams>>,
    pub metrics: crate::metrics::PoolMetrics,
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
        metrics: crate::metrics::PoolMetrics,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            key,
            upstream: Arc::new(upstream),
            settings,
            db: db.clone(),
            state: Mutex::new(State::default()),
            conn_ids,
            defaults: Mutex::new(None),
            metrics,
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

    pub fn defaults(&self) -> Option<SessionParams> {
        lock(&self.defaults).clone()
    }

    fn try_slot(self: &Arc<Self>, st: &mut State, limit: usize) -> Option<Slot> {
        if st.open < limit && self.db.try_acquire() {
            st.open += 1;
            Some(Slot {
                pool: Arc::downgrade(self),
                armed: true,
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
        cancel: Pin<&mut Notified<'_>>,
    ) -> Result<ServerConn, CheckoutError> {
        let started = Instant::now();
        let r = self.checkout_inner(cancel).await;
        self.metrics
            .wait_seconds
            .observe(started.elapsed().as_secs_f64());
        r
    }

    async fn checkout_inner(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
    ) -> Result<ServerConn, CheckoutError> {
        let start = tokio::time::Instant::now();
        let deadline = self.settings.wait_timeout.map(|t| start + t);
        let mut reserve_at =
            (self.settings.reserve_size > 0).then(|| start + self.settings.reserve_timeout);
        loop {
            let mut ticket = match self.next_step() {
                Step::Idle(conn) => {
                    if let Some(conn) = self.vet(conn).await {
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
                    if let Some(conn) = self.vet(conn).await {
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
        let mut st = lock(&self.state);
        if let Some(conn) = st.idle.pop() {
            return Step::Idle(conn);
        }
        if let Some((at, err)) = &st.last_failure {
            if self.settings.login_retry.is_some_and(|d| at.elapsed() < d) {
                return Step::Fail(CheckoutError::RecentFailure(err.clone()));
            }
        }
        if let Some(slot) = self.try_slot(&mut st, self.settings.size) {
            return Step::Open(slot);
        }
        let at_db_cap = st.open < self.settings.size;
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
        let mut st = lock(&self.state);
        let at = st.waiters.iter().position(|w| w.id == waiter)?;
        let slot = self.try_slot(&mut st, self.settings.size + self.settings.reserve_size)?;
        st.waiters.remove(at);
        Some(slot)
    }

    /// Checks an idle connection before use: age, stray input or EOF, and the check query.
    async fn vet(&self, mut conn: ServerConn) -> Option<ServerConn> {
        if self
            .settings
            .lifetime
            .is_some_and(|l| conn.created.elapsed() >= l)
        {
            tracing::debug!(pool = %self.key, server = conn.id, "closing server past server_lifetime");
            conn.terminate().await;
            return None;
        }
        if conn.stream.has_pending_input_or_eof() {
            tracing::info!(pool = %self.key, server = conn.id, "idle server closed or sent data: evicted");
            return None;
        }
        if let Some(q) = &self.settings.check_query {
            if conn.last_used.elapsed() >= self.settings.check_delay {
                if let Err(e) = conn.run_internal(q, self.settings.connect_timeout).await {
                    tracing::info!(pool = %self.key, server = conn.id, error = %e, "server_check_query failed: evicted");
                    return None;
                }
            }
        }
        Some(conn)
    }

    async fn open(self: &Arc<Self>, slot: Slot) -> Result<ServerConn, CheckoutError> {
        match connect::establish(&self.upstream, self.settings.connect_timeout).await {
            Ok(est) => {
                self.metrics.connects_ok.inc();
                lock(&self.state).last_failure = None;
                *lock(&self.defaults) = Some(est.params.clone());
                let now = Instant::now();
                let id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pool = %self.key, server = id, pid = est.pid, "server connection opened");
                Ok(ServerConn {
                    stream: est.stream,
                    id,
                    pid: est.pid,
                    secret: est.secret,
                    params: est.params,
                    statements: Default::default(),
                    created: now,
                    last_used: now,
                    upstream: self.upstream.clone(),
                    _slot: slot,
                })
            }
            Err(e) => {
                self.metrics.connects_failed.inc();
                tracing::warn!(pool = %self.key, host = %self.upstream.host, port = self.upstream.port, error = %e, "server connection failed");
                lock(&self.state).last_failure = Some((Instant::now(), e.to_client()));
                drop(slot);
                Err(CheckoutError::Connect(e))
            }
        }
    }

    /// Returns a clean connection (idle, no transaction): to the longest waiter, else to idle.
    pub fn release(self: &Arc<Self>, mut conn: ServerConn) {
        conn.last_used = Instant::now();
        let mut st = lock(&self.state);
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
        drop(st);
        // At the database cap, an idle connection here would starve another pool's waiters:
        // close it so its place goes to them.
        if self.db.max > 0
            && self.db.open.load(Ordering::Acquire) >= self.db.max
            && self.db.other_pool_waiting(self)
        {
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
        let Some(slot) = self.try_slot(&mut st, self.settings.size) else {
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
            let mut st = lock(&self.state);
            let s = &self.settings;
            let mut keep = Vec::with_capacity(st.idle.len());
            let mut retired = Vec::new();
            let open = st.open;
            // Oldest-used first, so the least recently used are retired first.
            st.idle
                .sort_by_key(|c| std::cmp::Reverse(c.last_used.elapsed()));
            for c in st.idle.drain(..) {
                let too_old = s.lifetime.is_some_and(|l| c.created.elapsed() >= l);
                let idle_long = s.idle_timeout.is_some_and(|t| c.last_used.elapsed() >= t);
                if too_old || (idle_long && open - retired.len() > s.min_size) {
                    retired.push(c);
                } else {
                    keep.push(c);
                }
            }
            // Most recently used last: checkout pops from the end, so busy connections stay warm.
            keep.reverse();
            st.idle = keep;
            retired
        };
        for c in retired {
            tracing::debug!(pool = %self.key, server = c.id, "retiring idle server connection");
            c.terminate().await;
        }
        loop {
            let slot = {
                let mut st = lock(&self.state);
                if st.open >= self.settings.min_size {
                    break;
                }
                match self.try_slot(&mut st, self.settings.min_size) {
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
