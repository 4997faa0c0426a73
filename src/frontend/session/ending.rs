//! A client's end: the error it is told, and what becomes of its server.

use super::*;

pub(super) async fn tell_and_close(app: &App, c: &mut Client, relay: &mut Relay, err: ClientError) {
    app.metrics.client_error(&err.code);
    tracing::info!(conn = c.id(), error = %err, "closing client");
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
pub(super) async fn finish(app: &App, c: Client, mut relay: Relay) {
    if let Some(l) = c.listening.as_ref().filter(|l| !l.channels.is_empty()) {
        app.notify_hub(&c.pool).unlisten_all(&l.channels, c.id());
    }
    let id = c.id();
    let Client {
        mut server,
        pool,
        cancel,
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
