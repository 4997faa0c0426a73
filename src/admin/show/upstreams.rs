//! SHOW UPSTREAMS (pgsluice's own): every server the databases list, with what was learned
//! of it (one row per address of a host name): role, health, circuit, latency, standby lag, servers open there, the last error.

use super::{Table, Type};
use crate::app::App;
use std::time::Instant;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("host", Type::Text),
        ("port", Type::Int4),
        ("addr", Type::Text),
        ("tenant", Type::Text),
        ("region", Type::Text),
        ("kind", Type::Text),
        ("role", Type::Text),
        ("read_only", Type::Int4),
        ("healthy", Type::Int4),
        ("circuit", Type::Text),
        ("retry_in_s", Type::Float8),
        ("latency_ms", Type::Float8),
        ("lag_s", Type::Float8),
        ("servers", Type::Int4),
        ("last_error", Type::Text),
    ]);
    let now = Instant::now();
    for e in app.pools.endpoints() {
        let h = e.health();
        t.push(vec![
            e.host.as_ref().into(),
            u64::from(e.port).into(),
            e.addr.map(|a| a.ip().to_string()).into(),
            e.tenant.as_deref().into(),
            e.region.as_deref().into(),
            e.kind.as_str().into(),
            h.role.as_str().into(),
            h.read_only.into(),
            h.healthy.into(),
            h.breaker.state(now).as_str().into(),
            h.breaker.retry_in(now).as_secs_f64().into(),
            (h.latency_us > 0.0).then(|| h.latency_us / 1000.0).into(),
            h.lag.into(),
            (e.open.load(std::sync::atomic::Ordering::Relaxed) as u64).into(),
            h.last_error.as_deref().into(),
        ]);
    }
    t
}
