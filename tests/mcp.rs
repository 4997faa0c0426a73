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

/// The agents.toml sections (compat claims) plus `[http]` and `[mcp]` (`mcp_extra` inside
/// `[mcp]`).
fn mcp_config(pg: &DevDb, mcp_extra: &str, audit: Option<&std::path::Path>) -> String {
    mcp_config_in(pg, "compat", "", mcp_extra, audit)
}

fn mcp_config_in(
    pg: &DevDb,
    claims_mode: &str,
    db_extra: &str,
    mcp_extra: &str,
    audit: Option<&std::path::Path>,
) -> String {
    let base = agent_config(pg, claims_mode, "", db_extra);
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

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a client program (installed by .ci/run) to success; the JSON it printed (all of
/// its output, or its last line).
async fn client_json(cmd: &mut tokio::process::Command, what: &str) -> Value {
    let out = cmd
        .current_dir(clients_dir())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {what} (installed by .ci/run): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(&stdout)
        .or_else(|_| serde_json::from_str(stdout.lines().last().unwrap_or("")))
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Sealed claims (`pgsluice.uid()`, set only through the proxy's HMAC) reach RLS for MCP
/// calls too, with two identities taking turns on one server connection.
#[tokio::test]
async fn sealed_claims_reach_rls_for_mcp_calls() {
    let pg = start_postgres();
    prepare(&pg).await;
    let text = mcp_config_in(&pg, "sealed", "pool_size = 1", AUD, None);
    install(&pg, &text).await;
    own_rows_policy(&pg, "pgsluice.uid()").await;
    let proxy = Proxy::start(&text).await;
    let addr = http(&proxy);
    let sql = json!({ "sql": "SELECT body, pgsluice.uid()::text AS me FROM notes ORDER BY body" });
    let mut a = Session::open(addr, &alice(), "2025-06-18").await;
    let mut b = Session::open(addr, &bob(), "2025-06-18").await;
    for _ in 0..2 {
        let r = a.call("query", sql.clone()).await;
        assert_eq!(
            r["structuredContent"]["rows"],
            json!([["alice-1", ALICE], ["alice-2", ALICE]]),
            "{r}"
        );
        let r = b.call("query", sql.clone()).await;
        assert_eq!(
            r["structuredContent"]["rows"],
            json!([["bob-1", BOB]]),
            "{r}"
        );
    }
    let r = b
        .call(
            "query",
            json!({ "sql": "SELECT count(*) AS n FROM pgsluice.sealed" }),
        )
        .await;
    assert_eq!(
        sqlstate(&r),
        "42501",
        "the seal table is not the agent's to read: {r}"
    );
}

/// Runs tests/clients/mcp_check.py (the official Python SDK) with `plan`; its report.
async fn python_sdk(plan: Value) -> Value {
    let mut cmd = tokio::process::Command::new(python3());
    cmd.arg(clients_dir().join("mcp_check.py"))
        .arg(plan.to_string());
    client_json(&mut cmd, "mcp_check.py").await
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
    // Leaving the read-only transaction: refused by its first word, and a second statement by the server.
    let r = a
        .call(
            "query",
            json!({ "sql": "COMMIT; INSERT INTO notes (owner, body) VALUES ('x', 'two')" }),
        )
        .await;
    assert_eq!(sqlstate(&r), "0A000", "{r}");
    let r = a
        .call(
            "query",
            json!({ "sql": "SELECT 1; INSERT INTO notes (owner, body) VALUES ('x', 'two')" }),
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
    // COPY has no place in a tool call: refused, and the server is fine afterwards.
    let r = svc
        .call(
            "execute",
            json!({ "sql": "COPY notes (owner, body) FROM STDIN" }),
        )
        .await;
    assert_eq!(sqlstate(&r), "0A000", "{r}");
    assert!(
        r["structuredContent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available through MCP"),
        "{r}"
    );
    let r = svc
        .call("query", json!({ "sql": "COPY notes TO STDOUT" }))
        .await;
    assert_eq!(sqlstate(&r), "0A000", "{r}");
    let r = svc
        .call("query", json!({ "sql": "SELECT count(*) AS n FROM notes" }))
        .await;
    assert_eq!(column(&r), [json!(5)], "{r}");
    // What a committed statement leaves in the session is gone by the next call.
    let r = svc.call("execute", json!({ "sql": "SELECT set_config('app.leak', 'svc-secret', false), set_config('role', 'postgres', false) IS NULL" })).await;
    assert_eq!(
        sqlstate(&r),
        "42501",
        "SET ROLE to a role it is not a member of: {r}"
    );
    let r = svc
        .call(
            "execute",
            json!({ "sql": "SELECT set_config('app.leak', 'svc-secret', false)" }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = svc.call("query", json!({ "sql": "SELECT current_setting('app.leak', true) AS leak, current_user::text AS who" })).await;
    assert_eq!(r["structuredContent"]["rows"][0][1], "service_role", "{r}");
    assert!(
        matches!(&r["structuredContent"]["rows"][0][0], Value::Null)
            || r["structuredContent"]["rows"][0][0] == "",
        "{r}"
    );
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

/// `pgsluice mcp --stdio` as a desktop client starts it: the Python SDK's stdio client runs
/// the binary with the agent's API key in the environment.
#[tokio::test]
async fn stdio_mode_serves_a_subprocess() {
    let pg = database().await;
    let dir = scratch("stdio");
    let config = dir.join("pgsluice.toml");
    std::fs::write(&config, mcp_config(&pg, AUD, None)).unwrap();
    let stdio = |key: &str| {
        json!({
            "command": env!("CARGO_BIN_EXE_pgsluice"),
            "args": ["mcp", "--stdio", "--config", config.to_str().unwrap()],
            "env": { "PGSLUICE_API_KEY": key, "PGSLUICE_LOG": "warn" },
        })
    };
    let report = python_sdk(json!({
        "stdio": stdio(BATCH_KEY), "mode": "legacy",
        "calls": [["query", { "sql": "SELECT body FROM notes ORDER BY body" }],
                  ["query", { "sql": "SELECT pgsluice_test_missing()" }]],
    }))
    .await;
    assert_eq!(report["server"], "pgsluice");
    assert_eq!(
        report["results"][0]["structuredContent"]["rows"],
        json!([["batch-1"]])
    );
    assert_eq!(sqlstate(&report["results"][1]), "42883");
    // A wrong key: the process says why on stderr and exits non-zero.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(["mcp", "--stdio", "--config", config.to_str().unwrap()])
        .env("PGSLUICE_API_KEY", "sk-wrong")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the token was refused (unknown_api_key)"),
        "{err}"
    );
}

/// Every call is an audit line, a metric and a SHOW QUERIES entry; the audit line carries no
/// token and, for identities with audit_statements, the statement.
#[tokio::test]
async fn calls_are_audited_measured_and_listed() {
    let pg = database().await;
    let log = scratch("observe").join("audit.log");
    let text = mcp_config(&pg, AUD, Some(&log)).replace(
        "name = \"batch-agent\"",
        "name = \"batch-agent\"\naudit_statements = true",
    );
    let proxy = Proxy::start(&text).await;
    let addr = http(&proxy);
    let token = alice();
    let mut a = Session::open(addr, &token, "2025-11-25").await;
    a.call(
        "query",
        json!({ "sql": "SELECT body FROM notes WHERE id = 1" }),
    )
    .await;
    a.call(
        "query",
        json!({ "sql": "SELECT body FROM notes WHERE id = 2" }),
    )
    .await;
    a.call("query", json!({ "sql": "SELECT * FROM nowhere" }))
        .await;
    proxy.running.app.audit.flush().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&token), "a token reached the audit log");
    let calls: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "mcp_call")
        .collect();
    assert_eq!(calls.len(), 3, "{text}");
    assert_eq!(calls[0]["identity"], ALICE);
    assert_eq!(calls[0]["role"], "authenticated");
    assert_eq!(calls[0]["tool"], "query");
    assert_eq!(calls[0]["rows"], 1);
    assert_eq!(calls[0]["sqlstate"], Value::Null);
    // The same statement shape, the same fingerprint.
    assert_eq!(calls[0]["fingerprint"], calls[1]["fingerprint"]);
    assert_eq!(calls[2]["sqlstate"], "42P01");
    assert_eq!(
        calls[0]["statement"],
        Value::Null,
        "alice's statements are not audited"
    );
    // The batch agent's are (audit_statements), and its pools are only those of `app`.
    let mut batch = Session::open(addr, BATCH_KEY, "2025-11-25").await;
    let r = batch.call("pool_status", json!({})).await;
    let pools = r["structuredContent"]["pools"].as_array().unwrap();
    assert!(
        !pools.is_empty() && pools.iter().all(|p| p["database"] == "app"),
        "{pools:?}"
    );
    batch
        .call("query", json!({ "sql": "SELECT 'audited' AS a" }))
        .await;
    proxy.running.app.audit.flush().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = text
        .lines()
        .rfind(|l| l.contains("mcp_call"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(
        (&last["identity"], &last["statement"]),
        (&json!("batch-agent"), &json!("SELECT 'audited' AS a"))
    );

    let (status, metrics) = {
        let r = request(addr, "GET", "/metrics", &[], b"").await;
        (r.status, r.body)
    };
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pgsluice_mcp_tool_calls_total{tool=\"query\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgsluice_mcp_tool_errors_total{tool=\"query\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pgsluice_mcp_tool_call_duration_seconds_count{tool=\"query\"} 4"));
    let queries = proxy.running.app.queries.rows();
    let q = queries
        .iter()
        .find(|q| q.text.contains("from notes where id = ?"))
        .unwrap_or_else(|| panic!("{queries:?}"));
    assert_eq!(
        (q.calls, &*q.role, &*q.database),
        (2, "authenticated", "app")
    );
}

/// A small deterministic generator (xorshift), so a failing input can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid message with bytes flipped, cut, repeated or spliced.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        match rng.below(5) {
            0 => b[at] = rng.next() as u8,
            1 => b.truncate(at),
            2 => {
                let bytes = b"{}[]\",:\\0 \x00\xff";
                b.insert(at, bytes[rng.below(bytes.len())]);
            }
            3 => {
                let piece = b[at..].to_vec();
                b.extend_from_slice(&piece);
            }
            _ => {
                b.remove(at);
            }
        }
    }
    b
}

/// Malformed JSON-RPC, wrong methods, huge and deep bodies: every reply is a well-formed
/// HTTP answer with the right JSON-RPC code where one applies, nothing hangs, and the
/// endpoint still serves a real session afterwards.
#[tokio::test]
async fn json_rpc_fuzz_never_breaks_the_endpoint() {
    let pg = database().await;
    let proxy = Proxy::start(&mcp_config(
        &pg,
        &format!("{AUD}\nmax_request_bytes = 65536"),
        None,
    ))
    .await;
    let addr = http(&proxy);
    let token = alice();
    let auth = format!("Bearer {token}");
    let session = Session::open(addr, &token, "2025-11-25").await;
    let headers = |extra: &[(&'static str, &str)]| -> Vec<(String, String)> {
        let mut h = vec![
            ("Authorization".to_owned(), auth.clone()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "Accept".to_owned(),
                "application/json, text/event-stream".to_owned(),
            ),
            ("Mcp-Session-Id".to_owned(), session.id.clone()),
            ("MCP-Protocol-Version".to_owned(), "2025-11-25".to_owned()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    };
    let send = |method: &'static str, h: Vec<(String, String)>, body: Vec<u8>| async move {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tokio::time::timeout(
            Duration::from_secs(20),
            request(addr, method, "/mcp", &h, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} with {} bytes hung", body.len()))
    };

    // Known answers first.
    let r = send("POST", headers(&[]), b"{not json".to_vec()).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{r:?}"
    );
    let r = send(
        "POST",
        headers(&[]),
        rpc(5, "no/such/method", json!({})).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32601, "{r:?}");
    let unknown_tool = rpc(
        6,
        "tools/call",
        json!({ "name": "drop_everything", "arguments": {} }),
    );
    let r = send("POST", headers(&[]), unknown_tool.to_string().into_bytes()).await;
    assert_eq!(r.json()["error"]["code"], -32602, "{r:?}");
    let bad_args = rpc(
        7,
        "tools/call",
        json!({ "name": "query", "arguments": { "sql": 42 } }),
    );
    let r = send("POST", headers(&[]), bad_args.to_string().into_bytes()).await;
    assert_eq!(r.json()["result"]["isError"], true, "{r:?}");
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(200_000)
    );
    let r = send("POST", headers(&[]), huge.into_bytes()).await;
    assert_eq!(r.status, 413, "{r:?}");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = send("POST", headers(&[]), deep.into_bytes()).await;
    assert_eq!(r.status, 400, "{r:?}");
    for method in ["PUT", "PATCH", "GET", "OPTIONS"] {
        let r = send(method, headers(&[]), Vec::new()).await;
        assert!((400..500).contains(&r.status), "{method}: {r:?}");
    }
    let r = send(
        "POST",
        headers(&[("Content-Type", "text/plain")]),
        b"{}".to_vec(),
    )
    .await;
    assert!((400..500).contains(&r.status), "{r:?}");

    // Then mutations of real messages.
    let seeds: Vec<Vec<u8>> = [
        rpc(10, "tools/call", json!({ "name": "query", "arguments": { "sql": "SELECT 1", "params": [1, "a", null] } })),
        rpc(11, "tools/list", json!({})),
        rpc(12, "resources/read", json!({ "uri": "pgsluice://app/table/public/notes" })),
        rpc(13, "initialize", json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "f", "version": "1" } })),
        json!([rpc(14, "ping", json!({})), { "jsonrpc": "2.0", "method": "notifications/initialized" }]),
    ]
    .iter()
    .map(|m| m.to_string().into_bytes())
    .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..300 {
        let body = mutate(&mut rng, &seeds[i % seeds.len()]);
        let r = send("POST", headers(&[]), body.clone()).await;
        assert!(
            (200..300).contains(&r.status) || (400..500).contains(&r.status),
            "input {i} {:?} got {r:?}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut after = Session::open(addr, &token, "2025-06-18").await;
    let r = after
        .call("query", json!({ "sql": "SELECT count(*) AS n FROM notes" }))
        .await;
    assert_eq!(column(&r), [json!(2)]);
}

/// Runs the MCP Inspector CLI (npm @modelcontextprotocol/inspector) against `url` with
/// `args`; its JSON output.
async fn inspector(url: &str, token: &str, args: &[&str]) -> Value {
    let catalog = scratch("inspector").join("catalog.json");
    let mut cmd =
        tokio::process::Command::new(clients_dir().join("node_modules/.bin/mcp-inspector"));
    cmd.args(["--cli", url, "--transport", "http"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(args)
        .env("MCP_CATALOG_PATH", &catalog);
    client_json(&mut cmd, "the MCP Inspector").await
}

/// The MCP Inspector CLI lists the tools and calls one, with RLS applied.
#[tokio::test]
async fn inspector_cli_completes_a_session() {
    let pg = database().await;
    let proxy = Proxy::start(&mcp_config(&pg, AUD, None)).await;
    let url = format!("http://{}/mcp", http(&proxy));
    let tools = inspector(&url, &bob(), &["--method", "tools/list"]).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for t in [
        "query",
        "list_databases",
        "list_schemas",
        "list_tables",
        "describe_table",
        "explain",
        "pool_status",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    let r = inspector(
        &url,
        &bob(),
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "query",
            "--tool-arg",
            "sql=SELECT body FROM notes ORDER BY body",
        ],
    )
    .await;
    assert_eq!(r["structuredContent"]["rows"], json!([["bob-1"]]), "{r}");
    let r = inspector(&url, &service(), &["--method", "tools/list"]).await;
    assert!(
        r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "execute"),
        "{r}"
    );
}

/// A call cannot leave its transaction, keep a prepared statement or an advisory lock on
/// the shared server; a session answers only the identity that opened it, which may hold
/// at most 64; `writers` names API keys and subjects as well as roles.
#[tokio::test]
async fn calls_stay_in_their_transaction_and_sessions_with_their_owner() {
    let pg = database().await;
    let writers = format!(r#"writers = ["key:batch-agent", "sub:{BOB}"]"#);
    let text = mcp_config(&pg, AUD, None).replace(r#"writers = ["service_role"]"#, &writers);
    let proxy = Proxy::start(&text).await;
    let addr = http(&proxy);
    let before = all_bodies(&pg).await;
    let mut a = Session::open(addr, &alice(), "2025-11-25").await;
    for sql in [
        "COMMIT",
        "  /* leave */ end",
        "BEGIN",
        "start transaction read write",
        "SAVEPOINT s",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "DEALLOCATE ALL",
        "COPY notes FROM STDIN",
    ] {
        let r = a.call("query", json!({ "sql": sql })).await;
        assert_eq!(sqlstate(&r), "0A000", "{sql}: {r}");
    }
    // Session advisory locks outlive a transaction: the call's are released with it.
    for tool in ["query", "execute"] {
        let mut w = Session::open(addr, BATCH_KEY, "2025-11-25").await;
        let r = w
            .call(
                tool,
                json!({ "sql": "SELECT pg_advisory_lock(4242) IS NULL AS locked" }),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
    }
    let held: i64 = superuser(&pg)
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);

    // Bob cannot use, or end, Alice's session by its id.
    let stolen = Session {
        token: bob(),
        id: a.id.clone(),
        addr,
        version: a.version.clone(),
        next: 100,
    };
    let r = stolen
        .post(&rpc(
            101,
            "tools/call",
            json!({ "name": "query", "arguments": { "sql": "SELECT 1" } }),
        ))
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    let bearer = format!("Bearer {}", bob());
    let del = [
        ("Authorization", bearer.as_str()),
        ("Mcp-Session-Id", a.id.as_str()),
    ];
    let r = support::mcp::request(addr, "DELETE", "/mcp", &del, b"").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = a
        .call(
            "query",
            json!({ "sql": "SELECT body FROM notes ORDER BY body" }),
        )
        .await;
    assert_eq!(column(&r), [json!("alice-1"), json!("alice-2")]);
    // Alice ends her own session; it is gone.
    let bearer = format!("Bearer {}", alice());
    let del = [
        ("Authorization", bearer.as_str()),
        ("Mcp-Session-Id", a.id.as_str()),
    ];
    let r = support::mcp::request(addr, "DELETE", "/mcp", &del, b"").await;
    assert!((200..300).contains(&r.status), "{r:?}");
    let r = a
        .post(&rpc(
            200,
            "tools/call",
            json!({ "name": "query", "arguments": { "sql": "SELECT 1" } }),
        ))
        .await;
    assert_eq!(r.status, 404, "{r:?}");

    // writers: the API key by name and Bob by subject; Alice (same role as Bob) and the
    // service role (not listed) are readers.
    let insert = |who: &str| json!({ "name": "execute", "arguments": { "sql": format!("INSERT INTO notes (owner, body) VALUES (auth.uid(), '{who}')") } });
    for (token, allowed, who) in [
        (BATCH_KEY.to_owned(), true, "by-key"),
        (bob(), true, "by-sub"),
        (alice(), false, "alice"),
        (service(), false, "svc"),
    ] {
        let s = Session::open(addr, &token, "2025-11-25").await;
        let r = s.post(&rpc(9, "tools/call", insert(who))).await;
        if allowed {
            assert_eq!(r.status, 200, "{who}: {r:?}");
            assert_eq!(r.json()["result"]["isError"], false, "{who}: {r:?}");
        } else {
            assert_eq!(r.status, 403, "{who}: {r:?}");
        }
    }
    let mut after = before.clone();
    after.extend(["by-key".to_owned(), "by-sub".to_owned()]);
    after.sort();
    assert_eq!(all_bodies(&pg).await, after);

    // 64 sessions per identity: the 65th is refused with 429, others may still open theirs.
    let carol = token(
        "authenticated",
        Some("carol"),
        json!({ "aud": "pgsluice-test" }),
    );
    let mut open = Vec::new();
    for _ in 0..64 {
        open.push(Session::open(addr, &carol, "2025-06-18").await);
    }
    let init = rpc(
        1,
        "initialize",
        json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }),
    );
    let r = post(addr, &carol, &[], &init).await;
    assert_eq!(r.status, 429, "{r:?}");
    Session::open(addr, &bob(), "2025-06-18").await;
    let bearer = format!("Bearer {carol}");
    let del = [
        ("Authorization", bearer.as_str()),
        ("Mcp-Session-Id", open[0].id.as_str()),
    ];
    let r = support::mcp::request(addr, "DELETE", "/mcp", &del, b"").await;
    assert!((200..300).contains(&r.status), "{r:?}");
    Session::open(addr, &carol, "2025-06-18").await;
}

/// An MCP identity's limits apply to its tool calls as to its wire transactions: its rate
/// refuses a call with 53400 naming the limit, its `max_user_connections` holds its calls to
/// its share of the pool, and another identity is unaffected.
#[tokio::test]
async fn identity_limits_apply_to_tool_calls() {
    let pg = database().await;
    let text = mcp_config(&pg, AUD, None).replace(
        "priority = \"low\"",
        "priority = \"low\"\nlimits = { transactions_per_second = 2, max_user_connections = 1 }",
    );
    let proxy = Proxy::start(&text).await;
    let addr = http(&proxy);
    let mut batch = Session::open(addr, BATCH_KEY, "2025-11-25").await;
    let mut again = Session::open(addr, BATCH_KEY, "2025-11-25").await;
    // Two calls at once, one server at a time (and the burst of 2 spent).
    let slow = json!({ "sql": "SELECT pg_sleep(0.4)::text AS slept" });
    let start = Instant::now();
    let (r1, r2) = tokio::join!(batch.call("query", slow.clone()), again.call("query", slow));
    assert_eq!(
        (r1["isError"].clone(), r2["isError"].clone()),
        (json!(false), json!(false))
    );
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    let sql = json!({ "sql": "SELECT body FROM notes ORDER BY body" });
    // The bucket refilled a little while those ran: at most 2 more, then refused.
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(batch.call("query", sql.clone()).await);
    }
    let served = results.iter().take_while(|r| r["isError"] == false).count();
    assert!(served <= 2, "{results:?}");
    let r = &results[served];
    assert_eq!(sqlstate(r), "53400", "{r}");
    assert!(
        r["structuredContent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("transactions_per_second 2"),
        "{r}"
    );
    // Alice has no limits: served at once.
    let mut a = Session::open(addr, &alice(), "2025-11-25").await;
    for _ in 0..5 {
        let r = a.call("query", sql.clone()).await;
        assert_eq!(column(&r), [json!("alice-1"), json!("alice-2")], "{r}");
    }
    // The bucket refills (one call per 500 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = batch.call("query", sql).await;
    assert_eq!(column(&r), [json!("batch-1")], "{r}");
}
