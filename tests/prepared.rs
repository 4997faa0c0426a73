//! Transaction mode with named prepared statements: they follow each client to whichever
//! server runs its next transaction, are shared between clients on a server, evicted when a
//! server holds too many, and the protocol's error paths read as PostgreSQL's.

mod support;

use pgsluice::config::PoolMode;
use support::raw::{Raw, ext};

fn raw_query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    support::raw::message(b'Q', &b)
}
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_reuse_statements_across_transactions() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 5")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 500) g")
        .await
        .unwrap();
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let mut tasks = Vec::new();
    for client in 0..50i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            // Statements differ per client group, so servers hold many and share some.
            let mut stmts = Vec::new();
            for j in 0..8 {
                let sql = format!(
                    "SELECT v, $1::int + {} FROM kv WHERE k = $1",
                    (client % 5) * 100 + j
                );
                stmts.push((c.prepare(&sql).await.unwrap(), (client % 5) * 100 + j));
            }
            // A pipeline (three queries in flight at once) whose middle one fails: the others
            // are unaffected and nothing is mixed up.
            let (one, two) = (1i32, 2i32);
            type P<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync); 1];
            let (p1, p2, p3): (P, P, P) = ([&one], [&client], [&two]);
            let (a, b, d) = tokio::join!(
                c.query_one(&stmts[0].0, &p1),
                c.query_one("SELECT 1 / ($1::int - $1::int)", &p2),
                c.query_one(&stmts[1].0, &p3),
            );
            assert_eq!(a.unwrap().get::<_, i32>(1), 1 + stmts[0].1);
            assert_eq!(sqlstate(&b.unwrap_err()), "22012");
            assert_eq!(d.unwrap().get::<_, i32>(1), 2 + stmts[1].1);
            for round in 0..20i32 {
                for (stmt, add) in &stmts {
                    let k = 1 + (client * 31 + round * 7 + add) % 500;
                    let row = c.query_one(stmt, &[&k]).await.unwrap();
                    assert_eq!(row.get::<_, String>(0), format!("v{k}"));
                    assert_eq!(row.get::<_, i32>(1), k + add);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let servers: i64 = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_scram'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(servers <= 5, "{servers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_statements_through_a_cache_of_one_hundred() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "max_prepared_statements = 100",
        "pool_size = 2",
    ))
    .await;
    let c = proxy.connect(PoolMode::Transaction).await;
    let mut stmts = Vec::new();
    for i in 0..2000i64 {
        let s = c
            .prepare(&format!("SELECT $1::bigint * {i}"))
            .await
            .unwrap();
        let v: i64 = c.query_one(&s, &[&3i64]).await.unwrap().get(0);
        assert_eq!(v, 3 * i);
        stmts.push((i, s));
    }
    // Early statements were evicted from the server; they still work.
    for (i, s) in stmts.iter().step_by(97) {
        let v: i64 = c.query_one(s, &[&5i64]).await.unwrap().get(0);
        assert_eq!(v, 5 * i);
    }
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsluice_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held <= 101, "server holds {held} statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_describe_on_another_server() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let port = proxy.port(PoolMode::Transaction);
    let mut x = Raw::open(port).await;
    x.login(196608, "agent", "agent-pw", "app").await.unwrap();
    let mut sent = ext::parse(
        "meta",
        "SELECT 1::int AS one, 'a'::text AS two WHERE $1::int > 0",
    );
    sent.extend(ext::sync());
    x.send(&sent).await;
    assert_eq!(x.replies_until_ready(1).await, vec!["1", "Z:I"]);
    // Another client now holds the server X prepared on, inside a transaction.
    let holder = proxy.connect(PoolMode::Transaction).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // JDBC's getMetaData: Describe of the statement alone, on whatever server comes next.
    let mut sent = ext::describe(b'S', "meta");
    sent.extend(ext::sync());
    x.send(&sent).await;
    assert_eq!(x.replies_until_ready(1).await, vec!["t", "T", "Z:I"]);
    let mut sent = ext::bind("", "meta", &[Some("5")]);
    sent.extend(ext::execute("", 0));
    sent.extend(ext::sync());
    x.send(&sent).await;
    assert_eq!(
        x.replies_until_ready(1).await,
        vec!["2", "D:1", "C:SELECT 1", "Z:I"]
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let servers: i64 = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_scram'")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(servers, 2, "the describe really ran on a second server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_read_as_postgres() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut x = Raw::open(proxy.port(mode)).await;
        x.login(196608, "agent", "agent-pw", "app").await.unwrap();
        // A pipeline of three batches, the middle one failing: the server skips to its Sync.
        let mut sent = ext::parse("ok", "SELECT $1::int * 2");
        sent.extend(ext::bind("", "ok", &[Some("21")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(ext::bind("", "ok", &[Some("not a number")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(ext::bind("", "ok", &[Some("50")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(3).await,
            vec![
                "1",
                "2",
                "D:42",
                "C:SELECT 1",
                "Z:I",
                "E:22P02",
                "Z:I",
                "2",
                "D:100",
                "C:SELECT 1",
                "Z:I"
            ],
            "{mode:?}"
        );
        // Unknown statement: 26000, then the next batch works.
        let mut sent = ext::bind("", "nope", &[]);
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(ext::bind("", "ok", &[Some("1")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(2).await,
            vec!["E:26000", "Z:I", "2", "D:2", "C:SELECT 1", "Z:I"],
            "{mode:?}"
        );
        // A name prepared twice: 42P05. Close, then the name is free and unknown.
        let mut sent = ext::parse("ok", "SELECT 1");
        sent.extend(ext::sync());
        sent.extend(ext::close(b'S', "ok"));
        sent.extend(ext::sync());
        sent.extend(ext::describe(b'S', "ok"));
        sent.extend(ext::sync());
        sent.extend(ext::parse("ok", "SELECT 7"));
        sent.extend(ext::bind("", "ok", &[]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(4).await,
            vec![
                "E:42P05",
                "Z:I",
                "3",
                "Z:I",
                "E:26000",
                "Z:I",
                "1",
                "2",
                "D:7",
                "C:SELECT 1",
                "Z:I"
            ],
            "{mode:?}"
        );
        // A row limit: PortalSuspended, then the rest.
        let mut sent = ext::parse("rows", "SELECT g FROM generate_series(1, 5) g");
        sent.extend(ext::bind("p1", "rows", &[]));
        sent.extend(ext::execute("p1", 2));
        sent.extend(ext::execute("p1", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(1).await,
            vec![
                "1",
                "2",
                "D:1",
                "D:2",
                "s",
                "D:3",
                "D:4",
                "D:5",
                "C:SELECT 3",
                "Z:I"
            ],
            "{mode:?}"
        );
        // An error reaches the client before it sends the rest of its batch (drivers in
        // pipeline mode send as they go): the server skips what follows until Sync, so the
        // late Parse creates nothing, and no reply is owed for it.
        let mut sent = ext::parse("div", "SELECT 10 / $1::int");
        sent.extend(ext::bind("", "div", &[Some("0")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::flush());
        x.send(&sent).await;
        let (tag, body) = x.recv().await.unwrap();
        assert_eq!(support::raw::summarize(tag, &body), "1", "{mode:?}");
        // The custom plan folds 10 / 0 at Bind: the error ends the Bind.
        let (tag, body) = x.recv().await.unwrap();
        assert_eq!(support::raw::summarize(tag, &body), "E:22012", "{mode:?}");
        let mut sent = ext::parse("late", "SELECT 'late'");
        sent.extend(ext::bind("", "late", &[]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(ext::bind("", "div", &[Some("5")]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(ext::bind("", "late", &[]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(3).await,
            vec!["Z:I", "2", "D:2", "C:SELECT 1", "Z:I", "E:26000", "Z:I"],
            "{mode:?}"
        );
        // DEALLOCATE of one statement by SQL, as PostgreSQL answers it.
        let mut sent = ext::parse("dd", "SELECT 1");
        sent.extend(ext::sync());
        sent.extend(raw_query("DEALLOCATE dd"));
        sent.extend(ext::bind("", "dd", &[]));
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        sent.extend(raw_query("DEALLOCATE PREPARE dd"));
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(4).await,
            vec![
                "1",
                "Z:I",
                "C:DEALLOCATE",
                "Z:I",
                "E:26000",
                "Z:I",
                "E:26000",
                "Z:I"
            ],
            "{mode:?}"
        );
        // DEALLOCATE ALL as SQL forgets the client's statements too.
        assert_eq!(x.query("DEALLOCATE ALL").await, Ok(vec![]));
        let mut sent = ext::bind("", "rows", &[]);
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(1).await,
            vec!["E:26000", "Z:I"],
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_result_type_reaches_the_client_then_recovers() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let c = proxy.connect(PoolMode::Transaction).await;
    c.batch_execute("CREATE TABLE t_plan (a int); INSERT INTO t_plan VALUES (1)")
        .await
        .unwrap();
    let s = c.prepare("SELECT * FROM t_plan").await.unwrap();
    assert_eq!(c.query(&s, &[]).await.unwrap()[0].len(), 1);
    c.batch_execute("ALTER TABLE t_plan ADD COLUMN b int DEFAULT 2")
        .await
        .unwrap();
    let e = c.query(&s, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "cached plan must not change result type"
    );
    drop(s);
    // Prepared again (same text): works, with the new column.
    let s = c.prepare("SELECT * FROM t_plan").await.unwrap();
    let rows = c.query(&s, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);
    assert_eq!(rows[0].get::<_, i32>(1), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_without_sync_under_backpressure() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let port = proxy.port(PoolMode::Transaction);
    let mut x = Raw::open(port).await;
    x.login(196608, "agent", "agent-pw", "app").await.unwrap();
    // 2,000 executions of a 2 KB row, flushed but not synced, written without reading:
    // megabytes of replies pile up while the client keeps writing.
    let mut sent = ext::parse("big", "SELECT $1::int, repeat('x', 2000)");
    sent.extend(ext::flush());
    for i in 0..2000 {
        sent.extend(ext::bind("", "big", &[Some(&i.to_string())]));
        sent.extend(ext::execute("", 0));
        if i % 100 == 0 {
            sent.extend(ext::flush());
        }
    }
    sent.extend(ext::sync());
    let (mut rd, mut wr) = x.stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&sent).await.unwrap();
        wr
    });
    // The reader starts late: until then replies back up through the proxy to the server.
    let reader = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let replies = support::raw::read_replies(&mut rd, 1).await;
        (rd, replies)
    });
    // Meanwhile another client uses the other server.
    let other = proxy.connect(PoolMode::Transaction).await;
    for i in 0..50 {
        let v: i32 = other
            .query_one("SELECT $1::int + 1", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i + 1);
    }
    let (_rd, replies) = reader.await.unwrap();
    writer.await.unwrap();
    let rows: Vec<&String> = replies.iter().filter(|r| r.starts_with("D:")).collect();
    assert_eq!(rows.len(), 2000);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(**r, format!("D:{i}"), "rows in order, none lost or foreign");
    }
    assert_eq!(replies.last().map(String::as_str), Some("Z:I"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_text_under_two_search_paths_plans_for_each() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute(
            "CREATE SCHEMA t_a; CREATE TABLE t_a.items (v int); INSERT INTO t_a.items VALUES (1);
             CREATE SCHEMA t_b; CREATE TABLE t_b.items (v text); INSERT INTO t_b.items VALUES ('b');",
        )
        .await
        .unwrap();
    let port = proxy.port(PoolMode::Transaction);
    // Schema-per-tenant: the same text, prepared by two tenants on one server.
    for (schema, row) in [("t_a", "D:1"), ("t_b", "D:b"), ("t_a", "D:1")] {
        let mut c = Raw::open(port).await;
        c.login_with(
            196608,
            AGENT.0,
            AGENT.1,
            "app",
            &[("options", &format!("-c search_path={schema}"))],
        )
        .await
        .unwrap();
        let mut m = ext::parse("items", "SELECT v FROM items");
        m.extend(ext::bind("", "items", &[]));
        m.extend(ext::execute("", 0));
        m.extend(ext::sync());
        c.send(&m).await;
        assert_eq!(
            c.replies_until_ready(1).await,
            ["1", "2", row, "C:SELECT 1", "Z:I"],
            "{schema}"
        );
    }
}

/// A client that prepares a statement after a schema change gets the new result type, as on
/// a direct connection, even when the servers still hold the same text prepared before the
/// change (by another client) and whichever of them its transactions land on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_after_a_schema_change_never_meets_an_older_plan() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE t_ddl (a int); INSERT INTO t_ddl VALUES (1)")
        .await
        .unwrap();
    // Two clients, each inside a transaction, so that both servers get the statement.
    let (a1, a2) = (
        proxy.connect(PoolMode::Transaction).await,
        proxy.connect(PoolMode::Transaction).await,
    );
    for a in [&a1, &a2] {
        a.batch_execute("BEGIN").await.unwrap();
        let s = a.prepare("SELECT * FROM t_ddl").await.unwrap();
        assert_eq!(a.query(&s, &[]).await.unwrap()[0].len(), 1);
    }
    for a in [&a1, &a2] {
        a.batch_execute("COMMIT").await.unwrap();
    }
    setup
        .batch_execute("ALTER TABLE t_ddl ADD COLUMN b int DEFAULT 2")
        .await
        .unwrap();
    // A new client prepares the same text: on a direct connection it plans afresh.
    let b = proxy.connect(PoolMode::Transaction).await;
    let s = b.prepare("SELECT * FROM t_ddl").await.unwrap();
    assert_eq!(s.columns().len(), 2);
    for round in 0..6 {
        // Every other round a1 holds one server, so b's transactions use both.
        if round % 2 == 1 {
            a1.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        let rows = b
            .query(&s, &[])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!((rows[0].get::<_, i32>(0), rows[0].get::<_, i32>(1)), (1, 2));
        if round % 2 == 1 {
            a1.batch_execute("COMMIT").await.unwrap();
        }
    }
}

/// An error ahead of a second Parse of the same text makes PostgreSQL skip the proxy's Close
/// of its older copy: the proxy must know the copy is still there, or every later use of the
/// text on that server fails with 42P05 (the statement "already exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_close_an_error_skipped_keeps_working() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let mut x = Raw::open(proxy.port(PoolMode::Transaction)).await;
    x.login(196608, "agent", "agent-pw", "app").await.unwrap();
    let mut sent = ext::parse("s1", "SELECT 1");
    sent.extend(ext::sync());
    x.send(&sent).await;
    assert_eq!(x.replies_until_ready(1).await, vec!["1", "Z:I"]);
    let mut sent = ext::parse("", "SELECT 1/0");
    sent.extend(ext::bind("", "", &[]));
    sent.extend(ext::execute("", 0));
    sent.extend(ext::parse("s2", "SELECT 1"));
    sent.extend(ext::sync());
    x.send(&sent).await;
    // (PostgreSQL folds 1/0 when it plans, at the Bind.)
    assert_eq!(x.replies_until_ready(1).await, vec!["1", "E:22012", "Z:I"]);
    for name in ["s1", "s1", "s1"] {
        let mut sent = ext::bind("", name, &[]);
        sent.extend(ext::execute("", 0));
        sent.extend(ext::sync());
        x.send(&sent).await;
        assert_eq!(
            x.replies_until_ready(1).await,
            vec!["2", "D:1", "C:SELECT 1", "Z:I"]
        );
    }
    // The text prepared again under the name the error discarded works too.
    let mut sent = ext::parse("s2", "SELECT 1");
    sent.extend(ext::bind("", "s2", &[]));
    sent.extend(ext::execute("", 0));
    sent.extend(ext::sync());
    x.send(&sent).await;
    assert_eq!(
        x.replies_until_ready(1).await,
        vec!["1", "2", "D:1", "C:SELECT 1", "Z:I"]
    );
}

/// SHOW QUERIES files a named statement's executions under its Parse's fingerprint (kept with
/// the statement), and one longer than 64 KiB under the shared "longer than" entry: its text
/// is never read again per execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_of_named_statements_are_filed_under_their_parse() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let c = proxy.connect(PoolMode::Transaction).await;
    let short = c.prepare("SELECT $1::int + 17").await.unwrap();
    let long_text = format!("SELECT $1::int /* {} */", "x".repeat(70_000));
    let long = c.prepare(&long_text).await.unwrap();
    for i in 0..3 {
        let v: i32 = c.query_one(&short, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i + 17);
        let v: i32 = c.query_one(&long, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i);
    }
    let rows = console(&pg, &proxy, ADMIN, "SHOW QUERIES").unwrap();
    let calls = |needle: &str| {
        rows.iter()
            .find(|r| r["query"].contains(needle))
            .map(|r| (r["calls"].clone(), r["rows"].clone()))
    };
    // One prepare (Parse, Describe) and three executions of one row each.
    assert_eq!(calls("+ ?"), Some(("4".into(), "3".into())), "{rows:?}");
    assert_eq!(
        calls("longer than 64 KiB"),
        Some(("4".into(), "3".into())),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r["query"].len() < 1000),
        "no long text is kept"
    );
}

/// An unnamed statement longer than 64 KiB run after a short one is filed under the "longer
/// than" entry, not under the short one its name held before, in both modes (session mode's
/// meter keeps the unnamed statement itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_unnamed_statement_is_not_filed_under_the_previous_one() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let long_sql = format!("SELECT 5 /* {} */", "y".repeat(70_000));
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut raw = Raw::open(proxy.port(mode)).await;
        raw.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
        for sql in ["SELECT 4", long_sql.as_str()] {
            let mut batch = ext::parse("", sql);
            batch.extend(ext::bind("", "", &[]));
            batch.extend(ext::execute("", 0));
            batch.extend(ext::sync());
            raw.send(&batch).await;
            let replies = raw.replies_until_ready(1).await;
            assert!(replies.iter().any(|r| r.starts_with('D')), "{replies:?}");
        }
    }
    let rows = console(&pg, &proxy, ADMIN, "SHOW QUERIES").unwrap();
    let calls = |needle: &str| {
        rows.iter()
            .find(|r| r["query"].contains(needle))
            .map(|r| (r["calls"].clone(), r["rows"].clone()))
    };
    // One execution of each per mode.
    assert_eq!(
        calls("select ?"),
        Some(("2".into(), "2".into())),
        "{rows:?}"
    );
    assert_eq!(
        calls("longer than 64 KiB"),
        Some(("2".into(), "2".into())),
        "{rows:?}"
    );
}
