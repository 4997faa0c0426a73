//! The listeners the configuration asks for, kept open to follow it. RELOAD binds the new
//! ones first (one that cannot be bound fails the RELOAD, and nothing changes), then closes
//! the removed ones and starts the new; one whose mode or region changed keeps its socket
//! and serves the next connections the new way. Connections already accepted are not touched.

use super::App;
use crate::config::{ListenAddr, Listener, PoolMode};
use crate::net::listener::{self, AcceptBackoff, Bound};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How a listener serves the connections it accepts next; None: it closes.
type Serving = Option<(PoolMode, Option<Arc<str>>)>;

struct Open {
    /// Its socket (open while its accept loop runs), for a takeover.
    fd: std::os::fd::RawFd,
    /// As the configuration names it (port 0 included).
    asked: ListenAddr,
    /// As bound (port 0 resolved).
    bound: ListenAddr,
    mode: PoolMode,
    serving: watch::Sender<Serving>,
}

/// A listener bound by [`Listening::bind_new`], not accepting yet.
pub struct Fresh {
    spec: Listener,
    socket: Bound,
    bound: ListenAddr,
}

#[derive(Default)]
pub struct Listening {
    open: Mutex<Vec<Open>>,
    /// The sockets went to a successor (an upgrade): closing leaves unix socket files alone.
    handed_over: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn serving(spec: &Listener) -> Serving {
    Some((spec.mode, spec.region.as_deref().map(Arc::from)))
}

/// Which of `wanted` each open listener is: the same address and mode first, then the same
/// address (its mode changed). Several may ask for the same address with port 0.
fn matching(open: &[Open], wanted: &[Listener]) -> Vec<Option<usize>> {
    let mut taken = vec![false; wanted.len()];
    let mut m = vec![None; open.len()];
    for same_mode in [true, false] {
        for (i, o) in open.iter().enumerate() {
            if m[i].is_some() {
                continue;
            }
            let hit = wanted.iter().enumerate().position(|(j, w)| {
                !taken[j] && w.addr == o.asked && (!same_mode || w.mode == o.mode)
            });
            if let Some(j) = hit {
                taken[j] = true;
                m[i] = Some(j);
            }
        }
    }
    m
}

impl Listening {
    /// Binds the listeners of `wanted` that are not open yet; an error (naming the address)
    /// when one cannot be, and then none of them stays bound.
    pub fn bind_new(&self, wanted: &[Listener]) -> std::io::Result<Vec<Fresh>> {
        self.bind_new_from(wanted, &mut Vec::new())
    }

