//! Places in the count of open connections: a pool's [`Slot`]s, and max_db_connections
//! across a database's pools ([`DbLimit`]).

use super::*;

/// Server connections open to one database across its pools (max_db_connections), of which
/// `reserved` are kept for identities' dedicated places: connections not held on one share
/// the rest.
#[derive(Default)]
pub struct DbLimit {
    pub(super) max: usize,
    pub(super) open: AtomicUsize,
    reserved: usize,
    /// Servers held on dedicated places now, across the database's pools.
    pub(super) dedicated_busy: Arc<AtomicUsize>,
    pub(super) pools: Mutex<Vec<Weak<Pool>>>,
}

impl DbLimit {
    pub fn new(max: usize) -> Arc<DbLimit> {
        DbLimit::with_reserved(max, 0)
    }

    /// `reserved`: every dedicated place of the database's pools.
    pub fn with_reserved(max: usize, reserved: usize) -> Arc<DbLimit> {
        Arc::new(DbLimit {
            max,
            reserved,
            ..DbLimit::default()
        })
    }

    /// A place for one more connection, for a client on a dedicated place (`dedicated`:
    /// anywhere under max_db_connections) or not (only while the connections not held on
    /// dedicated places leave `reserved` free).
    pub(super) fn try_acquire(&self, dedicated: bool) -> bool {
        if self.max == 0 {
            self.open.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let limit = self.limit_for(dedicated);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether [`DbLimit::try_acquire`] would succeed now (it may not by the time it runs).
    pub(super) fn would_admit(&self, dedicated: bool) -> bool {
        self.max == 0 || self.open.load(Ordering::Acquire) < self.limit_for(dedicated)
    }

    /// Connections that may be open for a client on a dedicated place (all of max) or not
    /// (max less the dedicated places not in use).
    fn limit_for(&self, dedicated: bool) -> usize {
        if dedicated {
            return self.max;
        }
        let held = self.dedicated_busy.load(Ordering::Acquire);
        (self.max - self.reserved + held).min(self.max)
    }

    /// More connections are open than dedicated holders and the shared part account for
    /// (dedicated servers came back): none may go to a client not on a dedicated place.
    pub(super) fn overcommitted(&self) -> bool {
        if self.max == 0 || self.reserved == 0 {
            return false;
        }
        self.open.load(Ordering::Acquire) > self.limit_for(false)
    }

    /// Gives back the place [`DbLimit::try_acquire`] took, without handing it on.
    pub(super) fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// At the database cap, a pool with waiters takes the place of an idle connection of
    /// another pool: returned here to be closed (outside every lock), which frees its place.
    pub(super) fn take_idle_elsewhere(&self, wanting: &Arc<Pool>) -> Option<ServerConn> {
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

    pub(super) fn other_pool_waiting(&self, me: &Arc<Pool>) -> bool {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        pools
            .iter()
            .any(|p| !Arc::ptr_eq(p, me) && !lock(&p.state).waiters.is_empty())
    }

    pub(super) fn release(&self) {
        self.give_back();
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

/// A place in a pool's count of open connections; frees itself on drop.
pub struct Slot {
    pub(super) pool: Weak<Pool>,
    pub(super) armed: bool,
    /// The server connection filling this place, once opened (for SHOW SERVERS).
    pub(super) server: u64,
    /// What its client counts against while it holds the server.
    pub(super) hold: queue::Hold,
}

impl Slot {
    pub(super) fn new(pool: &Arc<Pool>) -> Slot {
        Slot {
            pool: Arc::downgrade(pool),
            armed: true,
            server: 0,
            hold: queue::Hold::default(),
        }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed
            && let Some(pool) = self.pool.upgrade()
        {
            if self.server != 0 {
                lock(&pool.servers).remove(&self.server);
            }
            pool.place_freed(std::mem::take(&mut self.hold));
        }
    }
}
