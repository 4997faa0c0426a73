//! The MCP server (docs/mcp.md): tool-calling agents reach PostgreSQL through the same
//! pools, identities, claims, limits and audit log as wire clients. `http` is the endpoint
//! on the `[http]` listener, `stdio` the subprocess mode, `handler` the server rmcp drives,
//! `tools` and `catalog` what the tools do, `exec` how one call runs on a pooled server,
//! `result` how rows become tool results.

pub mod catalog;
pub mod exec;
pub mod handler;
pub mod http;
pub mod result;
pub mod stdio;
pub mod tools;
