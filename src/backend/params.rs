//! Session parameters: what a server connection has, what a client expects, and the fewest
//! statements that make the first match the second before the client's work runs there.

use std::sync::Arc;

/// Name/value pairs; a handful per connection, so a vector beats a map. Shared copy-on-write:
/// a client's list starts as its pool's or server's and is copied only when one of them
/// changes, so ten thousand clients with the usual settings hold one list, not ten thousand.
#[derive(Clone, Debug, Default)]
pub struct Params(Option<Arc<Vec<Pair>>>);

type Pair = (Box<str>, Box<str>);

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.shares(other) || self.pairs() == other.pairs()
    }
}

impl Eq for Params {}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs()
            .iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        // Checked before writing: an unchanged value must not unshare the list.
        let at = self.pairs().iter().position(|(k, _)| k.as_ref() == name);
        if at.is_some_and(|i| self.pairs()[i].1.as_ref() == value) {
            return;
        }
        let pairs = Arc::make_mut(self.0.get_or_insert_with(Default::default));
        match at {
            Some(i) => pairs[i].1 = value.into(),
            None => pairs.push((name.into(), value.into())),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs().iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    fn pairs(&self) -> &[Pair] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// The same list, shared with an equal one made at another login if there is one: a
    /// thousand clients that sent the same application_name then hold one copy of the
    /// list, not a thousand (the copy-on-write above only shares lists nobody changed).
    /// Logins only: it takes a lock.
    pub fn interned(self) -> Params {
        /// Distinct lists remembered; the oldest is forgotten past this.
        const KEPT: usize = 32;
        static RECENT: std::sync::Mutex<Vec<Arc<Vec<Pair>>>> = std::sync::Mutex::new(Vec::new());
        let Some(list) = self.0 else {
            return Params(None);
        };
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(same) = recent
            .iter()
            .find(|r| Arc::ptr_eq(r, &list) || ***r == *list)
        {
            return Params(Some(same.clone()));
        }
        if recent.len() >= KEPT {
            recent.remove(0);
        }
        recent.push(list.clone());
        Params(Some(list))
    }

    /// Whether both hold the very same list (the sharing that makes copies free).
    pub fn shares(&self, other: &Params) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

/// Reported parameters (ParameterStatus, protocol 55.2.7) a client may change; the others
/// (server_version, server_encoding, is_superuser, ...) are facts about the server.
const SETTABLE_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// The canonical spelling if `name` is a settable reported parameter (names are case-insensitive).
pub fn settable_reported(name: &str) -> Option<&'static str> {
    SETTABLE_REPORTED
        .iter()
        .copied()
        .find(|k| k.eq_ignore_ascii_case(name))
}

/// What one side of a session keeps: reported values, and settings the server does not report
/// (startup parameters like statement_timeout or search_path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionParams {
    pub reported: Params,
    pub unreported: Params,
}

impl SessionParams {
    /// Startup parameters split into reported and not.
    pub fn from_startup(params: &[(String, String)]) -> SessionParams {
        let mut s = SessionParams::default();
        for (k, v) in params {
            match settable_reported(k) {
                Some(canonical) => s.reported.set(canonical, v),
                None => s.unreported.set(&k.to_ascii_lowercase(), v),
            }
        }
        s
    }
}

/// The statement that brings `server` to what `client` expects, or `None` when they agree.
/// set_config takes values exactly as a startup packet or postgresql.conf writes them, so
/// list-valued settings such as search_path survive unchanged.
pub fn sync_statement(client: &SessionParams, server: &SessionParams) -> Option<String> {
    // The usual case on every checkout: a server that already matches (a client's reported
    // list starts as a copy of a server's, so equal lists compare in order).
    if client == server {
        return None;
    }
    let mut sets = Vec::new();
    for name in SETTABLE_REPORTED {
        if let Some(want) = client.reported.get(name)
            && server.reported.get(name) != Some(want)
        {
            sets.push((*name, want));
        }
    }
    for (name, want) in client.unreported.iter() {
        if server.unreported.get(name) != Some(want) {
            sets.push((name, want));
        }
    }
    let resets: Vec<&str> = server
        .unreported
        .iter()
        .map(|(k, _)| k)
        .filter(|k| client.unreported.get(k).is_none())
        .collect();
    if sets.is_empty() && resets.is_empty() {
        return None;
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        for (i, (name, value)) in sets.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            push_literal(&mut sql, name);
            sql.push_str(", ");
            push_literal(&mut sql, value);
            sql.push_str(", false)");
        }
        sql.push(';');
    }
    for name in resets {
        sql.push_str("RESET ");
        push_identifier(&mut sql, name);
        sql.push(';');
    }
    Some(sql)
}

/// Whether `client` and `server` differ in application_name alone (a setting no value makes
/// fail, so it may be set ahead of the client's work without a round trip).
pub fn differs_only_in_application_name(client: &SessionParams, server: &SessionParams) -> bool {
    client.unreported == server.unreported
        && client
            .reported
            .iter()
            .all(|(k, v)| k == "application_name" || server.reported.get(k) == Some(v))
}

