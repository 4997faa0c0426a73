//! Every pool, keyed by (database, role), created on first use from the config, with the
//! background task that keeps each within its idle, lifetime and min_pool_size rules; and
//! the console's operations over many pools (RELOAD, PAUSE, RESUME, RECONNECT).

use super::connect::{Passthrough, TlsTarget, Upstream};
use super::pool::{DbLimit, Pool, PoolKey, PoolSettings};
use super::route::health::Checks;
use super::route::{Endpoint, Endpoints, Route, Ttl};
use crate::config::SessionAttrs;
use crate::config::{Config, Database, FALLBACK_DATABASES_MAX, User};
use crate::net::tls::UpstreamTls;
use dashmap::DashMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A new name through the fallback database when it already pools
/// [`FALLBACK_DATABASES_MAX`] of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyDatabases;

impl TooManyDatabases {
    pub fn to_client(self, database: &str) -> crate::error::ClientError {
        crate::error::ClientError::too_many_databases(database, FALLBACK_DATABASES_MAX)
    }
}

#[derive(Default)]
pub struct Pools {
    pools: Arc<DashMap<PoolKey, Arc<Pool>>>,
    limits: DashMap<Arc<str>, Arc<DbLimit>>,
    conn_ids: Arc<AtomicU64>,
    /// PAUSE without a database, and PAUSE db: pools created later start paused too.
    paused: Mutex<Paused>,
    /// DISABLE db: new clients of these databases are refused.
    disabled: Mutex<HashSet<String>>,
    /// Upstream TLS configurations by what they are built from (pools with the same
    /// settings share one; cleared on RELOAD).
    tls_configs: Mutex<HashMap<UpstreamTls, Arc<rustls::ClientConfig>>>,
    /// Every upstream server, by address: one health check and one circuit each.
    endpoints: Arc<Endpoints>,
}

#[derive(Default)]
struct Paused {
    all: bool,
    databases: HashSet<String>,
}

/// How often pools retire and warm connections.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

/// The pool `user` on `db` belongs to.
fn key_of(db: &Database, user: &User) -> PoolKey {
    PoolKey {
        database: Arc::from(db.name.as_str()),
        role: Arc::from(user.server_user.as_deref().unwrap_or(&user.name)),
    }
}

/// How to log in upstream without a password: the stored md5 hash, or SCRAM keys when a
/// client's exchange revealed its ClientKey (`client_key`).
fn passthrough(user: &User, client_key: Option<[u8; 32]>) -> Option<Passthrough> {
    if user.server_password.is_some() {
        return None;
    }
    match crate::auth::Secret::parse(&user.password) {
        crate::auth::Secret::Md5(h) => Some(Passthrough::Md5(h)),
        crate::auth::Secret::Scram(verifier) => client_key.map(|client_key| {
            Passthrough::Scram(crate::auth::scram::KeyClient {
                client_key,
                verifier,
            })
        }),
        crate::auth::Secret::Plain(_) => None,
    }
}

/// What a pool for `user` on `db` is under `config`; `tls` built by [`Pools::tls_for`].
fn plan(
    config: &Config,
    db: &Database,
    user: &User,
    tls: Option<TlsTarget>,
    client_key: Option<[u8; 32]>,
) -> (PoolKey, Upstream, PoolSettings) {
    let key = key_of(db, user);
    let role = &*key.role;
    let g = &config.general;
    let upstream = Upstream {
        host: db.host.to_string(),
        port: db.port,
        dbname: db.dbname.as_deref().unwrap_or(&db.name).to_owned(),
        user: role.to_owned(),
        password: user
            .server_password
            .as_ref()
            .map(|p| p.to_string())
            .or_else(|| {
                crate::auth::Secret::parse(&user.password)
                    .plaintext()
                    .map(str::to_owned)
            }),
        tls,
        passthrough: passthrough(user, client_key),
        tenant: None,
        addr: None,
        route: None,
    };
    let settings = PoolSettings {
        size: g.share(db.pool_size.unwrap_or(g.default_pool_size)),
        min_size: g.share(db.min_pool_size.unwrap_or(g.min_pool_size)),
        reserve_size: g.share(db.reserve_pool_size.unwrap_or(g.reserve_pool_size)),
        reserve_timeout: g.reserve_pool_timeout.duration(),
        lifetime: g.server_lifetime.enabled(),
        idle_timeout: g.server_idle_timeout.enabled(),
        connect_timeout: g
            .server_connect_timeout
            .enabled()
            .unwrap_or(Duration::from_secs(15)),
        login_retry: g.server_login_retry.enabled(),
        wait_timeout: g.query_wait_timeout.enabled(),
        check_query: Some(g.server_check_query.to_string()).filter(|q| !q.trim().is_empty()),
        check_delay: g.server_check_delay.duration(),
        fairness: crate::backend::pool::Fairness {
            classes: config.classes.clone(),
            default_class: config
                .class_of(db.priority.as_ref())
                .unwrap_or(config.classes.default),
            aging: g.priority_aging.duration(),
            reserve: g.share(db.priority_reserve.unwrap_or(g.priority_reserve)),
            shed_queue: db.shed_queue_length.unwrap_or(g.shed_queue_length),
            shed_wait: db.shed_wait.unwrap_or(g.shed_wait).enabled(),
            dedicated: g.share(config.dedicated_in(db, role).iter().map(|(_, n)| n).sum()),
            adaptive: db.adaptive_limit.unwrap_or(g.adaptive_limit),
        },
    };
    (key, upstream, settings)
}

