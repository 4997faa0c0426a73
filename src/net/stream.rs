//! One byte stream type for clients and servers, whatever the transport.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A socket's address as SHOW CLIENTS/SERVERS print it; kept as a value, formatted only when
/// shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    Ip(std::net::IpAddr),
    Unix,
    /// The socket could not say.
    Unknown,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Ip(ip) => ip.fmt(f),
            Addr::Unix => f.write_str("unix"),
            Addr::Unknown => Ok(()),
        }
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client's TLS session (the proxy is the TLS server).
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to an upstream (the proxy is the TLS client).
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A plain client socket taken out of the runtime while its client is parked
    /// ([`Stream::detach`]); reads and writes fail until [`Stream::attach`].
    Detached(Detached),
}

/// A socket outside tokio's reactor: its registration (256 bytes) freed.
pub enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    /// Lost to a failed detach or attach: the client is gone.
    Gone,
}

impl Detached {
    /// Its descriptor, for the parking lot's epoll set (None: lost).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Detached::Tcp(s) => Some(s.as_fd()),
            Detached::Unix(s) => Some(s.as_fd()),
            Detached::Gone => None,
        }
    }
}

/// Calls `$f` with the inner stream of every variant.
macro_rules! each {
    ($s:expr, $v:ident => $f:expr) => {
        match $s {
            Stream::Tcp($v) => $f,
            Stream::Unix($v) => $f,
            Stream::TlsFromClient($v) => $f,
            Stream::TlsToServer($v) => $f,
            Stream::Detached($v) => $f,
        }
    };
}

impl Stream {
    /// This end's address and port, as SHOW CLIENTS/SERVERS print them ("unix", 0 for a
    /// unix socket).
    pub fn local_addr(&self) -> (Addr, u16) {
        match self.tcp() {
            Some(s) => s
                .local_addr()
                .map(|a| (Addr::Ip(a.ip()), a.port()))
                .unwrap_or((Addr::Unknown, 0)),
            None => (Addr::Unix, 0),
        }
    }

    /// The TCP socket under any TLS; None for a unix socket.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::TlsFromClient(s) => Some(s.get_ref().0),
            Stream::TlsToServer(s) => Some(s.get_ref().0),
            Stream::Detached(_) => None,
        }
    }

    /// A plain TCP or unix socket (no TLS), in the runtime.
    pub fn is_plain(&self) -> bool {
        matches!(self, Stream::Tcp(_) | Stream::Unix(_))
    }

    /// Takes a plain TCP or unix socket out of the runtime, keeping its descriptor (and what
    /// the kernel holds for it): false, and the stream untouched, for TLS. A failed
    /// deregistration loses the socket (the stream is then `Detached::Gone`).
    pub fn detach(&mut self) -> bool {
        if !self.is_plain() {
            return false;
        }
        let detached = match std::mem::replace(self, Stream::Detached(Detached::Gone)) {
            Stream::Tcp(s) => s.into_std().map(Detached::Tcp),
            Stream::Unix(s) => s.into_std().map(Detached::Unix),
            _ => Ok(Detached::Gone),
        };
        *self = Stream::Detached(detached.unwrap_or(Detached::Gone));
        true
    }

    /// Puts a detached socket back into the runtime (on the calling task's runtime).
    pub fn attach(&mut self) -> io::Result<()> {
        let Stream::Detached(d) = self else {
            return Ok(());
        };
        *self = match std::mem::replace(d, Detached::Gone) {
            Detached::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
            Detached::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
            Detached::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        Ok(())
    }

    /// A detached socket's descriptor.
    pub fn detached_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Stream::Detached(d) => d.fd(),
            _ => None,
        }
    }

    /// "TLSv1.3/TLS13_AES_256_GCM_SHA384" for a TLS stream (SHOW CLIENTS/SERVERS' tls
    /// column), empty for plaintext.
    pub fn tls_description(&self) -> String {
        let (version, suite) = match self {
            Stream::TlsFromClient(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            Stream::TlsToServer(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            _ => return String::new(),
        };
        let v = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        match suite {
            Some(s) => format!("{v}/{:?}", s.suite()),
            None => v.to_owned(),
        }
    }

    /// The descriptor, for KILL_CLIENT's shutdown.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match (self, self.tcp()) {
            (_, Some(s)) => s.as_raw_fd(),
            (Stream::Unix(s), None) => s.as_raw_fd(),
            _ => -1,
        }
    }

    /// Writes all of `buf` and flushes: under TLS, bytes a write accepted may still sit in
    /// the session until flushed.
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(buf).await?;
        self.flush().await
    }

    /// True when the peer has closed or sent bytes nobody asked for: an idle server
    /// connection in either state must not be handed out. This runs on every checkout, so
    /// the reactor's readiness is asked first, without a syscall: tokio clears it when a read
    /// drains the socket and sets it when anything (a FIN too) arrives. Only when it is set
    /// does a non-blocking MSG_PEEK decide (it may be left over from a read that filled the
    /// buffer exactly). Under TLS the peek always decides: rustls may hold a record.
    /// `suspect`: peek whatever the reactor says (it may not have seen a FIN yet).
    pub fn has_pending_input_or_eof(&self, suspect: bool) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let quiet = !suspect
            && match self {
                Stream::Tcp(s) => s.poll_read_ready(&mut cx).is_pending(),
                Stream::Unix(s) => s.poll_read_ready(&mut cx).is_pending(),
                _ => false,
            };
        if quiet {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // Under TLS the raw socket is peeked: any record (an alert, close_notify) counts.
        let r = match (self, self.tcp()) {
            (_, Some(s)) => socket2::SockRef::from(s).peek(&mut probe),
            (Stream::Unix(s), None) => socket2::SockRef::from(s).peek(&mut probe),
            _ => return true,
        };
        !matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

// #[inline] on the per-variant dispatch: with a fifth variant the compiler stopped inlining it
// into the relay (1% more instructions per select-only transaction, callgrind).
impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    #[inline]
    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A detached socket is never read or written: whatever tries is told it is not connected.
impl AsyncRead for Detached {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads one whole message (tag, body) using `buf` as the read buffer; for login exchanges and the
/// proxy's own statements, never for relayed traffic.
pub async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<(u8, BytesMut)> {
    loop {
        // The relay's framer, so that one piece of code says where a message ends.
        match crate::proto::Framer::default().next(buf, &mut 0, max) {
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            Ok(Some(h)) if buf.len() >= h.end() => {
                let mut msg = buf.split_to(h.end());
                msg.advance(5);
                return Ok((h.tag, msg));
            }
            Ok(Some(h)) => buf.reserve(h.end() - buf.len()),
            Ok(None) => buf.reserve(512),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
    }
}
