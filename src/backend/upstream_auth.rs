//! The upstream login's authentication as a state machine (protocol 55.2.1 and 55.3, SASL):
//! which request the server may send next, and what the proxy answers. Any request out of
//! order ends the login. In particular AuthenticationOk is accepted only before any exchange
//! (the server trusts the proxy), after a password, or once the server has proved in
//! SASLFinal that it knows the SCRAM secret: a server (or a man in the middle under
//! server_tls_sslmode prefer/require) that skips SASLFinal is refused.

use super::connect::{ConnectError, Passthrough, Upstream};
use crate::auth::salted::SaltedKeys;
use crate::auth::scram::{self, KeyExchange, ServerFirst};
use crate::proto::emit;
use crate::proto::views::AuthRequest;
use bytes::BytesMut;

/// Where the login is.
pub enum Login {
    /// Nothing asked yet.
    Start,
    /// A cleartext or md5 password went out: AuthenticationOk or an error comes next.
    PasswordSent,
    /// SCRAM client-first-message sent (with the password, or with a client's keys).
    ScramFirst(Scram),
    /// SCRAM client-final-message sent: SASLFinal must prove the server.
    ScramFinal(Scram),
    /// SASLFinal verified: AuthenticationOk comes next.
    Verified,
    /// AuthenticationOk: ParameterStatus, BackendKeyData and ReadyForQuery follow.
    Done,
}

/// The client side of a SCRAM exchange: from the password (its keys are known once the
/// server names its salt), or from keys passed through from a client.
pub enum Scram {
    Password { nonce: [u8; 18] },
    Keys(Box<KeyExchange>),
}

impl Login {
    pub fn is_done(&self) -> bool {
        matches!(self, Login::Done)
    }

    fn name(&self) -> &'static str {
        match self {
            Login::Start => "before authentication",
            Login::PasswordSent => "after the password",
            Login::ScramFirst(_) => "after SCRAM's first message",
            Login::ScramFinal(_) => "before SCRAM's server signature",
            Login::Verified => "after SCRAM",
            Login::Done => "after authentication",
        }
    }

    /// Advances on one authentication request, writing the answer (if any) into `out`.
    pub async fn step(
        self,
        req: AuthRequest<'_>,
        up: &Upstream,
        out: &mut BytesMut,
    ) -> Result<Login, ConnectError> {
        match (self, req) {
            (Login::Start | Login::PasswordSent | Login::Verified, AuthRequest::Ok) => {
                Ok(Login::Done)
            }
            (Login::Start, AuthRequest::Cleartext) => {
                let pw = up.password.as_deref().ok_or(ConnectError::NoPassword)?;
                emit::password(out, pw);
                Ok(Login::PasswordSent)
            }
            (Login::Start, AuthRequest::Md5(salt)) => {
                emit::password(out, &md5_answer(up, salt)?);
                Ok(Login::PasswordSent)
            }
            (Login::Start, AuthRequest::Sasl(mechs)) => {
                if !mechs.contains(&"SCRAM-SHA-256") {
                    return Err(ConnectError::Protocol(
                        "server offers no SASL mechanism we support",
                    ));
                }
                Ok(Login::ScramFirst(scram_first(up, out)?))
            }
            (Login::ScramFirst(s), AuthRequest::SaslContinue(data)) => {
                Ok(Login::ScramFinal(scram_final(s, data, up, out).await?))
            }
            (Login::ScramFinal(s), AuthRequest::SaslFinal(data)) => {
                let verified = match s {
                    Scram::Keys(kx) => kx.verify(data).is_ok(),
                    Scram::Password { .. } => false,
                };
                if !verified {
                    return Err(ConnectError::Protocol("server SCRAM signature is wrong"));
                }
                Ok(Login::Verified)
            }
            (_, AuthRequest::Other(_)) => Err(ConnectError::Protocol(
                "server asks for an unsupported authentication method",
            )),
            (state, req) => {
                tracing::warn!(
                    request = req.name(),
                    state = state.name(),
                    host = %up.host,
                    "server sent an authentication request out of order"
                );
                Err(ConnectError::Protocol(
                    "server sent an authentication request out of order",
                ))
            }
        }
    }
}

fn md5_answer(up: &Upstream, salt: [u8; 4]) -> Result<String, ConnectError> {
    match (&up.password, &up.passthrough) {
        (Some(pw), _) => Ok(postgres_protocol::authentication::md5_hash(
            up.login_user().as_bytes(),
            pw.as_bytes(),
            salt,
        )),
        (None, Some(Passthrough::Md5(stored))) => {
            Ok(crate::auth::md5::expected_response(stored, salt))
        }
        _ => Err(ConnectError::NoPassword),
    }
}

fn scram_first(up: &Upstream, out: &mut BytesMut) -> Result<Scram, ConnectError> {
    match (&up.password, &up.passthrough) {
        (Some(_), _) => {
            let nonce: [u8; 18] = rand::random();
            emit::sasl_initial_response(
                out,
                "SCRAM-SHA-256",
                scram::client_first(&nonce).as_bytes(),
            );
            Ok(Scram::Password { nonce })
        }
        (None, Some(Passthrough::Scram(keys))) => {
            let nonce: [u8; 18] = rand::random();
            let (kx, first) = keys.start(&nonce);
            emit::sasl_initial_response(out, "SCRAM-SHA-256", first.as_bytes());
            Ok(Scram::Keys(Box::new(kx)))
        }
        _ => Err(ConnectError::NoPassword),
    }
}

