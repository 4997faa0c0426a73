//! The hot loop: moves bytes between a client and its current server connection.
//!
//! Each direction is a [`half::Half`]: one buffer that is both the read buffer and the queue of
//! bytes to write. The framer walks message headers as bytes arrive and everything walked is
//! written on as one run, without copying. Bodies are read only where they decide something:
//! ReadyForQuery (transaction boundaries), ParameterStatus (session parameters), a server's
//! ErrorResponse and CommandComplete, and, in transaction mode, the statement names in
//! Parse/Bind/Describe/Close ([`prepared`]). [`pipeline`] tracks which replies the server
//! still owes. No allocation or lock per message; a copy only where the stream is changed.
//!
//! Reads stop while a direction holds [`MAX_BUFFERED`] bytes the other side has not taken, so
//! a client that does not read its results holds back the server, not the proxy's memory.

pub mod facts;
pub mod half;
pub mod handover;
pub mod held;
pub mod pipeline;
pub mod prepared;

use crate::backend::ServerConn;
use crate::backend::params::SessionParams;
use crate::backend::statements::ServerStatements;
use crate::error::ClientError;
use crate::net::Stream;
use crate::proto::{FrameError, Header, MAX_MESSAGE_LEN, emit, views};
use crate::sql::session::Mentions;
use crate::stats::meter::{MAX_FINGERPRINTED, Meter};
use bytes::BytesMut;
use facts::{Fact, Facts};
use half::Half;
use pipeline::{Action, Entry, Kind, Pipeline, Synthetic};
use prepared::{ClientStatements, Statement};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

/// Bytes one direction may hold before it stops reading.
pub const MAX_BUFFERED: usize = 64 * 1024;
/// How much room a read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// Longest body the relay reads whole from a server (ReadyForQuery, ParameterStatus,
/// ErrorResponse, CommandComplete); longer ones are passed through unread.
const INSPECT_LIMIT: usize = 8 * 1024;
/// Transaction mode reads Query texts up to this size for session settings; longer ones are
/// passed through unread (a SET hidden in one is still caught by its CommandComplete).
const MAX_SCANNED_QUERY: usize = 1 << 20;
/// Statement and portal names must end within this many bytes of a Bind body.
const MAX_NAMES: usize = 4096;
/// PostgreSQL's limit for the messages it reads with PQ_SMALL_MESSAGE_LIMIT (postgres.c,
/// SocketBackend; copyfromparse.c): longer ones are a protocol violation there too.
const SMALL_MESSAGE_LIMIT: usize = 10_000;
/// Replies one client may have outstanding before the relay stops reading from it (as it
/// stops when its results go unread): a client sending Syncs and never reading costs a
/// bounded queue, not memory without end.
pub const MAX_OUTSTANDING: usize = 8192;

/// The hand-over witness's implicit transaction (see [`handover`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    None,
    /// Opened by the witness; the client's next forwarded work ends it.
    Open,
    /// The proxy sent its own Sync to end it.
    Closing,
}

/// Why the relay stopped and needs the session to act.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Transaction mode: the client sent work and no server is attached.
    NeedServer,
    /// Transaction mode: the server is idle and owes the client nothing; give it back.
    /// `clean` is false when the server sent more after its last ReadyForQuery (a FATAL
    /// from a shutdown, say): those bytes are dropped and the server must be closed.
    /// `resync`: the client ran SET/RESET/set_config; read its settings back first.
    Release { clean: bool, resync: bool },
    /// The client's timers need resetting: it moved to another phase.
    Phase(Phase),
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its socket or a write to it failed.
    ClientGone,
    /// The client has taken none of its results for client_stall_timeout.
    ClientStalled,
    /// The server closed its socket or failed.
    ServerGone,
    /// Transaction mode: the hand-over reset was interrupted (a cancel from another session
    /// of the role), so the server skipped the client's messages; neither can go on.
    HandoverFailed,
    /// The client broke the protocol.
    Protocol(ClientError),
    /// Transaction mode, between transactions: LISTEN/UNLISTEN for the notification hub
    /// (the message has been consumed; the session answers it).
    Listen(crate::sql::session::ListenCmd),
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

/// What transaction mode refuses in a statement text.
enum Unsupported {
    Listen,
    /// SQL-level PREPARE/EXECUTE/DEALLOCATE of the proxy's own statement names.
    ReservedName,
}

impl Unsupported {
    fn error(&self) -> Synthetic {
        match self {
            Unsupported::Listen => Synthetic::Error("0A000", LISTEN_REFUSED.into()),
            Unsupported::ReservedName => Synthetic::Error("42501", RESERVED_REFUSED.into()),
        }
    }
}

const RESERVED_REFUSED: &str = "prepared statement names beginning with \"pgsluice_\" belong to the proxy and cannot be prepared, executed or deallocated in SQL";

const LOST_COUNT: &str = "a COPY failed with Sync messages inside it and a query queued behind it: which replies are whose can no longer be told; reconnect";
const LISTEN_REFUSED: &str = "LISTEN in transaction mode must be a statement of its own, outside a transaction block (or use the session-mode port)";
/// LISTEN/UNLISTEN texts longer than this are not looked at.
const MAX_LISTEN_TEXT: usize = 1024;

/// Dropping a refused request's messages (never forwarded to any server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discard {
    No,
    /// Up to the next Sync (or, with no server attached, Query or FunctionCall too).
    UntilSync,
    /// The rest of the last dropped message's body.
    Tail,
}

/// What the relay keeps for the client across server connections.
#[derive(Default, Debug)]
pub struct ClientState {
    pub params: SessionParams,
    pub statements: ClientStatements,
}

