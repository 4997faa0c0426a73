//! `pgsluice demo`: a throwaway PostgreSQL with pgsluice in front of it in both modes, for the
//! first five minutes. Prints the URLs to paste into psql; Ctrl-C stops both.

use crate::config::{Config, PoolMode};
use crate::devdb::DevDb;
use std::path::Path;

pub async fn run(session_port: u16, transaction_port: u16) -> Result<(), String> {
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
    db.psql("CREATE ROLE demo LOGIN PASSWORD 'demo'")
        .map_err(|e| e.to_string())?;
    db.psql("CREATE DATABASE demo OWNER demo")
        .map_err(|e| e.to_string())?;
    let config_text = format!(
        r#"
[[listeners]]
addr = "127.0.0.1:{session_port}"
mode = "session"

[[listeners]]
addr = "127.0.0.1:{transaction_port}"
mode = "transaction"

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
        pg_port = db.port
    );
    let config = Config::parse(&config_text, Path::new("<demo>")).map_err(|e| e.to_string())?;
    let running = crate::app::start(config).await.map_err(|e| e.to_string())?;
    let url_to = |mode, db: &str| {
        running
            .addr(mode)
            .map(|a| format!("postgresql://demo:demo@{a}/{db}"))
            .unwrap_or_default()
    };
    let url = |mode| url_to(mode, "demo");
    println!(
        "PostgreSQL {} is running on port {} (data in {}).",
        pg_version(&db),
        db.port,
        db.dir.display()
    );
    println!();
    println!(
        "pgsluice session mode:     psql '{}'",
        url(PoolMode::Session)
    );
    println!(
        "pgsluice transaction mode: psql '{}'",
        url(PoolMode::Transaction)
    );
    println!(
        "admin console:             psql '{}' -c 'SHOW POOLS'",
        url_to(PoolMode::Session, crate::ADMIN_DATABASE)
    );
    println!();
    println!("Export one as DATABASE_URL for your agent. Ctrl-C stops pgsluice and PostgreSQL.");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    println!("stopping...");
    running.shutdown().await;
    drop(db);
    Ok(())
}

fn pg_version(db: &DevDb) -> String {
    db.psql("show server_version").unwrap_or_default()
}
