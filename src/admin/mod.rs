//! The admin console: the virtual database `pgsluice` (also answering to `pgbouncer`, so
//! PgBouncer's scripts and exporters work), spoken over the simple query protocol by psql.
//! [`command`] reads a statement, [`show`] builds the SHOW tables, [`control`] runs the
//! commands that change the proxy, [`table`] writes results.

pub mod command;
pub mod control;
pub mod show;
pub mod table;

use crate::app::App;
use crate::config::Config;
use crate::error::ClientError;
use crate::net::Stream;
use crate::net::stream::read_message;
use crate::proto::emit::{self, Severity};
use crate::proto::tag::frontend as fe;
use bytes::BytesMut;
use command::Command;

/// The longest console query accepted.
const MAX_QUERY: usize = 64 * 1024;

/// Whether `database` names the console.
pub fn is_console(database: &str) -> bool {
    database == crate::ADMIN_DATABASE || database == crate::ADMIN_DATABASE_ALIAS
}

/// A logged-in console user.
#[derive(Debug)]
pub struct Console {
    pub user: String,
    /// In `[admin] users`: may run every command; otherwise (`stats_users`) SHOW only.
    pub may_control: bool,
    /// What the client sent behind its password, read with it: the first commands.
    pub early: BytesMut,
}

impl Console {
    /// The console session for `user`, if it may use the console at all.
    pub fn admit(config: &Config, user: &str) -> Option<Console> {
        let listed = |l: &[crate::config::Text]| l.iter().any(|u| u.as_str() == user);
        if listed(&config.admin.users) {
            Some(Console {
                user: user.to_owned(),
                may_control: true,
                early: BytesMut::new(),
            })
        } else if listed(&config.admin.stats_users) {
            Some(Console {
                user: user.to_owned(),
                may_control: false,
                early: BytesMut::new(),
            })
        } else {
            None
        }
    }
}

/// What a console login reports after AuthenticationOk (queued by login already).
pub fn greet(out: &mut BytesMut) {
    for (k, v) in [
        ("server_version", "15.0 (pgsluice)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        emit::parameter_status(out, k, v);
    }
    // Cancels have nothing to stop here: a key nobody else holds.
    emit::backend_key_data(out, 0, rand::random());
    emit::ready_for_query(out, b'I');
}

fn error(out: &mut BytesMut, code: &str, message: &str) {
    emit::error_response(out, Severity::Error, code, message, None);
}

/// Serves console queries until the client leaves.
pub async fn serve(app: &App, stream: &mut Stream, mut console: Console, id: u64) {
    let mut buf = std::mem::take(&mut console.early);
    buf.reserve(1024);
    let mut out = BytesMut::with_capacity(4096);
    // After an extended-protocol message: skip to Sync, then answer with one error.
    let mut refused_extended = false;
    loop {
        let (tag, body) = match read_message(stream, &mut buf, MAX_QUERY).await {
            Ok(m) => m,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let err = ClientError::protocol(format!("admin console: {e}"));
                    err.encode(&mut out);
                    let _ = stream.send(&out).await;
                }
                tracing::debug!(conn = id, error = %e, "admin console client left");
                return;
            }
        };
        match tag {
            fe::TERMINATE => return,
            fe::QUERY => {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body));
                let shutdown = run(app, &console, id, &text, &mut out).await;
                emit::ready_for_query(&mut out, b'I');
                if stream.send(&out).await.is_err() {
                    return;
                }
                out.clear();
                if shutdown {
                    app.request_shutdown();
                }
            }
            fe::SYNC => {
                if std::mem::take(&mut refused_extended) {
                    error(
                        &mut out,
                        "0A000",
                        "the admin console speaks only the simple query protocol",
                    );
                }
                emit::ready_for_query(&mut out, b'I');
                if stream.send(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH => {
                refused_extended = true
            }
            other => {
                let err = ClientError::protocol(format!("invalid frontend message type {other}"));
                tracing::info!(conn = id, error = %err, "admin console protocol violation");
                err.encode(&mut out);
                let _ = stream.send(&out).await;
                return;
            }
        }
    }
}

/// Runs one console query into `out` (without the ReadyForQuery). True: SHUTDOWN was asked.
async fn run(app: &App, console: &Console, id: u64, text: &str, out: &mut BytesMut) -> bool {
    let cmd = match command::parse(text) {
        Ok(c) => c,
        Err(command::ParseError::Empty) => {
            // What PostgreSQL answers to an empty query.
            emit::message(out, b'I', |_| {});
            return false;
        }
        Err(e) => {
            tracing::info!(conn = id, user = %console.user, error = %e, "admin console: bad command");
            error(out, "42601", &e.to_string());
            return false;
        }
    };
    if !cmd.read_only() && !console.may_control {
        tracing::info!(conn = id, user = %console.user, command = ?cmd, "admin console: refused to a stats user");
        error(
            out,
            "42501",
            &format!(
                "permission denied: user \"{}\" may only run SHOW commands",
                console.user
            ),
        );
        return false;
    }
    match cmd {
        Command::Show(what) => match show::table(app, &what) {
            Some(t) => t.encode(out),
            None => error(
                out,
                "42704",
                &format!("unknown SHOW item: {what} (try SHOW HELP)"),
            ),
        },
        other => {
            tracing::info!(conn = id, user = %console.user, command = ?other, "admin console command");
            let shutdown = other == Command::Shutdown;
            match control::run(app, other).await {
                Ok(tag) => table::command_complete(out, tag),
                Err(e) => error(out, &e.code, &e.message),
            }
            return shutdown;
        }
    }
    false
}
