//! The errors a client can be sent: SQLSTATE, severity and a client-safe message. Internal
//! detail (upstream addresses, which users exist) goes to the log, never into these.

use crate::proto::emit::{self, Severity};
use bytes::BytesMut;
use std::borrow::Cow;

/// An error to report to a client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: Cow<'static, str>,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }

    /// 08P01: the client broke the protocol.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal("08P01", message)
    }
    /// 28P01: wrong password, or a user that does not exist (indistinguishable on purpose).
    pub fn auth_failed(user: &str, method: &str) -> Self {
        Self::fatal(
            "28P01",
            format!("{method} authentication failed for user \"{user}\""),
        )
    }
    /// 28000: refused before any password was checked.
    pub fn not_authorized(message: impl Into<String>) -> Self {
        Self::fatal("28000", message)
    }
    /// 3D000
    pub fn unknown_database(db: &str) -> Self {
        Self::fatal("3D000", format!("database \"{db}\" does not exist"))
    }
    /// 53300: the fallback database `*` has made pools for as many other names as it may.
    pub fn too_many_databases(db: &str, max: usize) -> Self {
        Self::fatal(
            "53300",
            format!(
                "database \"{db}\" would be one more than the {max} the fallback database \"*\" may pool; list it in [[databases]]"
            ),
        )
    }
    /// 53300
    pub fn too_many_clients() -> Self {
        Self::fatal("53300", "sorry, too many clients already")
    }
    /// 53300 for one transaction, with a message saying which limit (shedding, an
    /// identity's share of a pool); the connection stays open.
    pub fn over_limit(message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Error,
            code: Cow::Borrowed("53300"),
            message: message.into(),
        }
    }
    /// 53300 refusing a connection (an identity's max_user_client_connections).
    pub fn over_limit_fatal(message: impl Into<String>) -> Self {
        Self::fatal("53300", message)
    }
    /// 53400 (configuration_limit_exceeded) for a transaction over its identity's rate.
    pub fn over_rate(message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Error,
            code: Cow::Borrowed("53400"),
            message: message.into(),
        }
    }
    /// 57P03: no server connection could be had.
    pub fn server_unavailable(message: impl Into<String>) -> Self {
        Self::fatal("57P03", message)
    }
    /// 57014, as PostgreSQL words a user's cancel.
    pub fn canceled() -> Self {
        ClientError {
            severity: Severity::Error,
            code: Cow::Borrowed("57014"),
            message: "canceling statement due to user request".into(),
        }
    }
    /// 57014 for query_timeout.
    pub fn query_timeout() -> Self {
        ClientError {
            severity: Severity::Error,
            code: Cow::Borrowed("57014"),
            message: "canceling statement due to query_timeout".into(),
        }
    }
    /// 25P03
    pub fn idle_transaction_timeout() -> Self {
        Self::fatal(
            "25P03",
            "terminating connection due to idle_transaction_timeout",
        )
    }
    /// 57P05
    pub fn client_idle_timeout() -> Self {
        Self::fatal("57P05", "terminating connection due to client_idle_timeout")
    }
    /// 57P01
    pub fn shutting_down() -> Self {
        Self::fatal("57P01", "terminating connection due to pgsluice shutdown")
    }
    /// 08006: the server went away under the client.
    pub fn server_lost() -> Self {
        Self::fatal("08006", "server connection closed unexpectedly")
    }
    /// 08006: the hand-over reset was interrupted; the client's request did not run.
    pub fn handover_failed() -> Self {
        Self::fatal(
            "08006",
            "server connection was interrupted while being prepared for this client (a cancel from another session, or its claims could not be set: see the log); the request did not run",
        )
    }
    /// 08006: the server ended its session while being prepared for the client (it restarted,
    /// or was terminated); the client's request did not run and may be retried.
    pub fn handover_lost() -> Self {
        Self::fatal(
            "08006",
            "server connection closed unexpectedly while being prepared for this client; the request did not run",
        )
    }
    /// A per-address limit (53300 and friends), FATAL.
    pub fn limit(code: &'static str, message: &'static str) -> Self {
        Self::fatal(code, message)
    }
    /// 28000: refused by pg_hba-style rules or address lists, naming no user.
    pub fn address_refused() -> Self {
        Self::fatal(
            "28000",
            "connection refused by pgsluice's access rules for this address",
        )
    }
    /// 57P01, as PostgreSQL words pg_terminate_backend: KILL_CLIENT or KILL db.
    pub fn admin_shutdown() -> Self {
        Self::fatal(
            "57P01",
            "terminating connection due to administrator command",
        )
    }
    /// 57P03: DISABLE db.
    pub fn database_disabled(db: &str) -> Self {
        Self::fatal(
            "57P03",
            format!(
                "database \"{db}\" does not allow connections now (disabled by the admin console)"
            ),
        )
    }
    /// 22023: a startup parameter pgsluice reads has a value it does not know.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::fatal("22023", message)
    }
    /// 0A000
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::fatal("0A000", message)
    }
    /// An error PostgreSQL itself sent, passed on with its own SQLSTATE.
    pub fn upstream(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        ClientError {
            severity,
            code: Cow::Owned(code.to_owned()),
            message: message.into(),
        }
    }

    /// The one reading of a server's ErrorResponse body: its severity (FATAL and PANIC are
    /// fatal, anything else an ERROR), its SQLSTATE (XX000, PostgreSQL's internal_error, when
    /// a malformed body has none) and its message.
    pub fn from_server(body: &[u8]) -> Self {
        let f = crate::proto::views::error_fields(body).unwrap_or_default();
        let severity = match f.severity {
            "FATAL" | "PANIC" => Severity::Fatal,
            _ => Severity::Error,
        };
        let code = if f.code.is_empty() { "XX000" } else { f.code };
        ClientError::upstream(severity, code, f.message)
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        emit::error_response(buf, self.severity, &self.code, &self.message, None);
    }
}
