//! Parked clients: a transaction-mode client idle for `client_park_delay` gives up its task,
//! its relay and its reactor registration (about a kilobyte) until its next message. Its
//! plain TCP or unix socket waits in one epoll set for the whole process; the session state
//! ([`Parked`]: settings, prepared statements, cancel key, registry entry) waits in a map
//! beside it.
//!
//! - **when**: a sweep every `client_park_delay` over the client registry; a client found
//!   without a server on two sweeps in a row is asked to park and its task woken
//!   ([`ClientInfo::sweep`]); a busy client pays one atomic load per transaction.
//! - **park**: the task parks only when its relay is at rest ([`Relay::at_rest`]: nothing
//!   buffered, owed or timed), it has no server, no LISTEN and no idle timer; otherwise it
//!   goes on and is asked again later.
//! - **wake**: anything readable on the socket (a message, the client's close, KILL_CLIENT's
//!   or a shutdown's `shutdown(2)`) spawns its task again with a new relay. The socket is
//!   registered while the client is in the map, under the map's lock, so a message that
//!   arrived before the registration is reported by it (epoll reports a ready socket when
//!   it is added) and none is lost.
//!
//! TLS clients (their session state is larger than all of this) and session-mode clients
//! (they hold a server) are never parked.

use super::*;
use crate::net::stream::Detached;
use crate::stats::clients::Park;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, OnceLock, Weak};
use tokio::io::unix::AsyncFd;

/// The parking lot of a process (in [`App`]); empty and inert until [`run`] starts it.
#[derive(Default)]
pub struct Parking {
    lot: OnceLock<Arc<Lot>>,
}

struct Lot {
    epoll: Epoll,
    /// None once the lot's task has stopped watching: nothing more is parked.
    parked: Mutex<Option<HashMap<u64, Box<Parked>>>>,
}

/// A parked client (jemalloc's 192-byte class): its session without a task, a relay, its
/// reactor registration or its hand-over cache; a client with a server or LISTEN is never
/// parked. `Client`'s fields but those, in an order that drops the registry entry (and
/// with it KILL_CLIENT's hold on the descriptor) before the socket closes.
pub(super) struct Parked {
    reg: Registered,
    socket: Detached,
    address_slot: crate::admission::limits::AddressSlot,
    state: ClientSession,
    pool: Arc<Pool>,
    cancel: Registration,
    bearer: Option<Box<crate::identity::claims::Bearer>>,
    demand: crate::backend::Demand,
    admitted: Option<Box<crate::admission::identities::Admitted>>,
    /// What the relay's meter and the audit line must keep, when anything.
    extra: Option<Box<Extra>>,
    /// The relay's max_prepared and max_client_statements.
    prepared: [u32; 2],
}

struct Extra {
    kept: Option<crate::stats::meter::Kept>,
    ended: Ended,
}

// In jemalloc's 192-byte class (release builds: what is shipped and measured).
#[cfg(not(debug_assertions))]
const _: () = assert!(std::mem::size_of::<Parked>() <= 192);

impl Parked {
    /// `client` (detached) with what its relay leaves behind.
    fn of(client: Client, extra: Option<Box<Extra>>, prepared: [u32; 2]) -> Parked {
        let Client {
            _address_slot: address_slot,
            reg,
            stream,
            state,
            listening,
            pool,
            cancel,
            server,
            handover: _,
            bearer,
            demand,
            admitted,
        } = client;
        debug_assert!(server.is_none() && listening.is_none());
        let socket = match stream {
            Stream::Detached(d) => d,
            // Not reached (`park` detached it first). Were it, the socket closes under the
            // registry's lock, which forgets its number before another socket can get it.
            attached => {
                reg.info.changing_socket(|| {
                    drop(attached);
                    false
                });
                Detached::Gone
            }
        };
        Parked {
            reg,
            socket,
            address_slot,
            state,
            pool,
            cancel,
            bearer,
            demand,
            admitted,
            extra,
            prepared,
        }
    }

