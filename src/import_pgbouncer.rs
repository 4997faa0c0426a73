//! `pgsluice import-pgbouncer pgbouncer.ini [userlist.txt]`: PgBouncer's configuration as
//! pgsluice's TOML, with a note for every setting that does not carry over and why
//! (docs/from-pgbouncer.md). Keys PgBouncer and pgsluice share keep their names; a key the
//! file leaves out keeps pgsluice's default, which the guide lists where it differs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The TOML, and what could not be carried over.
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// `[general]` keys with PgBouncer's name and meaning, by the kind of value.
const SECONDS: &[&str] = &[
    "reserve_pool_timeout",
    "server_lifetime",
    "server_idle_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "server_check_delay",
    "client_login_timeout",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "query_timeout",
    "query_wait_timeout",
    "stats_period",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
];
const COUNTS: &[&str] = &[
    "max_client_conn",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "max_db_connections",
    "max_user_connections",
    "max_user_client_connections",
    "max_prepared_statements",
];
const SWITCHES: &[&str] = &["application_name_add_host", "tcp_keepalive"];
const STRINGS: &[&str] = &[
    "server_reset_query",
    "server_check_query",
    "auth_hba_file",
    "auth_user",
    "auth_query",
    "auth_dbname",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
];
/// Keys with nothing to translate, and why.
const NOT_NEEDED: &[(&str, &str)] = &[
    (
        "logfile",
        "pgsluice logs to stderr (the service manager keeps it)",
    ),
    ("pidfile", "pgsluice does not daemonize"),
    (
        "user",
        "run pgsluice as the user it should be (systemd, container)",
    ),
    ("syslog", "pgsluice logs to stderr"),
    ("syslog_ident", "pgsluice logs to stderr"),
    ("syslog_facility", "pgsluice logs to stderr"),
    (
        "log_connections",
        "logins and disconnections are logged at info (log_level)",
    ),
    (
        "log_disconnections",
        "logins and disconnections are logged at info (log_level)",
    ),
    ("log_pooler_errors", "pgsluice logs the errors it sends"),
    ("log_stats", "SHOW STATS and /metrics have them"),
    ("verbose", "use log_level"),
    (
        "ignore_startup_parameters",
        "pgsluice honours startup parameters",
    ),
    (
        "server_reset_query_always",
        "transaction mode resets state between clients (handover_reset)",
    ),
    (
        "so_reuseport",
        "`pgsluice upgrade` takes the sockets over instead",
    ),
    (
        "unix_socket_mode",
        "the socket file gets the process's umask",
    ),
    (
        "unix_socket_group",
        "the socket file gets the process's group",
    ),
    ("listen_backlog", "the system's default backlog is used"),
    ("pkt_buf", "buffers are sized per connection"),
    ("max_packet_size", "pgsluice bounds messages by kind"),
    ("sbuf_loopcnt", "not needed by pgsluice's scheduler"),
    ("tcp_defer_accept", "not used"),
    ("tcp_socket_buffer", "the kernel's defaults are used"),
    ("tcp_keepcnt", "the kernel's keepalive settings are used"),
    ("tcp_keepidle", "the kernel's keepalive settings are used"),
    ("tcp_keepintvl", "the kernel's keepalive settings are used"),
    ("tcp_user_timeout", "not used"),
    ("suspend_timeout", "online restart is `pgsluice upgrade`"),
    (
        "autodb_idle_timeout",
        "the fallback database's pools stay until restart",
    ),
    (
        "server_round_robin",
        "idle servers are reused most recently used first",
    ),
    (
        "server_fast_close",
        "a RECONNECT closes servers as their transactions end",
    ),
    ("client_tls_protocols", "TLS 1.2 and 1.3 (rustls)"),
    ("client_tls_ciphers", "rustls's safe defaults"),
    ("client_tls_ecdhcurve", "rustls's safe defaults"),
    ("client_tls_dheparams", "rustls's safe defaults"),
    ("server_tls_protocols", "TLS 1.2 and 1.3 (rustls)"),
    ("server_tls_ciphers", "rustls's safe defaults"),
    (
        "disable_pqexec",
        "not supported: clients may send several statements in one Query",
    ),
    (
        "track_extra_parameters",
        "pgsluice follows every setting a client changes",
    ),
];

