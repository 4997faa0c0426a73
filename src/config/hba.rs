//! Access rules in pg_hba.conf syntax (PostgreSQL's client-authentication chapter, 21.1),
//! read from `auth_hba_file`: `local DATABASE USER METHOD` and
//! `host|hostssl|hostnossl DATABASE USER ADDRESS METHOD`, first match wins, no match refuses.
//! DATABASE and USER are `all` or comma-separated names; ADDRESS is `all`, an IP address or
//! a CIDR block; METHOD is `trust`, `reject`, `md5`, `scram-sha-256`, `password` (treated as
//! the configured password method: cleartext is never asked for) or `cert`.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// The configured password method (pgsluice never asks for cleartext).
    Password,
    /// A client certificate whose CN is the user name.
    Cert,
    /// SASL OAUTHBEARER with a token (PostgreSQL 18's `oauth`): for token identities.
    OAuth,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Names {
    All,
    Some(Vec<String>),
}

impl Names {
    fn parse(field: &str) -> Names {
        if field == "all" {
            Names::All
        } else {
            Names::Some(
                field
                    .split(',')
                    .map(|n| n.trim_matches('"').to_owned())
                    .collect(),
            )
        }
    }
    fn matches(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Some(v) => v.iter().any(|n| n == name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    conn: ConnType,
    databases: Names,
    users: Names,
    /// None: any address (`all`, or a local line).
    address: Option<IpNet>,
    pub method: HbaMethod,
}

/// A line that does not parse, with its number (1-based).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct HbaError {
    pub line: usize,
    pub reason: String,
}

/// The rules of a file, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hba {
    pub rules: Vec<Rule>,
}

/// Where a connection comes from, for matching.
pub struct Incoming<'a> {
    /// None for a unix socket.
    pub addr: Option<IpAddr>,
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
}

fn method(s: &str) -> Option<HbaMethod> {
    Some(match s {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Md5,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "password" => HbaMethod::Password,
        "cert" => HbaMethod::Cert,
        "oauth" => HbaMethod::OAuth,
        _ => return None,
    })
}

fn address(s: &str) -> Option<Option<IpNet>> {
    if s == "all" {
        return Some(None);
    }
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(Some(n));
    }
    s.parse::<IpAddr>().ok().map(|a| Some(IpNet::from(a)))
}

impl Hba {
    pub fn parse(text: &str) -> Result<Hba, HbaError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let err = |reason: String| HbaError { line, reason };
            let conn = match fields[0] {
                "local" => ConnType::Local,
                "host" => ConnType::Host,
                "hostssl" => ConnType::HostSsl,
                "hostnossl" => ConnType::HostNoSsl,
                other => {
                    return Err(err(format!(
                        "unknown connection type {other:?} (local, host, hostssl, hostnossl)"
                    )));
                }
            };
            let want = if conn == ConnType::Local { 4 } else { 5 };
            if fields.len() < want {
                return Err(err(format!(
                    "{} needs {want} fields: type, database, user,{} method",
                    fields[0],
                    if want == 5 { " address," } else { "" }
                )));
            }
            if fields.len() > want {
                return Err(err(format!(
                    "unexpected {:?} after the method (options are not supported)",
                    fields[want]
                )));
            }
            let addr = if conn == ConnType::Local {
                None
            } else {
                address(fields[3]).ok_or_else(|| {
                    err(format!(
                        "invalid address {:?}: expected all, an IP address or a CIDR block",
                        fields[3]
                    ))
                })?
            };
            let m = fields[want - 1];
            let method = method(m).ok_or_else(|| {
                err(format!(
                    "unknown method {m:?} (trust, reject, md5, scram-sha-256, password, cert)"
                ))
            })?;
            if method == HbaMethod::Cert && conn != ConnType::HostSsl {
                return Err(err("cert needs a hostssl line".into()));
            }
            rules.push(Rule {
                line,
                conn,
                databases: Names::parse(fields[1]),
                users: Names::parse(fields[2]),
                address: addr,
                method,
            });
        }
        Ok(Hba { rules })
    }

    /// The first rule that matches, or None (refused: no entry).
    pub fn find(&self, c: &Incoming<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            let kind = match (r.conn, c.addr) {
                (ConnType::Local, None) => true,
                (ConnType::Local, Some(_)) | (_, None) => false,
                (ConnType::Host, Some(_)) => true,
                (ConnType::HostSsl, Some(_)) => c.tls,
                (ConnType::HostNoSsl, Some(_)) => !c.tls,
            };
            kind && r.databases.matches(c.database)
                && r.users.matches(c.user)
                && match (&r.address, c.addr) {
                    (None, _) => true,
                    (Some(net), Some(a)) => net.contains(&canonical(a)),
                    (Some(_), None) => false,
                }
        })
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) match IPv4 rules.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
# comment
local   all     all                    trust
hostssl app     agent   10.0.0.0/8     cert
host    app     agent,bot 127.0.0.1    scram-sha-256  # inline comment
host    all     evil    all            reject
hostnossl all   all     ::1/128        md5
host    all     all     0.0.0.0/0      reject
";

    fn conn<'a>(addr: Option<&str>, tls: bool, db: &'a str, user: &'a str) -> Incoming<'a> {
        Incoming {
            addr: addr.map(|a| a.parse().unwrap()),
            tls,
            database: db,
            user,
        }
    }

    #[test]
    fn first_match_wins() {
        let h = Hba::parse(FILE).unwrap();
        assert_eq!(h.rules.len(), 6);
        let m = |c| h.find(&c).map(|r| (r.line, r.method));
        assert_eq!(m(conn(None, false, "x", "y")), Some((3, HbaMethod::Trust)));
        assert_eq!(
            m(conn(Some("10.1.2.3"), true, "app", "agent")),
            Some((4, HbaMethod::Cert))
        );
        assert_eq!(
            m(conn(Some("10.1.2.3"), false, "app", "agent")),
            Some((8, HbaMethod::Reject))
        );
        assert_eq!(
            m(conn(Some("127.0.0.1"), false, "app", "bot")),
            Some((5, HbaMethod::ScramSha256))
        );
        assert_eq!(
            m(conn(Some("::ffff:127.0.0.1"), false, "app", "bot")),
            Some((5, HbaMethod::ScramSha256))
        );
        assert_eq!(
            m(conn(Some("::1"), false, "other", "someone")),
            Some((7, HbaMethod::Md5))
        );
        assert_eq!(m(conn(Some("::1"), true, "other", "someone")), None);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            Hba::parse("host all all 1.2.3.4/99 md5").unwrap_err().line,
            1
        );
        let e = Hba::parse("\n\nhost all all all ldap").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("ldap"), "{e}");
        assert!(Hba::parse("hostssl all all all md5 clientcert=1").is_err());
        assert!(Hba::parse("host all all all cert").is_err());
        assert!(Hba::parse("host all all md5").is_err());
        assert!(Hba::parse("hostgssenc all all all md5").is_err());
    }
}
