//! Pooling under load and failure: many clients on a small pool, cancels (running and queued),
//! clients that vanish mid-transaction, garbage input, and an upstream that goes away.

mod support;

use pgsluice::config::PoolMode;
use std::time::{Duration, Instant};
use support::raw::{self, Raw};
use support::*;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_on_a_pool_of_ten() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 10")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE t_many (client int, seq int, txid bigint)")
        .await
        .unwrap();
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let mut tasks = Vec::new();
    for client in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await.unwrap();
            for seq in 0..5 {
                let tx = c.transaction().await.unwrap();
                let a: i64 = tx
                    .query_one("SELECT txid_current()", &[])
                    .await
                    .unwrap()
                    .get(0);
                tx.execute(
                    "INSERT INTO t_many VALUES ($1, $2, txid_current())",
                    &[&client, &seq],
                )
                .await
                .unwrap();
                let b: i64 = tx
                    .query_one("SELECT txid_current()", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(a, b, "one transaction stays on one server");
                let echo: String = tx
                    .query_one("SELECT $1::text", &[&format!("c{client}s{seq}")])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    echo,
                    format!("c{client}s{seq}"),
                    "never another client's rows"
                );
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let row = setup
        .query_one("SELECT count(*), count(DISTINCT (client, seq)), count(DISTINCT txid), sum(client)::bigint FROM t_many", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1000);
    assert_eq!(row.get::<_, i64>(1), 1000);
    assert_eq!(
        row.get::<_, i64>(2),
        1000,
        "every transaction had its own txid"
    );
    assert_eq!(row.get::<_, i64>(3), 5 * (0..200).sum::<i64>());
    let servers: i64 = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_scram'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        servers <= 10,
        "pool_size 10 holds: {servers} server connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_running_and_queued_queries() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let c = proxy.connect(mode).await;
        let token = c.cancel_token();
        let canceler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = Instant::now();
            token.cancel_query(NoTls).await.unwrap();
            sent
        });
        let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        let answered = Instant::now();
        let sent = canceler.await.unwrap();
        assert_eq!(sqlstate(&e), "57014", "{mode:?}: {e}");
        let took = answered.duration_since(sent);
        assert!(
            took < Duration::from_secs(1),
            "{mode:?}: 57014 came {took:?} after the cancel"
        );
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1,
            "usable after cancel"
        );
        drop(c);
    }
    // A client queued for a server (both servers held in open transactions) can be canceled.
    let h1 = proxy.connect(PoolMode::Transaction).await;
    let h2 = proxy.connect(PoolMode::Transaction).await;
    h1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    h2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let queued = proxy.connect(PoolMode::Transaction).await;
    let token = queued.cancel_token();
    let started = Instant::now();
    let canceler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let e = queued.simple_query("SELECT 'never ran'").await.unwrap_err();
    canceler.await.unwrap();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The queued client keeps its connection and runs once a server is free.
    h1.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        queued
            .query_one("SELECT 11", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        11
    );
    h2.batch_execute("COMMIT").await.unwrap();
}

