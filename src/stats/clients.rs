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
    /// The client's socket while it is open; KILL_CLIENT shuts it down. Behind a lock so the
    /// descriptor cannot be closed (and reused) between the check and the shutdown.
    socket: Mutex<Option<RawFd>>,
    killed: AtomicBool,
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
    pub auth_method: &'static str,
    pub pool_mode: &'static str,
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
        self.wait_since.store(0, Ordering::Relaxed);
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
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
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = *socket else { return false };
        self.killed.store(true, Ordering::Release);
        // SAFETY: fd is open while `socket` holds it (the session clears it, under this lock,
        // before closing the socket). Shutting down reads wakes the task's pending read.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        true
    }
}

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
            socket: Mutex::new(socket),
            killed: AtomicBool::new(false),
        });
        self.map.insert(id, info.clone());
        Registered {
            clients: self.clone(),
            info,
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
        *self.info.socket.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            auth_method: "md5",
            pool_mode: "transaction",
            identity: None,
            priority: crate::config::Priority::NORMAL,
        };
        Arc::new(Clients::default()).register(facts, Some(socket.as_raw_fd()))
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
