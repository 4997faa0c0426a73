//! What clients run through the proxy: multi-statement queries, errors and rollback, COPY in
//! both directions, session state isolation, and startup parameters.

mod support;

use futures_util::{SinkExt, TryStreamExt};
use pgsluice::config::PoolMode;
use support::*;
use tokio_postgres::SimpleQueryMessage;

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_and_error_then_rollback() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let c = proxy.connect(mode).await;
        let got = c
            .simple_query("SELECT 1; SELECT 'two'; SELECT 3 UNION ALL SELECT 4")
            .await
            .unwrap();
        assert_eq!(rows(&got), vec!["1", "two", "3", "4"], "{mode:?}");

        c.batch_execute("CREATE TABLE IF NOT EXISTS t_err (v int)")
            .await
            .unwrap();
        c.batch_execute("BEGIN; INSERT INTO t_err VALUES (1)")
            .await
            .unwrap();
        let e = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(sqlstate(&e), "22012", "{mode:?}");
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "25P02", "in a failed transaction: {mode:?}");
        c.batch_execute("ROLLBACK").await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM t_err", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "rolled back: {mode:?}");
        assert_eq!(rows(&c.simple_query("SELECT 5").await.unwrap()), vec!["5"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_100k_rows() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let c = proxy.connect(mode).await;
        c.batch_execute("DROP TABLE IF EXISTS t_copy; CREATE TABLE t_copy (id int, label text)")
            .await
            .unwrap();
        let mut data = String::new();
        let mut expected_sum: i64 = 0;
        for i in 0..100_000i64 {
            data.push_str(&format!("{i}\tlabel-{}\n", i * 7 % 1000));
            expected_sum += i;
        }
        let sink = c.copy_in("COPY t_copy FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        // Many chunks, so COPY data crosses many reads and writes.
        for chunk in data.as_bytes().chunks(7919) {
            sink.send(bytes::Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        let n = sink.as_mut().finish().await.unwrap();
        assert_eq!(n, 100_000, "{mode:?}");
        let row = c
            .query_one("SELECT count(*), sum(id)::bigint, md5(string_agg(id || E'\\t' || label, E'\\n' ORDER BY id) || E'\\n') FROM t_copy", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 100_000);
        assert_eq!(row.get::<_, i64>(1), expected_sum);
        let server_md5: String = row.get(2);

        let stream = c
            .copy_out("COPY (SELECT id, label FROM t_copy ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        let out: Vec<u8> = chunks.concat();
        assert_eq!(
            out,
            data.as_bytes(),
            "COPY OUT returns exactly what went in ({mode:?})"
        );
        let client_md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&out));
        assert_eq!(client_md5, server_md5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_leaks_to_the_next_client() {
    let pg = start_postgres();
    // One server connection, so the second client surely gets the first one's server.
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let a = proxy.connect(PoolMode::Session).await;
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute(
        "CREATE TEMP TABLE secret_tmp (v text); INSERT INTO secret_tmp VALUES ('a');
         SET work_mem = '7MB'; SET search_path = pg_catalog; PREPARE p AS SELECT 1;
         SELECT set_config('app.tenant', 'tenant-a', false)",
    )
    .await
    .unwrap();
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let b = proxy.connect(PoolMode::Session).await;
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "the same server connection was reused");
    let row = b
        .query_one(
            "SELECT to_regclass('pg_temp.secret_tmp') IS NULL, current_setting('work_mem'),
                    current_setting('search_path'), (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'),
                    coalesce(current_setting('app.tenant', true), '')",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "temp table leaked");
    assert_eq!(row.get::<_, String>(1), "4MB", "work_mem leaked");
    assert_eq!(
        row.get::<_, String>(2),
        "\"$user\", public",
        "search_path leaked"
    );
    assert_eq!(row.get::<_, i64>(3), 0, "prepared statement leaked");
    assert_eq!(row.get::<_, String>(4), "", "custom setting leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_apply_in_both_modes() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let url = format!(
            "{} application_name=agent-7 options='-c statement_timeout=1234 -c search_path=pg_catalog,public'",
            proxy.url(mode, AGENT, "app")
        );
        let c = connect(&url).await.unwrap();
        let plain = match mode {
            PoolMode::Transaction => Some(proxy.connect(mode).await),
            PoolMode::Session => None,
        };
        for _ in 0..3 {
            let row = c
                .query_one(
                    "SELECT current_setting('statement_timeout'), current_setting('search_path'), current_setting('application_name')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "1234ms", "{mode:?}");
            // As PostgreSQL keeps a startup value: exactly as sent.
            assert_eq!(row.get::<_, String>(1), "pg_catalog,public", "{mode:?}");
            assert_eq!(row.get::<_, String>(2), "agent-7", "{mode:?}");
            if let Some(plain) = &plain {
                // The other client shares the single server and must see none of it.
                let row = plain
                    .query_one("SELECT current_setting('statement_timeout'), current_setting('search_path')", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), "0", "{mode:?}");
                assert_eq!(row.get::<_, String>(1), "\"$user\", public", "{mode:?}");
            }
        }
    }
    // An invalid startup value is refused with PostgreSQL's own SQLSTATE.
    let url = format!(
        "{} options='-c statement_timeout=banana'",
        proxy.url(PoolMode::Transaction, AGENT, "app")
    );
    let e = connect(&url).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_failures_in_both_protocols() {
    use support::raw::Raw;
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    setup
        .batch_execute("CREATE TABLE t_cf (v int)")
        .await
        .unwrap();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        // Extended protocol (tokio-postgres): bad data mid-copy gives 22P02, nothing lands.
        let c = proxy.connect(mode).await;
        let sink = c.copy_in("COPY t_cf FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\nthree\n4\n"))
            .await
            .unwrap();
        let e = sink.as_mut().finish().await.unwrap_err();
        assert_eq!(sqlstate(&e), "22P02", "{mode:?}: {e}");
        // CopyFail (a sink dropped unfinished): the copy is abandoned, the connection usable.
        {
            let sink = c
                .copy_in::<_, bytes::Bytes>("COPY t_cf FROM STDIN")
                .await
                .unwrap();
            let mut sink = std::pin::pin!(sink);
            sink.send(bytes::Bytes::from_static(b"5\n")).await.unwrap();
        }
        assert_eq!(
            c.query_one("SELECT count(*) FROM t_cf", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            0,
            "{mode:?}"
        );
        // Simple protocol: COPY ... FROM STDIN with CopyFail from the client.
        let mut raw = Raw::open(proxy.port(mode)).await;
        raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
        raw.send(&support::raw::message(b'Q', b"COPY t_cf FROM STDIN\0"))
            .await;
        assert_eq!(raw.recv().await.map(|m| m.0), Some(b'G'));
        let mut msgs = support::raw::message(b'd', b"7\n");
        msgs.extend(support::raw::message(b'f', b"client gave up\0"));
        raw.send(&msgs).await;
        assert_eq!(
            raw.replies_until_ready(1).await,
            vec!["E:57014", "Z:I"],
            "{mode:?}"
        );
        // And a good one after it, through the same connection.
        raw.send(&support::raw::message(b'Q', b"COPY t_cf FROM STDIN\0"))
            .await;
        assert_eq!(raw.recv().await.map(|m| m.0), Some(b'G'));
        let mut msgs = support::raw::message(b'd', b"8\n9\n");
        msgs.extend(support::raw::message(b'c', b""));
        raw.send(&msgs).await;
        assert_eq!(
            raw.replies_until_ready(1).await,
            vec!["C:COPY 2", "Z:I"],
            "{mode:?}"
        );
        assert_eq!(raw.query("DELETE FROM t_cf").await, Ok(vec![]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_right_client() {
    use support::raw::Raw;
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut a = Raw::open(proxy.port(mode)).await;
        a.login(196608, "agent", "agent-pw", "app").await.unwrap();
        let mut b = Raw::open(proxy.port(mode)).await;
        if mode == PoolMode::Transaction {
            b.login(196608, "agent", "agent-pw", "app").await.unwrap();
        }
        a.send(&support::raw::message(
            b'Q',
            b"DO $$ BEGIN RAISE NOTICE 'for a only'; END $$\0",
        ))
        .await;
        let mut seen = Vec::new();
        loop {
            let (tag, body) = a.recv().await.unwrap();
            if tag == b'N' {
                let text = String::from_utf8_lossy(&body).into_owned();
                assert!(text.contains("for a only"), "{text}");
            }
            seen.push(tag);
            if tag == b'Z' {
                break;
            }
        }
        assert_eq!(seen, vec![b'N', b'C', b'Z'], "{mode:?}");
        if mode == PoolMode::Transaction {
            // b shares the only server and gets nothing of a's.
            assert_eq!(b.query("SELECT 1").await, Ok(vec!["1".to_string()]));
        }
    }
}