/// A client's relay state; lives as long as the client.
pub struct Relay {
    c: Half,
    s: Half,
    pipeline: Pipeline,
    /// Extended-protocol messages were forwarded since the last Sync (an implicit
    /// transaction may be open even when every reply has arrived).
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    status: u8,
    /// The server sent a FATAL error: it will close, and the client has been told why.
    server_fatal: bool,
    discard: Discard,
    /// The server hit an error in the extended protocol and skips the client's messages until
    /// its next Sync; messages that arrive from now on are dropped here instead of being
    /// tracked as if they would be answered.
    skip_pending: bool,
    /// Where the hand-over witness's implicit transaction is (see [`handover`]): the server
    /// is not let go before a ReadyForQuery has ended it.
    guard: Guard,
    /// The witness's Describe and Close have not both answered: the reset may not have
    /// finished. PostgreSQL skips a failed witness's followers only up to the next Sync, so
    /// nothing after a Sync is forwarded until they have ([`Relay::held_after_sync`]).
    witness_pending: bool,
    /// A Sync went to the server while the witness was pending.
    synced_since_witness: bool,
    /// Bytes the client buffer must hold before the current message can be handled.
    need: usize,
    /// What `need` holds beyond a normal buffer, reserved from the process budget ([`held`]).
    held: u32,
    /// Transaction mode: the most named statements one client may keep.
    pub max_client_statements: u32,
    /// Transaction mode: the client may have changed session settings on this server.
    session_dirty: bool,
    /// Setting names its statements named (lowercase).
    #[allow(clippy::box_collection)]
    touched: Option<Box<Vec<String>>>,
    /// COPY state, and what makes the server unfit for reuse (see [`Fact`]).
    facts: Facts,
    pub transaction_mode: bool,
    /// Server statements each connection keeps (transaction mode); 0 passes names through.
    pub max_prepared: u32,
    /// Report phase changes (only when a timeout needs them).
    pub watch_phase: bool,
    /// handover_reset: servers are reset when they change hands.
    pub handover_reset: bool,
    /// client_stall_timeout, and its timer while the client takes nothing.
    pub stall_timeout: Option<std::time::Duration>,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    reported_phase: Phase,
    /// The client's counters and query fingerprints (stats, SHOW QUERIES).
    pub meter: Meter,
    /// The message being walked has been counted.
    metered: bool,
}

impl Relay {
    pub fn new(transaction_mode: bool, max_prepared: usize) -> Relay {
        Relay {
            c: Half::default(),
            s: Half::default(),
            pipeline: Pipeline::default(),
            unsynced: false,
            status: b'I',
            server_fatal: false,
            discard: Discard::No,
            skip_pending: false,
            guard: Guard::None,
            witness_pending: false,
            synced_since_witness: false,
            need: 0,
            held: 0,
            max_client_statements: u32::MAX,
            session_dirty: false,
            touched: None,
            facts: Facts::default(),
            transaction_mode,
            // More than 4 billion statements per connection is no limit at all.
            max_prepared: if transaction_mode {
                u32::try_from(max_prepared).unwrap_or(u32::MAX)
            } else {
                0
            },
            watch_phase: false,
            handover_reset: true,
            reported_phase: Phase::Idle,
            meter: Meter::default(),
            metered: false,
            stall_timeout: None,
            stall: None,
        }
    }

    pub fn phase(&self) -> Phase {
        if !self.pipeline.is_empty() || self.unsynced || self.c.framer.mid_message() {
            Phase::Busy
        } else if self.status == b'I' {
            Phase::Idle
        } else {
            Phase::InTransaction
        }
    }

    /// The client's transaction is over: the server owes it nothing the proxy counts, and
    /// holds no transaction.
    fn transaction_over(&self) -> bool {
        self.phase() == Phase::Idle
            && self.c.is_idle()
            && !self.s.framer.mid_message()
            && self.discard == Discard::No
    }

    /// The client's messages so far were all answered by the proxy: nothing of its work is
    /// on the server, and no message of it is half read.
    fn nothing_forwarded(&self) -> bool {
        self.need == 0 && !self.c.framer.mid_message() && self.pipeline.only_proxy_work()
    }

    /// A Sync went to the server before the witness answered: what follows it waits.
    fn held_after_sync(&self) -> bool {
        self.witness_pending && self.synced_since_witness
    }

    /// The transaction is over and every reply the server owes is accounted for: it may
    /// serve someone else.
    pub fn server_reusable(&self) -> bool {
        self.transaction_over()
            && self.guard == Guard::None
            && !self.facts.retire()
            && self.s.pos == self.s.buf.len()
    }

    /// Part of a server message has gone to the client and the rest has not come.
    pub fn server_mid_message(&self) -> bool {
        self.s.framer.mid_message()
    }

    pub fn server_sent_fatal(&self) -> bool {
        self.server_fatal
    }

    /// Forget per-server state when a server is attached or detached.
    pub fn reset_server_side(&mut self) {
        self.s.framer = Default::default();
        self.pipeline.clear();
        self.unsynced = false;
        self.facts = Facts::default();
        self.skip_pending = false;
        self.guard = Guard::None;
        self.witness_pending = false;
        self.synced_since_witness = false;
        self.session_dirty = false;
        self.status = b'I';
        self.server_fatal = false;
    }

    /// Sends the hand-over reset `sql` to the server ahead of the client's next message, with
    /// the witness that stops the client's messages from running should the reset not finish
    /// (see [`handover`]). Its replies never reach the client; ParameterStatus still updates
    /// the server's parameters. Invariant: a client's message runs on a handed-over server
    /// only after the whole reset did; otherwise both connections are closed
    /// ([`Event::HandoverFailed`]).
    pub fn send_handover_reset(&mut self, sql: &str) {
        let witness = handover::new_witness();
        self.c.insert(|b| handover::write(b, sql, &witness));
        for kind in [Kind::Query, Kind::Describe, Kind::Close] {
            self.pipeline.push(Entry {
                action: Action::Swallow,
                ..Entry::pass(kind)
            });
        }
        self.guard = Guard::Open;
        self.witness_pending = true;
        self.synced_since_witness = false;
    }

    /// Ends the witness's implicit transaction with a Sync of the proxy's own, when the client's
    /// work never reached the server (the proxy answered it): that also makes the server send
    /// the witness's replies, which it holds until a Sync or Flush.
    fn close_guard(&mut self) {
        self.guard = Guard::Closing;
        self.synced_since_witness |= self.witness_pending;
        self.c.insert(emit::sync);
        self.pipeline.push(Entry {
            action: Action::Swallow,
            ..Entry::pass(Kind::Sync)
        });
    }

    /// Queues the proxy's own messages for the client, after everything walked so far.
    pub fn queue_for_client(&mut self, f: impl FnOnce(&mut BytesMut)) {
        self.s.insert(f);
    }

    /// Refuses the client's current request (no server attached) with `err` as an ERROR, then
    /// drops its messages up to the next Query or Sync and answers that with ReadyForQuery,
    /// as PostgreSQL does after an error in the extended protocol.
    pub fn refuse_request(&mut self, err: &ClientError) {
        self.s.insert(|b| err.encode(b));
        self.discard = Discard::UntilSync;
    }

