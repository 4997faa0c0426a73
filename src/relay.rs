//! The hot loop: moves bytes between a client and its current server connection.
//!
//! Each direction has one buffer that is both the read buffer and the queue of bytes to write:
//! the framer walks message headers as bytes arrive, and everything it has walked is written
//! on as one run, without copying. Bodies are never read except the few messages that decide
//! something: ReadyForQuery (transaction boundaries), ParameterStatus (session parameters) and
//! a server's ErrorResponse (only its severity). No allocation or lock per message.
//!
//! Reads stop while a buffer holds [`MAX_BUFFERED`] bytes the other side has not taken, so a
//! client that does not read its results holds back the server, not the proxy's memory.

use crate::backend::ServerConn;
use crate::backend::params::SessionParams;
use crate::error::ClientError;
use crate::net::Stream;
use crate::proto::{FrameError, Framer, MAX_MESSAGE_LEN, views};
use bytes::{Buf, BytesMut};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

/// Bytes one direction may hold before it stops reading.
pub const MAX_BUFFERED: usize = 64 * 1024;
/// How much room a read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// Longest body the relay reads whole (ReadyForQuery, ParameterStatus, ErrorResponse);
/// longer ones are passed through unread.
const INSPECT_LIMIT: usize = 8 * 1024;

/// Why the relay stopped and needs the session to act.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Transaction mode: the client sent work and no server is attached.
    NeedServer,
    /// Transaction mode: the server is idle and owes the client nothing; give it back.
    /// `clean` is false when the server sent more after its last ReadyForQuery (a FATAL
    /// from a shutdown, say): those bytes are dropped and the server must be closed.
    Release { clean: bool },
    /// The client's timers need resetting: it moved to another phase.
    Phase(Phase),
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its socket or a write to it failed.
    ClientGone,
    /// The server closed its socket or failed.
    ServerGone,
    /// The client broke the protocol.
    Protocol(ClientError),
}

/// Dropping a refused request's messages (never forwarded to any server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discard {
    No,
    /// Up to and including the next Query, Sync or FunctionCall.
    UntilSync,
    /// The rest of that message's body.
    Tail,
}

/// Where the client is, for its timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No transaction open and nothing running.
    Idle,
    /// Inside a transaction block, nothing running.
    InTransaction,
    /// A statement is running.
    Busy,
}

/// A client's relay state; lives as long as the client.
pub struct Relay {
    c2s: BytesMut,
    c_pos: usize,
    c_framer: Framer,
    s2c: BytesMut,
    s_pos: usize,
    s_framer: Framer,
    /// ReadyForQuery messages the server still owes for forwarded Query, Sync and FunctionCall.
    pending: u32,
    /// Extended-protocol messages were forwarded since the last Sync.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    status: u8,
    /// The server sent a FATAL error: it will close, and the client has been told why.
    server_fatal: bool,
    /// After a refused request: drop the client's messages up to its next Query or Sync.
    discard: Discard,
    pub transaction_mode: bool,
    /// Report phase changes (only when a timeout needs them).
    pub watch_phase: bool,
    reported_phase: Phase,
}

impl Relay {
    pub fn new(transaction_mode: bool) -> Relay {
        Relay {
            c2s: BytesMut::new(),
            c_pos: 0,
            c_framer: Framer::default(),
            s2c: BytesMut::new(),
            s_pos: 0,
            s_framer: Framer::default(),
            pending: 0,
            unsynced: false,
            status: b'I',
            server_fatal: false,
            discard: Discard::No,
            transaction_mode,
            watch_phase: false,
            reported_phase: Phase::Idle,
        }
    }

    pub fn phase(&self) -> Phase {
        if self.pending > 0 || self.unsynced || self.c_framer.mid_message() {
            Phase::Busy
        } else if self.status == b'I' {
            Phase::Idle
        } else {
            Phase::InTransaction
        }
    }

