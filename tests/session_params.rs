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
async fn listen_works_in_session_mode_and_is_refused_clearly_in_transaction_mode() {
    use support::raw::Raw;
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    // Session mode: the notification reaches the listening client.
    let mut listener = Raw::open(proxy.port(PoolMode::Session)).await;
    listener
        .login(196608, "agent", "agent-pw", "app")
        .await
        .unwrap();
    listener.query("LISTEN jobs").await.unwrap();
    let notifier = proxy.connect(PoolMode::Transaction).await;
    notifier
        .batch_execute("NOTIFY jobs, 'job-42'")
        .await
        .unwrap();
    let (tag, body) = listener.recv().await.expect("a NotificationResponse");
    assert_eq!(tag, b'A');
    let text = String::from_utf8_lossy(&body[4..]).into_owned();
    assert_eq!(text, "jobs\0job-42\0");
    // Transaction mode: refused with 0A000 and a reason; the client carries on.
    let c = proxy.connect(PoolMode::Transaction).await;
    let e = c.simple_query("LISTEN jobs").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("session-mode port"),
        "{e}"
    );
    let e = c.prepare("listen jobs").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(
        c.query_one("SELECT 8", &[]).await.unwrap().get::<_, i32>(0),
        8
    );
}
