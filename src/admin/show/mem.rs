//! SHOW MEM: PgBouncer lists its slab caches; pgsluice has none, so the honest equivalent is
//! the process's resident memory (from /proc) beside the counts of what uses it.

use super::{Table, Type};
use crate::admin::table::Value;
use crate::app::App;

/// Resident and peak resident set, in bytes, from /proc/self/status (Linux).
fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", Type::Text),
        ("items", Type::Int8),
        ("bytes", Type::Int8),
    ]);
    let (now, peak) = rss();
    t.push(vec!["process_rss".into(), Value::Null, now.into()]);
    t.push(vec!["process_rss_peak".into(), Value::Null, peak.into()]);
    let servers: usize = app.pools.all().iter().map(|p| p.counts().open).sum();
    t.push(vec![
        "clients".into(),
        app.client_count().into(),
        Value::Null,
    ]);
    t.push(vec!["servers".into(), servers.into(), Value::Null]);
    t.push(vec![
        "query_fingerprints".into(),
        app.queries.len().into(),
        Value::Null,
    ]);
    t
}
