//! Fair sharing against a real PostgreSQL: priority classes on a saturated pool, the high
//! class's reserve, per-identity limits (servers held, client connections, transaction
//! rate), shedding lowest class first, and cancels of queued low-priority clients.

mod support;

use pgsluice::config::PoolMode;
use pgsluice::devdb::DevDb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::Client;

const PW: &str = "fair-pw";

/// `[[users]]` entries sharing the agent's upstream role (so its pool), with `extra` keys.
fn users(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, extra)| {
            format!(
                "\n[[users]]\nname = \"{name}\"\npassword = \"{PW}\"\nserver_user = \"{SCRAM_ROLE}\"\nserver_password = \"{ROLE_PASSWORD}\"\n{extra}\n"
            )
        })
        .collect()
}

async fn start(pg: &DevDb, general: &str, db_extra: &str, entries: &[(&str, &str)]) -> Proxy {
    let http = "\n[http]\naddr = \"127.0.0.1:0\"\n";
    Proxy::start(&(config_text(pg, general, db_extra) + &users(entries) + http)).await
}

async fn client(proxy: &Proxy, user: &str) -> Client {
    connect(&proxy.url(PoolMode::Transaction, (user, PW), "app"))
        .await
        .unwrap()
}

async fn clients(proxy: &Proxy, user: &str, n: usize) -> Vec<Client> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(client(proxy, user).await);
    }
    v
}

/// The `app` pool's SHOW POOLS row value of `column`.
fn pool_value(pg: &DevDb, proxy: &Proxy, column: &str) -> i64 {
    console(pg, proxy, ADMIN, "SHOW POOLS")
        .unwrap()
        .iter()
        .find(|r| r["database"] == "app" && r["user"] == SCRAM_ROLE)
        .map_or(-1, |r| r[column].parse().unwrap_or(-1))
}

async fn pool_reaches(pg: &DevDb, proxy: &Proxy, column: &str, value: i64) {
    let reached = eventually(Duration::from_secs(20), || {
        pool_value(pg, proxy, column) == value
    })
    .await;
    assert!(
        reached,
        "{column} never reached {value}: {:?}",
        console(pg, proxy, ADMIN, "SHOW POOLS")
    );
}

