//! Login and the greeting: the startup packet, authentication, the pool, the parameters
//! a direct connection would report, then ReadyForQuery.

use super::*;
use crate::stats::clients::AuthMethod;
use std::borrow::Cow;

/// Who logged in, for [`register`].
struct Who<'a> {
    user: &'a str,
    pool: &'a Pool,
    params: &'a SessionParams,
    method: AuthMethod,
    sni: Option<String>,
    identity: Option<Arc<crate::identity::Identity>>,
    priority: crate::config::Priority,
}

/// Adds an authenticated client to SHOW CLIENTS (before it waits for its first server, so
/// a session-mode client queued at login shows as waiting).
fn register(app: &App, stream: &Stream, arrival: &Arrival<'_>, who: Who<'_>) -> Registered {
    let Arrival { peer, mode, id, .. } = *arrival;
    let Who {
        user,
        pool,
        params,
        method,
        sni,
        identity,
        priority,
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
        pool_mode: mode,
        identity,
        priority,
    };
    app.clients.register(facts, Some(stream.raw_fd()))
}

/// The global address lists and the per-address limits, at accept.
pub(super) fn admit_address(
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
pub(super) fn note_auth_failure(
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
pub(super) struct Arrival<'a> {
    pub(super) peer: &'a Peer,
    pub(super) mode: PoolMode,
    /// Its listener's region: servers opened for it prefer upstreams there.
    pub(super) region: Option<Arc<str>>,
    pub(super) over_limit: bool,
    pub(super) id: u64,
    pub(super) tls: Option<handshake::TlsInfo>,
}

/// Handshake, authentication and the greeting. `early` holds what the client sent behind
/// its startup packet; authentication reads from it first, and what it holds after the
/// client's last authentication message is kept for the session.
pub(super) async fn login(
    app: &Arc<App>,
    stream: &mut Stream,
    arrival: Arrival<'_>,
    hello: Result<Hello, HandshakeError>,
    (mut out, mut early): (BytesMut, BytesMut),
) -> LoginOutcome {
    let startup = match startup_packet(app, &arrival, hello).await {
        Ok(s) => s,
        Err(ended) => return ended,
    };
    let refuse = |e: ClientError| {
        let Arrival { id, peer, .. } = &arrival;
        tracing::info!(conn = id, %peer, user = %startup.user, database = %startup.database, error = %e, "connection refused");
        LoginOutcome::Refused(e)
    };
    if let Err(e) = before_anything(app, &arrival, &startup) {
        return refuse(e);
    }
    let config = app.config.load_full();
    let Proven {
        user,
        method,
        client_key,
        identity,
    } = match authenticate(
        app,
        stream,
        (&mut out, &mut early),
        &config,
        &arrival,
        &startup,
    )
    .await
    {
        Ok(proved) => proved,
        Err(LoginOutcome::Refused(e)) => return refuse(e),
        Err(ended) => return ended,
    };
    if let Err(e) = access::after_auth(&user, arrival.peer.ip()) {
        return refuse(e);
    }
    if crate::admin::is_console(&startup.database) {
        if identity.is_some() {
            return refuse(ClientError::not_authorized(
                "token identities may not use the admin console",
            ));
        }
        return match console(&config, stream, &mut out, &arrival, &user).await {
            LoginOutcome::Refused(e) => refuse(e),
            LoginOutcome::Console(mut c) => {
                c.early = early;
                LoginOutcome::Console(c)
            }
            other => other,
        };
    }
    if app.pools.is_disabled(&startup.database) {
        return refuse(ClientError::database_disabled(&startup.database));
    }
    let Some(db) = config.database(&startup.database) else {
        return refuse(ClientError::unknown_database(&startup.database));
    };
    let pool = match app.pools.pool_for(&config, &db, &user, client_key) {
        Ok(p) => p,
        Err(e) => return refuse(e.to_client(&startup.database)),
    };
    let attrs = match wanted_attrs(&startup.params, &pool) {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    let startup_params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(ATTRS))
        .cloned()
        .collect();
    let mut params = SessionParams::from_startup(&startup_params);
    if config.general.application_name_add_host {
        let name = params.reported.get("application_name").unwrap_or("");
        let named = format!("{name} - {}", arrival.peer.host_port());
        params.reported.set("application_name", &named);
    }
    let bearer = identity.as_ref().map(bearer);
    let admitted = match admit_identity(app, &config, &user, identity.as_deref()) {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    let demand = crate::backend::Demand {
        class: identity
            .as_ref()
            .and_then(|i| i.priority)
            .or(config.class_of(user.priority.as_ref()))
            .unwrap_or(pool.settings().fairness.default_class),
        share: admitted.as_ref().and_then(|a| a.share()),
        session: arrival.mode == PoolMode::Session,
        attrs,
        region: arrival.region.clone(),
    };
    let who = Who {
        user: &startup.user,
        pool: &pool,
        params: &params,
        method,
        sni: arrival.tls.as_ref().and_then(|t| t.sni.clone()),
        priority: demand.class,
        identity,
    };
    let reg = register(app, stream, &arrival, who);
    let first = First {
        pool: &pool,
        reg: &reg,
        bearer: bearer.as_deref(),
        demand: &demand,
    };
    let (params, server, cancel) =
        match first_parameters(app, &config, &arrival, first, params).await {
            Ok(got) => got,
            Err(e) => return refuse(e),
        };
    super::merged::write_status(&mut out, &params.reported);
    emit::backend_key_data(&mut out, cancel.pid, cancel.secret);
    reg.info.set_remote_pid(cancel.pid);
    emit::ready_for_query(&mut out, b'I');
    if stream.send(&out).await.is_err() {
        return LoginOutcome::Quiet;
    }
    let Arrival { id, peer, mode, .. } = &arrival;
    tracing::info!(conn = id, %peer, user = &*user.name, database = &*db.name, mode = mode.as_str(), method = method.as_str(), "client logged in");
    LoginOutcome::Pooled(Box::new(Pooled {
        params,
        pool,
        cancel,
        server,
        reg,
        bearer,
        demand,
        admitted,
        early,
    }))
}

/// Counts the client against its identity's limits (none kept when it has none).
fn admit_identity(
    app: &Arc<App>,
    config: &crate::config::Config,
    user: &crate::config::User,
    identity: Option<&crate::identity::Identity>,
) -> Result<Option<Box<crate::admission::identities::Admitted>>, ClientError> {
    let limits = match identity {
        Some(i) => i.limits,
        None => config.identity_limits(user.limits, None),
    };
    if limits.is_none() {
        return Ok(None);
    }
    let who = match identity {
        Some(i) => i.limit_key(),
        None => format!("user:{}", user.name),
    };
    let admitted = app.identities.admit(&who, limits, true).inspect_err(|_| {
        app.metrics.limit_refused("max_user_client_connections");
    })?;
    Ok(Some(Box::new(admitted)))
}

/// A token client's claims.
fn bearer(identity: &Arc<crate::identity::Identity>) -> Box<crate::identity::claims::Bearer> {
    Box::new(crate::identity::claims::Bearer::new(identity.clone()))
}

/// How a login ended.
pub(super) enum LoginOutcome {
    /// Ready for the relay.
    Pooled(Box<Pooled>),
    /// The admin console (`pgsluice` or `pgbouncer` database).
    Console(crate::admin::Console),
    /// Ended without a reply: a cancel request, a client that left, or a startup packet
    /// PostgreSQL itself closes on silently.
    Quiet,
    /// Refused with this error.
    Refused(ClientError),
}

/// The startup packet, or how the connection ends without one (a cancel request is
/// carried out here).
async fn startup_packet(
    app: &App,
    arrival: &Arrival<'_>,
    hello: Result<Hello, HandshakeError>,
) -> Result<crate::proto::startup::Startup, LoginOutcome> {
    let Arrival { id, peer, .. } = arrival;
    match hello {
        Ok(Hello::Startup(s)) => Ok(s),
        Ok(Hello::Cancel { pid, secret }) => {
            let found = crate::frontend::peers::cancel(app, pid, &secret).await;
            tracing::debug!(conn = id, %peer, pid, found, "cancel request");
            Err(LoginOutcome::Quiet)
        }
        Err(HandshakeError::Incomplete) => {
            tracing::debug!(conn = id, %peer, "incomplete startup packet");
            Err(LoginOutcome::Quiet)
        }
        Err(HandshakeError::Silent(why)) => {
            tracing::info!(conn = id, %peer, error = why, "startup refused: closing without a reply, as PostgreSQL does");
            app.metrics.client_error("08P01");
            Err(LoginOutcome::Quiet)
        }
        Err(HandshakeError::Refused(e)) => {
            tracing::info!(conn = id, %peer, error = %e, "startup refused");
            Err(LoginOutcome::Refused(e))
        }
    }
}

/// What refuses a connection before any authentication work: max_client_conn, a TLS
/// requirement, replication.
fn before_anything(
    app: &App,
    arrival: &Arrival<'_>,
    startup: &crate::proto::startup::Startup,
) -> Result<(), ClientError> {
    if arrival.over_limit {
        return Err(ClientError::too_many_clients());
    }
    let tls_mode = app.config.load().tls.as_ref().map(|t| t.mode);
    let plain_tcp = arrival.tls.is_none() && matches!(arrival.peer, Peer::Tcp(_));
    if tls_mode == Some(ClientTlsMode::Require) && plain_tcp {
        return Err(ClientError::not_authorized(
            "pgsluice requires TLS for this connection: connect with sslmode=require",
        ));
    }
    if startup.replication {
        return Err(ClientError::unsupported(
            "replication connections are not supported by pgsluice",
        ));
    }
    Ok(())
}

/// Who the client proved to be.
struct Proven<'c> {
    /// Its user entry (for a token identity, its mapped role's upstream login).
    user: Cow<'c, crate::config::User>,
    method: AuthMethod,
    /// SCRAM's client key when it logged in with SCRAM (for passthrough upstream).
    client_key: Option<[u8; 32]>,
    identity: Option<Arc<crate::identity::Identity>>,
}

/// Who the client proved to be. Every failure is counted against its address.
async fn authenticate<'c>(
    app: &Arc<App>,
    stream: &mut Stream,
    io: (&mut BytesMut, &mut BytesMut),
    config: &'c crate::config::Config,
    arrival: &Arrival<'_>,
    startup: &crate::proto::startup::Startup,
) -> Result<Proven<'c>, LoginOutcome> {
    let addr = arrival.peer.ip();
    let check = access::before_auth(
        config,
        addr,
        arrival.tls.is_some(),
        &startup.user,
        &startup.database,
    )
    .map_err(LoginOutcome::Refused)?;
    if let Some(kind) = crate::identity::token_login(config, &startup.user) {
        // Boxed, as every path a usual login does not take: a task's future is as large
        // as its largest state, and a login's future is moved several times as it starts.
        return Box::pin(token(
            app, stream, io, config, arrival, startup, check, kind,
        ))
        .await;
    }
    // Not in [[users]]: maybe upstream knows it (auth_query).
    let looked_up = match (
        config.user(&startup.user),
        config.database(&startup.database),
    ) {
        (None, Some(db)) if !crate::admin::is_console(&startup.database) => Box::pin(
            crate::frontend::passthrough::lookup(app, config, &db, &startup.user),
        )
        .await
        .map_err(LoginOutcome::Refused)?,
        _ => None,
    };
    let listed = config.user(&startup.user);
    let user = listed.or(looked_up.as_ref());
    let lent = (&mut *io.0, &mut *io.1);
    let proof = prove(
        app, stream, lent, config, arrival, startup, check, user, &looked_up,
    )
    .await?;
    let failed = |e| {
        note_auth_failure(app, config, addr, &startup.user);
        if looked_up.is_some() {
            app.auth_cache.forget(&startup.database, &startup.user);
        }
        LoginOutcome::Refused(e)
    };
    let method = proof.method.map_err(failed)?;
    // Borrowed from the config when listed there; an auth_query entry is the client's own.
    let user = match (proof.relooked, listed) {
        (Some(u), _) => Some(Cow::Owned(u)),
        (None, Some(u)) => Some(Cow::Borrowed(u)),
        (None, None) => looked_up.map(Cow::Owned),
    };
    let Some(user) = user else {
        // trust or cert for a user pgsluice has no credentials for.
        note_auth_failure(app, config, addr, &startup.user);
        return Err(LoginOutcome::Refused(ClientError::auth_failed(
            &startup.user,
            method.as_str(),
        )));
    };
    if matches!(check, access::Check::Trust | access::Check::Cert) {
        app.metrics.auth_result(method.as_str(), true);
        emit::auth_ok(io.0);
    }
    Ok(Proven {
        user,
        method,
        client_key: proof.client_key,
        identity: None,
    })
}

