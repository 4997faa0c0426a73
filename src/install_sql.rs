//! `pgsluice install-sql`: installs sql/pgsluice.sql (sealed claims) in a database, stores the
//! seal key derived from the configuration, and warns about mapped roles that could escape
//! Row Level Security (superuser, BYPASSRLS not declared, membership in a stronger role).

use crate::backend::connect::{Upstream, establish};
use crate::backend::server::{InternalError, query_pairs, query_pairs_with};
use crate::config::Config;
use crate::identity::claims::SealKey;
use crate::net::Stream;
use std::time::Duration;

pub const SCHEMA: &str = include_str!("../sql/pgsluice.sql");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the schema and key; returns the warnings about mapped roles.
pub async fn run(config: &Config, url: &str) -> Result<Vec<String>, String> {
    let key = SealKey::from_config(config).ok_or(
        "the configuration has no [jwt] claims_secret or secret to derive the seal key from",
    )?;
    let up = parse_url(url)?;
    let mut conn = establish(&up, TIMEOUT)
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", up.host, up.port))?;
    let s = &mut conn.stream;
    query_pairs(s, SCHEMA, TIMEOUT).await.map_err(sql_err)?;
    check_owners(s).await?;
    let (inner, outer) = key.pads();
    let store = "INSERT INTO pgsluice.seal_key (inner_pad, outer_pad) VALUES (decode($1, 'hex'), decode($2, 'hex')) ON CONFLICT (id) DO UPDATE SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad";
    query_pairs_with(
        s,
        store,
        &[&hex::encode(inner), &hex::encode(outer)],
        TIMEOUT,
    )
    .await
    .map_err(sql_err)?;
    let mut warnings = Vec::new();
    for role in config.roles.iter().map(|r| r.get_ref()) {
        warnings.extend(check_role(s, config, &role.server_user, role.bypass_rls).await?);
    }
    Ok(warnings)
}

/// The schema and its tables must be the installer's: objects someone else made first (IF
/// NOT EXISTS keeps them) could let that role read the key or write claims.
async fn check_owners(s: &mut Stream) -> Result<(), String> {
    let sql = "SELECT 'schema pgsluice', (nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))::text FROM pg_catalog.pg_namespace WHERE nspname = 'pgsluice' UNION ALL SELECT 'table pgsluice.' || c.relname, (c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgsluice' AND c.relkind IN ('r', 'v', 'm', 'f', 'p')";
    let rows = query_pairs(s, sql, TIMEOUT).await.map_err(sql_err)?;
    match rows
        .iter()
        .find(|(_, mine)| mine.as_deref() != Some("true"))
    {
        Some((what, _)) => Err(format!(
            "{what} belongs to another role: drop it or run install-sql as its owner"
        )),
        None => Ok(()),
    }
}

fn sql_err(e: InternalError) -> String {
    match e {
        InternalError::Server(e) => format!("{} ({})", e.message, e.code),
        InternalError::Io(e) => e.to_string(),
    }
}

/// What makes `role` able to leave RLS or become another role.
async fn check_role(
    s: &mut Stream,
    config: &Config,
    role: &str,
    bypass_declared: bool,
) -> Result<Vec<String>, String> {
    let attrs =
        "SELECT rolsuper::text, rolbypassrls::text FROM pg_catalog.pg_roles WHERE rolname = $1";
    let rows = query_pairs_with(s, attrs, &[role], TIMEOUT)
        .await
        .map_err(sql_err)?;
    let Some((superuser, bypass)) = rows.into_iter().next() else {
        return Ok(vec![format!("mapped role \"{role}\" does not exist")]);
    };
    let mut warnings = Vec::new();
    if superuser == "true" {
        warnings.push(format!("mapped role \"{role}\" is a superuser: RLS does not apply to it and it can become any role"));
    }
    if bypass.as_deref() == Some("true") && !bypass_declared {
        warnings.push(format!("mapped role \"{role}\" has BYPASSRLS but its [[roles]] entry does not say bypass_rls = true"));
    }
    // Every role it can act as through membership, and whether it is stronger.
    let members = "WITH RECURSIVE up(oid) AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1 UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN up ON m.member = up.oid) SELECT r.rolname::text, (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole)::text FROM up JOIN pg_catalog.pg_roles r ON r.oid = up.oid WHERE r.rolname <> $1";
    for (granted, strong) in query_pairs_with(s, members, &[role], TIMEOUT)
        .await
        .map_err(sql_err)?
    {
        let mapped = config
            .roles
            .iter()
            .any(|r| r.get_ref().server_user.as_str() == granted);
        let predefined = granted.starts_with("pg_");
        if strong.as_deref() == Some("true") || mapped || predefined {
            warnings.push(format!("mapped role \"{role}\" is a member of \"{granted}\": it can act with that role's privileges (SET ROLE)"));
        }
    }
    Ok(warnings)
}

/// A libpq URL: `postgres[ql]://user:password@host:port/dbname?sslmode=...&host=/socket/dir`.
pub fn parse_url(url: &str) -> Result<Upstream, String> {
    let bad = |why: &str| {
        format!("--database-url: {why} (expected postgres://user:password@host:port/dbname)")
    };
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or_else(|| bad("not a postgres:// URL"))?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, dbname) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (decode(u)?, Some(decode(p)?)),
        None => (decode(userinfo)?, None),
    };
    let (mut host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
    let mut mode = crate::config::tls::SslMode::Prefer;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = sslmode(v).ok_or_else(|| bad("unknown sslmode"))?,
            Some(("host", v)) => host = decode(v)?,
            _ => return Err(bad(&format!("unsupported parameter {pair:?}"))),
        }
    }
    let spec = crate::net::tls::UpstreamTls {
        mode,
        ca: None,
        cert: None,
        key: None,
    };
    let tls = crate::net::tls::client_config(&spec)
        .map_err(|e| e.to_string())?
        .map(|config| crate::backend::connect::TlsTarget { spec, config });
    Ok(Upstream {
        host: if host.is_empty() {
            "127.0.0.1".into()
        } else {
            host
        },
        port,
        dbname: if dbname.is_empty() {
            user.clone()
        } else {
            decode(dbname)?
        },
        user,
        password,
        tls,
        passthrough: None,
        tenant: None,
        addr: None,
        route: None,
    })
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        (h.to_owned(), rest.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    Some((host, port))
}

fn sslmode(v: &str) -> Option<crate::config::tls::SslMode> {
    use crate::config::tls::SslMode;
    Some(match v {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

/// Percent-decoding, for user names and passwords with reserved characters.
fn decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let v = std::str::from_utf8(&hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("--database-url: bad escape in {s:?}"))?;
            out.push(v);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| format!("--database-url: {s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_libpq() {
        let u = parse_url("postgres://own%40er:p%3Aw@[::1]:5433/app?sslmode=disable").unwrap();
        assert_eq!(
            (u.user.as_str(), u.password.as_deref()),
            ("own@er", Some("p:w"))
        );
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("::1", 5433, "app")
        );
        assert!(u.tls.is_none());
        let u = parse_url("postgresql://postgres@/db?host=/tmp/sock&sslmode=disable").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.password),
            ("/tmp/sock", 5432, None)
        );
        assert!(parse_url("mysql://x@y/z").is_err());
        assert!(parse_url("postgres://x@y:notaport/z").is_err());
        assert!(parse_url("postgres://x@y/z?options=1").is_err());
    }
}