/// One `key = value` of the ini, with where it was.
struct Entry {
    key: String,
    value: String,
    at: String,
}

/// The ini's sections, in order, `%include` files read in place.
fn read_ini(
    path: &Path,
    depth: usize,
    out: &mut BTreeMap<String, Vec<Entry>>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let at = format!("{}:{}", path.display(), n + 1);
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(file) = line.strip_prefix("%include") {
            if depth >= 10 {
                return Err(format!("{at}: %include nested too deep"));
            }
            // Relative to the working directory, as PgBouncer takes it.
            read_ini(Path::new(file.trim()), depth + 1, out)?;
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_lowercase();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{at}: expected `key = value`, got {line:?}"));
        };
        // Database and user names keep their case; PgBouncer's own keys do not have one.
        let key = key.trim();
        let key = if section == "pgbouncer" {
            key.to_lowercase()
        } else {
            key.to_owned()
        };
        out.entry(section.clone()).or_default().push(Entry {
            key,
            value: value.trim().to_owned(),
            at,
        });
    }
    Ok(())
}

/// A libpq-style `k=v k='v w'` string as pairs.
fn connstring(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("expected key=value in {s:?}"))?;
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('\'') {
            let end = q
                .find('\'')
                .ok_or_else(|| format!("unterminated quote in {s:?}"))?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key.trim().to_lowercase(), value));
        rest = next.trim_start();
    }
    Ok(out)
}

/// `"user" "password"` lines (a doubled `""` is a quote).
fn userlist(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let fields = quoted_fields(line).ok_or_else(|| {
            format!(
                "{}:{}: expected \"user\" \"password\"",
                path.display(),
                n + 1
            )
        })?;
        if let [user, password, ..] = fields.as_slice() {
            out.push((user.clone(), password.clone()));
        }
    }
    Ok(out)
}

fn quoted_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut field = String::new();
        loop {
            match chars.next()? {
                '"' if chars.next_if_eq(&'"').is_some() => field.push('"'),
                '"' => break,
                c => field.push(c),
            }
        }
        out.push(field);
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// PgBouncer's time values: seconds, or with a unit (`ms`, `s`, `min`, `h`, `d`).
fn seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.trim().parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "us" => 0.000_001,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Some(n * scale)
}

