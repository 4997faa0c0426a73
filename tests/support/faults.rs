//! A TCP relay between pgsluice and PostgreSQL that injects faults into the server-to-proxy
//! direction of the connections it accepts while a fault is set: cut the connection after N
//! bytes (a message left half-sent), reset it at connect, or delay every chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What new connections suffer (encoded in one atomic: kind << 32 | argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Close both ways after this many bytes from the server.
    CutAfter(u32),
    /// Reset the client side at once (SO_LINGER 0).
    Reset,
    /// Sleep this many milliseconds before forwarding each chunk from the server.
    Delay(u32),
}

impl Fault {
    fn encode(self) -> u64 {
        match self {
            Fault::None => 0,
            Fault::CutAfter(n) => (1 << 32) | u64::from(n),
            Fault::Reset => 2 << 32,
            Fault::Delay(ms) => (3 << 32) | u64::from(ms),
        }
    }
    fn decode(v: u64) -> Fault {
        let arg = (v & 0xffff_ffff) as u32;
        match v >> 32 {
            1 => Fault::CutAfter(arg),
            2 => Fault::Reset,
            3 => Fault::Delay(arg),
            _ => Fault::None,
        }
    }
}

pub struct FaultRelay {
    pub port: u16,
    fault: Arc<AtomicU64>,
    /// Milliseconds every connection, open or new, waits before forwarding a server chunk.
    latency: Arc<AtomicU64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl FaultRelay {
    pub async fn start(upstream_port: u16) -> FaultRelay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let fault = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(AtomicU64::new(0));
        let (f, a, lat) = (fault.clone(), accepted.clone(), latency.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                let fault = Fault::decode(f.load(Ordering::Relaxed));
                tokio::spawn(pump(client, upstream_port, fault, lat.clone()));
            }
        });
        FaultRelay {
            port,
            fault,
            latency,
            accepted,
        }
    }

    /// Latency added to every server chunk of every connection from now on (0: none).
    pub fn set_latency(&self, ms: u64) {
        self.latency.store(ms, Ordering::Relaxed);
    }

    /// The fault for connections accepted from now on.
    pub fn set(&self, f: Fault) {
        self.fault.store(f.encode(), Ordering::Relaxed);
    }
}

async fn pump(client: TcpStream, upstream_port: u16, fault: Fault, latency: Arc<AtomicU64>) {
    if fault == Fault::Reset {
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        drop(client);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        match fault {
            Fault::CutAfter(limit) => {
                let left = u64::from(limit).saturating_sub(sent) as usize;
                if left < chunk.len() {
                    chunk = &chunk[..left];
                    let _ = cw.write_all(chunk).await;
                    break;
                }
            }
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
            _ => {}
        }
        let ms = latency.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        sent += chunk.len() as u64;
        if cw.write_all(chunk).await.is_err() {
            break;
        }
    }
    up.abort();
}
