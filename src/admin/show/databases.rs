//! SHOW DATABASES: one row per configured database, with its limits, the server
//! connections open to it now, and whether it is paused or disabled.

use super::{Table, Type};
use crate::app::App;
use std::borrow::Cow;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("database", Type::Text),
        ("force_user", Type::Text),
        ("pool_size", Type::Int4),
        ("min_pool_size", Type::Int4),
        ("reserve_pool_size", Type::Int4),
        ("server_lifetime", Type::Int4),
        ("pool_mode", Type::Text),
        ("load_balance_hosts", Type::Text),
        ("max_connections", Type::Int4),
        ("current_connections", Type::Int4),
        ("max_client_connections", Type::Int4),
        ("current_client_connections", Type::Int4),
        ("paused", Type::Int4),
        ("disabled", Type::Int4),
    ]);
    let config = app.config.load();
    let g = &config.general;
    let clients = app.clients.all();
    // The configured entries, then the names the fallback `*` made pools for (PgBouncer
    // lists its automatic databases too).
    let mut made: Vec<String> = app
        .pools
        .all()
        .iter()
        .map(|p| p.key.database.to_string())
        .filter(|d| !config.lists_database(d))
        .collect();
    made.dedup();
    let fallback = made.iter().filter_map(|d| config.database(d));
    let listed = config.databases.iter().map(|d| Cow::Borrowed(d.get_ref()));
    for db in listed.chain(fallback) {
        let servers: usize = app
            .pools
            .of(Some(&db.name))
            .iter()
            .map(|p| p.counts().open)
            .sum();
        let client_count = clients
            .iter()
            .filter(|c| c.facts.database() == &*db.name)
            .count();
        t.push(vec![
            db.name.as_str().into(),
            db.host.as_str().into(),
            db.port.into(),
            db.dbname.as_deref().unwrap_or(&db.name).into(),
            "".into(),
            db.pool_size.unwrap_or(g.default_pool_size).into(),
            db.min_pool_size.unwrap_or(g.min_pool_size).into(),
            db.reserve_pool_size.unwrap_or(g.reserve_pool_size).into(),
            (g.server_lifetime.0 as u64).into(),
            app.listener_modes().into(),
            super::load_balance_hosts(db.endpoints().len() > 1).into(),
            db.max_db_connections.unwrap_or(g.max_db_connections).into(),
            servers.into(),
            0u64.into(),
            client_count.into(),
            app.pools.is_paused(&db.name).into(),
            app.pools.is_disabled(&db.name).into(),
        ]);
    }
    t
}
