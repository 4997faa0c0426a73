//! Several upstreams for one database (docs/resilience.md): the servers a database may use,
//! which of them a client wants (libpq's `target_session_attrs`), and the health and circuit
//! knobs. Which server is the primary is learned from the servers, never configured.

use super::text::Text;
use serde::Deserialize;

/// libpq's `target_session_attrs`: which server of a database's upstreams a connection wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionAttrs {
    /// The first that answers.
    #[default]
    Any,
    /// One that accepts writes: not in recovery, `default_transaction_read_only` off.
    ReadWrite,
    /// One that does not: in recovery, or `default_transaction_read_only` on.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Standby,
    /// A standby if one is up, else any.
    PreferStandby,
}

impl SessionAttrs {
    /// libpq's spelling.
    pub fn parse(s: &str) -> Option<SessionAttrs> {
        [
            SessionAttrs::Any,
            SessionAttrs::ReadWrite,
            SessionAttrs::ReadOnly,
            SessionAttrs::Primary,
            SessionAttrs::Standby,
            SessionAttrs::PreferStandby,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// What an upstream is: a PostgreSQL server, or a pooler in front of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    #[default]
    Postgres,
    /// Supavisor or PgBouncer in session mode: a server per connection, session state kept.
    SessionPooler,
    /// Supavisor or PgBouncer in transaction mode: no session state between transactions, no
    /// LISTEN; only transaction-mode clients go there.
    TransactionPooler,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Postgres => "postgres",
            EndpointKind::SessionPooler => "session_pooler",
            EndpointKind::TransactionPooler => "transaction_pooler",
        }
    }

    /// Whether a session (session mode, LISTEN) can be held there.
    pub fn keeps_sessions(self) -> bool {
        self != EndpointKind::TransactionPooler
    }
}

/// One entry of a database's `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// Host name, IPv4 or IPv6 literal, or a unix socket directory (starts with `/`).
    pub host: Text,
    #[serde(default)]
    pub port: Option<u16>,
    /// Where it runs: an instance prefers upstreams of its own `[general] region`.
    #[serde(default)]
    pub region: Option<Text>,
    #[serde(default)]
    pub kind: EndpointKind,
    /// Supavisor's tenant: the upstream user becomes `user.tenant`.
    #[serde(default)]
    pub tenant: Option<Text>,
}
