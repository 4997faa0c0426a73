//! The TOML model: one struct per section, PgBouncer's key names where PgBouncer has the concept.
//! Every key is documented in `config.toml.example`.

use super::addresses::Cidr;
use super::text::Text;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub general: General,
    pub listeners: Vec<Spanned<Listener>>,
    #[serde(default)]
    pub http: Option<Http>,
    #[serde(default)]
    pub admin: Admin,
    /// TLS for clients; without it SSLRequest is answered 'N'.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The audit log; without it none is written.
    #[serde(default)]
    pub audit: Option<AuditSettings>,
    #[serde(default)]
    pub databases: Vec<Spanned<Database>>,
    #[serde(default)]
    pub users: Vec<Spanned<User>>,
    /// Token identities: `[jwt]`, the roles they map to, API keys, the MCP endpoint.
    #[serde(default)]
    pub jwt: Option<super::Jwt>,
    #[serde(default)]
    pub roles: Vec<Spanned<super::Role>>,
    #[serde(default)]
    pub api_keys: Vec<Spanned<super::ApiKey>>,
    #[serde(default)]
    pub mcp: Option<super::Mcp>,
    /// The other instances behind the same address (cancel forwarding).
    #[serde(default)]
    pub peers: Vec<Spanned<super::Peer>>,
    /// The file this came from (RELOAD reads it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The rules of `auth_hba_file`, read with the configuration.
    #[serde(skip)]
    pub hba: Option<super::hba::Hba>,
    /// The per-address limits, from `[general]`.
    #[serde(skip)]
    pub limits: LimitSettings,
    /// The priority classes (from `priority_classes`, `default_priority`).
    #[serde(skip)]
    pub classes: std::sync::Arc<super::Classes>,
}