impl Pools {
    /// [`plan`] with this process's TLS configurations and endpoints.
    fn plan(
        &self,
        config: &Config,
        db: &Database,
        user: &User,
        client_key: Option<[u8; 32]>,
    ) -> (PoolKey, Upstream, PoolSettings) {
        let (key, mut upstream, settings) =
            plan(config, db, user, self.tls_for(config, db), client_key);
        upstream.route = self.route_for(config, db);
        (key, upstream, settings)
    }

    /// The database's upstreams when it lists several or wants a kind of server: None for
    /// one `host`/`port` wanted as it is (no role to learn, nothing to choose).
    fn route_for(&self, config: &Config, db: &Database) -> Option<Arc<Route>> {
        if db.upstreams.is_empty() && db.target_session_attrs == SessionAttrs::Any {
            return None;
        }
        let g = &config.general;
        let checks = Checks {
            interval: g.health_check_interval.duration(),
            successes: g.health_check_successes,
            failures: g.circuit_failures,
            backoff: g.circuit_backoff.duration(),
            timeout: g
                .server_connect_timeout
                .enabled()
                .unwrap_or(Duration::from_secs(15)),
            max_lag: g.max_standby_lag.0,
        };
        let ttl = Ttl {
            found: g.dns_max_ttl.duration(),
            failed: g.dns_nxdomain_ttl.duration(),
        };
        let names = db
            .endpoints()
            .iter()
            .map(|e| self.endpoints.get(e, db.port, checks, ttl))
            .collect();
        Some(Arc::new(Route {
            attrs: db.target_session_attrs,
            names,
            max_lag: g.max_standby_lag.0,
            tolerance: g.proximity_tolerance.duration(),
            region: g.region.as_deref().map(Arc::from),
            failures: checks.failures,
            backoff: checks.backoff,
            attempt: checks.timeout,
        }))
    }

