//! One tool call's statement on a pooled server. The call takes a server from its
//! identity's pool exactly as a wire client's transaction does: the hand-over reset when
//! the server changes hands (every call counts as a client of its own, so nothing a call
//! leaves in the session reaches the next one), the identity's claims, then
//!
//! ```text
//! BEGIN [READ ONLY]; SET LOCAL statement_timeout = ...   -- one Query
//! Parse / Bind / Describe / Execute(max_rows + 1) / Sync   -- the statement, one only
//! COMMIT or ROLLBACK                                       -- after its reply
//! ```
//!
//! A read-only call cannot write, whatever its one statement is (a writable CTE, a volatile
//! function that writes, SET TRANSACTION): the transaction is READ ONLY and rolled back.
//! Rows and bytes are bounded while reading; a call dropped midway (the HTTP client went
//! away, the deadline passed) cancels its statement on the server and closes that server.

use crate::app::App;
use crate::backend::pool::Pool;
use crate::backend::server::{HANDOVER_RESET, InternalError, ServerConn};
use crate::error::ClientError;
use crate::identity::Identity;
use crate::identity::claims::Bearer;
use crate::net::Stream;
use crate::proto::tag::backend as be;
use crate::proto::{emit, views};
use bytes::{Buf, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Longest message other than a DataRow read from the server (errors, notices).
const MAX_MESSAGE: usize = 1 << 20;

/// Time past statement_timeout before the proxy gives up on the server itself.
const GRACE: Duration = Duration::from_secs(5);

/// Statements a call may not run: they would end the call's transaction (so the rest of
/// it ran outside READ ONLY, or a prepared transaction outlived it) or change the server's
/// prepared statements behind the proxy's back (the next client's reset would end the
/// backend, or its statements would be gone).
const REFUSED: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
    "deallocate",
    "execute",
    "copy",
];

/// The most SQL text and parameter bytes one call may send.
pub const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// What a call may return and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub statement_timeout: Duration,
}

/// How the call's transaction runs and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// READ ONLY, rolled back.
    ReadOnly,
    /// Read-write, rolled back (EXPLAIN ANALYZE of a write).
    TryWrite,
    /// Read-write, committed when the statement succeeded.
    Write,
}

/// One statement with its text parameters (None: NULL).
pub struct Statement<'a> {
    pub sql: &'a str,
    pub params: &'a [Option<String>],
    pub mode: Mode,
    pub limits: Limits,
}

/// Why rows stopped being collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    Rows,
    Bytes,
}

impl Truncation {
    pub fn as_str(self) -> &'static str {
        match self {
            Truncation::Rows => "max_rows",
            Truncation::Bytes => "max_bytes",
        }
    }
}

/// A statement's result.
#[derive(Debug, Default)]
pub struct Rows {
    /// Name and type OID of each column.
    pub columns: Vec<(String, u32)>,
    /// Text values (None: NULL).
    pub rows: Vec<Vec<Option<String>>>,
    pub truncated: Option<Truncation>,
    /// The command tag (`SELECT 3`, `INSERT 0 1`).
    pub command: String,
    /// Row data bytes returned.
    pub bytes: usize,
}

/// An error PostgreSQL reported for the statement: what the model is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlError {
    pub code: String,
    pub message: String,
    pub detail: String,
    pub hint: String,
    pub position: String,
}

impl SqlError {
    fn from_body(body: &[u8]) -> SqlError {
        let f = views::error_fields(body).unwrap_or_default();
        SqlError {
            code: if f.code.is_empty() { "XX000" } else { f.code }.to_owned(),
            message: f.message.to_owned(),
            detail: f.detail.to_owned(),
            hint: f.hint.to_owned(),
            position: f.position.to_owned(),
        }
    }

    fn new(code: &str, message: &str) -> SqlError {
        SqlError {
            code: code.to_owned(),
            message: message.to_owned(),
            ..SqlError::default()
        }
    }
}

