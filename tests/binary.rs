//! The `pgsluice` binary as an operator runs it: RELOAD from the admin console changes the log
//! level of the running process, SIGHUP reloads too, and SHUTDOWN stops accepting, lets the connected client
//! finish, and exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_log_level_and_shutdown_exits() {
    let pg = start_postgres();
    let session = pgsluice::devdb::free_port().unwrap();
    let txn = pgsluice::devdb::free_port().unwrap();
    let text = config_text(&pg, "log_level = \"warn\"", "pool_size = 2")
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{session}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{txn}"), 1);
    let dir = std::env::temp_dir().join(format!("pgsluice-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
    let url = |user: (&str, &str), db: &str| {
        format!(
            "host=127.0.0.1 port={session} user={} password={} dbname={db}",
            user.0, user.1
        )
    };
    // Up: connect once it listens.
    let start = Instant::now();
    let c = loop {
        match connect(&url(AGENT, "app")).await {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("pgsluice did not start: {e}"),
        }
    };
    // At warn, a login logs nothing.
    assert!(
        !wait_for(&log, "client logged in", Duration::from_millis(500)),
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
        wait_for(&log, "client logged in", Duration::from_secs(5)),
        "RELOAD to log_level info must show logins"
    );

    // SIGHUP reloads as RELOAD does, and drops nobody.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    assert!(
        wait_for(&log, "configuration reloaded", Duration::from_secs(5)),
        "SIGHUP must reload the configuration"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pgsluice did not exit after SHUTDOWN"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
