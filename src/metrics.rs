//! Prometheus metrics (prometheus-client), named `pgsluice_*` and documented in
//! docs/monitoring.md. Process-wide counters are prometheus-client metrics; everything per
//! pool is read at scrape time from the pools' own atomics by [`PoolCollector`], so the hot
//! path never looks up a label set or takes a lock.

use crate::backend::activity::Activity;
use crate::backend::pool::{Pool, PoolKey};
use crate::stats::clients::{ClientState, Clients, Park};
use crate::stats::histogram::Histogram;
use crate::stats::servers::ServerState;
use dashmap::DashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub method: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The SQLSTATE class (first two characters): 28, 3D, 53, 57, 08...
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// An MCP tool's name (only the server's own tools are counted).
    pub tool: String,
}

type ToolHistogram = prometheus_client::metrics::histogram::Histogram;

fn tool_histogram() -> ToolHistogram {
    ToolHistogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

pub struct Metrics {
    registry: Registry,
    mcp_calls: Family<ToolLabels, Counter>,
    mcp_errors: Family<ToolLabels, Counter>,
    mcp_seconds: Family<ToolLabels, ToolHistogram, fn() -> ToolHistogram>,
    pub clients: Gauge,
    pub auth: Family<AuthLabels, Counter>,
    pub client_errors: Family<ErrorLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    /// Times an idle client was parked.
    pub parks: Counter,
    tls_handshakes: Family<TlsLabels, Counter>,
    limit_refusals: Family<LimitLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLimitLabels {
    database: String,
    role: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    database: String,
    role: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// sslrequest or direct.
    pub kind: &'static str,
    pub result: &'static str,
}

impl Metrics {
    pub fn new(
        pools: Arc<DashMap<PoolKey, Arc<Pool>>>,
        endpoints: Arc<crate::backend::route::Endpoints>,
        clients: Arc<Clients>,
        activity: Arc<Activity>,
        tls: Arc<crate::net::tls::Acceptor>,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("pgsluice");
        let m = Metrics {
            clients: Gauge::default(),
            auth: Family::default(),
            client_errors: Family::default(),
            reloads: Family::default(),
            parks: Counter::default(),
            tls_handshakes: Family::default(),
            limit_refusals: Family::default(),
            mcp_calls: Family::default(),
            mcp_errors: Family::default(),
            mcp_seconds: Family::new_with_constructor(tool_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls by tool",
            m.mcp_calls.clone(),
        );
        registry.register(
            "mcp_tool_errors",
            "MCP tool calls that returned an error result, by tool",
            m.mcp_errors.clone(),
        );
        registry.register(
            "mcp_tool_call_duration_seconds",
            "MCP tool call duration by tool (checkout, statement and result)",
            m.mcp_seconds.clone(),
        );
        registry.register(
            "client_parks",
            "Times an idle client was parked (its task and relay freed until its next message)",
            m.parks.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections open now (logging in or logged in)",
            m.clients.clone(),
        );
        registry.register(
            "auth_attempts",
            "Client authentications by method and result",
            m.auth.clone(),
        );
        registry.register(
            "client_errors",
            "ErrorResponses the proxy itself sent to clients, by SQLSTATE class",
            m.client_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (ok, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Client TLS handshakes by kind (sslrequest, direct) and result (ok, failed)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "limit_refusals",
            "Clients or transactions refused by a per-identity limit (max_user_connections, \
             max_user_client_connections, transactions_per_second)",
            m.limit_refusals.clone(),
        );
        registry.register(
            "upstream_scram_derivations",
            "PBKDF2 derivations for upstream SCRAM logins (one per password, salt and \
             iteration count; the server connections after it reuse the keys)",
            crate::auth::salted::SaltedKeys::global()
                .derivations
                .clone(),
        );
        registry.register(
            "build",
            "pgsluice build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(PoolCollector {
            pools,
            endpoints,
            clients,
            activity,
            tls,
        }));
        Metrics { registry, ..m }
    }

    pub fn client_error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_owned();
        self.client_errors
            .get_or_create(&ErrorLabels { class })
            .inc();
    }

    /// A client or transaction refused by the per-identity limit named.
    pub fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn auth_result(&self, method: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.auth
            .get_or_create(&AuthLabels { method, result })
            .inc();
    }

    pub fn tls_handshake(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.tls_handshakes
            .get_or_create(&TlsLabels { kind, result })
            .inc();
    }

    /// One finished MCP tool call.
    pub fn mcp_call(&self, tool: &str, failed: bool, seconds: f64) {
        let labels = ToolLabels {
            tool: tool.to_owned(),
        };
        self.mcp_calls.get_or_create(&labels).inc();
        if failed {
            self.mcp_errors.get_or_create(&labels).inc();
        }
        self.mcp_seconds.get_or_create(&labels).observe(seconds);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    database: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    database: String,
    role: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    database: String,
    role: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    database: String,
    state: String,
    wait_event_type: String,
    owner: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    database: String,
    role: String,
    class: String,
}

/// Reads every pool at scrape time.
struct PoolCollector {
    pools: Arc<DashMap<PoolKey, Arc<Pool>>>,
    endpoints: Arc<crate::backend::route::Endpoints>,
    clients: Arc<Clients>,
    activity: Arc<Activity>,
    tls: Arc<crate::net::tls::Acceptor>,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

/// One metric family written by hand: a descriptor, then one sample per label set.
fn family<L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(L, V)],
    write: impl Fn(prometheus_client::encoding::MetricEncoder, &V) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut d = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        write(d.encode_family(labels)?, v)?;
    }
    Ok(())
}