/// Runs `sql` on `c` on its own task, recording `tag` in `done` when it completes.
fn run(
    c: Client,
    sql: &'static str,
    tag: String,
    done: &Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<(Client, Result<(), tokio_postgres::Error>)> {
    let done = done.clone();
    tokio::spawn(async move {
        let r = c.simple_query(sql).await.map(|_| ());
        done.lock().unwrap().push(tag);
        (c, r)
    })
}

/// `c`'s statement runs at once: on a free reserve place, not after a holder's 1 s or more.
async fn served_from_the_reserve(c: &Client) {
    let start = Instant::now();
    c.simple_query("SELECT 1").await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
}

/// The most backends running `marker`'s statement at once, sampled every 20 ms for `during`.
async fn peak_running(pg: &DevDb, marker: &str, during: Duration) -> i64 {
    let watcher = agents::superuser(pg).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < during {
        let n: i64 = watcher.query_one(&sql, &[]).await.unwrap().get(0);
        peak = peak.max(n);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_client_behind_fifty_low_ones_is_served_next() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "pool_size = 2",
        &[("hi", "priority = \"high\""), ("lo", "priority = \"low\"")],
    )
    .await;
    let holders = clients(&proxy, "lo", 2).await;
    let queued = clients(&proxy, "lo", 50).await;
    let hi = client(&proxy, "hi").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks: Vec<_> = holders
        .into_iter()
        .map(|c| run(c, "SELECT pg_sleep(1.5)", "holder".into(), &done))
        .collect();
    pool_reaches(&pg, &proxy, "sv_active", 2).await;
    for (n, c) in queued.into_iter().enumerate() {
        tasks.push(run(c, "SELECT pg_sleep(0.05)", format!("lo{n}"), &done));
    }
    pool_reaches(&pg, &proxy, "cl_waiting_low", 50).await;
    tasks.push(run(hi, "SELECT 1", "hi".into(), &done));
    pool_reaches(&pg, &proxy, "cl_waiting_high", 1).await;
    for t in tasks {
        t.await.unwrap().1.unwrap();
    }
    let order = done.lock().unwrap().clone();
    let hi_at = order.iter().position(|t| t == "hi").unwrap();
    let first_lo = order.iter().position(|t| t.starts_with("lo")).unwrap();
    assert!(hi_at < first_lo, "{order:?}");
    assert_eq!(pool_value(&pg, &proxy, "served_high"), 1);
    assert!(pool_value(&pg, &proxy, "served_low") >= 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_priority_reserve_is_never_taken_by_a_lower_class() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "pool_size = 3\npriority_reserve = 1",
        &[("hi", "priority = \"high\""), ("lo", "priority = \"low\"")],
    )
    .await;
    let lows = clients(&proxy, "lo", 6).await;
    let hi = client(&proxy, "hi").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = lows
        .into_iter()
        .map(|c| run(c, "SELECT pg_sleep(1), 'reserve-lo'", "lo".into(), &done))
        .collect();
    let (peak, ()) = tokio::join!(
        peak_running(&pg, "reserve-lo", Duration::from_millis(2500)),
        async {
            pool_reaches(&pg, &proxy, "cl_waiting_low", 4).await;
            // The third place is free for the high class while the low ones queue.
            served_from_the_reserve(&hi).await;
        }
    );
    for t in tasks {
        t.await.unwrap().1.unwrap();
    }
    assert_eq!(peak, 2, "lower classes use pool_size - priority_reserve");
}

/// Classes a config names: ranked as listed, the last one alone may use the reserve, an
/// unnamed client gets `default_priority`, and SHOW POOLS, SHOW CLIENTS and /metrics use
/// the names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classes_a_config_names_rank_as_listed() {
    let pg = start_postgres();
    let general = "priority_classes = [\"bulk\", \"standard\", \"interactive\", \"critical\"]\n\
                   default_priority = \"standard\"";
    let proxy = start(
        &pg,
        general,
        "pool_size = 3\npriority_reserve = 1",
        &[
            ("bulk", "priority = \"bulk\""),
            ("ui", "priority = \"interactive\""),
            ("pager", "priority = \"critical\""),
            ("plain", ""),
        ],
    )
    .await;
    let holders = clients(&proxy, "bulk", 2).await;
    let plain = client(&proxy, "plain").await;
    let ui = client(&proxy, "ui").await;
    let pager = client(&proxy, "pager").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks: Vec<_> = holders
        .into_iter()
        .map(|c| run(c, "SELECT pg_sleep(1.5)", "bulk".into(), &done))
        .collect();
    pool_reaches(&pg, &proxy, "sv_active", 2).await;
    // The third place is the reserve: "interactive" is not the top class, so it waits.
    tasks.push(run(ui, "SELECT 1", "ui".into(), &done));
    pool_reaches(&pg, &proxy, "cl_waiting_interactive", 1).await;
    assert_eq!(
        metric(
            &proxy,
            "pgsluice_clients_waiting_by_class{database=\"app\",role=\"app_scram\",priority=\"interactive\"} "
        )
        .await,
        1.0
    );
    served_from_the_reserve(&pager).await;
    for t in tasks {
        t.await.unwrap().1.unwrap();
    }
    let order = done.lock().unwrap().clone();
    // "interactive" got a place only when a bulk client gave one back, never the reserve.
    assert_eq!(order.first().map(String::as_str), Some("bulk"), "{order:?}");
    assert_eq!(pool_value(&pg, &proxy, "served_critical"), 1);
    assert_eq!(pool_value(&pg, &proxy, "served_interactive"), 1);
    // (The pool's first login also took a server for the startup parameters.)
    assert!(pool_value(&pg, &proxy, "served_bulk") >= 2);
    let columns = console_columns(&pg, &proxy, "SHOW POOLS");
    let waiting: Vec<_> = columns
        .iter()
        .filter(|c| c.starts_with("cl_waiting_") && *c != "cl_waiting_cancel_req")
        .collect();
    assert_eq!(
        waiting,
        [
            "cl_waiting_critical",
            "cl_waiting_interactive",
            "cl_waiting_standard",
            "cl_waiting_bulk"
        ]
    );
    let rows = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    let class_of = |user: &str| {
        rows.iter()
            .find(|r| r["user"] == user)
            .map(|r| r["priority"].clone())
    };
    assert_eq!(class_of("plain").as_deref(), Some("standard"));
    assert_eq!(class_of("pager").as_deref(), Some("critical"));
    drop(plain);
}

