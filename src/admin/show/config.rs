//! SHOW CONFIG: every `[general]` key with its value now, its default, and whether RELOAD
//! changes it in a running proxy.

use super::{Table, Type};
use crate::app::App;
use crate::config::{AuthType, General, Seconds};

/// Keys a RELOAD does not apply to a running proxy (the listeners, too, need a restart).
const RESTART_ONLY: [&str; 3] = ["max_prepared_statements", "tcp_keepalive", "worker_threads"];

fn entries(g: &General) -> Vec<(&'static str, String)> {
    let secs = |s: Seconds| format!("{}", s.0);
    vec![
        ("worker_threads", g.worker_threads.to_string()),
        ("max_client_conn", g.max_client_conn.to_string()),
        ("default_pool_size", g.default_pool_size.to_string()),
        ("min_pool_size", g.min_pool_size.to_string()),
        ("reserve_pool_size", g.reserve_pool_size.to_string()),
        ("reserve_pool_timeout", secs(g.reserve_pool_timeout)),
        ("max_db_connections", g.max_db_connections.to_string()),
        (
            "priority_classes",
            g.priority_classes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("default_priority", g.default_priority.to_string()),
        ("priority_aging", secs(g.priority_aging)),
        ("priority_reserve", g.priority_reserve.to_string()),
        ("shed_queue_length", g.shed_queue_length.to_string()),
        ("shed_wait", secs(g.shed_wait)),
        ("adaptive_limit", u8::from(g.adaptive_limit).to_string()),
        ("max_user_connections", g.max_user_connections.to_string()),
        (
            "max_user_client_connections",
            g.max_user_client_connections.to_string(),
        ),
        ("health_check_interval", secs(g.health_check_interval)),
        (
            "health_check_successes",
            g.health_check_successes.to_string(),
        ),
        ("max_standby_lag", secs(g.max_standby_lag)),
        ("circuit_failures", g.circuit_failures.to_string()),
        ("circuit_backoff", secs(g.circuit_backoff)),
        ("proximity_tolerance", secs(g.proximity_tolerance)),
        ("region", g.region.as_deref().unwrap_or("").to_owned()),
        ("peer_id", g.peer_id.to_string()),
        ("instances", g.instances.to_string()),
        ("dns_max_ttl", secs(g.dns_max_ttl)),
        ("dns_nxdomain_ttl", secs(g.dns_nxdomain_ttl)),
        ("server_lifetime", secs(g.server_lifetime)),
        ("server_idle_timeout", secs(g.server_idle_timeout)),
        ("server_connect_timeout", secs(g.server_connect_timeout)),
        ("server_login_retry", secs(g.server_login_retry)),
        ("server_reset_query", g.server_reset_query.to_string()),
        ("server_check_query", g.server_check_query.to_string()),
        ("server_check_delay", secs(g.server_check_delay)),
        ("client_login_timeout", secs(g.client_login_timeout)),
        ("client_idle_timeout", secs(g.client_idle_timeout)),
        ("idle_transaction_timeout", secs(g.idle_transaction_timeout)),
        ("query_timeout", secs(g.query_timeout)),
        ("query_wait_timeout", secs(g.query_wait_timeout)),
        (
            "application_name_add_host",
            u8::from(g.application_name_add_host).to_string(),
        ),
        ("handover_reset", u8::from(g.handover_reset).to_string()),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
        ),
        (
            "max_client_prepared_statements",
            g.max_client_prepared_statements.to_string(),
        ),
        (
            "auth_type",
            match g.auth_type {
                AuthType::ScramSha256 => "scram-sha-256",
                AuthType::Md5 => "md5",
            }
            .to_owned(),
        ),
        ("tcp_keepalive", u8::from(g.tcp_keepalive).to_string()),
        ("shutdown_timeout", secs(g.shutdown_timeout)),
        ("stats_period", secs(g.stats_period)),
        ("query_stats_max", g.query_stats_max.to_string()),
        ("log_level", g.log_level.to_string()),
        ("activity_sample_interval", secs(g.activity_sample_interval)),
        ("client_stall_timeout", secs(g.client_stall_timeout)),
        ("client_park_delay", secs(g.client_park_delay)),
    ]
}

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("key", Type::Text),
        ("value", Type::Text),
        ("default", Type::Text),
        ("changeable", Type::Text),
    ]);
    let config = app.config.load();
    let defaults = entries(&General::default());
    for ((key, value), (_, default)) in entries(&config.general).into_iter().zip(defaults) {
        let changeable = if RESTART_ONLY.contains(&key) {
            "no"
        } else {
            "yes"
        };
        t.push(vec![
            key.into(),
            value.into(),
            default.into(),
            changeable.into(),
        ]);
    }
    t
}
