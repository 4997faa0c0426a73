//! One client's life: handshake, login, choosing its pool, the greeting, then the relay loop
//! in session or transaction mode, and cleanup that never leaves a transaction open upstream.

use super::access;
use super::cancel::Registration;
use super::handshake::{self, HandshakeError, Hello};
use super::login::{self, LoginError};
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
use crate::net::listener::Peer;
use crate::net::{Addr, Stream};
use crate::proto::emit;
use crate::relay::{ClientState, Event, Phase, Relay};
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
    state: ClientState,
    /// Transaction mode LISTEN; made by the first LISTEN.
    listening: Option<Box<Listening>>,
    pool: Arc<Pool>,
    cancel: Registration,
    server: Option<ServerConn>,
    id: u64,
    /// The hand-over statement last built for this client (transaction mode).
    handover: Option<Box<Handover>>,
}

/// A transaction-mode client's LISTEN state.
struct Listening {
    channels: Vec<String>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    /// Notifications that arrived during a transaction, delivered after it.
    held: Vec<bytes::Bytes>,
}

/// What login established, before the stream joins it.
enum LoggedIn {
    Pooled(Box<Pooled>),
    /// The admin console (`pgsluice` or `pgbouncer` database).
    Console(crate::admin::Console),
}

struct Pooled {
    params: SessionParams,
    pool: Arc<Pool>,
    cancel: Registration,
    server: Option<ServerConn>,
    reg: Registered,
}

/// Serves one accepted connection to its end. Never panics on client input; every refusal is
/// an ErrorResponse and a log line. The socket and address come boxed: what a task's future
/// takes as arguments it keeps room for all its life, and login consumes these.
pub async fn serve(app: Arc<App>, accepted: Box<(Stream, Peer)>, mode: PoolMode, id: u64) {
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
    let span = conn_span;
    // The login's state (TLS, SCRAM, the startup packet) is boxed so it is freed after login
    // instead of sizing every client's task; so is the ending. The span too is made twice
    // rather than kept: a live span holds a slot in the log registry for the client's life.
    let ready = Box::pin(
        serve_inner(&app, accepted, mode, id, over_limit, &mut ended).instrument(span(id, mode)),
    )
    .await;
    if let Some(mut conn) = ready {
        // The relay loop runs outside the span: entering it on every poll cost more than the
        // rest of a transaction's bookkeeping. Its log lines carry `conn` as a field.
        let (client, relay) = &mut *conn;
        run(&app, client, relay).await;
        relay.meter.flush();
        if let Some(a) = &mut ended.audit {
            (a.bytes_in, a.bytes_out) = relay.meter.bytes();
        }
        let (client, relay) = *conn;
        Box::pin(finish(&app, client, relay).instrument(span(id, mode))).await;
    }
    if let Some(a) = ended.audit {
        Box::pin(audit_disconnected(&app, id, *a)).await;
    }
}

/// The span of a connection's login and ending lines.
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

async fn serve_inner(
    app: &Arc<App>,
    accepted: Box<(Stream, Peer)>,
    mode: PoolMode,
    id: u64,
    over_limit: bool,
    ended: &mut Ended,
) -> Option<Box<(Client, Relay)>> {
    let (stream, peer) = *accepted;
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
    let login_timeout = app.config.load().general.client_login_timeout.enabled();
    let login = async {
        let mut out = BytesMut::with_capacity(512);
        let (stream, tls, hello) =
            handshake::read_hello(stream, app.tls.config(), &app.metrics, &mut out).await;
        // None: a failed TLS handshake consumed the socket.
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
        let arrival = Arrival {
            peer: &peer,
            mode,
            over_limit,
            id,
            tls,
        };
        let r = login(&app, &mut stream, arrival, hello, out).await;
        Some((stream, r))
    };
    let outcome = match login_timeout {
        Some(t) => tokio::time::timeout(t, login).await.unwrap_or_else(|_| {
            tracing::info!(conn = id, %peer, "client_login_timeout: closing");
            None
        }),
        None => login.await,
    };
    let (mut stream, result) = outcome?;
    if let (Ok(Some(logged_in)), true) = (&result, ended.audit.is_some()) {
        let fields = match logged_in {
            LoggedIn::Console(c) => serde_json::json!({
                "user": c.user, "database": crate::ADMIN_DATABASE, "console": true,
            }),
            LoggedIn::Pooled(l) => serde_json::json!({
                "user": &*l.reg.info.facts.user,
                "database": l.reg.info.facts.database(),
                "pool": l.pool.key.to_string(),
                "method": l.reg.info.facts.auth_method,
                "mode": mode.as_str(),
            }),
        };
        app.audit.event("authenticated", id, fields).await;
    }
    let client = match result {
        Ok(Some(LoggedIn::Console(console))) => {
            crate::admin::serve(&app, &mut stream, console, id).await;
            return None;
        }
        Ok(Some(LoggedIn::Pooled(l))) => Client {
            _address_slot: address_slot,
            reg: l.reg,
            stream,
            state: ClientState {
                params: l.params,
                statements: Default::default(),
            },
            listening: None,
            pool: l.pool,
            cancel: l.cancel,
            server: l.server,
            id,
            handover: None,
        },
        Ok(None) => return None,
        Err(err) => {
            if let Some(err) = err {
                app.metrics.client_error(&err.code);
                let mut fields = crate::audit::refusal(&err.code, &err.message);
                if let Some((user, database)) = ended.audit.as_ref().and_then(|a| a.who.as_ref()) {
                    fields["user"] = user.as_str().into();
                    fields["database"] = database.as_str().into();
                }
                app.audit.event("refused", id, fields).await;
                let mut out = BytesMut::new();
                err.encode(&mut out);
                let _ = stream.send(&out).await;
            }
            return None;
        }
    };
    let (max_prepared, max_client) = {
        let g = &app.config.load().general;
        (g.max_prepared_statements, g.max_client_prepared_statements)
    };
    let mut relay = Relay::new(mode == PoolMode::Transaction, max_prepared);
    relay.max_client_statements = u32::try_from(max_client).unwrap_or(u32::MAX);
    relay.meter = Meter::new(Some(client.pool.sinks(&app.queries)));
    if let Some(server) = &client.server {
        link(&client, server);
    }
    // Boxed: the task then holds a pointer, never a second copy of what it moves.
    Some(Box::new((client, relay)))
}