    /// The client again (its socket still detached), and what its relay left behind.
    fn into_client(self) -> (Client, Option<Box<Extra>>, [u32; 2]) {
        let client = Client {
            _address_slot: self.address_slot,
            reg: self.reg,
            stream: Stream::Detached(self.socket),
            state: self.state,
            listening: None,
            pool: self.pool,
            cancel: self.cancel,
            server: None,
            handover: None,
            bearer: self.bearer,
            demand: self.demand,
            admitted: self.admitted,
        };
        (client, self.extra, self.prepared)
    }

    fn id(&self) -> u64 {
        self.reg.info.facts.id
    }
}

impl Parking {
    /// Clients parked now.
    pub fn len(&self) -> usize {
        self.lot
            .get()
            .map_or(0, |l| lock(&l.parked).as_ref().map_or(0, HashMap::len))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `p` in the lot; gives it back when the lot is not running or the socket cannot
    /// be watched.
    fn add(&self, p: Box<Parked>) -> Result<(), Box<Parked>> {
        let Some(lot) = self.lot.get() else {
            return Err(p);
        };
        let id = p.id();
        let mut parked = lock(&lot.parked);
        let (Some(parked), Some(fd)) = (parked.as_mut(), p.socket.fd()) else {
            return Err(p);
        };
        // One event, then the socket leaves the set (take() deletes it).
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        if lot.epoll.add(fd, EpollEvent::new(flags, id)).is_err() {
            return Err(p);
        }
        p.reg.info.set_park(Park::Parked);
        parked.insert(id, p);
        Ok(())
    }
}

impl Lot {
    /// The parked client `id`, out of the map and the epoll set.
    fn take(&self, id: u64) -> Option<Box<Parked>> {
        let p = lock(&self.parked).as_mut()?.remove(&id)?;
        if let Some(fd) = p.socket.fd() {
            let _ = self.epoll.delete(fd);
        }
        Some(p)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The epoll set's descriptor, for the reactor (the lot owns the set and outlives this).
struct LotFd(Arc<Lot>);

impl AsRawFd for LotFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.epoll.0.as_raw_fd()
    }
}

/// The lot's task: wakes parked clients whose sockets turn readable and sweeps the registry
/// for clients to park, while the proxy runs.
pub async fn run(app: Weak<App>) {
    let lot = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(epoll) => Arc::new(Lot {
            epoll,
            parked: Mutex::new(Some(HashMap::new())),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the parking lot's epoll set: idle clients are not parked");
            return;
        }
    };
    match app.upgrade() {
        Some(a) if a.parking.lot.set(lot.clone()).is_ok() => {}
        _ => return,
    }
    // SAFETY: LotFd holds the lot, which owns the epoll descriptor: it stays open, and the
    // same, for as long as the AsyncFd that holds the LotFd.
    let watched = unsafe {
        AsyncFd::register_with_interest(LotFd(lot.clone()), tokio::io::Interest::READABLE)
    };
    let watched = match watched {
        Ok(w) => w,
        Err(e) => {
            let (_, e) = e.into_parts();
            tracing::warn!(error = %e, "cannot watch the parking lot: idle clients are not parked");
            return;
        }
    };
    // One timer, reset only when it fires: wake-ups of parked clients do not push the
    // sweep back.
    let mut sweep = Box::pin(tokio::time::sleep(Duration::ZERO));
    loop {
        tokio::select! {
            biased;
            ready = watched.readable() => {
                let Some(a) = app.upgrade() else { return };
                let Ok(mut guard) = ready else {
                    // The runtime is going away: nothing would wake a parked client again.
                    close(&a, &lot);
                    return;
                };
                wake_ready(&a, &lot);
                // Cleared only if nothing arrived since the guard was made (tokio's tick).
                guard.clear_ready();
            }
            _ = &mut sweep => {
                let Some(a) = app.upgrade() else { return };
                let period = park_period(&a);
                if period.is_some() && !a.is_shutting_down() {
                    a.clients.for_each(|c| {
                        c.sweep();
                    });
                }
                let next = period.unwrap_or(Duration::from_secs(1));
                sweep.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
}

/// Stops parking: every parked client goes back to a task.
fn close(app: &Arc<App>, lot: &Lot) {
    let parked = lock(&lot.parked).take().unwrap_or_default();
    for (_, p) in parked {
        if let Some(fd) = p.socket.fd() {
            let _ = lot.epoll.delete(fd);
        }
        spawn_resume(app, p);
    }
}

/// How often the sweep runs; None while parking is off (`client_park_delay = 0`, or a
/// `client_idle_timeout`, whose timer an idle client's task must keep).
fn park_period(app: &App) -> Option<Duration> {
    let general = &app.config.load().general;
    if general.client_idle_timeout.enabled().is_some() {
        return None;
    }
    general
        .client_park_delay
        .enabled()
        .map(|d| d.max(Duration::from_millis(10)))
}

/// Every parked client with something to read goes back to a task.
fn wake_ready(app: &Arc<App>, lot: &Lot) {
    let mut events = [EpollEvent::empty(); 64];
    loop {
        let n = lot.epoll.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        for e in &events[..n] {
            if let Some(p) = lot.take(e.data()) {
                spawn_resume(app, p);
            }
        }
        if n < events.len() {
            return;
        }
    }
}

fn spawn_resume(app: &Arc<App>, p: Box<Parked>) {
    let id = p.id();
    tokio::spawn(crate::net::isolate::isolated(id, resume(app.clone(), p)));
}

/// The relay loop asked to park and found the client at rest: the client leaves its task for
/// the lot. Err: it could not (its socket is lost); the caller ends it.
pub(super) fn park(
    app: &Arc<App>,
    mut conn: Box<(Client, Relay)>,
    mut ended: Ended,
) -> Result<(), (Box<(Client, Relay)>, Ended)> {
    let (client, relay) = &mut *conn;
    let stream = &mut client.stream;
    let detached = client
        .reg
        .info
        .changing_socket(|| stream.detach() && stream.detached_fd().is_some());
    if !detached {
        return Err((conn, ended));
    }
    let kept = relay.meter.keep();
    ended.add_bytes(&relay.meter);
    // Read once at login (restart-only settings), kept so that a RELOAD does not change how
    // a parked client's statements are named when it comes back.
    let prepared = [relay.max_prepared, relay.max_client_statements];
    let (client, _relay) = *conn;
    let extra = (kept.is_some() || ended.audit.is_some()).then(|| Box::new(Extra { kept, ended }));
    let parked = Box::new(Parked::of(client, extra, prepared));
    match app.parking.add(parked) {
        Ok(()) => {
            app.metrics.parks.inc();
        }
        // Not watched: it comes straight back.
        Err(p) => spawn_resume(app, p),
    }
    Ok(())
}

/// A parked client's socket turned readable: a task and a relay again, then the relay loop.
async fn resume(app: Arc<App>, parked: Box<Parked>) {
    let _count = scopeguard(&app, PoolMode::Transaction);
    let (mut client, extra, prepared) = parked.into_client();
    client.reg.info.set_park(Park::Active);
    let stream = &mut client.stream;
    let mut failed = None;
    client.reg.info.changing_socket(|| {
        stream
            .attach()
            .map_err(|e| failed = Some(e.to_string()))
            .is_ok()
    });
    if let Some(e) = failed {
        // Its reads fail now: the relay loop ends it as a client gone.
        tracing::warn!(conn = client.id(), error = %e, "a parked client's socket could not rejoin the runtime");
    }
    let mut relay = new_relay(&app, &client, PoolMode::Transaction, Some(prepared));
    let ended = match extra {
        Some(e) => {
            if let Some(k) = e.kept {
                relay.meter.restore(k);
            }
            e.ended
        }
        None => Ended::default(),
    };
    if live(&app, Box::new((client, relay)), ended).await {
        // Parked again: still counted against max_client_conn.
        std::mem::forget(_count);
    }
}
