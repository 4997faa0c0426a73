//! Taking a server: an idle one (the client's own last one first), a new one in a free place,
//! or a place in the wait queue.

use super::*;

// A connection is moved through these, never stored in bulk: boxing it would allocate on
// every hand-off instead.
#[allow(clippy::large_enum_variant)]
pub(super) enum Grant {
    Conn(ServerConn),
    Slot(Slot),
}

#[allow(clippy::large_enum_variant)]
pub(super) enum Take<'a> {
    Idle(ServerConn),
    Open(Slot),
    Fail(CheckoutError),
    /// Queued; true when the pool has room but its database is at max_db_connections.
    Wait(Ticket<'a>, bool),
}

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) tx: oneshot::Sender<Grant>,
}

impl Pool {
    pub(super) fn try_slot(self: &Arc<Self>, st: &mut State, limit: usize) -> Option<Slot> {
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

    pub(super) async fn checkout_inner(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
        settings: &PoolSettings,
        start: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<ServerConn, CheckoutError> {
        let mut reserve_at = (settings.reserve_size > 0).then(|| start + settings.reserve_timeout);
        loop {
            let mut ticket = match self.next_step() {
                Take::Idle(conn) => {
                    if let Some(conn) = self.vet(conn, settings).await {
                        return Ok(conn);
                    }
                    continue;
                }
                Take::Open(slot) => return self.open(slot).await,
                Take::Fail(e) => return Err(e),
                Take::Wait(ticket, at_db_cap) => {
                    if at_db_cap && let Some(idle) = self.db.take_idle_elsewhere(self) {
                        tracing::debug!(pool = %self.key, server = idle.id, "max_db_connections: closing an idle server of another pool");
                        drop(idle);
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
    pub(super) fn next_step(self: &Arc<Self>) -> Take<'_> {
        let settings = self.settings.load();
        let mut st = lock(&self.state);
        if let Some(conn) = st.idle.pop() {
            return Take::Idle(conn);
        }
        if let Some((at, err)) = &st.last_failure
            && settings.login_retry.is_some_and(|d| at.elapsed() < d)
        {
            return Take::Fail(CheckoutError::RecentFailure(err.clone()));
        }
        if let Some(slot) = self.try_slot(&mut st, settings.size) {
            return Take::Open(slot);
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
        Take::Wait(ticket, at_db_cap)
    }

    /// A place in the reserve for a waiter that waited reserve_pool_timeout, taking it out of
    /// the queue. None if the reserve is full or the waiter was served meanwhile.
    pub(super) fn reserve_slot(self: &Arc<Self>, waiter: u64) -> Option<Slot> {
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
    pub(super) async fn vet(
        &self,
        mut conn: ServerConn,
        settings: &PoolSettings,
    ) -> Option<ServerConn> {
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
        if let Some(q) = &settings.check_query
            && now.saturating_duration_since(conn.last_used) >= settings.check_delay
        {
            conn.info.set_state(ServerState::Tested);
            if let Err(e) = conn.run_internal(q, settings.connect_timeout).await {
                tracing::info!(pool = %self.key, server = conn.id, error = %e, "server_check_query failed: evicted");
                return None;
            }
        }
        Some(conn)
    }

    pub(super) async fn open(
        self: &Arc<Self>,
        mut slot: Slot,
    ) -> Result<ServerConn, CheckoutError> {
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
                Ok(Box::new(crate::backend::server::Connection {
                    info,
                    stream: est.stream,
                    id,
                    pid: est.pid,
                    secret: est.secret,
                    baseline,
                    params: est.params,
                    last_client: 0,
                    reset_pending: false,
                    claims: Default::default(),
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
}

/// A place in the wait queue; leaving it (timeout, cancel, client gone) takes the entry out,
/// and hands on anything granted in the meantime.
pub(super) struct Ticket<'a> {
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
