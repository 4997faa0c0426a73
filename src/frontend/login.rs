//! Checking a client's password: SCRAM-SHA-256 or md5 against `[[users]]`. Unknown users go
//! through the same exchange with a decoy secret and fail at the same step, so neither the
//! messages nor the timing say which users exist.

use crate::app::App;
use crate::auth::{Method, Secret, md5, scram};
use crate::error::ClientError;
use crate::net::Stream;
use crate::net::stream::read_message;
use crate::proto::tag::frontend as fe;
use crate::proto::{emit, views};
use bytes::BytesMut;

/// Longest authentication message a client may send.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("client left during authentication")]
    Gone,
    #[error("{0}")]
    Refused(ClientError),
    /// An md5 response that did not match the secret known: it can be checked again against
    /// a secret looked up afresh (auth_query, after `ALTER ROLE ... PASSWORD`).
    #[error("{0}")]
    Md5Mismatch(ClientError, Md5Answer),
}

/// What the client answered to an md5 challenge.
#[derive(Debug)]
pub struct Md5Answer {
    salt: [u8; 4],
    response: Box<[u8]>,
}

impl Md5Answer {
    /// Whether the answer proves the password of `secret` (an md5 secret; nothing else can be
    /// checked against an md5 answer).
    pub fn proves(&self, secret: &Secret) -> bool {
        match secret {
            Secret::Md5(h) => md5::verify(h, self.salt, &self.response),
            _ => false,
        }
    }
}

/// What a successful exchange proved.
pub struct Proof {
    pub method: Method,
    /// SCRAM's ClientKey, for logging in upstream without the password.
    pub client_key: Option<[u8; 32]>,
}

/// Runs the exchange; on success AuthenticationOk has been queued in `out`.
pub async fn authenticate(
    app: &App,
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
    preferred: crate::config::AuthType,
) -> Result<Proof, LoginError> {
    let mut client_key = None;
    let mut md5_answer = None;
    let method = match secret {
        Some(s) => Method::choose(s, preferred),
        None => Method::choose(&Secret::Plain(String::new()), preferred),
    };
    let ok = match method {
        Method::Md5 => {
            let answer = md5_exchange(stream, out, early).await?;
            let ok = match secret {
                Some(Secret::Plain(p)) => answer.proves(&Secret::Md5(md5::stored_hash(p, user))),
                Some(s) => answer.proves(s),
                None => false,
            };
            md5_answer = Some(answer);
            ok
        }
        Method::ScramSha256 => {
            let verifier = match secret {
                Some(Secret::Scram(v)) => v.clone(),
                Some(Secret::Plain(p)) => app.verifier_for(user, p).await,
                _ => scram::Verifier::decoy(user, &app.instance_secret),
            };
            scram_exchange(stream, out, early, verifier, &mut client_key).await?
        }
    };
    let result = if ok && secret.is_some() {
        "ok"
    } else {
        "failed"
    };
    app.metrics
        .auth
        .get_or_create(&crate::metrics::AuthLabels {
            method: method.as_str(),
            result,
        })
        .inc();
    if !ok || secret.is_none() {
        let e = ClientError::auth_failed(user, method_label(method));
        return Err(match md5_answer {
            Some(a) => LoginError::Md5Mismatch(e, a),
            None => LoginError::Refused(e),
        });
    }
    emit::auth_ok(out);
    Ok(Proof { method, client_key })
}

fn method_label(m: Method) -> &'static str {
    match m {
        Method::ScramSha256 | Method::Md5 => "password",
    }
}

pub(crate) async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), LoginError> {
    stream.send(out).await.map_err(|_| LoginError::Gone)?;
    out.clear();
    Ok(())
}

/// Reads the client's next 'p' message body. `early` is the login's read buffer: what the
/// client sent behind the message (a query it did not wait for AuthenticationOk to send, as
/// PostgreSQL and PgBouncer allow) stays there for the session, never dropped.
pub(crate) async fn read_password_message(
    stream: &mut Stream,
    early: &mut BytesMut,
) -> Result<BytesMut, LoginError> {
    if early.capacity() == 0 {
        early.reserve(256);
    }
    let (tag, body) = read_message(stream, early, MAX_AUTH_MESSAGE)
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                LoginError::Refused(ClientError::protocol(
                    "invalid message length during authentication",
                ))
            } else {
                LoginError::Gone
            }
        })?;
    match tag {
        fe::PASSWORD => Ok(body),
        fe::TERMINATE => Err(LoginError::Gone),
        other => Err(LoginError::Refused(ClientError::protocol(format!(
            "expected password response, got message type {}",
            other as char
        )))),
    }
}

/// Sends the md5 challenge and reads the answer.
async fn md5_exchange(
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
) -> Result<Md5Answer, LoginError> {
    let salt: [u8; 4] = rand::random();
    emit::auth_md5(out, salt);
    send(stream, out).await?;
    let body = read_password_message(stream, early).await?;
    let response = views::password(&body)
        .ok_or_else(|| LoginError::Refused(ClientError::protocol("invalid password packet")))?;
    Ok(Md5Answer {
        salt,
        response: response.into(),
    })
}

async fn scram_exchange(
    stream: &mut Stream,
    out: &mut BytesMut,
    early: &mut BytesMut,
    verifier: scram::Verifier,
    key: &mut Option<[u8; 32]>,
) -> Result<bool, LoginError> {
    emit::auth_sasl(out, &[scram::MECHANISM]);
    send(stream, out).await?;
    let body = read_password_message(stream, early).await?;
    let (mechanism, client_first) = views::sasl_initial_response(&body).ok_or_else(|| {
        LoginError::Refused(ClientError::protocol("invalid SASL initial response"))
    })?;
    if mechanism != scram::MECHANISM {
        return Err(LoginError::Refused(ClientError::protocol(
            "client selected an invalid SASL authentication mechanism",
        )));
    }
    let nonce: [u8; 18] = rand::random();
    let exchange = scram::Exchange::start(verifier, client_first, &nonce).map_err(|e| {
        LoginError::Refused(match e {
            scram::ScramError::AuthorizationIdentity => ClientError::unsupported(e.to_string()),
            e => ClientError::protocol(e.to_string()),
        })
    })?;
    emit::auth_sasl_continue(out, exchange.server_first().as_bytes());
    send(stream, out).await?;
    let body = read_password_message(stream, early).await?;
    match exchange.finish(&body) {
        Ok((server_final, client_key)) => {
            emit::auth_sasl_final(out, server_final.as_bytes());
            *key = Some(client_key);
            Ok(true)
        }
        Err(scram::ScramError::BadProof) => Ok(false),
        Err(e) => Err(LoginError::Refused(ClientError::protocol(e.to_string()))),
    }
}
