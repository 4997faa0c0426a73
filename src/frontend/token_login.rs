//! Logging in with an API key or a JWT: the token comes as a cleartext password (only over
//! TLS unless `allow_plaintext_tokens` says otherwise) or by SASL OAUTHBEARER (RFC 7628, as
//! PostgreSQL 18 speaks it) when an hba `oauth` line asks for it. Every refusal is the same
//! 28P01, sent no sooner than [`FAILURE_FLOOR`] after the token arrived, whichever check
//! failed; the audit log says which.

use crate::app::App;
use crate::config::{Config, PlaintextTokens};
use crate::error::ClientError;
use crate::frontend::login::{LoginError, read_password_message, send};
use crate::identity::{self, Identity, Refusal, TokenLogin};
use crate::net::Stream;
use crate::net::listener::Peer;
use crate::proto::{emit, views};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A refusal is answered this long after the token arrived, at the earliest: longer than
/// any check takes (a JWKS refetch aside), so timing does not tell them apart.
pub const FAILURE_FLOOR: Duration = Duration::from_millis(100);

pub const OAUTHBEARER: &str = "OAUTHBEARER";

/// Who is logging in, and how.
pub struct Attempt<'a> {
    pub kind: TokenLogin,
    pub user: &'a str,
    pub database: &'a str,
    pub peer: &'a Peer,
    pub tls: bool,
    pub oauth: bool,
    pub conn: u64,
}

/// The identity the client's token proves; AuthenticationOk is queued in `out`.
pub async fn prove(
    app: &App,
    config: &Config,
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
    a: &Attempt<'_>,
) -> Result<Arc<Identity>, LoginError> {
    if !a.tls && !plaintext_allowed(config, a.peer) {
        audit_refusal(app, a, Refusal::PlaintextRefused).await;
        return Err(LoginError::Refused(ClientError::not_authorized(
            "pgsluice accepts tokens only over TLS: connect with sslmode=require",
        )));
    }
    let token = if a.oauth {
        oauth_token(stream, out, early).await?
    } else {
        cleartext_token(stream, out, early).await?
    };
    let arrived = Instant::now();
    let verified = match std::str::from_utf8(&token) {
        Err(_) => Err(Refusal::Malformed),
        Ok(token) => verify(app, config, a, token).await,
    };
    match verified {
        Ok(identity) => {
            app.metrics.auth_result(identity.source.method(), true);
            emit::auth_ok(out);
            Ok(Arc::new(identity))
        }
        Err(why) => {
            app.metrics.auth_result("token", false);
            tracing::info!(
                conn = a.conn,
                user = a.user,
                reason = why.as_str(),
                "token refused"
            );
            audit_refusal(app, a, why).await;
            if a.oauth {
                oauth_failure(stream, out, early, config).await?;
            }
            tokio::time::sleep_until(arrived + FAILURE_FLOOR).await;
            Err(LoginError::Refused(ClientError::auth_failed(
                a.user, "password",
            )))
        }
    }
}

async fn verify(
    app: &App,
    config: &Config,
    a: &Attempt<'_>,
    token: &str,
) -> Result<Identity, Refusal> {
    let identity = match a.kind {
        TokenLogin::ApiKey => identity::api_key::verify(config, a.user, token.as_bytes())?,
        TokenLogin::Jwt => {
            let expect = identity::jwt::Expect {
                role: Some(a.user),
                audiences: None,
            };
            identity::jwt::verify(config, &app.jwks, expect, token).await?
        }
    };
    if !identity::database_allowed(config, &identity, a.database) {
        return Err(Refusal::DatabaseNotAllowed);
    }
    Ok(identity)
}

fn plaintext_allowed(config: &Config, peer: &Peer) -> bool {
    match config.general.allow_plaintext_tokens {
        PlaintextTokens::Never => false,
        PlaintextTokens::Always => true,
        PlaintextTokens::Local => match peer {
            Peer::Unix => true,
            Peer::Tcp(addr) => crate::config::hba::canonical(addr.ip()).is_loopback(),
        },
    }
}

async fn audit_refusal(app: &App, a: &Attempt<'_>, why: Refusal) {
    if app.audit.enabled() {
        let fields = serde_json::json!({
            "user": a.user, "database": a.database, "reason": why.as_str(),
        });
        app.audit.event("token_refused", a.conn, fields).await;
    }
}

/// AuthenticationCleartextPassword, and the password message's text.
async fn cleartext_token(
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
) -> Result<Vec<u8>, LoginError> {
    emit::auth_cleartext(out);
    send(stream, out).await?;
    let body = read_password_message(stream, early).await?;
    views::password(&body)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| LoginError::Refused(ClientError::protocol("invalid password packet")))
}

/// SASL OAUTHBEARER's initial response, `n,,\x01auth=Bearer <token>\x01\x01`: the token.
async fn oauth_token(
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
) -> Result<Vec<u8>, LoginError> {
    emit::auth_sasl(out, &[OAUTHBEARER]);
    send(stream, out).await?;
    let body = read_password_message(stream, early).await?;
    let (mechanism, response) = views::sasl_initial_response(&body).ok_or_else(|| {
        LoginError::Refused(ClientError::protocol("invalid SASL initial response"))
    })?;
    if mechanism != OAUTHBEARER {
        return Err(LoginError::Refused(ClientError::protocol(
            "client selected an invalid SASL authentication mechanism",
        )));
    }
    bearer_token(response).map(<[u8]>::to_vec).ok_or_else(|| {
        LoginError::Refused(ClientError::protocol(
            "malformed OAUTHBEARER message: expected \"auth=Bearer <token>\"",
        ))
    })
}

/// The token in an OAUTHBEARER client response (RFC 7628 section 3.1).
pub fn bearer_token(response: &[u8]) -> Option<&[u8]> {
    let rest = response.strip_prefix(b"n,")?;
    let gs2_end = rest.iter().position(|&b| b == b',')?;
    let mut fields = rest[gs2_end + 1..].split(|&b| b == 0x01);
    let auth = fields.find(|f| f.starts_with(b"auth="))?;
    let value = &auth[5..];
    let scheme = value.get(..7)?;
    (scheme.eq_ignore_ascii_case(b"Bearer ") && value.len() > 7).then(|| &value[7..])
}

/// The server's error challenge (RFC 7628 3.2.2), the client's dummy reply, then the error.
async fn oauth_failure(
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
    config: &Config,
) -> Result<(), LoginError> {
    let mut status = serde_json::json!({ "status": "invalid_token" });
    if let Some(issuer) = config.jwt.as_ref().and_then(|j| j.issuer.as_ref()) {
        status["openid-configuration"] = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
        .into();
    }
    emit::auth_sasl_continue(out, status.to_string().as_bytes());
    send(stream, out).await?;
    // The client answers with a lone 0x01; anything else ends the exchange all the same.
    let _ = read_password_message(stream, early).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_reads_rfc7628_responses() {
        assert_eq!(
            bearer_token(b"n,,\x01auth=Bearer abc.def\x01\x01"),
            Some(&b"abc.def"[..])
        );
        assert_eq!(
            bearer_token(b"n,a=user,\x01host=x\x01auth=bearer t\x01\x01"),
            Some(&b"t"[..])
        );
        for bad in [
            &b"y,,\x01auth=Bearer t\x01\x01"[..],
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,",
        ] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }
}
