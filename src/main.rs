//! The `pgsluice` command: parses arguments, sets up logging, and calls into the library.

use clap::{Parser, Subcommand};
use pgsluice::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

// jemalloc: measured against glibc's malloc in docs/benchmarks.md (memory per idle client,
// CPU per transaction and per connection).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. Background threads return freed pages to the
/// system after the decay time (10 s): without them the purge runs only on allocation
/// activity, so the memory parked clients gave back (their tasks and relays) stayed resident
/// in a quiet process (docs/benchmarks.md). `_RJEM_MALLOC_CONF` still overrides this.
// Linux only: jemalloc has no background threads on macOS, and the option would stop it.
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

/// `--version`: the release, the commit it was built from, and the build's features.
#[cfg(feature = "jemalloc")]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PGSLUICE_COMMIT"),
    "; features: jemalloc)"
);
#[cfg(not(feature = "jemalloc"))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PGSLUICE_COMMIT"),
    "; features: system allocator)"
);

#[derive(Parser)]
#[command(
    name = "pgsluice",
    version = LONG_VERSION,
    about = "PostgreSQL pooling proxy for AI agents",
    after_help = "Examples:
  pgsluice demo                                  a throwaway PostgreSQL with pgsluice in front
  pgsluice check-config pgsluice.toml            validate a file (file, line and key of mistakes)
  pgsluice --config pgsluice.toml                run it (SIGHUP reloads, SIGTERM drains)
  pgsluice import-pgbouncer pgbouncer.ini userlist.txt > pgsluice.toml

