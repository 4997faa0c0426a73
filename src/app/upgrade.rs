//! Zero-downtime upgrade (docs/operations.md#upgrade). A new process started with `pgsluice
//! upgrade` asks the running one, over a unix socket of their own, for its listening sockets;
//! they come over SCM_RIGHTS (as PgBouncer's online restart hands them over), so the kernel's
//! queue of connections not yet accepted is the same socket in both processes and no
//! connection is refused. Once the new process accepts on them it says READY, and the old one
//! stops accepting and drains as on SIGTERM.

use super::App;
use crate::config::ListenAddr;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const HELLO: &str = "TAKEOVER 1";
const READY: &str = "READY";
const BYE: &str = "BYE";
/// Marks the HTTP endpoint's socket among those handed over.
const HTTP: &str = "http ";
/// More listeners than anyone configures.
const MAX_SOCKETS: usize = 64;

/// Where the process running `config` waits for its successor: the same for every build (a
/// new binary must find the old one's), one per configuration file.
pub fn socket_path(config: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let canon = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir()
        .join(format!("pgsluice-{uid}"))
        .join(format!("{h:016x}.upgrade"))
}

/// The upgrade socket's directory, made private (0700, ours) if it is not there; refused if
/// someone else owns it or others may write in it.
fn private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    let m = std::fs::metadata(dir)?;
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    if m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not private to this user (0700)", dir.display()),
        ));
    }
    Ok(())
}

/// Whether the other end of `s` runs as this user.
fn same_user(s: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    getsockopt(s, PeerCredentials).is_ok_and(|c| c.uid() == uid)
}

/// Waits for a successor at `path` while the proxy runs; after a handover that succeeded the
/// process shuts down gracefully.
pub async fn serve(app: Arc<App>, path: PathBuf) {
    if let Err(e) = private_dir(&path) {
        tracing::warn!(error = %e, "cannot wait for upgrades");
        return;
    }
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        tracing::warn!(path = %path.display(), "another pgsluice waits for upgrades of this configuration: this one cannot be taken over");
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot wait for upgrades");
            return;
        }
    };
    tracing::info!(path = %path.display(), "waiting for upgrades");
    let mut stop = app.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors: not a spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        if !same_user(&stream) {
            tracing::warn!("upgrade: a process of another user asked for our listeners: refused");
            continue;
        }
        let (a, p) = (app.clone(), path.clone());
        match tokio::task::spawn_blocking(move || hand_over(stream, &a, &p)).await {
            Ok(Ok(())) => {
                tracing::info!("upgrade: the new process accepts on our listeners; draining");
                app.request_shutdown();
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: handover failed; still serving"),
            Err(e) => tracing::warn!(error = %e, "upgrade: handover failed; still serving"),
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// The old process's side: HELLO in, copies of the sockets out (the listeners', then the
/// HTTP endpoint's), READY in, BYE out (the upgrade socket gone by then, for the successor).
fn hand_over(mut s: UnixStream, app: &App, path: &Path) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    expect(&mut s, HELLO)?;
    let mut sockets: Vec<(OwnedFd, String)> = app
        .listening
        .sockets()?
        .into_iter()
        .map(|(fd, a)| (fd, name(&a)))
        .collect();
    if let Some((fd, addr)) = app.http_socket()? {
        sockets.push((fd, format!("{HTTP}{addr}")));
    }
    let names: String = sockets.iter().map(|(_, n)| format!("{n}\n")).collect();
    let fds: Vec<RawFd> = sockets.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(names.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    expect(&mut s, READY)?;
    // READY is the commit point: the successor accepts on the sockets now, so this process
    // drains whether or not the BYE reaches it.
    app.listening.hand_over();
    let _ = std::fs::remove_file(path);
    if let Err(e) = writeln!(s, "{BYE}") {
        tracing::warn!(error = %e, "upgrade: the new process left before our BYE; draining anyway");
    }
    Ok(())
}

/// A listener's address as the configuration writes it (what `ListenAddr` parses).
fn name(a: &ListenAddr) -> String {
    match a {
        ListenAddr::Tcp(sa) => sa.to_string(),
        ListenAddr::Unix(p) => p.to_string_lossy().into_owned(),
    }
}

fn expect(s: &mut UnixStream, what: &str) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(s.take(64)).read_line(&mut line)?;
    if line.trim_end() != what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {what:?}, got {:?}", line.trim_end()),
        ));
    }
    Ok(())
}

/// A takeover in progress: the sockets received, and the line to the old process.
pub struct Takeover {
    pub sockets: Vec<(ListenAddr, OwnedFd)>,
    /// The HTTP endpoint's socket, with the address it is bound to.
    pub http: Option<(std::net::SocketAddr, OwnedFd)>,
    stream: UnixStream,
}

/// The new process's side: asks the process waiting at `path` for its listening sockets.
pub fn take_over(path: &Path) -> io::Result<Takeover> {
    let s = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no running pgsluice of this configuration to take over ({}: {e})",
                path.display()
            ),
        )
    })?;
    if !same_user(&s) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is served by a process of another user", path.display()),
        ));
    }
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{HELLO}")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    if n == 0 || fds.is_empty() {
        // The old process closed the line without an answer (it refused us, or is going).
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the running pgsluice sent no listening sockets",
        ));
    }
    let names = std::str::from_utf8(&buf[..n])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "listener names not UTF-8"))?;
    let lines: Vec<&str> = names.lines().collect();
    if lines.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} listeners named, {} sockets received",
                lines.len(),
                fds.len()
            ),
        ));
    }
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut t = Takeover {
        sockets: Vec::new(),
        http: None,
        stream: s,
    };
    for (line, fd) in lines.into_iter().zip(fds) {
        match line.strip_prefix(HTTP) {
            Some(addr) => {
                let addr = addr
                    .parse()
                    .map_err(|_| bad(format!("bad HTTP address {addr:?}")))?;
                t.http = Some((addr, fd));
            }
            None => t
                .sockets
                .push((ListenAddr::try_from(line.to_owned()).map_err(bad)?, fd)),
        }
    }
    Ok(t)
}

impl Takeover {
    /// Tells the old process this one accepts now; returns once it has stopped waiting for
    /// successors (its upgrade socket is free to bind).
    pub fn ready(mut self) -> io::Result<()> {
        writeln!(self.stream, "{READY}")?;
        expect(&mut self.stream, BYE)
    }
}
