//! A failing server, through a fault-injecting relay between pgsluice and PostgreSQL:
//! connections cut in the middle of a result, reset at connect, or slowed down. The proxy
//! recovers, never completes a half message with other bytes, and never hands a client
//! another client's data.

mod support;

use pgsluice::config::PoolMode;
use support::faults::{Fault, FaultRelay};
use support::*;
use tokio_postgres::SimpleQueryMessage;

async fn setup(general: &str, pool: &str) -> (pgsluice::devdb::DevDb, FaultRelay, Proxy) {
    let pg = start_postgres();
    let relay = FaultRelay::start(pg.port).await;
    let general = format!("server_login_retry = 0\n{general}");
    let text = config_text(&pg, &general, pool).replacen(
        &format!("port = {}", pg.port),
        &format!("port = {}", relay.port),
        1,
    );
    let proxy = Proxy::start(&text).await;
    (pg, relay, proxy)
}

/// The single text value of a simple query, or the error.
async fn value(url: &str, sql: &str) -> Result<String, String> {
    let c = connect(url).await.map_err(|e| format!("connect: {e}"))?;
    let rows = c
        .simple_query(sql)
        .await
        .map_err(|e| format!("query: {e}"))?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| "no row".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_cut_mid_row_is_never_completed_with_other_bytes() {
    let (_pg, relay, proxy) = setup("", "pool_size = 4").await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    // Every new server connection dies after 30 KB from the server.
    relay.set(Fault::CutAfter(30_000));
    let mut cut = 0;
    for round in 0..10 {
        // A 100 KB value cannot pass: the client must get an error, never a wrong value.
        match value(&url, "SELECT repeat('a', 100000)").await {
            Ok(v) => panic!(
                "round {round}: a value got through a cut connection: {} bytes",
                v.len()
            ),
            Err(_) => cut += 1,
        }
        // Small values on the other connections are exactly their own, or an error.
        let mut tasks = Vec::new();
        for i in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let want = format!("r{round}c{i}");
                (want.clone(), value(&url, &format!("SELECT '{want}'")).await)
            }));
        }
        for t in tasks {
            let (want, got) = t.await.unwrap();
            if let Ok(v) = got {
                assert_eq!(v, want, "another client's data");
            }
        }
    }
    assert_eq!(cut, 10);
    // On the wire: the client gets a prefix of the row, then the end of the connection;
    // nothing is spliced into the cut message (an error there would read as row data).
    let mut raw = support::raw::Raw::open(proxy.port(PoolMode::Transaction)).await;
    raw.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    raw.send(&support::raw::message(
        b'Q',
        b"SELECT repeat('c', 100000)\0",
    ))
    .await;
    let mut bytes = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        raw.stream.read_to_end(&mut bytes),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("cccccccc"), "part of the row arrives");
    assert!(
        !text.contains("08006") && !text.contains("closed unexpectedly"),
        "an error spliced into a half-sent DataRow"
    );
    // The fault goes away: the same pool recovers with new connections.
    relay.set(Fault::None);
    let mut recovered = false;
    for _ in 0..10 {
        if let Ok(v) = value(&url, "SELECT repeat('b', 100000)").await {
            assert_eq!(v, "b".repeat(100_000));
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the pool must recover once the server is healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_reset_at_connect_then_recovery() {
    // Connects are retried within server_connect_timeout before the client is told: short
    // here, so the test does not wait out the default 15 s twice.
    let (_pg, relay, proxy) = setup("server_connect_timeout = 1", "pool_size = 2").await;
    relay.set(Fault::Reset);
    let started = std::time::Instant::now();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let e = connect(&proxy.url(mode, AGENT, "app")).await.unwrap_err();
        assert_eq!(sqlstate(&e), "57P03", "{mode:?}: {e}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    relay.set(Fault::None);
    assert_eq!(
        value(
            &proxy.url(PoolMode::Transaction, AGENT, "app"),
            "SELECT 'back'"
        )
        .await,
        Ok("back".to_owned())
    );
    assert!(relay.accepted.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_still_gives_everyone_their_own_rows() {
    let (_pg, relay, proxy) = setup("", "pool_size = 3").await;
    relay.set(Fault::Delay(15));
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            for j in 0..5 {
                let want = format!("c{i}q{j}");
                let got: String = c
                    .query_one("SELECT $1::text", &[&want])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(got, want);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
