//! `pgsluice mcp --stdio --config FILE`: one MCP session over stdin/stdout for a local agent
//! (desktop clients start it as a subprocess). The identity comes from the environment:
//! `PGSLUICE_API_KEY` (an `[[api_keys]]` key) or `PGSLUICE_TOKEN` (a JWT), checked once at
//! start by the same code as every other login. Logs go to stderr; stdout is the protocol.

use super::handler::Server;
use crate::app::App;
use crate::config::Config;
use rmcp::ServiceExt;
use std::sync::Arc;

/// The variables a token is read from, in order.
pub const TOKEN_VARS: [&str; 2] = ["PGSLUICE_API_KEY", "PGSLUICE_TOKEN"];

/// Serves one session on stdin/stdout until the client closes it.
pub async fn run(config: Config) -> Result<(), String> {
    let token = TOKEN_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
        .ok_or_else(|| {
            format!(
                "set {} or {} to the agent's token",
                TOKEN_VARS[0], TOKEN_VARS[1]
            )
        })?;
    let audit_dest = config.audit.as_ref().map(|a| a.destination());
    let audit = crate::audit::Audit::start(audit_dest.as_ref())
        .await
        .map_err(|e| format!("audit log: {e}"))?;
    let app = App::new(config, audit);
    let identity = {
        let config = app.config.load();
        // No HTTP resource here: `[mcp] audiences` when set, else `[jwt] audiences`, as a
        // wire login checks.
        let audiences = config
            .mcp
            .as_ref()
            .map(|m| m.audiences.as_slice())
            .filter(|a| !a.is_empty());
        crate::identity::from_bearer(&config, &app.jwks, &token, audiences)
            .await
            .map_err(|why| format!("the token was refused ({})", why.as_str()))?
    };
    tracing::info!(identity = %identity.name, role = %identity.role, "mcp: serving on stdio");
    let server = Server::new(app.clone(), Some(Arc::new(identity)));
    let running = server
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(|e| format!("mcp: {e}"))?;
    let _ = running.waiting().await;
    app.audit.flush().await;
    Ok(())
}