/// An API key or JWT login: the identity and its mapped role's upstream login.
#[allow(clippy::too_many_arguments)]
async fn token<'c>(
    app: &Arc<App>,
    stream: &mut Stream,
    (out, early): (&mut BytesMut, &mut BytesMut),
    config: &'c crate::config::Config,
    arrival: &Arrival<'_>,
    startup: &crate::proto::startup::Startup,
    check: access::Check,
    kind: crate::identity::TokenLogin,
) -> Result<Proven<'c>, LoginOutcome> {
    let attempt = crate::frontend::token_login::Attempt {
        kind,
        user: &startup.user,
        database: &startup.database,
        peer: arrival.peer,
        tls: arrival.tls.is_some(),
        oauth: check == access::Check::OAuth,
        conn: arrival.id,
    };
    let failed = |e| {
        note_auth_failure(app, config, arrival.peer.ip(), &startup.user);
        LoginOutcome::Refused(e)
    };
    let identity = match crate::frontend::token_login::prove(
        app, config, stream, out, early, &attempt,
    )
    .await
    {
        Ok(identity) => identity,
        Err(LoginError::Refused(e) | LoginError::Md5Mismatch(e, _)) => return Err(failed(e)),
        Err(LoginError::Gone) => return Err(LoginOutcome::Quiet),
    };
    let Some(user) = crate::identity::pool_user(config, &identity) else {
        return Err(failed(ClientError::auth_failed(&startup.user, "password")));
    };
    Ok(Proven {
        user: Cow::Owned(user),
        method: identity.source.into(),
        client_key: None,
        identity: Some(identity),
    })
}

