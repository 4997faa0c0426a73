//! SHOW QUERIES: per query fingerprint and pool, most total time first: calls, total, mean,
//! min and max time in microseconds, rows and errors, and the normalized text.

use super::{Table, Type};
use crate::app::App;

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("fingerprint", Type::Text),
        ("database", Type::Text),
        ("user", Type::Text),
        ("calls", Type::Int8),
        ("total_time_us", Type::Int8),
        ("mean_time_us", Type::Int8),
        ("min_time_us", Type::Int8),
        ("max_time_us", Type::Int8),
        ("rows", Type::Int8),
        ("errors", Type::Int8),
        ("query", Type::Text),
    ]);
    for q in app.queries.rows() {
        t.push(vec![
            format!("{:016x}", q.fingerprint).into(),
            q.database.as_str().into(),
            q.role.as_str().into(),
            q.calls.into(),
            q.total_us.into(),
            q.mean_us().into(),
            q.min_us.into(),
            q.max_us.into(),
            q.rows.into(),
            q.errors.into(),
            q.text.as_ref().into(),
        ]);
    }
    t
}