impl From<ClientError> for SqlError {
    fn from(e: ClientError) -> SqlError {
        SqlError::new(&e.code, &e.message)
    }
}

/// Runs `stmt` for `identity` in `database`. Errors the statement or the proxy raise come
/// back as [`SqlError`] (the tool result shows them), never as a transport failure.
pub async fn run(
    app: &Arc<App>,
    identity: &Arc<Identity>,
    database: &str,
    stmt: &Statement<'_>,
) -> Result<Rows, SqlError> {
    refuse(stmt)?;
    let config = app.config.load_full();
    let pool = pool_for(app, &config, identity, database)?;
    let start = std::time::Instant::now();
    let result = run_on(app, &config, &pool, identity, stmt).await;
    record(app, &pool, stmt.sql, start.elapsed(), &result);
    result
}

/// A statement a call may not run, refused before any server is taken.
fn refuse(stmt: &Statement<'_>) -> Result<(), SqlError> {
    let size = stmt.sql.len() + stmt.params.iter().flatten().map(String::len).sum::<usize>();
    if size > MAX_STATEMENT_BYTES {
        return Err(SqlError::new(
            "54000",
            "the statement and its parameters are larger than 16 MiB",
        ));
    }
    let word = crate::sql::session::first_keyword(stmt.sql);
    match word.as_deref().filter(|w| REFUSED.contains(w)) {
        Some(w) => Err(SqlError {
            hint: "each call runs one statement in a transaction of its own; COPY, \
                   transaction control and SQL-level prepared statements are not available"
                .into(),
            ..SqlError::new(
                "0A000",
                &format!("{} is not available through MCP", w.to_ascii_uppercase()),
            )
        }),
        None => Ok(()),
    }
}

/// SHOW QUERIES counts tool calls with the wire clients' statements.
fn record(app: &App, pool: &Pool, sql: &str, took: Duration, result: &Result<Rows, SqlError>) {
    use crate::stats::queries::Sample;
    if !app.queries.enabled() {
        return;
    }
    let sample = Sample {
        fingerprint: crate::sql::fingerprint::fingerprint(sql),
        text: crate::sql::fingerprint::normalize(sql).into(),
        us: took.as_micros() as u64,
        rows: result.as_ref().map_or(0, |r| r.rows.len() as u64),
        error: result.is_err(),
    };
    app.queries.record(&pool.key, &mut vec![sample]);
}

/// A call counts against its identity's transaction rate (waiting or refused as configured)
/// and takes its share of the pool, as a wire client's transaction does.
async fn within_limits(
    app: &App,
    identity: &Identity,
) -> Result<Option<Arc<crate::backend::pool::Share>>, SqlError> {
    use crate::admission::identities::RateVerdict;
    if identity.limits.is_none() {
        return Ok(None);
    }
    let admitted = app
        .identities
        .admit(&identity.limit_key(), identity.limits, false)?;
    loop {
        match admitted.start_transaction() {
            RateVerdict::Go => return Ok(admitted.share()),
            // A call waits at most a second for its rate; then it is refused like the rest.
            RateVerdict::WaitFor(d) if d <= Duration::from_secs(1) => tokio::time::sleep(d).await,
            RateVerdict::WaitFor(_) => {
                return Err(SqlError::new(
                    "53400",
                    "the transaction rate limit's wait is too long for a tool call",
                ));
            }
            RateVerdict::Refused(e) => return Err(e.into()),
        }
    }
}

async fn run_on(
    app: &Arc<App>,
    config: &crate::config::Config,
    pool: &Arc<Pool>,
    identity: &Arc<Identity>,
    stmt: &Statement<'_>,
) -> Result<Rows, SqlError> {
    let limit = stmt.limits.statement_timeout + GRACE;
    let mut lease = Lease::checkout(app, config, pool, identity, limit).await?;
    let server = lease.server.as_mut().ok_or_else(lost)?;
    lease.busy = true;
    let out = match tokio::time::timeout(limit, transaction(server, stmt)).await {
        Ok(out) => out,
        Err(_) => {
            // The server did not answer within statement_timeout and the grace: it is
            // cancelled and closed by the lease.
            return Err(SqlError::new(
                "57014",
                "canceling statement due to statement timeout",
            ));
        }
    };
    match out {
        Ok(done) => {
            // Otherwise the lease cancels and closes the server.
            lease.busy = !done.reusable;
            done.result
        }
        Err(e) => {
            tracing::info!(error = %e, "mcp: server connection failed during a call");
            Err(lost())
        }
    }
}

