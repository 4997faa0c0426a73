//! Configuration: the TOML model, `${ENV}` substitution, and validation that names the file,
//! line and key of every mistake.

pub mod addresses;
mod agents;
pub mod hba;
mod model;
mod peers;
pub mod risks;
mod text;
pub mod tls;
mod upstreams;

pub use agents::*;
pub use model::*;
pub use peers::Peer;
pub use text::{Text, substitute};
pub use upstreams::*;

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A database names its server with `host`/`port` or with `upstreams`, not both; each
/// upstream has a host and a port.
fn validate_upstreams(d: &Database) -> Result<(), (&'static str, String)> {
    if d.upstreams.is_empty() {
        return Ok(());
    }
    if d.host.as_str() != "127.0.0.1" || d.port != 5432 {
        return Err((
            "upstreams",
            format!(
                "database {:?} names its server with host/port and with upstreams: keep one",
                d.name.as_str()
            ),
        ));
    }
    for u in &d.upstreams {
        if u.host.is_empty() || u.port == Some(0) {
            return Err((
                "upstreams",
                "each upstream needs a host and a port between 1 and 65535".into(),
            ));
        }
    }
    Ok(())
}

/// A configuration mistake, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The `[[databases]]` name that stands for every database no other entry names.
pub const FALLBACK_DATABASE: &str = "*";