/// `max_user_connections`: a noisy identity holds at most its share of the pool while
/// another is served; with `at_max_user_connections = "refuse"` the extra transaction gets
/// 53300 naming the limit, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_holds_no_more_than_its_share_of_the_pool() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "pool_size = 4",
        &[
            ("noisy", "limits = { max_user_connections = 1 }"),
            ("quiet", ""),
            (
                "strict",
                "limits = { max_user_connections = 1, at_max_user_connections = \"refuse\" }",
            ),
        ],
    )
    .await;
    let noisy = clients(&proxy, "noisy", 4).await;
    let quiet = client(&proxy, "quiet").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let tasks: Vec<_> = noisy
        .into_iter()
        .map(|c| {
            run(
                c,
                "SELECT pg_sleep(0.8), 'noisy-share'",
                "noisy".into(),
                &done,
            )
        })
        .collect();
    let (peak, ()) = tokio::join!(
        peak_running(&pg, "noisy-share", Duration::from_millis(2500)),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            quiet.simple_query("SELECT 'quiet'").await.unwrap();
            assert!(
                // Behind the noisy identity it would wait up to 0.8 s.
                t.elapsed() < Duration::from_millis(600),
                "{:?}",
                t.elapsed()
            );
        }
    );
    for t in tasks {
        t.await.unwrap().1.unwrap();
    }
    assert_eq!(peak, 1);
    assert!(
        start.elapsed() >= Duration::from_millis(3200),
        "one at a time"
    );

    let strict = clients(&proxy, "strict", 2).await;
    let long = strict[0].simple_query("SELECT pg_sleep(0.5)");
    let refused = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        strict[1].simple_query("SELECT 1").await
    };
    let (long, refused) = tokio::join!(long, refused);
    long.unwrap();
    let e = refused.err().unwrap();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(message(&e).contains("max_user_connections (1)"), "{e:?}");
    strict[1].simple_query("SELECT 1").await.unwrap();
}

/// `transactions_per_second`: beyond the burst a transaction gets 53400 naming the limit
/// (the connection stays usable, and the bucket refills); another identity is unaffected;
/// with `over_transaction_rate = "wait"` transactions are paced instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_rate_refuses_or_paces_one_identity_only() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "",
        &[
            ("rated", "limits = { transactions_per_second = 5 }"),
            (
                "paced",
                "limits = { transactions_per_second = 10, transaction_burst = 2, over_transaction_rate = \"wait\" }",
            ),
            ("free", ""),
        ],
    )
    .await;
    let rated = client(&proxy, "rated").await;
    let free = client(&proxy, "free").await;
    // Simple queries: one server checkout each (a string query_one prepares first: two).
    for n in 0..5 {
        assert_eq!(text(&rated, &format!("SELECT {n}")).await, n.to_string());
    }
    let e = rated.simple_query("SELECT 6").await.err().unwrap();
    assert_eq!(sqlstate(&e), "53400", "{e}");
    assert!(message(&e).contains("transactions_per_second 5"), "{e:?}");
    for _ in 0..20 {
        free.simple_query("SELECT 1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(text(&rated, "SELECT 'again'").await, "again");

    let paced = client(&proxy, "paced").await;
    let start = Instant::now();
    for n in 0..12 {
        assert_eq!(text(&paced, &format!("SELECT {n}")).await, n.to_string());
    }
    // 2 at once, then one every 100 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    let refusals = metric(
        &proxy,
        "pgsluice_limit_refusals_total{limit=\"transactions_per_second\"}",
    )
    .await;
    assert_eq!(refusals, 1.0);
}

