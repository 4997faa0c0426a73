//! Upstreams named by host name, against real PostgreSQL through the real binary: a name with
//! several addresses is several servers (each with its own health and circuit), and a name
//! looked up again after `dns_max_ttl` follows its new addresses, retiring the connections
//! to the old ones. The binary runs under nss_wrapper (Debian's libnss-wrapper, installed by
//! .ci/run), which answers getaddrinfo from a hosts file the test writes.

mod support;

use pgsluice::devdb::{DevDb, free_port};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::Client;

/// The binary, killed when the test ends however it ends.
struct Pgsluice(Child);

impl Drop for Pgsluice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rewrites the hosts file nss_wrapper reads: it notices a change by the file's mtime, in
/// whole seconds, so a rewrite waits for the next second.
fn hosts(path: &Path, lines: &str) {
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(path, lines).unwrap();
}

fn start(dir: &Path, pg: &DevDb, txn: u16, session: u16) -> Pgsluice {
    let config = format!(
        r#"[general]
dns_max_ttl = 1
dns_nxdomain_ttl = 1
health_check_interval = 0.2
circuit_failures = 2

[[listeners]]
addr = "127.0.0.1:{session}"
mode = "session"

[[listeners]]
addr = "127.0.0.1:{txn}"
mode = "transaction"

[admin]
users = ["pgsluice_admin"]

[[databases]]
name = "app"
dbname = "appdb"
pool_size = 4
upstreams = [{{ host = "pg.test", port = {port} }}]

[[databases]]
name = "lost"
dbname = "appdb"
upstreams = [{{ host = "nowhere.test", port = {port} }}]

[[users]]
name = "agent"
password = "agent-pw"
server_user = "{SCRAM_ROLE}"
server_password = "{ROLE_PASSWORD}"

[[users]]
name = "pgsluice_admin"
password = "admin-pw"
"#,
        port = pg.port
    );
    let file = dir.join("pgsluice.toml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("--config")
        .arg(&file)
        .env("LD_PRELOAD", "libnss_wrapper.so")
        .env("NSS_WRAPPER_HOSTS", dir.join("hosts"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Pgsluice(child)
}

async fn agent(txn: u16, db: &str) -> Result<Client, tokio_postgres::Error> {
    connect(&format!(
        "host=127.0.0.1 port={txn} user=agent password=agent-pw dbname={db}"
    ))
    .await
}

/// SHOW UPSTREAMS rows by address.
fn upstreams(pg: &DevDb, session: u16) -> HashMap<String, HashMap<String, String>> {
    let url = format!(
        "host=127.0.0.1 port={session} user=pgsluice_admin password=admin-pw dbname=pgsluice"
    );
    console_at(pg, &url, "SHOW UPSTREAMS")
        .unwrap()
        .into_iter()
        .map(|r| (r["addr"].clone(), r))
        .collect()
}

/// The server addresses `n` transactions held open at once run on.
async fn addresses(txn: u16, n: usize) -> BTreeSet<String> {
    let mut held = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let c = agent(txn, "app").await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        let addr: String = c
            .query_one("SELECT host(inet_server_addr())", &[])
            .await
            .unwrap()
            .get(0);
        seen.insert(addr);
        held.push(c);
    }
    for c in held {
        c.batch_execute("COMMIT").await.unwrap();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_each_of_its_addresses_and_follows_their_changes() {
    let pg = DevDb::start(
        &["host all all 127.0.0.0/8 md5"],
        &[("listen_addresses", "127.0.0.1,127.0.0.2")],
    )
    .unwrap();
    create_role_and_db(&pg);
    let dir = std::env::temp_dir().join(format!("pgsluice-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hosts");
    // Three addresses: the server listens on two; nothing listens on 127.0.0.3.
    std::fs::write(
        &file,
        "127.0.0.1 pg.test\n127.0.0.2 pg.test\n127.0.0.3 pg.test\n",
    )
    .unwrap();
    let (txn, session) = (free_port().unwrap(), free_port().unwrap());
    let _proxy = start(&dir, &pg, txn, session);
    let up = Instant::now();
    while agent(txn, "app").await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "pgsluice did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Servers spread over the addresses that answer; the dead one fails alone.
    let seen = addresses(txn, 4).await;
    assert_eq!(
        seen,
        BTreeSet::from(["127.0.0.1".into(), "127.0.0.2".into()])
    );
    let rows = upstreams(&pg, session);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let dead = &rows["127.0.0.3"];
    assert_eq!(dead["host"], "pg.test");
    assert!(
        dead["last_error"].contains("refused"),
        "the dead address's own error: {dead:?}"
    );
    assert_eq!(rows["127.0.0.1"]["last_error"], "", "{rows:?}");

    // The name moves to one address: after dns_max_ttl every transaction runs there, the
    // idle servers at the old addresses retired.
    hosts(&file, "127.0.0.2 pg.test\n");
    assert!(
        eventually(Duration::from_secs(10), || upstreams(&pg, session).len()
            == 1)
        .await,
        "the name was not looked up again: {:?}",
        upstreams(&pg, session)
    );
    assert_eq!(
        addresses(txn, 4).await,
        BTreeSet::from(["127.0.0.2".into()])
    );

    // A name that stops resolving keeps the addresses it had.
    hosts(&file, "127.0.0.9 other.test\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        addresses(txn, 2).await,
        BTreeSet::from(["127.0.0.2".into()])
    );

    // A name that never resolved: a clear error at once, naming the lookup.
    let started = Instant::now();
    let e = match agent(txn, "lost").await {
        Ok(c) => c.batch_execute("SELECT 1").await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap();
    assert!(
        message.contains("nowhere.test (host name lookup failed"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