/// Whether a server given `want` would report exactly `want`'s values, so a login need not
/// ask one: `want` differs from `base` (what the pool's servers report) only in an
/// application_name PostgreSQL keeps as sent (printable ASCII, shorter than NAMEDATALEN;
/// others it truncates or rewrites to '?').
pub fn reported_verbatim(want: &SessionParams, base: &SessionParams) -> bool {
    let kept = |v: &str| v.len() < 64 && v.bytes().all(|b| (0x20..0x7f).contains(&b));
    want.unreported == base.unreported
        && base
            .reported
            .iter()
            .all(|(k, _)| want.reported.get(k).is_some())
        && want
            .reported
            .iter()
            .all(|(k, v)| base.reported.get(k) == Some(v) || (k == "application_name" && kept(v)))
}

/// The query that reads back a session's settings after a client changed them: every
/// setting PostgreSQL reports as set in this session, plus `names` (custom settings and
/// `role`, which pg_settings does not list).
pub fn snapshot_statement(names: &[&str]) -> String {
    let mut sql =
        String::from("SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'");
    if !names.is_empty() {
        sql.push_str(" UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push_literal(&mut sql, n);
        }
        sql.push_str("]::text[]) AS n");
    }
    sql
}

/// Turns a snapshot's rows into the settings a client owns: reported ones are tracked through
/// ParameterStatus instead; `role` `none` and empty custom settings mean unset.
pub fn owned_settings(rows: Vec<(String, Option<String>)>) -> Params {
    let mut p = Params::default();
    for (name, value) in rows {
        let Some(value) = value else { continue };
        let name = name.to_ascii_lowercase();
        if settable_reported(&name).is_some() || name == "session_authorization" {
            continue;
        }
        if (name == "role" && value == "none") || (name.contains('.') && value.is_empty()) {
            continue;
        }
        p.set(&name, &value);
    }
    p
}

/// An E'' literal: safe whatever standard_conforming_strings is.
fn push_literal(sql: &mut String, s: &str) {
    sql.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

fn push_identifier(sql: &mut String, s: &str) {
    sql.push('"');
    sql.push_str(&s.replace('"', "\"\""));
    sql.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lists_made_apart_are_shared_once_interned() {
        let made = |name: &str| {
            let mut p = Params::default();
            p.set("TimeZone", "UTC");
            p.set("application_name", name);
            p
        };
        let (a, b, c) = (
            made("agent-7").interned(),
            made("agent-7").interned(),
            made("x"),
        );
        assert!(a.shares(&b), "equal lists share one copy");
        let c = c.interned();
        assert!(!c.shares(&a));
        assert_eq!(c.get("application_name"), Some("x"));
        // Changing a shared list copies it: the other keeps its value.
        let mut d = b.clone();
        d.set("application_name", "y");
        assert_eq!(
            (a.get("application_name"), d.get("application_name")),
            (Some("agent-7"), Some("y"))
        );
        assert!(Params::default().interned().is_empty());
    }

    #[test]
    fn application_name_alone_is_reported_verbatim() {
        let mut base = SessionParams::default();
        base.reported.set("application_name", "");
        base.reported.set("TimeZone", "UTC");
        let mut want = base.clone();
        want.reported.set("application_name", "pgbench");
        assert!(reported_verbatim(&want, &base));
        want.reported.set("application_name", "caf\u{e9}");
        assert!(
            !reported_verbatim(&want, &base),
            "non-ASCII is rewritten by the server"
        );
        want.reported.set("application_name", &"x".repeat(64));
        assert!(!reported_verbatim(&want, &base), "64 bytes are truncated");
        want.reported.set("application_name", "ok");
        want.reported.set("TimeZone", "utc");
        assert!(
            !reported_verbatim(&want, &base),
            "the server spells TimeZone"
        );
        let mut want = base.clone();
        want.unreported.set("search_path", "a");
        assert!(
            !reported_verbatim(&want, &base),
            "the server must accept the setting"
        );
    }

    #[test]
    fn splits_startup_parameters() {
        let s = SessionParams::from_startup(&[
            ("datestyle".into(), "ISO, DMY".into()),
            ("Search_Path".into(), "a, b".into()),
        ]);
        assert_eq!(s.reported.get("DateStyle"), Some("ISO, DMY"));
        assert_eq!(s.unreported.get("search_path"), Some("a, b"));
    }

    #[test]
    fn snapshot_keeps_what_the_client_owns() {
        let sql = snapshot_statement(&["role", "app.tenant"]);
        assert!(
            sql.ends_with("ARRAY[E'role', E'app.tenant']::text[]) AS n"),
            "{sql}"
        );
        let owned = owned_settings(vec![
            ("search_path".into(), Some("a".into())),
            ("TimeZone".into(), Some("UTC".into())),
            ("role".into(), Some("none".into())),
            ("app.tenant".into(), Some(String::new())),
            ("app.user".into(), Some("u1".into())),
            ("nope".into(), None),
        ]);
        assert_eq!(
            owned.iter().collect::<Vec<_>>(),
            vec![("search_path", "a"), ("app.user", "u1")]
        );
    }

    #[test]
    fn builds_the_smallest_sync() {
        let mut client = SessionParams::default();
        let mut server = SessionParams::default();
        server.reported.set("TimeZone", "UTC");
        client.reported.set("TimeZone", "UTC");
        assert_eq!(sync_statement(&client, &server), None);

        client.reported.set("application_name", "it's\\me");
        client.unreported.set("search_path", "\"$user\", public");
        server.unreported.set("statement_timeout", "5s");
        assert_eq!(
            sync_statement(&client, &server).unwrap(),
            "SELECT pg_catalog.set_config(E'application_name', E'it''s\\\\me', false), \
             pg_catalog.set_config(E'search_path', E'\"$user\", public', false);RESET \"statement_timeout\";"
        );
    }
}