fn lost() -> SqlError {
    ClientError::server_lost().into()
}

/// The pool an identity's calls on `database` use, after its access checks.
fn pool_for(
    app: &App,
    config: &crate::config::Config,
    identity: &Identity,
    database: &str,
) -> Result<Arc<Pool>, SqlError> {
    if !crate::identity::database_allowed(config, identity, database) {
        return Err(SqlError::new(
            "42501",
            &format!(
                "identity {:?} may not use database {database:?}",
                &*identity.name
            ),
        ));
    }
    if app.pools.is_disabled(database) {
        return Err(ClientError::database_disabled(database).into());
    }
    let db = config
        .database(database)
        .ok_or_else(|| SqlError::from(ClientError::unknown_database(database)))?;
    let user = crate::identity::pool_user(config, identity)
        .ok_or_else(|| SqlError::new("28000", "the identity's role is no longer configured"))?;
    app.pools
        .pool_for(config, &db, &user, None)
        .map_err(|e| e.to_client(database).into())
}

/// A server taken for one call: returned to its pool when the call finished cleanly;
/// cancelled and closed when the call is dropped while the server works.
struct Lease {
    pool: Arc<Pool>,
    server: Option<ServerConn>,
    busy: bool,
}

impl Lease {
    /// A server of `pool`, reset if another client used it last, carrying the identity's
    /// claims.
    async fn checkout(
        app: &App,
        config: &crate::config::Config,
        pool: &Arc<Pool>,
        identity: &Arc<Identity>,
        limit: Duration,
    ) -> Result<Lease, SqlError> {
        let never = tokio::sync::Notify::new();
        let notified = std::pin::pin!(never.notified());
        let share = within_limits(app, identity).await?;
        let demand = crate::backend::Demand {
            class: identity
                .priority
                .unwrap_or(pool.settings().fairness.default_class),
            share,
            session: false,
            attrs: None,
            region: None,
        };
        let server = pool
            .checkout(notified, &demand)
            .await
            .map_err(|e| SqlError::from(e.to_client()))?;
        let mut lease = Lease {
            pool: pool.clone(),
            server: Some(server),
            busy: true,
        };
        let server = lease.server.as_mut().ok_or_else(lost)?;
        // A client id of its own: the next call or client finds the server reset.
        let client = app.next_client_id();
        server.hand_to(client, true);
        if std::mem::take(&mut server.reset_pending) {
            server
                .run_internal(HANDOVER_RESET, limit)
                .await
                .map_err(internal)?;
        }
        let bearer = Bearer::new(identity.clone());
        server
            .deliver_claims(config, Some(&bearer), client, limit)
            .await?;
        lease.busy = false;
        Ok(lease)
    }
}

fn internal(e: InternalError) -> SqlError {
    match e {
        InternalError::Server(e) => e.into(),
        InternalError::Io(_) => lost(),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if !self.busy {
            self.pool.release(server);
            return;
        }
        // Dropped mid-statement: the server is cancelled (so the statement stops now, not
        // when it notices the closed socket) and closed.
        let target = server.cancel_target();
        drop(server);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = crate::backend::connect::send_cancel(
                    &target.upstream,
                    target.pid,
                    target.secret,
                )
                .await;
            });
        }
    }
}

/// A transaction's outcome, and whether its server may serve another client.
struct Done {
    result: Result<Rows, SqlError>,
    reusable: bool,
}

