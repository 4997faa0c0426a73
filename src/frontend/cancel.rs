//! Cancel routing. Each client gets its own BackendKeyData; a CancelRequest carrying it is
//! sent on to the server connection serving that client at that moment, or, while the
//! client waits for a server, ends the wait. Keys of departed clients are forgotten, so a
//! stale cancel never reaches the next user of the same server.

use crate::backend::connect::send_cancel;
use crate::backend::server::CancelTarget;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Cancels {
    map: DashMap<(i32, i32), Arc<CancelHandle>>,
}

#[derive(Default)]
pub struct CancelHandle {
    target: Mutex<Option<CancelTarget>>,
    /// Cancels on their way to a server for this client.
    in_flight: AtomicU32,
    /// Wakes the client's wait for a server connection.
    pub wake: Notify,
}

impl CancelHandle {
    pub fn attach(&self, target: CancelTarget) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    /// Forgets the server. Returns false if a cancel for this client may still be on its way
    /// to it: that server must then be closed, not reused, or the cancel could hit the next
    /// client's query.
    pub fn detach(&self) -> bool {
        let mut t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        *t = None;
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn current(&self) -> Option<CancelTarget> {
        let t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_some() {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        t.clone()
    }

    /// Cancels whatever the client is doing now.
    pub async fn fire(&self) {
        match self.current() {
            Some(t) => {
                if let Err(e) = send_cancel(&t.upstream, t.pid, t.secret).await {
                    tracing::warn!(error = %e, "could not deliver cancel request to server");
                }
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            None => self.wake.notify_waiters(),
        }
    }
}

/// Keeps a client's key registered until dropped.
pub struct Registration {
    cancels: Arc<Cancels>,
    pub pid: i32,
    pub secret: i32,
    pub handle: Arc<CancelHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.map.remove(&(self.pid, self.secret));
    }
}

/// Linux never gives a process an id above this (PID_MAX_LIMIT, 2^22); other systems stay
/// lower still.
const MAX_REAL_PID: i32 = 1 << 22;

/// A transaction-mode client's backend pid: one no server process can have, so a client
/// that calls pg_terminate_backend or pg_cancel_backend on its reported pid hits nothing.
pub fn fake_pid() -> i32 {
    rand::random_range(MAX_REAL_PID + 1..=i32::MAX)
}

impl Cancels {
    /// Registers a client under `pid` (its server's real pid in session mode) or a fresh one.
    /// `peer`: this instance's peer_id, carried in the key (0: none).
    pub fn register(self: &Arc<Self>, pid: Option<i32>, peer: u8) -> Registration {
        loop {
            let pid = pid.unwrap_or_else(fake_pid);
            let secret = super::peers::key_secret(peer);
            let handle = Arc::new(CancelHandle::default());
            match self.map.entry((pid, secret)) {
                dashmap::Entry::Occupied(_) => continue,
                dashmap::Entry::Vacant(v) => {
                    v.insert(handle.clone());
                    return Registration {
                        cancels: self.clone(),
                        pid,
                        secret,
                        handle,
                    };
                }
            }
        }
    }

    /// Handles a CancelRequest. Unknown keys are ignored, as PostgreSQL does, saying nothing.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return false;
        };
        let handle = self
            .map
            .get(&(pid, i32::from_be_bytes(secret)))
            .map(|h| h.clone());
        match handle {
            Some(h) => {
                h.fire().await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_pids_are_never_real_ones() {
        for _ in 0..100_000 {
            let pid = fake_pid();
            assert!(pid > MAX_REAL_PID, "{pid}");
        }
    }
}
