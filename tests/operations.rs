//! Operating pgsluice under load, against real PostgreSQL: RELOAD changes pool sizes, upstream
//! passwords, users and listeners while 16 writers keep committing, and none of them sees an
//! error; a bad file changes nothing. SIGTERM lets transactions in flight commit and closes
//! everyone else; SIGINT closes everyone at once.

mod support;

use pgsluice::config::PoolMode;
use pgsluice::devdb::{DevDb, free_port};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A writer: one short transaction after another (each holding its server 10 ms) until
/// `stop`; the rows the server acknowledged, and every error it saw.
async fn writer(url: String, id: i32, stop: Arc<AtomicBool>) -> (i64, Vec<String>) {
    let c = connect(&url).await.unwrap();
    let (mut acked, mut errors) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let txn = format!("BEGIN; INSERT INTO ops VALUES ({id}); SELECT pg_sleep(0.01); COMMIT");
        match c.batch_execute(&txn).await {
            Ok(()) => acked += 1,
            Err(e) => {
                errors.push(format!("{}: {e}", sqlstate(&e)));
                // Reported at the end; a closed connection ends this writer (no spinning).
                if c.is_closed() || errors.len() > 10 {
                    break;
                }
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
    }
    (acked, errors)
}

/// `c` still works: it gets `n` back.
async fn answers(c: &tokio_postgres::Client, n: i32) {
    let got: i32 = c
        .query_one(&format!("SELECT {n}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, n);
}

fn reload(pg: &DevDb, proxy: &Proxy, path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).unwrap();
    console(pg, proxy, ADMIN, "RELOAD").map(|_| ())
}

/// Waits until the role's upstream backends satisfy `f`.
async fn backends_until(pg: &DevDb, what: &str, f: impl Fn(i64) -> bool) {
    let start = Instant::now();
    loop {
        let n = role_backends(pg);
        if f(n) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {n} backends\n{}",
            pg.psql("SELECT usename, state, wait_event_type, wait_event, backend_start, now() FROM pg_stat_activity WHERE usename IS NOT NULL").unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nobody() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgsluice.toml");
    let base = config_text(&pg, "", "pool_size = 20");
    std::fs::write(&path, &base).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let setup = connect(&url).await.unwrap();
    setup
        .batch_execute("CREATE TABLE ops (writer int)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|id| tokio::spawn(writer(url.clone(), id, stop.clone())))
        .collect();
    backends_until(&pg, "16 writers", |n| n >= 8).await;

    // Pool 20 to 4: the servers past 4 close as their transactions end.
    let small = base.replace("pool_size = 20", "pool_size = 4");
    reload(&pg, &proxy, &path, &small).unwrap();
    backends_until(&pg, "pool_size 4", |n| n <= 4).await;
    // And stays there: the same four servers serve everyone (none closed and reopened).
    let pids = || {
        pg.psql(&format!(
            "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE usename = '{SCRAM_ROLE}'"
        ))
        .unwrap()
    };
    let four = pids();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pids(),
        four,
        "servers closed and opened again at pool_size 4"
    );
    // And back: the writers spread over more servers again.
    reload(&pg, &proxy, &path, &base).unwrap();
    backends_until(&pg, "pool_size 20", |n| n > 4).await;

    // The upstream password rotated: new servers log in with the new one, the old servers
    // retire as their transactions end.
    let rotated = base.replace(
        &format!("server_password = \"{ROLE_PASSWORD}\"\n\n[[users]]\nname = \"agent_md5\""),
        "server_password = \"rotated-pw\"\n\n[[users]]\nname = \"agent_md5\"",
    );
    assert_ne!(rotated, base);
    let since = pg.psql("SELECT now()").unwrap();
    pg.psql(&format!("ALTER ROLE {SCRAM_ROLE} PASSWORD 'rotated-pw'"))
        .unwrap();
    reload(&pg, &proxy, &path, &rotated).unwrap();
    backends_until(&pg, "servers logged in before the rotation", |_| {
        let old: i64 = pg
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{SCRAM_ROLE}' AND backend_start < '{since}'"
            ))
            .unwrap()
            .parse()
            .unwrap();
        old == 0
    })
    .await;

    // A user added can log in; one removed cannot, while its connected client keeps working.
    let md5_url = proxy.url(PoolMode::Transaction, AGENT_MD5, "app");
    let leaving = connect(&md5_url).await.unwrap();
    let listener = free_port().unwrap();
    let changed = rotated
        .replacen("[[users]]\nname = \"agent_md5\"", "[[users]]\nname = \"gone\"", 1)
        .replace(
            "[[users]]\nname = \"agent_plain\"",
            "[[users]]\nname = \"newcomer\"\npassword = \"new-pw\"\nserver_user = \"app_plain\"\nserver_password = \"role-pw\"\n\n[[users]]\nname = \"agent_plain\"",
        )
        + &format!("\n[[listeners]]\naddr = \"127.0.0.1:{listener}\"\nmode = \"transaction\"\n");
    reload(&pg, &proxy, &path, &changed).unwrap();
    let newcomer = connect(&proxy.url(PoolMode::Transaction, ("newcomer", "new-pw"), "app"))
        .await
        .unwrap();
    answers(&newcomer, 5).await;
    let e = connect(&md5_url).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    answers(&leaving, 6).await;

    // The listener added serves; removed again, it refuses new connections while the
    // client that came through it stays.
    let through = format!(
        "host=127.0.0.1 port={listener} user={} password={} dbname=app",
        AGENT.0, AGENT.1
    );
    let stays = connect(&through).await.unwrap();
    answers(&stays, 7).await;
    reload(&pg, &proxy, &path, &rotated).unwrap();
    assert!(
        connect(&through).await.is_err(),
        "a removed listener closes"
    );
    answers(&stays, 8).await;

    // A bad file: RELOAD says where and why, and nothing changes.
    let e = reload(
        &pg,
        &proxy,
        &path,
        &rotated.replace("pool_size = 20", "pool_size = \"many\""),
    )
    .unwrap_err();
    assert!(
        e.contains("pgsluice.toml") && e.contains("pool_size"),
        "{e}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    for w in writers {
        let (n, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "a writer saw {errors:?}");
        assert!(n > 0);
        acked += n;
    }
    let stored: i64 = setup
        .query_one("SELECT count(*) FROM ops", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, acked, "every acknowledged row, and no other");
    let _ = std::fs::remove_dir_all(&dir);
}
