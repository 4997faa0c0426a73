//! The relay loop with its timers: servers attached and given back per transaction, LISTEN
//! through the hub, settings read back, until the client or its server goes.

use super::*;
use crate::proto::tag::backend as be;
use crate::relay::PhaseLimits;
use crate::stats::clients::Park;
use std::ops::ControlFlow;

/// How the relay loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// The client is done (the caller ends it).
    Closed,
    /// The client is at rest and asked to park (the caller parks it).
    Park,
}

/// The relay loop with its timers, until the client or its server goes, or it parks.
pub(super) async fn run(app: &App, c: &mut Client, relay: &mut Relay) -> Exit {
    // Read once, and the config guard not kept: the loop lives as long as the client. The
    // limits live in the relay, not in this loop's state, which every idle client's task
    // holds, nor in the client, which a parked client keeps.
    {
        let general = &app.config.load().general;
        relay.stall_timeout = general.client_stall_timeout.enabled();
        relay.handover_reset = general.handover_reset;
        relay.phase_limits = phase_limits(general);
    }
    relay.watch_phase = relay.phase_limits.any();
    // The parking sweep wakes this task through the registry: its waker is stored once.
    if relay.transaction_mode && c.stream.is_plain() {
        poll_fn(|cx| {
            c.reg.info.set_waker(Some(cx.waker()));
            std::task::Poll::Ready(())
        })
        .await;
    } else {
        c.reg.info.set_park(Park::Never);
    }
    let exit = relay_loop(app, c, relay).await;
    // A stored waker would keep this task's memory alive after it ends.
    c.reg.info.set_waker(None);
    exit
}

async fn relay_loop(app: &App, c: &mut Client, relay: &mut Relay) -> Exit {
    let mut phase = Phase::Idle;
    // Made only when a timeout is configured: a timer is about a tenth of an idle client.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut timer_armed = false;
    if let Some(t) = relay.phase_limits.of_phase(Phase::Idle) {
        arm(&mut timer, t);
        timer_armed = true;
    }
    loop {
        // biased: no random branch order per poll (a relay event never starves the timer: the
        // timer is polled whenever the relay waits). No arm awaits: what select! holds while
        // an arm runs (its 56-byte output) would then be part of every idle client's task.
        let step = tokio::select! {
            biased;
            ev = poll_fn(|cx| relay.poll_relay(cx, &mut c.stream, c.server.as_mut(), &mut c.state)) => Step::of(ev),
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
            _ = fired(&mut timer), if timer_armed => Step::Timeout,
            _ = park_asked(&c.reg.info) => Step::Park,
        };
        // The two events of every transaction are handled here, by futures that hold
        // little; the rest, rare, in a boxed one: the state of whatever this loop awaits is
        // part of every idle client's task.
        let flow = match step {
            Step::Phase(p) => {
                phase = p;
                let limit = relay.phase_limits.of_phase(p);
                timer_armed = limit.is_some();
                if let Some(t) = limit {
                    arm(&mut timer, t);
                }
                continue;
            }
            Step::NeedServer => need_server(app, c, relay).await,
            Step::Release { clean, resync } => {
                release(c, relay, clean, resync).await;
                ControlFlow::Continue(())
            }
            Step::Timeout => {
                timer_armed = false;
                Box::pin(timed_out(app, c, relay, phase)).await
            }
            Step::Park => {
                forget_unlistened(c);
                if may_park(app, c, relay, timer_armed) {
                    return Exit::Park;
                }
                // Not now: asked again after two more sweeps; a LISTEN client never (its
                // notifications need the task) while it listens to a channel.
                let next = if c.listening.as_ref().is_some_and(|l| !l.channels.is_empty()) {
                    Park::Never
                } else {
                    Park::Active
                };
                c.reg.info.set_park(next);
                continue;
            }
            Step::Other(other) => Box::pin(on_event(app, c, relay, *other)).await,
        };
        if flow.is_break() {
            return Exit::Closed;
        }
    }
}

