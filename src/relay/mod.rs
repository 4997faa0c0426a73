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

mod from_client;
mod from_server;
mod poll;
mod rewrite;
mod settings;

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
    /// The client closed its socket or a read or write on it failed.
    ClientGone(Lost),
    /// The client has taken none of its results for client_stall_timeout.
    ClientStalled,
    /// The server closed its socket, a read or write on it failed, or it broke the protocol.
    ServerGone(Lost),
    /// Transaction mode: the hand-over reset was interrupted (a cancel from another session
    /// of the role), so the server skipped the client's messages; neither can go on.
    HandoverFailed,
    /// The client broke the protocol.
    Protocol(ClientError),
    /// Transaction mode, between transactions: LISTEN/UNLISTEN for the notification hub
    /// (the message has been consumed; the session answers it).
    Listen(crate::sql::session::ListenCmd),
}

/// Why a connection is gone, for the log line that reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The peer closed its socket (a read returned end of file, or a write took nothing).
    Closed,
    /// A read, write or flush failed with this error.
    Io(std::io::ErrorKind),
    /// The server sent what is not a protocol message.
    Protocol(FrameError),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Closed => f.write_str("closed by the peer"),
            Lost::Io(kind) => write!(f, "{kind}"),
            Lost::Protocol(e) => write!(f, "protocol violation: {e}"),
        }
    }
}

impl Lost {
    fn of(e: &std::io::Error) -> Lost {
        Lost::Io(e.kind())
    }
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
pub struct ClientSession {
    pub params: SessionParams,
    pub statements: ClientStatements,
}

/// client_idle_timeout, idle_transaction_timeout and query_timeout in milliseconds (0:
/// none), the limit of each phase of a client: 12 bytes where three `Option<Duration>` are 48.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseLimits(pub [u32; 3]);

impl PhaseLimits {
    pub fn any(self) -> bool {
        self.0 != [0; 3]
    }

