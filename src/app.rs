//! Application state shared by every task (one `Arc<App>`, no process globals, so a test can
//! run several proxies in one process) and the startup of listeners.

mod listening;
pub mod upgrade;

use crate::auth::Secret;
use crate::auth::scram::{self, Verifier};
use crate::backend::pools::Pools;
use crate::config::{Config, ListenAddr, PoolMode};
use crate::frontend::cancel::Cancels;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

pub struct App {
    pub config: ArcSwap<Config>,
    pub pools: Pools,
    pub metrics: crate::metrics::Metrics,
    pub cancels: Arc<Cancels>,
    /// Logged-in clients (SHOW CLIENTS, KILL_CLIENT).
    pub clients: Arc<crate::stats::clients::Clients>,
    /// Per-fingerprint query statistics (SHOW QUERIES, /queries).
    pub queries: Arc<crate::stats::queries::QueryStats>,
    /// One JSON line per connection event (`[audit]`).
    pub audit: crate::audit::Audit,
    /// Users looked up by auth_query, for auth_cache_ttl.
    pub auth_cache: crate::auth::passthrough::AuthCache,
    /// Per-address limits: open connections, attempt rate, lockouts.
    pub limits: crate::admission::limits::Limits,
    /// Per-identity limits: client connections, servers held, transaction rate.
    pub identities: Arc<crate::admission::identities::Identities>,
    /// Client-facing TLS (certificate reloaded when its files change).
    pub tls: Arc<crate::net::tls::Acceptor>,
    /// The last pg_stat_activity sample of each upstream (SHOW ACTIVITY).
    pub activity: Arc<crate::backend::activity::Activity>,
    /// Connections counted against max_client_conn (logging in or logged in).
    open_clients: AtomicUsize,
    /// The same, per pool mode (session, transaction): for the reserve in `admit_client`.
    open_by_mode: [AtomicUsize; 2],
    conn_ids: AtomicU64,
    /// SCRAM verifiers derived from plaintext passwords, keyed by (user, password).
    verifiers: Arc<DashMap<(String, String), Verifier>>,
    /// Keys for tokens signed by an issuer (`[jwt] jwks_url` or `issuer`).
    pub jwks: crate::identity::jwks::Jwks,
    /// Random per process: seeds decoy SCRAM salts for unknown users.
    pub instance_secret: [u8; 32],
    shutdown: watch::Sender<bool>,
    /// LISTEN connections for transaction-mode clients, one per database.
    notify_hubs: DashMap<Arc<str>, Arc<crate::backend::notify::NotifyHub>>,
    /// Idle transaction-mode clients without a task (`client_park_delay`).
    pub parking: crate::frontend::session::Parking,
    log_reloader: std::sync::OnceLock<LogReloader>,
    /// The listeners open now (RELOAD opens and closes them).
    pub listening: listening::Listening,
    /// Itself, for what RELOAD starts (accept loops hold the App).
    me: std::sync::Weak<App>,
    /// Set with `shutdown`, read once per transaction (an atomic, not the watch's lock).
    draining: std::sync::atomic::AtomicBool,
    /// One RELOAD at a time (SIGHUP and the console may ask at once).
    reloading: std::sync::Mutex<()>,
    /// The HTTP endpoint's socket and address, for an upgrade's handover.
    http_socket: std::sync::OnceLock<(std::os::fd::RawFd, SocketAddr)>,
}

impl App {
    pub fn new(config: Config, audit: crate::audit::Audit) -> Arc<App> {
        let pools = Pools::default();
        let clients = Arc::new(crate::stats::clients::Clients::default());
        let queries = Arc::new(crate::stats::queries::QueryStats::new(
            config.general.query_stats_max,
        ));
        let activity = Arc::new(crate::backend::activity::Activity::default());
        let tls = Arc::new(crate::net::tls::Acceptor::default());
        Arc::new_cyclic(|me| App {
            me: me.clone(),
            http_socket: std::sync::OnceLock::new(),
            reloading: Default::default(),
            draining: Default::default(),
            listening: Default::default(),
            config: ArcSwap::from_pointee(config),
            metrics: crate::metrics::Metrics::new(
                pools.map(),
                pools.endpoint_registry(),
                clients.clone(),
                activity.clone(),
                tls.clone(),
            ),
            activity,
            tls,
            limits: Default::default(),
            identities: Default::default(),
            auth_cache: Default::default(),
            audit,
            pools,
            clients,
            queries,
            cancels: Arc::new(Cancels::default()),
            open_clients: AtomicUsize::new(0),
            open_by_mode: Default::default(),
            conn_ids: AtomicU64::new(1),
            verifiers: Default::default(),
            jwks: Default::default(),
            instance_secret: rand::random(),
            shutdown: watch::channel(false).0,
            notify_hubs: DashMap::new(),
            parking: Default::default(),
            log_reloader: std::sync::OnceLock::new(),
        })
    }

