//! Client authentication: what a user's stored secret is, and the SCRAM-SHA-256 and md5
//! exchanges that check a client against it.

pub mod md5;
pub mod passthrough;
pub mod salted;
pub mod scram;

use crate::config::AuthType;

/// A stored password in one of the three forms PostgreSQL itself keeps (`pg_authid.rolpassword`).
#[derive(Clone, Debug)]
pub enum Secret {
    Plain(String),
    /// `md5` + hex(md5(password || username)).
    Md5([u8; 16]),
    Scram(scram::Verifier),
}

impl Secret {
    pub fn parse(stored: &str) -> Secret {
        if let Some(hex) = stored.strip_prefix("md5") {
            let mut out = [0u8; 16];
            if hex.len() == 32 && hex::decode_to_slice(hex, &mut out).is_ok() {
                return Secret::Md5(out);
            }
        }
        if stored.starts_with("SCRAM-SHA-256$")
            && let Some(v) = scram::Verifier::parse(stored)
        {
            return Secret::Scram(v);
        }
        Secret::Plain(stored.to_owned())
    }

    pub fn plaintext(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            _ => None,
        }
    }
}

/// Which exchange the proxy runs with a client whose secret is `secret`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ScramSha256,
    Md5,
}

impl Method {
    pub fn choose(secret: &Secret, preferred: AuthType) -> Method {
        match (secret, preferred) {
            (Secret::Md5(_), _) => Method::Md5,
            (Secret::Scram(_), _) => Method::ScramSha256,
            (Secret::Plain(_), AuthType::Md5) => Method::Md5,
            (Secret::Plain(_), AuthType::ScramSha256) => Method::ScramSha256,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::ScramSha256 => "scram-sha-256",
            Method::Md5 => "md5",
        }
    }
}