/// Who logged in, for [`register`].
struct Who<'a> {
    user: &'a str,
    pool: &'a Pool,
    params: &'a SessionParams,
    method: &'static str,
    sni: Option<String>,
}

/// Adds an authenticated client to SHOW CLIENTS (before it waits for its first server, so
/// a session-mode client queued at login shows as waiting).
fn register(
    app: &App,
    stream: &Stream,
    peer: &Peer,
    mode: PoolMode,
    id: u64,
    who: Who<'_>,
) -> Registered {
    let Who {
        user,
        pool,
        params,
        method,
        sni,
    } = who;
    let (addr, port) = match peer {
        Peer::Tcp(a) => (Addr::Ip(a.ip()), a.port()),
        Peer::Unix => (Addr::Unix, 0),
    };
    let (local_addr, local_port) = stream.local_addr();
    let description = stream.tls_description();
    let tls = if description.is_empty() && sni.is_none() {
        None
    } else {
        Some(Box::new(TlsFacts { description, sni }))
    };
    let facts = ClientFacts {
        id,
        user: match &pool.key.role {
            r if **r == *user => r.clone(),
            _ => user.into(),
        },
        pool: pool.key.clone(),
        addr,
        port,
        local_addr,
        local_port,
        tls,
        application_name: params.reported.get("application_name").unwrap_or("").into(),
        auth_method: method,
        pool_mode: mode.as_str(),
    };
    app.clients.register(facts, Some(stream.raw_fd()))
}

/// Records in SHOW CLIENTS/SERVERS that `server` now serves the client.
fn link(c: &Client, server: &ServerConn) {
    c.reg.info.linked(server.id);
    server.info.linked(c.id, crate::stats::unix_micros());
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

/// The global address lists and the per-address limits, at accept.
fn admit_address(
    app: &App,
    peer: &Peer,
) -> Result<crate::admission::limits::AddressSlot, ClientError> {
    let config = app.config.load();
    let g = &config.general;
    let addr = peer.ip();
    if !crate::config::addresses::permitted(&g.allow_addresses, &g.deny_addresses, addr) {
        tracing::info!(%peer, "refused by allow_addresses/deny_addresses");
        return Err(ClientError::address_refused());
    }
    app.limits.admit(&config.limits, addr).map_err(|r| {
        tracing::info!(%peer, reason = r.as_str(), "refused by a per-address limit");
        r.to_client()
    })
}

/// Counts a failed authentication against the client's address (lockout after too many).
fn note_auth_failure(
    app: &App,
    config: &crate::config::Config,
    addr: Option<std::net::IpAddr>,
    user: &str,
) {
    if app.limits.auth_failed(&config.limits, addr) {
        tracing::warn!(addr = ?addr, user, "too many failed authentications: address locked out");
    }
}

/// How a connection arrived, for [`login`].
struct Arrival<'a> {
    peer: &'a Peer,
    mode: PoolMode,
    over_limit: bool,
    id: u64,
    tls: Option<handshake::TlsInfo>,
}

