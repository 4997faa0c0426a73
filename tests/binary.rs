//! The `pgsluice` binary as an operator runs it: RELOAD from the admin console changes the log
//! level of the running process, SIGHUP reloads too, and SHUTDOWN stops accepting, lets the connected client
//! finish, and exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Collects the child's stderr lines on a thread.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; false after `limit`.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The binary running a config for `pg` (with `general` keys) on fixed ports.
struct Launched {
    child: std::process::Child,
    log: mpsc::Receiver<String>,
    session: u16,
    txn: u16,
    file: std::path::PathBuf,
    text: String,
    dir: std::path::PathBuf,
}

impl Launched {
    fn start(pg: &pgsluice::devdb::DevDb, general: &str, name: &str) -> Launched {
        Self::start_with(pg, general, name, |_| String::new())
    }

    /// [`Launched::start`] with `extra(dir)` appended to the file (more tables).
    fn start_with(
        pg: &pgsluice::devdb::DevDb,
        general: &str,
        name: &str,
        extra: impl Fn(&std::path::Path) -> String,
    ) -> Launched {
        let session = pgsluice::devdb::free_port().unwrap();
        let txn = pgsluice::devdb::free_port().unwrap();
        let text = config_text(pg, general, "pool_size = 2")
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{session}"), 1)
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{txn}"), 1);
        let dir = std::env::temp_dir().join(format!("pgsluice-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = text + &extra(&dir);
        let file = dir.join("pgsluice.toml");
        std::fs::write(&file, &text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("--config")
            .arg(&file)
            .args(["--log-format", "json"])
            .env_remove("PGSLUICE_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = lines(&mut child);
        Launched {
            child,
            log,
            session,
            txn,
            file,
            text,
            dir,
        }
    }

    /// A client once the binary listens.
    async fn client(&self, port: u16) -> tokio_postgres::Client {
        let start = Instant::now();
        loop {
            let url = format!(
                "host=127.0.0.1 port={port} user={} password={} dbname=app",
                AGENT.0, AGENT.1
            );
            match connect(&url).await {
                Ok(c) => return c,
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("pgsluice did not start: {e}"),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Its exit status, waiting at most `limit`; None if it still runs then.
    fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A child process killed and reaped when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_log_level_and_shutdown_exits() {
    let pg = start_postgres();
    let mut bin = Launched::start(&pg, "log_level = \"warn\"", "bin");
    let (session, file, text) = (bin.session, bin.file.clone(), bin.text.clone());
    let url = |user: (&str, &str), db: &str| {
        format!(
            "host=127.0.0.1 port={session} user={} password={} dbname={db}",
            user.0, user.1
        )
    };
    let c = bin.client(session).await;
    // At warn, a login logs nothing.
    assert!(
        !wait_for(&bin.log, "client logged in", Duration::from_millis(500)),
        "info lines at log_level warn"
    );

    std::fs::write(
        &file,
        text.replace("log_level = \"warn\"", "log_level = \"info\""),
    )
    .unwrap();
    let (ok, _, err) = psql(&pg, &url(ADMIN, "pgsluice"), &["-c", "RELOAD"]);
    assert!(ok, "{err}");
    let _second = connect(&url(AGENT, "app")).await.unwrap();
    assert!(
        wait_for(&bin.log, "client logged in", Duration::from_secs(5)),
        "RELOAD to log_level info must show logins"
    );

    // SIGHUP reloads as RELOAD does, and drops nobody.
    bin.signal(libc::SIGHUP);
    assert!(
        wait_for(&bin.log, "configuration reloaded", Duration::from_secs(5)),
        "SIGHUP must reload the configuration"
    );
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );
    let v: i32 = c.query_one("SELECT 4", &[]).await.unwrap().get(0);
    assert_eq!(v, 4);

    // SHUTDOWN: no new connections, the connected client keeps working, then exit 0.
    let (ok, _, err) = psql(&pg, &url(ADMIN, "pgsluice"), &["-c", "SHUTDOWN"]);
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        connect(&url(AGENT, "app")).await.is_err(),
        "SHUTDOWN stops accepting"
    );
    let v: i32 = c.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    drop(c);
    drop(_second);
    let status = bin
        .exit_within(Duration::from_secs(20))
        .expect("pgsluice did not exit in 20 s");
    assert!(status.success(), "{status:?}");
}

/// Rows of `ops` as PostgreSQL has them (straight to the server, not through pgsluice).
async fn stored(pg: &pgsluice::devdb::DevDb) -> i64 {
    let c = connect(&format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} password={ROLE_PASSWORD} dbname=appdb",
        pg.port
    ))
    .await
    .unwrap();
    c.query_one("SELECT count(*) FROM ops", &[])
        .await
        .unwrap()
        .get(0)
}

/// A transaction-mode client with a transaction open (one row inserted into `ops`), and a
/// session-mode client holding its server.
async fn in_flight(bin: &Launched) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let writer = bin.client(bin.txn).await;
    writer
        .batch_execute("CREATE TABLE ops (n int)")
        .await
        .unwrap();
    let session = bin.client(bin.session).await;
    session.batch_execute("SELECT 1").await.unwrap();
    writer
        .batch_execute("BEGIN; INSERT INTO ops VALUES (1)")
        .await
        .unwrap();
    (writer, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_in_flight_commit_and_closes_everyone_else() {
    let pg = start_postgres();
    let mut bin = Launched::start(&pg, "shutdown_timeout = 3", "term");
    // pool_size 2: the idle client runs its statement before the other two hold both servers.
    let idle = bin.client(bin.txn).await;
    idle.batch_execute("SELECT 1").await.unwrap();
    let (writer, session) = in_flight(&bin).await;

    let started = Instant::now();
    bin.signal(libc::SIGTERM);
    // Between transactions: told and closed at once.
    let e = loop {
        match idle.batch_execute("SELECT 1").await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "the idle client stays"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(idle.is_closed() || sqlstate(&e) == "57P01", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only at shutdown_timeout"
    );
    // No new clients.
    assert!(
        connect(&format!(
            "host=127.0.0.1 port={} user={} password={} dbname=app",
            bin.txn, AGENT.0, AGENT.1
        ))
        .await
        .is_err()
    );
    // The transaction in flight commits; then its client is closed too.
    writer
        .batch_execute("INSERT INTO ops VALUES (2); COMMIT")
        .await
        .unwrap();
    assert_eq!(stored(&pg).await, 2);
    // A session-mode client keeps its session until shutdown_timeout.
    session.batch_execute("SELECT 2").await.unwrap();
    let status = bin
        .exit_within(Duration::from_secs(6))
        .expect("pgsluice did not exit in 6 s");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "exited before shutdown_timeout with a session open"
    );
    assert!(session.batch_execute("SELECT 3").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_everyone_at_once_and_rolls_back() {
    let pg = start_postgres();
    let mut bin = Launched::start(&pg, "shutdown_timeout = 30", "int");
    let (writer, session) = in_flight(&bin).await;
    bin.signal(libc::SIGINT);
    let status = bin
        .exit_within(Duration::from_secs(5))
        .expect("pgsluice did not exit in 5 s");
    assert!(status.success(), "{status:?}");
    assert!(writer.batch_execute("COMMIT").await.is_err());
    assert!(session.batch_execute("SELECT 2").await.is_err());
    assert_eq!(stored(&pg).await, 0, "the open transaction was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_takes_the_listeners_over_and_refuses_no_connection() {
    let pg = start_postgres();
    // With an HTTP endpoint and a unix socket listener: both are handed over too.
    let http = pgsluice::devdb::free_port().unwrap();
    let mut old = Launched::start_with(&pg, "shutdown_timeout = 5", "upgrade", |dir| {
        format!(
            "\n[[listeners]]\naddr = \"{}\"\nmode = \"transaction\"\n\n[http]\naddr = \"127.0.0.1:{http}\"\n",
            dir.join(".s.PGSQL.6543").display()
        )
    });
    let unix = old.dir.join(".s.PGSQL.6543");
    assert!(
        wait_for(&old.log, "waiting for upgrades", Duration::from_secs(20)),
        "the old process does not wait for upgrades"
    );
    let kept = old.client(old.txn).await;
    kept.batch_execute("SELECT 1").await.unwrap();
    // Clients connecting in a loop throughout, as serverless agents do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=app",
        old.txn, AGENT.0, AGENT.1
    );
    let loop_task = {
        let (stop, url) = (stop.clone(), url.clone());
        tokio::spawn(async move {
            let (mut ok, mut refused, mut told) = (0, Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
                let connected = tokio::time::timeout(Duration::from_secs(20), connecting);
                let (c, conn) = match connected.await.expect("connect timed out") {
                    Err(e) => {
                        refused.push(e.to_string());
                        continue;
                    }
                    Ok(pair) => pair,
                };
                let conn = tokio::spawn(conn);
                match c.batch_execute("SELECT 1").await {
                    Ok(()) => ok += 1,
                    // A client idle between its login and its query may be told 57P01 then:
                    // the connection's own result carries it.
                    Err(e) if e.is_closed() => match conn.await {
                        Ok(Err(e)) => told.push(sqlstate(&e)),
                        _ => told.push(format!("closed silently: {e}")),
                    },
                    Err(e) => told.push(sqlstate(&e)),
                }
            }
            (ok, refused, told)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = Reaped(
        Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("--config")
            .arg(&old.file)
            .args(["--log-format", "json", "upgrade"])
            .env_remove("PGSLUICE_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let new_log = lines(&mut new.0);
    // Logins aside (thousands of them), what each process said.
    let logs = |rx: &mpsc::Receiver<String>| {
        let all: Vec<String> = rx.try_iter().collect();
        let rest: Vec<&str> = all
            .iter()
            .filter(|l| !l.contains("client logged in"))
            .map(String::as_str)
            .collect();
        format!("{} lines, logins aside:\n{}", all.len(), rest.join("\n"))
    };
    // The old process lets go and exits after draining (its pooled client closed: 57P01);
    // the new one keeps running.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = old.child.try_wait().unwrap() {
            break s;
        }
        let new_exit = new.0.try_wait().unwrap();
        if new_exit.is_some() || Instant::now() >= deadline {
            panic!(
                "the old process did not exit (the new one: {new_exit:?})\nold:\n{}\nnew:\n{}",
                logs(&old.log),
                logs(&new_log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        wait_for(
            &old.log,
            "the new process accepts on our listeners",
            Duration::from_secs(1)
        ),
        "the old process exited without a handover"
    );
    assert!(status.success(), "{status:?}");
    let e = kept.batch_execute("SELECT 2").await.unwrap_err();
    assert!(kept.is_closed() || sqlstate(&e) == "57P01", "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, refused, told) = loop_task.await.unwrap();
    assert!(refused.is_empty(), "connections refused: {refused:?}");
    assert!(ok > 20, "{ok} connections served");
    assert!(told.iter().all(|c| c == "57P01"), "{told:?}");
    // The new process serves alone now, on every listener the old one had.
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new process is running"
    );
    let over_unix = format!(
        "host={} port=6543 user={} password={} dbname=app",
        old.dir.display(),
        AGENT.0,
        AGENT.1
    );
    assert!(
        unix.exists(),
        "the unix socket file stays for the successor"
    );
    connect(&over_unix)
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    let health = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(["healthcheck", "--addr", &format!("127.0.0.1:{http}")])
        .status()
        .unwrap();
    assert!(health.success(), "the HTTP endpoint was handed over");
}

/// `worker_threads = 1` runs connections on tokio's current-thread scheduler (no worker
/// threads, no wake-ups between them): everything a multi-thread runtime serves still works
/// on it, timers, blocking work (SCRAM verifiers) and the shutdown included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_everything_on_the_current_thread_scheduler() {
    let pg = start_postgres();
    let mut bin = Launched::start(
        &pg,
        "worker_threads = 1\nquery_timeout = 0.5\nshutdown_timeout = 2",
        "one-worker",
    );
    assert!(
        wait_for(
            &bin.log,
            r#""scheduler":"current_thread""#,
            Duration::from_secs(20)
        ),
        "no runtime line for one current-thread worker"
    );
    // Sixteen clients at once on a pool of two, prepared statements (tokio-postgres names
    // each one) and results from PostgreSQL itself.
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let c = bin.client(bin.txn).await;
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            for n in 0..20i64 {
                let row = c
                    .query_one(
                        "SELECT sum(x)::int8 FROM generate_series(1, $1::int8) x",
                        &[&(i * 20 + n)],
                    )
                    .await
                    .unwrap();
                got += row.get::<_, Option<i64>>(0).unwrap_or(0);
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let want: i64 = (0..320i64).map(|k| k * (k + 1) / 2).sum();
    assert_eq!(total, want);
    // A timer: query_timeout cancels a statement that runs too long.
    let c = bin.client(bin.txn).await;
    let started = Instant::now();
    let e = c.batch_execute("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Session mode keeps the session's settings.
    let s = bin.client(bin.session).await;
    s.batch_execute("SET application_name = 'one-worker'")
        .await
        .unwrap();
    let row = s.query_one("SHOW application_name", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "one-worker");
    // SIGTERM: the session client is closed at shutdown_timeout, then the process exits.
    let started = Instant::now();
    bin.signal(libc::SIGTERM);
    let status = bin
        .exit_within(Duration::from_secs(8))
        .expect("pgsluice did not exit in 8 s");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "exited before shutdown_timeout"
    );
    assert!(s.batch_execute("SELECT 1").await.is_err());
}

/// Each server connection a pool opens logs in to PostgreSQL with SCRAM; the PBKDF2 behind
/// it runs once for the role's salt and iteration count, not once per server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_scram_keys_are_derived_once_for_every_server_connection() {
    let pg = start_postgres();
    let http = pgsluice::devdb::free_port().unwrap();
    let bin = Launched::start_with(&pg, "", "scram-keys", |_| {
        format!("\n[http]\naddr = \"127.0.0.1:{http}\"\n")
    });
    drop(bin.client(bin.session).await);
    // Two pools (two database entries for the same role), two servers each: four logins.
    let mut held = Vec::new();
    let mut pids = std::collections::HashSet::new();
    for db in ["app", "app_byname"] {
        for _ in 0..2 {
            let url = format!(
                "host=127.0.0.1 port={} user={} password={} dbname={db}",
                bin.session, AGENT.0, AGENT.1
            );
            let c = connect(&url).await.unwrap();
            let row = c
                .query_one("SELECT pg_backend_pid(), current_user::text", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(1), SCRAM_ROLE);
            pids.insert(row.get::<_, i32>(0));
            held.push(c);
        }
    }
    assert_eq!(pids.len(), 4, "each session client has its own server");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let derived = body
        .lines()
        .find_map(|l| l.strip_prefix("pgsluice_upstream_scram_derivations_total "))
        .unwrap_or_else(|| panic!("no derivation counter in {body}"));
    assert_eq!(derived.trim(), "1", "one PBKDF2 for four server logins");
}
