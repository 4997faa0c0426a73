//! One client's life: handshake, login, choosing its pool, the greeting, then the relay loop
//! in session or transaction mode, and cleanup that never leaves a transaction open upstream.

mod drive;
mod ending;
mod greeting;
mod merged;
mod park;

pub use park::{Parking, run as run_parking};

use drive::{Exit, Handover, run};
use ending::{finish, tell_and_close};
use greeting::{Arrival, LoginOutcome, admit_address, login, sync};

use crate::app::App;
use crate::backend::ServerConn;
use crate::backend::params::{
    SessionParams, differs_only_in_application_name, reported_verbatim, sync_statement,
};
use crate::backend::pool::Pool;
use crate::backend::server::HANDOVER_RESET;
use crate::backend::server::InternalError;
use crate::config::{ClientTlsMode, PoolMode};
use crate::error::ClientError;
use crate::frontend::access;
use crate::frontend::cancel::Registration;
use crate::frontend::handshake::{self, HandshakeError, Hello};
use crate::frontend::login::{self, LoginError};
use crate::net::listener::Peer;
use crate::net::{Addr, Stream};
use crate::proto::emit;
use crate::relay::{ClientSession, Event, Phase, Relay};
use crate::stats::clients::{ClientFacts, Registered, TlsFacts};
use crate::stats::meter::Meter;
use bytes::BytesMut;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::Instrument;

/// How long the proxy's own statements (reset, parameter sync) may take.
const INTERNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A logged-in client, ready for the relay.
struct Client {
    /// Its place in the per-address connection count, held until it leaves.
    _address_slot: crate::admission::limits::AddressSlot,
    /// Its entry in SHOW CLIENTS. First, so it is dropped (and KILL_CLIENT forgets the
    /// descriptor) before `stream` closes the socket.
    reg: Registered,
    stream: Stream,
    state: ClientSession,
    /// Transaction mode LISTEN; made by the first LISTEN.
    listening: Option<Box<Listening>>,
    pool: Arc<Pool>,
    cancel: Registration,
    server: Option<ServerConn>,
    /// The hand-over statement last built for this client (transaction mode).
    handover: Option<Arc<Handover>>,
    /// A token client's claims, set on each server its transactions run on.
    bearer: Option<Box<crate::identity::claims::Bearer>>,
    /// Its class in the pool's queue and its identity's share.
    demand: crate::backend::Demand,
    /// Counted against its identity's limits (when it has any) until it leaves.
    admitted: Option<Box<crate::admission::identities::Admitted>>,
}

impl Client {
    /// Its connection id (kept once, in its registry entry).
    fn id(&self) -> u64 {
        self.reg.info.facts.id
    }
}

/// A transaction-mode client's LISTEN state.
struct Listening {
    channels: Vec<String>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    /// Notifications that arrived during a transaction, delivered after it.
    held: Vec<bytes::Bytes>,
}

struct Pooled {
    params: SessionParams,
    pool: Arc<Pool>,
    cancel: Registration,
    server: Option<ServerConn>,
    reg: Registered,
    bearer: Option<Box<crate::identity::claims::Bearer>>,
    demand: crate::backend::Demand,
    admitted: Option<Box<crate::admission::identities::Admitted>>,
    /// What the client sent behind its last authentication message: its first messages.
    early: BytesMut,
}

