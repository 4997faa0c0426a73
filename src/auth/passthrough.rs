//! auth_query passthrough, as PgBouncer and Supavisor do it: a user not listed in the
//! configuration is looked up in the upstream itself, by running `auth_query` (its SCRAM
//! verifier or md5 hash, as pg_authid keeps it) through a connection logged in as
//! `auth_user`. Results, found or not, are cached for `auth_cache_ttl` seconds, so a storm of
//! logins costs one lookup per user and a guessing client cannot hammer the upstream. The
//! client then authenticates against that secret, and the proxy logs in upstream as the
//! user with SCRAM passthrough (or the md5 hash).

use crate::app::App;
use crate::config::{Config, Database, Text, User};
use crate::error::ClientError;
use dashmap::DashMap;
use std::pin::pin;
use std::time::{Duration, Instant};

/// How long the lookup itself may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Users looked up recently, by (database, user): their stored secret, or None.
#[derive(Default)]
pub struct AuthCache {
    map: DashMap<(String, String), (Instant, Option<String>)>,
}

impl AuthCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops entries older than `ttl` (run periodically; RELOAD clears all).
    pub fn prune(&self, ttl: Duration) {
        self.map.retain(|_, (at, _)| at.elapsed() < ttl);
    }

    /// Forgets one user after a failed proof: the secret may have changed upstream
    /// (`ALTER ROLE ... PASSWORD`), and the next attempt must look it up again rather than
    /// fail until auth_cache_ttl runs out.
    pub fn forget(&self, database: &str, user: &str) {
        self.map.remove(&(database.to_owned(), user.to_owned()));
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}

/// The configuration entry for a user found by auth_query: the stored secret as its
/// password, no upstream password (passthrough logs in).
fn user_entry(name: &str, secret: String) -> User {
    User {
        name: Text::new(name),
        password: Text::new(secret),
        server_user: None,
        server_password: None,
        allow_addresses: Vec::new(),
        deny_addresses: Vec::new(),
    }
}

/// Looks `user` up for `db` when auth_query applies (an `auth_user` is set); Ok(None) when
/// it does not or the user has no usable secret.
pub async fn lookup(
    app: &App,
    config: &Config,
    db: &Database,
    user: &str,
) -> Result<Option<User>, ClientError> {
    let g = &config.general;
    let Some(auth_user) = g.auth_user.as_deref().and_then(|u| config.user(u)) else {
        return Ok(None);
    };
    let ttl = g.auth_cache_ttl.duration();
    let key = (db.name.to_string(), user.to_owned());
    if let Some(e) = app.auth_cache.map.get(&key) {
        if e.0.elapsed() < ttl {
            return Ok(e.1.clone().map(|s| user_entry(user, s)));
        }
    }
    let auth_db = g
        .auth_dbname
        .as_deref()
        .and_then(|d| config.database(d))
        .unwrap_or(db);
    let pool = app.pools.pool_for(config, auth_db, auth_user, None);
    let never = tokio::sync::Notify::new();
    let mut server = pool
        .checkout(pin!(never.notified()))
        .await
        .map_err(|e| e.to_client())?;
    let rows = server
        .query_pairs_with(g.auth_query.as_str(), &[user], LOOKUP_TIMEOUT)
        .await;
    let secret = match rows {
        Ok(rows) => {
            pool.release(server);
            rows.into_iter().next().and_then(|(_, passwd)| passwd)
        }
        Err(e) => {
            tracing::warn!(database = %auth_db.name, error = %e, "auth_query failed");
            return Err(ClientError::server_unavailable(
                "server unavailable: pgsluice cannot look up the user",
            ));
        }
    };
    // A stored secret that is neither md5 nor SCRAM (or none) cannot be checked.
    let secret =
        secret.filter(|s| !matches!(crate::auth::Secret::parse(s), crate::auth::Secret::Plain(_)));
    app.auth_cache
        .map
        .insert(key, (Instant::now(), secret.clone()));
    Ok(secret.map(|s| user_entry(user, s)))
}
