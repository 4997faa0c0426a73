//! The first bytes of a client connection: SSLRequest and GSSENCRequest (answered 'N' until
//! TLS lands), CancelRequest, and the StartupMessage with protocol version negotiation
//! (protocol 53.2.1; NegotiateProtocolVersion for 3.2 clients such as PostgreSQL 18's libpq).

use crate::error::ClientError;
use crate::net::Stream;
use crate::proto::emit;
use crate::proto::startup::{self, MAX_STARTUP_LEN, Request, Startup, StartupError};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub enum Hello {
    Startup(Startup),
    Cancel { pid: i32, secret: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client left or sent a truncated packet; PostgreSQL closes silently here too.
    #[error("incomplete startup packet")]
    Incomplete,
    #[error("{0}")]
    Refused(ClientError),
}

impl From<StartupError> for HandshakeError {
    fn from(e: StartupError) -> Self {
        HandshakeError::Refused(match e {
            StartupError::Protocol(..) => ClientError::unsupported(e.to_string()),
            _ => ClientError::protocol(e.to_string()),
        })
    }
}

/// Reads packets until a StartupMessage or CancelRequest. Messages the proxy must send before
/// authentication (NegotiateProtocolVersion) are appended to `out`.
pub async fn read_hello(stream: &mut Stream, out: &mut BytesMut) -> Result<Hello, HandshakeError> {
    // At most one SSLRequest and one GSSENCRequest before the real packet.
    for _ in 0..3 {
        let len = stream
            .read_i32()
            .await
            .map_err(|_| HandshakeError::Incomplete)?;
        if len < 8 || len as usize > MAX_STARTUP_LEN {
            return Err(HandshakeError::Refused(ClientError::protocol(
                "invalid length of startup packet",
            )));
        }
        let mut body = vec![0u8; len as usize - 4];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|_| HandshakeError::Incomplete)?;
        match startup::parse(&body)? {
            Request::Ssl | Request::GssEnc => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|_| HandshakeError::Incomplete)?;
            }
            Request::Cancel { pid, secret } => return Ok(Hello::Cancel { pid, secret }),
            Request::Startup(s) => {
                if s.minor > 0 || !s.protocol_options.is_empty() {
                    emit::negotiate_protocol_version(
                        out,
                        startup::PROTOCOL_3_0,
                        &s.protocol_options,
                    );
                }
                return Ok(Hello::Startup(s));
            }
        }
    }
    Err(HandshakeError::Refused(ClientError::protocol(
        "too many encryption requests before startup",
    )))
}
