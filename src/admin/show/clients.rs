//! SHOW CLIENTS: one row per logged-in client, PgBouncer's columns, then pgsluice's role,
//! identity, priority, auth method and pool mode.

use super::{CONNECTION_COLUMNS, Table, Type, ptr, split_us};
use crate::app::App;
use crate::stats::clients::ClientState;
use crate::stats::format_time;

pub fn table(app: &App) -> Table {
    let mut columns = CONNECTION_COLUMNS.to_vec();
    columns.extend([
        ("role", Type::Text),
        ("identity", Type::Text),
        ("priority", Type::Text),
        ("auth_method", Type::Text),
        ("pool_mode", Type::Text),
        ("sni", Type::Text),
    ]);
    let mut t = Table::new(&columns);
    let now = crate::stats::unix_micros();
    let classes = app.config.load().classes.clone();
    for c in app.clients.all() {
        let (state, waited) = match c.state() {
            ClientState::Active => ("active", 0),
            ClientState::Waiting => ("waiting", now.saturating_sub(c.wait_since())),
        };
        let (wait, wait_us) = split_us(waited);
        t.push(vec![
            "C".into(),
            c.facts.user.as_ref().into(),
            c.facts.database().into(),
            "none".into(),
            state.into(),
            c.facts.addr.to_string().into(),
            c.facts.port.into(),
            c.facts.local_addr.to_string().into(),
            c.facts.local_port.into(),
            format_time(c.connect_time).into(),
            format_time(c.request_time()).into(),
            wait.into(),
            wait_us.into(),
            0u64.into(),
            ptr(c.facts.id).into(),
            ptr(c.link()).into(),
            c.remote_pid().into(),
            c.facts.tls_description().into(),
            c.facts.application_name.as_ref().into(),
            c.prepared().into(),
            super::int4_id(c.facts.id).into(),
            c.facts.pool.role.as_ref().into(),
            c.facts.identity_name().into(),
            classes.name(c.facts.priority).into(),
            c.facts.auth_method.as_str().into(),
            c.facts.pool_mode.as_str().into(),
            c.facts.sni().into(),
        ]);
    }
    t
}
