//! The shared test harness: a real PostgreSQL per test (via `pgsluice::devdb`), roles for each
//! upstream auth method, pgsluice started in-process on free ports, and small clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agents;
pub mod certs;
pub mod faults;
pub mod jwks;
pub mod mcp;
pub mod pgbouncer;
pub mod raw;

use pgsluice::app::Running;
use pgsluice::config::{Config, PoolMode};
use pgsluice::devdb::DevDb;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

pub const SCRAM_ROLE: &str = "app_scram";
pub const MD5_ROLE: &str = "app_md5";
pub const PLAIN_ROLE: &str = "app_plain";
pub const ROLE_PASSWORD: &str = "role-pw";

/// PostgreSQL with the roles and database the tests use. Upstream auth: `password`
/// (cleartext) for app_plain, `md5` for everyone else over TCP, which PostgreSQL runs as
/// SCRAM for roles whose password is stored as SCRAM (app_scram) and md5 for app_md5.
pub fn start_postgres() -> DevDb {
    let pg = DevDb::start(
        &[
            "host all app_plain 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 md5",
            "host all all ::1/128 md5",
        ],
        &[],
    )
    .expect(
        "PostgreSQL must start for the integration tests (install postgresql or set PG_BINDIR)",
    );
    pg.psql(&format!(
        "CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}';
         SET password_encryption = 'md5';
         CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}';
         CREATE ROLE {PLAIN_ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}';"
    ))
    .unwrap();
    pg.psql(&format!("CREATE DATABASE appdb OWNER {SCRAM_ROLE}"))
        .unwrap();
    pg.psql("GRANT ALL ON DATABASE appdb TO PUBLIC").unwrap();
    pg
}

/// The agent's upstream role and the database it owns, on a server started without them.
pub fn create_role_and_db(pg: &DevDb) {
    pg.psql(&format!(
        "CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'"
    ))
    .unwrap();
    pg.psql(&format!("CREATE DATABASE appdb OWNER {SCRAM_ROLE}"))
        .unwrap();
}

/// The proxy's users: what clients log in with, and the upstream role each maps to.
pub const AGENT: (&str, &str) = ("agent", "agent-pw");
pub const AGENT_MD5: (&str, &str) = ("agent_md5", "md5-agent-pw");
/// May use every admin console command; the watcher only SHOW.
pub const ADMIN: (&str, &str) = ("admin", "admin-pw");
pub const WATCHER: (&str, &str) = ("watcher", "watcher-pw");

/// A config with a session and a transaction listener on free ports, for `pg`.
/// `general` is inserted into `[general]`; `db_extra` into the `app` database table.
pub fn config_text(pg: &DevDb, general: &str, db_extra: &str) -> String {
    let md5_hash = postgres_protocol::password::md5(AGENT_MD5.1.as_bytes(), AGENT_MD5.0);
    format!(
        r#"
[general]
{general}

[[listeners]]
addr = "127.0.0.1:0"
mode = "session"

[[listeners]]
addr = "127.0.0.1:0"
mode = "transaction"

[admin]
users = ["{admin}"]
stats_users = ["{watcher}"]

[[databases]]
name = "app"
host = "127.0.0.1"
port = {port}
dbname = "appdb"
{db_extra}

[[databases]]
name = "app_unix"
host = "{sock}"
port = {port}
dbname = "appdb"

[[databases]]
name = "app_byname"
host = "localhost"
port = {port}
dbname = "appdb"

[[databases]]
name = "app_v6"
host = "::1"
port = {port}
dbname = "appdb"

[[users]]
name = "{agent}"
password = "{agent_pw}"
server_user = "{SCRAM_ROLE}"
server_password = "{ROLE_PASSWORD}"

[[users]]
name = "{agent_md5}"
password = "{md5_hash}"
server_user = "{MD5_ROLE}"
server_password = "{ROLE_PASSWORD}"

[[users]]
name = "agent_plain"
password = "plain-pw"
server_user = "{PLAIN_ROLE}"
server_password = "{ROLE_PASSWORD}"

[[users]]
name = "{admin}"
password = "{admin_pw}"

[[users]]
name = "{watcher}"
password = "{watcher_pw}"
"#,
        port = pg.port,
        sock = pg.socket_dir.display(),
        agent = AGENT.0,
        agent_pw = AGENT.1,
        agent_md5 = AGENT_MD5.0,
        admin = ADMIN.0,
        admin_pw = ADMIN.1,
        watcher = WATCHER.0,
        watcher_pw = WATCHER.1,
    )
}

