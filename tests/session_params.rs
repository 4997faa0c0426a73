//! Session settings in transaction mode: a client's SET, RESET, SET ROLE and set_config follow
//! it to whichever server runs its next transaction, and no setting of one client is ever
//! seen by another (peers have shipped this leak; one became a CVE).

mod support;

use pgsluice::config::PoolMode;
use support::*;
use tokio_postgres::Client;

async fn settings(c: &Client) -> Vec<String> {
    let row = c
        .query_one(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'),
                    current_setting('default_transaction_read_only'), current_user::text,
                    coalesce(current_setting('app.tenant', true), ''), current_setting('DateStyle')",
            &[],
        )
        .await
        .unwrap();
    (0..6).map(|i| row.get::<_, String>(i)).collect()
}

const DEFAULTS: [&str; 6] = ["\"$user\", public", "0", "off", "app_scram", "", "ISO, MDY"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_their_client_and_never_leak() {
    let pg = start_postgres();
    pg.psql("GRANT app_md5 TO app_scram").unwrap();
    // One server: both clients surely share it; then two, so they also move between servers.
    for pool in ["pool_size = 1", "pool_size = 2"] {
        let proxy = Proxy::start(&config_text(&pg, "", pool)).await;
        let a = proxy.connect(PoolMode::Transaction).await;
        let b = proxy.connect(PoolMode::Transaction).await;
        a.batch_execute(
            "SET search_path = pg_catalog, public; SET statement_timeout = '2s';
             SET default_transaction_read_only = on; SET ROLE app_md5; SET DateStyle = 'German';
             SELECT set_config('app.tenant', 'tenant-a', false)",
        )
        .await
        .unwrap();
        let mine = [
            "pg_catalog, public",
            "2s",
            "on",
            "app_md5",
            "tenant-a",
            "German, DMY",
        ];
        for _ in 0..3 {
            assert_eq!(
                settings(&b).await,
                DEFAULTS,
                "{pool}: b sees nothing of a's"
            );
            assert_eq!(settings(&a).await, mine, "{pool}: a keeps its own");
        }
        // A SET rolled back, and SET LOCAL, leave nothing.
        a.batch_execute("BEGIN; SET statement_timeout = '9s'; ROLLBACK")
            .await
            .unwrap();
        a.batch_execute("BEGIN; SET LOCAL search_path = x; COMMIT")
            .await
            .unwrap();
        assert_eq!(settings(&a).await, mine, "{pool}");
        // RESET and RESET ROLE undo, for a only.
        a.batch_execute(
            "RESET statement_timeout; RESET ROLE; SELECT set_config('app.tenant', '', false)",
        )
        .await
        .unwrap();
        let after = settings(&a).await;
        assert_eq!(after[1..5], ["0", "on", "app_scram", ""], "{pool}");
        assert_eq!(settings(&b).await, DEFAULTS, "{pool}");
        // The same through the extended protocol (a prepared SET).
        let s = b
            .prepare("SELECT set_config('app.tenant', $1, false)")
            .await
            .unwrap();
        b.query(&s, &[&"tenant-b"]).await.unwrap();
        assert_eq!(settings(&b).await[4], "tenant-b", "{pool}");
        assert_eq!(settings(&a).await[4], "", "{pool}");
        let s = b.prepare("SET statement_timeout = '3s'").await.unwrap();
        b.execute(&s, &[]).await.unwrap();
        assert_eq!(settings(&b).await[1], "3s", "{pool}");
        assert_eq!(settings(&a).await[1], "0", "{pool}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_notify_in_both_modes() {
    use support::raw::Raw;
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "query_wait_timeout = 5", "pool_size = 3")).await;
    let notifier = proxy.connect(PoolMode::Transaction).await;
    // Session mode: LISTEN runs on the client's own server.
    let mut s = Raw::open(proxy.port(PoolMode::Session)).await;
    s.login(196608, "agent", "agent-pw", "app").await.unwrap();
    s.query("LISTEN jobs").await.unwrap();
    // Transaction mode: two listeners through the hub, which holds no pool server.
    let mut t1 = Raw::open(proxy.port(PoolMode::Transaction)).await;
    t1.login(196608, "agent", "agent-pw", "app").await.unwrap();
    assert_eq!(t1.query("LISTEN jobs").await, Ok(vec![]));
    let mut t2 = Raw::open(proxy.port(PoolMode::Transaction)).await;
    t2.login(196608, "agent", "agent-pw", "app").await.unwrap();
    assert_eq!(t2.query("listen \"Jobs\"; ").await, Ok(vec![]));
    assert_eq!(t2.query("LISTEN jobs").await, Ok(vec![]));
    notifier
        .batch_execute("NOTIFY jobs, 'job-42'; NOTIFY \"Jobs\", 'other'")
        .await
        .unwrap();
    for (who, raw) in [("session", &mut s), ("t1", &mut t1)] {
        let (tag, body) = raw.recv().await.expect("a NotificationResponse");
        assert_eq!(tag, b'A', "{who}");
        assert_eq!(
            String::from_utf8_lossy(&body[4..]),
            "jobs\0job-42\0",
            "{who}"
        );
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let (tag, body) = t2.recv().await.unwrap();
        assert_eq!(tag, b'A');
        got.push(String::from_utf8_lossy(&body[4..]).into_owned());
    }
    got.sort();
    assert_eq!(got, vec!["Jobs\0other\0", "jobs\0job-42\0"]);
    // During a transaction a notification waits for its end, as PostgreSQL delivers it.
    t1.query("BEGIN").await.unwrap();
    notifier
        .batch_execute("NOTIFY jobs, 'later'")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        t1.query("SELECT 1").await,
        Ok(vec!["1".to_string()]),
        "nothing arrives mid-transaction"
    );
    t1.send(&support::raw::message(b'Q', b"COMMIT\0")).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b'A') {
        tags.push(t1.recv().await.unwrap().0);
    }
    assert_eq!(
        tags,
        vec![b'C', b'Z', b'A'],
        "the notification follows the transaction's end"
    );
    // UNLISTEN stops them; the pool's servers never carried a LISTEN.
    assert_eq!(t1.query("UNLISTEN *").await, Ok(vec![]));
    notifier
        .batch_execute("NOTIFY jobs, 'after'")
        .await
        .unwrap();
    assert_eq!(t2.recv().await.map(|m| m.0), Some(b'A'));
    assert_eq!(
        t1.query("SELECT 2").await,
        Ok(vec!["2".to_string()]),
        "t1 got no notification"
    );
    let listening: i64 = notifier
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_scram' AND query ILIKE 'listen%'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        listening <= 2,
        "only the hub and the session client listen: {listening}"
    );
    // LISTEN inside a transaction block is refused with 0A000; the client carries on.
    let c = proxy.connect(PoolMode::Transaction).await;
    let e = c.batch_execute("BEGIN; LISTEN jobs").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        c.query_one("SELECT 8", &[]).await.unwrap().get::<_, i32>(0),
        8
    );
}