/// The whole transaction on `server`: Err for a server that broke (the lease closes it).
async fn transaction(server: &mut ServerConn, stmt: &Statement<'_>) -> io::Result<Done> {
    let mut out = BytesMut::with_capacity(stmt.sql.len() + 256);
    let begin = match stmt.mode {
        Mode::ReadOnly => "BEGIN READ ONLY",
        Mode::TryWrite | Mode::Write => "BEGIN READ WRITE",
    };
    let ms = stmt.limits.statement_timeout.as_millis().max(1);
    emit::query(
        &mut out,
        &format!("{begin}; SET LOCAL statement_timeout = {ms}"),
    );
    server.stream.send(&out).await?;
    let mut reader = Reader::default();
    // Not pipelined behind BEGIN: had it failed, the statement would run outside the
    // read-only transaction.
    reader
        .until_ready(&mut server.stream, None)
        .await?
        .map_err(|e| io::Error::other(format!("BEGIN failed: {} {}", e.code, e.message)))?;
    if reader.status != b'T' {
        return Err(io::Error::other("BEGIN left no transaction open"));
    }
    out.clear();
    emit::parse_unnamed(&mut out, stmt.sql);
    let params: Vec<Option<&str>> = stmt.params.iter().map(|p| p.as_deref()).collect();
    emit::bind_nullable(&mut out, &params);
    emit::describe_portal(&mut out);
    let max = i32::try_from(stmt.limits.max_rows.saturating_add(1)).unwrap_or(i32::MAX);
    emit::execute_rows(&mut out, max);
    emit::sync(&mut out);
    server.stream.send(&out).await?;
    let result = reader.statement(&mut server.stream, &stmt.limits).await?;
    if reader.abandoned || !matches!(reader.status, b'T' | b'E') {
        // COPY TO STDOUT still streaming, or the transaction ended under the statement
        // (nothing the refusals above let through should): not reused.
        let e = SqlError::new("0A000", "the statement left the call's transaction");
        return Ok(Done {
            result: result.and(Err(e)),
            reusable: false,
        });
    }
    let commit = stmt.mode == Mode::Write && result.is_ok();
    out.clear();
    emit::query(&mut out, if commit { "COMMIT" } else { "ROLLBACK" });
    // Session advisory locks survive the transaction: none is kept while the server idles.
    emit::query(&mut out, "SELECT pg_catalog.pg_advisory_unlock_all()");
    server.stream.send(&out).await?;
    let ended = reader.until_ready(&mut server.stream, None).await?;
    let unlocked = reader.until_ready(&mut server.stream, None).await?;
    if unlocked.is_err() || reader.status != b'I' {
        return Err(io::Error::other("server left in a transaction"));
    }
    // COMMIT of a transaction that failed on commit (a deferred constraint) reports it.
    let result = match (result, ended) {
        (Ok(_), Err(e)) if commit => Err(e),
        (r, _) => r,
    };
    Ok(Done {
        result,
        reusable: true,
    })
}

/// Reads a server's replies with the call's bounds.
#[derive(Default)]
struct Reader {
    buf: BytesMut,
    status: u8,
    /// Stopped reading before the server's ReadyForQuery (a COPY TO STDOUT).
    abandoned: bool,
}

/// One message, or a DataRow too large for what is left of the byte budget (skipped).
enum Frame {
    Msg(u8, BytesMut),
    Skipped,
}

