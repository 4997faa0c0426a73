//! One byte stream type for clients and servers, whatever the transport.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// This end's address and port, as SHOW CLIENTS/SERVERS print them ("unix", 0 for a
    /// unix socket).
    pub fn local_addr(&self) -> (String, u16) {
        match self {
            Stream::Tcp(s) => s
                .local_addr()
                .map(|a| (a.ip().to_string(), a.port()))
                .unwrap_or_else(|_| (String::new(), 0)),
            Stream::Unix(_) => ("unix".into(), 0),
        }
    }

    /// The descriptor, for KILL_CLIENT's shutdown.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// True when the peer has closed or sent bytes nobody asked for: an idle server
    /// connection in either state must not be handed out. One non-blocking MSG_PEEK; tokio's
    /// own try_read would trust cached readiness and could miss a close that just happened.
    pub fn has_pending_input_or_eof(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let r = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).peek(&mut probe),
            Stream::Unix(s) => socket2::SockRef::from(s).peek(&mut probe),
        };
        !matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
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
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 || len as usize > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid message length {len}"),
                ));
            }
            let total = len as usize + 1;
            if buf.len() >= total {
                let tag = buf[0];
                let mut msg = buf.split_to(total);
                msg.advance(5);
                return Ok((tag, msg));
            }
            buf.reserve(total - buf.len());
        } else {
            buf.reserve(512);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
    }
}