/// Handshake, authentication and the greeting. `Ok(None)`: the connection ended quietly
/// (a cancel request, or a client that left); `Err`: refuse with this error.
async fn login(
    app: &Arc<App>,
    stream: &mut Stream,
    arrival: Arrival<'_>,
    hello: Result<Hello, HandshakeError>,
    mut out: BytesMut,
) -> Result<Option<LoggedIn>, Option<ClientError>> {
    let Arrival {
        peer,
        mode,
        over_limit,
        id,
        tls,
    } = arrival;
    let startup = match hello {
        Ok(Hello::Startup(s)) => s,
        Ok(Hello::Cancel { pid, secret }) => {
            let found = app.cancels.cancel(pid, &secret).await;
            tracing::debug!(conn = id, %peer, pid, found, "cancel request");
            return Ok(None);
        }
        Err(HandshakeError::Incomplete) => {
            tracing::debug!(conn = id, %peer, "incomplete startup packet");
            return Ok(None);
        }
        Err(HandshakeError::Silent(why)) => {
            tracing::info!(conn = id, %peer, error = why, "startup refused: closing without a reply, as PostgreSQL does");
            app.metrics.client_error("08P01");
            return Ok(None);
        }
        Err(HandshakeError::Refused(e)) => {
            tracing::info!(conn = id, %peer, error = %e, "startup refused");
            return Err(Some(e));
        }
    };
    let refuse = |e: ClientError| {
        tracing::info!(conn = id, %peer, user = %startup.user, database = %startup.database, error = %e, "connection refused");
        Err(Some(e))
    };
    if over_limit {
        return refuse(ClientError::too_many_clients());
    }
    let tls_mode = app.config.load().tls.as_ref().map(|t| t.mode);
    if tls_mode == Some(ClientTlsMode::Require) && tls.is_none() && matches!(peer, Peer::Tcp(_)) {
        return refuse(ClientError::not_authorized(
            "pgsluice requires TLS for this connection: connect with sslmode=require",
        ));
    }
    if startup.replication {
        return refuse(ClientError::unsupported(
            "replication connections are not supported by pgsluice",
        ));
    }
    let config = app.config.load_full();
    let addr = peer.ip();
    let check = match access::before_auth(
        &config,
        addr,
        tls.is_some(),
        &startup.user,
        &startup.database,
    ) {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    // Not in [[users]]: maybe upstream knows it (auth_query).
    let looked_up = match (
        config.user(&startup.user),
        config.database(&startup.database),
    ) {
        (None, Some(db)) if !crate::admin::is_console(&startup.database) => {
            match super::passthrough::lookup(app, &config, db, &startup.user).await {
                Ok(u) => u,
                Err(e) => return refuse(e),
            }
        }
        _ => None,
    };
    let user = config.user(&startup.user).or(looked_up.as_ref());
    let secret = user.map(|u| crate::auth::Secret::parse(&u.password));
    let mut client_key = None;
    let mut relooked = None;
    let proved = match check {
        access::Check::Password(preferred) => {
            match login::authenticate(
                app,
                stream,
                &mut out,
                &startup.user,
                secret.as_ref(),
                preferred,
            )
            .await
            {
                Ok(p) => {
                    client_key = p.client_key;
                    Ok(p.method.as_str())
                }
                Err(LoginError::Gone) => {
                    tracing::debug!(conn = id, %peer, user = %startup.user, "client left during authentication");
                    return Ok(None);
                }
                Err(LoginError::Refused(e)) => Err(e),
                Err(LoginError::Md5Mismatch(e, answer)) if looked_up.is_some() => {
                    // The cached secret may be stale: look the user up again before refusing.
                    app.auth_cache.forget(&startup.database, &startup.user);
                    relooked = recheck_md5(app, &config, &startup, &answer).await;
                    match relooked {
                        Some(_) => {
                            emit::auth_ok(&mut out);
                            Ok("md5")
                        }
                        None => Err(e),
                    }
                }
                Err(LoginError::Md5Mismatch(e, _)) => Err(e),
            }
        }
        access::Check::Trust => Ok("trust"),
        access::Check::Cert => {
            if access::certificate_user(stream).as_deref() == Some(startup.user.as_str()) {
                Ok("cert")
            } else {
                Err(ClientError::not_authorized(format!(
                    "certificate authentication failed for user \"{}\"",
                    startup.user
                )))
            }
        }
    };
    let user = relooked.as_ref().or(user);
    let method = match (proved, user) {
        (Ok(m), Some(_)) => m,
        (Err(e), _) => {
            note_auth_failure(app, &config, addr, &startup.user);
            if looked_up.is_some() {
                app.auth_cache.forget(&startup.database, &startup.user);
            }
            return refuse(e);
        }
        (Ok(m), None) => {
            // trust or cert for a user pgsluice has no credentials for.
            note_auth_failure(app, &config, addr, &startup.user);
            return refuse(ClientError::auth_failed(&startup.user, m));
        }
    };
    let Some(user) = user else {
        return refuse(ClientError::auth_failed(&startup.user, "password"));
    };
    if matches!(check, access::Check::Trust | access::Check::Cert) {
        app.metrics.auth_result(method, true);
        emit::auth_ok(&mut out);
    }
    if let Err(e) = access::after_auth(user, addr) {
        return refuse(e);
    }
    if crate::admin::is_console(&startup.database) {
        return match crate::admin::Console::admit(&config, &user.name) {
            Some(console) => {
                crate::admin::greet(&mut out);
                if stream.send(&out).await.is_err() {
                    return Ok(None);
                }
                tracing::info!(conn = id, %peer, user = %user.name, "admin console login");
                Ok(Some(LoggedIn::Console(console)))
            }
            None => refuse(ClientError::not_authorized(format!(
                "user \"{}\" may not use the admin console",
                user.name
            ))),
        };
    }
    if app.pools.is_disabled(&startup.database) {
        return refuse(ClientError::database_disabled(&startup.database));
    }
    let Some(db) = config.database(&startup.database) else {
        return refuse(ClientError::unknown_database(&startup.database));
    };
    let pool = app.pools.pool_for(&config, db, user, client_key);
    let mut params = SessionParams::from_startup(&startup.params);
    if config.general.application_name_add_host {
        let name = params
            .reported
            .get("application_name")
            .unwrap_or("")
            .to_owned();
        params.reported.set(
            "application_name",
            &format!("{name} - {}", peer.host_port()),
        );
    }

    let reg = register(
        app,
        stream,
        peer,
        mode,
        id,
        Who {
            user: &user.name,
            pool: &pool,
            params: &params,
            method,
            sni: tls.as_ref().and_then(|t| t.sni.clone()),
        },
    );

    // The greeting reports what a direct connection would: in session mode the server's own
    // values after applying the client's startup parameters; in transaction mode the same,
    // learned from a pool connection when the client asks for anything non-default.
    let (server, cancel) = match mode {
        PoolMode::Session => {
            let mut server = checkout_idle_wait(&pool, &reg).await.map_err(Some)?;
            server.hand_to(id, config.general.handover_reset);
            if let Err(e) = sync(&mut server, &params).await {
                return refuse(e);
            }
            params = server.params.clone();
            let reg = app.cancels.register(Some(server.pid));
            reg.handle.attach(server.cancel_target());
            (Some(server), reg)
        }
        PoolMode::Transaction => {
            let defaults = match pool.defaults() {
                Some(d) => d,
                None => {
                    let s = checkout_idle_wait(&pool, &reg).await.map_err(Some)?;
                    let d = s.params.clone();
                    pool.release(s);
                    d
                }
            };
            let mut merged = defaults.clone();
            for (k, v) in params.reported.iter() {
                merged.reported.set(k, v);
            }
            merged.unreported = params.unreported.clone();
            // Only a server can say how it spells what the client asked for, except for an
            // application_name it keeps as sent (libpq clients send one on every login).
            if sync_statement(&merged, &defaults).is_some()
                && !reported_verbatim(&merged, &defaults)
            {
                let mut server = checkout_idle_wait(&pool, &reg).await.map_err(Some)?;
                server.hand_to(id, config.general.handover_reset);
                if let Err(e) = sync(&mut server, &merged).await {
                    return refuse(e);
                }
                merged.reported = server.params.reported.clone();
                pool.release(server);
            }
            params = merged;
            (None, app.cancels.register(None))
        }
    };
    for (k, v) in params.reported.iter() {
        emit::parameter_status(&mut out, k, v);
    }
    emit::backend_key_data(&mut out, cancel.pid, cancel.secret);
    reg.info.set_remote_pid(cancel.pid);
    emit::ready_for_query(&mut out, b'I');
    if stream.send(&out).await.is_err() {
        return Ok(None);
    }
    tracing::info!(conn = id, %peer, user = %user.name, database = %db.name, mode = mode.as_str(), method, "client logged in");
    Ok(Some(LoggedIn::Pooled(Box::new(Pooled {
        params,
        pool,
        cancel,
        server,
        reg,
    }))))
}

/// An auth_query user's md5 answer checked against its secret looked up afresh; the new
/// entry when it proves the password.
async fn recheck_md5(
    app: &App,
    config: &crate::config::Config,
    startup: &crate::proto::startup::Startup,
    answer: &login::Md5Answer,
) -> Option<crate::config::User> {
    let db = config.database(&startup.database)?;
    let user = super::passthrough::lookup(app, config, db, &startup.user)
        .await
        .ok()
        .flatten()?;
    answer
        .proves(&crate::auth::Secret::parse(&user.password))
        .then_some(user)
}

/// Login-time checkout: no cancel key exists yet, so nothing can cancel the wait.
async fn checkout_idle_wait(pool: &Arc<Pool>, reg: &Registered) -> Result<ServerConn, ClientError> {
    let never = tokio::sync::Notify::new();
    let notified = pin!(never.notified());
    reg.info.waiting(crate::stats::unix_micros());
    let r = pool.checkout(notified).await.map_err(|e| e.to_client());
    reg.info.linked(0);
    r
}

/// Makes `server` carry the client's session parameters, after the hand-over reset when it is
/// due (in the same round trip). A server that failed is dropped by the caller (via the error
/// path), so it never carries half-applied settings.
async fn sync(server: &mut ServerConn, want: &SessionParams) -> Result<(), ClientError> {
    let set = sync_statement(want, server.sync_base());
    let sql = match (std::mem::take(&mut server.reset_pending), set) {
        (false, None) => return Ok(()),
        (false, Some(set)) => set,
        (true, None) => HANDOVER_RESET.to_string(),
        (true, Some(set)) => format!("{HANDOVER_RESET}; {set}"),
    };
    match Box::pin(server.run_internal(&sql, INTERNAL_TIMEOUT)).await {
        Ok(()) => {
            server.params.unreported = want.unreported.clone();
            Ok(())
        }
        Err(InternalError::Server(e)) => Err(ClientError {
            severity: emit::Severity::Fatal,
            ..e
        }),
        Err(InternalError::Io(_)) => Err(ClientError::server_lost()),
    }
}

/// The relay loop with its timers, until the client or its server goes.
async fn run(app: &App, c: &mut Client, relay: &mut Relay) {
    // Read once, and the config guard not kept: the loop lives as long as the client.
    let (client_idle, idle_tx, query_timeout) = {
        let general = &app.config.load().general;
        relay.stall_timeout = general.client_stall_timeout.enabled();
        relay.handover_reset = general.handover_reset;

        (
            general.client_idle_timeout.enabled(),
            general.idle_transaction_timeout.enabled(),
            general.query_timeout.enabled(),
        )
    };
    relay.watch_phase = client_idle.is_some() || idle_tx.is_some() || query_timeout.is_some();
    let mut phase = Phase::Idle;
    // Made only when a timeout is configured: a timer is about a tenth of an idle client.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut timer_armed = false;
    if let Some(t) = client_idle {
        arm(&mut timer, t);
        timer_armed = true;
    }
    loop {
        // biased: no random branch order per poll (a relay event never starves the timer: the
        // timer is polled whenever the relay waits).
        let event = tokio::select! {
            biased;
            ev = poll_fn(|cx| relay.poll_relay(cx, &mut c.stream, c.server.as_mut(), &mut c.state)) => ev,
            Some(n) = next_notification(&mut c.listening) => {
                // PostgreSQL delivers notifications between transactions; so does the hub.
                if c.server.is_none() {
                    relay.queue_for_client(|b| b.extend_from_slice(&n));
                } else {
                    if let Some(l) = &mut c.listening {
                        l.held.push(n);
                    }
                }
                continue;
            }
            _ = fired(&mut timer), if timer_armed => {
                timer_armed = false;
                match phase {
                    Phase::Idle => {
                        Box::pin(tell_and_close(app, c, relay, ClientError::client_idle_timeout())).await;
                        return;
                    }
                    Phase::InTransaction => {
                        Box::pin(tell_and_close(app, c, relay, ClientError::idle_transaction_timeout())).await;
                        return;
                    }
                    Phase::Busy => {
                        tracing::info!(conn = c.id, "query_timeout: canceling the running statement");
                        Box::pin(c.cancel.handle.fire()).await;
                        continue;
                    }
                }
            }
        };
        match event {
            Event::Phase(p) => {
                phase = p;
                let limit = match p {
                    Phase::Idle => client_idle,
                    Phase::InTransaction => idle_tx,
                    Phase::Busy => query_timeout,
                };
                timer_armed = limit.is_some();
                if let Some(t) = limit {
                    arm(&mut timer, t);
                }
            }
            Event::NeedServer => {
                // The usual case awaits nothing: an idle server that already carries the
                // client's settings. Waiting, syncing and failing are boxed, so their state
                // is not part of every client's task.
                let mut idle = c.pool.try_idle(c.id);
                let ready = idle
                    .as_mut()
                    .is_some_and(|s| ready_in_pipeline(c, relay, s));
                let attached = match idle {
                    Some(server) if ready => {
                        install(c, relay, server);
                        true
                    }
                    idle => Box::pin(attach(app, c, relay, idle)).await,
                };
                if !attached {
                    return;
                }
            }
            Event::Release { clean, resync } => {
                if let Some(server) = c.server.take() {
                    relay.reset_server_side();
                    let no_cancel_in_flight = c.cancel.handle.detach();
                    let reusable = clean && no_cancel_in_flight;
                    if reusable && resync {
                        // Boxed with the server it owns: not part of every client's task.
                        Box::pin(release_after_read_back(c, relay, server)).await;
                    } else {
                        return_server(c, relay, server, reusable);
                    }
                }
            }
            Event::Listen(cmd) => Box::pin(listen(app, c, relay, cmd)).await,
            Event::ClientGone if c.reg.info.was_killed() => {
                tracing::info!(conn = c.id, "client killed from the admin console");
                Box::pin(tell_and_close(app, c, relay, ClientError::admin_shutdown())).await;
                return;
            }
            Event::ClientStalled => {
                // It cannot be told (it reads nothing); the log, the metric and the audit
                // line say why, and its statement is canceled as it goes.
                tracing::warn!(
                    conn = c.id,
                    "client took none of its results for client_stall_timeout: closing it"
                );
                app.metrics.client_error("08006");
                return;
            }
            Event::ClientTerminated | Event::ClientGone => {
                tracing::debug!(conn = c.id, ?event, "client finished");
                return;
            }
            Event::ServerGone => {
                tracing::info!(conn = c.id, "server connection lost");
                let fatal = relay.server_sent_fatal();
                c.server = None;
                c.cancel.handle.detach();
                // A message the server was in the middle of is never completed with other
                // bytes: then the client sees the connection end, as with PostgreSQL itself.
                if !fatal && !relay.server_mid_message() {
                    relay.queue_for_client(|b| ClientError::server_lost().encode(b));
                }
                let _ = Box::pin(relay.flush_client(&mut c.stream)).await;
                return;
            }
            Event::HandoverFailed => {
                tracing::warn!(
                    conn = c.id,
                    "hand-over reset interrupted: closing the client and the server"
                );
                c.server = None;
                c.cancel.handle.detach();
                relay.queue_for_client(|b| ClientError::handover_failed().encode(b));
                let _ = Box::pin(relay.flush_client(&mut c.stream)).await;
                return;
            }
            Event::Protocol(e) => {
                tracing::info!(conn = c.id, error = %e, "client protocol violation");
                Box::pin(tell_and_close(app, c, relay, e)).await;
                return;
            }
        }
    }
}

/// Sets the client's timer to go off `after` from now.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration) {
    let at = Instant::now() + after;
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(sleep_until(at))),
    }
}