/// Process-wide knobs, the ones PgBouncer keeps in its `[pgbouncer]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Threads that run connections; 0: one per core. Read at startup only.
    pub worker_threads: usize,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Seconds,
    pub max_db_connections: usize,
    /// How far a waiter goes ahead of the class below it (docs/pooling.md).
    pub priority_aging: Seconds,
    /// Places of each pool only the highest class may take.
    pub priority_reserve: usize,
    /// The classes of the wait queue, lowest first, and the class of clients nothing names
    /// one for.
    pub priority_classes: Vec<Text>,
    pub default_priority: Text,
    /// Each identity's limits unless its entry says otherwise (0: none).
    pub max_user_connections: usize,
    pub max_user_client_connections: usize,
    /// Waiting clients at which the lowest class is shed (0: never).
    pub shed_queue_length: usize,
    /// Expected wait beyond which the lowest class is shed (0: never).
    pub shed_wait: Seconds,
    /// Servers in use at once follow the upstream's latency, between min_pool_size and
    /// pool_size (docs/pooling.md).
    pub adaptive_limit: bool,
    /// Health checks, circuit breakers and proximity of upstreams (docs/resilience.md).
    pub health_check_interval: Seconds,
    pub health_check_successes: u32,
    pub max_standby_lag: Seconds,
    pub circuit_failures: u32,
    pub circuit_backoff: Seconds,
    pub proximity_tolerance: Seconds,
    /// Where this instance runs: upstreams of the same `region` are preferred.
    pub region: Option<Text>,
    /// How long an upstream host name's addresses are used before it is looked up again,
    /// and how long a failed lookup stands (PgBouncer's names).
    pub dns_max_ttl: Seconds,
    pub dns_nxdomain_ttl: Seconds,
    /// This instance among its `[[peers]]` (0: none), carried in its cancel keys, and the
    /// secret the peers sign forwarded cancels with.
    pub peer_id: u8,
    pub peer_secret: Option<Text>,
    /// How many instances share the upstream: pool sizes, priority_reserve, dedicated places
    /// and max_db_connections are divided by it ([`General::share`]).
    pub instances: usize,
    pub server_lifetime: Seconds,
    pub server_idle_timeout: Seconds,
    pub server_connect_timeout: Seconds,
    pub server_login_retry: Seconds,
    pub server_reset_query: Text,
    pub server_check_query: Text,
    pub server_check_delay: Seconds,
    pub client_login_timeout: Seconds,
    pub client_idle_timeout: Seconds,
    pub idle_transaction_timeout: Seconds,
    pub query_timeout: Seconds,
    pub query_wait_timeout: Seconds,
    pub application_name_add_host: bool,
    /// Transaction mode: reset a server's session state (settings, role, cursors, temp
    /// tables, advisory locks) before another client's transaction runs on it.
    pub handover_reset: bool,
    pub max_prepared_statements: usize,
    /// Transaction mode: the most named prepared statements one client may keep.
    pub max_client_prepared_statements: usize,
    pub auth_type: AuthType,
    pub tcp_keepalive: bool,
    pub shutdown_timeout: Seconds,
    /// Period of SHOW STATS's averages (PgBouncer's stats_period).
    pub stats_period: Seconds,
    /// Query fingerprints kept per proxy for SHOW QUERIES and /queries; 0 turns tracking off.
    pub query_stats_max: usize,
    /// Log filter (tracing directives, e.g. "info" or "pgsluice=debug"); RELOAD applies a
    /// change. The PGSLUICE_LOG environment variable wins at startup.
    pub log_level: Text,
    /// Seconds between samples of each upstream's pg_stat_activity (SHOW ACTIVITY); 0: off.
    pub activity_sample_interval: Seconds,
    /// TLS to upstreams (PgBouncer's names; libpq's sslmode values). Per database too.
    pub server_tls_sslmode: super::tls::SslMode,
    pub server_tls_ca_file: Option<Text>,
    pub server_tls_cert_file: Option<Text>,
    pub server_tls_key_file: Option<Text>,
    /// Rules in pg_hba.conf syntax (PgBouncer's auth_hba_file): first match decides.
    pub auth_hba_file: Option<Text>,
    /// Addresses that may connect at all (empty: any), and addresses that may not.
    pub allow_addresses: Vec<Cidr>,
    pub deny_addresses: Vec<Cidr>,
    /// Open connections per client address; 0: no limit.
    pub max_connections_per_address: usize,
    /// Connection attempts per second per client address (bursts of twice that); 0: off.
    pub connection_attempts_per_second: u32,
    /// Failed authentications from one address within `auth_failure_window` seconds that
    /// lock it out for `auth_failure_lockout` seconds; 0: never.
    pub auth_failure_limit: u32,
    pub auth_failure_window: Seconds,
    pub auth_failure_lockout: Seconds,
    /// Addresses the per-address limits do not apply to (loopback: a sidecar's clients).
    pub limits_exempt: Vec<Cidr>,
    /// auth_query passthrough (PgBouncer's names): users not in `[[users]]` are looked up
    /// upstream with `auth_query` through a connection logged in as `auth_user` (a
    /// `[[users]]` entry), in `auth_dbname` (default: the database the client asks for).
    pub auth_user: Option<Text>,
    pub auth_query: Text,
    pub auth_dbname: Option<Text>,
    /// How long a looked-up secret (or its absence) is trusted.
    pub auth_cache_ttl: Seconds,
    /// A client that takes none of its waiting results for this long is closed (its
    /// statement canceled); 0: never. The proxy buffers at most 64 KiB for it meanwhile.
    pub client_stall_timeout: Seconds,
    /// A transaction-mode client idle (no transaction, nothing buffered) for between one and
    /// two of this is parked: its task, relay and reactor registration are freed until its
    /// next message; 0: never.
    pub client_park_delay: Seconds,
    /// Whether an API key or JWT may be sent as a password without TLS.
    pub allow_plaintext_tokens: super::PlaintextTokens,
}

