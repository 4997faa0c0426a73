//! A throwaway PostgreSQL server: a fresh data directory (as the `postgres` OS user when
//! running as root, since initdb refuses root), started on a free port, removed on drop.
//! The directory is a copy of one `initdb` run per machine and PostgreSQL build, kept in the
//! temp directory (copying takes a tenth of the time of initdb, which dominated the test
//! suite). Used by `pgsluice demo` and by the integration tests; nothing here is a stand-in
//! for PostgreSQL.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Changes when the template's initdb arguments do, so that an old template is not reused.
const TEMPLATE_VERSION: u32 = 1;

pub struct DevDb {
    pub bindir: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    /// Directory holding the unix socket `.s.PGSQL.<port>`.
    pub socket_dir: PathBuf,
    child: Option<Child>,
    run_as: Option<(u32, u32)>,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Finds PostgreSQL's server binaries: $PG_BINDIR, `pg_config --bindir`, or the newest
/// /usr/lib/postgresql/*/bin.
pub fn find_bindir() -> io::Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return if has_server(&d) {
            Ok(d)
        } else {
            Err(err(format!(
                "PG_BINDIR={} has no initdb/postgres",
                d.display()
            )))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&d) {
            return Ok(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d).ok_or_else(|| {
        err("PostgreSQL server binaries not found: `./dev demo` installs them (or: apt-get install postgresql, brew install postgresql@15), or set PG_BINDIR to their directory")
    })
}

/// A port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn postgres_user() -> io::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            let uid = f[2]
                .parse()
                .map_err(|_| err("bad uid for postgres in /etc/passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| err("bad gid for postgres in /etc/passwd"))?;
            return Ok(Some((uid, gid)));
        }
    }
    Err(err(
        "running as root and there is no `postgres` OS user to run initdb as",
    ))
}

impl DevDb {
    /// initdb and start. `hba` lines are written to pg_hba.conf after a trust line for
    /// local (unix socket) connections, so the superuser can always set things up.
    pub fn start(hba: &[&str], settings: &[(&str, &str)]) -> io::Result<DevDb> {
        Self::start_with_files(hba, settings, &[])
    }

    /// Like [`DevDb::start`], with `files` (name, contents) written into the data directory
    /// first, readable by the server only (TLS keys must be 0600: `ssl_key_file`).
    pub fn start_with_files(
        hba: &[&str],
        settings: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> io::Result<DevDb> {
        let mut db = DevDb::unstarted(find_bindir()?, postgres_user()?)?;
        let dir = db.dir.clone();
        let data = dir.join("data");
        let template = db.template()?;
        let out = db
            .run_as_owner("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "copying the initdb template {} failed: {}",
                template.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut hba_text = String::from("local all all trust\n");
        for l in hba {
            hba_text.push_str(l);
            hba_text.push('\n');
        }
        std::fs::write(data.join("pg_hba.conf"), hba_text)?;
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1,::1'\nmax_connections = 400\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 64MB\nlog_min_messages = warning\n",
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        std::fs::write(data.join("postgresql.auto.conf"), conf)?;
        for (name, contents) in files {
            let path = data.join(name);
            std::fs::write(&path, contents)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        if let Some((uid, gid)) = db.run_as {
            let names = files.iter().map(|(n, _)| *n);
            for f in ["pg_hba.conf", "postgresql.auto.conf"]
                .into_iter()
                .chain(names)
            {
                std::os::unix::fs::chown(data.join(f), Some(uid), Some(gid))?;
            }
        }
        for attempt in 0..5 {
            db.port = free_port()?;
            match db.launch() {
                Ok(()) => return Ok(db),
                Err(e) if attempt == 4 => return Err(e),
                Err(_) => continue,
            }
        }
        Err(err("could not start PostgreSQL"))
    }

    /// A streaming hot standby of `primary` (pg_basebackup -R over its unix socket; the
    /// primary's pg_hba.conf needs `local replication all trust`), started on a port of its
    /// own.
    pub fn standby_of(primary: &DevDb) -> io::Result<DevDb> {
        let mut db = DevDb::unstarted(primary.bindir.clone(), primary.run_as)?;
        let dir = db.dir.clone();
        let out = db
            .command("pg_basebackup")
            .arg("-h")
            .arg(&primary.socket_dir)
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(dir.join("data"))
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        db.port = free_port()?;
        db.launch()?;
        Ok(db)
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) -> io::Result<()> {
        self.psql("SELECT pg_promote(true, 30)")?;
        Ok(())
    }

    /// A server not yet made: its private scratch directory (owned by `run_as`), no port.
    fn unstarted(bindir: PathBuf, run_as: Option<(u32, u32)>) -> io::Result<DevDb> {
        let dir = std::env::temp_dir().join(format!(
            "pgsluice-pg-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(DevDb {
            bindir,
            dir: dir.clone(),
            port: 0,
            socket_dir: dir,
            child: None,
            run_as,
        })
    }

    fn command(&self, program: &str) -> Command {
        self.run_as_owner(self.bindir.join(program))
    }

    /// `program` as the owner of the data directory.
    fn run_as_owner(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// The initdb'd data directory of this PostgreSQL build, made once per machine: built
    /// under a unique name and renamed into place, so concurrent test processes never see
    /// half of one (the loser of a race removes its own).
    fn template(&self) -> io::Result<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // SAFETY: geteuid has no preconditions. Two users of one machine get a template each
        // (each is readable by its owner only).
        let euid = unsafe { libc::geteuid() };
        (TEMPLATE_VERSION, &self.bindir, self.run_as, euid).hash(&mut h);
        let path = std::env::temp_dir().join(format!("pgsluice-initdb-{:x}", h.finish()));
        if path.join("PG_VERSION").is_file() {
            return Ok(path);
        }
        let building = self.dir.join("template");
        let out = self
            .command("initdb")
            .args(["-D"])
            .arg(&building)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        match std::fs::rename(&building, &path) {
            Ok(()) => Ok(path),
            // Another process won the race; its template is as good.
            Err(_) if path.join("PG_VERSION").is_file() => {
                let _ = std::fs::remove_dir_all(&building);
                Ok(path)
            }
            Err(e) => Err(err(format!("keeping {}: {e}", path.display()))),
        }
    }

    fn launch(&mut self) -> io::Result<()> {
        let log = std::fs::File::create(self.dir.join("postgres.log"))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.dir.join("postgres.log"), Some(uid), Some(gid))?;
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.socket_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. It makes the server stop if the spawning thread
        // dies without running destructors (a killed test run) instead of leaking it; so
        // start a DevDb from a thread that outlives it, never from a blocking-pool thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(err(format!("postgres exited with {status}: {log}")));
            }
            if self
                .psql_output("postgres", "select 1")
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err("PostgreSQL did not become ready within 30 s"))
    }

    fn psql_output(&self, database: &str, sql: &str) -> io::Result<Output> {
        Command::new(self.bindir.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
    }

    /// Runs SQL as the superuser over the unix socket; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        self.psql_in("postgres", sql)
    }

    /// [`DevDb::psql`] in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> io::Result<String> {
        let out = self.psql_output(database, sql)?;
        if !out.status.success() {
            return Err(err(format!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Stops the server (fast shutdown); the data directory stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after `stop`).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for DevDb {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
