//! Binding and accepting: TCP over IPv4 or IPv6 (IPV6_V6ONLY, so `[::1]` and `127.0.0.1` can
//! be bound side by side) and unix sockets (a stale socket file is replaced, a live one is not).

use crate::config::ListenAddr;
use crate::net::Stream;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};

/// Accepted-but-unserved connections the kernel may hold: sized for connection storms.
const BACKLOG: i32 = 4096;

pub enum Bound {
    Tcp(TcpListener),
    /// With the socket file it removes when dropped (None: not its to remove: a socket taken
    /// over from another process, or one being handed over).
    Unix(UnixListener, Option<PathBuf>),
}

/// Where a client came from.
#[derive(Clone, Debug)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(std::net::SocketAddr::V4(a)) => write_v4(f, a),
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// `a.b.c.d:port` digit by digit: every login's log line has one, and `write!` of an
/// address cost 1,800 instructions.
fn write_v4(f: &mut fmt::Formatter<'_>, a: &std::net::SocketAddrV4) -> fmt::Result {
    fn decimal(out: &mut [u8], at: &mut usize, v: u16) {
        let mut digits = [0u8; 5];
        let (mut v, mut n) = (v, 0);
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            (v, n) = (v / 10, n + 1);
            if v == 0 {
                break;
            }
        }
        for d in digits[..n].iter().rev() {
            out[*at] = *d;
            *at += 1;
        }
    }
    // "255.255.255.255:65535" is 21 bytes.
    let (mut out, mut at) = ([0u8; 21], 0);
    for (i, o) in a.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out[at] = b'.';
            at += 1;
        }
        decimal(&mut out, &mut at, u16::from(o));
    }
    out[at] = b':';
    at += 1;
    decimal(&mut out, &mut at, a.port());
    f.write_str(std::str::from_utf8(&out[..at]).map_err(|_| fmt::Error)?)
}

impl Peer {
    /// The client's IP address (None for a unix socket).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix => None,
        }
    }

    /// `host:port` as application_name_add_host appends it.
    pub fn host_port(&self) -> String {
        match self {
            Peer::Tcp(a) => format!("{}:{}", a.ip(), a.port()),
            Peer::Unix => "unix".into(),
        }
    }
}

pub fn bind(addr: &ListenAddr) -> io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(sa) => {
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if sa.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&(*sa).into())?;
            socket.listen(BACKLOG)?;
            Ok(Bound::Tcp(TcpListener::from_std(socket.into())?))
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let l = UnixListener::bind(path)?;
            // Like PostgreSQL's default unix_socket_permissions: access is decided by auth.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
            Ok(Bound::Unix(l, Some(path.clone())))
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

impl Bound {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Bound::Tcp(l) => l.as_raw_fd(),
            Bound::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// A listening socket received from another process (a takeover), as it was bound for
    /// `addr`; its socket file stays when it is dropped (the other process may still serve).
    pub fn adopt(fd: std::os::fd::OwnedFd, addr: &ListenAddr) -> io::Result<Bound> {
        match addr {
            ListenAddr::Tcp(_) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                Ok(Bound::Tcp(TcpListener::from_std(l)?))
            }
            ListenAddr::Unix(_) => {
                let l = std::os::unix::net::UnixListener::from(fd);
                l.set_nonblocking(true)?;
                Ok(Bound::Unix(UnixListener::from_std(l)?, None))
            }
        }
    }

    /// Leaves the socket file in place when dropped (its socket lives on in a successor).
    pub fn keep_file(&mut self) {
        if let Bound::Unix(_, path) = self {
            *path = None;
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }

    pub async fn accept(&self, keepalive: bool) -> io::Result<(Stream, Peer)> {
        match self {
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small request/response messages: never wait for Nagle.
                s.set_nodelay(true)?;
                if keepalive {
                    let ka = TcpKeepalive::new()
                        .with_time(Duration::from_secs(60))
                        .with_interval(Duration::from_secs(10));
                    SockRef::from(&s).set_tcp_keepalive(&ka)?;
                }
                Ok((Stream::Tcp(s), Peer::Tcp(peer)))
            }
            Bound::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }
}

/// What an accept loop does after a failed accept (out of descriptors, most often): waits,
/// longer each time in a row, and logs at most once per [`AcceptBackoff::LOG_EVERY`] with the
/// number of failures meanwhile, instead of spinning and logging dozens of lines a second.
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    logged: Option<tokio::time::Instant>,
    what: &'static str,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(20);
    const LONGEST: Duration = Duration::from_secs(1);
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn new(what: &'static str) -> Self {
        AcceptBackoff {
            delay: Self::FIRST,
            failures: 0,
            logged: None,
            what,
        }
    }

    /// An accept succeeded: the next failure starts over.
    pub fn reset(&mut self) {
        self.delay = Self::FIRST;
    }

    /// An accept failed: logs if due (true when it did), then waits.
    pub async fn failed(&mut self, e: &io::Error) -> bool {
        self.failures += 1;
        let log = self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY);
        if log {
            tracing::warn!(listener = self.what, error = %e, failures = self.failures, "accept failed: backing off");
            self.logged = Some(tokio::time::Instant::now());
            self.failures = 0;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::LONGEST);
        log
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Bound::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_print_as_the_standard_library_prints_addresses() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:5432",
            "255.255.255.255:65535",
            "10.20.3.40:9",
            "[::1]:6543",
            "[fe80::1%2]:1",
        ] {
            let addr: std::net::SocketAddr = a.parse().expect("address");
            assert_eq!(Peer::Tcp(addr).to_string(), addr.to_string());
        }
        assert_eq!(Peer::Unix.to_string(), "unix");
    }

    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_and_log_rarely() {
        let mut b = AcceptBackoff::new("test");
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let start = tokio::time::Instant::now();
        let mut logged = 0;
        for _ in 0..200 {
            logged += u32::from(b.failed(&e).await);
        }
        let elapsed = start.elapsed();
        // 200 failures take minutes, not a spin; one line per ten seconds at most.
        assert!(elapsed >= Duration::from_secs(150), "{elapsed:?}");
        let most = elapsed.as_secs() / AcceptBackoff::LOG_EVERY.as_secs() + 1;
        assert!(u64::from(logged) <= most, "{logged} lines in {elapsed:?}");
        b.reset();
        let t = tokio::time::Instant::now();
        let _ = b.failed(&e).await;
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
