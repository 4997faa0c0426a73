//! The audit log: one JSON line per connection event, checked field by field after a real
//! session (TLS, login, queries), a refused password and a graceful shutdown that must not
//! lose lines. No password appears anywhere in it.

mod support;

use pgsluice::config::PoolMode;
use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_for_each_connection_event() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = support::certs::make(&dir, "", "audit");
    let log = dir.join("audit.jsonl");
    let text = config_text(&pg, "", "pool_size = 2").replacen(
        "[admin]",
        &format!(
            "[tls]\nmode = \"prefer\"\ncert = \"{}\"\nkey = \"{}\"\n\n[audit]\ndestination = \"{}\"\n\n[admin]",
            pki.server_cert.display(),
            pki.server_key.display(),
            log.display()
        ),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let port = proxy.port(PoolMode::Transaction);
    // A TLS client that runs queries and leaves.
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} password={} dbname=app sslmode=require",
        AGENT.0, AGENT.1
    );
    let (ok, out, err) = psql(&pg, &url, &["-c", "SELECT repeat('x', 1000)"]);
    assert!(ok && out.len() == 1000, "{err}");
    // A plaintext client whose query follows its password without waiting for the answer,
    // then Terminate: its bytes_in counts every message it sent.
    let query = support::raw::message(b'Q', b"SELECT 7\0");
    let mut early = support::raw::Raw::open(port).await;
    early.behind_auth = query.clone();
    early.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    let mut tags = Vec::new();
    while let Some((tag, _)) = early.recv().await {
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, b"TDCZ", "the query behind the password is answered");
    // Then, with both servers (pool_size = 2) held in transactions, a query that waits in
    // the queue and a second one sent while it waits.
    let holders = [
        proxy.connect(PoolMode::Transaction).await,
        proxy.connect(PoolMode::Transaction).await,
    ];
    for h in &holders {
        h.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    early.send(&query).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    early.send(&query).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    holders[0].batch_execute("COMMIT").await.unwrap();
    let mut tags = Vec::new();
    while tags.iter().filter(|&&t| t == b'Z').count() < 2 {
        tags.push(early.recv().await.expect("answers after the wait").0);
    }
    assert_eq!(tags, b"TDCZTDCZ");
    // One at a time: lines of connections ending at once may be queued out of order.
    for h in holders {
        drop(h);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let terminate = support::raw::message(b'X', b"");
    early.send(&terminate).await;
    assert!(early.recv().await.is_none(), "closed after Terminate");
    // A wrong password.
    let bad = proxy.url(PoolMode::Transaction, (AGENT.0, "not-the-password"), "app");
    assert_eq!(sqlstate(&connect(&bad).await.unwrap_err()), "28P01");
    proxy.running.shutdown().await;

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(AGENT.1)
            && !text.contains("not-the-password")
            && !text.contains(ROLE_PASSWORD)
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of =
        |conn: &Value| -> Vec<&Value> { lines.iter().filter(|l| &l["conn"] == conn).collect() };
    let events = |ls: &[&Value]| -> Vec<String> {
        ls.iter()
            .map(|l| l["event"].as_str().unwrap().to_owned())
            .collect()
    };
    // The TLS session: accepted, tls, authenticated, disconnected, in that order.
    let tls_line = lines.iter().find(|l| l["event"] == "tls").unwrap();
    let session = of(&tls_line["conn"]);
    assert_eq!(
        events(&session),
        ["accepted", "tls", "authenticated", "disconnected"]
    );
    assert_eq!(session[0]["addr"], "127.0.0.1");
    assert_eq!(session[0]["listener"], "transaction");
    assert!(
        session[1]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1.3/")
    );
    assert_eq!(session[1]["sni"], "localhost");
    let auth = session[2];
    assert_eq!(
        (
            auth["user"].as_str(),
            auth["database"].as_str(),
            auth["method"].as_str()
        ),
        (Some("agent"), Some("app"), Some("scram-sha-256"))
    );
    assert_eq!(auth["pool"], format!("app/{SCRAM_ROLE}"));
    let bye = session[3];
    assert!(bye["bytes_out"].as_u64().unwrap() > 1000, "{bye}");
    assert!(bye["bytes_in"].as_u64().unwrap() > 10);
    assert!(bye["duration_ms"].as_u64().is_some());
    assert_eq!(bye["user"], "agent");
    // The early client's line: none of its bytes uncounted.
    let early_auth = lines
        .iter()
        .filter(|l| l["event"] == "authenticated" && l["conn"] != tls_line["conn"])
        .collect::<Vec<_>>();
    // The early client logged in before the two holders.
    assert_eq!(early_auth.len(), 3, "{early_auth:?}");
    let early_bye = of(&early_auth[0]["conn"])
        .into_iter()
        .find(|l| l["event"] == "disconnected")
        .unwrap();
    assert_eq!(
        early_bye["bytes_in"].as_u64(),
        Some((3 * query.len() + terminate.len()) as u64),
        "{early_bye}"
    );
    // The refusal names the SQLSTATE and the user, not the password.
    let refused = lines.iter().find(|l| l["event"] == "refused").unwrap();
    assert_eq!(refused["code"], "28P01");
    assert_eq!(refused["user"], "agent");
    assert_eq!(
        events(&of(&refused["conn"])),
        ["accepted", "refused", "disconnected"]
    );
    // Timestamps are RFC 3339 and in order.
    let ts: Vec<&str> = lines.iter().map(|l| l["ts"].as_str().unwrap()).collect();
    assert!(
        ts.iter().all(|t| t.len() == 27 && t.ends_with('Z')),
        "{ts:?}"
    );
    let mut sorted = ts.clone();
    sorted.sort();
    assert_eq!(ts, sorted);
    let _ = std::fs::remove_dir_all(&dir);
}
