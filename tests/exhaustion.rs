//! No client can make the proxy allocate without bound: oversized messages get PostgreSQL's
//! errors, replies a client does not read stop its reading, and a client's named statements
//! are capped. Memory is the test process's RSS (the proxy runs in it).

mod support;

use pgsluice::config::PoolMode;
use std::time::Duration;
use support::raw::{Raw, error_code, ext};
use support::*;

/// Tests that measure RSS run one at a time: the process's memory is shared by every test
/// running in it.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_mib() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096 / (1 << 20)
}

async fn login(port: u16) -> Raw {
    let mut r = Raw::open(port).await;
    r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    r
}

/// Reads until the connection ends; the last ErrorResponse's SQLSTATE.
async fn closing_error(r: &mut Raw) -> Option<String> {
    let mut code = None;
    while let Some((tag, body)) = r.recv().await {
        if tag == b'E' {
            code = Some(error_code(&body));
        }
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_get_errors_not_memory() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let port = proxy.port(PoolMode::Transaction);
    let _alone = MEMORY.lock().await;
    let before = rss_mib();
    // Three Describe headers announcing 300 MB each, never finished: PostgreSQL's limit for
    // Describe is 10,000 bytes, so each is refused at its header.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut r = login(port).await;
        let mut m = vec![b'D'];
        m.extend_from_slice(&(300_000_004i32).to_be_bytes());
        m.extend_from_slice(&[b'S'; 1024]);
        r.send(&m).await;
        clients.push(r);
    }
    for r in &mut clients {
        assert_eq!(closing_error(r).await.as_deref(), Some("08P01"));
    }
    let grown = rss_mib() - before;
    assert!(grown < 64, "RSS grew {grown} MiB");

    // A 20 MB unnamed statement goes through; a named one of that size is refused with
    // 54000, and the client carries on.
    let mut r = login(port).await;
    let big = format!("SELECT length('{}')", "x".repeat(20 << 20));
    let mut m = ext::parse("", &big);
    m.extend(ext::bind("", "", &[]));
    m.extend(ext::execute("", 0));
    m.extend(ext::sync());
    r.send(&m).await;
    assert_eq!(
        r.replies_until_ready(1).await,
        ["1", "2", &format!("D:{}", 20 << 20), "C:SELECT 1", "Z:I"]
    );
    let mut m = ext::parse("big", &big);
    m.extend(ext::sync());
    r.send(&m).await;
    assert_eq!(r.replies_until_ready(1).await, ["E:54000", "Z:I"]);
    assert_eq!(r.query("SELECT 'after'").await.unwrap(), ["after"]);
    assert_eq!(pgsluice::relay::held::in_use(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_without_reading_is_held_back() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let port = proxy.port(PoolMode::Transaction);
    let _alone = MEMORY.lock().await;
    // 11 MB of Syncs (2.2 million of them), and nothing read.
    let mut r = login(port).await;
    let syncs: Vec<u8> = ext::sync().repeat(2_200_000);
    let before = rss_mib();
    let sender = tokio::spawn(async move {
        // Stops when the proxy stops reading; the socket stays open meanwhile.
        let _ = tokio::time::timeout(Duration::from_secs(5), r.send(&syncs)).await;
        r
    });
    let r = sender.await.unwrap();
    let grown = rss_mib() - before;
    assert!(grown < 24, "RSS grew {grown} MiB while Syncs went unread");
    // Others are served meanwhile.
    let mut other = login(port).await;
    assert_eq!(other.query("SELECT 'served'").await.unwrap(), ["served"]);
    drop(r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib() - before;
    assert!(after < 24, "RSS stayed {after} MiB above the start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_named_statements_are_capped() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "max_client_prepared_statements = 50",
        "pool_size = 2",
    ))
    .await;
    let mut r = login(proxy.port(PoolMode::Transaction)).await;
    let mut m = Vec::new();
    for i in 0..50 {
        m.extend(ext::parse(&format!("s{i}"), &format!("SELECT {i}")));
    }
    m.extend(ext::sync());
    r.send(&m).await;
    let replies = r.replies_until_ready(1).await;
    assert_eq!(replies.len(), 51, "{replies:?}");
    assert!(replies[..50].iter().all(|s| s == "1"), "{replies:?}");
    // The 51st is refused; closing one makes room.
    let mut m = ext::parse("s50", "SELECT 50");
    m.extend(ext::sync());
    r.send(&m).await;
    assert_eq!(r.replies_until_ready(1).await, ["E:54000", "Z:I"]);
    let mut m = ext::close(b'S', "s0");
    m.extend(ext::parse("s50", "SELECT 50"));
    m.extend(ext::bind("", "s50", &[]));
    m.extend(ext::execute("", 0));
    m.extend(ext::sync());
    r.send(&m).await;
    assert_eq!(
        r.replies_until_ready(1).await,
        ["3", "1", "2", "D:50", "C:SELECT 1", "Z:I"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_port_leaves_room_on_the_other() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "max_client_conn = 20", "pool_size = 2")).await;
    // Twenty connections on the transaction port: it takes at most 18 of max_client_conn.
    let mut flood = Vec::new();
    for _ in 0..20 {
        let mut r = Raw::open(proxy.port(PoolMode::Transaction)).await;
        let ok = r.login(196608, AGENT.0, AGENT.1, "app").await.is_ok();
        flood.push(ok.then_some(r));
    }
    // The session port still logs in and serves.
    let mut s = Raw::open(proxy.port(PoolMode::Session)).await;
    s.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    assert_eq!(s.query("SELECT 'session'").await.unwrap(), ["session"]);
    let refused = flood.iter().filter(|r| r.is_none()).count();
    assert_eq!(
        refused, 2,
        "the transaction port keeps a tenth for the other"
    );
}