/// Serves one accepted connection to its end. Never panics on client input; every refusal is
/// an ErrorResponse and a log line. The socket and address come boxed: what a task's future
/// takes as arguments it keeps room for all its life, and login consumes these.
pub async fn serve(app: Arc<App>, accepted: Box<Accepted>, mode: PoolMode, id: u64) {
    // Counted until the audit line of its end is queued, so shutdown's flush includes it.
    let over_limit = !app.admit_client(mode);
    let _count = scopeguard(&app, mode);
    // Nothing of the audit log is built when it is off: this runs per connection. Its lines
    // are written by boxed futures, so they do not size every client's task.
    let mut ended = Ended::default();
    if app.audit.enabled() {
        ended.audit = Some(Box::new(Audited::default()));
        Box::pin(audit_accepted(&app, &accepted.1, mode, id, &mut ended)).await;
    }
    // The login's state (TLS, SCRAM, the startup packet) is boxed so it is freed after login
    // instead of sizing every client's task; so is the ending. The span covers the login
    // only: a live span holds a slot in the log registry for the client's life.
    let ready = Box::pin(
        serve_inner(&app, accepted, mode, id, over_limit, &mut ended)
            .instrument(conn_span(id, mode)),
    )
    .await;
    match ready {
        Some(conn) => {
            if live(&app, conn, ended).await {
                // Parked: the lot keeps it counted against max_client_conn.
                std::mem::forget(_count);
            }
        }
        None => {
            if let Some(a) = ended.audit {
                Box::pin(audit_disconnected(&app, id, *a)).await;
            }
        }
    }
}

/// The relay loop and the client's end; true when the client was parked instead (it then
/// lives on in the parking lot, and this task ends).
async fn live(app: &Arc<App>, mut conn: Box<(Client, Relay)>, mut ended: Ended) -> bool {
    // The relay loop and the ending run outside the login's span: entering it on every poll
    // cost more than the rest of a transaction's bookkeeping, and making it again for the
    // ending cost 3,000 instructions per connection. Their log lines carry `conn`.
    let (client, relay) = &mut *conn;
    let id = client.id();
    if run(app, client, relay).await == Exit::Park {
        match park::park(app, conn, ended) {
            Ok(()) => return true,
            // Its socket is lost: it ends here.
            Err(back) => (conn, ended) = back,
        }
    }
    let (_, relay) = &mut *conn;
    relay.meter.flush();
    ended.add_bytes(&relay.meter);
    let (client, relay) = *conn;
    Box::pin(finish(app, client, relay)).await;
    if let Some(a) = ended.audit {
        Box::pin(audit_disconnected(app, id, *a)).await;
    }
    false
}

/// A connection as its listener accepted it: the stream, the client's address, and the
/// listener's `region` (boxed: only the login needs it).
pub type Accepted = (Stream, Peer, Option<Arc<str>>);

/// The span of a connection's login lines (later lines carry `conn` as a field).
fn conn_span(id: u64, mode: PoolMode) -> tracing::Span {
    tracing::info_span!("conn", id, mode = mode.as_str())
}

/// What the audit log reports of a connection; nothing is kept when it is off.
#[derive(Default)]
struct Ended {
    audit: Option<Box<Audited>>,
}

