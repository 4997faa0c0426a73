//! API keys: the key the agent sends is hashed and compared, in constant time, with each
//! hash its `[[api_keys]]` entry lists (two during a rotation). Keys are never stored.

use super::{Identity, Refusal, Source};
use crate::config::{Config, sha256_digest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The identity `key` proves for the API key named `name`.
pub fn verify(config: &Config, name: &str, key: &[u8]) -> Result<Identity, Refusal> {
    let entry = config.api_key(name).ok_or(Refusal::UnknownKey)?;
    let digest: [u8; 32] = Sha256::digest(key).into();
    if !matches(entry, &digest) {
        return Err(Refusal::UnknownKey);
    }
    identity(config, entry)
}

/// The identity of whichever API key `key` is (a bearer token carries no name). Every
/// entry's hashes are compared, so timing says nothing of which one matched.
pub fn find(config: &Config, key: &[u8]) -> Result<Identity, Refusal> {
    let digest: [u8; 32] = Sha256::digest(key).into();
    let mut found = None;
    for k in &config.api_keys {
        if matches(k.get_ref(), &digest) {
            found = Some(k.get_ref());
        }
    }
    identity(config, found.ok_or(Refusal::UnknownKey)?)
}

/// Whether `digest` is one of the entry's hashes (all compared, in constant time).
fn matches(entry: &crate::config::ApiKey, digest: &[u8; 32]) -> bool {
    let mut matched = subtle::Choice::from(0);
    for h in entry.hash.iter() {
        if let Ok(expected) = sha256_digest(h) {
            matched |= expected.ct_eq(digest);
        }
    }
    matched.into()
}

fn identity(config: &Config, entry: &crate::config::ApiKey) -> Result<Identity, Refusal> {
    let role = config.role(&entry.role).ok_or(Refusal::WrongRole)?;
    let claims = serde_json::json!({
        "sub": entry.subject.as_str(),
        "role": entry.role.as_str(),
        "iss": "pgsluice",
        "api_key": entry.name.as_str(),
    });
    Ok(Identity {
        name: entry.name.as_str().into(),
        source: Source::ApiKey,
        subject: entry.subject.as_str().into(),
        issuer: None,
        role: entry.role.as_str().into(),
        priority: config
            .class_of(entry.priority.as_ref())
            .or(config.class_of(role.priority.as_ref())),
        claims: claims.to_string().into(),
        audit_statements: entry.audit_statements.unwrap_or(role.audit_statements),
        limits: config.identity_limits(entry.limits, Some(role)),
    })
}
