//! The agent sections: `[jwt]`, `[[roles]]`, `[[api_keys]]`, `[mcp]`, and the priority class
//! users, keys and roles carry. Meaning as in the contract's agents.toml.

use super::Seconds;
use super::text::Text;
use serde::Deserialize;

/// A priority class: its rank in `priority_classes`, 0 the lowest (the fair-sharing queue
/// honours it; SHOW CLIENTS shows its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(pub u8);

/// Classes a config may name: the queue keeps one FIFO per class.
pub const MAX_CLASSES: usize = 8;

impl Priority {
    /// The ranks of the default classes (`low`, `normal`, `high`).
    pub const LOW: Priority = Priority(0);
    pub const NORMAL: Priority = Priority(1);
    pub const HIGH: Priority = Priority(2);

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// The configured classes, lowest first (`priority_classes`), and the class of clients
/// nothing names one for (`default_priority`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    names: Vec<Box<str>>,
    pub default: Priority,
}

impl Default for Classes {
    fn default() -> Self {
        Classes {
            names: ["low", "normal", "high"].map(Box::from).to_vec(),
            default: Priority::NORMAL,
        }
    }
}

impl Classes {
    /// Classes named lowest first; `default` must be one of them.
    pub fn new(names: &[&str], default: &str) -> Result<Classes, String> {
        if names.is_empty() || names.len() > MAX_CLASSES {
            return Err(format!("name between 1 and {MAX_CLASSES} classes"));
        }
        for (i, n) in names.iter().enumerate() {
            let ok = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "class `{n}`: use lowercase letters, digits and `_` (it names columns and labels)"
                ));
            }
            if names[..i].contains(n) {
                return Err(format!("class `{n}` is named twice"));
            }
        }
        let mut classes = Classes {
            names: names.iter().map(|n| Box::from(*n)).collect(),
            default: Priority(0),
        };
        classes.default = classes
            .rank(default)
            .ok_or_else(|| format!("default_priority `{default}` is not in priority_classes"))?;
        Ok(classes)
    }

    /// The rank of the class called `name`.
    pub fn rank(&self, name: &str) -> Option<Priority> {
        let i = self.names.iter().position(|n| &**n == name)?;
        u8::try_from(i).ok().map(Priority)
    }

    pub fn name(&self, p: Priority) -> &str {
        self.names.get(p.index()).map_or("?", |n| n)
    }

    /// The highest class: the only one that may use priority_reserve.
    pub fn top(&self) -> Priority {
        Priority(u8::try_from(self.names.len().saturating_sub(1)).unwrap_or(0))
    }

    /// Classes, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (Priority, &str)> {
        // At most MAX_CLASSES names: every index fits in a u8.
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (Priority(i as u8), &**n))
    }
}

/// What happens to a client at one of its identity's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// It waits its turn (up to query_wait_timeout).
    #[default]
    Wait,
    /// Its transaction is refused with an error naming the limit.
    Refuse,
}

/// The `limits` table of a `[[users]]`, `[[api_keys]]` or `[[roles]]` entry (docs/pooling.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitKeys {
    /// Servers it may hold at once in a pool.
    pub max_user_connections: Option<usize>,
    /// Client connections it may have open.
    pub max_user_client_connections: Option<usize>,
    /// Transactions it may start per second (transaction mode), and the burst above that.
    pub transactions_per_second: Option<u32>,
    pub transaction_burst: Option<u32>,
    pub at_max_user_connections: Option<OnLimit>,
    pub over_transaction_rate: Option<OnLimit>,
    /// Servers of its pool kept for it alone, within max_db_connections (`[[users]]` and
    /// `[[api_keys]]` only).
    pub dedicated_connections: Option<usize>,
}

impl LimitKeys {
    /// These keys where set, `under`'s elsewhere.
    pub fn over(self, under: LimitKeys) -> LimitKeys {
        LimitKeys {
            max_user_connections: self.max_user_connections.or(under.max_user_connections),
            max_user_client_connections: self
                .max_user_client_connections
                .or(under.max_user_client_connections),
            transactions_per_second: self
                .transactions_per_second
                .or(under.transactions_per_second),
            transaction_burst: self.transaction_burst.or(under.transaction_burst),
            at_max_user_connections: self
                .at_max_user_connections
                .or(under.at_max_user_connections),
            over_transaction_rate: self.over_transaction_rate.or(under.over_transaction_rate),
            dedicated_connections: self.dedicated_connections.or(under.dedicated_connections),
        }
    }

