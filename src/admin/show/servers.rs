//! SHOW SERVERS: one row per open server connection, PgBouncer's columns; `link` is the
//! client it serves (that client's `ptr`), `remote_pid` the PostgreSQL backend pid.

use super::{CONNECTION_COLUMNS, Table, ptr};
use crate::app::App;
use crate::stats::format_time;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&CONNECTION_COLUMNS);
    for p in app.pools.all() {
        for s in p.servers() {
            t.push(vec![
                "S".into(),
                p.key.role.as_ref().into(),
                p.key.database.as_ref().into(),
                "none".into(),
                s.state().as_str().into(),
                s.addr.as_str().into(),
                s.port.into(),
                s.local_addr.to_string().into(),
                s.local_port.into(),
                format_time(s.connect_time).into(),
                format_time(s.request_time()).into(),
                0u64.into(),
                0u64.into(),
                0u64.into(),
                ptr(s.id).into(),
                ptr(s.link()).into(),
                s.pid.into(),
                s.tls.as_str().into(),
                "".into(),
                s.prepared().into(),
                super::int4_id(s.id).into(),
            ]);
        }
    }
    t
}
