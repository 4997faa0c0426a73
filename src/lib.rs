//! pgsluice: a PostgreSQL wire-protocol pooling proxy for AI agents.
//!
//! The flow of one client connection, module by module:
//! ```text
//! net::listener        accept on TCP (IPv4, IPv6) or a unix socket
//!  -> frontend::handshake   SSLRequest/GSSENCRequest ('N'), CancelRequest, StartupMessage
//!  -> frontend::login       SCRAM-SHA-256 or md5 against [[users]] (auth::scram, auth::md5)
//!  -> backend::pools        the pool for (database, role); backend::pool checkout/release
//!  -> frontend::session     greeting, then the relay loop in session or transaction mode
//!  -> relay                 bytes both ways; transaction boundaries from ReadyForQuery
//!  -> frontend::session     cleanup: reset and return the server, or close it
//! ```
//! A server connection: backend::connect (socket, login, ParameterStatus, BackendKeyData)
//! -> idle in its pool (checked before reuse) -> checked out -> released or closed.
//! A console login (database `pgsluice`/`pgbouncer`) goes to `admin` instead of the relay.
//! `stats` holds what is counted (the relay's meter, per-pool totals, clients, servers, query
//! fingerprints); `metrics` and `http` read it. `proto` is the wire format and depends on
//! nothing else here; `config` is the TOML model.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod admission;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod demo;
pub mod devdb;
pub mod error;
pub mod frontend;
pub mod http;
pub mod identity;
pub mod import_pgbouncer;
pub mod install_sql;
pub mod log;
pub mod mcp;
pub mod metrics;
pub mod net;
pub mod pool_key;
pub mod proto;
pub mod relay;
pub mod spare;
pub mod sql;
pub mod stats;

/// The virtual database of the admin console.
pub const ADMIN_DATABASE: &str = "pgsluice";
/// Its other name, PgBouncer's, for tools written against PgBouncer.
pub const ADMIN_DATABASE_ALIAS: &str = "pgbouncer";
