//! `pgsluice import-pgbouncer` on real pgbouncer.ini files: the one Debian's package ships,
//! and one written to use every key the importer translates. The result passes
//! check-config, means what the ini meant, and serves clients, PgBouncer's fallback
//! database (`* = ...`) included.

mod support;

use pgsluice::config::{Config, PoolMode};
use std::path::{Path, PathBuf};
use support::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgsluice-import-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the importer; (success, stdout, stderr).
fn import(args: &[&Path]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("import-pgbouncer")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn debians_pgbouncer_ini_translates_and_checks() {
    let ini = Path::new("/etc/pgbouncer/pgbouncer.ini");
    assert!(
        ini.exists(),
        "Debian's pgbouncer package is installed by ./dev test"
    );
    let (ok, toml, notes) = import(&[ini]);
    assert!(ok, "{notes}");
    // Its settings: localhost:6432 and the socket in /var/run/postgresql, session mode, md5.
    let c = Config::parse(&toml, Path::new("debian.toml")).expect(&toml);
    let addrs: Vec<String> = c
        .listeners
        .iter()
        .map(|l| format!("{:?} {:?}", l.get_ref().addr, l.get_ref().mode))
        .collect();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert!(
        c.listeners
            .iter()
            .all(|l| l.get_ref().mode == PoolMode::Session)
    );
    assert!(toml.contains("addr = \"127.0.0.1:6432\""), "{toml}");
    assert!(toml.contains("addr = \"[::1]:6432\""), "{toml}");
    assert!(
        toml.contains("addr = \"/var/run/postgresql/.s.PGSQL.6432\""),
        "{toml}"
    );
    assert!(toml.contains("auth_type = \"md5\""), "{toml}");
    assert!(notes.contains("logfile: not needed"), "{notes}");
    assert!(notes.contains("pidfile: not needed"), "{notes}");
    let dir = temp_dir("debian");
    let file = dir.join("pgsluice.toml");
    std::fs::write(&file, &toml).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ini using every key the importer carries over, with values unlike both programs'
/// defaults, so that each one visibly arrived.
fn written_ini(pg_port: u16, port: u16, dir: &Path) -> String {
    format!(
        "; written for the test: every key pgsluice understands\n\
         [databases]\n\
         app = host=127.0.0.1 port={pg_port} dbname=appdb user={SCRAM_ROLE} password={ROLE_PASSWORD} pool_size=3 reserve_pool=1 max_db_connections=9 min_pool_size=0\n\
         * = host=127.0.0.1 port={pg_port} user={SCRAM_ROLE} password={ROLE_PASSWORD}\n\
         local = port={pg_port} dbname=appdb user={SCRAM_ROLE} password={ROLE_PASSWORD}\n\
         \n\
         [users]\n\
         agent = max_user_connections=2\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         pool_mode = transaction\n\
         auth_type = scram-sha-256\n\
         auth_file = {userlist}\n\
         auth_user = watcher\n\
         auth_hba_file = /nonexistent/hba.conf\n\
         admin_users = admin\n\
         stats_users = watcher\n\
         max_client_conn = 400\n\
         max_client_conn = 500\n\
         default_pool_size = 7\n\
         min_pool_size = 0\n\
         reserve_pool_size = 2\n\
         reserve_pool_timeout = 3\n\
         max_db_connections = 50\n\
         max_user_connections = 40\n\
         max_user_client_connections = 300\n\
         max_prepared_statements = 150\n\
         server_lifetime = 1800\n\
         server_idle_timeout = 300\n\
         server_connect_timeout = 5\n\
         server_login_retry = 1\n\
         server_check_delay = 20\n\
         server_check_query = select 2\n\
         server_reset_query = DISCARD ALL\n\
         client_login_timeout = 30\n\
         client_idle_timeout = 0\n\
         idle_transaction_timeout = 600\n\
         query_timeout = 0\n\
         query_wait_timeout = 2min\n\
         stats_period = 30\n\
         dns_max_ttl = 10\n\
         dns_nxdomain_ttl = 12\n\
         application_name_add_host = 1\n\
         tcp_keepalive = 1\n\
         server_tls_sslmode = disable\n\
         logfile = /var/log/pgbouncer/pgbouncer.log\n\
         pidfile = /run/pgbouncer/pgbouncer.pid\n\
         server_round_robin = 1\n\
         no_such_setting = 3\n",
        userlist = dir.join("userlist.txt").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_ini_translates_to_a_pgsluice_that_serves_it() {
    let pg = start_postgres();
    pg.psql("CREATE DATABASE otherdb").unwrap();
    let dir = temp_dir("written");
    let port = pgsluice::devdb::free_port().unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(&ini, written_ini(pg.port, port, &dir)).unwrap();
    let watcher_md5 = postgres_protocol::password::md5(WATCHER.1.as_bytes(), WATCHER.0);
    std::fs::write(
        dir.join("userlist.txt"),
        format!(
            "\"{}\" \"{}\"\n\"{}\" \"{}\"\n\"{}\" \"{watcher_md5}\"\n",
            AGENT.0, AGENT.1, ADMIN.0, ADMIN.1, WATCHER.0
        ),
    )
    .unwrap();
    let out = dir.join("pgsluice.toml");
    let (ok, _, notes) = import(&[&ini, Path::new("--output"), &out]);
    assert!(ok, "{notes}");
    for expected in [
        "logfile: not needed",
        "pidfile: not needed",
        "server_round_robin: not needed",
        "no_such_setting: unknown to pgsluice",
        "agent: a plaintext password",
        "auth_hba_file: PgBouncer reads it only with auth_type = hba",
    ] {
        assert!(notes.contains(expected), "{expected:?} not in:\n{notes}");
    }
    let toml = std::fs::read_to_string(&out).unwrap();
    let c = Config::load(&out).expect(&toml);
    let g = &c.general;
    assert_eq!(
        (
            g.max_client_conn,
            g.default_pool_size,
            g.reserve_pool_size,
            g.max_db_connections
        ),
        (500, 7, 2, 50)
    );
    assert_eq!(
        (
            g.max_user_connections,
            g.max_user_client_connections,
            g.max_prepared_statements
        ),
        (40, 300, 150)
    );
    assert_eq!(g.query_wait_timeout.duration().as_secs(), 120);
    assert_eq!(g.server_lifetime.duration().as_secs(), 1800);
    assert_eq!(g.dns_nxdomain_ttl.duration().as_secs(), 12);
    assert!(g.application_name_add_host && g.tcp_keepalive);
    assert_eq!(g.server_check_query.as_str(), "select 2");
    assert_eq!(c.admin.users.len(), 1);
    assert_eq!(
        c.listeners.len(),
        1,
        "no unix socket: unix_socket_dir is empty"
    );
    assert_eq!(c.listeners[0].get_ref().mode, PoolMode::Transaction);
    let app = c.database("app").unwrap();
    assert_eq!(
        (app.pool_size, app.reserve_pool_size, app.max_db_connections),
        (Some(3), Some(1), Some(9))
    );
    let agent = c.user(AGENT.0).unwrap();
    assert_eq!(agent.server_user.as_deref(), Some(SCRAM_ROLE));
    // auth_user runs auth_query as itself; a database without host is the unix socket.
    assert_eq!(c.user(WATCHER.0).unwrap().server_user, None);
    assert_eq!(c.database("local").unwrap().host.as_str(), "/tmp");
    assert!(c.general.auth_hba_file.is_none());
    assert_eq!(agent.limits.max_user_connections, Some(2));

    // The result serves: the listed database, and any other name through the fallback.
    let running = pgsluice::app::start(c).await.unwrap();
    let addr = running.addr(PoolMode::Transaction).unwrap();
    let url = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db}",
            addr.port(),
            AGENT.0,
            AGENT.1
        )
    };
    let current = |c: tokio_postgres::Client| async move {
        let row = c.query_one("SELECT current_database()", &[]).await.unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(current(connect(&url("app")).await.unwrap()).await, "appdb");
    assert_eq!(
        current(connect(&url("otherdb")).await.unwrap()).await,
        "otherdb"
    );
    assert_eq!(
        current(connect(&url("postgres")).await.unwrap()).await,
        "postgres"
    );
    // A name the server does not have: the server's own error, as through PgBouncer.
    let missing = match connect(&url("nosuchdb")).await {
        Err(e) => sqlstate(&e),
        Ok(c) => sqlstate(&c.batch_execute("SELECT 1").await.unwrap_err()),
    };
    assert_eq!(missing, "3D000");
    // The admin console is never the fallback's.
    let console = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=pgsluice",
        addr.port(),
        ADMIN.0,
        ADMIN.1
    );
    let (ok, pools, err) = psql(&pg, &console, &["-c", "SHOW POOLS"]);
    assert!(ok, "{err}");
    assert!(pools.contains("otherdb|"), "{pools}");
    let (ok, dbs, err) = psql(&pg, &console, &["-c", "SHOW DATABASES"]);
    assert!(ok, "{err}");
    assert!(
        dbs.lines().any(|l| l.starts_with("otherdb|127.0.0.1|")),
        "{dbs}"
    );
    running.shutdown_fast().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every name a client asks for through the fallback becomes a pool: an authenticated client
/// asking for name after name is refused (53300) past the bound, and names already pooled
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_database_pools_a_bounded_number_of_names() {
    let pg = start_postgres();
    let text = config_text(&pg, "", "")
        + &format!(
            "\n[[databases]]\nname = \"*\"\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        );
    let c = Config::parse(&text, Path::new("fallback.toml")).unwrap();
    let running = pgsluice::app::start(c).await.unwrap();
    let port = running.addr(PoolMode::Transaction).unwrap().port();
    let url = |db: &str| {
        format!(
            "host=127.0.0.1 port={port} user={} password={} dbname={db}",
            AGENT_MD5.0, AGENT_MD5.1
        )
    };
    let code = |r: Result<tokio_postgres::Client, tokio_postgres::Error>| async move {
        match r {
            Err(e) => sqlstate(&e),
            Ok(c) => match c.batch_execute("SELECT 1").await {
                Ok(()) => "ok".to_owned(),
                Err(e) => sqlstate(&e),
            },
        }
    };
    assert_eq!(code(connect(&url("postgres")).await).await, "ok");
    // `postgres` and 999 more names fill the bound of 1000.
    for i in 0..999 {
        let got = code(connect(&url(&format!("no_such_{i}"))).await).await;
        assert_eq!(got, "3D000", "name {i}");
    }
    let e = connect(&url("one_too_many")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("list it in [[databases]]"), "{message}");
    assert_eq!(code(connect(&url("postgres")).await).await, "ok");
    assert_eq!(code(connect(&url("no_such_5")).await).await, "3D000");
    running.shutdown_fast().await;
}

/// With auth_query, a user not in [[users]] is looked up before it has proved anything: never
/// in a database only the fallback stands for (it would make a pool per name an anonymous
/// client invents), only where auth_dbname says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_makes_no_pool_for_a_fallback_name() {
    let pg = start_postgres();
    let text = config_text(&pg, &format!("auth_user = \"{}\"", ADMIN.0), "")
        + &format!(
            "\n[[databases]]\nname = \"*\"\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        );
    let c = Config::parse(&text, Path::new("fallback.toml")).unwrap();
    let running = pgsluice::app::start(c).await.unwrap();
    let port = running.addr(PoolMode::Session).unwrap().port();
    for i in 0..5 {
        let url =
            format!("host=127.0.0.1 port={port} user=nobody_{i} password=x dbname=invented_{i}");
        let e = connect(&url).await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{e}");
    }
    let console = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=pgsluice",
        ADMIN.0, ADMIN.1
    );
    let (ok, pools, err) = psql(&pg, &console, &["-c", "SHOW POOLS"]);
    assert!(ok, "{err}");
    assert!(!pools.contains("invented_"), "{pools}");
    running.shutdown_fast().await;
}