/// The client's timer; only polled while armed, so it exists then.
async fn fired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next notification for a listening client; never resolves for one that is not.
async fn next_notification(listening: &mut Option<Box<Listening>>) -> Option<bytes::Bytes> {
    match listening {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Transaction mode LISTEN/UNLISTEN, answered between transactions through the hub.
async fn listen(app: &App, c: &mut Client, relay: &mut Relay, cmd: crate::sql::session::ListenCmd) {
    use crate::sql::session::ListenCmd;
    let hub = app.notify_hub(&c.pool);
    let result = match cmd {
        ListenCmd::Listen(ch) => {
            let l = c.listening.get_or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(crate::backend::notify::CLIENT_QUEUE);
                Box::new(Listening {
                    channels: Vec::new(),
                    tx,
                    rx,
                    held: Vec::new(),
                })
            });
            let r = hub.listen(&ch, c.id, l.tx.clone()).await;
            if r.is_ok() && !l.channels.contains(&ch) {
                l.channels.push(ch);
            }
            r.map(|_| "LISTEN")
        }
        ListenCmd::Unlisten(ch) => {
            hub.unlisten(&ch, c.id);
            if let Some(l) = &mut c.listening {
                l.channels.retain(|x| *x != ch);
            }
            Ok("UNLISTEN")
        }
        ListenCmd::UnlistenAll => {
            if let Some(l) = &mut c.listening {
                hub.unlisten_all(&l.channels, c.id);
                l.channels.clear();
            }
            Ok("UNLISTEN")
        }
    };
    relay.queue_for_client(|b| {
        match result {
            Ok(tag) => emit::message(b, b'C', |b| {
                b.extend_from_slice(tag.as_bytes());
                b.extend_from_slice(&[0]);
            }),
            Err(e) => ClientError {
                severity: emit::Severity::Error,
                ..e
            }
            .encode(b),
        }
        emit::ready_for_query(b, b'I');
    });
}