    /// The limits in force (0: none).
    pub fn resolve(self) -> IdentityLimits {
        let rate = self.transactions_per_second.unwrap_or(0);
        IdentityLimits {
            max_user_connections: self.max_user_connections.unwrap_or(0),
            max_user_client_connections: self.max_user_client_connections.unwrap_or(0),
            transactions_per_second: rate,
            transaction_burst: self.transaction_burst.unwrap_or(rate).max(rate.min(1)),
            at_max_user_connections: self.at_max_user_connections.unwrap_or_default(),
            over_transaction_rate: self.over_transaction_rate.unwrap_or(OnLimit::Refuse),
            dedicated_connections: self.dedicated_connections.unwrap_or(0),
        }
    }
}

/// An identity's limits, resolved (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityLimits {
    pub max_user_connections: usize,
    pub max_user_client_connections: usize,
    pub transactions_per_second: u32,
    pub transaction_burst: u32,
    pub at_max_user_connections: OnLimit,
    pub over_transaction_rate: OnLimit,
    pub dedicated_connections: usize,
}

impl IdentityLimits {
    pub fn is_none(&self) -> bool {
        self.max_user_connections == 0
            && self.max_user_client_connections == 0
            && self.transactions_per_second == 0
            && self.dedicated_connections == 0
    }
}

/// How a token identity's claims reach Row Level Security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimsMode {
    /// `request.jwt.claims` and friends, as PostgREST sets them: what Supabase policies read;
    /// the client itself can overwrite them.
    #[default]
    Compat,
    /// `pgsluice.claims()`: set only through an HMAC the proxy makes (sql/pgsluice.sql).
    Sealed,
}

/// `[jwt]`: which tokens are accepted and what they map to.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// HS256/384/512 shared secret (Supabase's JWT secret).
    #[serde(default)]
    pub secret: Option<Text>,
    /// Where RS256/PS256/ES256/EdDSA keys come from: a JWKS URL...
    #[serde(default)]
    pub jwks_url: Option<Text>,
    /// ...or an OIDC issuer whose `/.well-known/openid-configuration` names it. Also the
    /// `iss` every token must carry, when set.
    #[serde(default)]
    pub issuer: Option<Text>,
    /// Accepted `aud` values (a token needs one of them); empty: `aud` is not checked.
    /// PEM CA bundle the JWKS and discovery servers' certificates are checked against;
    /// default: Mozilla's roots.
    #[serde(default)]
    pub jwks_ca_file: Option<Text>,
    #[serde(default)]
    pub audiences: Vec<Text>,
    /// Seconds of clock skew allowed on exp and nbf.
    #[serde(default = "default_leeway")]
    pub leeway: Seconds,
    /// Seconds between scheduled JWKS refreshes (an unknown kid also refreshes, at most
    /// once per `jwks_min_refresh`).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Seconds,
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: Seconds,
    #[serde(default = "default_role_claim")]
    pub role_claim: Text,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: Text,
    /// Roles a token may claim; each needs a `[[roles]]` entry.
    #[serde(default)]
    pub allowed_roles: Vec<Text>,
    #[serde(default)]
    pub claims_mode: ClaimsMode,
    /// Key for sealed claims; defaults to one derived from `secret`.
    #[serde(default)]
    pub claims_secret: Option<Text>,
    /// Databases token clients may use (empty: every database).
    #[serde(default)]
    pub databases: Vec<Text>,
}

fn default_leeway() -> Seconds {
    Seconds(30.0)
}
fn default_jwks_refresh() -> Seconds {
    Seconds(300.0)
}
fn default_jwks_min_refresh() -> Seconds {
    Seconds(10.0)
}
fn default_role_claim() -> Text {
    Text::new("role")
}
fn default_subject_claim() -> Text {
    Text::new("sub")
}

impl std::fmt::Debug for Jwt {
    /// Everything but the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("allowed_roles", &self.allowed_roles)
            .field("claims_mode", &self.claims_mode)
            .finish_non_exhaustive()
    }
}