    /// The server owes the client nothing and holds no transaction: it may serve someone else.
    pub fn server_reusable(&self) -> bool {
        self.phase() == Phase::Idle && self.c_pos == 0 && !self.s_framer.mid_message()
    }

    pub fn server_sent_fatal(&self) -> bool {
        self.server_fatal
    }

    /// Forget per-server framing state when a server is attached or detached.
    pub fn reset_server_side(&mut self) {
        self.s_framer = Framer::default();
        self.pending = 0;
        self.unsynced = false;
        self.status = b'I';
        self.server_fatal = false;
    }

    /// Queues the proxy's own messages for the client, after everything the server sent.
    /// Only valid when no server message is half-read (`s_pos` covers the whole buffer).
    pub fn queue_for_client(&mut self, f: impl FnOnce(&mut BytesMut)) {
        debug_assert_eq!(self.s_pos, self.s2c.len());
        f(&mut self.s2c);
        self.s_pos = self.s2c.len();
    }

    /// Refuses the client's current request with `err` (an ERROR), then drops its messages up
    /// to the next Query or Sync and answers that with ReadyForQuery, as PostgreSQL does after
    /// an error in the extended protocol.
    pub fn refuse_request(&mut self, err: &ClientError) {
        self.queue_for_client(|b| err.encode(b));
        self.discard = Discard::UntilSync;
    }

    /// The client's bytes not yet read by the relay, for a server-less wait.
    pub fn client_buffer(&mut self) -> &mut BytesMut {
        &mut self.c2s
    }

    pub fn client_has_unwritten(&self) -> bool {
        self.s_pos > 0
    }