    /// Counts a new client; false when that goes past max_client_conn (it is still counted,
    /// and must be refused and released). With listeners of both modes, one mode may take at
    /// most nine tenths of max_client_conn: a flood on one port cannot starve the other.
    pub fn admit_client(&self, mode: PoolMode) -> bool {
        let n = self.open_clients.fetch_add(1, Ordering::AcqRel) + 1;
        let m = self.open_by_mode[mode as usize].fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.clients.inc();
        let config = self.config.load();
        let max = config.general.max_client_conn;
        let both = config.listeners.iter().any(|l| l.get_ref().mode != mode);
        n <= max && (!both || m <= max - max / 10)
    }

    /// A new client id (connections and MCP calls), never 0.
    pub fn next_client_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn release_client(&self, mode: PoolMode) {
        self.open_clients.fetch_sub(1, Ordering::AcqRel);
        self.open_by_mode[mode as usize].fetch_sub(1, Ordering::AcqRel);
        self.metrics.clients.dec();
    }

    pub fn client_count(&self) -> usize {
        self.open_clients.load(Ordering::Acquire)
    }

    /// Derives the SCRAM verifier of every plaintext `[[users]]` password on a blocking
    /// thread, as PostgreSQL would have it stored: otherwise a known user's first login pays
    /// for PBKDF2 and an unknown user's (a decoy, no derivation) does not, and the timing
    /// tells which names exist.
    pub fn warm_verifiers(&self) {
        let config = self.config.load_full();
        let plain: Vec<(String, String)> = config
            .users
            .iter()
            .map(|u| u.get_ref())
            .filter(|u| matches!(Secret::parse(&u.password), Secret::Plain(_)))
            .map(|u| (u.name.to_string(), u.password.to_string()))
            .filter(|k| !self.verifiers.contains_key(k))
            .collect();
        if plain.is_empty() {
            return;
        }
        let verifiers = self.verifiers.clone();
        tokio::task::spawn_blocking(move || {
            for (user, password) in plain {
                let salt: [u8; 16] = rand::random();
                let v = Verifier::from_password(&password, &salt, scram::DEFAULT_ITERATIONS);
                verifiers.entry((user, password)).or_insert(v);
            }
        });
    }

    /// Whether the verifier of this plaintext password is derived already.
    pub fn has_verifier(&self, user: &str, password: &str) -> bool {
        self.verifiers
            .contains_key(&(user.to_owned(), password.to_owned()))
    }

    /// The SCRAM verifier for a plaintext password, derived once off the reactor.
    pub async fn verifier_for(&self, user: &str, password: &str) -> Verifier {
        let key = (user.to_owned(), password.to_owned());
        if let Some(v) = self.verifiers.get(&key) {
            return v.clone();
        }
        let salt: [u8; 16] = rand::random();
        let pw = password.to_owned();
        let derive = move || Verifier::from_password(&pw, &salt, scram::DEFAULT_ITERATIONS);
        let v = match tokio::task::spawn_blocking(derive.clone()).await {
            Ok(v) => v,
            Err(_) => derive(),
        };
        self.verifiers.entry(key).or_insert(v).clone()
    }

    /// The notification hub of `pool`'s database, started on first use with its credentials.
    pub fn notify_hub(
        &self,
        pool: &crate::backend::Pool,
    ) -> Arc<crate::backend::notify::NotifyHub> {
        self.notify_hubs
            .entry(pool.key.database.clone())
            .or_insert_with(|| {
                crate::backend::notify::NotifyHub::start(
                    pool.upstream(),
                    pool.settings().connect_timeout,
                )
            })
            .clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops the listeners; sessions refuse new transactions from now on.
    fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
    }

    /// Stops accepting connections (SHUTDOWN from the console, or a signal); whoever runs
    /// the proxy then waits for its clients ([`Running::shutdown`]).
    pub fn request_shutdown(&self) {
        tracing::info!("shutdown requested: no new connections");
        self.begin_shutdown();
    }

