//! The PgBouncer knobs: wait and reserve pools, timeouts, connection lifetimes, warm pools,
//! database caps, and application_name_add_host.

mod support;

use pgsluice::config::PoolMode;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_and_reserve_pool() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "query_wait_timeout = 0.5",
        "pool_size = 1",
    ))
    .await;
    let holder = proxy.connect(PoolMode::Transaction).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = proxy.connect(PoolMode::Transaction).await;
    let started = Instant::now();
    let e = waiter.simple_query("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();

    // With a reserve, the waiter gets an extra connection after reserve_pool_timeout instead.
    let before = role_backends(&pg);
    let proxy = Proxy::start(&config_text(
        &pg,
        "reserve_pool_timeout = 0.3",
        "pool_size = 1\nreserve_pool_size = 1",
    ))
    .await;
    let holder = proxy.connect(PoolMode::Transaction).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = proxy.connect(PoolMode::Transaction).await;
    let started = Instant::now();
    let v: i32 = waiter.query_one("SELECT 5", &[]).await.unwrap().get(0);
    let waited = started.elapsed();
    assert_eq!(v, 5);
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(
        role_backends(&pg) - before,
        2,
        "pool_size 1 plus one reserve connection"
    );
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_timeouts() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "idle_transaction_timeout = 0.5\nquery_timeout = 0.7",
        "pool_size = 2",
    ))
    .await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        // query_timeout cancels a long statement; the client stays usable.
        let c = proxy.connect(mode).await;
        let started = Instant::now();
        let e = c.simple_query("SELECT pg_sleep(10)").await.unwrap_err();
        assert_eq!(sqlstate(&e), "57014", "{mode:?}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
        // idle_transaction_timeout ends a client idle inside a transaction.
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            c.simple_query("SELECT 1").await.is_err(),
            "{mode:?}: connection must be closed"
        );
        let in_tx = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
            .unwrap();
        assert_eq!(in_tx, "0", "{mode:?}");
    }
    let proxy = Proxy::start(&config_text(
        &pg,
        "client_idle_timeout = 0.5",
        "pool_size = 2",
    ))
    .await;
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        c.is_closed() || c.simple_query("SELECT 1").await.is_err(),
        "idle client must be closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_warm_pool_and_idle_retirement() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "server_lifetime = 1\nserver_idle_timeout = 1\nmin_pool_size = 2",
        "pool_size = 4",
    ))
    .await;
    let c = proxy.connect(PoolMode::Transaction).await;
    let pid1: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // min_pool_size: the pool warms to 2 connections on its own.
    assert!(
        eventually(Duration::from_secs(10), || role_backends(&pg) >= 2).await,
        "pool did not warm to min_pool_size"
    );
    // Use 4 at once, then they retire back towards min_pool_size.
    let clients: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| proxy.connect(PoolMode::Transaction))).await;
    futures_util::future::join_all(
        clients
            .iter()
            .map(|c| c.simple_query("SELECT pg_sleep(0.3)")),
    )
    .await;
    assert_eq!(role_backends(&pg), 4);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = role_backends(&pg);
    assert!(n <= 2, "idle connections above min_pool_size retire: {n}");
    // server_lifetime: the first connection has been replaced.
    let pid2: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid1, pid2, "a server past server_lifetime is not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_all_pools_of_a_database() {
    let pg = start_postgres();
    let text = config_text(&pg, "", "pool_size = 5\nmax_db_connections = 2");
    let proxy = Proxy::start(&text).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = proxy.url(
            PoolMode::Transaction,
            if i % 2 == 0 { AGENT } else { AGENT_MD5 },
            "app",
        );
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            let rows = c
                .simple_query(&format!("SELECT {i} FROM pg_sleep(0.2)"))
                .await
                .unwrap();
            let v = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(v, Some(i.to_string()));
        }));
    }
    let mut peak = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        let n: i64 = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'appdb' AND usename IN ('app_scram', 'app_md5')")
            .unwrap()
            .parse()
            .unwrap();
        peak = peak.max(n);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        (1..=2).contains(&peak),
        "two pools of one database share max_db_connections = 2: peak {peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "application_name_add_host = true", "")).await;
    let url = format!(
        "{} application_name=planner",
        proxy.url(PoolMode::Session, AGENT, "app")
    );
    let c = connect(&url).await.unwrap();
    let name: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(name.starts_with("planner - 127.0.0.1:"), "{name}");
}
