//! A client that never reads its results: the proxy stops reading from its server once
//! 64 KiB wait for the client, so the proxy's memory stays flat (measured as this process's
//! RSS: this file holds one test, so no other test shares the process), everyone else is
//! served, and after client_stall_timeout the proxy closes the client and cancels its
//! statement.

mod support;

use pgsluice::config::PoolMode;
use std::time::Duration;
use support::raw::{self, Raw};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_back_only_its_server() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "client_stall_timeout = 4",
        "pool_size = 2",
    ))
    .await;
    let rss = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let before = rss();
    let mut r = Raw::open(proxy.port(PoolMode::Transaction)).await;
    r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    // About 400 MB of results, never read.
    r.send(&raw::message(
        b'Q',
        b"SELECT repeat('x', 1000000) FROM generate_series(1, 400)\0",
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "the proxy buffered {grown} KiB for a client that does not read"
    );
    // Everyone else is served.
    let c = proxy.connect(PoolMode::Transaction).await;
    let v: i32 = c.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    // After client_stall_timeout the proxy cuts the stuck client off by itself (it is still
    // connected on its side, reading nothing): its statement is canceled and its server
    // closed, no backend left busy.
    let mut gone = false;
    for _ in 0..100 {
        let n = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT repeat%' AND state = 'active'")
            .unwrap();
        if n == "0" {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the stuck query must be canceled once the client stalls"
    );
    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    assert_eq!(
        clients.len(),
        1,
        "only the other client is left: {clients:?}"
    );
    drop(r);
}
