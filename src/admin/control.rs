//! The console commands that change the proxy (PgBouncer's semantics, doc/usage.md):
//! RELOAD, PAUSE/RESUME, DISABLE/ENABLE, KILL, KILL_CLIENT, KILL_IDENTITY, RECONNECT and SHUTDOWN. Each
//! returns its CommandComplete tag, or an error for the console user.

use super::command::Command;
use crate::app::App;
use crate::error::ClientError;
use crate::proto::emit::Severity;
use crate::stats::servers::ServerState;
use std::borrow::Cow;
use std::time::Duration;

/// How long PAUSE waits for the transactions in flight before it returns anyway.
const PAUSE_DRAIN: Duration = Duration::from_secs(30);

fn err(code: &'static str, message: String) -> ClientError {
    ClientError {
        severity: Severity::Error,
        code: Cow::Borrowed(code),
        message,
    }
}

/// The configured database `db`, or 3D000 for the console user.
fn known(app: &App, db: &str) -> Result<(), ClientError> {
    if app.config.load().database(db).is_some() {
        Ok(())
    } else {
        Err(err("3D000", format!("database \"{db}\" does not exist")))
    }
}

fn check(app: &App, db: &Option<String>) -> Result<(), ClientError> {
    match db {
        Some(d) => known(app, d),
        None => Ok(()),
    }
}

pub async fn run(app: &App, cmd: Command) -> Result<&'static str, ClientError> {
    match cmd {
        Command::Show(_) => Ok("SHOW"),
        Command::Reload => {
            app.reload().map_err(|e| err("F0000", e))?;
            Ok("RELOAD")
        }
        Command::Pause(db) => {
            check(app, &db)?;
            app.pools.pause(db.as_deref());
            drain(app, db.as_deref()).await;
            Ok("PAUSE")
        }
        Command::Resume(db) => {
            check(app, &db)?;
            app.pools.resume(db.as_deref());
            Ok("RESUME")
        }
        Command::Disable(db) => {
            known(app, &db)?;
            app.pools.disable(&db);
            Ok("DISABLE")
        }
        Command::Enable(db) => {
            known(app, &db)?;
            app.pools.enable(&db);
            Ok("ENABLE")
        }
        Command::Kill(db) => {
            known(app, &db)?;
            // New clients wait (as after PAUSE) until RESUME; everyone on it now goes.
            app.pools.pause(Some(&db));
            let mut killed = 0;
            for c in app
                .clients
                .all()
                .iter()
                .filter(|c| c.facts.database() == db)
            {
                killed += usize::from(c.kill());
            }
            for pool in app.pools.of(Some(&db)) {
                pool.reconnect();
            }
            tracing::info!(database = %db, clients = killed, "KILL: clients and servers closed");
            Ok("KILL")
        }
        // The id as SHOW CLIENTS' int4 shows it (past 2^31 connections) finds the client too.
        Command::KillClient(id) => match app.clients.get(id).or_else(|| {
            let shown = crate::admin::show::int4_id(id);
            app.clients
                .all()
                .into_iter()
                .find(|c| crate::admin::show::int4_id(c.facts.id) == shown)
        }) {
            Some(c) if c.kill() => {
                tracing::info!(client = id, user = %c.facts.user, "KILL_CLIENT");
                Ok("KILL_CLIENT")
            }
            _ => Err(err("42704", format!("no client with id {id}"))),
        },
        Command::KillIdentity(name) => {
            let mut killed = 0;
            for c in app.clients.all() {
                let theirs = c.facts.identity.as_ref().is_some_and(|i| *i.name == *name);
                if theirs && c.kill() {
                    killed += 1;
                }
            }
            tracing::info!(identity = %name, killed, "KILL_IDENTITY");
            Ok("KILL_IDENTITY")
        }
        Command::Reconnect(db) => {
            check(app, &db)?;
            for pool in app.pools.of(db.as_deref()) {
                pool.reconnect();
            }
            Ok("RECONNECT")
        }
        Command::Shutdown => Ok("SHUTDOWN"),
    }
}

/// Waits until no server of the paused pools is in use (PgBouncer's PAUSE returns once the
/// transactions in flight have finished).
async fn drain(app: &App, db: Option<&str>) {
    let deadline = tokio::time::Instant::now() + PAUSE_DRAIN;
    loop {
        let busy: usize = app
            .pools
            .of(db)
            .iter()
            .map(|p| {
                p.servers()
                    .iter()
                    .filter(|s| s.state() == ServerState::Active)
                    .count()
            })
            .sum();
        if busy == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                servers = busy,
                "PAUSE: servers still in use; returning anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