    /// [`Listening::bind_new`], taking the sockets of `inherited` (a takeover's) for the
    /// addresses they were bound for instead of binding them again.
    pub fn bind_new_from(
        &self,
        wanted: &[Listener],
        inherited: &mut Vec<(ListenAddr, Bound)>,
    ) -> std::io::Result<Vec<Fresh>> {
        let open = lock(&self.open);
        let matched = matching(&open, wanted);
        let mut fresh = Vec::new();
        let new = wanted
            .iter()
            .enumerate()
            .filter(|(j, _)| !matched.contains(&Some(*j)));
        for (_, spec) in new {
            let socket = match inherited.iter().position(|(a, _)| *a == spec.addr) {
                Some(i) => inherited.swap_remove(i).1,
                None => listener::bind(&spec.addr).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", spec.addr))
                })?,
            };
            let bound = match (&socket, &spec.addr) {
                (Bound::Tcp(_), ListenAddr::Tcp(a)) => {
                    ListenAddr::Tcp(socket.local_addr().unwrap_or(*a))
                }
                (_, a) => a.clone(),
            };
            fresh.push(Fresh {
                spec: spec.clone(),
                socket,
                bound,
            });
        }
        Ok(fresh)
    }

    /// Serves `wanted`: `fresh` (from [`Listening::bind_new`]) starts accepting, the removed
    /// close, the changed serve their next connections the new way.
    pub fn apply(&self, app: &Arc<App>, wanted: &[Listener], fresh: Vec<Fresh>) {
        let mut open = lock(&self.open);
        let matched = matching(&open, wanted);
        let mut kept = Vec::new();
        for (mut o, m) in std::mem::take(&mut *open).into_iter().zip(matched) {
            let Some(spec) = m.map(|j| &wanted[j]) else {
                tracing::info!(addr = %o.bound, "listener closed: no longer in the configuration");
                o.serving.send_replace(None);
                continue;
            };
            o.mode = spec.mode;
            o.serving.send_replace(serving(spec));
            kept.push(o);
        }
        *open = kept;
        for f in fresh {
            tracing::info!(addr = %f.bound, mode = f.spec.mode.as_str(), "listening");
            let (tx, rx) = watch::channel(serving(&f.spec));
            let fd = f.socket.raw_fd();
            tokio::spawn(accept_loop(app.clone(), f.socket, f.spec.addr.clone(), rx));
            open.push(Open {
                fd,
                asked: f.spec.addr,
                bound: f.bound,
                mode: f.spec.mode,
                serving: tx,
            });
        }
    }

    /// A copy of each open listener's socket with the address the configuration asked for,
    /// for a takeover (copies: a RELOAD closing one meanwhile cannot make them dangle).
    pub fn sockets(&self) -> std::io::Result<Vec<(std::os::fd::OwnedFd, ListenAddr)>> {
        let open = lock(&self.open);
        let mut v = Vec::new();
        for o in open.iter() {
            // SAFETY: the fd is open while `o` is in the list (its accept loop owns the
            // socket and leaves only after it is removed, under this lock).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(o.fd) };
            v.push((fd.try_clone_to_owned()?, o.asked.clone()));
        }
        Ok(v)
    }

    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// (address as bound, mode) of each open listener.
    pub fn addrs(&self) -> Vec<(ListenAddr, PoolMode)> {
        lock(&self.open)
            .iter()
            .map(|o| (o.bound.clone(), o.mode))
            .collect()
    }

    /// The first open TCP listener of `mode`.
    pub fn tcp(&self, mode: PoolMode) -> Option<SocketAddr> {
        self.addrs().into_iter().find_map(|(a, m)| match a {
            ListenAddr::Tcp(sa) if m == mode => Some(sa),
            _ => None,
        })
    }
}

async fn accept_loop(
    app: Arc<App>,
    mut socket: Bound,
    asked: ListenAddr,
    mut serving: watch::Receiver<Serving>,
) {
    let mut stop = app.shutdown.subscribe();
    let mut backoff = AcceptBackoff::new("accept");
    loop {
        let Some((mode, region)) = serving.borrow_and_update().clone() else {
            break;
        };
        let keepalive = app.config.load().general.tcp_keepalive;
        // A RELOAD that removed this listener, or a shutdown, wins over a connection that
        // arrived meanwhile: once RELOAD has answered, the socket accepts no one (a
        // connection still in its backlog is reset when it closes).
        tokio::select! {
            biased;
            changed = serving.changed() => if changed.is_err() { break },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                if app.listening.handed_over() {
                    // The successor serves this socket now: its file stays.
                    socket.keep_file();
                }
                return;
            }
            r = socket.accept(keepalive) => match r {
                Ok((stream, peer)) => {
                    backoff.reset();
                    let id = app.conn_ids.fetch_add(1, Ordering::Relaxed);
                    // The connection's log lines carry its id: the `conn` span (entered by
                    // serve outside the relay loop) or a `conn` field.
                    let accepted = Box::new((stream, peer, region));
                    let serve = crate::frontend::session::serve(app.clone(), accepted, mode, id);
                    tokio::spawn(crate::net::isolate::isolated(id, serve));
                }
                // Out of descriptors and similar: back off instead of spinning.
                Err(e) => {
                    backoff.failed(&e).await;
                }
            },
        }
    }
    // Closed by a RELOAD: a unix socket's file goes with it (unless a listener bound
    // meanwhile at the same path owns it now).
    socket.keep_file();
    if let ListenAddr::Unix(path) = &asked
        && !app.listening.addrs().iter().any(|(a, _)| a == &asked)
    {
        let _ = std::fs::remove_file(path);
    }
}