/// Transaction mode, after a transaction that ran SET/RESET/set_config: reads the settings
/// back from the server, so the client's own settings follow it to its next server and none
/// stays behind for the next client. False: the server must be closed instead.
async fn read_back_settings(c: &mut Client, server: &mut ServerConn, touched: Vec<String>) -> bool {
    if touched.iter().any(|n| n == "session_authorization") {
        // Another identity must never be handed to the next client; the client keeps its own.
        tracing::info!(
            conn = c.id,
            "SET SESSION AUTHORIZATION in transaction mode: closing that server"
        );
        return false;
    }
    let mut names: Vec<&str> = vec!["role"];
    for n in touched
        .iter()
        .map(String::as_str)
        .chain(c.state.params.unreported.iter().map(|(k, _)| k))
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let sql = crate::backend::params::snapshot_statement(&names);
    match server.query_pairs(&sql, INTERNAL_TIMEOUT).await {
        Ok(rows) => {
            let owned = crate::backend::params::owned_settings(rows);
            c.state.params.unreported = owned.clone();
            server.params.unreported = owned;
            true
        }
        Err(e) => {
            tracing::info!(conn = c.id, server = server.id, error = %e, "reading settings back failed: closing server");
            false
        }
    }
}

/// Transaction mode: gets a server for the client's next transaction, waiting in the pool's
/// queue while watching for the client leaving or canceling. False when the client is done.
async fn attach(app: &App, c: &mut Client, relay: &mut Relay, idle: Option<ServerConn>) -> bool {
    let result = match idle {
        Some(server) => Some(Ok(server)),
        None => wait_for_server(c, relay).await,
    };
    let Some(result) = result else { return false };
    match result {
        Ok(mut server) => {
            // As on the fast path: a reset with nothing but application_name to set goes
            // ahead of the client's message; anything more is one round trip first.
            let pipelined = ready_in_pipeline(c, relay, &mut server);
            if pipelined {
                install(c, relay, server);
                return true;
            }
            if let Err(e) = sync(&mut server, &c.state.params).await {
                let e = ClientError {
                    severity: emit::Severity::Error,
                    ..e
                };
                relay.refuse_request(&e);
                return true;
            }
            install(c, relay, server);
            true
        }
        Err(e) => {
            c.reg.info.linked(0);
            let err = e.to_client();
            tracing::info!(conn = c.id, pool = %c.pool.key, error = %e, "no server for client");
            if err.is_fatal() && !matches!(e, crate::backend::CheckoutError::Connect(_)) {
                Box::pin(tell_and_close(app, c, relay, err)).await;
                return false;
            }
            app.metrics.client_error(&err.code);
            relay.refuse_request(&ClientError {
                severity: emit::Severity::Error,
                ..err
            });
            true
        }
    }
}