impl General {
    pub fn limit_settings(&self) -> LimitSettings {
        LimitSettings {
            max_per_address: self.max_connections_per_address,
            attempts_per_second: self.connection_attempts_per_second,
            failure_limit: self.auth_failure_limit,
            failure_window: self.auth_failure_window.duration(),
            lockout: self.auth_failure_lockout.duration(),
            exempt: self.limits_exempt.clone(),
        }
    }
}

impl General {
    /// This instance's part of a budget `n` shared by `instances` of them: rounded down, at
    /// least 1 (0, "no limit", stays 0).
    pub fn share(&self, n: usize) -> usize {
        if n == 0 || self.instances <= 1 {
            n
        } else {
            (n / self.instances).max(1)
        }
    }
}

impl Default for General {
    fn default() -> Self {
        General {
            // Agent fleets open thousands of connections; PgBouncer's 100 is a classic outage.
            worker_threads: 0,
            max_client_conn: 10_000,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Seconds(5.0),
            max_db_connections: 0,
            priority_aging: Seconds(5.0),
            priority_reserve: 0,
            priority_classes: ["low", "normal", "high"].map(Text::new).to_vec(),
            default_priority: Text::new("normal"),
            shed_queue_length: 0,
            shed_wait: Seconds(0.0),
            adaptive_limit: false,
            health_check_interval: Seconds(2.0),
            health_check_successes: 2,
            max_standby_lag: Seconds(0.0),
            circuit_failures: 3,
            circuit_backoff: Seconds(2.0),
            proximity_tolerance: Seconds(0.002),
            region: None,
            dns_max_ttl: Seconds(15.0),
            dns_nxdomain_ttl: Seconds(15.0),
            peer_id: 0,
            peer_secret: None,
            instances: 1,
            max_user_connections: 0,
            max_user_client_connections: 0,
            server_lifetime: Seconds(3600.0),
            server_idle_timeout: Seconds(600.0),
            server_connect_timeout: Seconds(15.0),
            server_login_retry: Seconds(0.0),
            server_reset_query: Text::new("DISCARD ALL"),
            server_check_query: Text::new("select 1"),
            server_check_delay: Seconds(30.0),
            client_login_timeout: Seconds(60.0),
            client_idle_timeout: Seconds(0.0),
            idle_transaction_timeout: Seconds(0.0),
            query_timeout: Seconds(0.0),
            query_wait_timeout: Seconds(120.0),
            application_name_add_host: false,
            handover_reset: true,
            max_prepared_statements: 200,
            max_client_prepared_statements: 10_000,
            auth_type: AuthType::ScramSha256,
            tcp_keepalive: true,
            shutdown_timeout: Seconds(30.0),
            stats_period: Seconds(60.0),
            query_stats_max: 1000,
            log_level: Text::new("info"),
            activity_sample_interval: Seconds(0.0),
            server_tls_sslmode: super::tls::SslMode::Prefer,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            auth_hba_file: None,
            allow_addresses: Vec::new(),
            deny_addresses: Vec::new(),
            max_connections_per_address: 1000,
            connection_attempts_per_second: 200,
            auth_failure_limit: 10,
            auth_failure_window: Seconds(60.0),
            auth_failure_lockout: Seconds(300.0),
            auth_user: None,
            auth_query: Text::new("SELECT usename, passwd FROM pg_shadow WHERE usename = $1"),
            auth_dbname: None,
            auth_cache_ttl: Seconds(60.0),
            client_stall_timeout: Seconds(300.0),
            client_park_delay: Seconds(1.0),
            allow_plaintext_tokens: super::PlaintextTokens::Never,
            limits_exempt: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|s| Cidr::try_from((*s).to_owned()).ok())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 for every user whose stored secret allows it (plaintext or SCRAM verifier).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 where the stored secret allows it (plaintext or md5 hash), else SCRAM.
    #[serde(rename = "md5")]
    Md5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: ListenAddr,
    pub mode: PoolMode,
    /// Where its clients are: servers opened for them prefer upstreams of this region over
    /// `[general] region`'s.
    #[serde(default)]
    pub region: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// `IP:port` (IPv6 as `[::1]:6432`) or the path of a unix socket file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "invalid listen address {s:?}: expected IP:port (IPv6 as [::1]:6432) or an absolute unix socket path"
            )
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub addr: SocketAddr,
    /// When set, every endpoint but /health needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Text>,
    /// Connections served at once; more are closed as they arrive.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection may take to send its request headers (and, since each connection
    /// serves one request, to be served); slower ones are closed.
    #[serde(default = "default_http_timeout")]
    pub request_timeout: Seconds,
}