/// The outcome of the exchange with the client.
struct Answered {
    method: Result<AuthMethod, ClientError>,
    client_key: Option<[u8; 32]>,
    /// An auth_query user looked up again after a failed md5 proof, which it passed.
    relooked: Option<crate::config::User>,
}

/// Runs the exchange `check` asks for.
#[allow(clippy::too_many_arguments)]
async fn prove(
    app: &Arc<App>,
    stream: &mut Stream,
    (out, early): (&mut BytesMut, &mut BytesMut),
    config: &crate::config::Config,
    arrival: &Arrival<'_>,
    startup: &crate::proto::startup::Startup,
    check: access::Check,
    user: Option<&crate::config::User>,
    looked_up: &Option<crate::config::User>,
) -> Result<Answered, LoginOutcome> {
    let mut proof = Answered {
        method: Ok(AuthMethod::Trust),
        client_key: None,
        relooked: None,
    };
    let preferred = match check {
        access::Check::Trust => return Ok(proof),
        access::Check::Cert => {
            let name = access::certificate_user(stream);
            proof.method = if name.as_deref() == Some(startup.user.as_str()) {
                Ok(AuthMethod::Cert)
            } else {
                Err(ClientError::not_authorized(format!(
                    "certificate authentication failed for user \"{}\"",
                    startup.user
                )))
            };
            return Ok(proof);
        }
        access::Check::Password(preferred) => preferred,
        access::Check::OAuth => {
            // OAUTHBEARER proves token identities only.
            proof.method = Err(ClientError::auth_failed(&startup.user, "OAuth bearer"));
            return Ok(proof);
        }
    };
    let secret = user.map(|u| crate::auth::Secret::parse(&u.password));
    let exchange = login::authenticate(
        app,
        stream,
        out,
        early,
        &startup.user,
        secret.as_ref(),
        preferred,
    )
    .await;
    proof.method = match exchange {
        Ok(p) => {
            proof.client_key = p.client_key;
            Ok(p.method.into())
        }
        Err(LoginError::Gone) => {
            let Arrival { id, peer, .. } = arrival;
            tracing::debug!(conn = id, %peer, user = %startup.user, "client left during authentication");
            return Err(LoginOutcome::Quiet);
        }
        Err(LoginError::Refused(e)) => Err(e),
        Err(LoginError::Md5Mismatch(e, answer)) if looked_up.is_some() => {
            // The cached secret may be stale: look the user up again before refusing.
            app.auth_cache.forget(&startup.database, &startup.user);
            proof.relooked = Box::pin(recheck_md5(app, config, startup, &answer)).await;
            match proof.relooked {
                Some(_) => {
                    emit::auth_ok(out);
                    Ok(AuthMethod::Md5)
                }
                None => Err(e),
            }
        }
        Err(LoginError::Md5Mismatch(e, _)) => Err(e),
    };
    Ok(proof)
}