fn counter(mut e: prometheus_client::encoding::MetricEncoder, v: &u64) -> std::fmt::Result {
    e.encode_counter::<NoLabelSet, _, u64>(v, None)
}

fn gauge(mut e: prometheus_client::encoding::MetricEncoder, v: &f64) -> std::fmt::Result {
    e.encode_gauge(v)
}

fn histogram(
    mut e: prometheus_client::encoding::MetricEncoder,
    h: &&Histogram,
) -> std::fmt::Result {
    let (sum, count, buckets) = h.snapshot();
    e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    tenant: String,
    kind: &'static str,
    region: String,
}

impl PoolCollector {
    /// Each upstream server of a database with several (docs/resilience.md).
    fn encode_upstreams(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let now = std::time::Instant::now();
        let mut rows: [Vec<(UpstreamLabels, f64)>; 6] = Default::default();
        for e in self.endpoints.all() {
            let h = e.health();
            let l = UpstreamLabels {
                upstream: e.address(),
                tenant: e.tenant.as_deref().unwrap_or("").to_owned(),
                kind: e.kind.as_str(),
                region: e.region.as_deref().unwrap_or("").to_owned(),
            };
            let open = h.breaker.state(now) != crate::backend::route::breaker::State::Closed;
            let values = [
                f64::from(u8::from(h.healthy)),
                f64::from(u8::from(h.role == crate::backend::route::Role::Primary)),
                f64::from(u8::from(open)),
                h.latency_us / 1e6,
                h.lag.unwrap_or(0.0),
                f64::from(u8::from(h.lagging)),
            ];
            for (r, v) in rows.iter_mut().zip(values) {
                r.push((l.clone(), v));
            }
        }
        let help = [
            (
                "upstream_healthy",
                "1 while the upstream's health checks pass",
            ),
            (
                "upstream_is_primary",
                "1 while the upstream says it is not in recovery",
            ),
            (
                "upstream_circuit",
                "1 while the upstream's circuit is open or half-open",
            ),
            (
                "upstream_latency_seconds",
                "Round trip of the upstream's health check (EWMA)",
            ),
            (
                "upstream_lag_seconds",
                "How far a standby's replay is behind",
            ),
            (
                "upstream_lagging",
                "1 while a standby lags more than max_standby_lag",
            ),
        ];
        for ((name, text), r) in help.into_iter().zip(&rows) {
            family(enc, name, text, MetricType::Gauge, r, gauge)?;
        }
        Ok(())
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.encode_upstreams(&mut enc)?;
        let mut pools: Vec<Arc<Pool>> = self.pools.iter().map(|e| e.value().clone()).collect();
        pools.sort_by(|a, b| (&a.key.database, &a.key.role).cmp(&(&b.key.database, &b.key.role)));
        let clients = self.clients.all();
        let now = crate::stats::unix_micros();
        let labels = |p: &Pool| PoolLabels {
            database: p.key.database.to_string(),
            role: p.key.role.to_string(),
        };
        let state = |p: &Pool, state| StateLabels {
            database: p.key.database.to_string(),
            role: p.key.role.to_string(),
            state,
        };
        let result = |p: &Pool, result| EventLabels {
            database: p.key.database.to_string(),
            role: p.key.role.to_string(),
            result,
        };

        let mut client_rows = Vec::new();
        let mut parked_rows = Vec::new();
        let mut waiting_rows = Vec::new();
        let mut max_wait_rows = Vec::new();
        let mut server_rows = Vec::new();
        let mut size_rows = Vec::new();
        let mut saturation_rows = Vec::new();
        let mut paused_rows = Vec::new();
        let mut up_rows = Vec::new();
        let mut circuit_rows = Vec::new();
        let mut class_rows = Vec::new();
        let mut limit_rows = Vec::new();
        let mut served_rows = Vec::new();
        let mut shed_rows = Vec::new();
        let mut wait_rows = Vec::new();
        for p in &pools {
            let waiting = p.waiting_by_class();
            let classes = p.settings().fairness.classes.clone();
            for (rank, priority) in classes.iter() {
                let i = rank.index();
                let l = PriorityLabels {
                    database: p.key.database.to_string(),
                    role: p.key.role.to_string(),
                    priority: priority.to_owned(),
                };
                class_rows.push((l.clone(), waiting[i] as f64));
                served_rows.push((l.clone(), p.stats.served[i].load(Ordering::Relaxed)));
                shed_rows.push((l, p.stats.shed[i].load(Ordering::Relaxed)));
            }
            for (limit, n) in [
                ("max_user_connections", &p.stats.share_waits),
                ("transactions_per_second", &p.stats.rate_waits),
            ] {
                let l = PoolLimitLabels {
                    database: p.key.database.to_string(),
                    role: p.key.role.to_string(),
                    limit,
                };
                wait_rows.push((l, n.load(Ordering::Relaxed)));
            }
            let mine = clients.iter().filter(|c| c.facts.pool == p.key);
            let (mut active, mut waiting, mut oldest, mut parked) = (0u64, 0u64, 0u64, 0u64);
            for c in mine {
                parked += u64::from(c.park_state() == Park::Parked);
                match c.state() {
                    ClientState::Active => active += 1,
                    ClientState::Waiting => {
                        waiting += 1;
                        let since = c.wait_since();
                        if since > 0 {
                            oldest = oldest.max(now.saturating_sub(since));
                        }
                    }
                }
            }
            client_rows.push((state(p, "active"), active as f64));
            client_rows.push((state(p, "waiting"), waiting as f64));
            parked_rows.push((labels(p), parked as f64));
            waiting_rows.push((labels(p), p.counts().waiting as f64));
            max_wait_rows.push((labels(p), oldest as f64 / 1e6));
            let servers = p.servers();
            for s in [ServerState::Active, ServerState::Idle, ServerState::Tested] {
                let n = servers.iter().filter(|i| i.state() == s).count();
                server_rows.push((state(p, s.as_str()), n as f64));
            }
            let size = p.settings().size;
            limit_rows.push((labels(p), p.concurrency_limit().unwrap_or(size) as f64));
            let busy = servers
                .iter()
                .filter(|i| i.state() != ServerState::Idle)
                .count();
            size_rows.push((labels(p), size as f64));
            saturation_rows.push((labels(p), busy as f64 / size.max(1) as f64));
            paused_rows.push((labels(p), if p.is_paused() { 1.0 } else { 0.0 }));
            up_rows.push((labels(p), if p.upstream_failing() { 0.0 } else { 1.0 }));
            circuit_rows.push((labels(p), if p.circuit_open() { 1.0 } else { 0.0 }));
        }
        let g = MetricType::Gauge;
        family(
            &mut enc,
            "clients",
            "Logged-in clients by pool and state (active, waiting)",
            g,
            &client_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "clients_parked",
            "Idle clients parked now (no task or relay until their next message; counted as active above)",
            g,
            &parked_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "clients_waiting",
            "Clients queued for a server connection now",
            g,
            &waiting_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "pool_max_wait_seconds",
            "How long the longest-waiting client of the pool has waited",
            g,
            &max_wait_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "server_connections",
            "Server connections by pool and state (active, idle, tested)",
            g,
            &server_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "pool_size",
            "Configured pool_size",
            g,
            &size_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "pool_concurrency_limit",
            "Server connections the pool may use at once: the adaptive limit (adaptive_limit), else pool_size",
            g,
            &limit_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "pool_saturation",
            "Server connections in use divided by pool_size (1 = full)",
            g,
            &saturation_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "pool_paused",
            "1 while the pool is paused (PAUSE, KILL)",
            g,
            &paused_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "upstream_up",
            "0 when the pool's last server connection attempt failed",
            g,
            &up_rows,
            gauge,
        )?;
        family(
            &mut enc,
            "upstream_circuit_open",
            "1 while new server connections fail fast after a failed attempt (server_login_retry)",
            g,
            &circuit_rows,
            gauge,
        )?;

        family(
            &mut enc,
            "clients_waiting_by_class",
            "Clients queued for a server connection now, by priority class",
            g,
            &class_rows,
            gauge,
        )?;
        let c = MetricType::Counter;
        family(
            &mut enc,
            "served_by_class",
            "Server connections handed to clients, by priority class",
            c,
            &served_rows,
            counter,
        )?;
        family(
            &mut enc,
            "limit_waits",
            "Checkouts that waited at their identity's max_user_connections, and transactions paced by their identity's transactions_per_second",
            c,
            &wait_rows,
            counter,
        )?;
        family(
            &mut enc,
            "shed",
            "Clients refused by shedding (shed_queue_length, shed_wait), by priority class",
            c,
            &shed_rows,
            counter,
        )?;
        let totals: Vec<_> = pools
            .iter()
            .map(|p| (labels(p), p.stats.totals.snapshot()))
            .collect();
        let pick = |f: fn(&crate::stats::totals::Snapshot) -> u64| -> Vec<(PoolLabels, u64)> {
            totals.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        family(
            &mut enc,
            "transactions",
            "Transactions completed (ReadyForQuery idle after work)",
            c,
            &pick(|s| s.xacts),
            counter,
        )?;
        family(
            &mut enc,
            "queries",
            "Queries completed (one per ReadyForQuery)",
            c,
            &pick(|s| s.queries),
            counter,
        )?;
        family(
            &mut enc,
            "server_assignments",
            "Times a server connection was handed to a client",
            c,
            &pick(|s| s.server_assignments),
            counter,
        )?;
        family(
            &mut enc,
            "client_received_bytes",
            "Bytes received from clients",
            c,
            &pick(|s| s.received),
            counter,
        )?;
        family(
            &mut enc,
            "client_sent_bytes",
            "Bytes sent to clients",
            c,
            &pick(|s| s.sent),
            counter,
        )?;

        let mut connect_rows = Vec::new();
        let mut prepared_rows = Vec::new();
        let mut error_rows = Vec::new();
        for p in &pools {
            let s = &p.stats;
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            connect_rows.push((result(p, "ok"), l(&s.connects_ok)));
            connect_rows.push((result(p, "failed"), l(&s.connects_failed)));
            prepared_rows.push((result(p, "hit"), l(&s.prepared_hits)));
            prepared_rows.push((result(p, "miss"), l(&s.totals.server_parses)));
            prepared_rows.push((result(p, "eviction"), l(&s.prepared_evictions)));
            for (class, n) in s.error_classes() {
                error_rows.push((
                    ClassLabels {
                        database: p.key.database.to_string(),
                        role: p.key.role.to_string(),
                        class,
                    },
                    n,
                ));
            }
        }
        family(
            &mut enc,
            "server_connects",
            "Server connection attempts by result",
            c,
            &connect_rows,
            counter,
        )?;
        family(
            &mut enc,
            "prepared_statements",
            "Transaction-mode prepared statements: hit (already on the server), miss (parsed there), eviction (closed to make room)",
            c,
            &prepared_rows,
            counter,
        )?;
        family(
            &mut enc,
            "server_errors",
            "ErrorResponses from servers relayed to clients, by SQLSTATE class",
            c,
            &error_rows,
            counter,
        )?;

        let h = MetricType::Histogram;
        let hist = |f: fn(&Pool) -> &Histogram| -> Vec<(PoolLabels, &Histogram)> {
            pools.iter().map(|p| (labels(p), f(p))).collect()
        };
        family(
            &mut enc,
            "query_duration_seconds",
            "Query latency through the proxy (client's request to ReadyForQuery)",
            h,
            &hist(|p| &p.stats.query_latency),
            histogram,
        )?;
        family(
            &mut enc,
            "transaction_duration_seconds",
            "Transaction latency (first request to ReadyForQuery idle)",
            h,
            &hist(|p| &p.stats.xact_latency),
            histogram,
        )?;
        family(
            &mut enc,
            "pool_wait_seconds",
            "Time clients waited for a server connection",
            h,
            &hist(|p| &p.stats.wait_latency),
            histogram,
        )?;

        let expiry = self.tls.expiry();
        if expiry > 0 {
            let rows = [(NoLabels {}, expiry as f64)];
            family(
                &mut enc,
                "tls_certificate_expiry_timestamp_seconds",
                "When the client-facing TLS certificate expires (its notAfter, Unix seconds)",
                MetricType::Gauge,
                &rows,
                gauge,
            )?;
        }

        let mut backends = Vec::new();
        let mut longest = Vec::new();
        for (db, s) in self.activity.all() {
            if s.error.is_some() {
                continue;
            }
            for (group, n) in &s.groups {
                backends.push((
                    BackendLabels {
                        database: db.to_string(),
                        state: group.state.clone(),
                        wait_event_type: group.wait_event_type.clone(),
                        owner: group.owner,
                    },
                    *n as f64,
                ));
            }
            longest.push((
                DatabaseLabels {
                    database: db.to_string(),
                },
                s.longest_transaction,
            ));
        }
        family(
            &mut enc,
            "upstream_backends",
            "Upstream backends of the database by state, wait event type and owner (pgsluice or other), from pg_stat_activity sampling",
            MetricType::Gauge,
            &backends,
            gauge,
        )?;
        family(
            &mut enc,
            "upstream_longest_transaction_seconds",
            "Age of the oldest open transaction on the upstream database (pg_stat_activity sampling)",
            MetricType::Gauge,
            &longest,
            gauge,
        )?;
        Ok(())
    }
}
