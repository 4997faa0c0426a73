//! SHOW MEM: PgBouncer lists its slab caches (name, size of an item, used, free, memtotal);
//! pgsluice has none, so the honest equivalent is the process's resident memory (from /proc)
//! beside the counts of what uses it: in PgBouncer's columns (`used` the items, `memtotal`
//! the bytes, capped at int4 as PgBouncer's are), then pgsluice's own `items` and `bytes`.

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
        ("size", Type::Int4),
        ("used", Type::Int4),
        ("free", Type::Int4),
        ("memtotal", Type::Int4),
        ("items", Type::Int8),
        ("bytes", Type::Int8),
    ]);
    let int4 = |v: Option<u64>| Value::from(v.unwrap_or(0).min(i32::MAX as u64));
    let (now, peak) = rss();
    let servers: usize = app.pools.all().iter().map(|p| p.counts().open).sum();
    let rows: [(&str, Option<u64>, Option<u64>); 5] = [
        ("process_rss", None, now),
        ("process_rss_peak", None, peak),
        ("clients", Some(app.client_count() as u64), None),
        ("servers", Some(servers as u64), None),
        ("query_fingerprints", Some(app.queries.len() as u64), None),
    ];
    for (name, items, bytes) in rows {
        t.push(vec![
            name.into(),
            0u64.into(),
            int4(items),
            0u64.into(),
            int4(bytes),
            items.map_or(Value::Null, Value::from),
            bytes.map_or(Value::Null, Value::from),
        ]);
    }
    t
}
