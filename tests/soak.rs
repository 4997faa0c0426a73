//! A bounded soak (SOAK_SECONDS, default 8 here; benches/soak.sh runs it longer): mixed load in both
//! modes through a relay that injects faults (cuts, delays) on and off, then checks that
//! every acknowledged write is in the table, and that descriptors, memory and tasks come
//! back to their baseline once the clients are gone. One test in this file, so nothing else
//! shares the process being measured.

mod support;

use pgsluice::config::PoolMode;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::faults::{Fault, FaultRelay};
use support::*;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults_loses_no_acknowledged_write() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let pg = start_postgres();
    let relay = Arc::new(FaultRelay::start(pg.port).await);
    let text = config_text(
        &pg,
        // Servers retire every second, so new ones keep passing through the faults.
        "server_login_retry = 0\nserver_lifetime = 1",
        "pool_size = 6",
    )
    .replacen(
        &format!("port = {}", pg.port),
        &format!("port = {}", relay.port),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE t_soak (id bigint PRIMARY KEY, payload text)")
        .await
        .unwrap();
    drop(setup);
    // Warm up (first connections, allocator pools), then take the baseline.
    for _ in 0..20 {
        let c = proxy.connect(PoolMode::Transaction).await;
        c.simple_query("SELECT 1").await.unwrap();
    }
    let close_idle = || async {
        for pool in proxy.running.app.pools.all() {
            pool.close_idle().await;
        }
        // The relay's sockets for them close as the server ends its side.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    close_idle().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let (fd0, rss0, tasks0) = (fds(), rss_kib(), metrics.num_alive_tasks());

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let end = Instant::now() + Duration::from_secs(seconds);
    // Faults come and go.
    let chaos = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let faults = [
                Fault::None,
                Fault::CutAfter(3_000),
                Fault::Delay(5),
                Fault::Reset,
            ];
            let mut i = 0;
            while Instant::now() < end {
                relay.set(faults[i % faults.len()]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            relay.set(Fault::None);
        })
    };
    let mut workers = Vec::new();
    for w in 0..12u64 {
        let mode = if w % 3 == 0 {
            PoolMode::Session
        } else {
            PoolMode::Transaction
        };
        let url = proxy.url(mode, AGENT, "app");
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut errors = 0u64;
            while Instant::now() < end {
                let Ok(mut c) = connect(&url).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                // A few transactions per connection, then a new connection.
                for _ in 0..5 {
                    seq += 1;
                    let id = (w << 40) | seq;
                    let payload = "p".repeat((seq % 7 * 3000) as usize);
                    let r = async {
                        let tx = c.transaction().await?;
                        tx.execute(
                            "INSERT INTO t_soak VALUES ($1, $2)",
                            &[&(id as i64), &payload],
                        )
                        .await?;
                        let back: i64 = tx
                            .query_one("SELECT count(*) FROM t_soak WHERE id = $1", &[&(id as i64)])
                            .await?
                            .get(0);
                        assert_eq!(back, 1, "a transaction sees its own write");
                        tx.commit().await
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            acked.lock().unwrap().insert(id as i64);
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for w in workers {
        errors += w.await.unwrap();
    }
    chaos.await.unwrap();

    // Every acknowledged write is there (faults may add unacknowledged ones, never lose one).
    relay.set(Fault::None);
    let check = proxy.connect(PoolMode::Transaction).await;
    let rows = check.query("SELECT id FROM t_soak", &[]).await.unwrap();
    let stored: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert!(
        acked.len() > 100,
        "the soak did real work: {} writes",
        acked.len()
    );
    eprintln!(
        "soak {seconds}s: {} acknowledged writes, {} stored, {errors} failed attempts",
        acked.len(),
        stored.len()
    );
    drop(check);
    assert!(errors > 0, "the faults must have hit something");

    // Back to baseline once everyone has left and idle servers are closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        close_idle().await;
        let (fd, tasks) = (fds(), metrics.num_alive_tasks());
        if (fd <= fd0 + 8 && tasks <= tasks0 + 4) || Instant::now() > deadline {
            let rss = rss_kib();
            assert!(fd <= fd0 + 8, "descriptors: {fd0} before, {fd} after");
            assert!(tasks <= tasks0 + 4, "tasks: {tasks0} before, {tasks} after");
            assert!(
                rss < rss0 + 64 * 1024,
                "RSS: {rss0} KiB before, {rss} KiB after"
            );
            eprintln!(
                "baseline: fds {fd0} -> {fd}, tasks {tasks0} -> {tasks}, RSS {rss0} -> {rss} KiB"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