/// A stale cancel key (from a client that has left) must not cancel the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cancel_does_not_hit_the_next_client() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let first = proxy.connect(PoolMode::Session).await;
    let stale = first.cancel_token();
    first.query_one("SELECT 1", &[]).await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = proxy.connect(PoolMode::Session).await;
    let query = tokio::spawn(async move {
        second
            .simple_query("SELECT pg_sleep(1.5)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stale.cancel_query(NoTls).await.unwrap();
    query
        .await
        .unwrap()
        .expect("the stale cancel must be ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_leaves_nothing_open() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 4")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE t_kill (v int)")
        .await
        .unwrap();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut raw = Raw::open(proxy.port(mode)).await;
        raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
        raw.query("BEGIN").await.unwrap();
        raw.query("INSERT INTO t_kill VALUES (1)").await.unwrap();
        let in_tx = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
            .unwrap();
        assert_eq!(in_tx, "1", "{mode:?}");
        drop(raw); // the socket closes with the transaction open
        let in_tx = || {
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
                .unwrap()
        };
        assert!(
            eventually(Duration::from_secs(10), || in_tx() == "0").await,
            "{mode:?}: still {} idle-in-transaction backends after 10 s",
            in_tx()
        );
    }
    let n: i64 = setup
        .query_one("SELECT count(*) FROM t_kill", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "uncommitted inserts were rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_startup_gets_08p01_and_others_go_on() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let bystander = proxy.connect(PoolMode::Transaction).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        for garbage in [
            &b"\x01\x02\x03\x04\x05\x06garbage"[..],
            &b"Q\xff\xff\xff\xffxx"[..],
            &b"Q\x00\x00\x00\x02"[..],
        ] {
            let mut raw = Raw::open(proxy.port(mode)).await;
            raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
            raw.send(garbage).await;
            let (tag, body) = raw
                .recv()
                .await
                .expect("an ErrorResponse, not a silent close");
            assert_eq!(tag, b'E');
            assert_eq!(raw::error_code(&body), "08P01", "{mode:?} {garbage:?}");
            assert!(raw.recv().await.is_none(), "then the connection closes");
        }
        // Garbage instead of a startup packet, as PostgreSQL answers it: a bad length closes
        // without a word, an unknown protocol version gets 0A000.
        let mut raw = Raw::open(proxy.port(mode)).await;
        raw.send(&[0x7f, 0xff, 0xff, 0xff, 0]).await;
        assert!(
            raw.recv().await.is_none(),
            "a bad startup length gets no reply"
        );
        let mut raw = Raw::open(proxy.port(mode)).await;
        raw.send(&[0, 0, 0, 9, 1, 2, 3, 4, 5]).await;
        let (tag, body) = raw.recv().await.unwrap();
        assert_eq!((tag, raw::error_code(&body)), (b'E', "0A000".to_owned()));
    }
    assert_eq!(
        bystander
            .query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_retried_within_server_connect_timeout_then_57p03_and_recovers() {
    let mut pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "server_connect_timeout = 2",
        "pool_size = 3",
    ))
    .await;
    let txn = proxy.connect(PoolMode::Transaction).await;
    // Simple protocol: no statement left for the driver to close while the server stops.
    assert_eq!(txn.simple_query("SELECT 1").await.unwrap().len(), 3);
    pg.stop();
    // A connected transaction-mode client gets 57P03 (its idle server is found dead, and
    // connecting again is retried until server_connect_timeout is spent).
    let started = Instant::now();
    let e = txn.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "retried within server_connect_timeout: {took:?}"
    );
    // A new session-mode client is refused with 57P03 at login, as boundedly.
    let started = Instant::now();
    let e = connect(&proxy.url(PoolMode::Session, AGENT, "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    pg.restart().unwrap();
    // The same client, and new ones, work again without restarting the proxy.
    assert_eq!(
        txn.query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    let s = proxy.connect(PoolMode::Session).await;
    assert_eq!(
        s.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_terminated_under_a_session_client() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let c = proxy.connect(PoolMode::Session).await;
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    pg.psql(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    // The client learns its server is gone (PostgreSQL's 57P01, or 08006), not a hang.
    assert!(
        e.code().is_none() || ["57P01", "08006"].contains(&sqlstate(&e).as_str()),
        "{e}"
    );
    let c2 = proxy.connect(PoolMode::Session).await;
    assert_eq!(
        c2.query_one("SELECT 4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_terminated_behind_the_pool_are_never_handed_out() {
    let pg = start_postgres();
    // No check query: only the idle-connection probe can notice the dead servers.
    let proxy = Proxy::start(&config_text(
        &pg,
        "server_check_query = \"\"",
        "pool_size = 3",
    ))
    .await;
    let c = proxy.connect(PoolMode::Transaction).await;
    // Three servers in the pool, all idle afterwards.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let h = proxy.connect(PoolMode::Transaction).await;
        h.batch_execute("BEGIN").await.unwrap();
        holders.push(h);
    }
    for h in &holders {
        h.batch_execute("COMMIT").await.unwrap();
    }
    drop(holders);
    for round in 0..3 {
        // Every server of the pool ends while idle (waiting until each has exited).
        let killed = pg
            .psql(
                "SELECT count(*) FROM (SELECT pid FROM pg_stat_activity \
                 WHERE datname = 'appdb' AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend' OFFSET 0) s \
                 WHERE pg_terminate_backend(pid, 5000)",
            )
            .unwrap();
        assert_ne!(
            killed.trim(),
            "0",
            "round {round}: no pooled server was running"
        );
        // The next transaction gets a fresh server, not one of the dead ones.
        let n: i32 = c
            .query_one("SELECT $1::int + 1", &[&round])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .get(0);
        assert_eq!(n, round + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_retire_under_steady_traffic() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "server_idle_timeout = 1.5",
        "pool_size = 3",
    ))
    .await;
    // Three servers open for three transactions at once.
    let clients: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| proxy.connect(PoolMode::Transaction))).await;
    futures_util::future::join_all(
        clients
            .iter()
            .map(|c| c.simple_query("SELECT pg_sleep(0.2)")),
    )
    .await;
    assert_eq!(role_backends(&pg), 3);
    // Then one transaction at a time, every 100 ms: one server is enough, and the other two
    // stay idle past server_idle_timeout and are closed.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut n = 3;
    while Instant::now() < deadline && n > 1 {
        clients[0].simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = role_backends(&pg);
    }
    assert_eq!(n, 1, "idle servers kept alive by rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_idle_leaves_the_lists_without_a_checkout() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let c = proxy.connect(PoolMode::Transaction).await;
    // The process's very first server connection.
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    pg.psql(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let listed = || {
        let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
        let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
        let idle: Vec<String> = pools
            .iter()
            .filter(|p| p["database"] == "app")
            .map(|p| p["sv_idle"].clone())
            .collect();
        (servers, idle)
    };
    let gone = || {
        let (servers, idle) = listed();
        servers.is_empty() && idle == ["0"]
    };
    assert!(
        eventually(Duration::from_secs(10), gone).await,
        "a dead idle server is still listed: {:?}",
        listed()
    );
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}