/// The first value a simple query returns.
async fn text(c: &Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// The message of a server error.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// One sample's value from /metrics.
async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let addr = proxy.running.http.expect("[http]");
    let r = support::mcp::request(addr, "GET", "/metrics", &[], b"").await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// `max_user_client_connections`: the identity's next connection is refused with 53300
/// until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_are_capped_per_identity() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "",
        &[("capped", "limits = { max_user_client_connections = 2 }")],
    )
    .await;
    let url = proxy.url(PoolMode::Transaction, ("capped", PW), "app");
    let a = connect(&url).await.unwrap();
    let b = connect(&url).await.unwrap();
    let e = connect(&url).await.err().unwrap();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(
        message(&e).contains("max_user_client_connections 2"),
        "{e:?}"
    );
    // Others are unaffected.
    let agent = proxy.connect(PoolMode::Transaction).await;
    agent.simple_query("SELECT 1").await.unwrap();
    drop(a);
    let ok = eventually(Duration::from_secs(10), || {
        std::process::Command::new(pg.bindir.join("psql"))
            .arg(format!("{url} sslmode=disable"))
            .args(["-XAtc", "SELECT 1"])
            .env("PGPASSWORD", PW)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    assert!(ok, "a place frees when a connection closes");
    b.simple_query("SELECT 1").await.unwrap();
}

/// `shed_queue_length`: at a full queue the newest lowest-class waiter is refused with
/// 53300 saying why, and a lowest-class newcomer is refused at once; the rest are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_refuses_the_lowest_class_first() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "pool_size = 1\nshed_queue_length = 3",
        &[("mid", ""), ("lo", "priority = \"low\"")],
    )
    .await;
    // The order servers ran the statements in, as the database saw it.
    agents::superuser(&pg)
        .await
        .batch_execute(&format!(
            "CREATE TABLE fair_order (id serial, tag text);
             GRANT ALL ON fair_order, fair_order_id_seq TO {SCRAM_ROLE}"
        ))
        .await
        .unwrap();
    let holder = client(&proxy, "mid").await;
    let lows = clients(&proxy, "lo", 4).await;
    let mid = client(&proxy, "mid").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let hold = run(holder, "SELECT pg_sleep(1)", "holder".into(), &done);
    pool_reaches(&pg, &proxy, "sv_active", 1).await;
    let mut lows = lows.into_iter();
    let mut queued = Vec::new();
    for n in 0..3 {
        let c = lows.next().unwrap();
        let sql =
            ["lo0", "lo1", "lo2"].map(|t| format!("INSERT INTO fair_order (tag) VALUES ('{t}')"));
        let sql: &'static str = Box::leak(sql[n as usize].clone().into_boxed_str());
        queued.push(run(c, sql, format!("lo{n}"), &done));
        pool_reaches(&pg, &proxy, "cl_waiting_low", n + 1).await;
    }
    let mid = run(
        mid,
        "INSERT INTO fair_order (tag) VALUES ('mid')",
        "mid".into(),
        &done,
    );
    pool_reaches(&pg, &proxy, "shed_low", 1).await;
    let late = lows.next().unwrap();
    let e = late.simple_query("SELECT 1").await.err().unwrap();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(message(&e).contains("shedding load"), "{e:?}");
    hold.await.unwrap().1.unwrap();
    mid.await.unwrap().1.unwrap();
    let results: Vec<_> = futures(queued).await;
    // The newest low waiter was shed for the normal one, which went first.
    assert_eq!(results, [Ok(()), Ok(()), Err("53300".to_owned())]);
    assert_eq!(pool_value(&pg, &proxy, "shed_low"), 2);
    let order: Vec<String> = agents::superuser(&pg)
        .await
        .query("SELECT tag FROM fair_order ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["mid", "lo0", "lo1"]);
}

