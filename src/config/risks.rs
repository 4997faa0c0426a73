//! Settings that are valid but risky, which `pgsluice check-config` warns about: pools that
//! may open more server connections than PostgreSQL allows by default, a listener reachable
//! from other hosts without TLS, and secrets written into the file instead of `${ENV}`.

use super::{ClientTlsMode, Config, ListenAddr, line_col};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// PostgreSQL's default `max_connections` (100) less `superuser_reserved_connections` (3).
pub const DEFAULT_SERVER_CONNECTIONS: usize = 97;

/// One warning, at a line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Every warning for `config`, parsed from `source`, in the order of the file.
pub fn warnings(config: &Config, source: &str) -> Vec<Warning> {
    let at = |span: Range<usize>, key: &str, message: String| Warning {
        line: line_col(source, span.start).0,
        key: key.to_owned(),
        message,
    };
    let mut out = Vec::new();
    cleartext_listeners(config, &mut |s, k, m| out.push(at(s, k, m)));
    server_connections(config, &mut |s, k, m| out.push(at(s, k, m)));
    literal_secrets(source, &mut |s, k, m| out.push(at(s, k, m)));
    out.sort_by_key(|w| w.line);
    out
}

type Report<'a> = dyn FnMut(Range<usize>, &str, String) + 'a;

/// A TCP listener on a non-loopback address while clients cannot use TLS.
fn cleartext_listeners(config: &Config, report: &mut Report<'_>) {
    let tls = config
        .tls
        .as_ref()
        .is_some_and(|t| t.mode != ClientTlsMode::Disable);
    if tls {
        return;
    }
    for l in &config.listeners {
        if let ListenAddr::Tcp(addr) = &l.get_ref().addr
            && !addr.ip().is_loopback()
        {
            report(
                l.span(),
                "listeners.addr",
                format!(
                    "{addr} accepts connections from other hosts without TLS: passwords, tokens \
                     and rows cross the network in the clear; add [tls] (docs/security.md)"
                ),
            );
        }
    }
}

/// Per upstream server, the connections every pool of every database on it may open, when
/// no `max_db_connections` caps them, against PostgreSQL's default `max_connections`.
fn server_connections(config: &Config, report: &mut Report<'_>) {
    let g = &config.general;
    let admins = |name: &str| {
        config.admin.users.iter().any(|u| u.as_str() == name)
            || config.admin.stats_users.iter().any(|u| u.as_str() == name)
    };
    // The upstream roles clients log in as: each is a pool per database.
    let mut roles: Vec<&str> = config
        .users
        .iter()
        .map(|u| u.get_ref())
        .filter(|u| !admins(&u.name) || u.server_user.is_some())
        .map(|u| u.server_user.as_deref().unwrap_or(&u.name))
        .chain(
            config
                .roles
                .iter()
                .map(|r| r.get_ref().server_user.as_str()),
        )
        .collect();
    roles.sort_unstable();
    roles.dedup();
    // server (host:port) -> (connections, the first database's span, its databases)
    let mut servers: BTreeMap<String, (usize, Range<usize>, Vec<String>)> = BTreeMap::new();
    for d in &config.databases {
        let db = d.get_ref();
        let per_pool = db.pool_size.unwrap_or(g.default_pool_size)
            + db.reserve_pool_size.unwrap_or(g.reserve_pool_size);
        let cap = db.max_db_connections.unwrap_or(g.max_db_connections);
        let mut n = per_pool * roles.len();
        if cap > 0 {
            n = n.min(cap);
        }
        for e in db.endpoints() {
            let key = format!("{}:{}", e.host, e.port.unwrap_or(db.port));
            let entry = servers.entry(key).or_insert((0, d.span(), Vec::new()));
            entry.0 += n;
            entry.2.push(db.name.to_string());
        }
    }
    for (server, (n, span, dbs)) in servers {
        if n > DEFAULT_SERVER_CONNECTIONS {
            report(
                span,
                "databases.pool_size",
                format!(
                    "the pools of {} ({} upstream roles x (pool_size + reserve_pool_size)) may \
                     open {n} connections to {server}; PostgreSQL allows {} by default \
                     (max_connections 100, 3 kept for superusers): set max_db_connections to \
                     what the server allows, or lower pool_size",
                    dbs.join(", "),
                    roles.len(),
                    DEFAULT_SERVER_CONNECTIONS
                ),
            );
        }
    }
}

