//! Several upstreams per database against real PostgreSQL: a primary and a streaming standby
//! made in the test (pg_basebackup), the contract's upstreams.toml (writes to the primary,
//! reads to the standby, a promotion followed without restart), and the circuit breaker.

mod support;

use support::faults::FaultRelay;

use pgsluice::config::PoolMode;
use pgsluice::devdb::DevDb;
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::Client;

/// A primary that lets a standby copy it, with the tests' role and database.
fn primary() -> DevDb {
    let pg = DevDb::start(
        &[
            "local replication all trust",
            "host all all 127.0.0.1/32 md5",
        ],
        &[],
    )
    .expect("PostgreSQL must start for the integration tests");
    create_role_and_db(&pg);
    pg
}

/// minimal.toml and upstreams.toml as outside tools fill them, with `general` keys.
fn contract(pg: &DevDb, standby_port: u16, general: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract");
    let read = |name: &str, fallback: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|_| fallback.to_owned())
    };
    let minimal = read("minimal.toml", include_str!("data/minimal.toml"));
    let upstreams = read("upstreams.toml", include_str!("data/upstreams.toml"));
    format!("[general]\n{general}\n{minimal}\n{upstreams}")
        .replace("@SESSION_PORT@", "0")
        .replace("@TXN_PORT@", "0")
        .replace("@HTTP_PORT@", "0")
        .replace("@PG_PORT@", &pg.port.to_string())
        .replace("@STANDBY_PORT@", &standby_port.to_string())
        .replace("@PG_DB@", "appdb")
        .replace("@AGENT_PASSWORD@", "agent-pw")
        .replace("@PG_USER@", SCRAM_ROLE)
        .replace("@PG_PASSWORD@", ROLE_PASSWORD)
        .replace("@ADMIN_PASSWORD@", "admin-pw")
}

/// The contract's config without its routed databases: `app` on the one server.
fn app_only(pg: &DevDb, general: &str) -> String {
    contract(pg, 1, general)
        .split("[[databases]]\nname = \"app_rw\"")
        .next()
        .unwrap()
        .to_owned()
}

async fn client(proxy: &Proxy, db: &str) -> Result<Client, tokio_postgres::Error> {
    connect(&proxy.url(PoolMode::Transaction, ("agent", "agent-pw"), db)).await
}

/// A client's login and one statement on `db`.
async fn one_statement(proxy: &Proxy, db: &str) -> Result<(), tokio_postgres::Error> {
    client(proxy, db).await?.batch_execute("SELECT 1").await
}

