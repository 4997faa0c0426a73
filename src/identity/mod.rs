//! Agent identities: who an API key or a token proves a client to be, the upstream role it
//! acts as, and the claims Row Level Security reads. Verification is here; the exchange with
//! the client is `frontend::token_login`, the claims' delivery `identity::claims`.

pub mod api_key;
pub mod claims;
pub mod jwks;
pub mod jwt;

use crate::config::{Config, Priority};
use std::sync::Arc;

/// A verified client identity.
#[derive(Debug)]
pub struct Identity {
    /// The API key's name, or the token's subject (its role when it has none).
    pub name: Box<str>,
    pub source: Source,
    /// The `sub` claim (empty when the token has none, as Supabase's anon and service keys).
    pub subject: Box<str>,
    /// The token's issuer, for the audit log.
    pub issuer: Option<Box<str>>,
    /// The `[[roles]]` entry it acts as.
    pub role: Box<str>,
    /// Its class, when its key or role names one (else its database's).
    pub priority: Option<Priority>,
    /// The claims as JSON, for `request.jwt.claims` or the seal.
    pub claims: Arc<str>,
    /// Its statements go to the audit log.
    pub audit_statements: bool,
    /// Its limits (its key's, its role's, `[general]`'s).
    pub limits: crate::config::IdentityLimits,
}

impl Identity {
    /// Who this is, unambiguously: source, role and name (a JWT subject may equal an API
    /// key's name; they are still different identities).
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.source.method(), self.role, self.name)
    }

    /// What its limits are counted under: `key:<name>`, `sub:<subject>` (`role:<role>` for
    /// a token without one).
    pub fn limit_key(&self) -> String {
        match self.source {
            Source::ApiKey => format!("key:{}", self.name),
            Source::Jwt if self.subject.is_empty() => format!("role:{}", self.role),
            Source::Jwt => format!("sub:{}", self.subject),
        }
    }

    /// Whether a `[mcp] writers`-style entry names it: a role name, `key:<API key name>`
    /// or `sub:<JWT subject>`.
    pub fn named_by(&self, entry: &str) -> bool {
        match (entry.split_once(':'), self.source) {
            (Some(("key", name)), Source::ApiKey) => name == &*self.name,
            (Some(("sub", sub)), Source::Jwt) => !sub.is_empty() && sub == &*self.subject,
            (Some(_), _) => false,
            (None, _) => entry == &*self.role,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ApiKey,
    Jwt,
}

impl Source {
    /// SHOW CLIENTS' auth_method.
    pub fn method(self) -> &'static str {
        match self {
            Source::ApiKey => "api-key",
            Source::Jwt => "jwt",
        }
    }
}

/// Why a token was refused: for the audit log only (the client always sees the same 28P01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownKey,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    AlgorithmNotAllowed,
    UnknownKid,
    KeysUnavailable,
    WrongRole,
    DatabaseNotAllowed,
    PlaintextRefused,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_api_key",
            Refusal::Malformed => "malformed_token",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::AlgorithmNotAllowed => "algorithm_not_allowed",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::WrongRole => "role_not_allowed",
            Refusal::DatabaseNotAllowed => "database_not_allowed",
            Refusal::PlaintextRefused => "plaintext_refused",
        }
    }
}

/// How a startup user name logs in with a token, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLogin {
    /// An `[[api_keys]]` name: the password is the key.
    ApiKey,
    /// A role `[jwt]` allows: the password is a JWT claiming it.
    Jwt,
}

/// Whether `user` names an API key or a role tokens may claim.
pub fn token_login(config: &Config, user: &str) -> Option<TokenLogin> {
    if config.api_key(user).is_some() {
        return Some(TokenLogin::ApiKey);
    }
    let jwt = config.jwt.as_ref()?;
    jwt.allowed_roles
        .iter()
        .any(|r| r.as_str() == user)
        .then_some(TokenLogin::Jwt)
}

/// The `[[users]]`-shaped entry pools are keyed by: the mapped role's upstream login.
pub fn pool_user(config: &Config, identity: &Identity) -> Option<crate::config::User> {
    let role = config.role(&identity.role)?;
    Some(crate::config::User {
        name: role.name.clone(),
        password: crate::config::Text::default(),
        server_user: Some(role.server_user.clone()),
        server_password: Some(role.server_password.clone()),
        allow_addresses: Vec::new(),
        deny_addresses: Vec::new(),
        // The identity's own class goes before a user's (greeting).
        priority: None,
        // Token clients' limits are the identity's own.
        limits: Default::default(),
    })
}

/// Whether the identity may use `database` (an empty list allows every database).
pub fn database_allowed(config: &Config, identity: &Identity, database: &str) -> bool {
    let listed = match identity.source {
        Source::ApiKey => config.api_key(&identity.name).map(|k| &k.databases),
        Source::Jwt => config.jwt.as_ref().map(|j| &j.databases),
    };
    listed.is_none_or(|l| l.is_empty() || l.iter().any(|d| d.as_str() == database))
}

/// The identity a bearer token proves (MCP): a JWT (anything with a JWT header) claiming an
/// allowed role, with one of `audiences` (None: `[jwt] audiences`); else an API key, found
/// by its hash.
pub async fn from_bearer(
    config: &Config,
    jwks: &jwks::Jwks,
    token: &str,
    audiences: Option<&[String]>,
) -> Result<Identity, Refusal> {
    if jsonwebtoken::decode_header(token).is_ok() {
        if config.jwt.is_none() {
            return Err(Refusal::Malformed);
        }
        let expect = jwt::Expect {
            role: None,
            audiences,
        };
        return jwt::verify(config, jwks, expect, token).await;
    }
    api_key::find(config, token.as_bytes())
}
