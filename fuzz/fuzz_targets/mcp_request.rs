//! An MCP POST body as the endpoint's front reads it (JSON-RPC or a batch, write tools
//! looked for) and a tool call's arguments as the tools read them: no panic, whatever the
//! JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::mcp::{http, tools};

fuzz_target!(|data: &[u8]| {
    let _ = http::screen(data);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let args = v
        .get("params")
        .and_then(|p| p.get("arguments"))
        .and_then(|a| a.as_object())
        .or_else(|| v.as_object());
    if let Some(map) = args {
        let a = tools::Args(map);
        let _ = a.required("sql");
        let _ = a.text("database");
        let _ = a.params();
        let _ = a.flag("analyze");
        let _ = a.max_rows();
    }
});
