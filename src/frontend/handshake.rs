//! The first bytes of a client connection: SSLRequest (TLS when configured, else 'N'),
//! PostgreSQL 17's direct TLS, GSSENCRequest ('N'), CancelRequest, and the StartupMessage
//! with protocol version negotiation (protocol 53.2.1; NegotiateProtocolVersion for 3.2
//! clients such as PostgreSQL 18's libpq).

use crate::error::ClientError;
use crate::net::Stream;
use crate::proto::emit;
use crate::proto::startup::{self, MAX_STARTUP_LEN, Request, Startup, StartupError};
use bytes::BytesMut;
use rustls::ServerConfig;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

pub enum Hello {
    Startup(Startup),
    Cancel { pid: i32, secret: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client left or sent a truncated packet; PostgreSQL closes silently here too.
    #[error("incomplete startup packet")]
    Incomplete,
    /// A startup packet PostgreSQL refuses without a word (a COMMERROR in
    /// ProcessStartupPacket): logged, and the connection closed silently. An answer here is
    /// what some drivers' connect-then-end race turns into an unhandled error.
    #[error("{0}")]
    Silent(&'static str),
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

/// What TLS the client negotiated, if any.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// The host name the client asked for (SNI), for routing by tenant.
    pub sni: Option<String>,
    /// PostgreSQL 17's direct TLS (no SSLRequest first).
    pub direct: bool,
}

/// The first byte of a TLS handshake record: a client starting TLS without SSLRequest.
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads packets until a StartupMessage or CancelRequest, upgrading the stream to TLS when
/// the client asks (SSLRequest, or direct TLS) and `tls` is configured. Returns the stream
/// (upgraded or not; None when a failed TLS handshake consumed it) with the outcome, so
/// errors can still be written to it. Messages the
/// proxy must send before authentication (NegotiateProtocolVersion) are appended to `out`;
/// what the client sent right behind its StartupMessage is left in `early`, as PostgreSQL
/// reads it from its own buffer (nothing is ever kept behind an encryption request).
pub async fn read_hello(
    mut stream: Stream,
    tls: Option<Arc<ServerConfig>>,
    metrics: &crate::metrics::Metrics,
    (out, early): (&mut BytesMut, &mut BytesMut),
) -> (
    Option<Stream>,
    Option<TlsInfo>,
    Result<Hello, HandshakeError>,
) {
    let mut info = None;
    if let (Some(config), Stream::Tcp(tcp)) = (&tls, &stream) {
        let mut first = [0u8; 1];
        if matches!(tcp.peek(&mut first).await, Ok(1)) && first[0] == TLS_HANDSHAKE {
            match upgrade(stream, config.clone(), true, metrics).await {
                Ok((s, i)) => {
                    stream = s;
                    info = Some(i);
                }
                Err(e) => return (None, None, Err(e)),
            }
        }
    }
    // At most one SSLRequest and one GSSENCRequest before the real packet.
    for _ in 0..3 {
        let (body, ahead) = match read_packet(&mut stream, early).await {
            Ok(b) => b,
            Err(e) => return (Some(stream), info, Err(e)),
        };
        let request = match startup::parse(&body) {
            Ok(r) => r,
            Err(e) => return (Some(stream), info, Err(e.into())),
        };
        match request {
            Request::Ssl if ahead => {
                return (Some(stream), info, Err(sent_ahead("SSL request")));
            }
            Request::GssEnc if ahead => {
                return (
                    Some(stream),
                    info,
                    Err(sent_ahead("GSSAPI encryption request")),
                );
            }
            Request::Ssl => {
                let config = match (&tls, &stream) {
                    (Some(c), Stream::Tcp(_)) => c.clone(),
                    (_, Stream::TlsFromClient(_)) => {
                        let e =
                            ClientError::protocol("SSLRequest on a connection already encrypted");
                        return (Some(stream), info, Err(HandshakeError::Refused(e)));
                    }
                    _ => {
                        if stream.send(b"N").await.is_err() {
                            return (Some(stream), info, Err(HandshakeError::Incomplete));
                        }
                        continue;
                    }
                };
                if stream.send(b"S").await.is_err() {
                    return (Some(stream), info, Err(HandshakeError::Incomplete));
                }
                match upgrade(stream, config, false, metrics).await {
                    Ok((s, i)) => {
                        stream = s;
                        info = Some(i);
                    }
                    Err(e) => return (None, None, Err(e)),
                }
            }
            Request::GssEnc => {
                if stream.send(b"N").await.is_err() {
                    return (Some(stream), info, Err(HandshakeError::Incomplete));
                }
            }
            Request::Cancel { pid, secret } => {
                early.clear();
                return (Some(stream), info, Ok(Hello::Cancel { pid, secret }));
            }
            Request::Startup(s) => {
                if s.minor > 0 || !s.protocol_options.is_empty() {
                    emit::negotiate_protocol_version(
                        out,
                        startup::PROTOCOL_3_0,
                        &s.protocol_options,
                    );
                }
                return (Some(stream), info, Ok(Hello::Startup(s)));
            }
        }
    }
    let e = ClientError::protocol("too many encryption requests before startup");
    (Some(stream), info, Err(HandshakeError::Refused(e)))
}

/// One startup-phase packet's body (length-prefixed, no tag), and whether the client sent
/// more right behind it; what it sent behind is left in `buf`. Reads are as large as `buf`
/// allows: a startup packet usually costs one read, and the short read tells tokio the
/// socket is drained (the password read after the challenge waits for readiness instead
/// of trying first). Bytes behind an encryption request are refused by the caller, so
/// reading them is no risk (CVE-2021-23214).
async fn read_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<(Vec<u8>, bool), HandshakeError> {
    // The length is checked as soon as it is in: a bad one is not waited on.
    let mut len = 0;
    loop {
        if len == 0 && buf.len() >= 4 {
            let l = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if l < 8 || l as usize > MAX_STARTUP_LEN {
                return Err(HandshakeError::Silent("invalid length of startup packet"));
            }
            len = l as usize;
        }
        if len > 0 && buf.len() >= len {
            break;
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(len.max(512).saturating_sub(buf.len()).max(256));
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HandshakeError::Incomplete),
            Ok(_) => {}
        }
    }
    let packet = buf.split_to(len);
    Ok((packet[4..].to_vec(), !buf.is_empty()))
}

/// Bytes a client sent before the answer to its SSLRequest or GSSENCRequest: not
/// encrypted, and possibly injected (CVE-2021-23214); PostgreSQL refuses them alike.
fn sent_ahead(what: &str) -> HandshakeError {
    HandshakeError::Refused(ClientError::protocol(format!(
        "received unencrypted data after {what}"
    )))
}

/// The TLS handshake on a plain TCP stream. Only bytes read after the SSLRequest reach
/// rustls, so plaintext sent ahead of the handshake is never taken as encrypted
/// (CVE-2021-23214). Direct TLS must negotiate ALPN "postgresql", as PostgreSQL 17 requires.
async fn upgrade(
    stream: Stream,
    config: Arc<ServerConfig>,
    direct: bool,
    metrics: &crate::metrics::Metrics,
) -> Result<(Stream, TlsInfo), HandshakeError> {
    let Stream::Tcp(tcp) = stream else {
        return Err(HandshakeError::Incomplete);
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let kind = if direct { "direct" } else { "sslrequest" };
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(crate::net::tls::ALPN_POSTGRESQL);
            if direct && !alpn_ok {
                metrics.tls_handshake(kind, false);
                tracing::info!("direct TLS without ALPN \"postgresql\": closing");
                // Told inside TLS, then closed (PostgreSQL 17 does the same).
                let mut stream = Stream::TlsFromClient(Box::new(tls));
                let mut out = BytesMut::new();
                ClientError::protocol(
                    "direct TLS connections must negotiate the ALPN protocol \"postgresql\"",
                )
                .encode(&mut out);
                let _ = stream.send(&out).await;
                return Err(HandshakeError::Incomplete);
            }
            metrics.tls_handshake(kind, true);
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            Ok((
                Stream::TlsFromClient(Box::new(tls)),
                TlsInfo { sni, direct },
            ))
        }
        Err(e) => {
            metrics.tls_handshake(kind, false);
            tracing::info!(error = %e, "TLS handshake with client failed");
            Err(HandshakeError::Incomplete)
        }
    }
}
