//! One upstream connection: its socket, identity (pid and secret for cancels), the session
//! parameters it has, and how the proxy runs its own statements on it.

use super::params::SessionParams;
use super::pool::Slot;
use crate::error::ClientError;
use crate::net::Stream;
use crate::net::stream::read_message;
use crate::proto::tag::backend as be;
use crate::proto::{emit, views};
use bytes::BytesMut;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where to send a CancelRequest for a server connection.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub upstream: Arc<super::connect::Upstream>,
    pub pid: i32,
    pub secret: i32,
}

/// A server connection as the pool and its clients pass it around: boxed, so a checkout moves
/// a pointer and a client between transactions holds eight bytes, not the whole connection.
pub type ServerConn = Box<Connection>;

pub struct Connection {
    /// What SHOW SERVERS shows; shared with the pool's list of open connections.
    pub info: Arc<crate::stats::servers::ServerInfo>,
    pub stream: Stream,
    pub id: u64,
    pub pid: i32,
    pub secret: i32,
    pub params: SessionParams,
    /// What the server had at login: where the hand-over reset brings it back to.
    pub baseline: SessionParams,
    /// The client whose transaction ran here last (0: none yet).
    pub last_client: u64,
    /// The hand-over reset is due before the next client's work (see [`Connection::hand_to`]).
    pub reset_pending: bool,
    /// Whose claims the session carries (token clients).
    pub claims: crate::identity::claims::Held,
    /// Prepared statements this connection has, by server name (transaction mode).
    pub statements: super::statements::ServerStatements,
    pub created: Instant,
    pub last_used: Instant,
    pub upstream: Arc<super::connect::Upstream>,
    /// The endpoint it was opened on, when its database has several.
    pub via: Option<super::route::Via>,
    /// Opened for one client's own target_session_attrs: closed when that client lets it
    /// go, never given to another.
    pub own: bool,
    /// Holds this connection's place in its pool's count until dropped.
    pub(super) slot: Slot,
}

/// Longest message the proxy reads whole from a server outside the relay (its own statements).
const MAX_INTERNAL_MESSAGE: usize = 1 << 20;

/// Brings a server's session back to its login state before another client's transaction:
/// role and session authorization, every setting (also those changed where the proxy cannot
/// see it: inside functions, DO blocks, set_config under another spelling), WITH HOLD
/// cursors, LISTEN, session advisory locks, temporary tables and sequence state. Prepared
/// statements stay: the proxy keeps track of those. It runs ahead of the client's first
/// message; an error in it closes the server after that transaction (docs/security.md says
/// what a reset cancelled from outside leaves open).
///
/// It starts by ending the server's session if a statement was prepared in SQL: a visible
/// PREPARE or DEALLOCATE already closes the server, so one found here was made out of sight
/// (dynamic SQL in a function or DO block), possibly to replace a statement of the proxy's
/// under its name. The backend terminates itself before the next client's message is read.
pub const HANDOVER_RESET: &str = "SELECT pg_catalog.pg_terminate_backend(pg_catalog.pg_backend_pid()) FROM pg_catalog.pg_prepared_statements WHERE from_sql; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

impl Connection {
    /// The server is about to run work of client `client`. Invariant: no client's work runs
    /// on session state another client left, so when the server changes hands (and `reset`
    /// is on) the hand-over reset is due: settings go back to their login values, and the
    /// client's are applied over those ([`Connection::sync_base`]). Reported parameters keep
    /// their last reported values here: PostgreSQL reports a parameter only when it ends up
    /// different from its last report, and those reports keep `params.reported` true.
    pub fn hand_to(&mut self, client: u64, reset: bool) {
        if reset && self.last_client != 0 && self.last_client != client {
            self.params.unreported = self.baseline.unreported.clone();
            self.reset_pending = true;
            // RESET ALL clears compat claims; a seal is replaced by the next client's.
            self.claims.client = 0;
        }
        self.last_client = client;
    }