/// Transaction mode, at a transaction's end: the server goes back to the pool (or is closed)
/// and notifications held during the transaction go to the client.
fn return_server(c: &mut Client, relay: &mut Relay, server: ServerConn, reusable: bool) {
    if let Some(l) = &mut c.listening {
        for n in l.held.drain(..) {
            relay.queue_for_client(|b| b.extend_from_slice(&n));
        }
    }
    c.reg.info.linked(0);
    if reusable {
        c.pool.release(server);
    } else {
        tracing::debug!(
            conn = c.id,
            server = server.id,
            "closing server instead of returning it"
        );
    }
}

async fn release_after_read_back(c: &mut Client, relay: &mut Relay, mut server: ServerConn) {
    let reusable = read_back_settings(c, &mut server, relay.take_touched()).await;
    return_server(c, relay, server, reusable);
}

/// Whether `server` can run the client's work with nothing but what the relay sends ahead of
/// it: its parameters already match, or the hand-over reset is due and at most
/// application_name (which no value makes fail) is set after it.
fn ready_in_pipeline(c: &mut Client, relay: &Relay, server: &mut ServerConn) -> bool {
    server.hand_to(c.id, relay.handover_reset);
    if server.reset_pending {
        handover_statement(c, server.sync_base()).is_some()
    } else {
        sync_statement(&c.state.params, &server.params).is_none()
    }
}

