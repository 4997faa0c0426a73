//! Giving servers back: to the longest waiter, to the idle list, or closed; freed places
//! handed on; the maintenance that closes idle, old and surplus connections.

use super::*;

impl Pool {
    /// [`Pool::release`], with how long the client's queries took on it (its queries'
    /// request-to-ReadyForQuery time): the adaptive limit's sample is the lesser of that and
    /// how long the server was held, so neither a client's pauses inside its transaction nor
    /// its wait in the queue before its first query count as the server being slow.
    pub fn release_busy(self: &Arc<Self>, mut conn: ServerConn, busy_us: u64) {
        conn.slot.hold.busy_us = Some(busy_us);
        self.release(conn);
    }

    /// Returns a clean connection (idle, no transaction): to the next waiter, else to idle.
    pub fn release(self: &Arc<Self>, mut conn: ServerConn) {
        conn.last_used = Instant::now();
        if !self.current(&conn) || conn.own {
            tracing::debug!(pool = %self.key, server = conn.id, "closing a connection to the previous upstream, or one client's own");
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
        let in_use = st.waiters.busy;
        let busy_us = conn.slot.hold.busy_us;
        if let Some(taken) = st.waiters.unhold(std::mem::take(&mut conn.slot.hold)) {
            let held = conn.last_used.saturating_duration_since(taken).as_micros() as u64;
            let held = busy_us.map_or(held, |b| b.min(held)) as f64;
            st.hold_us = 0.9 * st.hold_us + 0.1 * held;
            adapt(&mut st, &settings, held, in_use);
        }
        if !settings.fairness.adaptive {
            st.waiters.adaptive = None;
        }
        let rules = self.rules(&settings);
        while let Some(w) = st.waiters.pop(&rules) {
            conn.slot.hold = st.waiters.hold(&w.demand);
            match w.tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(mut c)) => {
                    st.waiters.unhold(std::mem::take(&mut c.slot.hold));
                    conn = c;
                }
                // Cannot happen: we sent a connection.
                Err(_) => return,
            }
        }
        if self.db.max == 0 {
            // No database cap to share: back to idle under the same lock (every transaction).
            st.idle.push(conn);
            if !st.waiters.is_empty() {
                // The adaptive limit may have grown: idle servers for waiters it now allows.
                self.serve_idle(&mut st, &rules);
            }
            return;
        }
        if !rules.shared_ok {
            // A dedicated server came back with the database's shared part full: closed, so
            // it stays within max_db_connections minus the dedicated places.
            drop(st);
            drop(conn);
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
    pub(super) fn place_freed(self: &Arc<Self>, hold: queue::Hold) {
        let mut st = lock(&self.state);
        st.waiters.unhold(hold);
        let settings = self.settings.load();
        let rules = self.rules(&settings);
        // A pool a RELOAD made smaller keeps the place closed until it is within its size.
        let shrinking = st.open > settings.size + settings.reserve_size;
        while !shrinking && let Some(w) = st.waiters.pop(&rules) {
            let mut slot = Slot::new(self);
            slot.hold = st.waiters.hold(&w.demand);
            match w.tx.send(Grant::Slot(slot)) {
                Ok(()) => return,
                Err(Grant::Slot(mut s)) => {
                    st.waiters.unhold(std::mem::take(&mut s.hold));
                    s.disarm();
                }
                Err(_) => return,
            }
        }
        st.open -= 1;
        drop(st);
        self.db.release();
    }

    /// Idle servers to the waiters the rules now allow (after the rules changed: a larger
    /// adaptive limit, new settings, an idle server put back).
    pub(super) fn serve_idle(&self, st: &mut State, rules: &Rules) {
        while !st.idle.is_empty()
            && let Some(w) = st.waiters.pop(rules)
        {
            let Some(mut conn) = st.idle.pop() else { break };
            conn.slot.hold = st.waiters.hold(&w.demand);
            if let Err(Grant::Conn(mut c)) = w.tx.send(Grant::Conn(conn)) {
                st.waiters.unhold(std::mem::take(&mut c.slot.hold));
                st.idle.push(c);
            }
        }
    }

    /// Called when the database cap frees a place: true if a waiter here took it.
    pub(super) fn grant_free_place(self: &Arc<Self>) -> bool {
        let mut st = lock(&self.state);
        if st.waiters.is_empty() {
            return false;
        }
        let settings = self.settings.load();
        let rules = self.rules(&settings);
        loop {
            // The next waiter the database has a place for (a dedicated one may take a place
            // the shared part may not).
            let db = &self.db;
            let open = st.open;
            let fits = |q: &Queue, w: &Waiter| {
                open < settings.size && db.would_admit(q.dedicated_for(&w.demand))
            };
            let Some(w) = st.waiters.pop_if(&rules, fits) else {
                return false;
            };
            let dedicated = st.waiters.dedicated_for(&w.demand);
            let Some(mut s) = self.try_slot(&mut st, settings.size, dedicated) else {
                // Taken meanwhile by another pool: it waits on, in its place.
                st.waiters.reinsert(w);
                return false;
            };
            s.hold = st.waiters.hold(&w.demand);
            match w.tx.send(Grant::Slot(s)) {
                Ok(()) => return true,
                Err(Grant::Slot(mut s)) => {
                    // It left: the place goes back, and on to the next waiter.
                    st.waiters.unhold(std::mem::take(&mut s.hold));
                    s.disarm();
                    st.open -= 1;
                    self.db.give_back();
                }
                Err(_) => return true,
            }
        }
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
            let mut any_dead = false;
            for c in st.idle.drain(..) {
                let too_old = s.lifetime.is_some_and(|l| c.created.elapsed() >= l);
                let idle_long = s.idle_timeout.is_some_and(|t| c.last_used.elapsed() >= t);
                // Closed (or talking) while idle: gone from the counts now, not at its next
                // checkout.
                let dead = c.stream.has_pending_input_or_eof(false);
                any_dead |= dead;
                if too_old || dead || (idle_long && open - retired.len() > s.min_size) {
                    retired.push(c);
                } else {
                    keep.push(c);
                }
            }
            // Least recently used first, most recently used last: checkout pops from the end,
            // so steady traffic keeps reusing the warmest servers and the rest can go idle
            // long enough for server_idle_timeout.
            if any_dead {
                st.found_dead(Instant::now());
            }
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
                match self.try_slot(&mut st, min_size, false) {
                    Some(s) => s,
                    None => break,
                }
            };
            match self.open(slot, &Demand::default()).await {
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

/// Feeds the adaptive limit a server's hold time (starting it when the settings turned it
/// on).
fn adapt(st: &mut State, settings: &PoolSettings, held_us: f64, in_use: usize) {
    if !settings.fairness.adaptive {
        return;
    }
    // Never so low that the shared places, past the dedicated ones and the high class's
    // reserve, are none: shared clients' samples are what lets it grow again.
    let f = &settings.fairness;
    let floor = settings.min_size.max(f.dedicated + f.reserve + 1);
    let bounds = (floor.min(settings.size), settings.size);
    let g = st
        .waiters
        .adaptive
        .get_or_insert_with(|| super::adaptive::Gradient::new(bounds.0, bounds.1));
    g.bound(bounds.0, bounds.1);
    g.sample(held_us, in_use);
}