    pub fn of_phase(self, p: Phase) -> Option<std::time::Duration> {
        let ms = match p {
            Phase::Idle => self.0[0],
            Phase::InTransaction => self.0[1],
            Phase::Busy => self.0[2],
        };
        (ms > 0).then(|| std::time::Duration::from_millis(u64::from(ms)))
    }
}

/// What the relay knows of the attached server's side of the conversation. All of it is
/// forgotten together, by assignment, when a server is attached or let go
/// ([`Relay::reset_server_side`]); the reply pipeline is cleared with it but kept apart, so
/// that its queue's memory is reused.
#[derive(Debug)]
struct ServerSide {
    /// Extended-protocol messages were forwarded since the last Sync (an implicit
    /// transaction may be open even when every reply has arrived).
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    status: u8,
    /// The server sent a FATAL error: it will close, and the client has been told why.
    server_fatal: bool,
    /// The server ended its session (a FATAL error) during the hand-over, whose replies the
    /// client never sees: it is told the server went away, not that its request failed.
    handover_fatal: bool,
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
    /// Claims statements (the proxy's own Parse, Bind and Execute) not yet answered.
    claims_pending: u8,
    /// Transaction mode: the client may have changed session settings on this server.
    session_dirty: bool,
    /// COPY state, and what makes the server unfit for reuse (see [`Fact`]).
    facts: Facts,
}

impl Default for ServerSide {
    fn default() -> Self {
        ServerSide {
            unsynced: false,
            status: b'I',
            server_fatal: false,
            handover_fatal: false,
            skip_pending: false,
            guard: Guard::None,
            witness_pending: false,
            synced_since_witness: false,
            claims_pending: 0,
            session_dirty: false,
            facts: Facts::default(),
        }
    }
}

/// A client's relay state; lives as long as the client.
pub struct Relay {
    c: Half,
    s: Half,
    pipeline: Pipeline,
    /// What is known of the attached server's side, forgotten as one ([`ServerSide`]).
    srv: ServerSide,
    discard: Discard,
    /// Bytes the client buffer must hold before the current message can be handled.
    need: usize,
    /// What `need` holds beyond a normal buffer, reserved from the process budget ([`held`]).
    held: u32,
    /// Transaction mode: the most named statements one client may keep.
    pub max_client_statements: u32,
    /// Setting names its statements named (lowercase).
    #[allow(clippy::box_collection)]
    touched: Option<Box<Vec<String>>>,
    pub transaction_mode: bool,
    /// Server statements each connection keeps (transaction mode); 0 passes names through.
    pub max_prepared: u32,
    /// Report phase changes (only when a timeout needs them).
    pub watch_phase: bool,
    /// handover_reset: servers are reset when they change hands.
    pub handover_reset: bool,
    /// The client's timeouts per phase (set by its session as its relay loop starts).
    pub phase_limits: PhaseLimits,
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
            srv: ServerSide::default(),
            discard: Discard::No,
            need: 0,
            held: 0,
            max_client_statements: u32::MAX,
            touched: None,
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
            phase_limits: PhaseLimits::default(),
            stall_timeout: None,
            stall: None,
        }
    }

    pub fn phase(&self) -> Phase {
        if !self.pipeline.is_empty() || self.srv.unsynced || self.c.framer.mid_message() {
            Phase::Busy
        } else if self.srv.status == b'I' {
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

    /// Transaction mode, between transactions with nothing in hand: no byte buffered either
    /// way, nothing owed or waited for, no timer. A new relay would go on exactly as this one
    /// (a parked client's is dropped and made again).
    pub fn at_rest(&self) -> bool {
        self.transaction_mode
            && self.transaction_over()
            && self.pipeline.is_empty()
            && self.c.buf.is_empty()
            && self.c.out.is_empty()
            && self.s.buf.is_empty()
            && self.s.out.is_empty()
            && self.need == 0
            && self.held == 0
            && self.touched.is_none()
            && self.stall.is_none()
    }

    /// The client's messages so far were all answered by the proxy: nothing of its work is
    /// on the server, and no message of it is half read.
    fn nothing_forwarded(&self) -> bool {
        self.need == 0 && !self.c.framer.mid_message() && self.pipeline.only_proxy_work()
    }

    /// A Sync went to the server before the witness answered: what follows it waits.
    fn held_after_sync(&self) -> bool {
        self.srv.witness_pending && self.srv.synced_since_witness
    }

    /// The transaction is over and every reply the server owes is accounted for: it may
    /// serve someone else.
    pub fn server_reusable(&self) -> bool {
        self.transaction_over()
            && self.srv.guard == Guard::None
            && !self.srv.facts.retire()
            && self.s.pos == self.s.buf.len()
    }

    /// Part of a server message has gone to the client and the rest has not come.
    pub fn server_mid_message(&self) -> bool {
        self.s.framer.mid_message()
    }

    pub fn server_sent_fatal(&self) -> bool {
        self.srv.server_fatal
    }

    /// The hand-over failed because the server ended its session (a restart, a
    /// pg_terminate_backend), not because of a cancel or the client's claims.
    pub fn handover_ended_by_server(&self) -> bool {
        self.srv.handover_fatal
    }

    /// Forget per-server state when a server is attached or detached.
    pub fn reset_server_side(&mut self) {
        self.s.framer = Default::default();
        self.pipeline.clear();
        self.srv = ServerSide::default();
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
        self.swallow(&[Kind::Query, Kind::Describe, Kind::Close]);
        self.open_witness();
    }

    /// The hand-over with a token client's claims (see [`handover::write_with_claims`]); the
    /// reset `sql` when the server changes hands. An error while setting the claims is a
    /// failed hand-over ([`Event::HandoverFailed`]): the client's work never runs without them.
    pub fn send_handover_with_claims(
        &mut self,
        sql: Option<&str>,
        claims: &[impl std::ops::Deref<Target = crate::identity::claims::Delivery>],
    ) {
        let witness = handover::new_witness();
        self.c
            .insert(|b| handover::write_with_claims(b, sql, claims, &witness));
        self.swallow(&[Kind::Query]);
        for _ in claims {
            self.swallow(&[Kind::Parse, Kind::Bind, Kind::Execute]);
        }
        self.swallow(&[Kind::Query, Kind::Describe, Kind::Close]);
        self.srv.claims_pending = u8::try_from(claims.len()).unwrap_or(u8::MAX);
        self.open_witness();
    }

    fn swallow(&mut self, kinds: &[Kind]) {
        for &kind in kinds {
            self.pipeline.push(Entry {
                action: Action::Swallow,
                ..Entry::pass(kind)
            });
        }
    }

    fn open_witness(&mut self) {
        self.srv.guard = Guard::Open;
        self.srv.witness_pending = true;
        self.srv.synced_since_witness = false;
    }

    /// Ends the witness's implicit transaction with a Sync of the proxy's own, when the client's
    /// work never reached the server (the proxy answered it): that also makes the server send
    /// the witness's replies, which it holds until a Sync or Flush.
    fn close_guard(&mut self) {
        self.srv.guard = Guard::Closing;
        self.srv.synced_since_witness |= self.srv.witness_pending;
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
}

impl Drop for Relay {
    fn drop(&mut self) {
        held::resize(&mut self.held, 0);
    }
}

// Every active client keeps a Relay (512 bytes today, with the per-phase timeouts) and the state it carries across
// servers; growing either grows every idle client (docs/benchmarks.md, memory per client).
const _: () = assert!(std::mem::size_of::<Relay>() <= 512);
const _: () = assert!(std::mem::size_of::<ClientSession>() <= 24);

#[cfg(test)]
mod tests;