/// A client's hand-over statement against a pool's login parameters, kept while neither
/// changes: it holds clones of both, so a change to either unshares its list and the
/// pointers no longer match.
struct Handover {
    client: SessionParams,
    base: SessionParams,
    /// None: more than application_name to set, which takes a round trip.
    sql: Option<Arc<str>>,
}

/// The hand-over reset with the client's application_name after it, or None when the client
/// needs more settings than that (then `sync` does it in one round trip).
fn handover_statement(c: &mut Client, base: &SessionParams) -> Option<Arc<str>> {
    let same = |a: &SessionParams, b: &SessionParams| {
        a.reported.shares(&b.reported) && a.unreported.shares(&b.unreported)
    };
    if let Some(h) = c.handover.as_deref() {
        if same(&h.client, &c.state.params) && same(&h.base, base) {
            return h.sql.clone();
        }
    }
    let sql =
        differs_only_in_application_name(&c.state.params, base).then(|| {
            match sync_statement(&c.state.params, base) {
                Some(set) => Arc::from(format!("{HANDOVER_RESET}; {set}")),
                None => Arc::from(HANDOVER_RESET),
            }
        });
    c.handover = Some(Box::new(Handover {
        client: c.state.params.clone(),
        base: base.clone(),
        sql: sql.clone(),
    }));
    sql
}

