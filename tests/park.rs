//! Parked clients (`client_park_delay`): an idle transaction-mode client gives up its task
//! and relay until its next message. Real PostgreSQL, real clients: whatever a client had
//! (settings, prepared statements, its cancel key, its byte counts) is there when it comes
//! back; a message sent while it parks is never lost; KILL_CLIENT, a shutdown and the
//! client's own close reach it; TLS, LISTEN and session-mode clients are never parked (a
//! client that UNLISTENs every channel is again).

mod support;

use pgsluice::config::PoolMode;
use std::time::Duration;
use support::raw::{Raw, message};
use support::*;

/// Parking after 50-100 ms of idleness, so tests need not wait long.
const FAST: &str = "client_park_delay = 0.05";

fn parked(proxy: &Proxy) -> usize {
    proxy.running.app.parking.len()
}

fn parks(proxy: &Proxy) -> u64 {
    proxy.running.app.metrics.parks.get()
}

/// Whether every client has left SHOW CLIENTS within 5 s.
async fn all_gone(proxy: &Proxy) -> bool {
    eventually(Duration::from_secs(5), || {
        proxy.running.app.clients.is_empty()
    })
    .await
}

async fn wait_parked(proxy: &Proxy, n: usize) {
    assert!(
        eventually(Duration::from_secs(5), || parked(proxy) == n).await,
        "expected {n} parked clients, have {}",
        parked(proxy)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_park_and_come_back_with_their_session() {
    let pg = start_postgres();
    let text = config_text(&pg, FAST, "pool_size = 2");
    let proxy = Proxy::start(&text).await;
    let mut clients = Vec::new();
    let mut statements = Vec::new();
    for i in 0..3 {
        let c = proxy.connect(PoolMode::Transaction).await;
        // A setting (read back after its transaction) and a named prepared statement each.
        c.batch_execute(&format!(
            "SET application_name = 'agent-{i}'; SET myapp.tag = 't{i}'"
        ))
        .await
        .unwrap();
        statements.push(
            c.prepare(&format!(
                "SELECT $1::int + {i}, current_setting('myapp.tag')"
            ))
            .await
            .unwrap(),
        );
        clients.push(c);
    }
    for round in 0..2 {
        wait_parked(&proxy, 3).await;
        assert_eq!(
            proxy.running.app.clients.len(),
            3,
            "parked clients stay in SHOW CLIENTS"
        );
        for (i, (c, st)) in clients.iter().zip(&statements).enumerate() {
            let row = c.query_one(st, &[&(round * 100)]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round * 100 + i as i32);
            assert_eq!(row.get::<_, String>(1), format!("t{i}"));
            let name: String = c
                .query_one("SHOW application_name", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(name, format!("agent-{i}"));
        }
    }
    // Executions after a park are filed under their statement's fingerprint (the parked
    // meter forgot the names; the relay kept the texts).
    let rows = console(&pg, &proxy, ADMIN, "SHOW QUERIES").unwrap();
    let mine = rows
        .iter()
        .find(|r| r["query"].contains("current_setting"))
        .expect("the statement's fingerprint");
    // Three prepares (Parse, Describe) and six executions of one row each.
    assert_eq!((&*mine["calls"], &*mine["rows"]), ("9", "6"), "{rows:?}");
    // After a park, the client's cancel key still reaches its running statement.
    wait_parked(&proxy, 3).await;
    let token = clients[0].cancel_token();
    let sleeper = clients[0].query("SELECT pg_sleep(30)", &[]);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    };
    let (r, ()) = tokio::join!(sleeper, cancel);
    assert_eq!(sqlstate(&r.unwrap_err()), "57014");
    assert!(parks(&proxy) >= 9, "{} parks", parks(&proxy));
    // The metric says so too.
    wait_parked(&proxy, 3).await;
    let metrics = proxy.running.app.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgsluice_clients_parked{") && l.ends_with(" 3.0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_while_a_client_parks() {
    let pg = start_postgres();
    // 10 ms: the shortest delay; parks and messages race on every round.
    let text = config_text(&pg, "client_park_delay = 0.01", "pool_size = 2");
    let proxy = Proxy::start(&text).await;
    let port = proxy.port(PoolMode::Transaction);
    let mut raw = Raw::open(port).await;
    raw.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    let mut seed = 12345u64;
    for n in 0..300u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_micros((seed >> 33) % 40_000)).await;
        assert_eq!(
            raw.query(&format!("SELECT {n}")).await,
            Ok(vec![n.to_string()])
        );
    }
    assert!(parks(&proxy) >= 20, "only {} parks", parks(&proxy));
    // A message split across a pause longer than the delay: half a message in hand keeps
    // the client from parking, and the rest completes it.
    let q = message(b'Q', b"SELECT 'split'\0");
    raw.send(&q[..3]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.send(&q[3..]).await;
    let mut rows = Vec::new();
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'D' {
            rows.push(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(rows, ["split"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_leaves_is_forgotten_and_its_bytes_counted() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-park-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&log);
    let text = config_text(&pg, FAST, "pool_size = 2").replacen(
        "[admin]",
        &format!("[audit]\ndestination = \"{}\"\n\n[admin]", log.display()),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let port = proxy.port(PoolMode::Transaction);
    // Parked twice, then closed without Terminate while parked.
    let mut raw = Raw::open(port).await;
    raw.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    let mut sent = 0;
    for sql in ["SELECT 1", "SELECT 22"] {
        wait_parked(&proxy, 1).await;
        sent += sql.len() + 6;
        raw.query(sql).await.unwrap();
    }
    wait_parked(&proxy, 1).await;
    drop(raw);
    assert!(
        all_gone(&proxy).await,
        "the closed client is gone from SHOW CLIENTS"
    );
    assert_eq!(parked(&proxy), 0);
    assert_eq!(
        proxy.running.app.client_count(),
        0,
        "max_client_conn's count"
    );
    // tokio-postgres says Terminate when dropped: the same while parked.
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();
    wait_parked(&proxy, 1).await;
    drop(c);
    assert!(all_gone(&proxy).await);
    proxy.running.shutdown().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "disconnected")
        .expect("a disconnected line");
    // Both queries, counted across two parks (the login's own bytes are not).
    assert_eq!(first["bytes_in"], sent as u64, "{first}");
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_and_shutdown_reach_parked_clients() {
    let pg = start_postgres();
    let text = config_text(&pg, FAST, "pool_size = 2");
    let proxy = Proxy::start(&text).await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = Raw::open(port).await;
    a.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    let mut b = Raw::open(port).await;
    b.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    wait_parked(&proxy, 2).await;
    let ids: Vec<u64> = proxy
        .running
        .app
        .clients
        .all()
        .iter()
        .map(|c| c.facts.id)
        .collect();
    let (ok, _, err) = psql(
        &pg,
        &proxy.url(PoolMode::Session, ADMIN, "pgsluice"),
        &["-c", &format!("KILL_CLIENT {}", ids[0])],
    );
    assert!(ok, "{err}");
    // `a` logged in first (SHOW CLIENTS lists by id): it is told 57P01 and closed; `b` is
    // still parked.
    assert_eq!(first_error(&mut a).await.as_deref(), Some("57P01"));
    assert!(a.recv().await.is_none(), "closed after the error");
    assert!(
        eventually(Duration::from_secs(5), || proxy.running.app.clients.len()
            == 1)
        .await
    );
    assert_eq!(parked(&proxy), 1);
    let started = std::time::Instant::now();
    proxy.running.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(first_error(&mut b).await.as_deref(), Some("57P01"));
}

/// The SQLSTATE of the ErrorResponse a client is sent unasked, if one comes within a second.
async fn first_error(raw: &mut Raw) -> Option<String> {
    let got = tokio::time::timeout(Duration::from_secs(1), raw.recv()).await;
    match got {
        Ok(Some((b'E', body))) => Some(support::raw::error_code(&body)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_tls_and_session_clients_are_never_parked() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-park-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = support::certs::make(&dir, "", "park");
    let text = config_text(&pg, FAST, "pool_size = 2").replacen(
        "[admin]",
        &format!(
            "[tls]\nmode = \"prefer\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let tport = proxy.port(PoolMode::Transaction);
    let mut listener = Raw::open(tport).await;
    listener
        .login(196608, AGENT.0, AGENT.1, "app")
        .await
        .unwrap();
    listener.query("LISTEN parked_test").await.unwrap();
    let session = proxy.connect(PoolMode::Session).await;
    session.simple_query("SELECT 1").await.unwrap();
    let tls = support::certs::tls_connect(tport, &pki.ca, false, &[])
        .await
        .unwrap();
    let tls = support::certs::postgres_over(tls).await.unwrap();
    tls.simple_query("SELECT 1").await.unwrap();
    let plain = proxy.connect(PoolMode::Transaction).await;
    wait_parked(&proxy, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(parked(&proxy), 1, "only the plain transaction-mode client");
    // The parked client's NOTIFY reaches the listener, which was never parked.
    plain
        .batch_execute("NOTIFY parked_test, 'hi'")
        .await
        .unwrap();
    let (tag, body) = listener.recv().await.expect("a notification");
    assert_eq!(tag, b'A');
    assert!(body.ends_with(b"parked_test\0hi\0"), "{body:?}");
    let v: i32 = tls.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    let v: i32 = session.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    // Listening to nothing, the LISTEN client parks like any other, and comes back.
    listener.query("UNLISTEN *").await.unwrap();
    wait_parked(&proxy, 2).await;
    assert_eq!(listener.query("SELECT 5").await.unwrap(), vec!["5"]);
    // Its LISTEN state was dropped, not broken: it listens again and is notified.
    listener.query("LISTEN parked_test").await.unwrap();
    plain
        .batch_execute("NOTIFY parked_test, 'again'")
        .await
        .unwrap();
    let (tag, body) = listener.recv().await.expect("a notification");
    assert_eq!(tag, b'A');
    assert!(body.ends_with(b"parked_test\0again\0"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_change_how_a_parked_clients_statements_run() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-park-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgsluice.toml");
    let text = config_text(&pg, FAST, "pool_size = 2");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let c = proxy.connect(PoolMode::Transaction).await;
    let st = c.prepare("SELECT $1::int * 2").await.unwrap();
    wait_parked(&proxy, 1).await;
    // max_prepared_statements takes effect at restart: a parked client's statements are
    // still named as at its login when it comes back.
    let changed = text.replace(FAST, &format!("{FAST}\nmax_prepared_statements = 0"));
    std::fs::write(&path, changed).unwrap();
    console(&pg, &proxy, ADMIN, "RELOAD").unwrap();
    let v: i32 = c.query_one(&st, &[&21]).await.unwrap().get(0);
    assert_eq!(v, 42);
    wait_parked(&proxy, 1).await;
    let v: i32 = c.query_one(&st, &[&5]).await.unwrap().get(0);
    assert_eq!(v, 10);
}
