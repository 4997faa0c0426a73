//! Taking a server: an idle one (the client's own last one first), a new one in a free place,
//! or a place in the wait queue.

use super::*;

// A connection is moved through these, never stored in bulk: boxing it would allocate on
// every hand-off instead.
#[allow(clippy::large_enum_variant)]
pub(super) enum Grant {
    Conn(ServerConn),
    Slot(Slot),
    /// Shed to make room for a higher class: why.
    Shed(String),
}

#[allow(clippy::large_enum_variant)]
pub(super) enum Take<'a> {
    Idle(ServerConn),
    Open(Slot),
    Fail(CheckoutError),
    /// An idle server to close before trying again.
    Surplus(ServerConn),
    /// Queued; true when the pool has room but its database is at max_db_connections.
    Wait(Ticket<'a>, bool),
}

impl Pool {
    /// A place for a new connection: `for_dedicated` when it is for a client on one of its
    /// identity's dedicated places (the database keeps room for those).
    pub(super) fn try_slot(
        self: &Arc<Self>,
        st: &mut State,
        limit: usize,
        for_dedicated: bool,
    ) -> Option<Slot> {
        if st.open < limit && self.db.try_acquire(for_dedicated) {
            st.open += 1;
            Some(Slot::new(self))
        } else {
            None
        }
    }

    /// Gets a server connection: an idle one, a new one while the pool has room, or the next
    /// one released, waiting in the queue's order ([`queue`]). `cancel` (already enabled)
    /// aborts the wait: a client's CancelRequest.
    pub async fn checkout(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
        demand: &Demand,
    ) -> Result<ServerConn, CheckoutError> {
        let start = tokio::time::Instant::now();
        // An owned snapshot, not a guard: this may wait for a long time (the fast path is
        // try_idle).
        let settings = self.settings();
        let deadline = settings.wait_timeout.map(|t| start + t);
        if self.is_paused() {
            self.wait_resumed(&mut cancel, deadline).await?;
        }
        let mut r = self
            .checkout_inner(cancel, &settings, start, deadline, demand)
            .await;
        if let Ok(conn) = &mut r {
            if settings.fairness.times_holds() && !demand.session {
                conn.slot.hold.taken = Some(Instant::now());
            }
            conn.info.set_state(ServerState::Active);
            self.stats.assigned(start.elapsed().as_micros() as u64);
            self.stats.served(demand.class);
        }
        r
    }

