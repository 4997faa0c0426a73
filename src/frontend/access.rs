//! Who may log in, around authentication: the database's address lists and the
//! pg_hba.conf-style rules before the password (their decisions depend only on names and
//! addresses, never on which users exist), the user's address lists after it (so a refusal
//! there tells only someone who knew the password), and client certificate checks.

use crate::config::addresses::permitted;
use crate::config::hba::{HbaMethod, Incoming};
use crate::config::{AuthType, Config, User};
use crate::error::ClientError;
use crate::net::Stream;
use std::net::IpAddr;

/// How the client must prove who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A password exchange; md5 or SCRAM as the stored secret and this preference allow.
    Password(AuthType),
    /// No proof (an hba `trust` line).
    Trust,
    /// A client certificate, verified by the TLS layer, whose CN is the user name.
    Cert,
    /// A token by SASL OAUTHBEARER (an hba `oauth` line).
    OAuth,
}

fn where_from(addr: Option<IpAddr>, tls: bool, user: &str, database: &str) -> String {
    let host = addr.map_or_else(|| "[local]".to_owned(), |a| a.to_string());
    let ssl = if tls { "on" } else { "off" };
    format!("host \"{host}\", user \"{user}\", database \"{database}\", SSL {ssl}")
}

/// Before authentication: the database's address lists, then the hba rules.
pub fn before_auth(
    config: &Config,
    addr: Option<IpAddr>,
    tls: bool,
    user: &str,
    database: &str,
) -> Result<Check, ClientError> {
    if let Some(db) = config.database(database)
        && !permitted(&db.allow_addresses, &db.deny_addresses, addr)
    {
        return Err(ClientError::address_refused());
    }
    let preferred = config.general.auth_type;
    let Some(hba) = &config.hba else {
        return Ok(Check::Password(preferred));
    };
    let conn = Incoming {
        addr,
        tls,
        database,
        user,
    };
    // As PostgreSQL words it (hba.c), 28000 either way.
    let Some(rule) = hba.find(&conn) else {
        return Err(ClientError::not_authorized(format!(
            "no pg_hba.conf entry for {}",
            where_from(addr, tls, user, database)
        )));
    };
    Ok(match rule.method {
        HbaMethod::Reject => {
            return Err(ClientError::not_authorized(format!(
                "pg_hba.conf rejects connection for {}",
                where_from(addr, tls, user, database)
            )));
        }
        HbaMethod::Trust => Check::Trust,
        HbaMethod::Cert => Check::Cert,
        HbaMethod::OAuth => Check::OAuth,
        HbaMethod::Md5 => Check::Password(AuthType::Md5),
        HbaMethod::ScramSha256 => Check::Password(AuthType::ScramSha256),
        HbaMethod::Password => Check::Password(preferred),
    })
}

/// After a successful authentication: the user's address lists.
pub fn after_auth(user: &User, addr: Option<IpAddr>) -> Result<(), ClientError> {
    if permitted(&user.allow_addresses, &user.deny_addresses, addr) {
        Ok(())
    } else {
        Err(ClientError::address_refused())
    }
}

/// The common name of the certificate the client presented over TLS (already verified by
/// rustls against `[tls] ca`).
pub fn certificate_user(stream: &Stream) -> Option<String> {
    let Stream::TlsFromClient(tls) = stream else {
        return None;
    };
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
