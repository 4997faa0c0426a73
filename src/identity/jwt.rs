//! JWTs: HS256/384/512 against `[jwt] secret`; RS/PS/ES/EdDSA against keys from the JWKS.
//! The header's algorithm only picks between those two key sources, each of which holds keys
//! of its own family: an HS token is never checked against a public key (key confusion), and
//! `alg: none` does not parse. exp is required; nbf, iss and aud are checked with `leeway`.

use super::jwks::Jwks;
use super::{Identity, Refusal, Source};
use crate::config::Config;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// What a token must say besides being valid.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    /// The role a wire client named in its startup packet; None (MCP): whatever allowed
    /// role the token claims.
    pub role: Option<&'a str>,
    /// Audiences one of which `aud` must hold; None: `[jwt] audiences` (none: not checked).
    pub audiences: Option<&'a [String]>,
}

/// The identity `token` proves, as `expect` asks.
pub async fn verify(
    config: &Config,
    jwks: &Jwks,
    expect: Expect<'_>,
    token: &str,
) -> Result<Identity, Refusal> {
    let jwt = config.jwt.as_ref().ok_or(Refusal::Malformed)?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
    let key = match header.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = jwt.secret.as_ref().ok_or(Refusal::AlgorithmNotAllowed)?;
            DecodingKey::from_secret(secret.as_bytes())
        }
        alg => jwks.key(config, header.kid.as_deref(), alg).await?,
    };
    let mut v = Validation::new(header.alg);
    v.leeway = jwt.leeway.0 as u64;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp"]);
    if let Some(iss) = &jwt.issuer {
        v.set_issuer(&[iss.as_str()]);
    }
    let audiences: Vec<&str> = match expect.audiences {
        Some(a) => a.iter().map(String::as_str).collect(),
        None => jwt.audiences.iter().map(|t| t.as_str()).collect(),
    };
    if audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&audiences);
    }
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
        .map_err(|e| refusal(e.kind()))?
        .claims;
    identity(config, expect.role, claims)
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => Refusal::AlgorithmNotAllowed,
        _ => Refusal::Malformed,
    }
}

/// The identity verified `claims` describe, when they claim an allowed role (`role`, when
/// given).
fn identity(
    config: &Config,
    role: Option<&str>,
    claims: Map<String, Value>,
) -> Result<Identity, Refusal> {
    let jwt = config.jwt.as_ref().ok_or(Refusal::Malformed)?;
    let claimed = claims.get(jwt.role_claim.as_str()).and_then(Value::as_str);
    let role = match (claimed, role) {
        (Some(c), Some(r)) if c == r => r,
        (Some(c), None) => c,
        _ => return Err(Refusal::WrongRole),
    };
    if !jwt.allowed_roles.iter().any(|r| r.as_str() == role) {
        return Err(Refusal::WrongRole);
    }
    let mapped = config.role(role).ok_or(Refusal::WrongRole)?;
    let subject = claims
        .get(jwt.subject_claim.as_str())
        .and_then(Value::as_str)
        .unwrap_or("");
    let issuer = claims.get("iss").and_then(Value::as_str).map(Box::from);
    Ok(Identity {
        name: if subject.is_empty() { role } else { subject }.into(),
        source: Source::Jwt,
        subject: subject.into(),
        issuer,
        role: role.into(),
        priority: config.class_of(mapped.priority.as_ref()),
        claims: Value::Object(claims).to_string().into(),
        audit_statements: mapped.audit_statements,
        limits: config.identity_limits(Default::default(), Some(mapped)),
    })
}