/// Transaction mode: the greeting reports what a direct connection would. An application_name
/// is reported as sent (without asking a server); a setting the server spells its own way
/// (TimeZone `utc` -> `UTC`) is reported as the server spells it; and the session then has
/// exactly those values on whichever server runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_reports_what_the_server_would() {
    use support::raw::Raw;
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let port = proxy.port(PoolMode::Transaction);
    let check = "SELECT current_setting('application_name') || '|' || current_setting('TimeZone')";

    let mut named = Raw::open(port).await;
    let extra = [("application_name", "agent-7")];
    named
        .login_with(196608, "agent", "agent-pw", "app", &extra)
        .await
        .unwrap();
    assert_eq!(named.param("application_name"), Some("agent-7"));
    let tz = named.param("TimeZone").unwrap().to_owned();
    assert_eq!(named.query(check).await, Ok(vec![format!("agent-7|{tz}")]));

    let mut zoned = Raw::open(port).await;
    let extra = [("application_name", "agent-8"), ("TimeZone", "utc")];
    zoned
        .login_with(196608, "agent", "agent-pw", "app", &extra)
        .await
        .unwrap();
    assert_eq!(zoned.param("TimeZone"), Some("UTC"));
    assert_eq!(zoned.param("application_name"), Some("agent-8"));
    assert_eq!(zoned.query(check).await, Ok(vec!["agent-8|UTC".to_owned()]));

    // Non-ASCII: PostgreSQL rewrites it, so the greeting must carry the server's version.
    let mut odd = Raw::open(port).await;
    let extra = [("application_name", "caf\u{e9}")];
    odd.login_with(196608, "agent", "agent-pw", "app", &extra)
        .await
        .unwrap();
    let shown = odd.param("application_name").unwrap().to_owned();
    assert_ne!(shown, "caf\u{e9}", "the server replaces non-ASCII bytes");
    assert!(shown.starts_with("caf"), "{shown}");
    assert_eq!(
        odd.query("SELECT current_setting('application_name')")
            .await,
        Ok(vec![shown])
    );
    // The first client's session is untouched by the others on the one server.
    assert_eq!(named.query(check).await, Ok(vec![format!("agent-7|{tz}")]));
}
