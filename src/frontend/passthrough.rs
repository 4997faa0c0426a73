//! Looking up a user not in `[[users]]` through `auth_query` (see [`crate::auth::passthrough`]
//! for what is cached and why): a connection of `auth_user`'s pool runs the query.

use crate::app::App;
use crate::auth::passthrough::user_entry;
use crate::config::{Config, Database, User};
use crate::error::ClientError;
use std::pin::pin;
use std::time::Duration;

/// How long the lookup itself may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

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
    // A name only the fallback database stands for is the client's choice, made before it
    // proved anything: looking users up there would let anyone make pools. auth_dbname
    // names where to look instead.
    if g.auth_dbname.is_none() && !config.lists_database(&db.name) {
        return Ok(None);
    }
    if let Some(cached) = app
        .auth_cache
        .get(&db.name, user, g.auth_cache_ttl.duration())
    {
        return Ok(cached.map(|s| user_entry(user, s)));
    }
    let auth_db = g
        .auth_dbname
        .as_deref()
        .and_then(|d| config.database(d))
        .unwrap_or(std::borrow::Cow::Borrowed(db));
    let pool = app
        .pools
        .pool_for(config, &auth_db, auth_user, None)
        .map_err(|e| e.to_client(&auth_db.name))?;
    let never = tokio::sync::Notify::new();
    let mut server = pool
        // A login waits on it: ahead of the queue's lower classes.
        .checkout(
            pin!(never.notified()),
            &crate::backend::Demand::of(crate::config::Priority::HIGH),
        )
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
    app.auth_cache.insert(&db.name, user, secret.clone());
    Ok(secret.map(|s| user_entry(user, s)))
}
