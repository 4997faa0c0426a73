//! The tools: their descriptions and JSON schemas (written for a model choosing between
//! them), and one function per tool turning its arguments into a statement or a value.

use super::exec::{self, Limits, Mode, SqlError, Statement};
use super::{catalog, result};
use crate::app::App;
use crate::config::Config;
use crate::identity::Identity;
use rmcp::model::{CallToolResult, Tool};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Tools that change data: only identities `[mcp] writers` names may call them.
pub const WRITE_TOOLS: &[&str] = &["execute"];

/// Whether `identity` may write (`[mcp] writers` names its role, its API key as
/// `key:<name>` or its JWT subject as `sub:<subject>`).
pub fn may_write(config: &Config, identity: &Identity) -> bool {
    config
        .mcp
        .as_ref()
        .is_some_and(|m| m.writers.iter().any(|w| identity.named_by(w)))
}

fn rows_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "columns": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": { "name": { "type": "string" }, "type": { "type": "string" } },
                    "required": ["name", "type"]
                }
            },
            "rows": { "type": "array", "items": { "type": "array" } },
            "row_count": { "type": "integer" },
            "truncated": { "type": "boolean" },
            "truncated_by": { "type": ["string", "null"], "enum": ["max_rows", "max_bytes", null] },
            "command": { "type": "string" }
        },
        "required": ["columns", "rows", "row_count", "truncated"]
    })
}

fn database_arg() -> Value {
    json!({ "type": "string", "description": "Database name (see list_databases); default: the first one this identity may use." })
}

fn params_arg() -> Value {
    json!({
        "type": "array",
        "description": "Values for $1, $2, ... in order (strings, numbers, booleans, null, or JSON for json columns). Always pass values here instead of writing them into the SQL.",
        "items": {}
    })
}

fn tool(
    name: &str,
    title: &str,
    description: &str,
    input: Value,
    output: Value,
    read_only: bool,
) -> Option<Tool> {
    let v = json!({
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": input,
        "outputSchema": output,
        "annotations": {
            "title": title,
            "readOnlyHint": read_only,
            "destructiveHint": !read_only,
            "idempotentHint": read_only,
            "openWorldHint": false
        }
    });
    serde_json::from_value(v).ok()
}