    /// Resolves once shutdown has been requested.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The pool modes the listeners serve, as SHOW POOLS/DATABASES print pool_mode.
    pub fn listener_modes(&self) -> String {
        let config = self.config.load();
        let mut modes: Vec<&str> = config
            .listeners
            .iter()
            .map(|l| l.get_ref().mode.as_str())
            .collect();
        modes.sort_unstable();
        modes.dedup();
        modes.join(",")
    }

    /// A copy of the HTTP endpoint's socket and its address, for an upgrade's handover.
    pub fn http_socket(&self) -> std::io::Result<Option<(std::os::fd::OwnedFd, SocketAddr)>> {
        let Some((fd, addr)) = self.http_socket.get() else {
            return Ok(None);
        };
        // SAFETY: the HTTP listener lives as long as the process serves (its task never
        // ends before shutdown).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        Ok(Some((fd.try_clone_to_owned()?, *addr)))
    }

    /// Installs what RELOAD calls to change the log filter (the binary's tracing setup).
    pub fn set_log_reloader(&self, f: LogReloader) {
        let _ = self.log_reloader.set(f);
    }

    /// RELOAD: reads the configuration file again and applies it: pool sizes, limits and
    /// timeouts, users and passwords, upstream addresses (connections to an old address are
    /// replaced), query tracking, the log level and the listeners (new ones open, removed ones
    /// close; connections accepted before stay).
    pub fn reload(&self) -> Result<(), String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.reload_inner();
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "configuration reload failed; keeping the old one")
            }
        }
        result
    }

    fn reload_inner(&self) -> Result<(), String> {
        let old = self.config.load_full();
        let Some(path) = old.source.clone() else {
            return Err("RELOAD needs a configuration file (pgsluice --config FILE)".into());
        };
        let new = Config::load(&path).map_err(|e| e.to_string())?;
        // Bound before anything changes: a listener that cannot be fails the RELOAD alone.
        let wanted = listeners(&new);
        let fresh = self
            .listening
            .bind_new(&wanted)
            .map_err(|e| e.to_string())?;
        if new.general.log_level != old.general.log_level
            && let Some(f) = self.log_reloader.get()
        {
            f(new.general.log_level.as_str())?;
        }
        self.tls
            .load(new.tls.as_ref().and_then(|t| t.files()).as_ref())
            .map_err(|e| e.to_string())?;
        self.queries.set_max(new.general.query_stats_max);
        self.auth_cache.clear();
        self.pools.reload(&new);
        self.config.store(Arc::new(new));
        self.warm_verifiers();
        if let Some(me) = self.me.upgrade() {
            self.listening.apply(&me, &wanted, fresh);
        }
        Ok(())
    }
}

/// Changes the process's log filter (tracing directives).
pub type LogReloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A started proxy: its bound addresses, and the handle that stops it.
pub struct Running {
    pub app: Arc<App>,
    /// (listen address as bound, mode) for each listener; TCP ports resolved when 0 was asked.
    pub listeners: Vec<(ListenAddr, PoolMode)>,
    /// The HTTP endpoint's address, when `[http]` is configured.
    pub http: Option<SocketAddr>,
}

impl Running {
    /// The first TCP address bound for `mode`.
    pub fn addr(&self, mode: PoolMode) -> Option<SocketAddr> {
        self.app.listening.tcp(mode)
    }

    /// A graceful shutdown (SIGTERM, the console's SHUTDOWN): stops accepting; a client
    /// between transactions (or waiting for a server) is told (57P01) and closed at once, one
    /// in a transaction when it ends, a session-mode client when it leaves; at shutdown_timeout everyone left is closed.
    pub async fn shutdown(&self) {
        self.app.begin_shutdown();
        let limit = self.app.config.load().general.shutdown_timeout.duration();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // No server linked: between transactions, or waiting for a server with nothing
            // run yet.
            for c in self.app.clients.all() {
                c.kill_if_idle();
            }
            if self.app.client_count() == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.close().await;
    }

    /// A fast shutdown (SIGINT): every client is told (57P01) and closed now, transactions in
    /// flight rolled back.
    pub async fn shutdown_fast(&self) {
        self.app.begin_shutdown();
        self.close().await;
    }