    /// Every upstream server the databases list, with what was learned of it.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.all()
    }

    /// The shared registry of upstream servers, for the metrics collector.
    pub fn endpoint_registry(&self) -> Arc<Endpoints> {
        self.endpoints.clone()
    }

    /// The pool for `user` on `db`, created (and its maintenance started) on first use.
    /// `client_key`: the SCRAM ClientKey the client's login revealed, for SCRAM passthrough
    /// when the configuration holds no upstream password for the user.
    pub fn pool_for(
        &self,
        config: &Config,
        db: &Database,
        user: &User,
        client_key: Option<[u8; 32]>,
    ) -> Result<Arc<Pool>, TooManyDatabases> {
        if let Some(p) = self.pools.get(&key_of(db, user)) {
            let p = p.clone();
            let up = p.upstream();
            if client_key.is_some() && up.password.is_none() && up.client_key() != client_key {
                // The first passthrough login of this role, or its password changed.
                let (_, upstream, settings) = self.plan(config, db, user, client_key);
                p.apply(upstream, settings);
            }
            return Ok(p);
        }
        // Names only the fallback database stands for: a bounded number get pools. (Two
        // logins racing may pass the count together: the bound is approximate by that much.)
        let listed = |d: &str| config.lists_database(d);
        if !listed(&db.name)
            && !self.knows(&db.name)
            && self.count_databases(|d| !listed(d)) >= FALLBACK_DATABASES_MAX
        {
            return Err(TooManyDatabases);
        }
        let (key, upstream, settings) = self.plan(config, db, user, client_key);
        let limit = self
            .limits
            .entry(key.database.clone())
            .or_insert_with(|| {
                DbLimit::with_reserved(
                    config.general.share(
                        db.max_db_connections
                            .unwrap_or(config.general.max_db_connections),
                    ),
                    config.general.share(config.dedicated_total(db)),
                )
            })
            .clone();
        let paused = {
            let p = lock(&self.paused);
            p.all || p.databases.contains(&*key.database)
        };
        let stats_period = config.general.stats_period.duration().as_secs_f64();
        let entry = self.pools.entry(key.clone()).or_insert_with(|| {
            let pool = Pool::new(
                key,
                upstream,
                settings,
                limit,
                self.conn_ids.clone(),
                paused,
            );
            spawn_maintenance(&pool, stats_period);
            pool
        });
        Ok(entry.clone())
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self.pools.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| (&a.key.database, &a.key.role).cmp(&(&b.key.database, &b.key.role)));
        v
    }

    /// Whether some pool serves `database`.
    pub fn knows(&self, database: &str) -> bool {
        self.limits.contains_key(database)
    }

    /// How many databases that `f` accepts have pools.
    pub fn count_databases(&self, f: impl Fn(&str) -> bool) -> usize {
        self.limits.iter().filter(|e| f(e.key())).count()
    }

    /// The pools of `database`, or all of them.
    pub fn of(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        self.all()
            .into_iter()
            .filter(|p| database.is_none_or(|d| &*p.key.database == d))
            .collect()
    }

    /// The shared map, for the metrics collector.
    pub fn map(&self) -> Arc<DashMap<PoolKey, Arc<Pool>>> {
        self.pools.clone()
    }

    /// RELOAD: each pool takes its settings and upstream from `config` (found by database
    /// and by a user that logs in as its role). Pools whose database or role is gone keep
    /// what they have until their clients leave; new clients cannot reach them.
    pub fn reload(&self, config: &Config) {
        // CA bundles and client certificates are read again.
        lock(&self.tls_configs).clear();
        for pool in self.all() {
            let Some(db) = config.database(&pool.key.database) else {
                continue;
            };
            let user = config
                .users
                .iter()
                .map(|u| u.get_ref())
                .find(|u| u.server_user.as_deref().unwrap_or(&u.name) == &*pool.key.role);
            let Some(user) = user else { continue };
            let key = pool.upstream().client_key();
            let (_, upstream, settings) = self.plan(config, &db, user, key);
            pool.apply(upstream, settings);
        }
        // Servers no database lists any more and no connection uses: forgotten, checks stopped.
        self.endpoints.prune();
    }

    pub fn pause(&self, database: Option<&str>) {
        {
            let mut p = lock(&self.paused);
            match database {
                None => p.all = true,
                Some(d) => {
                    p.databases.insert(d.to_owned());
                }
            }
        }
        for pool in self.of(database) {
            pool.pause();
        }
    }

    pub fn resume(&self, database: Option<&str>) {
        {
            let mut p = lock(&self.paused);
            match database {
                None => {
                    p.all = false;
                    p.databases.clear();
                }
                Some(d) => {
                    p.databases.remove(d);
                }
            }
        }
        let all_paused = lock(&self.paused).all;
        for pool in self.of(database) {
            if !all_paused {
                pool.resume();
            }
        }
    }

    /// The TLS to `db`'s server under `config` (None: sslmode=disable, or files that do
    /// not load, which validation already reported; the pool then connects in plaintext
    /// only if the mode allows, since connect() refuses a missing TLS for require modes).
    fn tls_for(&self, config: &Config, db: &Database) -> Option<TlsTarget> {
        let spec = db.upstream_tls(&config.general);
        let mut cache = lock(&self.tls_configs);
        if let Some(c) = cache.get(&spec) {
            return Some(TlsTarget {
                spec,
                config: c.clone(),
            });
        }
        match crate::net::tls::client_config(&spec) {
            Ok(Some(c)) => {
                cache.insert(spec.clone(), c.clone());
                Some(TlsTarget { spec, config: c })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(database = %db.name, error = %e, "upstream TLS configuration does not load");
                None
            }
        }
    }

    pub fn disable(&self, database: &str) {
        lock(&self.disabled).insert(database.to_owned());
    }

    pub fn enable(&self, database: &str) {
        lock(&self.disabled).remove(database);
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        lock(&self.disabled).contains(database)
    }

    /// Whether `database` (or, for None, everything) is paused.
    pub fn is_paused(&self, database: &str) -> bool {
        let p = lock(&self.paused);
        p.all || p.databases.contains(database)
    }
}

fn spawn_maintenance(pool: &Arc<Pool>, stats_period: f64) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            pool.stats.roll_period(stats_period);
            pool.maintain().await;
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
