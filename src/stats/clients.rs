//! The logged-in clients, for SHOW CLIENTS, SHOW POOLS and KILL_CLIENT. A client registers
//! after login and leaves when its task ends; per transaction it only stores atomics.

use crate::net::Addr;
use crate::pool_key::PoolKey;
use dashmap::DashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in; linked to a server or between transactions.
    Active = 0,
    /// Waiting for a server connection.
    Waiting = 1,
}

/// What SHOW CLIENTS shows about one client: facts fixed at login, and a few atomics the
/// session stores as the client waits and gets servers.
#[derive(Debug)]
pub struct ClientInfo {
    pub facts: ClientFacts,
    pub connect_time: u64,
    /// The process id in the BackendKeyData the client was given (0 until it was).
    remote_pid: AtomicI32,
    state: AtomicU8,
    /// The server connection id linked now (0: none).
    link: AtomicU64,
    request_time: AtomicU64,
    /// When the current wait for a server began (Unix microseconds; 0: not waiting).
    wait_since: AtomicU64,
    /// Named prepared statements it keeps (transaction mode), as of its last transaction.
    prepared: AtomicU32,
    /// The client's socket while it is open (KILL_CLIENT shuts it down; -1: none). Read and
    /// changed only under `waker`'s lock, so the descriptor cannot be closed (and reused)
    /// between the check and the shutdown: an atomic only to sit beside the other small
    /// fields rather than in the lock's padding.
    socket: AtomicI32,
    /// The client's task, for the parking sweep to wake: stored once per task, taken when
    /// the task ends or parks (a stored waker keeps its task's memory alive).
    waker: Mutex<Option<std::task::Waker>>,
    killed: AtomicBool,
    /// Where the client is on its way to being parked ([`Park`]).
    park: AtomicU8,
}

/// A client's way to the parking lot (an idle client's task, relay and reactor
/// registration freed until its next message; `frontend::session::park`). The sweep moves
/// it on only while the client has no server; any transaction starts it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Park {
    /// Used since the last sweep.
    Active = 0,
    /// The last sweep found it without a server.
    Quiet = 1,
    /// Two sweeps did: its task is asked to park.
    Asked = 2,
    /// Parked: no task runs for it.
    Parked = 3,
    /// Never parked: a TLS or session-mode client.
    Never = 4,
}

/// How a client proved who it is (SHOW CLIENTS' auth_method): a byte, not a `&str`, in the
/// registry entry every client keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    Cert,
    Md5,
    ScramSha256,
    ApiKey,
    Jwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Cert => "cert",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::ApiKey => crate::identity::Source::ApiKey.method(),
            AuthMethod::Jwt => crate::identity::Source::Jwt.method(),
        }
    }
}

impl From<crate::auth::Method> for AuthMethod {
    fn from(m: crate::auth::Method) -> Self {
        match m {
            crate::auth::Method::Md5 => AuthMethod::Md5,
            crate::auth::Method::ScramSha256 => AuthMethod::ScramSha256,
        }
    }
}

impl From<crate::identity::Source> for AuthMethod {
    fn from(s: crate::identity::Source) -> Self {
        match s {
            crate::identity::Source::ApiKey => AuthMethod::ApiKey,
            crate::identity::Source::Jwt => AuthMethod::Jwt,
        }
    }
}

/// What is known of a client once it has logged in.
#[derive(Debug)]
pub struct ClientFacts {
    pub id: u64,
    /// Shared with the pool key's role where they are equal (they nearly always are).
    pub user: Arc<str>,
    /// The database is the pool key's.
    pub pool: PoolKey,
    /// Client address and port (0 for a unix socket).
    pub addr: Addr,
    pub port: u16,
    pub local_addr: Addr,
    pub local_port: u16,
    /// Only for a TLS client: kept out of line, most clients of a sidecar have none.
    pub tls: Option<Box<TlsFacts>>,
    pub application_name: Box<str>,
    pub auth_method: AuthMethod,
    pub pool_mode: crate::config::PoolMode,
    /// A token client's identity (API key or JWT subject).
    pub identity: Option<Arc<crate::identity::Identity>>,
    pub priority: crate::config::Priority,
}

#[derive(Debug)]
pub struct TlsFacts {
    /// "TLSv1.3/TLS_AES_256_GCM_SHA384", say.
    pub description: String,
    /// The host name the client sent in TLS SNI.
    pub sni: Option<String>,
}

impl ClientFacts {
    pub fn database(&self) -> &str {
        &self.pool.database
    }

    /// The TLS version and cipher, empty for a plaintext client.
    pub fn tls_description(&self) -> &str {
        self.tls.as_ref().map_or("", |t| &t.description)
    }