fn default_http_max_connections() -> usize {
    64
}

fn default_http_timeout() -> Seconds {
    Seconds(10.0)
}

impl std::fmt::Debug for Http {
    /// The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `[audit]`: one JSON line per connection event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// "stdout", or a file path (appended to).
    pub destination: Text,
}

impl AuditSettings {
    pub fn destination(&self) -> AuditDestination {
        match self.destination.as_str() {
            "stdout" | "-" => AuditDestination::Stdout,
            path => AuditDestination::File(PathBuf::from(path)),
        }
    }
}

/// `[tls]`: TLS between clients and the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// PEM certificate chain and private key (required unless mode is disable).
    #[serde(default)]
    pub cert: Option<Text>,
    #[serde(default)]
    pub key: Option<Text>,
    /// PEM CA bundle for client certificates: clients may then present one.
    #[serde(default)]
    pub ca: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest answered 'N'; direct TLS refused.
    Disable,
    /// TLS when the client asks, plaintext otherwise (as `prefer` for a server).
    Allow,
    #[default]
    Prefer,
    /// Plaintext clients are refused (28000).
    Require,
}

impl Tls {
    /// The files to load, or None when TLS is off.
    pub fn files(&self) -> Option<super::tls::ServerFiles> {
        if self.mode == ClientTlsMode::Disable {
            return None;
        }
        Some(super::tls::ServerFiles {
            cert: PathBuf::from(self.cert.as_deref()?),
            key: PathBuf::from(self.key.as_deref()?),
            client_ca: self.ca.as_deref().map(PathBuf::from),
        })
    }
}