#[derive(Default)]
struct Audited {
    started: Option<std::time::Instant>,
    addr: String,
    /// (user, database) from the startup packet, once read.
    who: Option<(String, String)>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Ended {
    /// Adds what `meter` counted (one stretch of the client's life between parks).
    fn add_bytes(&mut self, meter: &Meter) {
        if let Some(a) = &mut self.audit {
            let (i, o) = meter.bytes();
            a.bytes_in += i;
            a.bytes_out += o;
        }
    }

    /// Records the startup packet's user and database for the audit line.
    fn who(&mut self, user: &str, database: &str) {
        if let Some(a) = &mut self.audit {
            a.who = Some((user.to_owned(), database.to_owned()));
        }
    }
}

async fn audit_accepted(app: &App, peer: &Peer, mode: PoolMode, id: u64, ended: &mut Ended) {
    let Some(a) = &mut ended.audit else { return };
    let (addr, port) = match peer {
        Peer::Tcp(a) => (a.ip().to_string(), a.port()),
        Peer::Unix => ("unix".to_owned(), 0),
    };
    a.started = Some(std::time::Instant::now());
    let fields = serde_json::json!({ "addr": addr, "port": port, "listener": mode.as_str() });
    a.addr = addr;
    app.audit.event("accepted", id, fields).await;
}

async fn audit_disconnected(app: &App, id: u64, a: Audited) {
    let mut fields = serde_json::json!({
        "addr": a.addr,
        "duration_ms": a.started.map_or(0, |t| t.elapsed().as_millis() as u64),
        "bytes_in": a.bytes_in,
        "bytes_out": a.bytes_out,
    });
    if let Some((user, database)) = a.who {
        fields["user"] = user.into();
        fields["database"] = database.into();
    }
    app.audit.event("disconnected", id, fields).await;
}

/// Admission, login (within client_login_timeout) and the relay's set-up; None when the
/// connection ended there (refused, a cancel request, the admin console's session).
async fn serve_inner(
    app: &Arc<App>,
    accepted: Box<Accepted>,
    mode: PoolMode,
    id: u64,
    over_limit: bool,
    ended: &mut Ended,
) -> Option<Box<(Client, Relay)>> {
    let (stream, peer, region) = *accepted;
    // Address rules and per-address limits first, before any TLS or SCRAM work is spent.
    let address_slot = match admit_address(app, &peer) {
        Ok(slot) => slot,
        Err(e) => {
            app.metrics.client_error(&e.code);
            app.audit
                .event("refused", id, crate::audit::refusal(&e.code, &e.message))
                .await;
            let mut stream = stream;
            let mut out = BytesMut::new();
            e.encode(&mut out);
            let _ = stream.send(&out).await;
            return None;
        }
    };
    let app = app.clone();
    let arrival = Arrival {
        peer: &peer,
        mode,
        region,
        over_limit,
        id,
        tls: None,
    };
    let (mut stream, outcome) = timed_login(&app, stream, arrival, ended).await?;
    if ended.audit.is_some() {
        audit_login(&app, id, mode, &outcome, ended).await;
    }
    let l = match outcome {
        LoginOutcome::Pooled(l) => l,
        LoginOutcome::Console(console) => {
            crate::admin::serve(&app, &mut stream, console, id).await;
            return None;
        }
        LoginOutcome::Quiet => return None,
        LoginOutcome::Refused(err) => {
            app.metrics.client_error(&err.code);
            let mut out = BytesMut::new();
            err.encode(&mut out);
            let _ = stream.send(&out).await;
            return None;
        }
    };
    let client = Client {
        _address_slot: address_slot,
        reg: l.reg,
        stream,
        state: ClientSession {
            params: l.params,
            statements: Default::default(),
        },
        listening: None,
        pool: l.pool,
        cancel: l.cancel,
        server: l.server,
        handover: None,
        bearer: l.bearer,
        demand: l.demand,
        admitted: l.admitted,
    };
    let mut relay = new_relay(&app, &client, mode, None);
    relay.meter.audit = statement_audit(&app, &client);
    if !l.early.is_empty() {
        relay.client_buffer().extend_from_slice(&l.early);
        relay.meter.received(l.early.len());
    }
    if let Some(server) = &client.server {
        link(&client, server);
    }
    // Boxed: the task then holds a pointer, never a second copy of what it moves.
    Some(Box::new((client, relay)))
}

/// A relay for `client` as the configuration says now (at login), or with the statement
/// limits `prepared` it had when it parked (max_prepared, max_client_statements: read once,
/// at login).
fn new_relay(app: &App, client: &Client, mode: PoolMode, prepared: Option<[u32; 2]>) -> Relay {
    let [max_prepared, max_client] = prepared.unwrap_or_else(|| {
        let g = &app.config.load().general;
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        [
            u32_of(g.max_prepared_statements),
            u32_of(g.max_client_prepared_statements),
        ]
    });
    let mut relay = Relay::new(mode == PoolMode::Transaction, max_prepared as usize);
    relay.max_client_statements = max_client;
    relay.meter = Meter::new(Some(client.pool.sinks(&app.queries)));
    relay.meter.names_in_relay = relay.max_prepared > 0;
    relay
}

/// A line per statement in the audit log, for an identity configured so.
fn statement_audit(app: &App, client: &Client) -> Option<Box<crate::stats::meter::StatementAudit>> {
    let identity = &client.bearer.as_ref()?.identity;
    if !identity.audit_statements {
        return None;
    }
    let sink = app.audit.sink()?;
    Some(Box::new(crate::stats::meter::StatementAudit::new(
        sink,
        client.id(),
        Arc::from(&*identity.name),
    )))
}

/// The handshake and login within client_login_timeout; None when the time ran out or a
/// failed TLS handshake consumed the socket.
async fn timed_login(
    app: &Arc<App>,
    stream: Stream,
    mut arrival: Arrival<'_>,
    ended: &mut Ended,
) -> Option<(Stream, LoginOutcome)> {
    let (id, peer) = (arrival.id, arrival.peer);
    let login_timeout = app.config.load().general.client_login_timeout.enabled();
    let login = async {
        let mut out = BytesMut::with_capacity(512);
        let mut early = BytesMut::new();
        let (stream, tls, hello) = handshake::read_hello(
            stream,
            app.tls.config(),
            &app.metrics,
            (&mut out, &mut early),
        )
        .await;
        let mut stream = stream?;
        if let (Some(t), true) = (&tls, ended.audit.is_some()) {
            let fields = serde_json::json!({
                "version": stream.tls_description(),
                "sni": t.sni,
                "kind": if t.direct { "direct" } else { "sslrequest" },
            });
            app.audit.event("tls", id, fields).await;
        }
        if let Ok(Hello::Startup(s)) = &hello {
            ended.who(&s.user, &s.database);
        }
        arrival.tls = tls;
        let r = login(app, &mut stream, arrival, hello, (out, early)).await;
        Some((stream, r))
    };
    match login_timeout {
        Some(t) => tokio::time::timeout(t, login).await.unwrap_or_else(|_| {
            tracing::info!(conn = id, %peer, "client_login_timeout: closing");
            None
        }),
        None => login.await,
    }
}

/// The audit log's line for a login: who authenticated, or why it was refused.
async fn audit_login(app: &App, id: u64, mode: PoolMode, outcome: &LoginOutcome, ended: &Ended) {
    let fields = match outcome {
        LoginOutcome::Console(c) => serde_json::json!({
            "user": c.user, "database": crate::ADMIN_DATABASE, "console": true,
        }),
        LoginOutcome::Pooled(l) => {
            let facts = &l.reg.info.facts;
            let mut fields = serde_json::json!({
                "user": &*facts.user,
                "database": facts.database(),
                "pool": l.pool.key.to_string(),
                "method": facts.auth_method.as_str(),
                "mode": mode.as_str(),
                "priority": l.pool.settings().fairness.classes.name(facts.priority),
            });
            if let Some(i) = &facts.identity {
                // Who, never the token or key itself.
                fields["identity"] = (*i.name).into();
                fields["subject"] = (*i.subject).into();
                fields["role"] = (*i.role).into();
                fields["issuer"] = i.issuer.as_deref().into();
            }
            fields
        }
        LoginOutcome::Refused(err) => {
            let mut fields = crate::audit::refusal(&err.code, &err.message);
            if let Some((user, database)) = ended.audit.as_ref().and_then(|a| a.who.as_ref()) {
                fields["user"] = user.as_str().into();
                fields["database"] = database.as_str().into();
            }
            app.audit.event("refused", id, fields).await;
            return;
        }
        LoginOutcome::Quiet => return,
    };
    app.audit.event("authenticated", id, fields).await;
}

/// Records in SHOW CLIENTS/SERVERS that `server` now serves the client.
fn link(c: &Client, server: &ServerConn) {
    c.reg.info.linked(server.id);
    server.info.linked(c.id(), crate::stats::unix_micros());
}

/// Decrements the client count when the connection ends, however it ends.
fn scopeguard(app: &Arc<App>, mode: PoolMode) -> impl Drop + '_ {
    struct Guard<'a>(&'a App, PoolMode);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.release_client(self.1);
        }
    }
    Guard(app, mode)
}

/// A connected client's task state (boxed as one, see `serve`): kept within jemalloc's
/// 768-byte size class, since every unparked idle client pays it (728 bytes today).
const _: () = assert!(std::mem::size_of::<(Client, Relay)>() <= 768);
