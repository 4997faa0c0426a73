//! Real drivers from other ecosystems through the transaction listener (pool of 5, 50
//! connections each): asyncpg with its statement cache, psycopg 3 with prepare_threshold=0
//! and pipeline mode, node-postgres with named statements. The scripts in tests/clients
//! check every value; `.ci/run` installs their packages.

mod support;

use pgsluice::config::PoolMode;
use std::path::Path;
use support::*;

fn run_client(program: &str, script: &str, url: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = std::process::Command::new(program)
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("PGSLUICE_URL", url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (installed by .ci/run): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

async fn setup() -> (pgsluice::devdb::DevDb, Proxy) {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 5")).await;
    proxy
        .connect(PoolMode::Transaction)
        .await
        .batch_execute("CREATE TABLE driver_rows (client int, round int, who text)")
        .await
        .unwrap();
    (pg, proxy)
}

fn url(proxy: &Proxy) -> String {
    format!(
        "postgresql://agent:agent-pw@127.0.0.1:{}/app",
        proxy.port(PoolMode::Transaction)
    )
}

fn assert_servers_within_pool(pg: &pgsluice::devdb::DevDb) {
    let n: i64 = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_scram'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(n <= 5, "{n} server connections for a pool of 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_fifty_connections() {
    let (pg, proxy) = setup().await;
    let out =
        tokio::task::block_in_place(|| run_client(&python3(), "asyncpg_check.py", &url(&proxy)));
    assert!(out.contains("asyncpg ok: 50 clients"), "{out}");
    let counted = pg_count(&pg, "asyncpg");
    assert_eq!(counted, 50 * 12, "every committed row is there once");
    assert_servers_within_pool(&pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepare_threshold_zero_and_pipelines() {
    let (pg, proxy) = setup().await;
    let out =
        tokio::task::block_in_place(|| run_client(&python3(), "psycopg_check.py", &url(&proxy)));
    assert!(out.contains("psycopg ok: 50 clients"), "{out}");
    assert_eq!(pg_count(&pg, "psycopg"), 50 * 10);
    assert_servers_within_pool(&pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_statements() {
    let (pg, proxy) = setup().await;
    let out = tokio::task::block_in_place(|| run_client("node", "node_pg_check.js", &url(&proxy)));
    assert!(out.contains("node-postgres ok: 50 clients"), "{out}");
    assert_eq!(pg_count(&pg, "node"), 50 * 10);
    assert_servers_within_pool(&pg);
}

fn pg_count(pg: &pgsluice::devdb::DevDb, who: &str) -> i64 {
    let out = std::process::Command::new(pg.bindir.join("psql"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "appdb",
            "-XAtqc",
        ])
        .arg(format!(
            "SELECT count(*) FROM driver_rows WHERE who = '{who}'"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