async fn futures(
    tasks: Vec<tokio::task::JoinHandle<(Client, Result<(), tokio_postgres::Error>)>>,
) -> Vec<Result<(), String>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().1.map_err(|e| sqlstate(&e)));
    }
    out
}

/// A queued low-priority client can still be canceled, and still times out at
/// query_wait_timeout, while high-priority clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_low_priority_clients_can_be_canceled_and_time_out() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "query_wait_timeout = 1",
        "pool_size = 1",
        &[("hi", "priority = \"high\""), ("lo", "priority = \"low\"")],
    )
    .await;
    let hi = client(&proxy, "hi").await;
    let lo = clients(&proxy, "lo", 2).await;
    let hold = tokio::spawn(async move {
        hi.simple_query("SELECT pg_sleep(2)").await.unwrap();
    });
    pool_reaches(&pg, &proxy, "sv_active", 1).await;
    let token = lo[0].cancel_token();
    let (canceled, timed_out, ()) = tokio::join!(
        lo[0].simple_query("SELECT 'canceled'"),
        lo[1].simple_query("SELECT 'timed out'"),
        async {
            pool_reaches(&pg, &proxy, "cl_waiting_low", 2).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
    );
    assert_eq!(sqlstate(&canceled.err().unwrap()), "57014");
    assert_eq!(sqlstate(&timed_out.err().unwrap()), "57P03");
    hold.await.unwrap();
}

/// `dedicated_connections`: with max_db_connections saturated by another pool, the owner
/// of a dedicated place is served at once; the others share what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_budget_is_its_owners_while_others_saturate_the_database() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "",
        "max_db_connections = 3",
        &[("vip", "limits = { dedicated_connections = 1 }")],
    )
    .await;
    let url = proxy.url(PoolMode::Transaction, AGENT_MD5, "app");
    let mut busy = Vec::new();
    for _ in 0..5 {
        busy.push(connect(&url).await.unwrap());
    }
    let vip = client(&proxy, "vip").await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = busy
        .into_iter()
        .map(|c| run(c, "SELECT pg_sleep(1), 'crowd'", "crowd".into(), &done))
        .collect();
    let (peak, ()) = tokio::join!(
        peak_running(&pg, "crowd", Duration::from_millis(1800)),
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            for _ in 0..3 {
                let t = Instant::now();
                assert_eq!(text(&vip, "SELECT 'mine'").await, "mine");
                assert!(
                    // Waiting for a crowd server would take up to 1 s.
                    t.elapsed() < Duration::from_millis(600),
                    "{:?}",
                    t.elapsed()
                );
            }
        }
    );
    for t in tasks {
        t.await.unwrap().1.unwrap();
    }
    assert_eq!(
        peak, 2,
        "the others share max_db_connections minus the dedicated place"
    );
}

/// A pool grows to pool_size under load and shrinks back to min_pool_size once its servers
/// have been idle for server_idle_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_shrinks_back_to_min_pool_size_after_load() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "server_idle_timeout = 1\nmin_pool_size = 1",
        "pool_size = 5",
        &[],
    )
    .await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let mut load = Vec::new();
    for _ in 0..8 {
        load.push(connect(&url).await.unwrap());
    }
    let queries = load.iter().map(|c| c.simple_query("SELECT pg_sleep(0.3)"));
    for r in futures_util::future::join_all(queries).await {
        r.unwrap();
    }
    assert_eq!(role_backends(&pg), 5, "grown to pool_size under load");
    let shrunk = eventually(Duration::from_secs(15), || role_backends(&pg) == 1).await;
    assert!(shrunk, "{} servers left", role_backends(&pg));
    assert_eq!(
        text(&load[0], "SELECT 'still served'").await,
        "still served"
    );
}