    /// Closes the clients left (waiting up to a second for them to be told), then the idle
    /// servers; the audit log is on disk when it returns.
    async fn close(&self) {
        for c in self.app.clients.all() {
            c.kill();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.app.client_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pool in self.app.pools.all() {
            pool.close_idle().await;
        }
        // Every line of every connection that ended is on disk before we return.
        self.app.audit.flush().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.app.begin_shutdown();
    }
}

fn listeners(c: &Config) -> Vec<crate::config::Listener> {
    c.listeners.iter().map(|l| l.get_ref().clone()).collect()
}

/// Binds every listener (failing before serving anything if one cannot be bound) and
/// starts accepting.
pub async fn start(config: Config) -> std::io::Result<Running> {
    start_with(config, Vec::new(), None).await
}

/// [`start`], listening on `inherited` sockets (a takeover's) where the configuration names
/// their addresses; those it does not name are closed.
pub async fn start_with(
    config: Config,
    mut inherited: Vec<(ListenAddr, crate::net::listener::Bound)>,
    http_inherited: Option<(SocketAddr, std::net::TcpListener)>,
) -> std::io::Result<Running> {
    let http_addr = config.http.as_ref().map(|h| h.addr);
    let specs = listeners(&config);
    let audit_dest = config.audit.as_ref().map(|a| a.destination());
    let audit = crate::audit::Audit::start(audit_dest.as_ref()).await?;
    let tls_files = config.tls.as_ref().and_then(|t| t.files());
    let app = App::new(config, audit);
    // The files were read when the configuration was; a certificate and key that do not
    // make a TLS configuration together stop the start here.
    app.tls
        .load(tls_files.as_ref())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS: {e}")))?;
    app.warm_verifiers();
    let fresh = app.listening.bind_new_from(&specs, &mut inherited)?;
    drop(inherited);
    let mut http = None;
    if let Some(addr) = http_addr {
        let l = match http_inherited.filter(|(a, _)| *a == addr) {
            // A takeover's: the same socket the old process listened on.
            Some((_, std_listener)) => {
                std_listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(std_listener)?
            }
            None => tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} (http): {e}"))
            })?,
        };
        http = l.local_addr().ok();
        if let Some(bound) = http {
            use std::os::fd::AsRawFd;
            let _ = app.http_socket.set((l.as_raw_fd(), bound));
        }
        tracing::info!(addr = %addr, "http endpoint listening");
        tokio::spawn(crate::http::serve(app.clone(), l));
    }
    app.listening.apply(&app, &specs, fresh);
    let listeners = app.listening.addrs();
    tokio::spawn(sample_activity(Arc::downgrade(&app)));
    tokio::spawn(crate::frontend::session::run_parking(Arc::downgrade(&app)));
    tokio::spawn(watch_certificates(Arc::downgrade(&app)));
    Ok(Running {
        app,
        listeners,
        http,
    })
}

/// How often the TLS certificate and key files are checked for changes.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Reloads the client-facing certificate when its files change (rotation without restart;
/// open connections keep their session).
async fn watch_certificates(app: std::sync::Weak<App>) {
    loop {
        tokio::time::sleep(CERT_CHECK_EVERY).await;
        let Some(app) = app.upgrade() else { return };
        if app.is_shutting_down() {
            return;
        }
        let config = app.config.load();
        app.limits.prune(&config.limits);
        app.auth_cache
            .prune(config.general.auth_cache_ttl.duration());
        match app.tls.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded from its files"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate files changed but do not load; keeping the old ones")
            }
        }
    }
}

/// Samples every database with pools every `activity_sample_interval` seconds while the
/// proxy runs (the setting is read each round, so RELOAD turns it on or off).
async fn sample_activity(app: std::sync::Weak<App>) {
    let mut sampler = crate::backend::activity::Sampler::default();
    loop {
        let interval = match app.upgrade() {
            Some(app) => app.config.load().general.activity_sample_interval.enabled(),
            None => return,
        };
        let Some(interval) = interval else {
            sampler.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Some(a) = app.upgrade() else { return };
        if a.is_shutting_down() {
            return;
        }
        let mut targets: BTreeMap<
            Arc<str>,
            (Arc<crate::backend::connect::Upstream>, HashSet<i32>),
        > = BTreeMap::new();
        for pool in a.pools.all() {
            let entry = targets
                .entry(pool.key.database.clone())
                .or_insert_with(|| (pool.upstream(), HashSet::new()));
            entry.1.extend(pool.servers().iter().map(|s| s.pid));
        }
        let timeout = Duration::from_secs(5).min(interval);
        drop(a);
        for (db, (upstream, ours)) in targets {
            let sample = sampler.sample(&db, upstream, &ours, timeout).await;
            match app.upgrade() {
                Some(a) => a.activity.store(db, sample),
                None => return,
            }
        }
        tokio::time::sleep(interval).await;
    }
}