/// The admin console's login, for users the config lets in.
async fn console(
    config: &crate::config::Config,
    stream: &mut Stream,
    out: &mut BytesMut,
    arrival: &Arrival<'_>,
    user: &crate::config::User,
) -> LoginOutcome {
    let Some(console) = crate::admin::Console::admit(config, &user.name) else {
        return LoginOutcome::Refused(ClientError::not_authorized(format!(
            "user \"{}\" may not use the admin console",
            user.name
        )));
    };
    crate::admin::greet(out);
    if stream.send(out).await.is_err() {
        return LoginOutcome::Quiet;
    }
    let Arrival { id, peer, .. } = arrival;
    tracing::info!(conn = id, %peer, user = %user.name, "admin console login");
    LoginOutcome::Console(console)
}

/// The parameters the greeting reports: what a direct connection would. In session mode
/// the server's own values after applying the client's startup parameters (and the server,
/// kept); in transaction mode the same, learned from a pool connection when the client asks
/// for anything non-default. With the client's cancel key.
/// What the greeting's server work needs to know of the client.
struct First<'a> {
    pool: &'a Arc<Pool>,
    reg: &'a Registered,
    bearer: Option<&'a crate::identity::claims::Bearer>,
    demand: &'a crate::backend::Demand,
}

async fn first_parameters(
    app: &App,
    config: &crate::config::Config,
    arrival: &Arrival<'_>,
    first: First<'_>,
    params: SessionParams,
) -> Result<(SessionParams, Option<ServerConn>, Registration), ClientError> {
    let First {
        pool,
        reg,
        bearer,
        demand,
    } = first;
    let reset = config.general.handover_reset;
    if arrival.mode == PoolMode::Session {
        let mut server = Box::pin(checkout_idle_wait(pool, reg, demand)).await?;
        server.hand_to(arrival.id, reset);
        sync(&mut server, &params).await?;
        Box::pin(server.deliver_claims(config, bearer, arrival.id, INTERNAL_TIMEOUT)).await?;
        let cancel = app
            .cancels
            .register(Some(server.pid), config.general.peer_id);
        cancel.handle.attach(server.cancel_target());
        return Ok((server.params.clone(), Some(server), cancel));
    }
    let defaults = match pool.defaults() {
        Some(d) => d,
        None => {
            let s = Box::pin(checkout_idle_wait(pool, reg, demand)).await?;
            let d = s.params.clone();
            pool.release(s);
            d
        }
    };
    let cancel = || app.cancels.register(None, config.general.peer_id);
    if let Some(merged) = super::merged::remembered(&defaults, &params) {
        return Ok((merged, None, cancel()));
    }
    let mut merged = defaults.clone();
    for (k, v) in params.reported.iter() {
        merged.reported.set(k, v);
    }
    merged.unreported = params.unreported.clone();
    // Only a server can say how it spells what the client asked for, except for an
    // application_name it keeps as sent (libpq clients send one on every login).
    let asked_server =
        !reported_verbatim(&merged, &defaults) && sync_statement(&merged, &defaults).is_some();
    if asked_server {
        let mut server = Box::pin(checkout_idle_wait(pool, reg, demand)).await?;
        server.hand_to(arrival.id, reset);
        sync(&mut server, &merged).await?;
        merged.reported = server.params.reported.clone();
        pool.release(server);
    }
    merged.reported = merged.reported.interned();
    merged.unreported = merged.unreported.interned();
    // What a server said depends on the server: only a merge made here is remembered.
    if !asked_server {
        super::merged::remember(defaults, params, merged.clone());
    }
    Ok((merged, None, cancel()))
}