/// (in recovery, the server's port) of the server `c`'s next transaction runs on.
async fn whereabouts(c: &Client) -> Result<(bool, i32), tokio_postgres::Error> {
    let r = c
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await?;
    Ok((r.get(0), r.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_primary_reads_to_the_standby_and_a_promotion_is_followed() {
    let mut pg = primary();
    let standby = DevDb::standby_of(&pg).unwrap();
    let text = contract(&pg, standby.port, "health_check_interval = 0.2");
    let proxy = Proxy::start(&text).await;

    let mut rw = client(&proxy, "app_rw").await.unwrap();
    let ro = client(&proxy, "app_ro").await.unwrap();
    assert_eq!(whereabouts(&rw).await.unwrap(), (false, pg.port as i32));
    assert_eq!(whereabouts(&ro).await.unwrap(), (true, standby.port as i32));
    rw.batch_execute(
        "CREATE TABLE acked (n int); INSERT INTO acked SELECT generate_series(1, 100)",
    )
    .await
    .unwrap();
    // The standby replays it: app_ro reads it there.
    let start = Instant::now();
    loop {
        let seen = ro.query_one("SELECT count(*) FROM acked", &[]).await;
        if seen.is_ok_and(|r| r.get::<_, i64>(0) == 100) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = ro
        .batch_execute("INSERT INTO acked VALUES (0)")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");

    // A client may name the kind of server it wants itself, as libpq's option; the
    // database's own clients keep theirs. A value libpq does not know is refused, and so is
    // asking it of a database that has one server and learns nothing of it.
    let own = |db: &str, attrs: &str| {
        format!(
            "{} options='-c target_session_attrs={attrs}'",
            proxy.url(PoolMode::Transaction, ("agent", "agent-pw"), db)
        )
    };
    let reader = connect(&own("app_rw", "standby")).await.unwrap();
    assert_eq!(
        whereabouts(&reader).await.unwrap(),
        (true, standby.port as i32)
    );
    // Its standby connection is its own: the client that comes next is not given it.
    let fresh = client(&proxy, "app_rw").await.unwrap();
    assert_eq!(whereabouts(&fresh).await.unwrap(), (false, pg.port as i32));
    assert_eq!(whereabouts(&rw).await.unwrap(), (false, pg.port as i32));
    let refused = |e: tokio_postgres::Error| e.code().map(|c| c.code().to_owned());
    let e = connect(&own("app_rw", "bogus")).await.unwrap_err();
    assert_eq!(refused(e).as_deref(), Some("22023"));
    let e = connect(&own("app", "read-only")).await.unwrap_err();
    assert_eq!(refused(e).as_deref(), Some("0A000"));
    drop(reader);

    // The primary goes away; the standby is promoted. app_rw follows with no reload.
    pg.stop();
    standby.promote().unwrap();
    let start = Instant::now();
    let mut errors = Vec::new();
    let moved = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "{errors:?}");
        match rw.batch_execute("INSERT INTO acked VALUES (101)").await {
            Ok(()) => break whereabouts(&rw).await.unwrap(),
            Err(e) => {
                // In flight on the dead server (or its hand-over): 08006, and the connection
                // ends, so the client connects again as an agent would; no writable server
                // yet: 57P03.
                let code = e.code().map(|c| c.code().to_owned());
                assert!(
                    matches!(code.as_deref(), Some("08006") | Some("57P03")) || e.is_closed(),
                    "{e}"
                );
                errors.push(e.to_string());
                if (code.as_deref() == Some("08006") || e.is_closed())
                    && let Ok(c) = client(&proxy, "app_rw").await
                {
                    rw = c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(moved, (false, standby.port as i32));
    // Nothing acknowledged was lost.
    let n: i64 = rw
        .query_one("SELECT count(*) FROM acked", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 101);
    // prefer-standby has no standby left: it reads from the new primary.
    let ro = client(&proxy, "app_ro").await.unwrap();
    assert_eq!(
        whereabouts(&ro).await.unwrap(),
        (false, standby.port as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_fails_fast_and_closes_after_a_probe() {
    let mut pg = primary();
    let upstreams = format!(
        "\n[[databases]]\nname = \"guarded\"\ndbname = \"appdb\"\nupstreams = [{{ host = \"127.0.0.1\", port = {} }}]\n",
        pg.port
    );
    let general = "health_check_interval = 0\ncircuit_failures = 2\ncircuit_backoff = 1";
    let text = app_only(&pg, general) + &upstreams;
    let proxy = Proxy::start(&text).await;
    one_statement(&proxy, "guarded").await.unwrap();
    pg.stop();
    // Two failed connects open it; from then on clients fail at once, naming it.
    let mut messages = Vec::new();
    for _ in 0..2 {
        let e = one_statement(&proxy, "guarded").await.unwrap_err();
        messages.push(e.to_string());
    }
    let start = Instant::now();
    let e = one_statement(&proxy, "guarded").await.unwrap_err();
    let took = start.elapsed();
    let db = e
        .as_db_error()
        .map(|d| (d.code().code().to_owned(), d.message().to_owned()));
    let (code, message) = db.unwrap_or_else(|| panic!("{e} after {messages:?}"));
    assert_eq!(code, "57P03");
    assert!(
        message.contains(&format!("127.0.0.1:{} (circuit open", pg.port)),
        "{message}"
    );
    assert!(took < Duration::from_millis(500), "failed fast: {took:?}");
    // Back up: after the backoff one probe goes through and closes the circuit.
    pg.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    one_statement(&proxy, "guarded").await.unwrap();
    one_statement(&proxy, "guarded").await.unwrap();
}

/// Polls `c`'s next transactions until they run where `want` says, or fails after 20 s.
async fn until_on(c: &Client, want: (bool, i32), what: &str) {
    let start = Instant::now();
    loop {
        let at = whereabouts(c).await;
        if at.as_ref().is_ok_and(|a| *a == want) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: {at:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_leaves_the_read_rotation_and_returns() {
    let pg = primary();
    let standby = DevDb::standby_of(&pg).unwrap();
    let general = "health_check_interval = 0.2\nmax_standby_lag = 1";
    let proxy = Proxy::start(&contract(&pg, standby.port, general)).await;
    let rw = client(&proxy, "app_rw").await.unwrap();
    let ro = client(&proxy, "app_ro").await.unwrap();
    rw.batch_execute("CREATE TABLE ticks (at timestamptz)")
        .await
        .unwrap();
    until_on(
        &ro,
        (true, standby.port as i32),
        "reads start on the standby",
    )
    .await;
    standby.psql("SELECT pg_wal_replay_pause()").unwrap();
    // Writes keep coming; the standby replays none of them.
    let writer = tokio::spawn(async move {
        for _ in 0..60 {
            let _ = rw.batch_execute("INSERT INTO ticks VALUES (now())").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    until_on(
        &ro,
        (false, pg.port as i32),
        "a lagging standby serves no reads",
    )
    .await;
    standby.psql("SELECT pg_wal_replay_resume()").unwrap();
    until_on(
        &ro,
        (true, standby.port as i32),
        "caught up, it serves reads again",
    )
    .await;
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_loses_traffic_to_a_fast_one() {
    let pg = primary();
    let slow = FaultRelay::start(pg.port).await;
    slow.set_latency(20);
    let general = "health_check_interval = 0.1";
    let db = format!(
        "\n[[databases]]\nname = \"near\"\ndbname = \"appdb\"\npool_size = 8\nupstreams = [{{ host = \"127.0.0.1\", port = {} }}, {{ host = \"127.0.0.1\", port = {} }}]\n",
        slow.port, pg.port
    );
    let text = app_only(&pg, general) + &db;
    let proxy = Proxy::start(&text).await;
    one_statement(&proxy, "near").await.unwrap();
    // Both are checked (the slow one about 20 ms a round trip): then 8 servers at once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = slow.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client(&proxy, "near").await.unwrap();
        tasks.push(tokio::spawn(async move {
            c.batch_execute("SELECT pg_sleep(0.5)").await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let through_slow = slow.accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(through_slow, 0, "new servers went to the near upstream");
    let rows = console(
        &pg,
        &proxy,
        ("pgsluice_admin", "admin-pw"),
        "SHOW UPSTREAMS",
    )
    .unwrap();
    let row = |port: u16| {
        rows.iter()
            .find(|r| r["port"] == port.to_string())
            .unwrap_or_else(|| panic!("{rows:?}"))
            .clone()
    };
    let (s, f) = (row(slow.port), row(pg.port));
    let ms =
        |r: &std::collections::HashMap<String, String>| r["latency_ms"].parse::<f64>().unwrap();
    assert!(ms(&s) >= 20.0 && ms(&f) < 10.0, "{s:?} {f:?}");
    assert_eq!(
        (s["role"].as_str(), s["circuit"].as_str()),
        ("primary", "closed")
    );
}

/// The proxy of the restart tests (the contract's `app` alone, connects retried for 10 s),
/// its transaction-mode URL, and `table` made through it.
async fn writers_proxy(pg: &DevDb, table: &str) -> (Proxy, String) {
    let text = app_only(pg, "server_connect_timeout = 10");
    let proxy = Proxy::start(&text).await;
    let url = proxy.url(PoolMode::Transaction, ("agent", "agent-pw"), "app");
    connect(&url)
        .await
        .unwrap()
        .batch_execute(table)
        .await
        .unwrap();
    (proxy, url)
}

/// One writer of the restart test: inserts (writer, n) until `stop`, reconnecting when its
/// connection is closed; returns what the server acknowledged and the SQLSTATEs it saw.
async fn writer(proxy_url: String, id: i32, stop: Instant) -> (Vec<i32>, Vec<String>) {
    let (mut acked, mut codes) = (Vec::new(), Vec::new());
    let mut conn: Option<Client> = None;
    let mut n = 0;
    while Instant::now() < stop {
        let c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match tokio::time::timeout(Duration::from_secs(20), connect(&proxy_url)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    codes.push(e.code().map_or("connect".into(), |c| c.code().to_owned()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => panic!("writer {id}: a login hung"),
            },
        };
        n += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &n];
        let insert = c.execute("INSERT INTO acked VALUES ($1, $2)", &params);
        match tokio::time::timeout(Duration::from_secs(20), insert).await {
            Ok(Ok(_)) => acked.push(n),
            Ok(Err(e)) => codes.push(e.code().map_or("closed".into(), |c| c.code().to_owned())),
            Err(_) => panic!("writer {id}: an INSERT hung"),
        }
        conn = Some(c);
    }
    (acked, codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writers_through_a_restart_lose_no_acknowledged_row_and_never_hang() {
    let mut pg = primary();
    let (_proxy, url) = writers_proxy(&pg, "CREATE TABLE acked (writer int, n int)").await;
    let stop = Instant::now() + Duration::from_secs(8);
    let writers: Vec<_> = (0..50)
        .map(|id| tokio::spawn(writer(url.clone(), id, stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pg.restart().unwrap();
    let mut acked = std::collections::HashSet::new();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let mut after = 0;
    for (id, w) in writers.into_iter().enumerate() {
        let (rows, seen) = w.await.unwrap();
        after += usize::from(rows.len() > 1);
        for c in seen {
            *codes.entry(c).or_default() += 1;
        }
        acked.extend(rows.into_iter().map(|n| (id as i32, n)));
    }
    // Errors are the clear ones: the server went away (57P01, 08006) or was not there yet
    // (57P03), or the driver saw its connection closed.
    for code in codes.keys() {
        assert!(
            ["57P01", "08006", "57P03", "closed"].contains(&code.as_str()),
            "{codes:?}"
        );
    }
    let c = connect(&url).await.unwrap();
    let stored: std::collections::HashSet<(i32, i32)> = c
        .query("SELECT writer, n FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!("{} rows acknowledged, errors {codes:?}", acked.len());
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert!(acked.len() > 500, "{} rows, errors {codes:?}", acked.len());
    assert_eq!(after, 50, "every writer got rows in");
}

/// A `user.tenant` upstream behind a real PgBouncer in transaction mode: transaction-mode
/// clients are served through it; a session-mode client and LISTEN, which a transaction
/// pooler cannot hold, get a clear error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_behind_a_transaction_pooler_serves_transactions_not_sessions() {
    let pg = primary();
    let bouncer = support::pgbouncer::PgBouncer::start(
        &format!(
            "appdb = host=127.0.0.1 port={} dbname=appdb user={SCRAM_ROLE} password={ROLE_PASSWORD}",
            pg.port
        ),
        // Only the tenant-qualified name exists there: pgsluice must log in as it.
        &format!("\"{SCRAM_ROLE}.tenant1\" \"tenant-pw\"\n"),
    );
    let db = format!(
        "\n[[databases]]\nname = \"pooled\"\ndbname = \"appdb\"\nupstreams = [{{ host = \"127.0.0.1\", port = {}, kind = \"transaction_pooler\", tenant = \"tenant1\" }}]\n",
        bouncer.port
    );
    let text = contract(&pg, 1, "health_check_interval = 0.2")
        .split("[[databases]]\nname = \"app_rw\"")
        .next()
        .unwrap()
        .replace(ROLE_PASSWORD, "tenant-pw")
        + &db;
    let proxy = Proxy::start(&text).await;
    let c = client(&proxy, "pooled").await.unwrap();
    for i in 0..20 {
        let r = c
            .query_one("SELECT current_user::text, $1::int", &[&i])
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, i32>(1)),
            (SCRAM_ROLE.to_owned(), i)
        );
    }
    // LISTEN in transaction mode goes through the database's LISTEN connection, which needs a
    // session: there is none to be had here.
    let mut raw = support::raw::Raw::open(proxy.port(PoolMode::Transaction)).await;
    raw.login(196608, "agent", "agent-pw", "pooled")
        .await
        .unwrap();
    // (Raw reports the SQLSTATE; the message is the one the session-mode login shows below.)
    assert_eq!(raw.query("LISTEN jobs").await, Err("57P03".to_owned()));
    let session = connect(&proxy.url(PoolMode::Session, ("agent", "agent-pw"), "pooled")).await;
    let e = session.expect_err("a session cannot be held through a transaction pooler");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03");
    assert!(
        db.message().contains("cannot hold a session"),
        "{}",
        db.message()
    );
    // The client is still usable after the refused LISTEN.
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_a_region_prefers_upstreams_there() {
    let pg = primary();
    // The same server twice: directly in region "a", through a relay in region "b" (the
    // relay counts the server connections opened through it).
    let far = FaultRelay::start(pg.port).await;
    let db = format!(
        "\n[[databases]]\nname = \"near\"\ndbname = \"appdb\"\npool_size = 8\nupstreams = [{{ host = \"127.0.0.1\", port = {}, region = \"a\" }}, {{ host = \"127.0.0.1\", port = {}, region = \"b\" }}]\n\n[[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"transaction\"\nregion = \"b\"\n",
        pg.port, far.port
    );
    // No health checks: they would open connections through the relay of their own.
    let text = app_only(&pg, "region = \"a\"\nhealth_check_interval = 0") + &db;
    let proxy = Proxy::start(&text).await;
    let b_port = match &proxy.running.listeners[2].0 {
        pgsluice::config::ListenAddr::Tcp(a) => a.port(),
        other => panic!("{other:?}"),
    };
    let through_b = || far.accepted.load(std::sync::atomic::Ordering::Relaxed);
    // Four transactions at once through each listener: the instance's region first, then
    // the listener's, each on servers of its own region although idle ones of the other
    // region are there.
    let hold = |port: u16| async move {
        let mut held = Vec::new();
        for _ in 0..4 {
            let c = connect(&format!(
                "host=127.0.0.1 port={port} user=agent password=agent-pw dbname=near"
            ))
            .await
            .unwrap();
            c.batch_execute("BEGIN; SELECT 1").await.unwrap();
            held.push(c);
        }
        for c in &held {
            c.batch_execute("COMMIT").await.unwrap();
        }
    };
    hold(proxy.port(PoolMode::Transaction)).await;
    let before = through_b();
    assert_eq!(before, 0, "region a's clients stay in region a");
    hold(b_port).await;
    assert_eq!(
        through_b() - before,
        4,
        "region b's clients get servers in region b"
    );
    // Idle servers of both regions now: each listener's clients reuse their own.
    hold(b_port).await;
    hold(proxy.port(PoolMode::Transaction)).await;
    assert_eq!(through_b() - before, 4, "nothing more opened");
}

/// pgbench -c 50 inserting through a restart of the upstream: pgbench ends on time (no
/// client hangs), the clients it aborts were told why in clear words, and every transaction
/// its log says was acknowledged is in the table (counted per client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_50_clients_through_a_restart_lose_no_acknowledged_row() {
    let mut pg = primary();
    let (proxy, url) = writers_proxy(&pg, "CREATE TABLE pgb (client int)").await;
    let dir = std::env::temp_dir().join(format!("pgsluice-pgb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("insert.sql");
    std::fs::write(&script, "INSERT INTO pgb VALUES (:client_id);\n").unwrap();
    let started = Instant::now();
    let bench = tokio::process::Command::new(pg.bindir.join("pgbench"))
        .current_dir(&dir)
        .env("PGPASSWORD", "agent-pw")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "agent",
            "-n",
            "-c",
            "50",
            "-j",
            "2",
        ])
        .args(["-T", "8", "-l", "--log-prefix", "acked"])
        .arg("-p")
        .arg(proxy.port(PoolMode::Transaction).to_string())
        .arg("-f")
        .arg(&script)
        .arg("app")
        .output();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        pg.stop();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        pg.restart().unwrap();
    };
    let (out, ()) = tokio::join!(bench, restart);
    let out = out.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // -T 8, and up to server_connect_timeout for the transactions waiting at the end.
    assert!(started.elapsed() < Duration::from_secs(25), "{report}");
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "pgbench failed to run:\n{report}"
    );
    // A client pgbench aborted was told the server went away, in PostgreSQL's words.
    for line in report.lines().filter(|l| l.contains("aborted")) {
        assert!(
            [
                "terminating connection",
                "server connection closed unexpectedly",
                "server closed the connection",
                "57P01",
                "08006",
                "57P03",
                "no upstream",
                "number of",
            ]
            .iter()
            .any(|w| line.contains(w))
                || line.starts_with("pgbench: error: Run was aborted"),
            "unclear abort: {line}\n{report}"
        );
    }
    // Every log line is one transaction pgbench saw acknowledged: client id first, its
    // latency third ("failed" or "skipped" for the others).
    let mut acked = std::collections::BTreeMap::<i32, i64>::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        if !f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("acked")
        {
            continue;
        }
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 3 && fields[2].parse::<u64>().is_ok() {
                *acked.entry(fields[0].parse().unwrap()).or_default() += 1;
            }
        }
    }
    let c = connect(&url).await.unwrap();
    let stored: std::collections::BTreeMap<i32, i64> = c
        .query("SELECT client, count(*) FROM pgb GROUP BY client", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total: i64 = acked.values().sum();
    eprintln!("pgbench: {total} acknowledged\n{report}");
    assert!(total > 500, "{report}");
    for (client, n) in &acked {
        let have = stored.get(client).copied().unwrap_or(0);
        assert!(
            have >= *n,
            "client {client}: {n} acknowledged, {have} stored"
        );
    }
}