/// Whether the client can leave its task for the parking lot now: nothing of it is in
/// flight or in hand, and nothing but its socket can wake it.
fn may_park(app: &App, c: &Client, relay: &Relay, timer_armed: bool) -> bool {
    c.reg.info.park_state() == Park::Asked
        && c.server.is_none()
        && c.listening.is_none()
        && !timer_armed
        && relay.at_rest()
        && !c.reg.info.was_killed()
        && !app.is_shutting_down()
}

/// Drops the LISTEN state of a client that UNLISTENed every channel and has no notification
/// left to deliver: without it, it may park again.
fn forget_unlistened(c: &mut Client) {
    if c.listening
        .as_ref()
        .is_some_and(|l| l.channels.is_empty() && l.held.is_empty() && l.rx.is_empty())
    {
        c.listening = None;
    }
}

/// Resolves when the parking sweep asks the client to park. Registers no waker: the sweep
/// wakes the task through the one stored at the loop's start.
fn park_asked(info: &crate::stats::clients::ClientInfo) -> impl Future<Output = ()> + '_ {
    poll_fn(move |_| {
        if info.park_state() == Park::Asked {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}

/// What the relay loop does next: an [`Event`] without its payload where the loop's
/// common awaits follow (the rare ones, boxed, carry theirs).
enum Step {
    Phase(Phase),
    NeedServer,
    Release {
        clean: bool,
        resync: bool,
    },
    /// The current phase's timer fired.
    Timeout,
    /// The parking sweep asks the client to park.
    Park,
    Other(Box<Event>),
}

impl Step {
    fn of(event: Event) -> Step {
        match event {
            Event::Phase(p) => Step::Phase(p),
            Event::NeedServer => Step::NeedServer,
            Event::Release { clean, resync } => Step::Release { clean, resync },
            other => Step::Other(Box::new(other)),
        }
    }
}

/// The current phase's limit ran out: an idle client or an idle transaction is told and
/// closed (Break); a running statement is canceled.
async fn timed_out(app: &App, c: &mut Client, relay: &mut Relay, phase: Phase) -> ControlFlow<()> {
    let error = match phase {
        Phase::Idle => ClientError::client_idle_timeout(),
        Phase::InTransaction => ClientError::idle_transaction_timeout(),
        Phase::Busy => {
            tracing::info!(
                conn = c.id(),
                "query_timeout: canceling the running statement"
            );
            c.cancel.handle.fire().await;
            return ControlFlow::Continue(());
        }
    };
    tell_and_close(app, c, relay, error).await;
    ControlFlow::Break(())
}

/// client_idle_timeout, idle_transaction_timeout and query_timeout, for the relay to keep.
fn phase_limits(general: &crate::config::General) -> PhaseLimits {
    // A limit of more than 49 days is 49 days; under a millisecond, one.
    let ms =
        |d: Option<Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
    PhaseLimits([
        ms(general.client_idle_timeout.enabled()),
        ms(general.idle_transaction_timeout.enabled()),
        ms(general.query_timeout.enabled()),
    ])
}

/// A server for the client's next transaction: the usual case awaits nothing (an idle
/// server that already carries the client's settings). Waiting, syncing and failing are
/// boxed, so their state is not part of every client's task.
async fn need_server(app: &App, c: &mut Client, relay: &mut Relay) -> ControlFlow<()> {
    if app.is_shutting_down() {
        // Nothing of this transaction has run: the client may retry it elsewhere.
        Box::pin(tell_and_close(app, c, relay, ClientError::admin_shutdown())).await;
        return ControlFlow::Break(());
    }
    if c.admitted.as_ref().is_some_and(|a| a.rate_limited())
        && !Box::pin(within_rate(app, c, relay)).await
    {
        return ControlFlow::Continue(());
    }
    let mut idle = c.pool.try_idle(c.id(), &c.demand);
    let ready = idle
        .as_mut()
        .is_some_and(|s| ready_in_pipeline(c, relay, s));
    let attached = match idle {
        Some(server) if ready => {
            install(app, c, relay, server) || Box::pin(closed_by_shutdown(app, c, relay)).await
        }
        idle => Box::pin(attach(app, c, relay, idle)).await,
    };
    if attached {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

/// The client's transaction ended: its server goes back to the pool (read back first when
/// the client changed settings).
async fn release(c: &mut Client, relay: &mut Relay, clean: bool, resync: bool) {
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

/// What the client's relay stopped for, besides a phase change and the two events of every
/// transaction; Break when the client is done.
async fn on_event(app: &App, c: &mut Client, relay: &mut Relay, event: Event) -> ControlFlow<()> {
    match event {
        Event::Listen(cmd) => Box::pin(listen(app, c, relay, cmd)).await,
        Event::ClientGone(_) if c.reg.info.was_killed() => {
            tracing::info!(conn = c.id(), "client killed from the admin console");
            Box::pin(tell_and_close(app, c, relay, ClientError::admin_shutdown())).await;
            return ControlFlow::Break(());
        }
        Event::ClientStalled => {
            // It cannot be told (it reads nothing); the log, the metric and the audit
            // line say why, and its statement is canceled as it goes.
            tracing::warn!(
                conn = c.id(),
                "client took none of its results for client_stall_timeout: closing it"
            );
            app.metrics.client_error("08006");
            return ControlFlow::Break(());
        }
        Event::ClientTerminated => {
            tracing::debug!(conn = c.id(), "client sent Terminate");
            return ControlFlow::Break(());
        }
        Event::ClientGone(why) => {
            tracing::debug!(conn = c.id(), reason = %why, "client connection ended");
            return ControlFlow::Break(());
        }
        Event::ServerGone(why) => {
            let server = c.server.as_ref().map_or(0, |s| s.id);
            if matches!(why, crate::relay::Lost::Protocol(_)) {
                tracing::warn!(conn = c.id(), server, reason = %why, "server broke the protocol: closing it");
            } else {
                tracing::info!(conn = c.id(), server, reason = %why, "server connection lost");
            }
            let fatal = relay.server_sent_fatal();
            c.server = None;
            c.cancel.handle.detach();
            // A message the server was in the middle of is never completed with other
            // bytes: then the client sees the connection end, as with PostgreSQL itself.
            if !fatal && !relay.server_mid_message() {
                relay.queue_for_client(|b| ClientError::server_lost().encode(b));
            }
            let _ = Box::pin(relay.flush_client(&mut c.stream)).await;
            return ControlFlow::Break(());
        }
        Event::HandoverFailed => {
            tracing::warn!(
                conn = c.id(),
                "hand-over reset interrupted: closing the client and the server"
            );
            c.server = None;
            c.cancel.handle.detach();
            let e = if relay.handover_ended_by_server() {
                c.pool.server_found_closed();
                ClientError::handover_lost()
            } else {
                ClientError::handover_failed()
            };
            relay.queue_for_client(|b| e.encode(b));
            let _ = Box::pin(relay.flush_client(&mut c.stream)).await;
            return ControlFlow::Break(());
        }
        Event::Protocol(e) => {
            tracing::info!(conn = c.id(), error = %e, "client protocol violation");
            Box::pin(tell_and_close(app, c, relay, e)).await;
            return ControlFlow::Break(());
        }
        // Handled by the loop itself.
        Event::Phase(_) | Event::NeedServer | Event::Release { .. } => {}
    }
    ControlFlow::Continue(())
}

/// Sets the client's timer to go off `after` from now.
pub(super) fn arm(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration) {
    let at = Instant::now() + after;
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(sleep_until(at))),
    }
}

/// The client's timer; only polled while armed, so it exists then. (Futures made by
/// `poll_fn` hold one reference: the relay loop's select keeps them in every client's task.)
fn fired(timer: &mut Option<Pin<Box<Sleep>>>) -> impl Future<Output = ()> + '_ {
    poll_fn(move |cx| match timer {
        Some(t) => t.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

/// The next notification for a listening client; never resolves for one that is not.
fn next_notification(
    listening: &mut Option<Box<Listening>>,
) -> impl Future<Output = Option<bytes::Bytes>> + '_ {
    poll_fn(move |cx| match listening {
        Some(l) => l.rx.poll_recv(cx),
        None => std::task::Poll::Pending,
    })
}

/// Transaction mode LISTEN/UNLISTEN, answered between transactions through the hub.
pub(super) async fn listen(
    app: &App,
    c: &mut Client,
    relay: &mut Relay,
    cmd: crate::sql::session::ListenCmd,
) {
    use crate::sql::session::ListenCmd;
    let hub = app.notify_hub(&c.pool);
    let id = c.id();
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
            let r = hub.listen(&ch, id, l.tx.clone()).await;
            if r.is_ok() && !l.channels.contains(&ch) {
                l.channels.push(ch);
            }
            r.map(|_| "LISTEN")
        }
        ListenCmd::Unlisten(ch) => {
            hub.unlisten(&ch, id);
            if let Some(l) = &mut c.listening {
                l.channels.retain(|x| *x != ch);
            }
            Ok("UNLISTEN")
        }
        ListenCmd::UnlistenAll => {
            if let Some(l) = &mut c.listening {
                hub.unlisten_all(&l.channels, id);
                l.channels.clear();
            }
            Ok("UNLISTEN")
        }
    };
    // Listening to nothing now: the sweep may ask it to park again (a LISTEN client was
    // told never to).
    if c.listening.as_ref().is_some_and(|l| l.channels.is_empty())
        && c.reg.info.park_state() == Park::Never
        && relay.transaction_mode
        && c.stream.is_plain()
    {
        c.reg.info.set_park(Park::Active);
    }
    relay.queue_for_client(|b| {
        match result {
            Ok(tag) => emit::message(b, be::COMMAND_COMPLETE, |b| {
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
pub(super) async fn read_back_settings(
    c: &mut Client,
    server: &mut ServerConn,
    touched: Vec<String>,
) -> bool {
    if touched.iter().any(|n| n == "session_authorization") {
        // Another identity must never be handed to the next client; the client keeps its own.
        tracing::info!(
            conn = c.id(),
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
            tracing::info!(conn = c.id(), server = server.id, error = %e, "reading settings back failed: closing server");
            false
        }
    }
}

/// Transaction mode: gets a server for the client's next transaction, waiting in the pool's
/// queue while watching for the client leaving or canceling. False when the client is done.
pub(super) async fn attach(
    app: &App,
    c: &mut Client,
    relay: &mut Relay,
    idle: Option<ServerConn>,
) -> bool {
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
                return install(app, c, relay, server)
                    || Box::pin(closed_by_shutdown(app, c, relay)).await;
            }
            if let Err(e) = sync(&mut server, &c.state.params).await {
                let e = ClientError {
                    severity: emit::Severity::Error,
                    ..e
                };
                relay.refuse_request(&e);
                return true;
            }
            install(app, c, relay, server) || Box::pin(closed_by_shutdown(app, c, relay)).await
        }
        Err(e) => {
            c.reg.info.linked(0);
            let err = e.to_client();
            tracing::info!(conn = c.id(), pool = %c.pool.key, error = %e, "no server for client");
            if matches!(e, crate::backend::CheckoutError::ShareFull { .. }) {
                app.metrics.limit_refused("max_user_connections");
            }
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
pub(super) fn return_server(c: &mut Client, relay: &mut Relay, server: ServerConn, reusable: bool) {
    if let Some(l) = &mut c.listening {
        for n in l.held.drain(..) {
            relay.queue_for_client(|b| b.extend_from_slice(&n));
        }
    }
    c.reg.info.linked(0);
    // For SHOW CLIENTS and SHOW SERVERS' prepared_statements.
    c.reg.info.set_prepared(c.state.statements.len());
    server.info.set_prepared(server.statements.len());
    let busy_us = relay.meter.take_busy_us();
    if reusable {
        c.pool.release_busy(server, busy_us);
    } else {
        tracing::debug!(
            conn = c.id(),
            server = server.id,
            "closing server instead of returning it"
        );
    }
}

pub(super) async fn release_after_read_back(
    c: &mut Client,
    relay: &mut Relay,
    mut server: ServerConn,
) {
    let reusable = read_back_settings(c, &mut server, relay.take_touched()).await;
    return_server(c, relay, server, reusable);
}

/// Whether `server` can run the client's work with nothing but what the relay sends ahead of
/// it: its parameters already match, or the hand-over reset is due and at most
/// application_name (which no value makes fail) is set after it.
pub(super) fn ready_in_pipeline(c: &mut Client, relay: &Relay, server: &mut ServerConn) -> bool {
    server.hand_to(c.id(), relay.handover_reset);
    if server.reset_pending {
        handover_statement(c, server.sync_base()).is_some()
    } else if server.params == c.state.params {
        // Equal lists made apart share from now on: the next checkout compares pointers
        // instead of every name and value.
        server.params.clone_from(&c.state.params);
        true
    } else {
        sync_statement(&c.state.params, &server.params).is_none()
    }
}

/// A client's hand-over statement against a pool's login parameters, kept while neither
/// changes: it holds clones of both, so a change to either unshares its list and the
/// pointers no longer match. Shared: clients that logged in alike (interned lists) on
/// servers that did (one baseline list) take one copy from [`RECENT`].
pub(super) struct Handover {
    client: SessionParams,
    base: SessionParams,
    /// None: more than application_name to set, which takes a round trip.
    sql: Option<Arc<str>>,
}

impl Handover {
    fn fits(&self, client: &SessionParams, base: &SessionParams) -> bool {
        let same = |a: &SessionParams, b: &SessionParams| {
            a.reported.shares(&b.reported) && a.unreported.shares(&b.unreported)
        };
        same(&self.client, client) && same(&self.base, base)
    }
}

/// Hand-over statements a worker thread built lately (a few, for clients of a few kinds):
/// a connection per request would otherwise build the same statement at each login, and
/// keep its own copy of it while idle.
const RECENT_MAX: usize = 4;

thread_local! {
    static RECENT: std::cell::RefCell<Vec<Arc<Handover>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The hand-over reset with the client's application_name after it, or None when the client
/// needs more settings than that (then `sync` does it in one round trip).
pub(super) fn handover_statement(c: &mut Client, base: &SessionParams) -> Option<Arc<str>> {
    let params = &c.state.params;
    if let Some(h) = c.handover.as_deref().filter(|h| h.fits(params, base)) {
        return h.sql.clone();
    }
    let recent = RECENT.with(|r| r.borrow().iter().find(|h| h.fits(params, base)).cloned());
    let h = recent.unwrap_or_else(|| {
        // Only a printable-ASCII name goes in the reset's own message: that message is
        // parsed under the encoding the previous client left, before RESET ALL runs, and a
        // multibyte name could then end its literal early (backslash_quote and a lead byte).
        // Other names are set by `sync`, after the reset, in a message of their own.
        let plain = params
            .reported
            .get("application_name")
            .is_none_or(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)));
        let sql =
            (plain && differs_only_in_application_name(params, base)).then(
                || match sync_statement(params, base) {
                    Some(set) => Arc::from(format!("{HANDOVER_RESET}; {set}")),
                    None => Arc::from(HANDOVER_RESET),
                },
            );
        let h = Arc::new(Handover {
            client: params.clone(),
            base: base.clone(),
            sql,
        });
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.len() == RECENT_MAX {
                r.remove(0);
            }
            r.push(h.clone());
        });
        h
    });
    let sql = h.sql.clone();
    c.handover = Some(h);
    sql
}

/// Makes `server` the client's for its transaction; a hand-over reset still due, and a token
/// client's claims, go ahead of the client's first message.
/// A client a shutdown closed just as it got a server: told 57P01 (nothing of its ran);
/// always false (it is done).
async fn closed_by_shutdown(app: &App, c: &mut Client, relay: &mut Relay) -> bool {
    tell_and_close(app, c, relay, ClientError::admin_shutdown()).await;
    false
}

/// False when the client was closed by a shutdown meanwhile: the server goes back untouched
/// and nothing of the client's is sent; the caller tells it 57P01.
#[must_use]
pub(super) fn install(
    app: &App,
    c: &mut Client,
    relay: &mut Relay,
    mut server: ServerConn,
) -> bool {
    c.reg.info.linked(server.id);
    if c.reg.info.was_killed() {
        c.reg.info.linked(0);
        c.pool.release(server);
        return false;
    }
    relay.reset_server_side();
    // Callers sync first whenever the statement would not do (ready_in_pipeline); the bare
    // reset is the fallback that still isolates.
    let sql = server.reset_pending.then(|| {
        let sql = handover_statement(c, server.sync_base());
        debug_assert!(sql.is_some(), "installed a server that needed a round trip");
        sql.unwrap_or_else(|| Arc::from(HANDOVER_RESET))
    });
    let claims = claims_due(app, c, &mut server);
    match (&sql, claims.is_empty()) {
        (None, true) => {}
        (_, true) => relay.send_handover_reset(sql.as_deref().unwrap_or(HANDOVER_RESET)),
        (_, false) => relay.send_handover_with_claims(sql.as_deref(), &claims),
    }
    server.reset_pending = false;
    c.cancel.handle.attach(server.cancel_target());
    // The client's side was linked first (above); now SHOW SERVERS' side.
    server.info.linked(c.id(), crate::stats::unix_micros());
    c.server = Some(server);
    true
}

/// The claims statements the client's transaction needs on `server`, in order.
fn claims_due<'c>(
    app: &App,
    c: &'c Client,
    server: &mut ServerConn,
) -> Vec<std::borrow::Cow<'c, crate::identity::claims::Delivery>> {
    use crate::identity::claims;
    let bearer = c.bearer.as_deref();
    if bearer.is_none() && server.claims.clear() {
        // The usual case: a password client on a server no seal sits on.
        return Vec::new();
    }
    let now = claims::Current::of(&app.config.load(), &c.pool.key.role, &server.claims);
    claims::due(bearer, &now, c.id(), &mut server.claims, server.pid).unwrap_or_else(|_| {
        tracing::warn!(
            conn = c.id(),
            server = server.id,
            "a server holds sealed claims no configured key can replace: closing it"
        );
        vec![std::borrow::Cow::Owned(claims::refusing())]
    })
}

/// Whether the client's identity may start a transaction now: waits while its rate says to
/// (up to query_wait_timeout), or refuses the transaction with 53400.
async fn within_rate(app: &App, c: &mut Client, relay: &mut Relay) -> bool {
    use crate::admission::identities::RateVerdict;
    let Some(admitted) = c.admitted.as_ref() else {
        return true;
    };
    let limit = c.pool.settings().wait_timeout;
    let start = tokio::time::Instant::now();
    loop {
        let err = match admitted.start_transaction() {
            RateVerdict::Go => return true,
            RateVerdict::WaitFor(d) if limit.is_none_or(|l| start.elapsed() + d <= l) => {
                let waits = &c.pool.stats.rate_waits;
                waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(d).await;
                continue;
            }
            RateVerdict::WaitFor(_) => crate::error::ClientError::over_rate(
                "the transaction rate limit's wait is longer than query_wait_timeout",
            ),
            RateVerdict::Refused(e) => e,
        };
        tracing::info!(conn = c.id(), error = %err, "transaction refused by its identity's rate");
        app.metrics.client_error(&err.code);
        app.metrics.limit_refused("transactions_per_second");
        relay.refuse_request(&err);
        return false;
    }
}

/// The pool's queue, watching for the client leaving (None) or canceling.
pub(super) async fn wait_for_server(
    c: &mut Client,
    relay: &mut Relay,
) -> Option<Result<ServerConn, crate::backend::CheckoutError>> {
    let handle = c.cancel.handle.clone();
    let mut notified = pin!(handle.wake.notified());
    notified.as_mut().enable();
    c.reg.info.waiting(crate::stats::unix_micros());
    let checkout = c.pool.checkout(notified, &c.demand);
    let buffered = relay.client_buffer();
    let before = buffered.len();
    let r = tokio::select! {
        biased;
        r = checkout => Some(r),
        _ = client_left(&mut c.stream, buffered) => None,
    };
    // What the client sent while it waited counts as received (SHOW STATS, the audit log).
    let after = relay.client_buffer().len();
    relay.meter.received(after.saturating_sub(before));
    r
}

/// Resolves when the client closes its socket; bytes it sends meanwhile are kept in `buf`.
pub(super) async fn client_left(stream: &mut Stream, buf: &mut BytesMut) {
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
