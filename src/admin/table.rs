//! A result set of the admin console: typed columns and rows, written to psql as
//! RowDescription, DataRows and CommandComplete (pgwire's message types), and to the HTTP
//! endpoints as JSON with the same column names.

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::CommandComplete;
use std::borrow::Cow;

/// Column types, as PostgreSQL OIDs (pg_type.dat).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Text,
    Int4,
    Int8,
    Float8,
    /// PgBouncer 1.25 types its statistics as numeric.
    Numeric,
}

impl Type {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int4 => (23, 4),
            Type::Int8 => (20, 8),
            Type::Float8 => (701, 8),
            Type::Numeric => (1700, -1),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    Null,
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::from(v as u64)
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<bool> for Value {
    /// PgBouncer shows flags as 0/1 integers.
    fn from(v: bool) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub columns: Vec<(Cow<'static, str>, Type)>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.iter().map(|&(n, t)| (n.into(), t)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a column named at run time (before any row).
    pub fn column(&mut self, name: String, t: Type) {
        self.columns.push((name.into(), t));
    }

    /// Appends a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// The value of column `name` in row `i` (tests and JSON).
    pub fn get(&self, i: usize, name: &str) -> Option<&Value> {
        let c = self.columns.iter().position(|(n, _)| *n == name)?;
        self.rows.get(i)?.get(c)
    }

    /// RowDescription, one DataRow per row, CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|(name, t)| {
                let (oid, size) = t.oid_and_size();
                FieldDescription::new(name.to_string(), 0, 0, oid, size, -1, 0)
            })
            .collect();
        encode_message(&RowDescription::new(fields), out);
        let mut data = BytesMut::new();
        for row in &self.rows {
            data.clear();
            for v in row {
                match text_of(v) {
                    None => data.put_i32(-1),
                    Some(s) => {
                        data.put_i32(s.len() as i32);
                        data.put_slice(s.as_bytes());
                    }
                }
            }
            encode_message(&DataRow::new(data.clone(), row.len() as i16), out);
        }
        encode_message(&CommandComplete::new("SHOW".to_owned()), out);
    }

    /// `[{column: value, ...}, ...]`.
    pub fn to_json(&self) -> serde_json::Value {
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let mut m = serde_json::Map::new();
                for ((name, _), v) in self.columns.iter().zip(row) {
                    let j = match v {
                        Value::Text(s) => serde_json::Value::from(s.as_str()),
                        Value::Int(i) => serde_json::Value::from(*i),
                        Value::Float(f) => serde_json::Value::from(*f),
                        Value::Null => serde_json::Value::Null,
                    };
                    m.insert(name.to_string(), j);
                }
                serde_json::Value::Object(m)
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(format!("{f}")),
        Value::Null => None,
    }
}

/// pgwire encodes into a buffer it may grow; its only failure is a message too long for the
/// protocol, which a console row cannot reach.
pub fn encode_message(m: &impl Message, out: &mut BytesMut) {
    if let Err(e) = m.encode(out) {
        tracing::warn!(error = %e, "admin console: message could not be encoded");
    }
}

/// CommandComplete with `tag`, for the console's commands.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    encode_message(&CommandComplete::new(tag.to_owned()), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rows_and_json() {
        let mut t = Table::new(&[("name", Type::Text), ("n", Type::Int8)]);
        t.push(vec!["a".into(), 5u64.into()]);
        t.push(vec![Value::Null, Value::Int(-1)]);
        let mut out = BytesMut::new();
        t.encode(&mut out);
        assert_eq!(out[0], b'T');
        // Then two DataRows, then CommandComplete "SHOW".
        assert!(out.windows(7).any(|w| w == b"D\0\0\0\x10\0\x02"));
        assert!(out.ends_with(b"C\0\0\0\x09SHOW\0"));
        assert_eq!(
            t.to_json(),
            serde_json::json!([{"name": "a", "n": 5}, {"name": null, "n": -1}])
        );
        assert_eq!(t.get(0, "n"), Some(&Value::Int(5)));
    }
}