/// PGSLUICE_TEST_LOG=debug shows the proxy's log while debugging a test.
fn test_log() {
    if let Ok(level) = std::env::var("PGSLUICE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_test_writer()
            .try_init();
    }
}

pub struct Proxy {
    pub running: Running,
}

impl Proxy {
    pub async fn start(text: &str) -> Proxy {
        test_log();
        let config = Config::parse(text, Path::new("test.toml")).unwrap();
        Proxy {
            running: pgsluice::app::start(config).await.unwrap(),
        }
    }

    /// Starts from a file, as the binary does (RELOAD reads it again).
    pub async fn start_file(path: &Path) -> Proxy {
        test_log();
        let config = Config::load(path).unwrap();
        Proxy {
            running: pgsluice::app::start(config).await.unwrap(),
        }
    }

    pub fn port(&self, mode: PoolMode) -> u16 {
        self.running.addr(mode).unwrap().port()
    }

    /// A libpq-style connection string for `mode`.
    pub fn url(&self, mode: PoolMode, user: (&str, &str), db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db}",
            self.port(mode),
            user.0,
            user.1
        )
    }

    pub async fn connect(&self, mode: PoolMode) -> Client {
        connect(&self.url(mode, AGENT, "app")).await.unwrap()
    }
}

/// The Python the test clients are installed for: tests/clients/.venv's when `./dev test`
/// made one (the system's Python refused pip), else `python3` on PATH.
pub fn python3() -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/.venv/bin/python3");
    if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".to_owned()
    }
}

/// Connects with tokio-postgres and drives the connection on its own task.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(20), tokio_postgres::connect(url, NoTls))
            .await
            .expect("connect timed out")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a tokio-postgres error, or a description when it has none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Upstream backends of the role the proxy's `agent` logs in as.
pub fn role_backends(pg: &DevDb) -> i64 {
    pg.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{SCRAM_ROLE}'"
    ))
    .unwrap()
    .parse()
    .unwrap()
}

/// Runs psql from PostgreSQL's bindir; returns (success, stdout, stderr).
pub fn psql(pg: &DevDb, conninfo: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(pg.bindir.join("psql"))
        .arg(conninfo)
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One admin console query through psql as `user`: the rows as column -> value maps, or
/// psql's error text.
pub fn console(
    pg: &DevDb,
    proxy: &Proxy,
    user: (&str, &str),
    sql: &str,
) -> Result<Vec<std::collections::HashMap<String, String>>, String> {
    console_at(pg, &proxy.url(PoolMode::Session, user, "pgsluice"), sql)
}

/// [`console`] at a connection string (a pgsluice this test process did not start).
pub fn console_at(
    pg: &DevDb,
    url: &str,
    sql: &str,
) -> Result<Vec<std::collections::HashMap<String, String>>, String> {
    let out = std::process::Command::new(pg.bindir.join("psql"))
        .arg(url)
        .args([
            "-XAq",
            "-F",
            "\t",
            "-P",
            "footer=off",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = header.split('\t').collect();
    Ok(lines
        .map(|l| {
            cols.iter()
                .zip(l.split('\t'))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect())
}

/// The header of a console result: its column names in order.
pub fn console_columns(pg: &DevDb, proxy: &Proxy, sql: &str) -> Vec<String> {
    let url = proxy.url(PoolMode::Session, ADMIN, "pgsluice");
    let out = std::process::Command::new(pg.bindir.join("psql"))
        .arg(&url)
        .args(["-XAq", "-F", "\t", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .next()
        .unwrap_or("")
        .split('\t')
        .map(str::to_owned)
        .collect()
}

/// The shared contract files' placeholders filled in as outside tools would.
pub fn fill_contract(text: &str) -> String {
    text.replace("@SESSION_PORT@", "55432")
        .replace("@TXN_PORT@", "56543")
        .replace("@HTTP_PORT@", "59930")
        .replace("@PG_PORT@", "5432")
        .replace("@PG_DB@", "postgres")
        .replace("@AGENT_PASSWORD@", "agent-pw")
        .replace("@PG_USER@", "postgres")
        .replace("@PG_PASSWORD@", "pg-pw")
        .replace("@ADMIN_PASSWORD@", "admin-pw")
}

/// Polls `f` until it returns true or `limit` passes; true if it did. Limits are generous:
/// they bound a failure's wait, and a loaded 2-core machine must not turn a slow success
/// into one.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
