//! The admin console through psql: SHOW tables against a known load, PAUSE/RESUME, RELOAD of
//! a pool size, KILL_CLIENT, DISABLE, RECONNECT, and what a stats user may not do.

mod support;

use pgsluice::config::PoolMode;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

fn row<'a>(
    rows: &'a [HashMap<String, String>],
    key: &str,
    value: &str,
) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r.get(key).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no row with {key} = {value}: {rows:?}"))
}

fn num(r: &HashMap<String, String>, col: &str) -> i64 {
    r.get(col)
        .unwrap_or_else(|| panic!("no column {col}: {r:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col} not a number: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_tables_match_a_known_load() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");

    // Two clients hold both servers in open transactions; three more wait for one.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = connect(&url).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    let mut waiters = Vec::new();
    for i in 0..3 {
        let url = url.clone();
        waiters.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            let rows = c.simple_query(&format!("SELECT {i} + 100")).await.unwrap();
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i32>().ok(),
                    _ => None,
                })
                .unwrap()
        }));
    }
    let waiting = eventually(Duration::from_secs(10), || {
        console(&pg, &proxy, ADMIN, "SHOW POOLS")
            .map(|rows| rows.iter().any(|r| r["cl_waiting"] == "3"))
            .unwrap_or(false)
    })
    .await;
    assert!(waiting, "three clients should be waiting");

    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    let p = row(&pools, "database", "app");
    assert_eq!(p["user"], SCRAM_ROLE);
    assert_eq!(
        (
            num(p, "cl_active"),
            num(p, "cl_waiting"),
            num(p, "sv_active"),
            num(p, "sv_idle"),
            num(p, "pool_size"),
            num(p, "paused"),
        ),
        (2, 3, 2, 0, 2, 0),
        "{p:?}"
    );
    assert!(num(p, "maxwait_us") >= 0 && num(p, "maxwait") < 30);
    assert_eq!(
        console_columns(&pg, &proxy, "SHOW POOLS")[..16],
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode"
        ]
    );

    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    let app_clients: Vec<_> = clients.iter().filter(|c| c["database"] == "app").collect();
    assert_eq!(app_clients.len(), 5, "{clients:?}");
    assert_eq!(
        app_clients
            .iter()
            .filter(|c| c["state"] == "waiting")
            .count(),
        3
    );
    let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
    let active: Vec<_> = servers.iter().filter(|s| s["state"] == "active").collect();
    assert_eq!(active.len(), 2, "{servers:?}");
    // Each active server links to an active client, whose link is that server.
    for s in &active {
        let c = clients.iter().find(|c| c["ptr"] == s["link"]).unwrap();
        assert_eq!(c["link"], s["ptr"]);
        assert_eq!(c["state"], "active");
        assert!(num(s, "remote_pid") > 0);
    }
    // The backend pids are PostgreSQL's own.
    let pids = pg
        .psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'app_scram'")
        .unwrap();
    for s in &active {
        assert!(
            pids.split(',').any(|p| p.trim() == s["remote_pid"]),
            "{pids} vs {s:?}"
        );
    }

    // Release everything: the waiters get their servers and answers.
    for c in &holders {
        c.batch_execute("COMMIT").await.unwrap();
    }
    let mut got = Vec::new();
    for w in waiters {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    got.sort();
    assert_eq!(got, vec![100, 101, 102]);

    // Counters: 2 x (BEGIN; SELECT 1 / COMMIT) + 3 single statements = 5 transactions.
    let totals = console(&pg, &proxy, ADMIN, "SHOW STATS_TOTALS").unwrap();
    let t = row(&totals, "database", "app");
    assert_eq!(num(t, "xact_count"), 5, "{t:?}");
    assert_eq!(num(t, "query_count"), 7, "{t:?}");
    assert_eq!(
        num(t, "server_assignment_count"),
        5 + 1,
        "5 transactions and the first login"
    );
    assert!(num(t, "bytes_received") > 0 && num(t, "bytes_sent") > 0);
    assert!(num(t, "wait_time") > 0, "three clients waited: {t:?}");
    let stats = console(&pg, &proxy, ADMIN, "SHOW STATS").unwrap();
    assert_eq!(num(row(&stats, "database", "app"), "total_xact_count"), 5);
    let averages = console(&pg, &proxy, WATCHER, "SHOW STATS_AVERAGES").unwrap();
    assert!(row(&averages, "database", "app").contains_key("xact_count"));

    let dbs = console(&pg, &proxy, ADMIN, "SHOW DATABASES").unwrap();
    let d = row(&dbs, "name", "app");
    assert_eq!((d["database"].as_str(), num(d, "pool_size")), ("appdb", 2));
    assert_eq!(num(d, "current_connections"), 2);
    let users = console(&pg, &proxy, ADMIN, "SHOW USERS").unwrap();
    assert_eq!(row(&users, "name", AGENT.0)["server_user"], SCRAM_ROLE);
    let config = console(&pg, &proxy, ADMIN, "SHOW CONFIG").unwrap();
    let k = row(&config, "key", "max_client_conn");
    assert_eq!(
        (k["value"].as_str(), k["default"].as_str()),
        ("10000", "10000")
    );
    let lists = console(&pg, &proxy, ADMIN, "SHOW LISTS").unwrap();
    assert_eq!(
        num(row(&lists, "list", "used_clients"), "items"),
        2,
        "the two holders"
    );
    let version = console(&pg, &proxy, ADMIN, "SHOW VERSION").unwrap();
    assert!(version[0]["version"].starts_with("pgsluice "));
    let mem = console(&pg, &proxy, ADMIN, "SHOW MEM").unwrap();
    assert!(num(row(&mem, "name", "process_rss"), "bytes") > 1_000_000);

    // A session-mode client queued at login counts as waiting too (another pool: app_md5).
    let md5 = proxy.url(PoolMode::Session, AGENT_MD5, "app");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(connect(&md5).await.unwrap());
    }
    let queued = tokio::spawn(async move { connect(&md5).await.map(|_| ()) });
    let seen = eventually(Duration::from_secs(10), || {
        console(&pg, &proxy, ADMIN, "SHOW POOLS")
            .map(|rows| {
                rows.iter().any(|r| {
                    r["user"] == MD5_ROLE
                        && r["cl_waiting"] == "1"
                        && r["cl_active"] == "2"
                        && r["sv_active"] == "2"
                })
            })
            .unwrap_or(false)
    })
    .await;
    assert!(seen, "{:?}", console(&pg, &proxy, ADMIN, "SHOW POOLS"));
    drop(sessions);
    tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The PgBouncer name works too, and bad input gets SQLSTATE-bearing errors.
    let url = proxy.url(PoolMode::Session, ADMIN, "pgbouncer");
    let (ok, out, _) = psql(&pg, &url, &["-c", "SHOW VERSION"]);
    assert!(ok && out.starts_with("pgsluice"), "{out}");
    let e = console(&pg, &proxy, ADMIN, "SHOW NOTHING").unwrap_err();
    assert!(e.contains("unknown SHOW item"), "{e}");
    let e = console(&pg, &proxy, ADMIN, "SELECT 1").unwrap_err();
    assert!(e.contains("unknown command"), "{e}");
    let e = console(&pg, &proxy, AGENT, "SHOW POOLS").unwrap_err();
    assert!(e.contains("may not use the admin console"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_and_resume_releases_them() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let c = connect(&url).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    console(&pg, &proxy, ADMIN, "PAUSE app").unwrap();
    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    assert_eq!(num(row(&pools, "database", "app"), "paused"), 1);
    let dbs = console(&pg, &proxy, ADMIN, "SHOW DATABASES").unwrap();
    assert_eq!(num(row(&dbs, "name", "app"), "paused"), 1);

    let started = Instant::now();
    let q = tokio::spawn(async move {
        let v: i64 = c
            .query_one("SELECT 41::int8 + 1", &[])
            .await
            .unwrap()
            .get(0);
        (v, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!q.is_finished(), "a paused pool must hold the transaction");
    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    assert_eq!(num(row(&pools, "database", "app"), "cl_waiting"), 1);

    console(&pg, &proxy, ADMIN, "RESUME app").unwrap();
    let (v, took) = tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 42);
    assert!(took >= Duration::from_millis(700), "{took:?}");

    // PAUSE with no database pauses pools created later as well.
    console(&pg, &proxy, ADMIN, "PAUSE").unwrap();
    let md5 = proxy.url(PoolMode::Transaction, AGENT_MD5, "app");
    let t = tokio::spawn(async move {
        let c = connect(&md5).await.unwrap();
        c.simple_query("SELECT 2").await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!t.is_finished());
    console(&pg, &proxy, ADMIN, "RESUME").unwrap();
    tokio::time::timeout(Duration::from_secs(5), t)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e = console(&pg, &proxy, ADMIN, "PAUSE nosuchdb").unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_changed_pool_size() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgsluice.toml");
    // Bound ports, so the rewritten file keeps the same listeners.
    let text = config_text(&pg, "", "pool_size = 2");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");

    // Four clients want a server at once: two get one, two wait.
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(connect(&url).await.unwrap());
    }
    let mut busy = Vec::new();
    for c in holders.iter().take(2) {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    for c in holders.iter().skip(2) {
        busy.push(c.simple_query("BEGIN; SELECT 2"));
    }
    let mut busy = futures_util::future::join_all(busy);
    tokio::select! {
        _ = &mut busy => panic!("pool_size 2 must hold the other two back"),
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }

    std::fs::write(&path, text.replace("pool_size = 2", "pool_size = 4")).unwrap();
    console(&pg, &proxy, ADMIN, "RELOAD").unwrap();
    // The two waiters get the new places without anyone leaving.
    let results = tokio::time::timeout(Duration::from_secs(5), busy)
        .await
        .expect("RELOAD to pool_size 4 must serve the waiters");
    assert!(results.iter().all(|r| r.is_ok()));
    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    let p = row(&pools, "database", "app");
    assert_eq!((num(p, "pool_size"), num(p, "sv_active")), (4, 4), "{p:?}");
    let config = console(&pg, &proxy, ADMIN, "SHOW CONFIG").unwrap();
    assert_eq!(row(&config, "key", "default_pool_size")["value"], "20");

    // A broken file is refused with the file, line and key, and the old config stays.
    std::fs::write(&path, text.replace("pool_size = 2", "pool_size = \"many\"")).unwrap();
    let e = console(&pg, &proxy, ADMIN, "RELOAD").unwrap_err();
    assert!(
        e.contains("pgsluice.toml") && e.contains("pool_size"),
        "{e}"
    );
    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    assert_eq!(num(row(&pools, "database", "app"), "pool_size"), 4);

    // A stats user may look but not change anything.
    let e = console(&pg, &proxy, WATCHER, "RELOAD").unwrap_err();
    assert!(e.contains("may only run SHOW"), "{e}");
    assert!(console(&pg, &proxy, WATCHER, "SHOW POOLS").is_ok());
    for c in &holders {
        c.batch_execute("COMMIT").await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_ends_that_client_only() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 4")).await;
    let base = proxy.url(PoolMode::Transaction, AGENT, "app");
    let victim = connect(&format!("{base} application_name=victim"))
        .await
        .unwrap();
    let bystander = connect(&format!("{base} application_name=bystander"))
        .await
        .unwrap();
    victim.simple_query("SELECT 1").await.unwrap();
    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    let id = row(&clients, "application_name", "victim")["id"].clone();

    console(&pg, &proxy, ADMIN, &format!("KILL_CLIENT {id}")).unwrap();
    let e = victim.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        victim.is_closed() || e.code().is_some(),
        "the killed client is told or closed: {e}"
    );
    let v: i32 = bystander.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    let gone = eventually(Duration::from_secs(5), || {
        console(&pg, &proxy, ADMIN, "SHOW CLIENTS")
            .map(|rows| !rows.iter().any(|r| r["application_name"] == "victim"))
            .unwrap_or(false)
    })
    .await;
    assert!(gone);
    let e = console(&pg, &proxy, ADMIN, "KILL_CLIENT 999999").unwrap_err();
    assert!(e.contains("no client with id 999999"), "{e}");

    // DISABLE refuses new clients of that database (57P03); ENABLE lets them in again.
    console(&pg, &proxy, ADMIN, "DISABLE app").unwrap();
    let e = connect(&base).await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P03");
    console(&pg, &proxy, ADMIN, "ENABLE app").unwrap();
    connect(&base).await.unwrap();

    // RECONNECT replaces the server connections: a new backend pid afterwards.
    let before: i32 = bystander
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    console(&pg, &proxy, ADMIN, "RECONNECT app").unwrap();
    let after: i32 = bystander
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        before, after,
        "RECONNECT must retire the old server connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_sampling_tells_our_backends_from_others() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "activity_sample_interval = 0.2",
        "pool_size = 3",
    ))
    .await;
    // Through the proxy: one server idle in a transaction.
    let ours = proxy.connect(PoolMode::Transaction).await;
    ours.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Directly: another backend of the same role, busy sleeping.
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} password={ROLE_PASSWORD} dbname=appdb",
        pg.port
    ))
    .await
    .unwrap();
    let sleeping =
        tokio::spawn(async move { direct.simple_query("SELECT pg_sleep(3)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = eventually(Duration::from_secs(5), || {
        let Ok(rows) = console(&pg, &proxy, ADMIN, "SHOW ACTIVITY") else {
            return false;
        };
        let has = |state: &str, owner: &str| {
            rows.iter().any(|r| {
                r["database"] == "app"
                    && r["state"] == state
                    && r["owner"] == owner
                    && r["backends"] == "1"
            })
        };
        has("idle in transaction", "pgsluice") && has("active", "other")
    })
    .await;
    assert!(seen, "{:?}", console(&pg, &proxy, ADMIN, "SHOW ACTIVITY"));
    let rows = console(&pg, &proxy, ADMIN, "SHOW ACTIVITY").unwrap();
    let age: f64 = rows[0]["longest_transaction_s"].parse().unwrap();
    assert!(age > 0.1 && age < 60.0, "{rows:?}");
    ours.batch_execute("COMMIT").await.unwrap();
    sleeping.await.unwrap().unwrap();
}

