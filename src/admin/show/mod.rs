//! One file per SHOW: each builds a [`Table`] from the proxy's state, with PgBouncer's
//! columns (names and order, doc/usage.md) first and pgsluice's own after them. The HTTP
//! JSON endpoints serve the same tables.

mod activity;
mod clients;
mod config;
mod databases;
mod lists;
mod mem;
mod pools;
mod queries;
mod servers;
mod stats;
mod upstreams;
mod users;

use super::table::{Table, Type};
use crate::app::App;

/// The table for `SHOW what`, or None for a name the console does not know.
pub fn table(app: &App, what: &str) -> Option<Table> {
    Some(match what {
        "pools" => pools::table(app),
        "stats" => stats::stats(app),
        "stats_totals" => stats::totals(app),
        "stats_averages" => stats::averages(app),
        "clients" => clients::table(app),
        "servers" => servers::table(app),
        "databases" => databases::table(app),
        "users" => users::table(app),
        "config" => config::table(app),
        "lists" => lists::table(app),
        "mem" => mem::table(app),
        "queries" => queries::table(app),
        "activity" => activity::table(app),
        "upstreams" => upstreams::table(app),
        "version" => {
            let mut t = Table::new(&[("version", Type::Text)]);
            t.push(vec![version().into()]);
            t
        }
        "help" => help(),
        _ => return None,
    })
}

pub fn version() -> String {
    format!("pgsluice {}", env!("CARGO_PKG_VERSION"))
}

fn help() -> Table {
    let mut t = Table::new(&[("command", Type::Text)]);
    for c in [
        "SHOW HELP|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|CLIENTS|SERVERS|DATABASES|USERS|CONFIG|LISTS|MEM|QUERIES|ACTIVITY|UPSTREAMS|VERSION",
        "RELOAD",
        "PAUSE [db]",
        "RESUME [db]",
        "DISABLE db",
        "ENABLE db",
        "KILL db",
        "KILL_CLIENT id",
        "RECONNECT [db]",
        "SHUTDOWN [WAIT_CLOSE]",
    ] {
        t.push(vec![c.into()]);
    }
    t
}

/// The columns SHOW CLIENTS and SHOW SERVERS share (PgBouncer's order).
const CONNECTION_COLUMNS: [(&str, Type); 21] = [
    ("type", Type::Text),
    ("user", Type::Text),
    ("database", Type::Text),
    ("replication", Type::Text),
    ("state", Type::Text),
    ("addr", Type::Text),
    ("port", Type::Int4),
    ("local_addr", Type::Text),
    ("local_port", Type::Int4),
    ("connect_time", Type::Text),
    ("request_time", Type::Text),
    ("wait", Type::Int4),
    ("wait_us", Type::Int4),
    ("close_needed", Type::Int4),
    ("ptr", Type::Text),
    ("link", Type::Text),
    ("remote_pid", Type::Int4),
    ("tls", Type::Text),
    ("application_name", Type::Text),
    ("prepared_statements", Type::Int4),
    ("id", Type::Int4),
];

/// PgBouncer's `load_balance_hosts` column: `disable` for one server; with several,
/// pgsluice chooses by health, role and proximity rather than in turn
/// (docs/resilience.md), which it names `proximity`.
fn load_balance_hosts(several: bool) -> &'static str {
    if several { "proximity" } else { "disable" }
}

/// A connection id in PgBouncer's int4 `id` column: its low 31 bits (ids start again from 0
/// after 2^31 connections; KILL_CLIENT accepts either form).
pub fn int4_id(id: u64) -> i32 {
    (id & 0x7fff_ffff) as i32
}

/// Seconds and the microseconds beyond them, as PgBouncer splits wait times.
fn split_us(us: u64) -> (u64, u64) {
    (us / 1_000_000, us % 1_000_000)
}

/// PgBouncer's `ptr` column: an opaque handle; ours is the connection id in hex, so `link`
/// in SHOW CLIENTS matches `ptr` in SHOW SERVERS and the other way round.
fn ptr(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!("{id:x}")
    }
}