/// The tools `identity` is offered (execute only to writers).
pub fn list(config: &Config, identity: &Identity) -> Vec<Tool> {
    let writer = may_write(config, identity);
    let sql = json!({ "type": "string", "description": "One SQL statement; use $1, $2, ... for values." });
    let mut tools = vec![
        tool(
            "query",
            "Run a read-only SQL query",
            "Run one read-only SQL statement (SELECT, WITH, SHOW, EXPLAIN) and get its rows. Runs in a READ ONLY transaction as this agent's database role, so Row Level Security decides which rows it sees; anything that writes fails with SQLSTATE 25006. Results are capped (max_rows, max_bytes): when `truncated` is true, add a LIMIT or narrow the query. Pass values as params, never inside the SQL text.",
            json!({
                "type": "object",
                "properties": {
                    "sql": sql,
                    "params": params_arg(),
                    "database": database_arg(),
                    "max_rows": { "type": "integer", "minimum": 1, "description": "Return at most this many rows (never more than the server's limit)." }
                },
                "required": ["sql"],
                "additionalProperties": false
            }),
            rows_schema(),
            true,
        ),
        tool(
            "list_databases",
            "List databases",
            "List the databases this agent may query, with the one used when a tool's `database` is omitted.",
            json!({ "type": "object", "properties": {}, "additionalProperties": false }),
            json!({
                "type": "object",
                "properties": {
                    "databases": { "type": "array", "items": { "type": "object" } },
                    "default": { "type": ["string", "null"] }
                },
                "required": ["databases"]
            }),
            true,
        ),
        tool(
            "list_schemas",
            "List schemas",
            "List the schemas of a database this agent's role may use, with owners and comments.",
            json!({
                "type": "object",
                "properties": { "database": database_arg() },
                "additionalProperties": false
            }),
            rows_schema(),
            true,
        ),
        tool(
            "list_tables",
            "List tables",
            "List tables, views and materialized views this agent's role has privileges on, with estimated row counts, whether Row Level Security is on, and comments. Use describe_table next for columns and keys.",
            json!({
                "type": "object",
                "properties": {
                    "database": database_arg(),
                    "schema": { "type": "string", "description": "Only this schema (default: all)." }
                },
                "additionalProperties": false
            }),
            rows_schema(),
            true,
        ),
        tool(
            "describe_table",
            "Describe a table",
            "Describe one table or view: columns with types, nullability, defaults and comments; primary key; indexes; foreign keys; and the Row Level Security policies on it, marked where they apply to this agent's role.",
            json!({
                "type": "object",
                "properties": {
                    "table": { "type": "string", "description": "Table name, without schema." },
                    "schema": { "type": "string", "description": "Schema (default: public)." },
                    "database": database_arg()
                },
                "required": ["table"],
                "additionalProperties": false
            }),
            json!({ "type": "object" }),
            true,
        ),
        tool(
            "explain",
            "Explain a query plan",
            "Show PostgreSQL's plan for one statement as JSON. With analyze: true the statement really runs (inside a transaction that is always rolled back, read-only unless this agent may write) and the plan shows actual times and row counts.",
            json!({
                "type": "object",
                "properties": {
                    "sql": sql,
                    "params": params_arg(),
                    "database": database_arg(),
                    "analyze": { "type": "boolean", "description": "Run it and report actual times (default false)." }
                },
                "required": ["sql"],
                "additionalProperties": false
            }),
            rows_schema(),
            true,
        ),
        tool(
            "pool_status",
            "Connection pool status",
            "Show this agent's connection pools: size, open, idle and waiting connections per database. Useful when calls are slow or refused.",
            json!({ "type": "object", "properties": {}, "additionalProperties": false }),
            json!({
                "type": "object",
                "properties": { "pools": { "type": "array", "items": { "type": "object" } } },
                "required": ["pools"]
            }),
            true,
        ),
    ];
    if writer {
        tools.push(tool(
            "execute",
            "Run a writing SQL statement",
            "Run one statement that changes data or schema (INSERT, UPDATE, DELETE, DDL) in a transaction that commits only if it succeeds. Row Level Security applies. Returns the command tag and any RETURNING rows. Prefer `query` for reads.",
            json!({
                "type": "object",
                "properties": { "sql": sql, "params": params_arg(), "database": database_arg() },
                "required": ["sql"],
                "additionalProperties": false
            }),
            rows_schema(),
            false,
        ));
    }
    tools.into_iter().flatten().collect()
}

/// What a bad argument is reported as: a tool result the model can correct.
fn bad(message: impl Into<String>) -> SqlError {
    SqlError {
        code: "22023".into(),
        message: message.into(),
        ..SqlError::default()
    }
}

/// A call's arguments, read leniently but checked.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl Args<'_> {
    pub fn text(&self, key: &str) -> Result<Option<&str>, SqlError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("argument {key:?} must be a string"))),
        }
    }

    pub fn required(&self, key: &str) -> Result<&str, SqlError> {
        self.text(key)?
            .ok_or_else(|| bad(format!("argument {key:?} is required")))
    }

    /// Bind parameters as text (None: NULL).
    pub fn params(&self) -> Result<Vec<Option<String>>, SqlError> {
        let Some(v) = self.0.get("params") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = v else {
            return Err(bad("argument \"params\" must be an array"));
        };
        if items.len() > i16::MAX as usize {
            return Err(bad("too many params"));
        }
        Ok(items
            .iter()
            .map(|p| match p {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                other => Some(other.to_string()),
            })
            .collect())
    }

    pub fn flag(&self, key: &str) -> Result<bool, SqlError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(format!("argument {key:?} must be true or false"))),
        }
    }

    pub fn max_rows(&self) -> Result<Option<usize>, SqlError> {
        match self.0.get("max_rows") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n as usize)),
                _ => Err(bad("argument \"max_rows\" must be a positive integer")),
            },
        }
    }
}

/// The databases `identity` may use, in configuration order.
pub fn databases(config: &Config, identity: &Identity) -> Vec<String> {
    config
        .databases
        .iter()
        .map(|d| d.get_ref().name.to_string())
        // The fallback stands for names; it is not one a call can use.
        .filter(|name| name != crate::config::FALLBACK_DATABASE)
        .filter(|name| crate::identity::database_allowed(config, identity, name))
        .collect()
}