/// SHOW CLIENTS' and SHOW SERVERS' prepared_statements (PgBouncer 1.25's column) count the
/// named statements a transaction-mode client keeps and those prepared on its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_columns_count_statements() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let c = connect(&proxy.url(PoolMode::Transaction, AGENT, "app"))
        .await
        .unwrap();
    // tokio-postgres names each prepared statement (s0, s1, ...) and closes it when dropped.
    let mut kept = Vec::new();
    for i in 0..3 {
        let s = c.prepare(&format!("SELECT {i}::int + $1")).await.unwrap();
        let row = c.query_one(&s, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        kept.push(s);
    }
    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    let agent = row(&clients, "user", AGENT.0);
    assert_eq!(num(agent, "prepared_statements"), 3, "{agent:?}");
    let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
    let server = row(&servers, "database", "app");
    assert_eq!(num(server, "prepared_statements"), 3, "{server:?}");
    // A closed statement leaves the client's count; the server keeps its copy for others.
    drop(kept.pop());
    c.batch_execute("SELECT 1").await.unwrap();
    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    assert_eq!(
        num(row(&clients, "user", AGENT.0), "prepared_statements"),
        2
    );
    let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
    assert_eq!(
        num(row(&servers, "database", "app"), "prepared_statements"),
        3
    );
}
