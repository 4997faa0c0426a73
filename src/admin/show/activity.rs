//! SHOW ACTIVITY: the last pg_stat_activity sample of each upstream database
//! (`activity_sample_interval`): backends by state, wait event type and owner.

use super::{Table, Type};
use crate::admin::table::Value;
use crate::app::App;
use crate::stats::format_time;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", Type::Text),
        ("state", Type::Text),
        ("wait_event_type", Type::Text),
        ("owner", Type::Text),
        ("backends", Type::Int8),
        ("longest_transaction_s", Type::Float8),
        ("sampled_at", Type::Text),
        ("error", Type::Text),
    ]);
    for (db, s) in app.activity.all() {
        let at = format_time(s.at);
        if let Some(e) = &s.error {
            t.push(vec![
                db.as_ref().into(),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                at.into(),
                e.as_str().into(),
            ]);
            continue;
        }
        for (g, n) in &s.groups {
            t.push(vec![
                db.as_ref().into(),
                g.state.as_str().into(),
                g.wait_event_type.as_str().into(),
                g.owner.into(),
                (*n).into(),
                s.longest_transaction.into(),
                at.clone().into(),
                Value::Null,
            ]);
        }
    }
    t
}
