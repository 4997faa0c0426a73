//! Rows and errors as tool results: `structuredContent` (columns with their types, rows as
//! JSON values, truncation) for programs, and a compact text table for models that read text.

use super::exec::{Rows, SqlError};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};
use std::fmt::Write;

/// Longest cell the text table shows (the structured rows keep the whole value).
const CELL_CHARS: usize = 200;

/// A statement's rows as a successful tool result.
pub fn rows(r: &Rows) -> CallToolResult {
    let mut result = CallToolResult::structured(rows_json(r));
    result.content = vec![ContentBlock::text(table(r))];
    result
}

/// A value computed by the proxy (pool_status, list_databases) as a tool result.
pub fn value(v: Value, text: String) -> CallToolResult {
    let mut result = CallToolResult::structured(v);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// An error as a tool result the model can read and act on (isError: true).
pub fn error(e: &SqlError) -> CallToolResult {
    let mut text = format!("ERROR {}: {}", e.code, e.message);
    for (label, v) in [
        ("DETAIL", &e.detail),
        ("HINT", &e.hint),
        ("POSITION", &e.position),
    ] {
        if !v.is_empty() {
            let _ = write!(text, "\n{label}: {v}");
        }
    }
    let mut result = CallToolResult::structured_error(json!({ "error": error_json(e) }));
    result.content = vec![ContentBlock::text(text)];
    result
}

pub fn error_json(e: &SqlError) -> Value {
    json!({
        "sqlstate": e.code,
        "message": e.message,
        "detail": e.detail,
        "hint": e.hint,
        "position": e.position,
    })
}

/// The structured form: what the tools' outputSchema describes.
pub fn rows_json(r: &Rows) -> Value {
    let columns: Vec<Value> = r
        .columns
        .iter()
        .map(|(name, oid)| json!({ "name": name, "type": type_name(*oid) }))
        .collect();
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            Value::Array(
                row.iter()
                    .zip(&r.columns)
                    .map(|(v, (_, oid))| cell(v.as_deref(), *oid))
                    .collect(),
            )
        })
        .collect();
    json!({
        "columns": columns,
        "rows": rows,
        "row_count": r.rows.len(),
        "truncated": r.truncated.is_some(),
        "truncated_by": r.truncated.map(|t| t.as_str()),
        "command": r.command,
    })
}

/// One text value as JSON: numbers and booleans as such, json/jsonb parsed, the rest
/// (numeric, int8 beyond 2^53, timestamps, ...) as strings so nothing loses precision.
pub fn cell(v: Option<&str>, oid: u32) -> Value {
    let Some(v) = v else {
        return Value::Null;
    };
    match oid {
        16 => Value::Bool(v == "t"),
        20 | 21 | 23 | 26 => match v.parse::<i64>() {
            Ok(n) if n.unsigned_abs() <= 1 << 53 => Value::from(n),
            _ => Value::from(v),
        },
        700 | 701 => match v.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::from(f),
            _ => Value::from(v),
        },
        114 | 3802 => serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)),
        _ => Value::from(v),
    }
}

/// A type OID's name for the common built-in types; others as `oid:<n>`.
pub fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        700 => "real",
        701 => "double precision",
        869 => "inet",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        1000 => "boolean[]",
        1007 => "integer[]",
        1016 => "bigint[]",
        1009 => "text[]",
        _ => return format!("oid:{oid}"),
    };
    name.to_owned()
}

/// `a | b` rows under a header, then the row count and any truncation.
pub fn table(r: &Rows) -> String {
    let mut out = String::new();
    if !r.columns.is_empty() {
        let names: Vec<&str> = r.columns.iter().map(|(n, _)| n.as_str()).collect();
        out.push_str(&names.join(" | "));
        out.push('\n');
        for row in &r.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| v.as_deref().map_or("NULL".into(), short))
                .collect();
            out.push_str(&cells.join(" | "));
            out.push('\n');
        }
        let _ = write!(out, "({} rows)", r.rows.len());
    } else {
        out.push_str(&r.command);
    }
    if let Some(t) = r.truncated {
        let _ = write!(
            out,
            "\nTRUNCATED: more rows than {} allows; add a LIMIT or narrow the query",
            t.as_str()
        );
    }
    out
}

/// A cell for the text table: one line, at most CELL_CHARS characters.
fn short(v: &str) -> String {
    let one_line: String = v
        .chars()
        .map(|c| if c == '\n' || c == '|' { ' ' } else { c })
        .take(CELL_CHARS + 1)
        .collect();
    if one_line.chars().count() > CELL_CHARS {
        let cut: String = one_line.chars().take(CELL_CHARS).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::exec::Truncation;

    #[test]
    fn cells_keep_precision() {
        assert_eq!(cell(Some("42"), 23), json!(42));
        assert_eq!(
            cell(Some("9007199254740993"), 20),
            json!("9007199254740993")
        );
        assert_eq!(cell(Some("1.10"), 1700), json!("1.10"));
        assert_eq!(cell(Some("t"), 16), json!(true));
        assert_eq!(cell(Some("NaN"), 701), json!("NaN"));
        assert_eq!(cell(Some(r#"{"a":[1]}"#), 3802), json!({"a": [1]}));
        assert_eq!(cell(None, 25), Value::Null);
    }

    #[test]
    fn the_table_says_it_was_truncated() {
        let r = Rows {
            columns: vec![("id".into(), 23), ("note".into(), 25)],
            rows: vec![vec![Some("1".into()), None]],
            truncated: Some(Truncation::Rows),
            command: "SELECT 1".into(),
            bytes: 0,
        };
        assert_eq!(
            table(&r),
            "id | note\n1 | NULL\n(1 rows)\nTRUNCATED: more rows than max_rows allows; add a LIMIT or narrow the query"
        );
        let v = rows_json(&r);
        assert_eq!(v["truncated_by"], "max_rows");
        assert_eq!(v["columns"][0]["type"], "integer");
    }
}
