//! Opening a server connection on a database with several upstreams, as libpq does with
//! several hosts and `target_session_attrs`: try the candidates in order, ask each server
//! after login what it is, keep the first that fits (prefer-standby: a standby in a first
//! pass, anything in a second). What each server said, and each failure, is remembered.

use super::endpoint::{Endpoint, Role};
use super::{ROLE_QUERY, Route, role_from_params};
use crate::backend::connect::{ConnectError, Connector, Established, Upstream};
use crate::backend::server::query_pairs;
use crate::config::SessionAttrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server connection's endpoint, counted there while the connection lives.
pub struct Via {
    pub endpoint: Arc<Endpoint>,
    /// Its route's generation when it was chosen: any of the route's servers changing role,
    /// health or lag since means the choice may differ now, and retires it.
    pub generation: u64,
}

impl Via {
    fn new(endpoint: Arc<Endpoint>, generation: u64) -> Via {
        endpoint.opened();
        Via {
            endpoint,
            generation,
        }
    }

    pub fn stale(&self, route: &Route) -> bool {
        route.generation() != self.generation || self.endpoint.departed()
    }
}

impl Drop for Via {
    fn drop(&mut self) {
        self.endpoint.closed();
    }
}

/// One connection attempt at an endpoint, admitted by its circuit: whatever ends it (the
/// server answered, failed, or the client went away and dropped the future) is reported, so
/// a half-open circuit's probe is never held forever.
struct Attempt<'a> {
    e: &'a Endpoint,
    /// It took the half-open circuit's probe (only then has it one to free).
    probe: bool,
    reported: bool,
}

impl Attempt<'_> {
    fn reached(mut self) {
        self.e.reached();
        self.reported = true;
    }

    fn failed(mut self, why: &str, route: &Route) {
        self.e.failed(why, route.failures, route.backoff);
        self.reported = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.e.abandoned();
        }
    }
}

/// What a connection needs: a server fitting `attrs`, and one that can hold a session
/// (session-mode clients, LISTEN) or any.
#[derive(Debug, Clone)]
pub struct Want {
    pub attrs: SessionAttrs,
    pub session: bool,
    /// The region to prefer over the route's (the client's listener's).
    pub region: Option<Arc<str>>,
}

/// A connection that fits `want` among `route`'s servers, its login at the endpoint chosen,
/// and that endpoint; all of it within `timeout`.
pub async fn connect(
    connector: &dyn Connector,
    template: &Arc<Upstream>,
    route: &Route,
    want: Want,
    timeout: Duration,
) -> Result<(Established, Arc<Upstream>, Via), ConnectError> {
    let route = &Route {
        attrs: want.attrs,
        region: want.region.or_else(|| route.region.clone()),
        ..route.clone()
    };
    let deadline = Instant::now() + timeout;
    let mut why = Vec::new();
    for n in &route.names {
        // A name with no address yet is looked up first (within the deadline); the others
        // are kept fresh in the background, never holding a connect up.
        if n.endpoints().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, n.fresh()).await;
        }
        if let (Some(e), true) = (n.lookup_error(), n.endpoints().is_empty()) {
            why.push(format!("{} (host name lookup failed: {e})", n.host));
        }
    }
    let mut tried = false;
    let passes: &[bool] = if route.attrs == SessionAttrs::PreferStandby {
        &[true, false]
    } else {
        &[false]
    };
    for &standby_only in passes {
        for e in route.candidates(Instant::now()) {
            // prefer-standby's first pass looks for standbys: a known primary waits its turn.
            if standby_only && e.health().role == Role::Primary {
                continue;
            }
            if want.session && !e.kind.keeps_sessions() {
                why.push(format!(
                    "{} (a transaction pooler cannot hold a session or LISTEN)",
                    e.address()
                ));
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(probe) = (!left.is_zero()).then(|| e.admit(Instant::now())).flatten() else {
                continue;
            };
            tried = true;
            // Read before the server is asked: a change learned meanwhile retires it.
            let generation = route.generation();
            let attempt = Attempt {
                e: &e,
                probe,
                reported: false,
            };
            let up = Arc::new(template.at(&e));
            match try_one(connector, &up, attempt, route, left, standby_only).await {
                Ok(est) => {
                    // The same login reaches its neighbours: their health checks use it.
                    for n in route.endpoints() {
                        n.remember_login(template);
                    }
                    return Ok((est, up, Via::new(e, generation)));
                }
                // A wrong password is wrong on every server; other refusals (too many
                // connections, one server's pg_hba, starting up) are that server's.
                Err(Some(ConnectError::Refused(r))) if r.code == "28P01" => {
                    return Err(ConnectError::Refused(r));
                }
                Err(Some(err)) => why.push(format!("{} ({err})", e.address())),
                Err(None) => why.push(format!("{} ({})", e.address(), e.health().role.as_str())),
            }
        }
    }
    let now = Instant::now();
    for e in route.endpoints() {
        let h = e.health();
        if h.breaker.state(now) != super::breaker::State::Closed {
            why.push(format!(
                "{} (circuit open after {}, retrying in {:.1} s)",
                e.address(),
                h.last_error.as_deref().unwrap_or("failures"),
                h.breaker.retry_in(now).as_secs_f64()
            ));
        }
    }
    why.dedup();
    Err(ConnectError::NoUpstream {
        why: format!(
            "no upstream of database \"{}\" can serve target_session_attrs={}: {}",
            template.dbname,
            route.attrs.as_str(),
            why.join("; ")
        ),
        tried,
    })
}

