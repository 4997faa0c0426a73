//! SHOW STATS, STATS_TOTALS and STATS_AVERAGES: per database (summed over its pools), totals
//! since start and per-second averages over the last `stats_period`. Times in microseconds.

use super::{Table, Type};
use crate::app::App;
use crate::stats::totals::Snapshot;

/// (database, totals, averages), databases in name order.
fn per_database(app: &App) -> Vec<(String, Snapshot, Snapshot)> {
    let mut out: Vec<(String, Snapshot, Snapshot)> = Vec::new();
    for p in app.pools.all() {
        let total = p.stats.totals.snapshot();
        let avg = p.stats.averages();
        match out.iter_mut().find(|(d, _, _)| **d == *p.key.database) {
            Some((_, t, a)) => {
                *t = *t + total;
                *a = *a + avg;
            }
            None => out.push((p.key.database.to_string(), total, avg)),
        }
    }
    out
}

const FIELDS: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

fn values(s: &Snapshot) -> [u64; 11] {
    [
        s.server_assignments,
        s.xacts,
        s.queries,
        s.received,
        s.sent,
        s.xact_us,
        s.query_us,
        s.wait_us,
        s.client_parses,
        s.server_parses,
        s.binds,
    ]
}

fn simple(app: &App, averages: bool) -> Table {
    let mut cols = vec![("database", Type::Text)];
    // PgBouncer 1.25 names the parse and bind averages avg_*, and types every figure numeric.
    let avg_name = |f: &&'static str| match (averages, *f) {
        (true, "client_parse_count") => "avg_client_parse_count",
        (true, "server_parse_count") => "avg_server_parse_count",
        (true, "bind_count") => "avg_bind_count",
        (_, f) => f,
    };
    cols.extend(FIELDS.iter().map(|f| (avg_name(f), Type::Numeric)));
    let mut t = Table::new(&cols);
    for (db, total, avg) in per_database(app) {
        let mut row = vec![db.into()];
        let s = if averages { avg } else { total };
        row.extend(values(&s).iter().map(|v| (*v).into()));
        t.push(row);
    }
    t
}

pub fn totals(app: &App) -> Table {
    simple(app, false)
}

pub fn averages(app: &App) -> Table {
    simple(app, true)
}

/// SHOW STATS: PgBouncer's own names (total_received, avg_recv, ...).
pub fn stats(app: &App) -> Table {
    const TOTAL: [&str; 11] = [
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_client_parse_count",
        "total_server_parse_count",
        "total_bind_count",
    ];
    const AVG: [&str; 11] = [
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ];
    let mut cols = vec![("database", Type::Text)];
    cols.extend(TOTAL.iter().chain(AVG.iter()).map(|f| (*f, Type::Numeric)));
    let mut t = Table::new(&cols);
    for (db, total, avg) in per_database(app) {
        let mut row = vec![db.into()];
        row.extend(values(&total).iter().map(|v| (*v).into()));
        row.extend(values(&avg).iter().map(|v| (*v).into()));
        t.push(row);
    }
    t
}
