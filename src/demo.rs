//! `pgsluice demo`: a throwaway PostgreSQL with pgsluice in front of it in both modes, for the
//! first five minutes. Prints the URLs to paste into psql; Ctrl-C stops both.

use crate::config::{Config, PoolMode};
use crate::devdb::DevDb;
use std::path::Path;

/// The demo's sample data: a table an agent might keep, owned by `demo`.
const SAMPLE: &str = "CREATE TABLE tasks (id int PRIMARY KEY, agent text NOT NULL, \
    title text NOT NULL, done boolean NOT NULL DEFAULT false, created_at timestamptz NOT NULL); \
    INSERT INTO tasks SELECT i, 'agent-' || (i % 7), 'task ' || i, i % 3 = 0, \
    now() - i * interval '1 minute' FROM generate_series(1, 1000) i; \
    ALTER TABLE tasks OWNER TO demo";

/// Ports of the demo's listeners and HTTP endpoint.
pub struct Ports {
    pub session: u16,
    pub transaction: u16,
    pub http: u16,
}

pub async fn run(ports: Ports) -> Result<(), String> {
    // Started on this thread on purpose: the server is tied to the thread that spawned it
    // (it stops if that thread dies), and this one lives as long as the demo.
    let db = DevDb::start(
        &[
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ],
        &[],
    )
    .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
    for sql in [
        "CREATE ROLE demo LOGIN PASSWORD 'demo'",
        "CREATE DATABASE demo OWNER demo",
    ] {
        db.psql(sql).map_err(|e| e.to_string())?;
    }
    db.psql_in("demo", SAMPLE).map_err(|e| e.to_string())?;
    let config = Config::parse(&config_text(&ports, db.port), Path::new("<demo>"))
        .map_err(|e| e.to_string())?;
    let running = crate::app::start(config).await.map_err(|e| e.to_string())?;
    print_urls(&running, &db, ports.http);
    stopped().await;
    println!("stopping...");
    running.shutdown().await;
    drop(db);
    Ok(())
}

fn config_text(ports: &Ports, pg_port: u16) -> String {
    format!(
        r#"
[[listeners]]
addr = "127.0.0.1:{session}"
mode = "session"

[[listeners]]
addr = "127.0.0.1:{transaction}"
mode = "transaction"

[http]
addr = "127.0.0.1:{http}"

[admin]
users = ["demo"]

[[databases]]
name = "demo"
host = "127.0.0.1"
port = {pg_port}
pool_size = 5

[[users]]
name = "demo"
password = "demo"
"#,
        session = ports.session,
        transaction = ports.transaction,
        http = ports.http,
    )
}

fn print_urls(running: &crate::app::Running, db: &DevDb, http: u16) {
    let url_to = |mode, db: &str| {
        running
            .addr(mode)
            .map(|a| format!("postgresql://demo:demo@{a}/{db}"))
            .unwrap_or_default()
    };
    println!(
        "PostgreSQL {} is running on port {} (data in {}), with a table `tasks` of 1,000 rows.",
        pg_version(db),
        db.port,
        db.dir.display()
    );
    println!();
    let session = url_to(PoolMode::Session, "demo");
    println!("pgsluice session mode:     psql '{session}'");
    let transaction = url_to(PoolMode::Transaction, "demo");
    println!("pgsluice transaction mode: psql '{transaction}'");
    let console = url_to(PoolMode::Session, crate::ADMIN_DATABASE);
    println!("admin console:             psql '{console}' -c 'SHOW POOLS'");
    println!("metrics:                   curl http://127.0.0.1:{http}/metrics");
    println!();
    println!("Try: psql '{transaction}' -c 'SELECT agent, count(*) FROM tasks GROUP BY agent'");
    println!("Export a URL as DATABASE_URL for your agent. Ctrl-C stops pgsluice and PostgreSQL.");
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn pg_version(db: &DevDb) -> String {
    db.psql("show server_version").unwrap_or_default()
}