    /// Writes everything queued for the client.
    pub async fn flush_client(&mut self, client: &mut Stream) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.s_pos > 0 {
            client.write_all(&self.s2c[..self.s_pos]).await?;
            self.s2c.advance(self.s_pos);
            self.s_pos = 0;
        }
        Ok(())
    }

    /// Writes the client's walked bytes to the server (before the server is let go).
    pub async fn flush_server(&mut self, server: &mut ServerConn) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.c_pos > 0 {
            server.stream.write_all(&self.c2s[..self.c_pos]).await?;
            self.c2s.advance(self.c_pos);
            self.c_pos = 0;
        }
        Ok(())
    }

    /// Moves bytes both ways until something needs the session's attention.
    pub fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        mut server: Option<&mut ServerConn>,
        client_params: &mut SessionParams,
    ) -> Poll<Event> {
        loop {
            let mut progress = false;

            // Client -> proxy: read while the queue has room, then walk what arrived.
            if self.c2s.len() < MAX_BUFFERED {
                match read_into(cx, client, &mut self.c2s) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Event::ClientGone);
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
            }
            if let Some(ev) = self.walk_client(server.is_some()) {
                return Poll::Ready(ev);
            }

            if let Some(srv) = server.as_deref_mut() {
                // Proxy -> server: everything walked goes as one write.
                if self.c_pos > 0 {
                    match Pin::new(&mut srv.stream).poll_write(cx, &self.c2s[..self.c_pos]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return Poll::Ready(Event::ServerGone);
                        }
                        Poll::Ready(Ok(n)) => {
                            self.c2s.advance(n);
                            self.c_pos -= n;
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
                // Server -> proxy: read while the client's queue has room.
                if self.s2c.len() < MAX_BUFFERED {
                    match read_into(cx, &mut srv.stream, &mut self.s2c) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            // Deliver what the server said before it went (often its FATAL).
                            let _ = self.walk_server(client_params, &mut srv.params);
                            return Poll::Ready(Event::ServerGone);
                        }
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
                if let Err(e) = self.walk_server(client_params, &mut srv.params) {
                    tracing::warn!(server = srv.id, error = %e, "server broke the protocol");
                    return Poll::Ready(Event::ServerGone);
                }
                if self.transaction_mode && self.server_reusable() {
                    let clean = self.s2c.len() == self.s_pos;
                    self.s2c.truncate(self.s_pos);
                    return Poll::Ready(Event::Release { clean });
                }
            }

            // Proxy -> client.
            if self.s_pos > 0 {
                match Pin::new(&mut *client).poll_write(cx, &self.s2c[..self.s_pos]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Event::ClientGone);
                    }
                    Poll::Ready(Ok(n)) => {
                        self.s2c.advance(n);
                        self.s_pos -= n;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            if self.watch_phase {
                let phase = self.phase();
                if phase != self.reported_phase {
                    self.reported_phase = phase;
                    return Poll::Ready(Event::Phase(phase));
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Walks the client's new bytes. Forwarding is implicit: walked bytes are written next.
    fn walk_client(&mut self, attached: bool) -> Option<Event> {
        loop {
            let h = match self
                .c_framer
                .next(&self.c2s, &mut self.c_pos, MAX_MESSAGE_LEN)
            {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Some(Event::Protocol(ClientError::protocol(e.to_string()))),
            };
            if self.discard == Discard::Tail {
                // The refused request's last message is fully dropped: back to normal.
                self.drop_walked_client_bytes();
                self.discard = Discard::No;
                continue;
            }
            match h.tag {
                b'X' => return Some(Event::ClientTerminated),
                b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'S' | b'F' | b'd' | b'c'
                | b'f' => {}
                other => {
                    return Some(Event::Protocol(ClientError::protocol(format!(
                        "invalid frontend message type {other}"
                    ))));
                }
            }
            if self.discard == Discard::UntilSync {
                self.c_framer.pass(&h, &mut self.c_pos);
                if matches!(h.tag, b'Q' | b'S' | b'F') {
                    self.discard = Discard::Tail;
                    self.queue_for_client(|b| crate::proto::emit::ready_for_query(b, b'I'));
                }
                continue;
            }
            if !attached {
                return Some(Event::NeedServer);
            }
            match h.tag {
                b'Q' | b'F' => self.pending += 1,
                b'S' => {
                    self.pending += 1;
                    self.unsynced = false;
                }
                b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
                _ => {}
            }
            self.c_framer.pass(&h, &mut self.c_pos);
        }
        if self.discard != Discard::No {
            self.drop_walked_client_bytes();
            if self.discard == Discard::Tail && !self.c_framer.mid_message() {
                self.discard = Discard::No;
            }
        }
        None
    }

    fn drop_walked_client_bytes(&mut self) {
        self.c2s.advance(self.c_pos);
        self.c_pos = 0;
    }

    /// Walks the server's new bytes, noting transaction status and parameter changes.
    fn walk_server(
        &mut self,
        client_params: &mut SessionParams,
        server_params: &mut SessionParams,
    ) -> Result<(), FrameError> {
        loop {
            let Some(h) = self.s_framer.next(&self.s2c, &mut self.s_pos, usize::MAX)? else {
                return Ok(());
            };
            let inspect = matches!(h.tag, b'Z' | b'S' | b'E') && h.body_len <= INSPECT_LIMIT;
            if !inspect {
                self.s_framer.pass(&h, &mut self.s_pos);
                continue;
            }
            let Some(body) = self.s_framer.take(&h, &self.s2c, &mut self.s_pos) else {
                return Ok(());
            };
            match h.tag {
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    self.pending = self.pending.saturating_sub(1);
                    if self.transaction_mode && self.server_reusable() {
                        // The transaction is over: what follows is not this client's.
                        return Ok(());
                    }
                }
                b'S' => {
                    if let Some((k, v)) = views::parameter_status(body) {
                        client_params.reported.set(k, v);
                        server_params.reported.set(k, v);
                    }
                }
                _ => {
                    if views::error_fields(body)
                        .is_some_and(|f| f.severity == "FATAL" || f.severity == "PANIC")
                    {
                        self.server_fatal = true;
                    }
                }
            }
        }
    }
}

/// One read into the spare room of `buf`, growing it to a read-sized chunk first.
fn read_into(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let n = ready!(poll_read_buf(Pin::new(stream), cx, buf))?;
    Poll::Ready(Ok(n))
}