    pub(super) async fn checkout_inner(
        self: &Arc<Self>,
        mut cancel: Pin<&mut Notified<'_>>,
        settings: &PoolSettings,
        start: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
        demand: &Demand,
    ) -> Result<ServerConn, CheckoutError> {
        let mut reserve_at = (settings.reserve_size > 0).then(|| start + settings.reserve_timeout);
        loop {
            let mut ticket = match self.next_step(demand) {
                Take::Idle(conn) => {
                    if let Some(conn) = self.vet(conn, settings, demand).await {
                        return Ok(conn);
                    }
                    continue;
                }
                Take::Open(slot) => return self.open(slot, demand).await,
                Take::Fail(e) => return Err(e),
                Take::Surplus(conn) => {
                    drop(conn);
                    continue;
                }
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
                        if let Some(slot) = self.reserve_slot(ticket.id, demand) {
                            ticket.rx = None;
                            tracing::info!(pool = %self.key, "waited reserve_pool_timeout: opening a reserve connection");
                            return self.open(slot, demand).await;
                        }
                    }
                }
            };
            ticket.rx = None;
            match grant {
                Some(Grant::Conn(conn)) => {
                    if let Some(conn) = self.vet(conn, settings, demand).await {
                        return Ok(conn);
                    }
                }
                Some(Grant::Slot(slot)) => return self.open(slot, demand).await,
                Some(Grant::Shed(why)) => return Err(CheckoutError::Shed(why)),
                None => {}
            }
        }
    }

    /// Decides under the lock what a checkout does next; the awaiting happens outside it.
    pub(super) fn next_step(self: &Arc<Self>, demand: &Demand) -> Take<'_> {
        let settings = self.settings.load();
        let rules = self.rules(&settings);
        let mut st = lock(&self.state);
        let may = st.waiters.may_hold(demand, &rules);
        let failing = st
            .last_failure
            .as_ref()
            .is_some_and(|(at, _)| settings.login_retry.is_some_and(|d| at.elapsed() < d));
        if may && !failing && in_region(&st.idle, demand).is_none() && self.has_region(demand) {
            // A client of a listener with a region: a new server there before an idle one
            // elsewhere.
            let dedicated = st.waiters.dedicated_for(demand);
            if let Some(mut slot) = self.try_slot(&mut st, settings.size, dedicated) {
                slot.hold = st.waiters.hold(demand);
                return Take::Open(slot);
            }
        }
        if may && let Some(mut conn) = take_idle(&mut st.idle, demand) {
            conn.slot.hold = st.waiters.hold(demand);
            return Take::Idle(conn);
        }
        if !rules.shared_ok && !st.waiters.dedicated_for(demand) && !st.idle.is_empty() {
            // Dedicated servers came back and idle: one is closed, so the shared part of the
            // database is within its bounds again.
            return Take::Surplus(st.idle.remove(0));
        }
        if let Some((at, err)) = &st.last_failure
            && settings.login_retry.is_some_and(|d| at.elapsed() < d)
        {
            return Take::Fail(CheckoutError::RecentFailure(err.clone()));
        }
        let dedicated = st.waiters.dedicated_for(demand);
        if may && let Some(mut slot) = self.try_slot(&mut st, settings.size, dedicated) {
            slot.hold = st.waiters.hold(demand);
            return Take::Open(slot);
        }
        if may && (demand.session || demand.attrs.is_some()) && !st.idle.is_empty() {
            // A full pool whose idle servers this client may not have (a transaction pooler's,
            // another kind of server): the oldest makes room for one it may.
            return Take::Surplus(st.idle.remove(0));
        }
        if let Some(share) = st.waiters.refuses(demand) {
            return Take::Fail(CheckoutError::ShareFull {
                who: share.who.clone(),
                max: share.max,
            });
        }
        if let Some(why) = overloaded(&st, &settings) {
            // The lowest class goes first: a queued one below this client, else this client.
            match st.waiters.shed_below(demand.class) {
                Some(w) => {
                    tracing::info!(pool = %self.key, class = settings.fairness.classes.name(w.demand.class), "{why}: shedding a waiting client");
                    self.stats.shed(w.demand.class);
                    let _ = w.tx.send(Grant::Shed(why));
                }
                None => {
                    tracing::info!(pool = %self.key, class = settings.fairness.classes.name(demand.class), "{why}: shedding a client");
                    self.stats.shed(demand.class);
                    return Take::Fail(CheckoutError::Shed(why));
                }
            }
        }
        if st.waiters.at_cap(demand) {
            self.stats.share_waits.fetch_add(1, Ordering::Relaxed);
        }
        // Room in the pool, yet no new server: the database's cap (not this client's own).
        let at_db_cap = (may || !rules.shared_ok) && st.open < settings.size;
        let id = st.next_waiter;
        st.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.push(Waiter {
            id,
            tx,
            demand: demand.clone(),
            since: tokio::time::Instant::now(),
        });
        let ticket = Ticket {
            pool: self,
            id,
            rx: Some(rx),
        };
        Take::Wait(ticket, at_db_cap)
    }

    /// A place in the reserve for a waiter that waited reserve_pool_timeout, taking it out of
    /// the queue. None if the reserve is full or the waiter was served meanwhile.
    pub(super) fn reserve_slot(self: &Arc<Self>, waiter: u64, demand: &Demand) -> Option<Slot> {
        let settings = self.settings.load();
        let rules = self.rules(&settings);
        let mut st = lock(&self.state);
        if !st.waiters.contains(waiter) || !st.waiters.may_hold(demand, &rules) {
            return None;
        }
        let dedicated = st.waiters.dedicated_for(demand);
        let mut slot = self.try_slot(&mut st, rules.size, dedicated)?;
        st.waiters.remove(waiter);
        slot.hold = st.waiters.hold(demand);
        Some(slot)
    }

    /// The usual checkout without a future or a wait: the most recently used idle connection,
    /// when it passes [`Pool::vet`]'s checks without any I/O (same upstream, within
    /// server_lifetime, nothing arrived while idle, no check query due). None: use
    /// [`Pool::checkout`], which handles everything else (and finds that connection again).
    ///
    /// Among the few most recently used, the one `client` itself used last is preferred: it
    /// needs no hand-over reset (see [`super::server::Connection::hand_to`]).
    pub fn try_idle(&self, client: u64, demand: &Demand) -> Option<ServerConn> {
        if self.is_paused() {
            return None;
        }
        let settings = self.settings.load();
        let now = Instant::now();
        let (mut conn, suspect) = {
            let mut st = lock(&self.state);
            if !st.waiters.may_hold(demand, &self.rules(&settings)) {
                return None;
            }
            let n = st.idle.len();
            let own = st.idle[n.saturating_sub(AFFINITY_SCAN)..]
                .iter()
                .rposition(|c| c.last_client == client)
                .map(|i| i + n.saturating_sub(AFFINITY_SCAN));
            let mut conn = match own.or_else(|| in_region(&st.idle, demand)) {
                Some(i) => st.idle.remove(i),
                // Its region's servers are all busy: checkout may open one there.
                None if self.has_region(demand) => return None,
                None => st.idle.pop()?,
            };
            conn.slot.hold = st.waiters.hold(demand);
            (conn, st.suspect(now))
        };
        let ready = self.current(&conn)
            && (demand.attrs.is_none() || conn.suits(false, demand.attrs))
            && settings
                .lifetime
                .is_none_or(|l| now.saturating_duration_since(conn.created) < l)
            && (settings.check_query.is_none()
                || now.saturating_duration_since(conn.last_used) < settings.check_delay)
            && !conn.stream.has_pending_input_or_eof(suspect);
        if !ready {
            // Back where it was: checkout's full path deals with it.
            let mut st = lock(&self.state);
            st.waiters.unhold(std::mem::take(&mut conn.slot.hold));
            st.idle.push(conn);
            if !st.waiters.is_empty() {
                self.serve_idle(&mut st, &self.rules(&settings));
            }
            return None;
        }
        if settings.fairness.times_holds() && !demand.session {
            conn.slot.hold.taken = Some(now);
        }
        conn.info.set_state(ServerState::Active);
        self.stats.assigned(0);
        self.stats.served(demand.class);
        Some(conn)
    }

    /// Whether `demand` came through a listener with a region where a new server for it
    /// would be opened now.
    fn has_region(&self, demand: &Demand) -> bool {
        demand.region.as_deref().is_some_and(|r| {
            let up = self.upstream.load();
            up.route
                .as_ref()
                .is_some_and(|route| route.leads_in(r, demand.attrs.unwrap_or(route.attrs)))
        })
    }

    /// Checks an idle connection before use: age, stray input or EOF, and the check query.
    /// Whether `conn` was opened under the pool's upstream as it is now: the same template
    /// (a routed connection: the same route), and its endpoint has not changed role since.
    #[inline]
    pub(super) fn current(&self, conn: &ServerConn) -> bool {
        let now = self.upstream.load();
        match (&conn.via, &conn.upstream.route, &now.route) {
            (Some(via), Some(was), Some(is)) => Arc::ptr_eq(was, is) && !via.stale(is),
            _ => Arc::ptr_eq(&conn.upstream, &now),
        }
    }

    pub(super) async fn vet(
        &self,
        mut conn: ServerConn,
        settings: &PoolSettings,
        demand: &Demand,
    ) -> Option<ServerConn> {
        // A session cannot be held through a transaction pooler (its upstream's `kind`), nor
        // a client's own target_session_attrs met by a server that does not fit them.
        if !self.current(&conn) || !conn.suits(demand.session, demand.attrs) {
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
        let suspect = lock(&self.state).suspect(now);
        if conn.stream.has_pending_input_or_eof(suspect) {
            tracing::info!(pool = %self.key, server = conn.id, "idle server closed or sent data: evicted");
            lock(&self.state).found_dead(now);
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

    /// Connects, trying again after a failure to reach the server (refused, reset, timed out)
    /// with exponential backoff and full jitter until `budget` (server_connect_timeout) is
    /// spent: a server restarting for a few seconds costs its clients a wait, not an error.
    /// A refused login, or every candidate's circuit open, ends it at once.
    async fn connect_retrying(
        &self,
        template: &Arc<Upstream>,
        budget: Duration,
        demand: &Demand,
    ) -> Result<Opened, ConnectError> {
        let deadline = Instant::now() + budget;
        let mut backoff = RETRY_FIRST;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.connect_once(template, left, demand).await;
            match r {
                Err(e) if e.worth_retrying() && Instant::now() + backoff < deadline => {
                    tracing::debug!(pool = %self.key, error = %e, "server connect failed: trying again");
                    let pause = backoff.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                r => return r,
            }
        }
    }

    async fn connect_once(
        &self,
        template: &Arc<Upstream>,
        timeout: Duration,
        demand: &Demand,
    ) -> Result<Opened, ConnectError> {
        match &template.route {
            Some(route) => {
                let want = crate::backend::route::Want {
                    attrs: demand.attrs.unwrap_or(route.attrs),
                    session: demand.session,
                    region: demand.region.clone(),
                };
                crate::backend::route::connect(&*self.connector, template, route, want, timeout)
                    .await
                    .map(|(est, up, via)| (est, up, Some(via)))
            }
            None => (self.connector.establish(template, timeout).await)
                .map(|est| (est, template.clone(), None)),
        }
    }

    /// Opens a server connection on `slot` that `demand` may have (a session-mode client's
    /// not through a transaction pooler; its own target_session_attrs met).
    pub(super) async fn open(
        self: &Arc<Self>,
        mut slot: Slot,
        demand: &Demand,
    ) -> Result<ServerConn, CheckoutError> {
        let template = self.upstream();
        let timeout = self.settings.load().connect_timeout;
        let opened = self.connect_retrying(&template, timeout, demand).await;
        let upstream = template;
        match opened {
            Ok((est, upstream, via)) => {
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
                    own: demand
                        .attrs
                        .is_some_and(|a| upstream.route.as_ref().is_some_and(|r| r.attrs != a)),
                    upstream,
                    via,
                    slot,
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

/// The most recently used idle connection `demand` may have: a session-mode client skips
/// those opened through a transaction pooler, a client with its own target_session_attrs
/// those on servers that do not fit them (they stay for the others).
fn take_idle(idle: &mut Vec<ServerConn>, demand: &Demand) -> Option<ServerConn> {
    if let Some(i) = in_region(idle, demand) {
        return Some(idle.remove(i));
    }
    // Connections of one client's own are never idle: the rest suit every other client.
    if !demand.session && demand.attrs.is_none() {
        return idle.pop();
    }
    let i = idle
        .iter()
        .rposition(|c| c.suits(demand.session, demand.attrs))?;
    Some(idle.remove(i))
}

/// The most recently used idle connection in the region of `demand`'s listener that it may
/// have, when its listener names one.
fn in_region(idle: &[ServerConn], demand: &Demand) -> Option<usize> {
    let region = demand.region.as_deref()?;
    idle.iter()
        .rposition(|c| c.in_region(region) && c.suits(demand.session, demand.attrs))
}

/// A server logged in: its stream, the login at the server chosen, and that server when the
/// database has several.
type Opened = (
    crate::backend::connect::Established,
    Arc<Upstream>,
    Option<crate::backend::route::Via>,
);

/// The first pause before a connect is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

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
        lock(&self.pool.state).waiters.remove(self.id);
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(c)) => self.pool.release(c),
            Ok(Grant::Slot(s)) => drop(s),
            Ok(Grant::Shed(_)) | Err(_) => {}
        }
    }
}

/// Why a new waiter would overload the queue (shed_queue_length, shed_wait), if it would.
fn overloaded(st: &State, settings: &PoolSettings) -> Option<String> {
    let f = &settings.fairness;
    if f.shed_queue == 0 && f.shed_wait.is_none() {
        return None;
    }
    // Waiters held back only by their own identity's cap load nobody else.
    let waiting = st.waiters.len() - st.waiters.capped();
    if f.shed_queue > 0 && waiting >= f.shed_queue {
        return Some(format!(
            "pgsluice is shedding load: {waiting} clients are waiting for this pool \
             (shed_queue_length {}); lowest priority first",
            f.shed_queue
        ));
    }
    let bound = f.shed_wait?;
    // Each server serves a waiter every hold time, on average.
    let expected_us = (waiting + 1) as f64 * st.hold_us / settings.size.max(1) as f64;
    (expected_us > bound.as_micros() as f64).then(|| {
        format!(
            "pgsluice is shedding load: the expected wait for this pool ({:.1} s) is over \
             shed_wait ({} s); lowest priority first",
            expected_us / 1e6,
            bound.as_secs_f64()
        )
    })
}
