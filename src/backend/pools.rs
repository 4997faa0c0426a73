//! Every pool, keyed by (database, role), created on first use from the config, with the
//! background task that keeps each within its idle, lifetime and min_pool_size rules.

use super::connect::Upstream;
use super::pool::{DbLimit, Pool, PoolKey, PoolSettings};
use crate::config::{Config, Database, User};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Default)]
pub struct Pools {
    pools: DashMap<PoolKey, Arc<Pool>>,
    limits: DashMap<Arc<str>, Arc<DbLimit>>,
    conn_ids: Arc<AtomicU64>,
}

/// How often pools retire and warm connections.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

impl Pools {
    /// The pool for `user` on `db`, created (and its maintenance started) on first use.
    pub fn pool_for(
        &self,
        config: &Config,
        db: &Database,
        user: &User,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Pool> {
        let role = user.server_user.as_deref().unwrap_or(&user.name);
        let key = PoolKey {
            database: Arc::from(db.name.as_str()),
            role: Arc::from(role),
        };
        if let Some(p) = self.pools.get(&key) {
            return p.clone();
        }
        let g = &config.general;
        let limit = self
            .limits
            .entry(key.database.clone())
            .or_insert_with(|| DbLimit::new(db.max_db_connections.unwrap_or(g.max_db_connections)))
            .clone();
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
        };
        let settings = PoolSettings {
            size: db.pool_size.unwrap_or(g.default_pool_size),
            min_size: db.min_pool_size.unwrap_or(g.min_pool_size),
            reserve_size: db.reserve_pool_size.unwrap_or(g.reserve_pool_size),
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
        };
        let entry = self.pools.entry(key.clone()).or_insert_with(|| {
            let pm = metrics.pool(&key.database, &key.role);
            let pool = Pool::new(key, upstream, settings, limit, self.conn_ids.clone(), pm);
            spawn_maintenance(&pool);
            pool
        });
        entry.clone()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|e| e.value().clone()).collect()
    }
}

fn spawn_maintenance(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            pool.maintain().await;
        }
    });
}