Docs: README.md and docs/ (getting-started.md, configuration.md, troubleshooting.md)."
)]
struct Cli {
    /// Configuration file (TOML) to run with.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log format: "text" or "json" (default: text on a terminal, json otherwise).
    #[arg(long)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration file and exit (non-zero, naming file, line and key, if
    /// invalid); warnings about risky settings go to stderr.
    #[command(after_help = "Examples:
  pgsluice check-config pgsluice.toml
  AGENT_PASSWORD=x pgsluice check-config pgsluice.toml   (a file using ${AGENT_PASSWORD})")]
    CheckConfig { file: PathBuf },
    /// Install the sealed-claims schema (sql/pgsluice.sql) and the seal key derived from the
    /// configuration in a database, then warn about mapped roles that could escape RLS.
    /// Idempotent. The URL is a database owner's (libpq form, postgres://...).
    #[command(after_help = "Example:
  pgsluice install-sql --config pgsluice.toml --database-url postgres://owner@db:5432/app")]
    InstallSql {
        #[arg(long = "config")]
        file: PathBuf,
        #[arg(long)]
        database_url: String,
    },
    /// Serve MCP to one local agent over stdin/stdout (desktop clients start this as a
    /// subprocess). The agent's token comes from PGSLUICE_API_KEY or PGSLUICE_TOKEN.
    #[command(after_help = "Example (a desktop client's MCP server entry runs this):
  PGSLUICE_API_KEY=... pgsluice mcp --stdio --config pgsluice.toml")]
    Mcp {
        /// Serve on stdin/stdout (the only mode: HTTP is `[mcp] enabled` on `[http]`).
        #[arg(long)]
        stdio: bool,
        #[arg(long = "config")]
        file: PathBuf,
    },
    /// Zero-downtime upgrade: start this binary with the running pgsluice's --config; it takes
    /// the listening sockets over from the running one (no connection refused), which then
    /// drains as on SIGTERM. See docs/operations.md.
    #[command(after_help = "Example (after installing the new binary):
  pgsluice --config /etc/pgsluice/pgsluice.toml upgrade")]
    Upgrade,
    /// Exit 0 when the running pgsluice answers GET /health with 200 (a container's
    /// HEALTHCHECK: the image has no curl). The address: --addr, else `[http] addr` of --config.
    #[command(after_help = "Examples:
  pgsluice healthcheck --addr 127.0.0.1:9930
  pgsluice --config pgsluice.toml healthcheck")]
    Healthcheck {
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
    /// Translate a PgBouncer configuration (pgbouncer.ini, and its auth_file or the
    /// userlist given) into pgsluice's TOML, on stdout or --output; each setting that does
    /// not carry over is reported on stderr with the reason. See docs/from-pgbouncer.md.
    #[command(after_help = "Examples:
  pgsluice import-pgbouncer /etc/pgbouncer/pgbouncer.ini > pgsluice.toml
  pgsluice import-pgbouncer pgbouncer.ini userlist.txt --output pgsluice.toml
  pgsluice check-config pgsluice.toml")]
    ImportPgbouncer {
        ini: PathBuf,
        userlist: Option<PathBuf>,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL and pgsluice in front of it; print URLs for psql.
    #[command(after_help = "Examples:
  pgsluice demo
  pgsluice demo --session-port 15432 --transaction-port 16543 --http-port 19930")]
    Demo {
        #[arg(long, default_value_t = 6432)]
        session_port: u16,
        #[arg(long, default_value_t = 6543)]
        transaction_port: u16,
        /// The HTTP endpoint's port (/metrics, /health).
        #[arg(long, default_value_t = 9930)]
        http_port: u16,
    },
}

/// The worker threads `worker_threads` asks for; 0 (the default) is one per core the
/// process may use, except on one or two cores: there the proxy shares the machine with
/// PostgreSQL or its clients, and one worker costs less CPU per transaction and per login
/// for the same transactions per second (docs/benchmarks.md).
fn worker_count(configured: usize) -> usize {
    match configured {
        0 => match std::thread::available_parallelism().map_or(1, usize::from) {
            n if n <= 2 => 1,
            n => n,
        },
        n => n,
    }
}

/// Says how connections are run: how many worker threads, and which scheduler.
fn log_runtime(workers: usize) {
    // As the runtime itself says, not as it was asked for.
    let scheduler = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    };
    tracing::info!(workers, scheduler, "runtime started");
}

/// Logs to stderr with a filter RELOAD can change: PGSLUICE_LOG if set, else `level` (the
/// config's log_level). Returns what changes the filter later.
fn init_logging(format: Option<&str>, level: &str) -> pgsluice::app::LogReloader {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = EnvFilter::try_from_env("PGSLUICE_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .event_format(pgsluice::log::Json)
                    .fmt_fields(pgsluice::log::JsonFields)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                fmt::layer()
                    .fmt_fields(pgsluice::log::TextFields)
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    Box::new(move |directives: &str| {
        let f = EnvFilter::try_new(directives).map_err(|e| format!("log_level: {e}"))?;
        handle.reload(f).map_err(|e| format!("log_level: {e}"))
    })
}

async fn install_sql(file: &std::path::Path, url: &str) -> Result<(), String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let warnings = pgsluice::install_sql::run(&config, url).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("pgsluice schema installed ({} warning(s))", warnings.len());
    Ok(())
}

fn raise_fd_limit() {
    // Each client and server connection is a descriptor; 10,000 clients need more than the
    // usual soft limit of 1024. Raise the soft limit to the hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// GET /health on `addr` (or the configuration's `[http] addr`, a wildcard as loopback).
fn healthcheck(addr: Option<std::net::SocketAddr>, config: Option<&std::path::Path>) -> ExitCode {
    use std::io::{Read, Write};
    let addr = match (addr, config.map(Config::load)) {
        (Some(a), _) => a,
        (None, Some(Ok(c))) => match c.http {
            Some(h) if h.addr.ip().is_unspecified() => {
                let lo: std::net::IpAddr = if h.addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                (lo, h.addr.port()).into()
            }
            Some(h) => h.addr,
            None => {
                eprintln!("pgsluice healthcheck: the configuration has no [http] addr");
                return ExitCode::FAILURE;
            }
        },
        (None, Some(Err(e))) => {
            eprintln!("pgsluice healthcheck: {e}");
            return ExitCode::FAILURE;
        }
        (None, None) => {
            eprintln!("pgsluice healthcheck: give --addr or --config");
            return ExitCode::FAILURE;
        }
    };
    let answer = (|| -> std::io::Result<String> {
        let t = std::time::Duration::from_secs(3);
        let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.") && a.get(9..12) == Some("200") => ExitCode::SUCCESS,
        Ok(a) => {
            eprintln!(
                "pgsluice healthcheck: {addr}: {}",
                a.lines().next().unwrap_or("")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgsluice healthcheck: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Healthcheck { addr }) = &cli.command {
        return healthcheck(*addr, cli.config.as_deref());
    }
    if let Some(Cmd::ImportPgbouncer {
        ini,
        userlist,
        output,
    }) = &cli.command
    {
        return import_pgbouncer(ini, userlist.as_deref(), output.as_deref());
    }
    if let Some(Cmd::CheckConfig { file }) = &cli.command {
        return match Config::load(file) {
            Ok(config) => {
                let source = std::fs::read_to_string(file).unwrap_or_default();
                let warnings = pgsluice::config::risks::warnings(&config, &source);
                for w in &warnings {
                    eprintln!(
                        "{}:{}: warning: key `{}`: {}",
                        file.display(),
                        w.line,
                        w.key,
                        w.message
                    );
                }
                match warnings.len() {
                    0 => println!("{}: ok", file.display()),
                    n => println!("{}: ok, {n} warning(s)", file.display()),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    // The configuration first, so its log_level sets up logging.
    let config = match (&cli.command, &cli.config) {
        (None | Some(Cmd::Upgrade), Some(path)) | (Some(Cmd::Mcp { file: path, .. }), _) => {
            match Config::load(path) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("pgsluice: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let level = config
        .as_ref()
        .map_or("info", |c| c.general.log_level.as_str())
        .to_owned();
    let log_reloader = init_logging(cli.log_format.as_deref(), &level);
    raise_fd_limit();
    let workers = worker_count(config.as_ref().map_or(0, |c| c.general.worker_threads));
    // One worker: tokio's current-thread scheduler on this thread, which has no work
    // stealing, no wake-ups between threads and no per-batch bookkeeping (PgBouncer's model;
    // docs/benchmarks.md measures both).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Demo {
                session_port,
                transaction_port,
                http_port,
            }) => {
                let ports = pgsluice::demo::Ports {
                    session: session_port,
                    transaction: transaction_port,
                    http: http_port,
                };
                pgsluice::demo::run(ports).await
            }
            Some(Cmd::CheckConfig { .. } | Cmd::ImportPgbouncer { .. }) => Ok(()),
            Some(Cmd::Mcp { stdio, .. }) => {
                if !stdio {
                    return Err("pgsluice mcp serves on stdio only (--stdio); over HTTP, set [mcp] enabled = true".into());
                }
                let Some(config) = config else {
                    return Err("no configuration".into());
                };
                pgsluice::mcp::stdio::run(config).await
            }
            Some(Cmd::InstallSql { file, database_url }) => install_sql(&file, &database_url).await,
            Some(Cmd::Healthcheck { .. }) => Ok(()),
            None => {
                log_runtime(workers);
                serve(config, log_reloader, false).await
            }
            Some(Cmd::Upgrade) => {
                log_runtime(workers);
                serve(config, log_reloader, true).await
            }
        }
    });
    // Tasks still running are dropped; a blocking one (a PBKDF2 derivation, a resolver
    // call) gets a moment, not a say in whether the process exits.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn import_pgbouncer(
    ini: &std::path::Path,
    userlist: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let imported = match pgsluice::import_pgbouncer::import(ini, userlist) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgsluice import-pgbouncer: {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in &imported.notes {
        eprintln!("not carried over: {n}");
    }
    let written = match output {
        Some(path) => {
            std::fs::write(path, &imported.toml).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            print!("{}", imported.toml);
            Ok(())
        }
    };
    match written {
        Ok(()) => {
            eprintln!("next: pgsluice check-config on the result, then set the ${{NAME}}s it uses");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgsluice import-pgbouncer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy until a signal or SHUTDOWN; `take_over`: with the listening sockets of the
/// pgsluice running the same configuration file.
async fn serve(
    config: Option<pgsluice::config::Config>,
    log_reloader: pgsluice::app::LogReloader,
    take_over: bool,
) -> Result<(), String> {
    use pgsluice::app::upgrade;
    let Some(config) = config else {
        return Err(
            "no configuration: run `pgsluice --config FILE` (or `pgsluice demo`)".to_owned(),
        );
    };
    let path = config.source.as_deref().map(upgrade::socket_path);
    let mut takeover = match (&path, take_over) {
        (Some(p), true) => {
            let p = p.clone();
            let t = tokio::task::spawn_blocking(move || upgrade::take_over(&p))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Some(t)
        }
        (None, true) => return Err("pgsluice upgrade needs --config FILE".into()),
        _ => None,
    };
    let mut inherited = Vec::new();
    let mut http = None;
    if let Some(t) = &mut takeover {
        for (addr, fd) in std::mem::take(&mut t.sockets) {
            let bound = pgsluice::net::listener::Bound::adopt(fd, &addr);
            inherited.push((addr, bound.map_err(|e| e.to_string())?));
        }
        http = t
            .http
            .take()
            .map(|(a, fd)| (a, std::net::TcpListener::from(fd)));
    }
    let running = pgsluice::app::start_with(config, inherited, http)
        .await
        .map_err(|e| e.to_string())?;
    running.app.set_log_reloader(log_reloader);
    reload_on_sighup(running.app.clone());
    if let Some(t) = takeover {
        // Once READY is sent the old process drains: a lost BYE is no reason to stop serving.
        match tokio::task::spawn_blocking(move || t.ready()).await {
            Ok(Ok(())) => tracing::info!("upgrade: serving on the listeners taken over"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade: no BYE from the old process; serving on the listeners taken over")
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(p) = path {
        tokio::spawn(upgrade::serve(running.app.clone(), p));
    }
    let fast = tokio::select! {
        fast = wait_for_signal() => fast,
        _ = running.app.shutdown_requested() => false,
    };
    exit_if_stuck(
        running
            .app
            .config
            .load()
            .general
            .shutdown_timeout
            .duration(),
    );
    if fast {
        tracing::info!("SIGINT: fast shutdown, closing every client now");
        running.shutdown_fast().await;
    } else {
        tracing::info!("shutting down: transactions in flight finish (up to shutdown_timeout)");
        running.shutdown().await;
    }
    Ok(())
}

/// A shutdown takes shutdown_timeout and a few seconds to close everyone; past that the
/// process exits anyway, so a stuck task cannot keep it (and an orchestrator's restart)
/// waiting.
fn exit_if_stuck(limit: Duration) {
    let limit = limit + Duration::from_secs(5);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("pgsluice: shutdown did not finish within shutdown_timeout + 5 s; exiting");
        std::process::exit(1);
    });
}

/// SIGHUP (`kill -HUP`, `systemctl reload`) reloads the configuration as the console's
/// RELOAD does; without a handler it would end the process.
fn reload_on_sighup(app: std::sync::Arc<pgsluice::app::App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP: reload with the console's RELOAD");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // reload() logs the outcome; a failed one keeps the running configuration.
            let _ = app.reload();
        }
    });
}

/// SIGTERM (graceful) or SIGINT (fast: true).
async fn wait_for_signal() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return true;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => true,
        _ = term.recv() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::worker_count;

    #[test]
    fn workers_default_to_the_cores_but_one_on_small_machines() {
        assert_eq!(worker_count(1), 1);
        assert_eq!(worker_count(3), 3);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(worker_count(0), if cores <= 2 { 1 } else { cores });
    }
}
