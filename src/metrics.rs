//! Prometheus metrics (prometheus-client), named `pgsluice_*` and documented in
//! docs/metrics.md. Hot-path counters are resolved once per pool and kept as handles, so a
//! transaction costs an atomic add, not a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub database: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStateLabels {
    pub database: String,
    pub role: String,
    pub state: &'static str,
}

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
pub struct ConnectLabels {
    pub database: String,
    pub role: String,
    pub result: &'static str,
}

fn wait_histogram() -> Histogram {
    // 100 us .. ~100 s.
    Histogram::new([
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 100.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub clients: Gauge,
    pub auth: Family<AuthLabels, Counter>,
    pub client_errors: Family<ErrorLabels, Counter>,
    transactions: Family<PoolLabels, Counter>,
    wait: Family<PoolLabels, Histogram, fn() -> Histogram>,
    connects: Family<ConnectLabels, Counter>,
    pub server_connections: Family<ServerStateLabels, Gauge>,
    pub clients_waiting: Family<PoolLabels, Gauge>,
}

/// A pool's own handles.
#[derive(Clone)]
pub struct PoolMetrics {
    pub transactions: Counter,
    pub wait_seconds: Histogram,
    pub connects_ok: Counter,
    pub connects_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgsluice");
        let m = Metrics {
            clients: Gauge::default(),
            auth: Family::default(),
            client_errors: Family::default(),
            transactions: Family::default(),
            wait: Family::new_with_constructor(wait_histogram),
            connects: Family::default(),
            server_connections: Family::default(),
            clients_waiting: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "client_connections",
            "Client connections open now",
            m.clients.clone(),
        );
        registry.register(
            "auth_attempts",
            "Client authentications by method and result",
            m.auth.clone(),
        );
        registry.register(
            "client_errors",
            "ErrorResponses sent to clients by the proxy, by SQLSTATE class",
            m.client_errors.clone(),
        );
        registry.register(
            "transactions",
            "Transactions served in transaction mode, per pool",
            m.transactions.clone(),
        );
        registry.register(
            "pool_wait_seconds",
            "Time clients waited for a server connection",
            m.wait.clone(),
        );
        registry.register(
            "server_connects",
            "Server connection attempts by result",
            m.connects.clone(),
        );
        registry.register(
            "server_connections",
            "Server connections by state (active, idle)",
            m.server_connections.clone(),
        );
        registry.register(
            "clients_waiting",
            "Clients waiting for a server connection now",
            m.clients_waiting.clone(),
        );
        registry.register(
            "build",
            "pgsluice build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, ..m }
    }

    pub fn pool(&self, database: &str, role: &str) -> PoolMetrics {
        let labels = PoolLabels {
            database: database.to_owned(),
            role: role.to_owned(),
        };
        let connect = |result| ConnectLabels {
            database: database.to_owned(),
            role: role.to_owned(),
            result,
        };
        // One statement per handle: get_or_create returns a read guard on the family, and a
        // second call in the same statement would wait on it for the write lock.
        let transactions = self.transactions.get_or_create(&labels).clone();
        let wait_seconds = self.wait.get_or_create(&labels).clone();
        let connects_ok = self.connects.get_or_create(&connect("ok")).clone();
        let connects_failed = self.connects.get_or_create(&connect("failed")).clone();
        PoolMetrics {
            transactions,
            wait_seconds,
            connects_ok,
            connects_failed,
        }
    }

    pub fn client_error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_owned();
        self.client_errors
            .get_or_create(&ErrorLabels { class })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