impl Database {
    /// TLS to this database's server: its own keys, else `[general]`'s.
    pub fn upstream_tls(&self, g: &General) -> super::tls::UpstreamTls {
        let path = |own: &Option<Text>, general: &Option<Text>| {
            own.as_ref()
                .or(general.as_ref())
                .map(|t| PathBuf::from(t.as_str()))
        };
        super::tls::UpstreamTls {
            mode: self.server_tls_sslmode.unwrap_or(g.server_tls_sslmode),
            ca: path(&self.server_tls_ca_file, &g.server_tls_ca_file),
            cert: path(&self.server_tls_cert_file, &g.server_tls_cert_file),
            key: path(&self.server_tls_key_file, &g.server_tls_key_file),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Users that may connect to the virtual database `pgsluice` (the admin console).
    pub users: Vec<Text>,
    /// Users that may only run SHOW commands there.
    pub stats_users: Vec<Text>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// The name clients put in `dbname`.
    pub name: Text,
    /// Host name, IPv4 or IPv6 literal, or a unix socket directory (starts with `/`).
    #[serde(default = "default_host")]
    pub host: Text,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The upstream database; defaults to `name`.
    #[serde(default)]
    pub dbname: Option<Text>,
    /// Several servers instead of `host`/`port` (docs/resilience.md), and which of them its
    /// clients want.
    #[serde(default)]
    pub upstreams: Vec<super::UpstreamEntry>,
    #[serde(default)]
    pub target_session_attrs: super::SessionAttrs,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub min_pool_size: Option<usize>,
    #[serde(default)]
    pub reserve_pool_size: Option<usize>,
    #[serde(default)]
    pub max_db_connections: Option<usize>,
    /// The class of its clients that name none (docs/pooling.md), and the fairness knobs
    /// overriding `[general]`'s.
    #[serde(default)]
    pub priority: Option<Text>,
    #[serde(default)]
    pub priority_reserve: Option<usize>,
    #[serde(default)]
    pub shed_queue_length: Option<usize>,
    #[serde(default)]
    pub shed_wait: Option<Seconds>,
    #[serde(default)]
    pub adaptive_limit: Option<bool>,
    /// Per-database TLS to the upstream, overriding `[general]`.
    #[serde(default)]
    pub server_tls_sslmode: Option<super::tls::SslMode>,
    #[serde(default)]
    pub server_tls_ca_file: Option<Text>,
    #[serde(default)]
    pub server_tls_cert_file: Option<Text>,
    #[serde(default)]
    pub server_tls_key_file: Option<Text>,
    /// Addresses that may use this database (empty: any), and that may not.
    #[serde(default)]
    pub allow_addresses: Vec<Cidr>,
    #[serde(default)]
    pub deny_addresses: Vec<Cidr>,
}

impl Database {
    /// Its servers: `upstreams`, or the one `host`/`port` names.
    pub fn endpoints(&self) -> Vec<super::UpstreamEntry> {
        if !self.upstreams.is_empty() {
            return self.upstreams.clone();
        }
        vec![super::UpstreamEntry {
            host: self.host.clone(),
            port: Some(self.port),
            region: None,
            kind: super::EndpointKind::Postgres,
            tenant: None,
        }]
    }
}

fn default_host() -> Text {
    Text::new("127.0.0.1")
}
fn default_port() -> u16 {
    5432
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Text,
    /// What the client must present: plaintext, `md5<hex>` or a `SCRAM-SHA-256$...` verifier.
    pub password: Text,
    /// The upstream login role; defaults to `name`.
    #[serde(default)]
    pub server_user: Option<Text>,
    /// The upstream password; defaults to `password` when that is plaintext.
    #[serde(default)]
    pub server_password: Option<Text>,
    /// Addresses this user may connect from (empty: any), and may not. Checked after the
    /// password, so a refusal says nothing about which users exist.
    #[serde(default)]
    pub allow_addresses: Vec<Cidr>,
    #[serde(default)]
    pub deny_addresses: Vec<Cidr>,
    /// Its class in the wait queue (one of priority_classes; default: the database's).
    #[serde(default)]
    pub priority: Option<Text>,
    /// Its limits; what it leaves out comes from `[general]`.
    #[serde(default)]
    pub limits: super::LimitKeys,
}

impl std::fmt::Debug for User {
    /// Everything but the passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("server_user", &self.server_user)
            .field("allow_addresses", &self.allow_addresses)
            .field("deny_addresses", &self.deny_addresses)
            .finish_non_exhaustive()
    }
}

/// A duration written as seconds (integer or fraction); 0 means "off" where a key says so.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Seconds(pub f64);

impl TryFrom<f64> for Seconds {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && (0.0..=31_536_000.0).contains(&v) {
            Ok(Seconds(v))
        } else {
            Err(format!(
                "invalid duration {v}: expected seconds between 0 and 31536000"
            ))
        }
    }
}

impl Seconds {
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
    /// `None` when the value is 0 (the feature is off).
    pub fn enabled(self) -> Option<Duration> {
        (self.0 > 0.0).then(|| self.duration())
    }
}

/// What the limits are (from `[general]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LimitSettings {
    /// Open connections per address; 0: no limit.
    pub max_per_address: usize,
    /// Connection attempts per second per address (bursts of twice that); 0: no limit.
    pub attempts_per_second: u32,
    /// Failed authentications within `failure_window` that start a lockout; 0: never.
    pub failure_limit: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    pub exempt: Vec<Cidr>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        General::default().limit_settings()
    }
}

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditDestination {
    Stdout,
    File(PathBuf),
}
