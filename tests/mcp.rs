//! The MCP endpoint against a real PostgreSQL with Row Level Security: the protocol
//! revisions agents run (2025-06-18 and 2025-11-25 sessions, stateless 2026-07-28), bearer
//! tokens resolved as wire logins are, read-only enforcement, limits, cancellation, audit
//! and metrics; the official Python SDK (HTTP and stdio) and the MCP Inspector CLI.

mod support;

use pgsluice::devdb::DevDb;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::agents::*;
use support::mcp::{Reply, post, request};
use support::*;

/// The agents.toml sections plus `[http]` and `[mcp]` (`mcp_extra` inside `[mcp]`).
fn mcp_config(pg: &DevDb, mcp_extra: &str, audit: Option<&std::path::Path>) -> String {
    let base = agent_config(pg, "compat", "", "");
    let audit = audit.map_or(String::new(), |p| {
        format!("[audit]\ndestination = \"{}\"\n", p.display())
    });
    format!(
        r#"{base}
[http]
addr = "127.0.0.1:0"

[mcp]
enabled = true
writers = ["service_role"]
max_rows = 50
{mcp_extra}

{audit}"#
    )
}

/// PostgreSQL with the notes table, Supabase's auth.uid() policy, and a function that
/// writes (for the read-only checks).
async fn database() -> DevDb {
    let pg = start_postgres();
    prepare(&pg).await;
    own_rows_policy(&pg, "auth.uid()").await;
    superuser(&pg)
        .await
        .batch_execute(
            "CREATE FUNCTION sneaky_write() RETURNS int LANGUAGE sql VOLATILE AS
               $$ INSERT INTO notes (owner, body) VALUES (auth.uid(), 'sneaky') RETURNING id $$;
             GRANT EXECUTE ON FUNCTION sneaky_write() TO authenticated;
             GRANT UPDATE, DELETE ON notes TO service_role;
             COMMENT ON TABLE notes IS 'Agent notes, one owner each';",
        )
        .await
        .unwrap();
    pg
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgsluice-mcp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn http(proxy: &Proxy) -> SocketAddr {
    proxy.running.http.expect("http listener")
}

fn alice() -> String {
    token(
        "authenticated",
        Some(ALICE),
        json!({ "aud": "pgsluice-test" }),
    )
}

fn bob() -> String {
    token(
        "authenticated",
        Some(BOB),
        json!({ "aud": "pgsluice-test" }),
    )
}

fn service() -> String {
    token(
        "service_role",
        Some("svc"),
        json!({ "aud": "pgsluice-test" }),
    )
}

const AUD: &str = r#"audiences = ["pgsluice-test"]"#;

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// A 2025-06-18 or 2025-11-25 session: initialize, initialized, then requests in it.
struct Session {
    addr: SocketAddr,
    token: String,
    id: String,
    version: String,
    next: u64,
}

impl Session {
    async fn open(addr: SocketAddr, token: &str, version: &str) -> Session {
        let init = rpc(
            1,
            "initialize",
            json!({ "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "pgsluice-tests", "version": "1" } }),
        );
        let r = post(addr, token, &[], &init).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["result"]["protocolVersion"], version, "{r:?}");
        assert_eq!(r.json()["result"]["serverInfo"]["name"], "pgsluice");
        let id = r
            .header("mcp-session-id")
            .expect("Mcp-Session-Id")
            .to_owned();
        let s = Session {
            addr,
            token: token.to_owned(),
            id,
            version: version.to_owned(),
            next: 2,
        };
        let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let r = s.post(&note).await;
        assert_eq!(r.status, 202, "{r:?}");
        s
    }

    async fn post(&self, message: &Value) -> Reply {
        let headers = [
            ("Mcp-Session-Id", self.id.as_str()),
            ("MCP-Protocol-Version", self.version.as_str()),
        ];
        post(self.addr, &self.token, &headers, message).await
    }

    async fn call(&mut self, tool: &str, args: Value) -> Value {
        self.next += 1;
        let r = self
            .post(&rpc(
                self.next,
                "tools/call",
                json!({ "name": tool, "arguments": args }),
            ))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert!(v.get("error").is_none(), "JSON-RPC error: {v}");
        v["result"].clone()
    }
}

/// The values of column 0 of a query result.
fn column(result: &Value) -> Vec<Value> {
    result["structuredContent"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {result}"))
        .iter()
        .map(|r| r[0].clone())
        .collect()
}

fn sqlstate(result: &Value) -> &str {
    assert_eq!(result["isError"], true, "expected an error: {result}");
    result["structuredContent"]["error"]["sqlstate"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn sessions_of_both_2025_revisions_see_their_own_rows() {
    let pg = database().await;
    let proxy = Proxy::start(&mcp_config(&pg, AUD, None)).await;
    let addr = http(&proxy);
    let sql = json!({ "sql": "SELECT body FROM notes ORDER BY body" });
    for version in ["2025-06-18", "2025-11-25"] {
        let mut a = Session::open(addr, &alice(), version).await;
        let mut b = Session::open(addr, &bob(), version).await;
        assert_eq!(
            column(&a.call("query", sql.clone()).await),
            [json!("alice-1"), json!("alice-2")]
        );
        assert_eq!(
            column(&b.call("query", sql.clone()).await),
            [json!("bob-1")]
        );
        // Interleaved on the same pool, each call still carries its own claims.
        assert_eq!(column(&a.call("query", sql.clone()).await).len(), 2);
        // A session belongs to the identity that opened it.
        let mut stolen = Session { token: bob(), ..a };
        stolen.next = 100;
        let r = stolen
            .post(&rpc(
                101,
                "tools/call",
                json!({ "name": "query", "arguments": sql }),
            ))
            .await;
        assert!(r.json().get("error").is_some(), "{r:?}");
    }
}

/// Runs tests/clients/mcp_check.py with `plan`; its JSON report.
async fn python_sdk(plan: Value) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = tokio::process::Command::new("python3")
        .arg(dir.join("mcp_check.py"))
        .arg(plan.to_string())
        .current_dir(&dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3 (the SDK is installed by .ci/run): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mcp_check.py failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("mcp_check.py printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Every tool through the official Python SDK, in the stateless revision (discover) and in
/// a 2025-11-25 session (initialize): values, limits, RLS and the catalog.
#[tokio::test]
async fn python_sdk_runs_every_tool_in_both_eras() {
    let pg = database().await;
    let proxy = Proxy::start(&mcp_config(&pg, AUD, None)).await;
    let url = format!("http://{}/mcp", http(&proxy));
    let calls = json!([
        ["query", { "sql": "SELECT body, id > $1 AS later FROM notes WHERE body LIKE $2 ORDER BY body", "params": [0, "alice%"] }],
        ["query", { "sql": "SELECT g FROM generate_series(1, 200) g" }],
        ["query", { "sql": "SELECT g FROM generate_series(1, 200) g", "max_rows": 3 }],
        ["query", { "sql": "SELECT * FROM no_such_table" }],
        ["list_databases", {}],
        ["list_schemas", {}],
        ["list_tables", { "schema": "public" }],
        ["describe_table", { "table": "notes" }],
        ["explain", { "sql": "SELECT * FROM notes WHERE id = $1", "params": [1] }],
        ["explain", { "sql": "SELECT count(*) FROM notes", "analyze": true }],
        ["pool_status", {}],
    ]);
    for mode in ["auto", "legacy"] {
        let report = python_sdk(json!({
            "url": url, "token": alice(), "mode": mode, "calls": calls,
            "resources": true, "read": ["pgsluice://app/schema", "pgsluice://app/table/public/notes"],
        }))
        .await;
        let expected = if mode == "auto" {
            "2026-07-28"
        } else {
            "2025-11-25"
        };
        assert_eq!(report["protocol"], expected, "{report}");
        assert_eq!(report["server"], "pgsluice");
        let tools = &report["tools"];
        assert_eq!(tools["query"]["readOnlyHint"], true);
        assert_eq!(tools["query"]["hasOutputSchema"], true);
        assert!(
            tools.get("execute").is_none(),
            "a reader is not offered execute: {tools}"
        );
        let r = &report["results"];
        // Values typed by column: text stays text, booleans are booleans.
        assert_eq!(
            r[0]["structuredContent"]["rows"],
            json!([["alice-1", true], ["alice-2", true]])
        );
        assert_eq!(
            r[0]["structuredContent"]["columns"][1],
            json!({ "name": "later", "type": "boolean" })
        );
        assert!(
            r[0]["text"]
                .as_str()
                .unwrap()
                .starts_with("body | later\nalice-1 | t"),
            "{}",
            r[0]["text"]
        );
        // [mcp] max_rows = 50 caps it, and says so; a call may ask for fewer.
        assert_eq!(r[1]["structuredContent"]["row_count"], 50);
        assert_eq!(r[1]["structuredContent"]["truncated_by"], "max_rows");
        assert!(r[1]["text"].as_str().unwrap().contains("TRUNCATED"));
        assert_eq!(column(&r[2]), [json!(1), json!(2), json!(3)]);
        assert_eq!(sqlstate(&r[3]), "42P01");
        assert!(r[3]["text"].as_str().unwrap().starts_with("ERROR 42P01"));
        assert_eq!(r[4]["structuredContent"]["default"], "app");
        let schemas = column(&r[5]);
        assert!(
            schemas.contains(&json!("public")) && !schemas.contains(&json!("pg_catalog")),
            "{schemas:?}"
        );
        let tables = &r[6]["structuredContent"]["rows"];
        let notes = tables
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t[1] == "notes")
            .unwrap();
        assert_eq!(notes[2], "table");
        assert_eq!(notes[4], true, "rls_enabled");
        assert_eq!(notes[5], "Agent notes, one owner each");
        let d = &r[7]["structuredContent"];
        assert_eq!(d["primary_key"], json!(["id"]));
        assert_eq!(d["columns"][2]["name"], "body");
        assert_eq!(d["columns"][2]["nullable"], false);
        assert_eq!(d["policies"][0]["name"], "own");
        assert_eq!(d["policies"][0]["applies_to_current_role"], true);
        assert!(
            d["indexes"][0]["definition"]
                .as_str()
                .unwrap()
                .contains("UNIQUE")
        );
        let plan = &r[8]["structuredContent"]["rows"][0][0][0]["Plan"];
        assert!(plan["Node Type"].is_string(), "{}", r[8]);
        // ANALYZE ran it: RLS shows in the actual row count (alice's two rows).
        let analyzed = &r[9]["structuredContent"]["rows"][0][0][0]["Plan"];
        assert_eq!(analyzed["Actual Rows"], 1, "{}", r[9]);
        let pools = r[10]["structuredContent"]["pools"].as_array().unwrap();
        assert!(
            pools
                .iter()
                .any(|p| p["database"] == "app" && p["role"] == "authenticated"),
            "{pools:?}"
        );
        let resources = report["resources"].as_array().unwrap();
        assert!(
            resources.contains(&json!("pgsluice://app/schema")),
            "{resources:?}"
        );
        assert_eq!(
            report["templates"],
            json!(["pgsluice://{database}/table/{schema}/{table}"])
        );
        let schema = report["read"]["pgsluice://app/schema"].as_array().unwrap();
        assert!(
            schema
                .iter()
                .any(|t| t["name"] == "notes" && t["columns"][0]["name"] == "id")
        );
        assert_eq!(
            report["read"]["pgsluice://app/table/public/notes"]["name"],
            "notes"
        );
    }
}

/// The rows of notes as the table owner sees them.
async fn all_bodies(pg: &DevDb) -> Vec<String> {
    superuser(pg)
        .await
        .query("SELECT body FROM notes ORDER BY body", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `query` cannot write, however the statement tries; `execute` is 403 for readers and
/// commits only what succeeds for writers.
#[tokio::test]
async fn readers_cannot_write_and_writers_commit_only_success() {
    let pg = database().await;
    let proxy = Proxy::start(&mcp_config(&pg, AUD, None)).await;
    let addr = http(&proxy);
    let before = all_bodies(&pg).await;
    let mut a = Session::open(addr, &alice(), "2025-11-25").await;
    for sql in [
        format!("INSERT INTO notes (owner, body) VALUES ('{ALICE}', 'direct') RETURNING id"),
        format!(
            "WITH w AS (INSERT INTO notes (owner, body) VALUES ('{ALICE}', 'cte') RETURNING id) SELECT * FROM w"
        ),
        "SELECT sneaky_write()".to_owned(),
        "DELETE FROM notes".to_owned(),
        "SELECT nextval('notes_id_seq')".to_owned(),
    ] {
        let r = a.call("query", json!({ "sql": sql })).await;
        assert_eq!(sqlstate(&r), "25006", "{sql}: {r}");
    }
    // Leaving the read-only transaction and writing takes two statements: the second is refused.
    let r = a
        .call(
            "query",
            json!({ "sql": "COMMIT; INSERT INTO notes (owner, body) VALUES ('x', 'two')" }),
        )
        .await;
    assert_eq!(sqlstate(&r), "42601", "{r}");
    // A session setting one call makes does not reach the next.
    let r = a
        .call(
            "query",
            json!({ "sql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE" }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = a
        .call("query", json!({ "sql": "SELECT sneaky_write()" }))
        .await;
    assert_eq!(sqlstate(&r), "25006", "{r}");
    assert_eq!(all_bodies(&pg).await, before);

    // A reader asking for execute: 403 insufficient_scope, before anything runs.
    let r = a
        .post(&rpc(
            50,
            "tools/call",
            json!({ "name": "execute", "arguments": { "sql": "DELETE FROM notes" } }),
        ))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"pgsluice:write\""),
        "{challenge}"
    );
    assert_eq!(all_bodies(&pg).await, before);

    let mut svc = Session::open(addr, &service(), "2025-11-25").await;
    let r = svc
        .call("execute", json!({ "sql": "INSERT INTO notes (owner, body) VALUES ($1, $2) RETURNING body", "params": [BOB, "from-mcp"] }))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(column(&r), [json!("from-mcp")]);
    assert_eq!(r["structuredContent"]["command"], "INSERT 0 1");
    // A failing statement commits nothing (here: the row before the duplicate key).
    let r = svc
        .call("execute", json!({ "sql": "INSERT INTO notes (id, owner, body) VALUES (1000, $1, 'a'), (1000, $1, 'b')", "params": [BOB] }))
        .await;
    assert_eq!(sqlstate(&r), "23505", "{r}");
    assert!(
        r["structuredContent"]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{r}"
    );
    let mut after = before.clone();
    after.push("from-mcp".into());
    after.sort();
    assert_eq!(all_bodies(&pg).await, after);
    // Bob sees the row the service wrote for him, through RLS.
    let mut b = Session::open(addr, &bob(), "2025-11-25").await;
    let r = b
        .call(
            "query",
            json!({ "sql": "SELECT body FROM notes ORDER BY body" }),
        )
        .await;
    assert_eq!(column(&r), [json!("bob-1"), json!("from-mcp")]);
}

/// 401 with the resource metadata for a missing, expired or wrongly addressed token; the
/// metadata names the issuer; 403 for a foreign Origin or Host.
#[tokio::test]
async fn tokens_origins_and_hosts_are_checked() {
    let pg = database().await;
    let log = scratch("tokens").join("audit.log");
    let proxy = Proxy::start(&mcp_config(
        &pg,
        r#"resource = "http://mcp.test/mcp""#,
        Some(&log),
    ))
    .await;
    let addr = http(&proxy);
    let list = rpc(
        1,
        "initialize",
        json!({ "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }),
    );
    let host = [("Host", "mcp.test")];

    let r = post(addr, "", &host, &list).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer resource_metadata=\"http://mcp.test/.well-known/oauth-protected-resource/mcp\""
    );
    let meta = request(
        addr,
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &host,
        b"",
    )
    .await;
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["resource"], "http://mcp.test/mcp");
    assert_eq!(meta["authorization_servers"], json!(["supabase"]));

    // The audience must be this resource: a token minted for something else is refused.
    let elsewhere = token(
        "authenticated",
        Some(ALICE),
        json!({ "aud": "pgsluice-test" }),
    );
    let mine = token(
        "authenticated",
        Some(ALICE),
        json!({ "aud": "http://mcp.test/mcp" }),
    );
    let expired = token(
        "authenticated",
        Some(ALICE),
        json!({ "aud": "http://mcp.test/mcp", "exp": now() - 600 }),
    );
    let cut = mine.len() - 10;
    let swap = if &mine[cut..=cut] == "A" { "B" } else { "A" };
    let forged = format!("{}{swap}{}", &mine[..cut], &mine[cut + 1..]);
    let started = Instant::now();
    for bad in [
        elsewhere.as_str(),
        expired.as_str(),
        "sk-not-a-key",
        forged.as_str(),
    ] {
        let r = post(addr, bad, &host, &list).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "refusals are not answered at once"
    );
    let r = post(addr, &mine, &host, &list).await;
    assert_eq!(r.status, 200, "{r:?}");
    // API keys work as bearer tokens too.
    let r = post(addr, BATCH_KEY, &host, &list).await;
    assert_eq!(r.status, 200, "{r:?}");

    let r = post(
        addr,
        &mine,
        &[("Host", "mcp.test"), ("Origin", "http://evil.example")],
        &list,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = post(addr, &mine, &[("Host", "evil.example")], &list).await;
    assert_eq!(r.status, 403, "{r:?}");
    proxy.running.app.audit.flush().await;
    let reasons: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "token_refused")
        .map(|v| v["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "wrong_audience",
            "expired",
            "unknown_api_key",
            "bad_signature"
        ]
    );
}

/// Whether `f` comes to return `want` within ten seconds.
async fn until<F: Future<Output = i64>>(f: impl Fn() -> F, want: i64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Active statements on the server whose text contains `needle`.
async fn running(pg: &DevDb, needle: &str) -> i64 {
    superuser(pg)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&needle],
        )
        .await
        .unwrap()
        .get(0)
}

/// Byte limits truncate and say so; statement_timeout ends a slow call with 57014; a call
/// whose HTTP client goes away is cancelled on the server.
#[tokio::test]
async fn limits_and_cancellation() {
    let pg = database().await;
    let extra = format!("{AUD}\nmax_bytes = 4096\nstatement_timeout = 1");
    let proxy = Proxy::start(&mcp_config(&pg, &extra, None)).await;
    let addr = http(&proxy);
    let mut a = Session::open(addr, &alice(), "2025-11-25").await;
    let r = a
        .call(
            "query",
            json!({ "sql": "SELECT repeat('x', 1000) FROM generate_series(1, 40)" }),
        )
        .await;
    assert_eq!(r["structuredContent"]["truncated_by"], "max_bytes", "{r}");
    let n = r["structuredContent"]["row_count"].as_u64().unwrap();
    assert!((3..=4).contains(&n), "{n} rows of 1000 bytes within 4096");
    // One row larger than the whole budget is read past, never held.
    let r = a
        .call("query", json!({ "sql": "SELECT repeat('y', 5000000)" }))
        .await;
    assert_eq!(r["structuredContent"]["row_count"], 0, "{r}");
    assert_eq!(r["structuredContent"]["truncated_by"], "max_bytes");
    let started = Instant::now();
    let r = a
        .call("query", json!({ "sql": "SELECT pg_sleep(20)" }))
        .await;
    assert_eq!(sqlstate(&r), "57014", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The pool's server is still good for the next call.
    let r = a.call("query", json!({ "sql": "SELECT 1 AS one" })).await;
    assert_eq!(column(&r), [json!(1)]);

    // A client that sends a slow call and hangs up: the statement stops on the server.
    let proxy = Proxy::start(&mcp_config(
        &pg,
        &format!("{AUD}\nstatement_timeout = 60"),
        None,
    ))
    .await;
    let addr = http(&proxy);
    let b = Session::open(addr, &bob(), "2025-11-25").await;
    let call = rpc(
        9,
        "tools/call",
        json!({ "name": "query", "arguments": { "sql": "SELECT pg_sleep(45) AS hang_up_test" } }),
    );
    let hung = tokio::spawn(async move { b.post(&call).await });
    assert!(
        until(|| running(&pg, "hang_up_test"), 1).await,
        "the call never started"
    );
    hung.abort();
    assert!(
        until(|| running(&pg, "hang_up_test"), 0).await,
        "the statement kept running after its client left"
    );
}