/// How much less than server_connect_timeout an attempt may have had and still count as
/// given the whole of it (the first candidate starts a few microseconds into the deadline).
const SLACK: Duration = Duration::from_millis(100);

/// One candidate: Err(None) when it answered but does not fit.
async fn try_one(
    connector: &dyn Connector,
    up: &Upstream,
    attempt: Attempt<'_>,
    route: &Route,
    timeout: Duration,
    standby_only: bool,
) -> Result<Established, Option<ConnectError>> {
    let e = attempt.e;
    let started = Instant::now();
    let mut est = match connector.establish(up, timeout).await {
        Ok(est) => est,
        Err(err) => {
            match &err {
                // It answered: it is up, whatever it thinks of this login.
                ConnectError::Refused(r) if r.code != "57P03" => attempt.reached(),
                // Out of the time earlier candidates left, not out of its own: no verdict.
                ConnectError::Timeout if timeout + SLACK < route.attempt => drop(attempt),
                _ => attempt.failed(&err.to_string(), route),
            }
            return Err(Some(err));
        }
    };
    if route.needs_role() {
        let role = match role_from_params(&est.params) {
            Some(r) => Ok(r),
            None => {
                let left = timeout.saturating_sub(started.elapsed());
                ask_role(&mut est, left).await
            }
        };
        match role {
            Ok((role, read_only)) => e.learned(role, read_only),
            Err(err) => {
                attempt.failed(&err.to_string(), route);
                return Err(Some(err));
            }
        }
    }
    attempt.reached();
    let h = e.health();
    let fits = if standby_only {
        h.role == Role::Standby && h.fits(SessionAttrs::Standby, route.max_lag)
    } else {
        h.fits(route.attrs, route.max_lag)
    };
    if fits {
        Ok(est)
    } else {
        terminate(est).await;
        Err(None)
    }
}

/// What a server is, when its login parameters did not say (a pooler, an old server).
async fn ask_role(est: &mut Established, timeout: Duration) -> Result<(Role, bool), ConnectError> {
    let rows = query_pairs(&mut est.stream, ROLE_QUERY, timeout)
        .await
        .map_err(|e| ConnectError::NoUpstream {
            why: format!("asking its role failed: {e}"),
            tried: true,
        })?;
    let Some((recovery, read_only)) = rows.into_iter().next() else {
        return Err(ConnectError::NoUpstream {
            why: "asking its role returned no row".into(),
            tried: true,
        });
    };
    let role = if recovery == "true" {
        Role::Standby
    } else {
        Role::Primary
    };
    Ok((role, read_only.as_deref() == Some("on")))
}

async fn terminate(mut est: Established) {
    let mut out = bytes::BytesMut::with_capacity(5);
    crate::proto::emit::terminate(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), est.stream.send(&out)).await;
}