/// An auth_query user's md5 answer checked against its secret looked up afresh; the new
/// entry when it proves the password.
pub(super) async fn recheck_md5(
    app: &App,
    config: &crate::config::Config,
    startup: &crate::proto::startup::Startup,
    answer: &login::Md5Answer,
) -> Option<crate::config::User> {
    let db = config.database(&startup.database)?;
    let user = crate::frontend::passthrough::lookup(app, config, &db, &startup.user)
        .await
        .ok()
        .flatten()?;
    answer
        .proves(&crate::auth::Secret::parse(&user.password))
        .then_some(user)
}

/// Login-time checkout: no cancel key exists yet, so nothing can cancel the wait.
pub(super) async fn checkout_idle_wait(
    pool: &Arc<Pool>,
    reg: &Registered,
    demand: &crate::backend::Demand,
) -> Result<ServerConn, ClientError> {
    let never = tokio::sync::Notify::new();
    let notified = pin!(never.notified());
    reg.info.waiting(crate::stats::unix_micros());
    let r = pool
        .checkout(notified, demand)
        .await
        .map_err(|e| e.to_client());
    reg.info.linked(0);
    r
}

/// Makes `server` carry the client's session parameters, after the hand-over reset when it is
/// due (in the same round trip). A server that failed is dropped by the caller (via the error
/// path), so it never carries half-applied settings.
pub(super) async fn sync(server: &mut ServerConn, want: &SessionParams) -> Result<(), ClientError> {
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

/// The startup parameter (or `options -c`) a client names the kind of server it wants with,
/// as libpq's connection option of the same name (docs/resilience.md). pgsluice takes it; the
/// server never sees it.
const ATTRS: &str = "target_session_attrs";

/// The client's own `target_session_attrs`, when it sent one: valid, and on a database that
/// has servers to choose from.
fn wanted_attrs(
    params: &[(String, String)],
    pool: &Pool,
) -> Result<Option<crate::config::SessionAttrs>, ClientError> {
    let Some((_, v)) = params.iter().find(|(k, _)| k.eq_ignore_ascii_case(ATTRS)) else {
        return Ok(None);
    };
    let attrs = crate::config::SessionAttrs::parse(v).ok_or_else(|| {
        ClientError::invalid_parameter(format!(
            "invalid value for parameter \"target_session_attrs\": \"{v}\" (any, read-write, read-only, primary, standby or prefer-standby)"
        ))
    })?;
    if attrs != crate::config::SessionAttrs::Any && pool.upstream().route.is_none() {
        return Err(ClientError::unsupported(format!(
            "target_session_attrs={v}: database \"{}\" has one server and learns nothing of it; list its servers in upstreams (docs/resilience.md)",
            pool.key.database
        )));
    }
    Ok(Some(attrs))
}