/// `[[roles]]`: how pools for a mapped role log in upstream.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: Text,
    pub server_user: Text,
    pub server_password: Text,
    /// The class of identities acting as it (default: the database's).
    #[serde(default)]
    pub priority: Option<Text>,
    /// The role is meant to bypass RLS (Supabase's service_role): install-sql does not warn
    /// about its BYPASSRLS.
    #[serde(default)]
    pub bypass_rls: bool,
    /// Every statement of tokens mapped to this role goes to the audit log.
    #[serde(default)]
    pub audit_statements: bool,
    /// Limits of each identity acting as it (each token subject separately).
    #[serde(default)]
    pub limits: LimitKeys,
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .field("server_user", &self.server_user)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// `[[api_keys]]`: an identity whose key is stored only as a hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The identity's name, which the agent sends as its user name.
    pub name: Text,
    /// `sha256:<hex>`, or a list of them: two during a rotation.
    pub hash: Hashes,
    pub role: Text,
    /// The `sub` claim its connections carry.
    pub subject: Text,
    /// Databases it may use (empty: every database).
    #[serde(default)]
    pub databases: Vec<Text>,
    /// Its class; defaults to its role's.
    #[serde(default)]
    pub priority: Option<Text>,
    /// Every statement of this key's connections goes to the audit log (normalized text,
    /// duration, rows, SQLSTATE); defaults to its role's setting.
    #[serde(default)]
    pub audit_statements: Option<bool>,
    /// Its limits; what it leaves out comes from its role, then `[general]`.
    #[serde(default)]
    pub limits: LimitKeys,
}

impl ApiKey {
    /// Whether it may use database `name` (an empty list allows every database).
    pub fn may_use(&self, name: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d.as_str() == name)
    }
}

/// One key hash or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Hashes {
    One(Text),
    Many(Vec<Text>),
}

impl Hashes {
    pub fn iter(&self) -> impl Iterator<Item = &Text> {
        match self {
            Hashes::One(h) => std::slice::from_ref(h).iter(),
            Hashes::Many(v) => v.iter(),
        }
    }
}

/// `[mcp]`: the MCP endpoint at `/mcp` on the `[http]` listener (docs/mcp.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    #[serde(default)]
    pub enabled: bool,
    /// The endpoint's canonical URI (RFC 8707): what the protected resource metadata names
    /// and what a JWT's `aud` must contain. Default `http://<[http] addr>/mcp`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Audiences a JWT presented at /mcp may carry (one is enough). Default: `resource`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `Origin` values a request may carry (`scheme://host[:port]`); a request with any
    /// other Origin gets 403 (DNS rebinding). Requests without Origin (non-browser agents)
    /// pass.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `Host` values (with or without port) a request may carry. Default: localhost,
    /// 127.0.0.1, [::1] and the host of `resource`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Rows a tool call returns at most (a call may ask for fewer).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Bytes of row data a tool call returns at most.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// statement_timeout of every tool call's statement; the call is cancelled on the server
    /// when it is exceeded or the HTTP client goes away.
    #[serde(default = "default_mcp_statement_timeout")]
    pub statement_timeout: Seconds,
    /// Mapped roles or identity names (API key names, JWT subjects) that may write: the
    /// `execute` tool and `explain` with analyze of a write. Everyone else is read-only.
    #[serde(default)]
    pub writers: Vec<String>,
    /// Largest request body accepted (413 above it).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_max_rows() -> usize {
    1000
}

fn default_max_bytes() -> usize {
    1 << 20
}

fn default_mcp_statement_timeout() -> Seconds {
    Seconds(30.0)
}

fn default_max_request_bytes() -> usize {
    1 << 20
}

/// Whether a token may be sent as a password without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaintextTokens {
    /// Only over TLS.
    #[default]
    Never,
    /// Also from loopback addresses and unix sockets (a sidecar's agents).
    Local,
    /// From anywhere (tokens cross the network readable: for test rigs only).
    Always,
}

/// The hex digest in a `sha256:<64 hex>` hash, or why it is not one.
pub fn sha256_digest(hash: &str) -> Result<[u8; 32], String> {
    let hex_part = hash
        .strip_prefix("sha256:")
        .ok_or_else(|| "expected \"sha256:<64 hex digits>\"".to_owned())?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| "expected \"sha256:<64 hex digits>\"".to_owned())?;
    Ok(out)
}
