//! SHOW LISTS: how many of each thing the proxy holds.

use super::{Table, Type};
use crate::app::App;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[("list", Type::Text), ("items", Type::Int4)]);
    let config = app.config.load();
    let pools = app.pools.all();
    let (mut used, mut free) = (0usize, 0usize);
    for p in &pools {
        let c = p.counts();
        used += c.open - c.idle;
        free += c.idle;
    }
    let logged_in = app.clients.len();
    for (name, n) in [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", logged_in),
        // Connections still logging in, and admin console sessions.
        (
            "login_clients",
            app.client_count().saturating_sub(logged_in),
        ),
        ("free_servers", free),
        ("used_servers", used),
        ("query_fingerprints", app.queries.len()),
        ("locked_out_addresses", app.limits.locked_out()),
        ("auth_cache", app.auth_cache.len()),
    ] {
        t.push(vec![name.into(), n.into()]);
    }
    t
}
