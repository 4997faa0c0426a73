//! What SHOW SERVERS shows about one server connection: fixed facts and a few atomics the
//! pool and the session store as the connection changes hands.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Linked to a client.
    Active = 0,
    /// In the pool, ready.
    Idle = 1,
    /// Being checked (server_check_query) or reset before reuse.
    Tested = 2,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Tested => "tested",
        }
    }
}

#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub pid: i32,
    pub addr: String,
    pub port: u16,
    pub local_addr: crate::net::Addr,
    pub local_port: u16,
    pub connect_time: u64,
    /// "TLSv1.3/..." when encrypted, empty otherwise.
    pub tls: String,
    state: AtomicU8,
    link: AtomicU64,
    request_time: AtomicU64,
    /// Statements prepared on it, as of its last return to the pool.
    prepared: AtomicU32,
}

impl ServerInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    pub fn set_prepared(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    pub fn new(
        id: u64,
        pid: i32,
        addr: String,
        port: u16,
        local_addr: crate::net::Addr,
        local_port: u16,
        tls: String,
    ) -> ServerInfo {
        let now = super::unix_micros();
        ServerInfo {
            id,
            pid,
            addr,
            port,
            local_addr,
            local_port,
            connect_time: now,
            tls,
            state: AtomicU8::new(ServerState::Active as u8),
            link: AtomicU64::new(0),
            request_time: AtomicU64::new(now),
            prepared: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            1 => ServerState::Idle,
            2 => ServerState::Tested,
            _ => ServerState::Active,
        }
    }

    pub fn set_state(&self, s: ServerState) {
        self.state.store(s as u8, Ordering::Relaxed);
        if s != ServerState::Active {
            self.link.store(0, Ordering::Relaxed);
        }
    }

    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// Handed to client `client` at `now` (Unix microseconds).
    pub fn linked(&self, client: u64, now: u64) {
        self.link.store(client, Ordering::Relaxed);
        self.request_time.store(now, Ordering::Relaxed);
        self.state
            .store(ServerState::Active as u8, Ordering::Relaxed);
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }
}