/// The database a call names, or the identity's first.
fn database(config: &Config, identity: &Identity, args: &Args<'_>) -> Result<String, SqlError> {
    match args.text("database")? {
        Some(d) => Ok(d.to_owned()),
        None => databases(config, identity)
            .into_iter()
            .next()
            .ok_or_else(|| bad("this identity may use no database")),
    }
}

/// The configured limits, narrowed by the call.
pub fn limits(config: &Config, max_rows: Option<usize>) -> Limits {
    let m = config.mcp.as_ref();
    let rows = m.map_or(1000, |m| m.max_rows);
    Limits {
        max_rows: max_rows.map_or(rows, |n| n.min(rows)),
        max_bytes: m.map_or(1 << 20, |m| m.max_bytes),
        statement_timeout: m.map_or(std::time::Duration::from_secs(30), |m| {
            m.statement_timeout.duration()
        }),
    }
}

/// A tool call that ran (or failed): its result, and what the audit line and metrics say.
pub struct Called {
    pub result: CallToolResult,
    pub sql: Option<String>,
    pub rows: usize,
    pub sqlstate: Option<String>,
}

impl Called {
    fn sql(
        sql: String,
        r: Result<exec::Rows, SqlError>,
        shape: fn(&exec::Rows) -> CallToolResult,
    ) -> Called {
        match r {
            Ok(rows) => Called {
                result: shape(&rows),
                sql: Some(sql),
                rows: rows.rows.len(),
                sqlstate: None,
            },
            Err(e) => Called::failed(Some(sql), e),
        }
    }

    fn value(v: Value, text: String, sql: Option<String>, rows: usize) -> Called {
        Called {
            result: result::value(v, text),
            sql,
            rows,
            sqlstate: None,
        }
    }

    pub fn failed(sql: Option<String>, e: SqlError) -> Called {
        Called {
            result: result::error(&e),
            sql,
            rows: 0,
            sqlstate: Some(e.code),
        }
    }
}

/// Who a call runs for, with the configuration it started under.
pub struct Caller<'a> {
    pub app: &'a Arc<App>,
    pub config: &'a Config,
    pub identity: &'a Arc<Identity>,
}

/// Runs tool `name`. An unknown tool is None (a JSON-RPC error); everything else, bad
/// arguments included, is a tool result.
pub async fn call(
    app: &Arc<App>,
    identity: &Arc<Identity>,
    name: &str,
    args: &Map<String, Value>,
) -> Option<Called> {
    let config = app.config.load_full();
    let c = &Caller {
        app,
        config: &config,
        identity,
    };
    let args = Args(args);
    let outcome = match name {
        "query" => run_sql(c, &args, Mode::ReadOnly).await,
        "execute" => run_sql(c, &args, Mode::Write).await,
        "explain" => explain(c, &args).await,
        "list_schemas" => catalog_rows(c, &args, catalog::list_schemas(), &[]).await,
        "list_tables" => match args.text("schema") {
            Ok(s) => catalog_rows(c, &args, catalog::list_tables(), &[s.map(str::to_owned)]).await,
            Err(e) => Err(e),
        },
        "describe_table" => describe(c, &args).await,
        "list_databases" => Ok(list_databases(&config, identity)),
        "pool_status" => Ok(pool_status(c)),
        _ => return None,
    };
    Some(outcome.unwrap_or_else(|e| Called::failed(None, e)))
}

async fn run_sql(c: &Caller<'_>, args: &Args<'_>, mode: Mode) -> Result<Called, SqlError> {
    let sql = args.required("sql")?;
    let params = args.params()?;
    let db = database(c.config, c.identity, args)?;
    let stmt = Statement {
        sql,
        params: &params,
        mode,
        limits: limits(c.config, args.max_rows()?),
    };
    let r = exec::run(c.app, c.identity, &db, &stmt).await;
    Ok(Called::sql(sql.to_owned(), r, result::rows))
}