impl Reader {
    /// Reads to ReadyForQuery, returning the first error reported on the way.
    async fn until_ready(
        &mut self,
        stream: &mut Stream,
        mut first_error: Option<SqlError>,
    ) -> io::Result<Result<(), SqlError>> {
        loop {
            if let Frame::Msg(tag, body) = self.next(stream, 0).await? {
                match tag {
                    be::ERROR_RESPONSE if first_error.is_none() => {
                        first_error = Some(SqlError::from_body(&body))
                    }
                    be::READY_FOR_QUERY => {
                        self.status = body.first().copied().unwrap_or(0);
                        return Ok(first_error.map_or(Ok(()), Err));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The statement's replies through its ReadyForQuery.
    async fn statement(
        &mut self,
        stream: &mut Stream,
        limits: &Limits,
    ) -> io::Result<Result<Rows, SqlError>> {
        let mut rows = Rows::default();
        loop {
            let budget = limits.max_bytes.saturating_sub(rows.bytes);
            let (tag, body) = match self.next(stream, budget).await? {
                Frame::Skipped => {
                    rows.truncated = Some(Truncation::Bytes);
                    continue;
                }
                Frame::Msg(tag, body) => (tag, body),
            };
            match tag {
                be::ROW_DESCRIPTION => {
                    let cols = views::row_description(&body).ok_or_else(malformed)?;
                    rows.columns = cols
                        .into_iter()
                        .map(|c| (c.name.to_owned(), c.type_oid))
                        .collect();
                }
                be::DATA_ROW => collect(&mut rows, &body, limits)?,
                be::COMMAND_COMPLETE => {
                    rows.command = views::command_tag(&body).unwrap_or("").to_owned();
                }
                be::PORTAL_SUSPENDED => {}
                be::ERROR_RESPONSE => {
                    let e = SqlError::from_body(&body);
                    return self
                        .until_ready(stream, Some(e))
                        .await
                        .map(|r| r.map(|()| rows));
                }
                be::COPY_IN_RESPONSE => {
                    // Sync is ignored in COPY FROM STDIN: fail it and sync again.
                    let mut out = BytesMut::new();
                    emit::copy_fail(&mut out, "COPY FROM STDIN is not available through MCP");
                    emit::sync(&mut out);
                    stream.send(&out).await?;
                }
                be::COPY_OUT_RESPONSE => {
                    let e = SqlError::new(
                        "0A000",
                        "COPY TO STDOUT is not available through MCP: use SELECT",
                    );
                    return self
                        .until_ready(stream, Some(e))
                        .await
                        .map(|r| r.map(|()| rows));
                }
                be::READY_FOR_QUERY => {
                    self.status = body.first().copied().unwrap_or(0);
                    return Ok(Ok(rows));
                }
                _ => {}
            }
        }
    }

    /// The next message; a DataRow longer than `budget` bytes is read past, not kept.
    async fn next(&mut self, stream: &mut Stream, budget: usize) -> io::Result<Frame> {
        loop {
            if let Some(&[tag, a, b, c, d]) = self.buf.get(..5) {
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                let body = len.checked_sub(4).ok_or_else(malformed)?;
                if tag == be::DATA_ROW && body > budget {
                    self.skip(stream, 1 + len).await?;
                    return Ok(Frame::Skipped);
                }
                if tag != be::DATA_ROW && body > MAX_MESSAGE {
                    return Err(malformed());
                }
                if self.buf.len() > len {
                    let mut msg = self.buf.split_to(1 + len);
                    msg.advance(5);
                    return Ok(Frame::Msg(tag, msg));
                }
                self.buf.reserve(1 + len - self.buf.len());
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
        }
    }

    /// Reads past `n` bytes without keeping them.
    async fn skip(&mut self, stream: &mut Stream, mut n: usize) -> io::Result<()> {
        loop {
            let here = n.min(self.buf.len());
            self.buf.advance(here);
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.buf.reserve(n.min(64 * 1024));
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
        }
    }
}

/// Keeps one DataRow within the call's limits.
fn collect(rows: &mut Rows, body: &[u8], limits: &Limits) -> io::Result<()> {
    if rows.truncated.is_some() {
        return Ok(());
    }
    if rows.rows.len() >= limits.max_rows {
        rows.truncated = Some(Truncation::Rows);
        return Ok(());
    }
    let fields = views::data_row(body).ok_or_else(malformed)?;
    rows.bytes += body.len();
    rows.rows.push(
        fields
            .into_iter()
            .map(|f| f.map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect(),
    );
    Ok(())
}

fn malformed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed message from the server",
    )
}