/// `adaptive_limit`: when the upstream slows (latency injected by a relay), the pool uses
/// fewer servers at once; when it recovers, the limit is pool_size again. No client fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_follows_the_upstreams_latency() {
    let pg = start_postgres();
    let relay = support::faults::FaultRelay::start(pg.port).await;
    let text = (config_text(&pg, "", "pool_size = 16\nadaptive_limit = true")
        + "\n[http]\naddr = \"127.0.0.1:0\"\n")
        .replacen(
            &format!("port = {}", pg.port),
            &format!("port = {}", relay.port),
            1,
        );
    let proxy = Proxy::start(&text).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..20 {
        let c = connect(&url).await.unwrap();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.simple_query("SELECT 1").await.unwrap();
                n += 1;
            }
            n
        }));
    }
    // Latency jitters on a busy machine, and the limit with it: near pool_size, not at it.
    let limit = || pool_value(&pg, &proxy, "concurrency_limit");
    let near_size = eventually(Duration::from_secs(20), || limit() >= 12).await;
    assert!(near_size, "{}", limit());
    relay.set_latency(60);
    let lowered = eventually(Duration::from_secs(20), || limit() <= 6).await;
    assert!(lowered, "{:?}", console(&pg, &proxy, ADMIN, "SHOW POOLS"));
    assert!(pool_value(&pg, &proxy, "sv_active") <= 8);
    relay.set_latency(0);
    let restored = eventually(Duration::from_secs(20), || limit() >= 12).await;
    assert!(restored, "{}", limit());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        assert!(t.await.unwrap() > 0);
    }
    // Idle now: nothing moves the limit, and /metrics shows what SHOW POOLS does.
    assert_eq!(
        metric(
            &proxy,
            "pgsluice_pool_concurrency_limit{database=\"app\",role=\"app_scram\"}"
        )
        .await,
        pool_value(&pg, &proxy, "concurrency_limit") as f64
    );
}

/// The stated bound on real servers: with `priority_aging = 0.5`, a low-priority client is
/// served within about 2 x 0.5 s plus the queue ahead of it, while high-priority clients keep
/// the pool saturated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_clients_progress_under_sustained_high_priority_load() {
    let pg = start_postgres();
    let proxy = start(
        &pg,
        "priority_aging = 0.5",
        "pool_size = 2",
        &[("hi", "priority = \"high\""), ("lo", "priority = \"low\"")],
    )
    .await;
    let highs = clients(&proxy, "hi", 6).await;
    let lo = client(&proxy, "lo").await;
    let until = Instant::now() + Duration::from_secs(8);
    let load: Vec<_> = highs
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                while Instant::now() < until {
                    c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
                }
            })
        })
        .collect();
    pool_reaches(&pg, &proxy, "cl_waiting_high", 4).await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(text(&lo, "SELECT 'low'").await, "low");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            Instant::now() < until,
            "served while the high load still ran"
        );
    }
    for t in load {
        t.await.unwrap();
    }
}

/// A client that holds its transactions open (pausing between its statements) is not a slow
/// upstream: the adaptive limit's samples are its queries' time (not how long it held the
/// server), averaged per window and clipped, so the limit stays near pool_size for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idling_in_its_transactions_does_not_lower_the_adaptive_limit() {
    let pg = start_postgres();
    let proxy = start(&pg, "", "pool_size = 16\nadaptive_limit = true", &[]).await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = connect(&url).await.unwrap();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                c.simple_query("SELECT 1").await.unwrap();
            }
        }));
    }
    let mut idler = connect(&url).await.unwrap();
    tasks.push(tokio::spawn(async move {
        while Instant::now() < until {
            let tx = idler.transaction().await.unwrap();
            tx.simple_query("SELECT 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.commit().await.unwrap();
        }
    }));
    let limit = || pool_value(&pg, &proxy, "concurrency_limit");
    assert!(eventually(Duration::from_secs(3), || limit() >= 12).await);
    let mut lowest = i64::MAX;
    while Instant::now() + Duration::from_millis(300) < until {
        lowest = lowest.min(limit());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Held transactions as samples would take it to its floor (1); a machine busy with
    // other work slows every query for real, and the limit may dip for that, not below half.
    assert!(lowest >= 8, "the limit fell to {lowest}");
}