fn switch(v: &str) -> Option<bool> {
    match v.to_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Some(true),
        "0" | "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// The translation in progress.
#[derive(Default)]
struct Out {
    general: Vec<String>,
    listeners: Vec<String>,
    tls: Vec<String>,
    admin: Vec<String>,
    databases: Vec<String>,
    users: Vec<String>,
    peers: Vec<String>,
    notes: Vec<String>,
}

impl Out {
    fn note(&mut self, at: &str, what: impl std::fmt::Display) {
        self.notes.push(format!("{at}: {what}"));
    }
}

/// Reads `ini` (and `users`, or the ini's auth_file) and writes the TOML.
pub fn import(ini: &Path, users: Option<&Path>) -> Result<Imported, String> {
    let mut sections = BTreeMap::new();
    read_ini(ini, 0, &mut sections)?;
    // A key set twice (an %include overriding the main file) keeps its last value.
    for entries in sections.values_mut() {
        let mut seen = std::collections::HashSet::new();
        entries.reverse();
        entries.retain(|e| seen.insert(e.key.clone()));
        entries.reverse();
    }
    let empty = Vec::new();
    let pgb = sections.get("pgbouncer").unwrap_or(&empty);
    let mut out = Out::default();
    let get = |k: &str| {
        pgb.iter()
            .rev()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let pool_mode = get("pool_mode").unwrap_or("session").to_lowercase();
    general(pgb, &mut out);
    listeners(pgb, &pool_mode, &mut out);
    client_tls(pgb, &mut out);
    let userlist_path = users
        .map(Path::to_owned)
        .or_else(|| get("auth_file").map(PathBuf::from));
    let list = match &userlist_path {
        Some(p) => userlist(p)?,
        None => Vec::new(),
    };
    let socket_dir = match get("unix_socket_dir") {
        None | Some("") => "/tmp",
        Some(d) => d,
    };
    let forced = databases(
        sections.get("databases").unwrap_or(&empty),
        (&pool_mode, socket_dir),
        &mut out,
    )?;
    let forced = forced.map(|(user, pw)| {
        // user= without password=: PgBouncer takes that user's password from auth_file.
        let pw = pw.or_else(|| {
            let listed = list.iter().find(|(n, _)| *n == user)?;
            matches!(
                crate::auth::Secret::parse(&listed.1),
                crate::auth::Secret::Plain(_)
            )
            .then(|| listed.1.clone())
        });
        (user, pw)
    });
    users_out(
        &list,
        sections.get("users").unwrap_or(&empty),
        (forced, get("auth_user")),
        &mut out,
    )?;
    peers(sections.get("peers").unwrap_or(&empty), &mut out)?;
    for (name, entries) in &sections {
        if !["pgbouncer", "databases", "users", "peers"].contains(&name.as_str()) {
            for e in entries {
                out.note(
                    &e.at,
                    format_args!("[{name}] is not a PgBouncer section: skipped"),
                );
            }
        }
    }
    Ok(Imported {
        toml: render(ini, &out),
        notes: out.notes,
    })
}

fn general(pgb: &[Entry], out: &mut Out) {
    let hba = pgb
        .iter()
        .any(|e| e.key == "auth_type" && e.value.eq_ignore_ascii_case("hba"));
    for e in pgb {
        let (k, v) = (e.key.as_str(), e.value.as_str());
        if k == "auth_hba_file" && !hba {
            out.note(
                &e.at,
                "auth_hba_file: PgBouncer reads it only with auth_type = hba; left out",
            );
            continue;
        }
        if k == "server_check_query" && v == "<empty>" {
            out.note(&e.at, "server_check_query = <empty> (an empty query): pgsluice's default, select 1, checks the same");
            continue;
        }
        if k == "server_tls_sslmode" && v.eq_ignore_ascii_case("allow") {
            out.general
                .push("server_tls_sslmode = \"prefer\"".to_owned());
            out.note(&e.at, "server_tls_sslmode = allow: pgsluice has no allow; prefer (TLS when the server offers it)");
            continue;
        }
        let line = if SECONDS.contains(&k) {
            seconds(v).map(|s| format!("{k} = {s}"))
        } else if COUNTS.contains(&k) {
            v.parse::<u64>().ok().map(|n| format!("{k} = {n}"))
        } else if SWITCHES.contains(&k) {
            switch(v).map(|b| format!("{k} = {b}"))
        } else if STRINGS.contains(&k) {
            Some(format!("{k} = {}", quote(v)))
        } else {
            other_general(e, out);
            continue;
        };
        match line {
            Some(l) => out.general.push(l),
            None => out.note(
                &e.at,
                format_args!("{k} = {v:?}: not a value pgsluice reads; left out"),
            ),
        }
    }
}

/// `[pgbouncer]` keys that are not plain renames: translated elsewhere, mapped, or noted.
fn other_general(e: &Entry, out: &mut Out) {
    let (k, v) = (e.key.as_str(), e.value.as_str());
    match k {
        "listen_addr" | "listen_port" | "unix_socket_dir" | "pool_mode" | "auth_file"
        | "client_tls_sslmode" | "client_tls_key_file" | "client_tls_cert_file"
        | "client_tls_ca_file" => {}
        "auth_type" => match v.to_lowercase().as_str() {
            m @ ("md5" | "scram-sha-256") => out.general.push(format!("auth_type = {}", quote(m))),
            "hba" => {}
            "plain" => out.note(&e.at, "auth_type = plain: pgsluice asks clients for SCRAM-SHA-256 (or md5 with auth_type = \"md5\"), never for a cleartext password"),
            other => out.note(&e.at, format_args!("auth_type = {other}: not supported; every [[users]] entry logs in with its password (SCRAM-SHA-256 by default; `cert` through auth_hba_file)")),
        },
        "admin_users" | "stats_users" => {
            let names: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(quote)
                .collect();
            let key = if k == "admin_users" { "users" } else { "stats_users" };
            out.admin.push(format!("{key} = [{}]", names.join(", ")));
        }
        "peer_id" => {
            let Some(id) = v.parse::<u8>().ok().filter(|id| *id > 0) else {
                out.note(&e.at, format_args!("peer_id = {v}: pgsluice's peer ids are 1 to 255; left out"));
                return;
            };
            out.general.push(format!("peer_id = {id}"));
            out.general
                .push("peer_secret = \"${PGSLUICE_PEER_SECRET}\"".to_owned());
            out.note(&e.at, "peer_id: pgsluice signs cancels forwarded between peers; set PGSLUICE_PEER_SECRET (16 characters or more, the same on every peer)");
        }
        "max_db_client_connections" => out.note(&e.at, "max_db_client_connections: pgsluice limits client connections per identity (max_user_client_connections) and per address, not per database"),
        _ => match NOT_NEEDED.iter().find(|(n, _)| *n == k) {
            Some((_, why)) => out.note(&e.at, format_args!("{k}: not needed: {why}")),
            None => out.note(&e.at, format_args!("{k}: unknown to pgsluice; left out")),
        },
    }
}

/// `[[listeners]]` from listen_addr, listen_port and unix_socket_dir, in the file's pool_mode.
fn listeners(pgb: &[Entry], pool_mode: &str, out: &mut Out) {
    let get = |k: &str| pgb.iter().rev().find(|e| e.key == k);
    let mode = match pool_mode {
        "session" | "transaction" => pool_mode,
        _ => {
            let at = get("pool_mode").map_or("pool_mode".to_owned(), |e| e.at.clone());
            out.note(&at, format_args!("pool_mode = {pool_mode}: pgsluice has session and transaction mode; the listeners are transaction mode"));
            "transaction"
        }
    };
    let port = get("listen_port").map_or("6432", |e| e.value.as_str());
    let mut addrs = Vec::new();
    if let Some(e) = get("listen_addr") {
        for a in e.value.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match a {
                "*" => addrs.extend(["0.0.0.0".to_owned(), "[::]".to_owned()]),
                "localhost" => addrs.extend(["127.0.0.1".to_owned(), "[::1]".to_owned()]),
                ip if ip.parse::<std::net::Ipv4Addr>().is_ok() => addrs.push(ip.to_owned()),
                ip if ip.parse::<std::net::Ipv6Addr>().is_ok() => addrs.push(format!("[{ip}]")),
                host => out.note(&e.at, format_args!("listen_addr {host}: pgsluice listens on addresses, not host names; add a [[listeners]] with its address")),
            }
        }
    }
    let dir = get("unix_socket_dir").map_or("/tmp", |e| e.value.as_str());
    let mut push = |addr: String| {
        out.listeners
            .push(format!("addr = {}\nmode = {}", quote(&addr), quote(mode)));
    };
    for a in addrs {
        push(format!("{a}:{port}"));
    }
    if !dir.is_empty() {
        push(format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/')));
    }
}

fn client_tls(pgb: &[Entry], out: &mut Out) {
    let get = |k: &str| pgb.iter().rev().find(|e| e.key == k);
    let Some(mode) = get("client_tls_sslmode") else {
        return;
    };
    let m = mode.value.to_lowercase();
    let tls_mode = match m.as_str() {
        "disable" => return,
        "allow" | "prefer" | "require" => m.clone(),
        "verify-ca" | "verify-full" => {
            out.note(&mode.at, format_args!("client_tls_sslmode = {m}: clients that present a certificate have it verified against `ca`; to require one, use auth_hba_file with the `cert` method"));
            "require".to_owned()
        }
        other => {
            out.note(
                &mode.at,
                format_args!("client_tls_sslmode = {other}: unknown; TLS left off"),
            );
            return;
        }
    };
    out.tls.push(format!("mode = {}", quote(&tls_mode)));
    for (pgb_key, key) in [
        ("client_tls_cert_file", "cert"),
        ("client_tls_key_file", "key"),
        ("client_tls_ca_file", "ca"),
    ] {
        if let Some(e) = get(pgb_key) {
            out.tls.push(format!("{key} = {}", quote(&e.value)));
        }
    }
}

/// `[[databases]]`; returns the upstream user and password every database forces, when
/// they all force the same one (pgsluice sets the upstream login per user, not per database).
fn databases(
    entries: &[Entry],
    (pool_mode, socket_dir): (&str, &str),
    out: &mut Out,
) -> Result<Option<(String, Option<String>)>, String> {
    let mut forced: Vec<(String, Option<String>)> = Vec::new();
    let mut unforced = false;
    for e in entries {
        let pairs = connstring(&e.value).map_err(|m| format!("{}: {m}", e.at))?;
        let mut lines = vec![format!("name = {}", quote(&e.key))];
        let (mut user, mut password) = (None, None);
        if !pairs.iter().any(|(k, _)| k == "host") {
            // No host: PgBouncer connects over its unix socket directory.
            lines.push(format!("host = {}", quote(socket_dir)));
        }
        for (k, v) in pairs {
            match k.as_str() {
                "host" if v.contains(',') => {
                    let ups: Vec<String> = v
                        .split(',')
                        .map(|h| format!("{{ host = {} }}", quote(h.trim())))
                        .collect();
                    lines.push(format!("upstreams = [{}]", ups.join(", ")));
                }
                "host" | "dbname" => lines.push(format!("{k} = {}", quote(&v))),
                "port" | "pool_size" | "min_pool_size" | "reserve_pool_size" | "reserve_pool"
                | "max_db_connections" => {
                    let key = if k == "reserve_pool" { "reserve_pool_size" } else { k.as_str() };
                    match v.parse::<u64>() {
                        Ok(n) => lines.push(format!("{key} = {n}")),
                        Err(_) => out.note(&e.at, format_args!("{k}={v}: not a number; left out")),
                    }
                }
                "user" => user = Some(v),
                "password" => password = Some(v),
                "pool_mode" if v != pool_mode => out.note(&e.at, format_args!("database {}: pool_mode={v}: pgsluice chooses the mode by listener; give its clients a [[listeners]] with mode = {v:?}", e.key)),
                "pool_mode" => {}
                "client_encoding" | "datestyle" | "timezone" | "application_name" => out.note(&e.at, format_args!("database {}: {k}={v}: clients set it in their startup packet, and pgsluice applies each client's own", e.key)),
                other => out.note(&e.at, format_args!("database {}: {other}={v}: not supported per database; left out", e.key)),
            }
        }
        if e.key == crate::config::FALLBACK_DATABASE {
            lines.push("# PgBouncer's fallback: any other database name, pooled to the same-named upstream database".to_owned());
        }
        match user {
            Some(u) => forced.push((u, password)),
            None => unforced = true,
        }
        out.databases.push(lines.join("\n"));
    }
    forced.sort();
    forced.dedup();
    match forced.as_slice() {
        [] => Ok(None),
        [one] if !unforced => Ok(Some(one.clone())),
        _ => {
            out.note("[databases]", "user= on some databases (or different ones): pgsluice sets the upstream login per user (server_user, server_password), not per database; set them on the [[users]] entries");
            Ok(None)
        }
    }
}

fn users_out(
    list: &[(String, String)],
    settings: &[Entry],
    (forced, auth_user): (Option<(String, Option<String>)>, Option<&str>),
    out: &mut Out,
) -> Result<(), String> {
    for (name, password) in list {
        let mut lines = vec![
            format!("name = {}", quote(name)),
            format!("password = {}", quote(password)),
        ];
        // auth_user logs in as itself to run auth_query, whatever the databases force.
        if let Some((user, pw)) = forced.as_ref().filter(|_| auth_user != Some(name.as_str())) {
            lines.push(format!("server_user = {}", quote(user)));
            if let Some(pw) = pw {
                lines.push(format!("server_password = {}", quote(pw)));
            }
        }
        if matches!(
            crate::auth::Secret::parse(password),
            crate::auth::Secret::Plain(_)
        ) {
            out.note(name, "a plaintext password, now in the TOML: move it into the environment (password = \"${NAME}\")");
        }
        let mut limits = Vec::new();
        for e in settings.iter().filter(|e| &e.key == name) {
            for (k, v) in connstring(&e.value).map_err(|m| format!("{}: {m}", e.at))? {
                match k.as_str() {
                    "max_user_connections" | "max_user_client_connections" => {
                        match v.parse::<u64>() {
                            Ok(n) => limits.push(format!("{k} = {n}")),
                            Err(_) => out.note(
                                &e.at,
                                format_args!("user {name}: {k}={v}: not a number; left out"),
                            ),
                        }
                    }
                    other => out.note(
                        &e.at,
                        format_args!("user {name}: {other}={v}: not supported per user; left out"),
                    ),
                }
            }
        }
        if !limits.is_empty() {
            lines.push(format!("limits = {{ {} }}", limits.join(", ")));
        }
        out.users.push(lines.join("\n"));
    }
    for e in settings
        .iter()
        .filter(|e| !list.iter().any(|(n, _)| n == &e.key))
    {
        out.note(
            &e.at,
            format_args!(
                "[users] {}: not in the userlist; its settings are left out",
                e.key
            ),
        );
    }
    Ok(())
}

fn peers(entries: &[Entry], out: &mut Out) -> Result<(), String> {
    for e in entries {
        let pairs = connstring(&e.value).map_err(|m| format!("{}: {m}", e.at))?;
        let find = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let host = find("host").unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = find("port").unwrap_or_else(|| "6432".to_owned());
        let (Ok(id), Ok(port)) = (e.key.parse::<u8>(), port.parse::<u16>()) else {
            out.note(
                &e.at,
                format_args!(
                    "peer {}: an id of 1 to 255 and a port number are needed; left out",
                    e.key
                ),
            );
            continue;
        };
        out.peers
            .push(format!("id = {id}\nhost = {}\nport = {port}", quote(&host)));
    }
    Ok(())
}

fn render(ini: &Path, out: &Out) -> String {
    let mut s = format!(
        "# Imported from {} by `pgsluice import-pgbouncer`; see docs/from-pgbouncer.md.\n",
        ini.display()
    );
    let mut table = |header: &str, lines: &[String], many: bool| {
        if lines.is_empty() {
            return;
        }
        if many {
            for l in lines {
                let _ = write!(s, "\n[[{header}]]\n{l}\n");
            }
        } else {
            let _ = write!(s, "\n[{header}]\n{}\n", lines.join("\n"));
        }
    };
    table("general", &out.general, false);
    table("listeners", &out.listeners, true);
    table("tls", &out.tls, false);
    table("admin", &out.admin, false);
    table("databases", &out.databases, true);
    table("users", &out.users, true);
    table("peers", &out.peers, true);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connstrings_quotes_and_userlists_parse() {
        assert_eq!(
            connstring("host=db port=5432 dbname='my db'").unwrap(),
            vec![
                ("host".into(), "db".into()),
                ("port".into(), "5432".into()),
                ("dbname".into(), "my db".into())
            ]
        );
        assert!(connstring("host").is_err());
        assert_eq!(
            quoted_fields(r#""a""b" "md5x""#).unwrap(),
            vec!["a\"b".to_owned(), "md5x".to_owned()]
        );
        assert_eq!(quoted_fields("a b"), None);
        assert_eq!(seconds("1.5"), Some(1.5));
        assert_eq!(seconds("2min"), Some(120.0));
        assert_eq!(seconds("x"), None);
    }
}