async fn scram_final(
    s: Scram,
    data: &[u8],
    up: &Upstream,
    out: &mut BytesMut,
) -> Result<Scram, ConnectError> {
    match s {
        Scram::Password { nonce } => {
            let bad = |_| ConnectError::Protocol("invalid SCRAM server-first-message");
            let first = ServerFirst::parse(data).map_err(bad)?;
            let pw = up.password.as_deref().ok_or(ConnectError::NoPassword)?;
            // PBKDF2 runs once per password, salt and iteration count, off the reactor.
            let keys = SaltedKeys::global()
                .keys(pw, &first.salt, first.iterations)
                .await
                .ok_or(ConnectError::Protocol(
                    "SCRAM keys not derived: the server asks for more than 10,000,000 iterations, or the derivation failed",
                ))?;
            let (mut kx, _) = keys.start(&nonce);
            let reply = kx.respond(data).map_err(bad)?;
            emit::sasl_response(out, reply.as_bytes());
            Ok(Scram::Keys(Box::new(kx)))
        }
        Scram::Keys(mut kx) => {
            let reply = kx
                .respond(data)
                .map_err(|e| ConnectError::Passthrough(e.to_string()))?;
            emit::sasl_response(out, reply.as_bytes());
            Ok(Scram::Keys(kx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{Exchange, Verifier};
    use crate::proto::views;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the scripted server does after the client's final SCRAM message.
    #[derive(Clone, Copy)]
    enum Ending {
        /// SASLFinal with the right signature, then AuthenticationOk.
        Honest,
        /// AuthenticationOk at once: no proof that it knows the secret.
        SkipFinal,
        /// SASLFinal with a made-up signature.
        WrongSignature,
        /// Straight to ReadyForQuery, no AuthenticationOk at all.
        SkipOk,
        /// Asks for more PBKDF2 rounds than the proxy runs (then hangs up).
        TooManyRounds,
    }

    async fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    /// A server that speaks SCRAM-SHA-256 for `password`, ending the exchange as `ending`.
    async fn scripted_server(password: &'static str, ending: Ending) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let len = s.read_i32().await.unwrap();
            let mut startup = vec![0; len as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            let mut out = BytesMut::new();
            emit::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
            s.write_all(&out).await.unwrap();
            let (_, body) = read_msg(&mut s).await;
            let (_, first) = views::sasl_initial_response(&body).unwrap();
            let verifier = match ending {
                // Keys never checked: the client must refuse before it derives anything.
                Ending::TooManyRounds => Verifier {
                    iterations: crate::auth::salted::MAX_ITERATIONS + 1,
                    salt: b"salty".to_vec(),
                    stored_key: [0; 32],
                    server_key: [0; 32],
                },
                _ => Verifier::from_password(password, b"salty", 4096),
            };
            let ex = Exchange::start(verifier, first, b"server-nonce").unwrap();
            out.clear();
            emit::auth_sasl_continue(&mut out, ex.server_first().as_bytes());
            s.write_all(&out).await.unwrap();
            if matches!(ending, Ending::TooManyRounds) {
                return;
            }
            let (_, client_final) = read_msg(&mut s).await;
            out.clear();
            match ending {
                Ending::Honest => {
                    let (server_final, _) = ex.finish(&client_final).unwrap();
                    emit::auth_sasl_final(&mut out, server_final.as_bytes());
                    emit::auth_ok(&mut out);
                }
                Ending::SkipFinal => emit::auth_ok(&mut out),
                Ending::WrongSignature => {
                    emit::auth_sasl_final(
                        &mut out,
                        b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                    );
                    emit::auth_ok(&mut out);
                }
                Ending::SkipOk | Ending::TooManyRounds => {}
            }
            emit::backend_key_data(&mut out, 77, 88);
            emit::ready_for_query(&mut out, b'I');
            s.write_all(&out).await.unwrap();
            // Hold the socket open until the client is done with it.
            let _ = s.read_u8().await;
        });
        port
    }

    fn upstream(port: u16) -> Upstream {
        Upstream {
            host: "127.0.0.1".into(),
            port,
            dbname: "db".into(),
            user: "u".into(),
            password: Some("secret".into()),
            tls: None,
            passthrough: None,
            tenant: None,
            addr: None,
            route: None,
        }
    }

    async fn login_against(ending: Ending) -> Result<i32, String> {
        let port = scripted_server("secret", ending).await;
        super::super::connect::establish(&upstream(port), std::time::Duration::from_secs(10))
            .await
            .map(|e| e.pid)
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn scram_login_needs_the_servers_proof() {
        assert_eq!(login_against(Ending::Honest).await, Ok(77));
        for ending in [Ending::SkipFinal, Ending::WrongSignature, Ending::SkipOk] {
            let r = login_against(ending).await;
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.contains("server protocol error")),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_an_iteration_count_past_the_bound() {
        // (That nothing is derived first is checked on a cache of its own in auth::salted;
        // the global one here is shared with the other tests.)
        let r = login_against(Ending::TooManyRounds).await;
        assert!(
            r.as_ref()
                .is_err_and(|e| e.contains("10,000,000 iterations")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn requests_out_of_order_end_the_login() {
        let up = upstream(1);
        let mut out = BytesMut::new();
        // A SASL continuation or final with no exchange under way, a second mechanism list.
        for req in [
            AuthRequest::SaslContinue(b"r=x"),
            AuthRequest::SaslFinal(b"v=x"),
        ] {
            assert!(Login::Start.step(req, &up, &mut out).await.is_err());
        }
        assert!(
            Login::PasswordSent
                .step(AuthRequest::Sasl(vec!["SCRAM-SHA-256"]), &up, &mut out)
                .await
                .is_err()
        );
        assert!(
            Login::Done
                .step(AuthRequest::Ok, &up, &mut out)
                .await
                .is_err()
        );
        // Trust: AuthenticationOk first is a login.
        assert!(
            Login::Start
                .step(AuthRequest::Ok, &up, &mut out)
                .await
                .is_ok_and(|l| l.is_done())
        );
    }
}
