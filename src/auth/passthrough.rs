//! auth_query passthrough, as PgBouncer and Supavisor do it: a user not listed in the
//! configuration is looked up in the upstream itself, by running `auth_query` (its SCRAM
//! verifier or md5 hash, as pg_authid keeps it) through a connection logged in as
//! `auth_user`. Results, found or not, are cached for `auth_cache_ttl` seconds, so a storm of
//! logins costs one lookup per user and a guessing client cannot hammer the upstream. The
//! client then authenticates against that secret, and the proxy logs in upstream as the
//! user with SCRAM passthrough (or the md5 hash).

use crate::config::{Text, User};
use dashmap::DashMap;
use std::time::{Duration, Instant};

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

    /// The cached lookup of `user` in `database` when younger than `ttl`: its secret, or
    /// None for a user upstream does not know.
    pub fn get(&self, database: &str, user: &str, ttl: Duration) -> Option<Option<String>> {
        let e = self.map.get(&(database.to_owned(), user.to_owned()))?;
        (e.0.elapsed() < ttl).then(|| e.1.clone())
    }

    pub fn insert(&self, database: &str, user: &str, secret: Option<String>) {
        self.map.insert(
            (database.to_owned(), user.to_owned()),
            (Instant::now(), secret),
        );
    }
}

/// The configuration entry for a user found by auth_query: the stored secret as its
/// password, no upstream password (passthrough logs in).
pub fn user_entry(name: &str, secret: String) -> User {
    User {
        name: Text::new(name),
        password: Text::new(secret),
        server_user: None,
        server_password: None,
        allow_addresses: Vec::new(),
        deny_addresses: Vec::new(),
        priority: Default::default(),
        limits: Default::default(),
    }
}