/// The file's secrets as written, before `${ENV}` substitution.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    general: RawGeneral,
    http: Option<RawHttp>,
    jwt: Option<RawJwt>,
    users: Vec<RawCredentials>,
    roles: Vec<RawCredentials>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawGeneral {
    peer_secret: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHttp {
    token: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawJwt {
    secret: Option<Spanned<String>>,
    claims_secret: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCredentials {
    password: Option<Spanned<String>>,
    server_password: Option<Spanned<String>>,
}

/// Secrets written into the file: anyone who can read it (a backup, a ConfigMap, a
/// repository) has them. A stored md5 hash or SCRAM verifier is not a password.
fn literal_secrets(source: &str, report: &mut Report<'_>) {
    let Ok(raw) = toml::from_str::<Raw>(source) else {
        return;
    };
    let mut check = |value: &Option<Spanned<String>>, key: &str, hashed_ok: bool| {
        let Some(v) = value else { return };
        let text = v.get_ref();
        let hashed =
            text.starts_with("SCRAM-SHA-256$") || (text.len() == 35 && text.starts_with("md5"));
        if text.contains("${") || text.is_empty() || (hashed_ok && hashed) {
            return;
        }
        report(
            v.span(),
            key,
            "a secret written in the file: anyone who reads the file has it; write \
             \"${NAME}\" and set the environment variable NAME"
                .to_owned(),
        );
    };
    check(&raw.general.peer_secret, "general.peer_secret", false);
    if let Some(h) = &raw.http {
        check(&h.token, "http.token", false);
    }
    if let Some(j) = &raw.jwt {
        check(&j.secret, "jwt.secret", false);
        check(&j.claims_secret, "jwt.claims_secret", false);
    }
    for u in &raw.users {
        check(&u.password, "users.password", true);
        check(&u.server_password, "users.server_password", false);
    }
    for r in &raw.roles {
        check(&r.server_password, "roles.server_password", false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[[listeners]]
addr = "127.0.0.1:6432"
mode = "session"

[[databases]]
name = "app"
host = "127.0.0.1"
port = 5432

[[users]]
name = "agent"
password = "md5d41d8cd98f00b204e9800998ecf8427e"
"#;

    fn warnings_of(text: &str) -> Vec<Warning> {
        let config = Config::parse(text, Path::new("t.toml")).expect("valid");
        warnings(&config, text)
    }

    #[test]
    fn a_safe_file_has_no_warning() {
        assert_eq!(warnings_of(BASE), vec![]);
    }

    #[test]
    fn a_public_listener_without_tls_is_named_with_its_line() {
        let text = BASE.replace("127.0.0.1:6432", "0.0.0.0:6432");
        let w = warnings_of(&text);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].line, w[0].key.as_str()), (2, "listeners.addr"));
        assert!(w[0].message.contains("0.0.0.0:6432"), "{w:?}");
    }

    #[test]
    fn literal_secrets_are_named_and_hashes_and_env_are_not() {
        let text = format!(
            "{BASE}\n[[users]]\nname = \"b\"\npassword = \"hunter2\"\nserver_password = \"s\"\n\
             \n[[users]]\nname = \"c\"\npassword = \"md5{}\"\n",
            "0".repeat(32)
        );
        let w = warnings_of(&text);
        let keys: Vec<(usize, &str)> = w.iter().map(|w| (w.line, w.key.as_str())).collect();
        assert_eq!(
            keys,
            vec![(17, "users.password"), (18, "users.server_password")]
        );
    }

    #[test]
    fn pools_past_the_servers_default_are_counted_per_server() {
        // Two roles x 50: 100 connections to one server, over the default's 97.
        let text = format!(
            "{}\n[[users]]\nname = \"b\"\npassword = \"md5{}\"\nserver_user = \"reporter\"\n",
            BASE.replace("port = 5432\n", "port = 5432\npool_size = 50\n"),
            "0".repeat(32)
        );
        let w = warnings_of(&text);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "databases.pool_size");
        assert!(
            w[0].message
                .contains("may open 100 connections to 127.0.0.1:5432"),
            "{w:?}"
        );
        // A cap within what the server allows silences it.
        let capped = text.replace(
            "pool_size = 50\n",
            "pool_size = 50\nmax_db_connections = 90\n",
        );
        assert_eq!(warnings_of(&capped), vec![]);
    }
}
