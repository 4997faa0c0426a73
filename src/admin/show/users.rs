//! SHOW USERS: one row per configured user: the upstream role it maps to and its clients.

use super::{Table, Type};
use crate::app::App;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", Type::Text),
        // Text in PgBouncer 1.25 (empty when the user sets none, as here).
        ("pool_size", Type::Text),
        ("reserve_pool_size", Type::Text),
        ("pool_mode", Type::Text),
        ("max_user_connections", Type::Int4),
        ("current_connections", Type::Int4),
        ("max_user_client_connections", Type::Int4),
        ("current_client_connections", Type::Int4),
        ("server_user", Type::Text),
    ]);
    let config = app.config.load();
    let clients = app.clients.all();
    for u in config.users.iter().map(|u| u.get_ref()) {
        let role = u.server_user.as_deref().unwrap_or(&u.name);
        let servers: usize = app
            .pools
            .all()
            .iter()
            .filter(|p| &*p.key.role == role)
            .map(|p| p.counts().open)
            .sum();
        let client_count = clients.iter().filter(|c| *c.facts.user == *u.name).count();
        let g = &config.general;
        let limits = u.limits.over(crate::config::LimitKeys {
            max_user_connections: Some(g.max_user_connections),
            max_user_client_connections: Some(g.max_user_client_connections),
            ..Default::default()
        });
        t.push(vec![
            u.name.as_str().into(),
            crate::admin::table::Value::Null,
            crate::admin::table::Value::Null,
            crate::admin::table::Value::Null,
            limits.max_user_connections.unwrap_or(0).into(),
            servers.into(),
            limits.max_user_client_connections.unwrap_or(0).into(),
            client_count.into(),
            role.into(),
        ]);
    }
    t
}