    /// The client's bytes not yet read by the relay, for a server-less wait.
    pub fn client_buffer(&mut self) -> &mut BytesMut {
        &mut self.c.buf
    }

    pub fn client_has_unwritten(&self) -> bool {
        self.s.has_output()
    }

    /// Writes everything queued for the client.
    pub async fn flush_client(&mut self, client: &mut Stream) -> std::io::Result<()> {
        while self.s.has_output() {
            let n = self.s.output().len();
            client.send(self.s.output()).await?;
            self.s.consume_output(n);
        }
        Ok(())
    }

    /// Writes the client's walked bytes to the server (before the server is let go).
    pub async fn flush_server(&mut self, server: &mut ServerConn) -> std::io::Result<()> {
        while self.c.has_output() {
            let n = self.c.output().len();
            server.stream.send(self.c.output()).await?;
            self.c.consume_output(n);
        }
        Ok(())
    }

    /// Moves bytes both ways until something needs the session's attention.
    pub fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        mut server: Option<&mut ServerConn>,
        state: &mut ClientState,
    ) -> Poll<Event> {
        loop {
            let mut progress = false;

            // Client -> proxy: read while the queue has room (or a whole message needs more)
            // and the replies it waits for are bounded.
            if !held::resize(&mut self.held, self.need.saturating_sub(MAX_BUFFERED)) {
                return Poll::Ready(Event::Protocol(ClientError::limit(
                    "54000",
                    "message too large to hold whole, or the proxy's memory for such messages is in use",
                )));
            }
            if self.c.buf.len() < MAX_BUFFERED.max(self.need)
                && self.pipeline.len() < MAX_OUTSTANDING
            {
                match read_into(cx, client, &mut self.c.buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Event::ClientGone);
                    }
                    Poll::Ready(Ok(n)) => {
                        self.meter.received(n);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(ev) = self.walk_client(server.as_deref_mut(), state) {
                return Poll::Ready(ev);
            }
            if self.guard == Guard::Open && server.is_some() && self.nothing_forwarded() {
                self.close_guard();
            }

            if let Some(srv) = server.as_deref_mut() {
                // Proxy -> server.
                match write_out(cx, &mut srv.stream, &mut self.c) {
                    Ok(wrote) => progress |= wrote,
                    Err(()) => return Poll::Ready(Event::ServerGone),
                }
                // Server -> proxy: read while the client's queue has room.
                if self.s.buf.len() < MAX_BUFFERED {
                    match read_into(cx, &mut srv.stream, &mut self.s.buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            // Deliver what the server said before it went (often its FATAL).
                            let _ = self.walk_server(srv, state);
                            return Poll::Ready(Event::ServerGone);
                        }
                        Poll::Ready(Ok(n)) => {
                            self.meter.sent(n);
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
                if let Err(e) = self.walk_server(srv, state) {
                    tracing::warn!(server = srv.id, error = %e, "server broke the protocol");
                    return Poll::Ready(Event::ServerGone);
                }
                if self.facts.has(Fact::HandoverFailed) {
                    return Poll::Ready(Event::HandoverFailed);
                }
                // Not while a message the client started is still arriving (need > 0).
                if self.transaction_mode && self.need == 0 && self.transaction_over() {
                    if self.guard == Guard::Open {
                        self.close_guard();
                        continue;
                    }
                    if self.facts.has(Fact::LostCount) {
                        return Poll::Ready(Event::Protocol(ClientError::protocol(LOST_COUNT)));
                    }
                    let clean = self.s.buf.len() == self.s.pos && !self.facts.retire();
                    self.s.buf.truncate(self.s.pos);
                    let resync = std::mem::take(&mut self.session_dirty);
                    return Poll::Ready(Event::Release { clean, resync });
                }
            }

            // Proxy -> client.
            match write_out(cx, client, &mut self.s) {
                Ok(true) => {
                    progress = true;
                    self.stall = None;
                }
                Ok(false) => {}
                Err(()) => return Poll::Ready(Event::ClientGone),
            }
            // A client that takes nothing while its results wait: after stall_timeout it
            // is cut off (the timer exists only while it is stalled).
            if let Some(limit) = self.stall_timeout {
                if self.s.buf.len() >= MAX_BUFFERED {
                    let timer = self
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        self.stall = None;
                        return Poll::Ready(Event::ClientStalled);
                    }
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
                // Waiting: buffers with nothing in them go back, so an idle client costs
                // its state, not 16 KiB or more of buffers per direction.
                self.c.release_empty();
                self.s.release_empty();
                self.pipeline.release_empty();
                return Poll::Pending;
            }
        }
    }

    /// Walks the client's new bytes. Forwarding is implicit: walked bytes are written next.
    fn walk_client(
        &mut self,
        mut server: Option<&mut ServerConn>,
        state: &mut ClientState,
    ) -> Option<Event> {
        loop {
            let h = match self
                .c
                .framer
                .next(&self.c.buf, &mut self.c.pos, MAX_MESSAGE_LEN)
            {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Some(Event::Protocol(ClientError::protocol(e.to_string()))),
            };
            // PostgreSQL's limit counts the length word itself (pq_getmessage).
            if h.body_len + 4 > SMALL_MESSAGE_LIMIT
                && matches!(h.tag, b'C' | b'D' | b'E' | b'H' | b'S' | b'X' | b'c' | b'f')
            {
                return Some(Event::Protocol(ClientError::protocol(format!(
                    "invalid message length {} for message type {:?}",
                    h.body_len, h.tag as char
                ))));
            }
            if self.discard == Discard::Tail {
                // The dropped message is fully gone: back to normal.
                self.c.discard_walked();
                self.discard = Discard::No;
                continue;
            }
            if self.held_after_sync() && server.is_some() {
                // Not past a Sync before the witness has answered (see `witness_pending`).
                break;
            }
            if self.facts.has(Fact::Unaccounted) && self.transaction_mode && server.is_some() {
                // Nothing more goes to a server whose replies can no longer be counted: the
                // client's next messages wait for the server it gets next.
                break;
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
            let mut h = h;
            if self.skip_pending && server.is_some() {
                // Everything before this message goes; from here the server would skip.
                self.skip_pending = false;
                self.c.cut_at(h.start);
                h.start = 0;
                self.discard = Discard::UntilSync;
            }
            if self.discard == Discard::UntilSync {
                let attached = server.is_some();
                if attached && h.tag == b'S' {
                    // The server gets the Sync and answers it; the skipped messages never left.
                    self.c.discard_walked();
                    h.start = 0;
                    self.discard = Discard::No;
                } else {
                    // Dropped as it streams: nothing of it is held.
                    self.need = 0;
                    self.c.framer.pass(&h, &mut self.c.pos);
                    if !attached && matches!(h.tag, b'Q' | b'S' | b'F') {
                        self.discard = Discard::Tail;
                        self.s.insert(|b| emit::ready_for_query(b, b'I'));
                    }
                    continue;
                }
            }
            let Some(srv) = server.as_deref_mut() else {
                if self.transaction_mode && h.tag == b'Q' && h.body_len <= MAX_LISTEN_TEXT {
                    if self.c.buf.len() < h.start + 5 + h.body_len {
                        self.need = h.start + 5 + h.body_len;
                        break;
                    }
                    self.need = 0;
                    let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
                    if crate::sql::session::may_be_listen(body) && Mentions::of(body).listen {
                        let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                        if let Some(cmd) = crate::sql::session::listen_statement(&text) {
                            self.drop_message(&h);
                            return Some(Event::Listen(cmd));
                        }
                    }
                }
                if self.transaction_mode && matches!(h.tag, b'd' | b'c' | b'f') {
                    // COPY data after its COPY ended (the server failed it and was let go):
                    // PostgreSQL ignores these outside COPY, so no server is taken for them.
                    self.c.framer.pass(&h, &mut self.c.pos);
                    self.discard = Discard::Tail;
                    continue;
                }
                // Ask for a server only once the part of the message that will be read with
                // it attached is here: a server given for a message still arriving would be
                // idle and handed back at once, over and over.
                let want = self.bytes_needed(&h);
                if self.c.buf.len() < want {
                    self.need = want;
                    break;
                }
                return Some(Event::NeedServer);
            };
            if !self.meter_message(&h) {
                break; // the statement text needs more bytes
            }
            let rewrite = self.max_prepared > 0;
            let handled = match h.tag {
                b'Q' if self.transaction_mode && h.body_len <= MAX_SCANNED_QUERY => {
                    if self.c.buf.len() < h.start + 5 + h.body_len {
                        self.need = h.start + 5 + h.body_len;
                        false
                    } else {
                        self.need = 0;
                        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
                        let mentions = Mentions::of(body);
                        if rewrite && mentions.deallocate && self.deallocate_here(&h, state) {
                            self.metered = false;
                            continue;
                        }
                        match self.note_settings(h.start + 5, h.body_len, mentions) {
                            Ok(_) => self.forward(&h, Entry::pass(Kind::Query)),
                            Err(refused) => {
                                // Answered here as PostgreSQL answers a refused query.
                                self.drop_message(&h);
                                self.answer(Kind::Query, refused.error());
                                self.answer(Kind::Query, Synthetic::Ready);
                                true
                            }
                        }
                    }
                }
                b'Q' | b'F' => self.forward(&h, Entry::pass(Kind::Query)),
                b'S' if self.facts.has(Fact::CopyRunning)
                    && self.facts.has(Fact::CopyClientOpen) =>
                {
                    // Ignored by the server while its COPY runs: owed no reply, unless the
                    // COPY fails before the server reads it.
                    self.facts.set(Fact::CopySyncsIgnored, true);
                    self.c.framer.pass(&h, &mut self.c.pos);
                    true
                }
                b'S' => {
                    self.unsynced = false;
                    self.synced_since_witness |= self.witness_pending;
                    self.forward(&h, Entry::pass(Kind::Sync))
                }
                b'c' | b'f' => {
                    if self.facts.has(Fact::CopyClientOpen) {
                        self.facts.set(Fact::CopyClientOpen, false);
                    } else {
                        self.pipeline.push(Entry::pass(Kind::CopyEnd));
                    }
                    self.c.framer.pass(&h, &mut self.c.pos);
                    true
                }
                b'E' => {
                    self.unsynced = true;
                    self.forward(&h, Entry::pass(Kind::Execute))
                }
                b'P' | b'B' | b'D' | b'C' => {
                    self.unsynced = true;
                    let kind = match h.tag {
                        b'P' => Kind::Parse,
                        b'B' => Kind::Bind,
                        b'D' => Kind::Describe,
                        _ => Kind::Close,
                    };
                    if rewrite {
                        match self.rewrite_statement_message(&h, kind, srv, state) {
                            Ok(done) => done,
                            Err(e) => return Some(Event::Protocol(e)),
                        }
                    } else {
                        self.forward(&h, Entry::pass(kind))
                    }
                }
                _ => {
                    // Flush and CopyData/CopyDone/CopyFail: no reply of their own.
                    self.c.framer.pass(&h, &mut self.c.pos);
                    true
                }
            };
            if !handled {
                break; // the message needs more bytes
            }
            self.metered = false;
            self.need = 0;
        }
        if self.discard != Discard::No {
            self.c.discard_walked();
            if self.discard == Discard::Tail && !self.c.framer.mid_message() {
                self.discard = Discard::No;
            }
        }
        None
    }

    /// How much of the buffer must hold `h` before it can be handled with a server attached:
    /// the whole of a message the relay reads whole, the names of a Bind it rewrites, else
    /// the header.
    fn bytes_needed(&self, h: &Header) -> usize {
        let body = h.start + 5;
        let whole = body + h.body_len;
        let rewrite = self.max_prepared > 0;
        let fingerprinted = self.meter.tracks_queries() && h.body_len <= MAX_FINGERPRINTED;
        match h.tag {
            b'Q' if self.transaction_mode && h.body_len <= MAX_SCANNED_QUERY => whole,
            b'Q' | b'P' if fingerprinted => whole,
            // A Parse too long to hold is read as far as its statement name.
            b'P' if rewrite && h.body_len > held::MAX_HELD_MESSAGE => {
                body + h.body_len.min(MAX_NAMES)
            }
            b'P' | b'D' | b'C' if rewrite => whole,
            b'B' if rewrite => body + h.body_len.min(MAX_NAMES),
            _ => body,
        }
    }

    /// Counts a message that asks for work and reads what names the statement: a Query's or
    /// Parse's text (whole, up to MAX_FINGERPRINTED), a Bind's statement name. False when the
    /// text needs more bytes first.
    fn meter_message(&mut self, h: &Header) -> bool {
        if self.metered || !matches!(h.tag, b'Q' | b'P' | b'B' | b'E' | b'F') {
            return true;
        }
        let body_at = h.start + 5;
        let track = self.meter.tracks_queries();
        let has_text = matches!(h.tag, b'Q' | b'P');
        if track && has_text && h.body_len <= MAX_FINGERPRINTED {
            if self.c.buf.len() < body_at + h.body_len {
                self.need = self.need.max(body_at + h.body_len);
                return false;
            }
            self.need = 0;
        }
        self.meter.request();
        match h.tag {
            b'P' => self.meter.parse_message(self.max_prepared == 0),
            b'B' => self.meter.bind_message(),
            _ => {}
        }
        if !track {
            return true;
        }
        if has_text && h.body_len > MAX_FINGERPRINTED {
            self.meter.long_statement();
        } else if has_text {
            let body = &self.c.buf[body_at..body_at + h.body_len];
            if h.tag == b'Q' {
                self.meter.query_text(body);
            } else if let Some((name, tail)) = prepared::split_name(body) {
                let text_len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
                self.meter.parse_text(name, &tail[..text_len]);
            }
        } else if h.tag == b'B' {
            let end = (body_at + h.body_len.min(MAX_NAMES)).min(self.c.buf.len());
            let name = prepared::bind_names(&self.c.buf[body_at..end]).map(|(_, n, _)| n);
            self.meter.bind_name(name);
        }
        // Counted once even if the message is walked again for more bytes.
        self.metered = true;
        true
    }

    fn forward(&mut self, h: &Header, entry: Entry) -> bool {
        self.pipeline.push(entry);
        self.c.framer.pass(h, &mut self.c.pos);
        true
    }

    /// Transaction mode: Parse/Bind/Describe/Close by the client's statement names become
    /// messages by server names; Close and repeated Parse are answered here. Returns false
    /// when the message needs more bytes first.
    fn rewrite_statement_message(
        &mut self,
        h: &Header,
        kind: Kind,
        srv: &mut ServerConn,
        state: &mut ClientState,
    ) -> Result<bool, ClientError> {
        let total = 5 + h.body_len;
        if kind == Kind::Bind {
            let end = (h.start + 5 + h.body_len.min(MAX_NAMES)).min(self.c.buf.len());
            let Some((_, name, prefix)) = prepared::bind_names(&self.c.buf[h.start + 5..end])
            else {
                if end - (h.start + 5) >= h.body_len.min(MAX_NAMES) {
                    return Err(ClientError::protocol("invalid Bind message"));
                }
                self.need = h.start + 5 + h.body_len.min(MAX_NAMES);
                return Ok(false);
            };
            self.need = 0;
            if name.is_empty() && self.facts.has(Fact::UnnamedParsed) {
                return Ok(self.forward(h, Entry::pass(Kind::Bind)));
            }
            let Some(stmt) = state
                .statements
                .get(name)
                .cloned()
                .filter(|_| !name.is_empty())
            else {
                let msg = no_such_statement(name);
                self.c.cut_at(h.start);
                // After the cut the message starts at 0; its bytes are dropped as they come.
                self.c
                    .framer
                    .pass(&Header { start: 0, ..*h }, &mut self.c.pos);
                self.refuse_in_pipeline(Kind::Bind, "26000", msg);
                return Ok(true);
            };
            if let Some(names) = &stmt.settings {
                self.mark_settings(names);
            }
            self.c.cut_at(h.start);
            self.give_server(srv, &stmt);
            // After the cut the message starts at 0: portal and name are at 5.
            let (portal, old, _) =
                prepared::bind_names(&self.c.buf[5..5 + prefix]).unwrap_or((&[], &[], 0));
            prepared::write_bind_head(
                &mut self.c.out,
                h.body_len,
                portal,
                old.len(),
                &stmt.server_name,
            );
            self.c.drop_front(5 + prefix);
            self.c.framer.pass_rest(h.body_len - prefix);
            self.pipeline.push(Entry {
                statement: Some(stmt.server_name.clone()),
                ..Entry::pass(Kind::Bind)
            });
            return Ok(true);
        }

        if kind == Kind::Parse && h.body_len > held::MAX_HELD_MESSAGE {
            return self.oversized_parse(h);
        }
        // Parse, Describe and Close: handled whole.
        if self.c.buf.len() < h.start + total {
            self.need = h.start + total;
            return Ok(false);
        }
        self.need = 0;
        let settings = match kind {
            Kind::Parse => match self.note_parse_settings(h) {
                Ok(s) => s,
                Err(refused) => {
                    self.drop_message(h);
                    self.answer(Kind::Parse, refused.error());
                    self.discard = Discard::UntilSync;
                    return Ok(true);
                }
            },
            _ => None,
        };
        let body = &self.c.buf[h.start + 5..h.start + total];
        match kind {
            Kind::Parse => {
                let Some((name, tail)) = prepared::split_name(body) else {
                    return Err(ClientError::protocol("invalid Parse message"));
                };
                if name.is_empty() {
                    self.facts.set(Fact::UnnamedParsed, true);
                    return Ok(self.forward(h, Entry::pass(Kind::Parse)));
                }
                let full = state.statements.len() >= self.max_client_statements as usize
                    || state.statements.bytes() + tail.len() > prepared::MAX_CLIENT_STATEMENT_BYTES;
                if full {
                    let msg = format!(
                        "this client keeps {} prepared statements ({} bytes of text), the most transaction mode allows (max_client_prepared_statements, {} MiB): deallocate some first",
                        state.statements.len(),
                        state.statements.bytes(),
                        prepared::MAX_CLIENT_STATEMENT_BYTES >> 20
                    );
                    self.drop_message(h);
                    self.refuse_in_pipeline(Kind::Parse, "54000", msg);
                    return Ok(true);
                }
                if state.statements.get(name).is_some() {
                    let msg = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    self.drop_message(h);
                    self.refuse_in_pipeline(Kind::Parse, "42P05", msg);
                    return Ok(true);
                }
                let client_name: Box<[u8]> = name.into();
                let stmt = Arc::new(Statement {
                    settings,
                    ..Statement::new(
                        tail,
                        state
                            .params
                            .unreported
                            .get("search_path")
                            .unwrap_or("")
                            .as_bytes(),
                    )
                });
                state.statements.insert(&client_name, stmt.clone());
                self.drop_message(h);
                let entry = Entry {
                    client_name: Some(client_name),
                    ..Entry::pass(Kind::Parse)
                };
                // The statement is newer than any copy the server has (`Statement::parsed`):
                // the Parse always reaches the server, after a Close of an older copy.
                ensure_on_server(
                    &mut self.c.out,
                    &mut self.pipeline,
                    &mut self.meter,
                    &mut srv.statements,
                    self.max_prepared as usize,
                    &stmt,
                    entry,
                );
                Ok(true)
            }
            Kind::Describe | Kind::Close => {
                let (Some(&target), Some((name, _))) =
                    (body.first(), body.get(1..).and_then(prepared::split_name))
                else {
                    return Err(ClientError::protocol("invalid Describe or Close message"));
                };
                if target != b'S' || (name.is_empty() && self.facts.has(Fact::UnnamedParsed)) {
                    return Ok(self.forward(h, Entry::pass(kind)));
                }
                if name.is_empty() && kind == Kind::Describe {
                    self.drop_message(h);
                    self.refuse_in_pipeline(Kind::Describe, "26000", no_such_statement(b""));
                    return Ok(true);
                }
                if kind == Kind::Close {
                    // The server keeps the statement for whoever prepares the same text next.
                    let name: Box<[u8]> = name.into();
                    state.statements.remove(&name);
                    self.drop_message(h);
                    self.answer(Kind::Close, Synthetic::CloseComplete);
                    return Ok(true);
                }
                let Some(stmt) = state.statements.get(name).cloned() else {
                    let msg = no_such_statement(name);
                    self.drop_message(h);
                    self.refuse_in_pipeline(Kind::Describe, "26000", msg);
                    return Ok(true);
                };
                self.drop_message(h);
                self.give_server(srv, &stmt);
                prepared::write_describe_statement(&mut self.c.out, &stmt.server_name);
                self.pipeline.push(Entry::pass(Kind::Describe));
                Ok(true)
            }
            _ => Ok(self.forward(h, Entry::pass(kind))),
        }
    }

    /// A Parse longer than the relay holds whole: an unnamed one goes through unread (its
    /// text unscanned; a SET in it is still seen by its CommandComplete), a named one cannot
    /// be kept for the client's other servers and is refused (54000).
    fn oversized_parse(&mut self, h: &Header) -> Result<bool, ClientError> {
        let at = h.start + 5;
        let end = (at + MAX_NAMES).min(self.c.buf.len());
        let Some(name_len) = self.c.buf[at..end].iter().position(|&b| b == 0) else {
            if end - at >= MAX_NAMES {
                return Err(ClientError::protocol("invalid Parse message"));
            }
            self.need = at + MAX_NAMES;
            return Ok(false);
        };
        self.need = 0;
        if name_len == 0 {
            self.facts.set(Fact::UnnamedParsed, true);
            return Ok(self.forward(h, Entry::pass(Kind::Parse)));
        }
        let msg = format!(
            "a named prepared statement of {} bytes is over the {} MiB transaction mode keeps per statement",
            h.body_len,
            held::MAX_HELD_MESSAGE >> 20
        );
        self.c.cut_at(h.start);
        // After the cut the message starts at 0; its bytes are dropped as they come.
        self.c
            .framer
            .pass(&Header { start: 0, ..*h }, &mut self.c.pos);
        self.refuse_in_pipeline(Kind::Parse, "54000", msg);
        Ok(true)
    }

    /// Transaction mode: notes the settings a Query or Parse text may change (the lexer runs
    /// only on texts that contain "set" at all).
    fn note_settings(
        &mut self,
        at: usize,
        len: usize,
        mentions: Mentions,
    ) -> Result<Option<Box<[String]>>, Unsupported> {
        let text = &self.c.buf[at..at + len];
        if mentions.reserved && crate::sql::session::addresses_statements(text) {
            return Err(Unsupported::ReservedName);
        }
        if !mentions.may_touch() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(text.strip_suffix(&[0]).unwrap_or(text));
        let t = crate::sql::session::scan(&text);
        if t.listen {
            return Err(Unsupported::Listen);
        }
        if !t.any {
            return Ok(None);
        }
        let names: Box<[String]> = t.names.into();
        self.mark_settings(&names);
        Ok(Some(names))
    }

    /// `DEALLOCATE name` of a protocol-level statement: the client's names exist only here in
    /// transaction mode, so the proxy answers it as PostgreSQL would.
    fn deallocate_here(&mut self, h: &Header, state: &mut ClientState) -> bool {
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        if body.len() > 200 {
            return false;
        }
        let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
        let Some(name) = crate::sql::session::deallocate_name(&text) else {
            return false;
        };
        self.drop_message(h);
        if state.statements.get(name.as_bytes()).is_some() {
            state.statements.remove(name.as_bytes());
            self.answer(Kind::Query, Synthetic::Complete("DEALLOCATE"));
        } else {
            let msg = no_such_statement(name.as_bytes());
            self.answer(Kind::Query, Synthetic::Error("26000", msg));
        }
        self.answer(Kind::Query, Synthetic::Ready);
        true
    }

    /// The same for a Parse: its query text follows the statement name.
    fn note_parse_settings(&mut self, h: &Header) -> Result<Option<Box<[String]>>, Unsupported> {
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        let Some(name_end) = body.iter().position(|&b| b == 0) else {
            return Ok(None);
        };
        let query_len = body[name_end + 1..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(0);
        let at = h.start + 5 + name_end + 1;
        let mentions = Mentions::of(&self.c.buf[at..at + query_len]);
        self.note_settings(at, query_len, mentions)
    }

    fn mark_settings(&mut self, names: &[String]) {
        self.session_dirty = true;
        let touched = self.touched.get_or_insert_with(Default::default);
        for n in names {
            if !touched.contains(n) {
                touched.push(n.clone());
            }
        }
    }

    /// Setting names the client's statements touched since the last call.
    pub fn take_touched(&mut self) -> Vec<String> {
        self.touched.take().map_or_else(Vec::new, |t| *t)
    }

    /// Makes sure `srv` has `stmt` before a message that uses it (the proxy's own Parse).
    fn give_server(&mut self, srv: &mut ServerConn, stmt: &Statement) {
        let own = Entry {
            action: Action::Swallow,
            ..Entry::pass(Kind::Parse)
        };
        ensure_on_server(
            &mut self.c.out,
            &mut self.pipeline,
            &mut self.meter,
            &mut srv.statements,
            self.max_prepared as usize,
            stmt,
            own,
        );
    }

    /// Removes a whole client message from the stream (it is answered, not forwarded).
    fn drop_message(&mut self, h: &Header) {
        self.c.cut_at(h.start);
        self.c.drop_front(5 + h.body_len);
    }

    /// Answers a message here, in its place among the server's replies.
    fn answer(&mut self, kind: Kind, s: Synthetic) {
        self.pipeline.push(Entry {
            action: Action::Answer(s),
            ..Entry::pass(kind)
        });
        self.emit_ready_answers();
    }

    /// An error for the current message, in its place; the client's messages up to its
    /// Sync are dropped, as PostgreSQL skips them after an error.
    fn refuse_in_pipeline(&mut self, kind: Kind, code: &'static str, message: String) {
        self.answer(kind, Synthetic::Error(code, message));
        self.discard = Discard::UntilSync;
    }

    fn emit_ready_answers(&mut self) {
        let status = self.status;
        while let Some(s) = self.pipeline.take_ready_answers() {
            self.s.insert(|b| match s {
                Synthetic::CloseComplete => emit::message(b, b'3', |_| {}),
                Synthetic::Ready => emit::ready_for_query(b, status),
                Synthetic::Complete(tag) => emit::message(b, b'C', |b| {
                    b.extend_from_slice(tag.as_bytes());
                    b.extend_from_slice(&[0]);
                }),
                Synthetic::Error(code, msg) => {
                    emit::error_response(b, emit::Severity::Error, code, &msg, None);
                }
            });
        }
    }

    /// Walks the server's new bytes: transaction status, parameter changes, replies owed.
    fn walk_server(
        &mut self,
        srv: &mut ServerConn,
        state: &mut ClientState,
    ) -> Result<(), FrameError> {
        loop {
            let Some(h) = self
                .s
                .framer
                .next(&self.s.buf, &mut self.s.pos, usize::MAX)?
            else {
                return Ok(());
            };
            if self.pipeline.head().is_some_and(|e| {
                e.action == Action::Swallow
                    && (matches!(e.kind, Kind::Query | Kind::Describe | Kind::Sync)
                        || (e.kind == Kind::Close && self.witness_pending && h.tag == b'E'))
            }) {
                if !self.swallow_own_reply(&h, srv)? {
                    return Ok(());
                }
                continue;
            }
            if self.facts.has(Fact::CopyRunning) && matches!(h.tag, b'C' | b'E') {
                self.copy_ended(h.tag == b'E');
            }
            match h.tag {
                b'1' | b'2' | b'3' => {
                    let Some(_) = self.s.framer.take(&h, &self.s.buf, &mut self.s.pos) else {
                        return Ok(());
                    };
                    if let Some(e) = self.pipeline.complete(h.tag) {
                        if e.action == Action::Swallow {
                            // The reply to the proxy's own Parse or Close.
                            self.s.remove_walked(h.start, 5 + h.body_len);
                            if e.kind == Kind::Close {
                                // The witness's Close comes before any other of the proxy's.
                                self.witness_pending = false;
                            }
                        }
                    }
                    self.emit_ready_answers();
                }
                b'Z' | b'S' | b'E' | b'C' if h.body_len <= INSPECT_LIMIT => {
                    let Some(body) = self.s.framer.take(&h, &self.s.buf, &mut self.s.pos) else {
                        return Ok(());
                    };
                    match h.tag {
                        b'Z' => {
                            // Whatever the witness opened has ended.
                            self.guard = Guard::None;
                            self.status = body.first().copied().unwrap_or(b'I');
                            self.meter.ready(self.status);
                            self.pipeline.complete(b'Z');
                            self.emit_ready_answers();
                            if self.transaction_mode && self.transaction_over() {
                                // The transaction is over: what follows is not this client's.
                                return Ok(());
                            }
                        }
                        b'S' => {
                            if let Some((k, v)) = views::parameter_status(body) {
                                state.params.reported.set(k, v);
                                srv.params.reported.set(k, v);
                            }
                        }
                        b'C' => {
                            self.meter.command_complete(body);
                            if body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0" {
                                srv.statements.clear();
                                state.statements.clear();
                            }
                            if matches!(body, b"SET\0" | b"RESET\0" | b"DISCARD ALL\0") {
                                self.session_dirty = true;
                            }
                            if self.transaction_mode
                                && matches!(body, b"PREPARE\0" | b"DEALLOCATE\0")
                            {
                                // SQL-level statements: one the next client must not find,
                                // or one of the proxy's changed behind its back. The server's
                                // statement set is no longer known: it is closed, not reused.
                                self.facts.set(Fact::Retire, true);
                            }
                            self.pipeline.complete(b'C');
                            self.emit_ready_answers();
                        }
                        _ => {
                            let f = views::error_fields(body).unwrap_or_default();
                            self.meter.error(f.code);
                            if f.severity == "FATAL" || f.severity == "PANIC" {
                                self.server_fatal = true;
                            }
                            let stale = f.code == "0A000"
                                && f.message == "cached plan must not change result type";
                            self.server_error(srv, state, stale);
                        }
                    }
                }
                _ => {
                    if h.tag == b'G' {
                        let start = self.pipeline.copy_in_started();
                        self.facts.set(Fact::CopyRunning, true);
                        self.facts.set(Fact::CopyClientOpen, start.end_pending);
                        self.facts.set(Fact::CopySyncsIgnored, start.syncs_dropped);
                    }
                    if h.tag == b'E' {
                        self.meter.error("");
                        self.server_error(srv, state, false);
                    } else if matches!(h.tag, b'T' | b'n' | b'C' | b'I' | b's')
                        && self.pipeline.complete(h.tag).is_some()
                    {
                        self.emit_ready_answers();
                    }
                    self.s.framer.pass(&h, &mut self.s.pos);
                }
            }
        }
    }

    /// One message of the reply to the proxy's own query: dropped from the client's stream.
    /// False when its body has not all arrived, or when the hand-over failed.
    fn swallow_own_reply(&mut self, h: &Header, srv: &mut ServerConn) -> Result<bool, FrameError> {
        if h.body_len > INSPECT_LIMIT {
            // Nothing the proxy's own statements answer is this long.
            return Err(FrameError::BadLength {
                tag: h.tag as char,
                len: h.body_len as i64,
            });
        }
        let Some(body) = self.s.framer.take(h, &self.s.buf, &mut self.s.pos) else {
            return Ok(false);
        };
        match h.tag {
            b'S' => {
                if let Some((k, v)) = views::parameter_status(body) {
                    srv.params.reported.set(k, v);
                }
            }
            b'E' => {
                let f = views::error_fields(body).unwrap_or_default();
                tracing::warn!(
                    server = srv.id,
                    code = f.code,
                    message = f.message,
                    "the hand-over reset failed: the server is closed"
                );
                self.facts.set(Fact::Retire, true);
                if self
                    .pipeline
                    .head()
                    .is_some_and(|e| matches!(e.kind, Kind::Describe | Kind::Close))
                {
                    // The witness is missing (or its Close was canceled): the server now
                    // skips the client's messages up to the next Sync.
                    self.facts.set(Fact::HandoverFailed, true);
                }
            }
            b'Z' | b'T' | b'n' => {
                if h.tag == b'Z' && self.pipeline.head().is_some_and(|e| e.kind == Kind::Sync) {
                    self.guard = Guard::None;
                }
                self.pipeline.complete(h.tag);
            }
            _ => {}
        }
        self.s.remove_walked(h.start, 5 + h.body_len);
        if h.tag == b'Z' {
            self.emit_ready_answers();
        }
        Ok(!self.facts.has(Fact::HandoverFailed))
    }

    /// The server's COPY FROM STDIN ended (CommandComplete, or an error). A failed COPY
    /// stops reading at a point the proxy cannot see: Syncs the client sent inside it that
    /// the server had not read yet are each answered after all, so how many ReadyForQuery
    /// it owes is unknown, and the server is never handed to anyone else. (Idempotent: a
    /// header walked again when its body was incomplete changes nothing.)
    fn copy_ended(&mut self, failed: bool) {
        if failed && self.facts.has(Fact::CopySyncsIgnored) {
            self.facts.set(Fact::Unaccounted, true);
            let lost = self.transaction_mode && self.pipeline.query_after_head();
            self.facts.set(Fact::LostCount, lost);
        }
        // The server left COPY: from here on it answers every Sync.
        self.facts.set(Fact::CopyRunning, false);
        self.facts.set(Fact::CopyClientOpen, false);
    }

    /// An ErrorResponse from the server: in the extended protocol it ends the current
    /// message and the server skips to the next Sync; statements those messages would have
    /// created do not exist.
    fn server_error(&mut self, srv: &mut ServerConn, state: &mut ClientState, stale_plan: bool) {
        if matches!(
            self.pipeline.head().map(|e| e.kind),
            None | Some(Kind::Query) | Some(Kind::Sync)
        ) {
            return;
        }
        let (failed, skipped) = self.pipeline.fail();
        if self.pipeline.head().is_none() {
            // The Sync that ends the skipping has not been sent yet.
            self.skip_pending = true;
        }
        if let Some(e) = &failed {
            if stale_plan {
                if let Some(name) = &e.statement {
                    srv.statements.mark_stale(name);
                }
            }
        }
        for e in failed.iter().chain(skipped.iter()) {
            if e.kind == Kind::Parse {
                if let Some(name) = &e.statement {
                    srv.statements.remove(name);
                }
                if let Some(client) = &e.client_name {
                    state.statements.remove(client);
                }
            }
        }
        self.emit_ready_answers();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        held::resize(&mut self.held, 0);
    }
}

/// Gives the server `stmt` unless it has a copy parsed since the client's Parse: closes what
/// must go first, then a Parse tracked as `entry` (the proxy's own, Swallow, when the client
/// did not ask for one).
fn ensure_on_server(
    out: &mut BytesMut,
    pipeline: &mut Pipeline,
    meter: &mut Meter,
    have: &mut ServerStatements,
    capacity: usize,
    stmt: &Statement,
    entry: Entry,
) {
    if have.touch(&stmt.server_name, stmt.parsed) {
        meter.prepared(true);
        return;
    }
    meter.prepared(false);
    if make_room(out, pipeline, have, capacity, &stmt.server_name) {
        meter.prepared_evicted();
    }
    prepared::write_parse(out, &stmt.server_name, &stmt.tail);
    have.add(stmt.server_name.clone());
    pipeline.push(Entry {
        statement: Some(stmt.server_name.clone()),
        ..entry
    });
}

/// PostgreSQL's words for a statement name it does not know (26000).
fn no_such_statement(name: &[u8]) -> String {
    if name.is_empty() {
        return "unnamed prepared statement does not exist".into();
    }
    format!(
        "prepared statement \"{}\" does not exist",
        String::from_utf8_lossy(name)
    )
}

/// Closes the least recently used statement when the server is full (true: one was), and a
/// stale copy of `name` if PostgreSQL refused to reuse its plan.
fn make_room(
    out: &mut BytesMut,
    pipeline: &mut Pipeline,
    have: &mut ServerStatements,
    capacity: usize,
    name: &str,
) -> bool {
    let mut close = |out: &mut BytesMut, victim: &str| {
        prepared::write_close_statement(out, victim);
        pipeline.push(Entry {
            action: Action::Swallow,
            ..Entry::pass(Kind::Close)
        });
    };
    if have.take_stale(name) {
        close(out, name);
    }
    if let Some(victim) = have.evict_for_room(capacity) {
        close(out, &victim);
        return true;
    }
    false
}

/// Writes what `half` has ready until the socket would block. Ok(true) if anything was
/// written; Err when the peer is gone.
fn write_out(cx: &mut Context<'_>, stream: &mut Stream, half: &mut Half) -> Result<bool, ()> {
    let mut wrote = false;
    while half.has_output() {
        match Pin::new(&mut *stream).poll_write(cx, half.output()) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
            Poll::Ready(Ok(n)) => {
                half.consume_output(n);
                wrote = true;
            }
            Poll::Pending => break,
        }
    }
    // TLS keeps bytes a write accepted until its records reach the socket; plaintext's
    // flush is a no-op.
    if let Poll::Ready(Err(_)) = Pin::new(&mut *stream).poll_flush(cx) {
        return Err(());
    }
    Ok(wrote)
}

/// One read into the spare room of `buf`, growing it to a read-sized chunk first.
fn read_into(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        *buf = half::spare_buffer(READ_CHUNK);
    } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let n = ready!(poll_read_buf(Pin::new(stream), cx, buf))?;
    Poll::Ready(Ok(n))
}

#[cfg(test)]
mod tests;