    /// The identity's name; a password client's is its user name.
    pub fn identity_name(&self) -> &str {
        self.identity.as_ref().map_or(&self.user, |i| &i.name)
    }

    pub fn sni(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.sni.as_deref())
    }
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        if self.state.load(Ordering::Relaxed) == ClientState::Waiting as u8 {
            ClientState::Waiting
        } else {
            ClientState::Active
        }
    }

    pub fn remote_pid(&self) -> i32 {
        self.remote_pid.load(Ordering::Relaxed)
    }

    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    pub fn set_prepared(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    pub fn set_remote_pid(&self, pid: i32) {
        self.remote_pid.store(pid, Ordering::Relaxed);
    }

    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }

    pub fn wait_since(&self) -> u64 {
        self.wait_since.load(Ordering::Relaxed)
    }

    /// The client asks for a server and waits in its pool's queue.
    pub fn waiting(&self, now: u64) {
        self.request_time.store(now, Ordering::Relaxed);
        self.wait_since.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// The client got server `server` (or gave it back: 0).
    pub fn linked(&self, server: u64) {
        // SeqCst: against kill_if_idle (one of the two always sees the other's store).
        self.link.store(server, Ordering::SeqCst);
        // A transaction: the parking sweep starts over (a load per transaction, a store only
        // after a sweep).
        if matches!(self.park_state(), Park::Quiet | Park::Asked) {
            self.set_park(Park::Active);
        }
        self.wait_since.store(0, Ordering::Relaxed);
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// The client's task, for the parking sweep to wake; stored once per task.
    pub fn set_waker(&self, waker: Option<&std::task::Waker>) {
        *self.lock() = waker.cloned();
    }

    pub fn park_state(&self) -> Park {
        match self.park.load(Ordering::Relaxed) {
            0 => Park::Active,
            1 => Park::Quiet,
            2 => Park::Asked,
            3 => Park::Parked,
            _ => Park::Never,
        }
    }

    /// The client's task says where it is (parked, back, or never to be parked).
    pub fn set_park(&self, to: Park) {
        self.park.store(to as u8, Ordering::Relaxed);
    }

    /// The sweep's step: a client without a server found on two sweeps in a row is asked to
    /// park (its task woken); true when it was asked now.
    pub fn sweep(&self) -> bool {
        let step = match self.park_state() {
            Park::Active => (Park::Active, Park::Quiet),
            Park::Quiet => (Park::Quiet, Park::Asked),
            _ => return false,
        };
        if self.link() != 0 {
            return false;
        }
        let moved = self
            .park
            .compare_exchange(
                step.0 as u8,
                step.1 as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if moved && step.1 == Park::Asked {
            if let Some(w) = &*self.lock() {
                w.wake_by_ref();
            }
            return true;
        }
        false
    }

    /// Runs `f` (a change of the client's socket: out of the runtime or back) with
    /// KILL_CLIENT kept off the descriptor; when `f` says the socket was lost (closed, its
    /// number free for another socket), the registry forgets it before anyone can use it.
    pub fn changing_socket(&self, f: impl FnOnce() -> bool) -> bool {
        let _socket = self.lock();
        let kept = f();
        if !kept {
            self.socket.store(-1, Ordering::Relaxed);
        }
        kept
    }

    /// The waker's lock, which also guards `socket`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::task::Waker>> {
        self.waker.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Ends the client (as [`ClientInfo::kill`]) only while it has no server: a shutdown's
    /// closing of clients between transactions. Either this sees the server the session just
    /// linked and leaves it, or the session sees the kill right after linking and gives the
    /// server back before sending it anything: a client is never closed with a statement of
    /// its running.
    pub fn kill_if_idle(&self) -> bool {
        self.killed.store(true, Ordering::SeqCst);
        if self.link.load(Ordering::SeqCst) != 0 || !self.kill() {
            self.killed.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Ends the client from outside its task: its reads see end-of-file, so it leaves
    /// through the normal path (its server closed or returned as that path decides).
    pub fn kill(&self) -> bool {
        let _socket = self.lock();
        let fd = self.socket.load(Ordering::Relaxed);
        if fd < 0 {
            return false;
        }
        self.killed.store(true, Ordering::Release);
        // SAFETY: fd is open while `socket` holds it (the session clears it, under this lock,
        // before closing the socket). Shutting down reads wakes the task's pending read.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        true
    }
}

// With its `Arc` counts in jemalloc's 224-byte class: every client keeps one, parked or not.
const _: () = assert!(std::mem::size_of::<ClientInfo>() <= 208);

/// Every logged-in client by connection id.
#[derive(Default)]
pub struct Clients {
    map: DashMap<u64, Arc<ClientInfo>>,
}

impl Clients {
    /// Adds a client; `socket` is what KILL_CLIENT shuts down.
    pub fn register(self: &Arc<Self>, facts: ClientFacts, socket: Option<RawFd>) -> Registered {
        let now = super::unix_micros();
        let id = facts.id;
        let info = Arc::new(ClientInfo {
            facts,
            connect_time: now,
            remote_pid: AtomicI32::new(0),
            state: AtomicU8::new(ClientState::Active as u8),
            link: AtomicU64::new(0),
            request_time: AtomicU64::new(now),
            wait_since: AtomicU64::new(0),
            prepared: AtomicU32::new(0),
            socket: AtomicI32::new(socket.unwrap_or(-1)),
            waker: Mutex::new(None),
            killed: AtomicBool::new(false),
            park: AtomicU8::new(Park::Active as u8),
        });
        self.map.insert(id, info.clone());
        Registered {
            clients: self.clone(),
            info,
        }
    }

    /// Calls `f` with every client, in no order, without copying the list.
    pub fn for_each(&self, mut f: impl FnMut(&ClientInfo)) {
        for e in self.map.iter() {
            f(e.value());
        }
    }

    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.facts.id);
        v
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.map.get(&id).map(|e| e.value().clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A client's place in the registry; leaving it (before the socket closes) unregisters.
pub struct Registered {
    clients: Arc<Clients>,
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut waker = self.info.lock();
        self.info.socket.store(-1, Ordering::Relaxed);
        *waker = None;
        self.clients.map.remove(&self.info.facts.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn client(socket: &std::os::unix::net::UnixStream) -> Registered {
        let facts = ClientFacts {
            id: 1,
            user: "agent".into(),
            pool: PoolKey {
                database: "app".into(),
                role: "agent".into(),
            },
            addr: Addr::Unix,
            port: 0,
            local_addr: Addr::Unix,
            local_port: 0,
            tls: None,
            application_name: "".into(),
            auth_method: AuthMethod::Md5,
            pool_mode: crate::config::PoolMode::Transaction,
            identity: None,
            priority: crate::config::Priority::NORMAL,
        };
        Arc::new(Clients::default()).register(facts, Some(socket.as_raw_fd()))
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_sweep_asks_a_client_idle_on_two_sweeps_and_a_transaction_starts_over() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let reg = client(&ours);
        let count = Arc::new(Count(Default::default()));
        reg.info
            .set_waker(Some(&std::task::Waker::from(count.clone())));
        let woken = || count.0.load(Ordering::SeqCst);
        // Holding a server: never asked.
        reg.info.linked(7);
        assert!(!reg.info.sweep() && !reg.info.sweep());
        assert_eq!((reg.info.park_state(), woken()), (Park::Active, 0));
        // Between transactions: quiet on the first sweep, asked (and woken) on the second.
        reg.info.linked(0);
        assert!(!reg.info.sweep());
        assert_eq!(reg.info.park_state(), Park::Quiet);
        // A transaction in between starts it over.
        reg.info.linked(3);
        reg.info.linked(0);
        assert_eq!(reg.info.park_state(), Park::Active);
        assert!(!reg.info.sweep());
        assert!(reg.info.sweep());
        assert_eq!((reg.info.park_state(), woken()), (Park::Asked, 1));
        // Asked once: later sweeps leave it to its task.
        assert!(!reg.info.sweep());
        assert_eq!(woken(), 1);
        // Parked and never-parked clients are not swept.
        for state in [Park::Parked, Park::Never] {
            reg.info.set_park(state);
            reg.info.linked(0);
            assert!(!reg.info.sweep() && !reg.info.sweep());
            assert_eq!(reg.info.park_state(), state);
        }
        // Leaving the registry drops the stored waker (it would keep the task's memory).
        drop(reg);
        assert_eq!(Arc::strong_count(&count), 1);
    }

    #[test]
    fn a_shutdown_closes_a_client_only_while_it_has_no_server() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let reg = client(&ours);
        // Linked to a server: left alone, and not marked killed.
        reg.info.linked(7);
        assert!(!reg.info.kill_if_idle());
        assert!(!reg.info.was_killed());
        // Between transactions: killed; its reads see end-of-file.
        reg.info.linked(0);
        assert!(reg.info.kill_if_idle());
        assert!(reg.info.was_killed());
        let mut buf = [0u8; 1];
        assert_eq!((&ours).read(&mut buf).unwrap(), 0);
    }
}