    /// What parameter statements start from: the login values when the hand-over reset goes
    /// first, else what the server has.
    pub fn sync_base(&self) -> &SessionParams {
        if self.reset_pending {
            &self.baseline
        } else {
            &self.params
        }
    }

    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            upstream: self.upstream.clone(),
            pid: self.pid,
            secret: self.secret,
        }
    }

    /// Whether a client may have it: not one opened for another client's own
    /// target_session_attrs; a session-mode client only if a session can be held on it; a
    /// client with its own target_session_attrs only if they are the database's (else it gets
    /// a connection of its own).
    pub fn suits(&self, session: bool, attrs: Option<crate::config::SessionAttrs>) -> bool {
        !self.own
            && (!session || self.keeps_sessions())
            && attrs.is_none_or(|a| self.upstream.route.as_ref().is_none_or(|r| r.attrs == a))
    }

    /// Whether it runs on a server of `region` (as its upstream entry says).
    pub fn in_region(&self, region: &str) -> bool {
        self.via
            .as_ref()
            .is_some_and(|v| v.endpoint.region.as_deref() == Some(region))
    }

    /// Whether a session can be held on it (not through a transaction pooler).
    pub fn keeps_sessions(&self) -> bool {
        self.via
            .as_ref()
            .is_none_or(|v| v.endpoint.kind.keeps_sessions())
    }

    /// Runs the proxy's own simple query (reset, check, parameter sync), discarding rows and
    /// keeping ParameterStatus. An ErrorResponse from the server is returned as the error.
    pub async fn run_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), InternalError> {
        tokio::time::timeout(timeout, self.run_internal_inner(sql))
            .await
            .map_err(|_| InternalError::Io(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
    }

    async fn run_internal_inner(&mut self, sql: &str) -> Result<(), InternalError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        emit::query(&mut out, sql);
        self.stream.send(&out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut failure = None;
        loop {
            let (tag, body) =
                read_message(&mut self.stream, &mut buf, MAX_INTERNAL_MESSAGE).await?;
            match tag {
                be::PARAMETER_STATUS => {
                    if let Some((k, v)) = views::parameter_status(&body) {
                        self.params.reported.set(k, v);
                    }
                }
                be::ERROR_RESPONSE => failure = Some(ClientError::from_server(&body)),
                be::READY_FOR_QUERY => {
                    return match failure {
                        Some(e) => Err(InternalError::Server(e)),
                        None if body.first() == Some(&b'I') => Ok(()),
                        None => Err(InternalError::Io(io::Error::other(
                            "server left in a transaction",
                        ))),
                    };
                }
                _ => {}
            }
        }
    }

    /// Runs the proxy's own two-column query and returns its rows as text.
    pub async fn query_pairs(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<(String, Option<String>)>, InternalError> {
        query_pairs(&mut self.stream, sql, timeout).await
    }

    /// Runs `sql` with text parameters through the extended protocol (no quoting, so no
    /// injection) and returns its rows' first two columns as text.
    pub async fn query_pairs_with(
        &mut self,
        sql: &str,
        params: &[&str],
        timeout: Duration,
    ) -> Result<Vec<(String, Option<String>)>, InternalError> {
        query_pairs_with(&mut self.stream, sql, params, timeout).await
    }

    /// The claims client `client` (with `bearer`, if a token client) needs here, or the end
    /// of another client's seal, in round trips of their own: session mode's login and MCP
    /// calls (the relay folds them into its hand-over instead). An error is fatal for the
    /// client and the server is not reused.
    pub async fn deliver_claims(
        &mut self,
        config: &crate::config::Config,
        bearer: Option<&crate::identity::claims::Bearer>,
        client: u64,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        use crate::identity::claims;
        if bearer.is_none() && self.claims.clear() {
            return Ok(());
        }
        let now = claims::Current::of(config, &self.upstream.user, &self.claims);
        let due = claims::due(bearer, &now, client, &mut self.claims, self.pid).map_err(|_| {
            ClientError::server_unavailable(
                "a server holds sealed claims the configuration has no key for",
            )
        })?;
        for d in due {
            match self.query_pairs_with(d.sql, &d.params(), timeout).await {
                Ok(_) => {}
                Err(InternalError::Server(e)) => {
                    tracing::warn!(server = self.id, error = %e, "setting a client's claims failed");
                    return Err(ClientError {
                        severity: emit::Severity::Fatal,
                        ..e
                    });
                }
                Err(InternalError::Io(_)) => return Err(ClientError::server_lost()),
            }
        }
        Ok(())
    }

    /// Sends Terminate so the server ends the backend at once, then drops the socket.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::with_capacity(5);
        emit::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.send(&out)).await;
    }
}

/// Runs a two-column query on a logged-in server stream and returns its rows as text.
pub async fn query_pairs(
    stream: &mut Stream,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<(String, Option<String>)>, InternalError> {
    let mut out = BytesMut::with_capacity(sql.len() + 8);
    emit::query(&mut out, sql);
    tokio::time::timeout(timeout, read_rows(stream, &out))
        .await
        .map_err(|_| InternalError::Io(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
}

/// [`query_pairs`] with text parameters, through the extended protocol.
pub async fn query_pairs_with(
    stream: &mut Stream,
    sql: &str,
    params: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, Option<String>)>, InternalError> {
    let mut out = BytesMut::with_capacity(sql.len() + 64);
    emit::parse_unnamed(&mut out, sql);
    emit::bind_text(&mut out, params);
    emit::execute_unnamed(&mut out);
    emit::sync(&mut out);
    tokio::time::timeout(timeout, read_rows(stream, &out))
        .await
        .map_err(|_| InternalError::Io(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
}

/// Sends `request` and reads two-text-column rows until ReadyForQuery.
async fn read_rows(
    stream: &mut Stream,
    request: &[u8],
) -> Result<Vec<(String, Option<String>)>, InternalError> {
    stream.send(request).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        let (tag, body) = read_message(stream, &mut buf, MAX_INTERNAL_MESSAGE).await?;
        match tag {
            be::DATA_ROW => {
                if let Some((a, b)) = views::two_text_columns(&body) {
                    rows.push((a.to_owned(), b.map(str::to_owned)));
                }
            }
            be::ERROR_RESPONSE => failure = Some(ClientError::from_server(&body)),
            be::READY_FOR_QUERY => {
                return failure.map_or(Ok(rows), |e| Err(InternalError::Server(e)));
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error("server I/O: {0}")]
    Io(#[from] io::Error),
    #[error("server error: {0}")]
    Server(ClientError),
}
