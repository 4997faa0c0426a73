//! Fakes for unit tests of the pool and the relay: a connector whose "servers" are one end of
//! a unix socket pair, the other end kept here for the test to script or to close.

use super::connect::{ConnectError, Connector, Established, Opening, Upstream};
use super::params::SessionParams;
use super::pool::{DbLimit, Pool, PoolSettings};
use crate::error::ClientError;
use crate::net::Stream;
use crate::pool_key::PoolKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::UnixStream;

#[derive(Default)]
pub struct Fake {
    opened: AtomicUsize,
    pub fail: AtomicBool,
    /// The server ends, by pid; dropping one closes that server.
    peers: Mutex<HashMap<i32, UnixStream>>,
}

impl Connector for Fake {
    fn establish<'a>(&'a self, _up: &'a Upstream, _timeout: Duration) -> Opening<'a> {
        Box::pin(async move {
            if self.fail.load(Ordering::Relaxed) {
                return Err(ConnectError::Refused(ClientError::server_unavailable(
                    "fake refusal",
                )));
            }
            let (ours, theirs) = UnixStream::pair()?;
            let pid = self.opened.fetch_add(1, Ordering::Relaxed) as i32 + 1;
            self.peers.lock().unwrap().insert(pid, theirs);
            Ok(Established {
                stream: Stream::Unix(ours),
                pid,
                secret: 0,
                params: SessionParams::default(),
            })
        })
    }
}

impl Fake {
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// The server end of the connection with `pid`, taken over by the test.
    pub fn take_peer(&self, pid: i32) -> Option<UnixStream> {
        self.peers.lock().unwrap().remove(&pid)
    }

    /// The server with `pid` goes away.
    pub fn kill(&self, pid: i32) {
        self.peers.lock().unwrap().remove(&pid);
    }
}

pub fn upstream(host: &str) -> Upstream {
    Upstream {
        host: host.into(),
        port: 5432,
        dbname: "db".into(),
        user: "role".into(),
        password: None,
        tls: None,
        passthrough: None,
        tenant: None,
        addr: None,
        route: None,
    }
}

pub fn settings(size: usize) -> PoolSettings {
    PoolSettings {
        size,
        min_size: 0,
        reserve_size: 0,
        reserve_timeout: Duration::from_secs(5),
        lifetime: None,
        idle_timeout: None,
        connect_timeout: Duration::from_secs(5),
        login_retry: None,
        wait_timeout: Some(Duration::from_secs(120)),
        check_query: None,
        check_delay: Duration::from_secs(30),
        fairness: Default::default(),
    }
}

/// A pool of `s` whose servers the returned fake opens.
pub fn pool_on(s: PoolSettings, db: Arc<DbLimit>) -> (Arc<Pool>, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let key = PoolKey {
        database: "db".into(),
        role: "role".into(),
    };
    let pool = Pool::with_connector(
        key,
        upstream("fake"),
        s,
        db,
        Arc::new(AtomicU64::new(0)),
        false,
        fake.clone(),
    );
    (pool, fake)
}
