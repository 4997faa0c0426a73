//! The MCP server as rmcp sees it: server info, tools and resources, for the identity the
//! request proved (HTTP: put in the request's extensions by `mcp::http`; stdio: fixed at
//! start). Every tool call is measured, audited and bounded here.

use super::tools::{self, Called};
use super::{catalog, result};
use crate::app::App;
use crate::identity::Identity;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// One MCP session's server (HTTP: one per Mcp-Session-Id or stateless request; stdio: one).
pub struct Server {
    pub app: Arc<App>,
    /// stdio: the identity from the environment.
    pub fixed: Option<Arc<Identity>>,
    /// The identity that opened the session ([`Identity::key`]): later requests in it must
    /// prove the same one (the HTTP front checks every request carrying the session's id;
    /// this is the second check, inside the session).
    pub owner: OnceLock<String>,
}

impl Server {
    pub fn new(app: Arc<App>, fixed: Option<Arc<Identity>>) -> Server {
        Server {
            app,
            fixed,
            owner: OnceLock::new(),
        }
    }

    fn identity(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<Identity>, ErrorData> {
        let found = self.fixed.clone().or_else(|| {
            ctx.extensions
                .get::<hyper::http::request::Parts>()
                .and_then(|p| p.extensions.get::<Arc<Identity>>().cloned())
        });
        let Some(identity) = found else {
            return Err(ErrorData::invalid_request("not authenticated", None));
        };
        let key = identity.key();
        let owner = self.owner.get_or_init(|| key.clone());
        if *owner != key {
            tracing::warn!(owner = %owner, identity = %identity.name, "mcp: a session was used by another identity");
            return Err(ErrorData::invalid_request(
                "this session belongs to another identity",
                None,
            ));
        }
        Ok(identity)
    }
}

const INSTRUCTIONS: &str = "PostgreSQL through pgsluice. You act as one database role; Row \
Level Security decides which rows you see. Start with list_tables and describe_table, then \
query with $1-style params. Results are capped: when truncated is true, add a LIMIT.";

impl rmcp::ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let v = json!({
            "protocolVersion": rmcp::model::ProtocolVersion::LATEST,
            "capabilities": { "tools": { "listChanged": false }, "resources": {} },
            "serverInfo": { "name": "pgsluice", "title": "pgsluice", "version": env!("CARGO_PKG_VERSION") },
            "instructions": INSTRUCTIONS,
        });
        serde_json::from_value(v).unwrap_or_else(|e| {
            tracing::error!(error = %e, "mcp: server info did not build");
            ServerConfig::new(Default::default())
        })
    }

    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, ErrorData> {
        // The session's owner is whoever opens it.
        self.identity(&ctx)?;
        ctx.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let identity = self.identity(&ctx)?;
        let config = self.app.config.load();
        Ok(ListToolsResult::with_all_items(tools::list(
            &config, &identity,
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let identity = self.identity(&ctx)?;
        let args = request.arguments.unwrap_or_default();
        let name = request.name.as_ref();
        if tools::WRITE_TOOLS.contains(&name)
            && !tools::may_write(&self.app.config.load(), &identity)
        {
            // HTTP answered 403 before this; stdio gets it as a tool error.
            let e = super::exec::SqlError {
                code: "42501".into(),
                message: format!("identity {:?} may not write", &*identity.name),
                hint: "[mcp] writers lists the identities and roles that may".into(),
                ..Default::default()
            };
            return Ok(self
                .finish(&identity, name, Instant::now(), Called::failed(None, e))
                .into());
        }
        let start = Instant::now();
        let gone = ctx
            .extensions
            .get::<hyper::http::request::Parts>()
            .and_then(|p| p.extensions.get::<super::http::CallGone>())
            .map(|g| g.0.clone())
            .unwrap_or_default();
        let called = tokio::select! {
            c = tools::call(&self.app, &identity, name, &args) => c,
            // The client cancelled or went away: dropping the call cancels its statement.
            _ = ctx.ct.cancelled() => {
                tracing::info!(identity = %identity.name, tool = name, "mcp: call cancelled by the client");
                return Err(ErrorData::internal_error("cancelled", None));
            }
            _ = gone.cancelled() => {
                tracing::info!(identity = %identity.name, tool = name, "mcp: call cancelled by the client");
                return Err(ErrorData::internal_error("cancelled", None));
            }
        };
        let Some(called) = called else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {name:?}"),
                None,
            ));
        };
        Ok(self.finish(&identity, name, start, called).into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let identity = self.identity(&ctx)?;
        let config = self.app.config.load();
        let resources: Vec<Value> = tools::databases(&config, &identity)
            .iter()
            .map(|db| {
                json!({
                    "uri": format!("pgsluice://{db}/schema"),
                    "name": format!("{db} schema"),
                    "description": format!("Tables of database {db} this agent may use, with their columns (JSON)."),
                    "mimeType": "application/json",
                })
            })
            .collect();
        from_json(json!({ "resultType": "complete", "resources": resources }))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.identity(&ctx)?;
        from_json(json!({ "resultType": "complete", "resourceTemplates": [{
            "uriTemplate": "pgsluice://{database}/table/{schema}/{table}",
            "name": "table",
            "description": "One table's columns, keys, indexes, foreign keys and RLS policies (what describe_table returns).",
            "mimeType": "application/json",
        }]}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let identity = self.identity(&ctx)?;
        let config = self.app.config.load_full();
        let caller = tools::Caller {
            app: &self.app,
            config: &config,
            identity: &identity,
        };
        let uri = request.uri;
        let not_found = || ErrorData::resource_not_found(format!("no resource {uri:?}"), None);
        let path = uri.strip_prefix("pgsluice://").ok_or_else(not_found)?;
        let parts: Vec<&str> = path.split('/').collect();
        let text = match parts.as_slice() {
            [db, "schema"] => {
                let sql = catalog::schema_resource();
                let rows = tools::catalog_query(&caller, db, &sql, &[])
                    .await
                    .and_then(tools::whole);
                match rows {
                    Ok(r) => r
                        .rows
                        .first()
                        .and_then(|r| r.first().cloned().flatten())
                        .unwrap_or_else(|| "[]".into()),
                    Err(e) => return Err(resource_error(&e)),
                }
            }
            [db, "table", schema, table] => {
                match tools::describe_json(&caller, db, schema, table).await {
                    Ok((_, v)) => v.to_string(),
                    Err(e) if e.code == "42P01" => return Err(not_found()),
                    Err(e) => return Err(resource_error(&e)),
                }
            }
            _ => return Err(not_found()),
        };
        let r: ReadResourceResult = from_json(json!({ "resultType": "complete", "contents": [{
            "uri": uri, "mimeType": "application/json", "text": text,
        }]}))?;
        Ok(r.into())
    }
}

fn resource_error(e: &super::exec::SqlError) -> ErrorData {
    ErrorData::internal_error(
        format!("{} {}", e.code, e.message),
        Some(json!({ "error": result::error_json(e) })),
    )
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

impl Server {
    /// The audit line and metrics of a finished call.
    fn finish(
        &self,
        identity: &Identity,
        tool: &str,
        start: Instant,
        called: Called,
    ) -> rmcp::model::CallToolResult {
        let took = start.elapsed();
        self.app
            .metrics
            .mcp_call(tool, called.sqlstate.is_some(), took.as_secs_f64());
        if let Some(sink) = self.app.audit.sink() {
            let fingerprint = called
                .sql
                .as_deref()
                .map(|s| format!("{:016x}", crate::sql::fingerprint::fingerprint(s)));
            sink.event(
                "mcp_call",
                0,
                json!({
                    "identity": &*identity.name,
                    "role": &*identity.role,
                    "subject": &*identity.subject,
                    "tool": tool,
                    "fingerprint": fingerprint,
                    "duration_ms": took.as_secs_f64() * 1000.0,
                    "rows": called.rows,
                    "sqlstate": called.sqlstate,
                    // As the wire path's statement lines: only for identities that ask.
                    "statement": called.sql.as_deref().filter(|_| identity.audit_statements),
                }),
            );
        }
        tracing::info!(identity = %identity.name, tool, rows = called.rows, sqlstate = ?called.sqlstate, ms = took.as_millis() as u64, "mcp tool call");
        called.result
    }
}
