//! A real PgBouncer (Debian's `pgbouncer` package, installed by .ci/run) in front of a test
//! PostgreSQL, for upstreams of `kind = "transaction_pooler"`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

fn binary() -> PathBuf {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("pgbouncer must be installed for this test (.ci/run installs Debian's package)")
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode: `databases` is its [databases] section, `users`
    /// its auth_file lines ("name" "password").
    pub fn start(databases: &str, users: &str) -> PgBouncer {
        Self::start_binary(&binary(), databases, users, "")
    }

    /// [`PgBouncer::start`] with another build of PgBouncer and more `[pgbouncer]` settings.
    pub fn start_binary(
        binary: &std::path::Path,
        databases: &str,
        users: &str,
        extra: &str,
    ) -> PgBouncer {
        let dir = std::env::temp_dir().join(format!(
            "pgsluice-pgbouncer-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = pgsluice::devdb::free_port().unwrap();
        let ini = format!(
            "[databases]\n{databases}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = md5\nauth_file = {dir}/users.txt\npool_mode = transaction\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
             ignore_startup_parameters = extra_float_digits,options\n{extra}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("users.txt"), users).unwrap();
        let mut cmd = Command::new(binary);
        if let Some((uid, gid)) = pgsluice::devdb::postgres_user().unwrap() {
            // PgBouncer will not run as root.
            for f in ["", "pgbouncer.ini", "users.txt"] {
                std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
            }
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = PgBouncer { port, dir, child };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pgbouncer did not start: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }
}

/// PgBouncer 1.25.2, the release users compare against: `PGBOUNCER_1_25`, or where
/// `./dev test` and benches/lib.sh build it (../shared/peers/build-pgbouncer.sh).
pub fn release_1_25() -> Option<PathBuf> {
    std::env::var_os("PGBOUNCER_1_25")
        .map(PathBuf::from)
        .or_else(|| {
            Some(PathBuf::from(
                "/var/tmp/pgsluice-bench/pgbouncer-1.25.2/bin/pgbouncer",
            ))
        })
        .filter(|p| p.exists())
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