async fn explain(c: &Caller<'_>, args: &Args<'_>) -> Result<Called, SqlError> {
    let analyze = args.flag("analyze")?;
    let sql = format!(
        "EXPLAIN (FORMAT JSON{}) {}",
        if analyze { ", ANALYZE, BUFFERS" } else { "" },
        args.required("sql")?
    );
    let params = args.params()?;
    let db = database(c.config, c.identity, args)?;
    let mode = if analyze && may_write(c.config, c.identity) {
        Mode::TryWrite
    } else {
        Mode::ReadOnly
    };
    let stmt = Statement {
        sql: &sql,
        params: &params,
        mode,
        limits: limits(c.config, None),
    };
    let r = exec::run(c.app, c.identity, &db, &stmt).await;
    Ok(Called::sql(sql, r, result::rows))
}

async fn catalog_rows(
    c: &Caller<'_>,
    args: &Args<'_>,
    sql: String,
    params: &[Option<String>],
) -> Result<Called, SqlError> {
    let db = database(c.config, c.identity, args)?;
    let r = catalog_query(c, &db, &sql, params).await;
    Ok(Called::sql(sql, r, result::rows))
}

/// A catalog statement, read-only with the configured limits.
pub async fn catalog_query(
    c: &Caller<'_>,
    db: &str,
    sql: &str,
    params: &[Option<String>],
) -> Result<exec::Rows, SqlError> {
    let stmt = Statement {
        sql,
        params,
        mode: Mode::ReadOnly,
        limits: limits(c.config, None),
    };
    exec::run(c.app, c.identity, db, &stmt).await
}

/// A one-value catalog result, or an error when it did not fit in max_bytes (cut JSON is
/// no answer).
pub fn whole(rows: exec::Rows) -> Result<exec::Rows, SqlError> {
    match rows.truncated {
        None => Ok(rows),
        Some(_) => Err(SqlError {
            code: "54000".into(),
            message: "the result is larger than [mcp] max_bytes".into(),
            hint: "list_tables and describe_table give it in parts".into(),
            ..SqlError::default()
        }),
    }
}

/// describe_table's JSON (or a 42P01 result when there is no such table).
pub async fn describe_json(
    c: &Caller<'_>,
    db: &str,
    schema: &str,
    table: &str,
) -> Result<(String, Value), SqlError> {
    let sql = catalog::describe_table();
    let params = [Some(schema.to_owned()), Some(table.to_owned())];
    let rows = whole(catalog_query(c, db, &sql, &params).await?)?;
    let json = rows
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .and_then(|v| serde_json::from_str(v).ok())
        .ok_or_else(|| SqlError {
            code: "42P01".into(),
            message: format!(
                "relation \"{schema}.{table}\" does not exist or is not visible to this role"
            ),
            hint: "list_tables shows the tables this agent may use".into(),
            ..SqlError::default()
        })?;
    Ok((sql, json))
}

async fn describe(c: &Caller<'_>, args: &Args<'_>) -> Result<Called, SqlError> {
    let table = args.required("table")?;
    let schema = args.text("schema")?.unwrap_or("public");
    let db = database(c.config, c.identity, args)?;
    Ok(match describe_json(c, &db, schema, table).await {
        Ok((sql, v)) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            Called::value(v, text, Some(sql), 1)
        }
        Err(e) => Called::failed(None, e),
    })
}

fn list_databases(config: &Config, identity: &Identity) -> Called {
    let names = databases(config, identity);
    let text = format!("databases: {}", names.join(", "));
    let v = json!({
        "databases": names.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(),
        "default": names.first(),
    });
    Called::value(v, text, None, names.len())
}

fn pool_status(c: &Caller<'_>) -> Called {
    let pools: Vec<Value> = c
        .app
        .pools
        .all()
        .into_iter()
        .filter(|p| *p.key.role == *c.identity.role)
        .filter(|p| crate::identity::database_allowed(c.config, c.identity, &p.key.database))
        .map(|p| {
            let c = p.counts();
            json!({
                "database": &*p.key.database,
                "role": &*p.key.role,
                "pool_size": p.settings().size,
                "open": c.open,
                "idle": c.idle,
                "waiting": c.waiting,
                "paused": p.is_paused(),
                "upstream_failing": p.upstream_failing(),
            })
        })
        .collect();
    let text = pools
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let n = pools.len();
    Called::value(json!({ "pools": pools }), text, None, n)
}