/// Names the fallback makes pools for, at most: each name a client asks for is a pool of
/// its own, so a client could otherwise make the proxy allocate without bound.
pub const FALLBACK_DATABASES_MAX: usize = 1000;

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: None,
            reason: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&source, path)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        let locate = |span: Option<Range<usize>>, key: Option<&str>, reason: String| {
            let at = span.map(|s| s.start).unwrap_or(0);
            let (line, column) = line_col(source, at);
            let key = key.map(str::to_owned).or_else(|| key_at(source, at));
            ConfigError {
                file: path.to_owned(),
                line,
                column,
                key,
                reason,
            }
        };
        let mut config: Config = toml::from_str(source)
            .map_err(|e| locate(e.span(), None, e.message().trim().to_owned()))?;
        let g = &config.general;
        let names: Vec<&str> = g.priority_classes.iter().map(Text::as_str).collect();
        let classes = Classes::new(&names, &g.default_priority)
            .map_err(|reason| locate(None, Some("general.priority_classes"), reason))?;
        config.classes = std::sync::Arc::new(classes);
        config
            .validate()
            .map_err(|(span, key, reason)| locate(Some(span), Some(key), reason))?;
        if let Some(file) = &config.general.auth_hba_file {
            let hba_path = PathBuf::from(file.as_str());
            let text = std::fs::read_to_string(&hba_path).map_err(|e| ConfigError {
                file: hba_path.clone(),
                line: 0,
                column: 0,
                key: Some("auth_hba_file".into()),
                reason: format!("cannot read: {e}"),
            })?;
            let hba = hba::Hba::parse(&text).map_err(|e| ConfigError {
                file: hba_path.clone(),
                line: e.line,
                column: 1,
                key: None,
                reason: e.reason,
            })?;
            config.hba = Some(hba);
        }
        config.limits = config.general.limit_settings();
        Ok(config)
    }

    /// Cross-key rules serde cannot express. Returns the span of the offending table.
    fn validate(&self) -> Result<(), (Range<usize>, &'static str, String)> {
        peers::validate(self)?;
        if self.listeners.is_empty() {
            return Err((
                0..0,
                "listeners",
                "at least one [[listeners]] is required".into(),
            ));
        }
        let mut seen = HashSet::new();
        for l in &self.listeners {
            // Port 0 asks the OS for a free port, so it may appear more than once.
            let ephemeral = matches!(l.get_ref().addr, ListenAddr::Tcp(a) if a.port() == 0);
            if !ephemeral && !seen.insert(l.get_ref().addr.clone()) {
                return Err((
                    l.span(),
                    "addr",
                    format!("listener {} is defined twice", l.get_ref().addr),
                ));
            }
        }
        let g = &self.general;
        if g.default_pool_size == 0 {
            return Err((
                0..0,
                "general.default_pool_size",
                "must be at least 1".into(),
            ));
        }
        if let Some(u) = &g.auth_user
            && self.user(u).is_none()
        {
            return Err((
                0..0,
                "general.auth_user",
                format!("\"{u}\" must be a [[users]] entry (its server_password logs in)"),
            ));
        }
        if let Some(d) = &g.auth_dbname
            && self.database(d).is_none()
        {
            return Err((
                0..0,
                "general.auth_dbname",
                format!("no [[databases]] named \"{d}\""),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.mode != ClientTlsMode::Disable {
                for (key, v) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                    if v.is_none() {
                        return Err((0..0, key, "needed when tls.mode is not \"disable\"".into()));
                    }
                }
            }
            if let Some(files) = tls.files() {
                tls::check_server_files(&files).map_err(|e| (0..0, "tls", e.to_string()))?;
            }
        }
        for d in &self.databases {
            tls::check_upstream(&d.get_ref().upstream_tls(g))
                .map_err(|e| (d.span(), "server_tls_sslmode", e.to_string()))?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(g.log_level.as_str()) {
            return Err((0..0, "general.log_level", format!("not a log filter: {e}")));
        }
        if g.max_client_conn == 0 {
            return Err((0..0, "general.max_client_conn", "must be at least 1".into()));
        }
        let mut names = HashSet::new();
        for db in &self.databases {
            let d = db.get_ref();
            if d.name.is_empty() {
                return Err((db.span(), "name", "database name must not be empty".into()));
            }
            if !names.insert(d.name.as_str()) {
                return Err((
                    db.span(),
                    "name",
                    format!("database {:?} is defined twice", d.name.as_str()),
                ));
            }
            if d.name.as_str() == crate::ADMIN_DATABASE {
                return Err((
                    db.span(),
                    "name",
                    format!("{:?} is the admin console's name", d.name.as_str()),
                ));
            }
            if d.pool_size == Some(0) {
                return Err((db.span(), "pool_size", "must be at least 1".into()));
            }
            if d.port == 0 {
                return Err((db.span(), "port", "must be between 1 and 65535".into()));
            }
            validate_upstreams(d).map_err(|(key, why)| (db.span(), key, why))?;
        }
        for (key, v) in [
            ("general.circuit_failures", g.circuit_failures),
            ("general.health_check_successes", g.health_check_successes),
        ] {
            if v == 0 {
                return Err((0..0, key, "must be at least 1".into()));
            }
        }
        let mut users = HashSet::new();
        for u in &self.users {
            let user = u.get_ref();
            if user.name.is_empty() {
                return Err((u.span(), "name", "user name must not be empty".into()));
            }
            if !users.insert(user.name.as_str()) {
                return Err((
                    u.span(),
                    "name",
                    format!("user {:?} is defined twice", user.name.as_str()),
                ));
            }
            // A hashed password without server_password logs in upstream by passthrough:
            // the md5 hash itself, or the ClientKey of the client's SCRAM exchange.
        }
        self.validate_agents(&users)?;
        self.validate_mcp()?;
        self.validate_fairness()?;
        for name in self.admin.users.iter().chain(&self.admin.stats_users) {
            if !users.contains(name.as_str()) {
                return Err((
                    0..0,
                    "admin.users",
                    format!("admin user {:?} has no [[users]] entry", name.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// The queue's knobs: aging keeps a guarantee, and a priority reserve leaves the lower
    /// classes at least one place.
    fn validate_fairness(&self) -> Result<(), (Range<usize>, &'static str, String)> {
        let g = &self.general;
        self.validate_classes()?;
        if !(g.priority_aging.0 > 0.0 && g.priority_aging.0 <= 3600.0) {
            return Err((
                0..0,
                "general.priority_aging",
                "must be more than 0 and at most 3600 seconds".into(),
            ));
        }
        if let Some(r) = self
            .roles
            .iter()
            .find(|r| r.get_ref().limits.dedicated_connections.is_some())
        {
            return Err((
                r.span(),
                "limits.dedicated_connections",
                "belongs on a [[users]] or [[api_keys]] entry: a role's identities are not known in advance".into(),
            ));
        }
        for db in &self.databases {
            let d = db.get_ref();
            let size = d.pool_size.unwrap_or(g.default_pool_size);
            self.validate_dedicated(db, size)?;
            let reserve = d.priority_reserve.unwrap_or(g.priority_reserve);
            if reserve >= size {
                let key = if d.priority_reserve.is_some() {
                    "priority_reserve"
                } else {
                    "general.priority_reserve"
                };
                return Err((
                    db.span(),
                    key,
                    format!(
                        "{reserve} leaves no place of database {:?}'s pool_size {size} to the lower classes",
                        d.name.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every class a user, key, role or database names is one of priority_classes.
    fn validate_classes(&self) -> Result<(), (Range<usize>, &'static str, String)> {
        let named = self
            .users
            .iter()
            .map(|u| (u.span(), u.get_ref().priority.as_ref()))
            .chain(
                self.roles
                    .iter()
                    .map(|r| (r.span(), r.get_ref().priority.as_ref())),
            )
            .chain(
                self.api_keys
                    .iter()
                    .map(|k| (k.span(), k.get_ref().priority.as_ref())),
            )
            .chain(
                self.databases
                    .iter()
                    .map(|d| (d.span(), d.get_ref().priority.as_ref())),
            );
        for (span, class) in named {
            if let Some(c) = class
                && self.classes.rank(c).is_none()
            {
                return Err((
                    span,
                    "priority",
                    format!("`{c}` is not one of priority_classes"),
                ));
            }
        }
        Ok(())
    }

    /// The class called `name`, when there is a name (validated at load: always known).
    pub fn class_of(&self, name: Option<&Text>) -> Option<Priority> {
        self.classes.rank(name?)
    }

    /// Dedicated places leave at least one place of each pool, and of max_db_connections,
    /// to everyone else.
    fn validate_dedicated(
        &self,
        db: &toml::Spanned<Database>,
        size: usize,
    ) -> Result<(), (Range<usize>, &'static str, String)> {
        let d = db.get_ref();
        let roles = self
            .users
            .iter()
            .map(|u| {
                u.get_ref()
                    .server_user
                    .as_deref()
                    .unwrap_or(&u.get_ref().name)
                    .to_owned()
            })
            .chain(
                self.roles
                    .iter()
                    .map(|r| r.get_ref().server_user.to_string()),
            );
        for role in roles {
            let kept: usize = self.dedicated_in(d, &role).iter().map(|(_, n)| n).sum();
            if kept >= size {
                return Err((
                    db.span(),
                    "limits.dedicated_connections",
                    format!(
                        "{kept} dedicated places leave none of database {:?}'s pool_size {size} for role {role}'s other clients",
                        d.name.as_str()
                    ),
                ));
            }
        }
        let max = d
            .max_db_connections
            .unwrap_or(self.general.max_db_connections);
        let kept = self.dedicated_total(d);
        if max > 0 && kept >= max {
            return Err((
                db.span(),
                "limits.dedicated_connections",
                format!(
                    "{kept} dedicated places leave none of database {:?}'s max_db_connections {max}",
                    d.name.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// `[[roles]]`, `[[api_keys]]` and `[jwt]`: names unique and not those of `[[users]]`,
    /// every reference resolved, hashes well formed, sealed claims keyed.
    fn validate_agents(
        &self,
        users: &HashSet<&str>,
    ) -> Result<(), (Range<usize>, &'static str, String)> {
        let mut roles = HashSet::new();
        for r in &self.roles {
            if !roles.insert(r.get_ref().name.as_str()) {
                return Err((
                    r.span(),
                    "name",
                    format!("role {:?} is defined twice", r.get_ref().name.as_str()),
                ));
            }
        }
        let mut logins: HashSet<&str> = HashSet::new();
        for k in &self.api_keys {
            let key = k.get_ref();
            if users.contains(key.name.as_str()) || !logins.insert(key.name.as_str()) {
                return Err((
                    k.span(),
                    "name",
                    format!(
                        "{:?} is already a [[users]] or [[api_keys]] name",
                        key.name.as_str()
                    ),
                ));
            }
            if !roles.contains(key.role.as_str()) {
                return Err((
                    k.span(),
                    "role",
                    format!("no [[roles]] named {:?}", key.role.as_str()),
                ));
            }
            for h in key.hash.iter() {
                sha256_digest(h).map_err(|e| (k.span(), "hash", e))?;
            }
            self.known_databases(&key.databases)
                .map_err(|e| (k.span(), "databases", e))?;
        }
        let tokens = !self.api_keys.is_empty()
            || self
                .jwt
                .as_ref()
                .is_some_and(|j| !j.allowed_roles.is_empty());
        if !self.general.handover_reset && tokens {
            return Err((
                0..0,
                "general.handover_reset",
                "token identities need it: claims must never outlive a client's transaction".into(),
            ));
        }
        let Some(jwt) = &self.jwt else {
            return Ok(());
        };
        for role in &jwt.allowed_roles {
            if !roles.contains(role.as_str()) {
                return Err((
                    0..0,
                    "jwt.allowed_roles",
                    format!("no [[roles]] named {:?}", role.as_str()),
                ));
            }
            if users.contains(role.as_str()) || logins.contains(role.as_str()) {
                return Err((
                    0..0,
                    "jwt.allowed_roles",
                    format!(
                        "{:?} is also a [[users]] or [[api_keys]] name",
                        role.as_str()
                    ),
                ));
            }
        }
        self.known_databases(&jwt.databases)
            .map_err(|e| (0..0, "jwt.databases", e))?;
        if jwt.secret.is_none() && jwt.jwks_url.is_none() && jwt.issuer.is_none() {
            return Err((
                0..0,
                "jwt",
                "needs secret, jwks_url or issuer: nothing could verify a token".into(),
            ));
        }
        if jwt.claims_mode == ClaimsMode::Sealed
            && jwt.claims_secret.is_none()
            && jwt.secret.is_none()
        {
            return Err((
                0..0,
                "jwt.claims_mode",
                "\"sealed\" needs claims_secret (or secret) to key the seal".into(),
            ));
        }
        Ok(())
    }

    fn validate_mcp(&self) -> Result<(), (Range<usize>, &'static str, String)> {
        let Some(mcp) = self.mcp.as_ref().filter(|m| m.enabled) else {
            return Ok(());
        };
        let fail = |key, why: &str| Err((0..0, key, why.to_owned()));
        if self.http.is_none() {
            return fail(
                "mcp.enabled",
                "the endpoint is served on [http] addr: add [http]",
            );
        }
        if mcp.max_rows == 0 {
            return fail("mcp.max_rows", "must be at least 1");
        }
        if mcp.max_bytes < 1024 {
            return fail("mcp.max_bytes", "must be at least 1024");
        }
        if !(1024..=64 << 20).contains(&mcp.max_request_bytes) {
            return fail("mcp.max_request_bytes", "must be between 1024 and 67108864");
        }
        // PostgreSQL takes statement_timeout in milliseconds, up to i32::MAX.
        let t = mcp.statement_timeout.0;
        if !(0.001..=2_000_000.0).contains(&t) {
            return fail(
                "mcp.statement_timeout",
                "must be between 0.001 and 2000000 seconds",
            );
        }
        if let Some(r) = &mcp.resource
            && !(r.starts_with("https://") || r.starts_with("http://"))
        {
            return fail("mcp.resource", "expected an absolute http(s) URI");
        }
        if let Some(o) = mcp
            .allowed_origins
            .iter()
            .find(|o| !o.contains("://") && *o != "null")
        {
            return Err((
                0..0,
                "mcp.allowed_origins",
                format!("{o:?}: expected scheme://host[:port]"),
            ));
        }
        Ok(())
    }

    fn known_databases(&self, names: &[Text]) -> Result<(), String> {
        match names.iter().find(|d| self.database(d).is_none()) {
            Some(d) => Err(format!("no [[databases]] named {:?}", d.as_str())),
            None => Ok(()),
        }
    }

    /// The `[[roles]]` entry named `name`.
    /// The limits of an identity: its own entry's keys, then its role's, then `[general]`.
    pub fn identity_limits(&self, own: LimitKeys, role: Option<&Role>) -> IdentityLimits {
        let g = &self.general;
        let general = LimitKeys {
            max_user_connections: Some(g.max_user_connections),
            max_user_client_connections: Some(g.max_user_client_connections),
            ..LimitKeys::default()
        };
        own.over(role.map_or(LimitKeys::default(), |r| r.limits))
            .over(general)
            .resolve()
    }

    /// The dedicated budgets in the pool of upstream role `role` on `db`: the identity (as
    /// its limits are counted) and its places.
    pub fn dedicated_in(&self, db: &Database, role: &str) -> Vec<(String, usize)> {
        let users = self.users.iter().map(|u| u.get_ref()).filter_map(|u| {
            let n = u.limits.dedicated_connections.filter(|n| *n > 0)?;
            let pool_role = u.server_user.as_deref().unwrap_or(&u.name);
            (pool_role == role).then(|| (format!("user:{}", u.name), n))
        });
        let keys = self.api_keys.iter().map(|k| k.get_ref()).filter_map(|k| {
            let n = k.limits.dedicated_connections.filter(|n| *n > 0)?;
            let mapped = self.role(&k.role)?;
            let here = k.may_use(&db.name);
            (here && mapped.server_user.as_str() == role).then(|| (format!("key:{}", k.name), n))
        });
        users.chain(keys).collect()
    }

    /// Every dedicated place of `db`'s pools: what max_db_connections keeps for them.
    pub fn dedicated_total(&self, db: &Database) -> usize {
        let users = self.users.iter().map(|u| {
            let u = u.get_ref();
            u.limits.dedicated_connections.unwrap_or(0)
        });
        let keys = self.api_keys.iter().map(|k| {
            let k = k.get_ref();
            let here = k.may_use(&db.name);
            if here {
                k.limits.dedicated_connections.unwrap_or(0)
            } else {
                0
            }
        });
        users.chain(keys).sum()
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles
            .iter()
            .map(|r| r.get_ref())
            .find(|r| r.name.as_str() == name)
    }

    /// The `[[api_keys]]` entry named `name`.
    pub fn api_key(&self, name: &str) -> Option<&ApiKey> {
        self.api_keys
            .iter()
            .map(|k| k.get_ref())
            .find(|k| k.name.as_str() == name)
    }

    /// How claims reach RLS (compat unless `[jwt]` says sealed).
    pub fn claims_mode(&self) -> ClaimsMode {
        self.jwt
            .as_ref()
            .map_or(ClaimsMode::Compat, |j| j.claims_mode)
    }

    /// The database clients call `name`: its own `[[databases]]` entry, else the fallback
    /// entry `name = "*"` (PgBouncer's `* = ...`) standing for it, whose upstream database is
    /// the same name unless the fallback sets `dbname`.
    pub fn database(&self, name: &str) -> Option<std::borrow::Cow<'_, Database>> {
        let mut fallback = None;
        for d in self.databases.iter().map(|d| d.get_ref()) {
            match d.name.as_str() {
                n if n == name => return Some(std::borrow::Cow::Borrowed(d)),
                FALLBACK_DATABASE => fallback = Some(d),
                _ => {}
            }
        }
        // PostgreSQL's names are at most 63 bytes; the admin console is never a fallback.
        let console = name == crate::ADMIN_DATABASE || name == crate::ADMIN_DATABASE_ALIAS;
        if name.is_empty() || name.len() > 63 || console {
            return None;
        }
        let mut db = fallback?.clone();
        db.name = Text::new(name);
        Some(std::borrow::Cow::Owned(db))
    }

    /// Whether a `[[databases]]` entry has this very name (the fallback's `*` aside).
    pub fn lists_database(&self, name: &str) -> bool {
        name != FALLBACK_DATABASE
            && self
                .databases
                .iter()
                .any(|d| d.get_ref().name.as_str() == name)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users
            .iter()
            .map(|u| u.get_ref())
            .find(|u| u.name.as_str() == name)
    }
}

fn line_col(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    (line, column)
}

/// The key written on the line that holds `at`, for errors serde reports on a value.
fn key_at(source: &str, at: usize) -> Option<String> {
    let at = at.min(source.len());
    let start = source[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = source[at..].find('\n').map_or(source.len(), |i| at + i);
    let line = &source[start..end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#') && !key.starts_with('[')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listeners]]
addr = "127.0.0.1:6432"
mode = "session"

[[listeners]]
addr = "[::1]:6543"
mode = "transaction"

[http]
addr = "127.0.0.1:9930"

[admin]
users = ["pgsluice_admin"]

[[databases]]
name = "app"
host = "127.0.0.1"
port = 5432
dbname = "postgres"
pool_size = 20

[[users]]
name = "agent"
password = "agent-pw"
server_user = "postgres"
server_password = "pg-pw"

[[users]]
name = "pgsluice_admin"
password = "admin-pw"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn accepts_the_minimal_contract() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[1].get_ref().mode, PoolMode::Transaction);
        assert_eq!(c.database("app").unwrap().pool_size, Some(20));
        assert_eq!(c.general.max_client_conn, 10_000);
        assert_eq!(
            c.user("agent").unwrap().server_user.as_deref(),
            Some("postgres")
        );
    }

    #[test]
    fn the_fallback_database_stands_for_names_no_entry_has() {
        let text =
            format!("{MINIMAL}\n[[databases]]\nname = \"*\"\nhost = \"10.0.0.9\"\npool_size = 4\n");
        let c = Config::parse(&text, Path::new("t.toml")).unwrap();
        // A listed name is its own entry; any other is the fallback's, named as asked.
        assert_eq!(c.database("app").unwrap().host.as_str(), "127.0.0.1");
        let other = c.database("reports").unwrap();
        assert_eq!(
            (other.name.as_str(), other.host.as_str()),
            ("reports", "10.0.0.9")
        );
        assert_eq!((other.dbname.as_deref(), other.pool_size), (None, Some(4)));
        // Never the admin console, an empty name or one PostgreSQL could not have.
        assert!(c.database(crate::ADMIN_DATABASE).is_none());
        assert!(c.database(crate::ADMIN_DATABASE_ALIAS).is_none());
        assert!(c.lists_database("app") && !c.lists_database("reports"));
        assert!(!c.lists_database("*"));
        assert!(c.database("").is_none());
        assert!(c.database(&"x".repeat(64)).is_none());
        // Without a fallback, an unlisted name is unknown.
        let plain = Config::parse(MINIMAL, Path::new("t.toml")).unwrap();
        assert!(plain.database("reports").is_none());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let src = MINIMAL.replace("pool_size = 20", "pool_size = 20\npool_sise = 3");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.line, 22);
        assert!(e.reason.contains("unknown field `pool_sise`"), "{e}");
        assert!(e.to_string().starts_with("test.toml:22:"), "{e}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let src = MINIMAL.replace("mode = \"session\"", "mode = \"sessions\"");
        let e = parse(&src).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (4, Some("mode")), "{e}");
        let src = MINIMAL.replace("addr = \"127.0.0.1:6432\"", "addr = \"localhost\"");
        let e = parse(&src).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (3, Some("addr")), "{e}");
    }

    #[test]
    fn duplicate_database_is_located() {
        let src = format!("{MINIMAL}\n[[databases]]\nname = \"app\"\n");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("name"));
        assert_eq!(e.line, 33, "{e}");
    }

    #[test]
    fn hashed_password_without_server_password_logs_in_by_passthrough() {
        let src = MINIMAL.replace(
            "password = \"admin-pw\"",
            "password = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
        );
        let c = parse(&src).unwrap();
        let u = c.user("pgsluice_admin").unwrap();
        assert!(u.server_password.is_none());
        // Debug never shows a password.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("aaaaaaaa") && !shown.contains("pg-pw"),
            "{shown}"
        );
    }

    #[test]
    fn priority_classes_are_the_ones_the_config_names() {
        let general = "\n[general]\npriority_classes = [\"batch\", \"std\", \"urgent\", \"page\"]\ndefault_priority = \"std\"\n";
        let named = MINIMAL.replace(
            "server_password = \"pg-pw\"",
            "server_password = \"pg-pw\"\npriority = \"urgent\"",
        );
        let c = parse(&format!("{named}{general}")).unwrap();
        let agent = c.user("agent").unwrap();
        assert_eq!(c.class_of(agent.priority.as_ref()), Some(Priority(2)));
        assert_eq!(c.classes.top(), Priority(3));
        assert_eq!(c.classes.default, Priority(1));
        assert_eq!(c.classes.name(Priority(0)), "batch");
        // A class the list does not name is refused where it is used.
        let e = parse(&format!("{MINIMAL}{general}").replace(
            "server_password = \"pg-pw\"",
            "server_password = \"pg-pw\"\npriority = \"high\"",
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("priority"), "{e}");
        assert!(e.reason.contains("`high` is not one of"), "{e}");
        assert!(e.line > 1, "{e}");
        for (classes, why) in [
            ("[]", "between 1 and 8"),
            ("[\"a\", \"a\"]", "named twice"),
            ("[\"Hi There\"]", "lowercase"),
            ("[\"low\", \"high\"]", "default_priority `normal`"),
        ] {
            let src = format!("{MINIMAL}\n[general]\npriority_classes = {classes}\n");
            let e = parse(&src).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("general.priority_classes"), "{e}");
            assert!(e.reason.contains(why), "{classes}: {e}");
        }
    }

    #[test]
    fn fairness_keys_that_would_lock_clients_out_are_refused() {
        let src = MINIMAL.replace("pool_size = 20", "pool_size = 20\npriority_reserve = 20");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("priority_reserve"), "{e}");
        assert!(e.reason.contains("no place"), "{e}");
        let src = MINIMAL.replace(
            "server_password = \"pg-pw\"",
            "server_password = \"pg-pw\"\nlimits = { dedicated_connections = 20 }",
        );
        let e = parse(&src).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("limits.dedicated_connections"),
            "{e}"
        );
        let src = format!("{MINIMAL}\n[general]\npriority_aging = 0\n");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("general.priority_aging"), "{e}");
        let src = MINIMAL.replace(
            "server_password = \"pg-pw\"",
            "server_password = \"pg-pw\"\npriority = \"high\"\nlimits = { max_user_connections = 2, dedicated_connections = 1, at_max_user_connections = \"refuse\" }",
        );
        let c = parse(&src).unwrap();
        let agent = c.user("agent").unwrap();
        let limits = c.identity_limits(agent.limits, None);
        assert_eq!(
            (limits.max_user_connections, limits.dedicated_connections),
            (2, 1)
        );
        assert_eq!(limits.at_max_user_connections, OnLimit::Refuse);
        let db = c.database("app").unwrap();
        assert_eq!(
            c.dedicated_in(&db, "postgres"),
            [("user:agent".to_owned(), 1)]
        );
    }
}