/// Makes `server` the client's for its transaction; a hand-over reset still due goes ahead
/// of the client's first message.
fn install(c: &mut Client, relay: &mut Relay, mut server: ServerConn) {
    relay.reset_server_side();
    if server.reset_pending {
        // Callers sync first whenever the statement would not do (ready_in_pipeline); the
        // bare reset is the fallback that still isolates.
        let sql = handover_statement(c, server.sync_base());
        debug_assert!(sql.is_some(), "installed a server that needed a round trip");
        relay.send_handover_reset(sql.as_deref().unwrap_or(HANDOVER_RESET));
        server.reset_pending = false;
    }
    c.cancel.handle.attach(server.cancel_target());
    link(c, &server);
    c.server = Some(server);
}

/// The pool's queue, watching for the client leaving (None) or canceling.
async fn wait_for_server(
    c: &mut Client,
    relay: &mut Relay,
) -> Option<Result<ServerConn, crate::backend::CheckoutError>> {
    let handle = c.cancel.handle.clone();
    let mut notified = pin!(handle.wake.notified());
    notified.as_mut().enable();
    c.reg.info.waiting(crate::stats::unix_micros());
    let checkout = c.pool.checkout(notified);
    let buffered = relay.client_buffer();
    tokio::select! {
        biased;
        r = checkout => Some(r),
        _ = client_left(&mut c.stream, buffered) => None,
    }
}

/// Resolves when the client closes its socket; bytes it sends meanwhile are kept in `buf`.
async fn client_left(stream: &mut Stream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= crate::relay::MAX_BUFFERED {
            std::future::pending::<()>().await;
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn tell_and_close(app: &App, c: &mut Client, relay: &mut Relay, err: ClientError) {
    app.metrics.client_error(&err.code);
    tracing::info!(conn = c.id, error = %err, "closing client");
    if relay.client_has_unwritten() || c.server.is_none() || relay.server_reusable() {
        let _ = relay.flush_client(&mut c.stream).await;
    }
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = c.stream.send(&out).await;
}

/// After the client: a server left clean goes back (session mode: after server_reset_query);
/// one mid-transaction or mid-statement is canceled if busy and closed, so PostgreSQL rolls
/// its transaction back and no `idle in transaction` backend is left behind.
async fn finish(app: &App, c: Client, mut relay: Relay) {
    if let Some(l) = c.listening.as_ref().filter(|l| !l.channels.is_empty()) {
        app.notify_hub(&c.pool).unlisten_all(&l.channels, c.id);
    }
    let Client {
        mut server,
        pool,
        cancel,
        id,
        ..
    } = c;
    let Some(mut srv) = server.take() else { return };
    let reusable = relay.server_reusable();
    let no_cancel_in_flight = cancel.handle.detach();
    if reusable && no_cancel_in_flight {
        if relay.transaction_mode {
            pool.release(srv);
            return;
        }
        // Transaction-mode clients may have left statements on this server under names the
        // session client could have dropped: start the next user from none.
        let mut reset = app
            .config
            .load()
            .general
            .server_reset_query
            .trim()
            .to_string();
        if !srv.statements.is_empty() {
            reset = if reset.is_empty() {
                "DEALLOCATE ALL".into()
            } else {
                format!("{reset}; DEALLOCATE ALL")
            };
        }
        if reset.is_empty() {
            pool.release(srv);
            return;
        }
        match srv.run_internal(&reset, INTERNAL_TIMEOUT).await {
            Ok(()) => {
                srv.params.unreported.clear();
                srv.statements.clear();
                pool.release(srv);
            }
            Err(e) => {
                tracing::info!(conn = id, server = srv.id, error = %e, "server_reset_query failed: closing server")
            }
        }
        return;
    }
    if relay.phase() == crate::relay::Phase::Busy {
        // A running statement would go on until it next writes; stop it now.
        let _ = relay.flush_server(&mut srv).await;
        let target = srv.cancel_target();
        tokio::spawn(async move {
            let _ =
                crate::backend::connect::send_cancel(&target.upstream, target.pid, target.secret)
                    .await;
        });
    }
    tracing::debug!(
        conn = id,
        server = srv.id,
        "client left mid-transaction: closing its server connection"
    );
    srv.terminate().await;
}
/// A connected client's task state (boxed as one, see `serve`): kept within jemalloc's
/// 768-byte size class, since every idle client pays it (656 bytes today).
const _: () = assert!(std::mem::size_of::<(Client, Relay)>() <= 768);
