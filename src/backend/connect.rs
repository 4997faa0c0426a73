//! Opening a server connection: TCP (host name, IPv4, IPv6) or unix socket, the StartupMessage,
//! the login (SCRAM-SHA-256, md5 or cleartext, whichever the server asks), then ParameterStatus
//! and BackendKeyData until the first ReadyForQuery (protocol 53.2.1).

use super::params::SessionParams;
use super::route::{Endpoint, Route};
use super::upstream_auth::Login;
use crate::error::ClientError;
use crate::net::Stream;
use crate::net::stream::read_message;
use crate::proto::tag::backend as be;
use crate::proto::{emit, views};
use bytes::BytesMut;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};

/// How to reach and log in to one upstream database as one role.
// Debug by hand below: it holds the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name, IP literal, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    /// TLS to this server (None: sslmode=disable).
    pub tls: Option<TlsTarget>,
    /// Without a password: what logs in instead (the stored md5 hash, or SCRAM keys).
    pub passthrough: Option<Passthrough>,
    /// Supavisor's tenant: the login's user name is `user.tenant`.
    pub tenant: Option<String>,
    /// The address `host` resolved to, when it is one of a name's several (TLS still
    /// verifies `host`); None: connect by `host`.
    pub addr: Option<std::net::SocketAddr>,
    /// The database's upstreams when it has several (else `host`/`port` is the server).
    pub route: Option<Arc<Route>>,
}

/// Logging in upstream without the plaintext password.
#[derive(Clone, PartialEq, Eq)]
pub enum Passthrough {
    /// md5's stored hash is all md5 authentication needs.
    Md5([u8; 16]),
    /// The ClientKey a client's SCRAM exchange revealed, with the verifier.
    Scram(crate::auth::scram::KeyClient),
}

impl Upstream {
    /// This login at endpoint `e`.
    pub fn at(&self, e: &Endpoint) -> Upstream {
        Upstream {
            host: e.host.to_string(),
            port: e.port,
            tenant: e.tenant.as_deref().map(str::to_owned),
            addr: e.addr,
            ..self.clone()
        }
    }

    /// The user name the server sees.
    pub fn login_user(&self) -> std::borrow::Cow<'_, str> {
        match &self.tenant {
            Some(t) => format!("{}.{t}", self.user).into(),
            None => self.user.as_str().into(),
        }
    }

    /// The SCRAM ClientKey this upstream logs in with, if any (kept across RELOAD).
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match &self.passthrough {
            Some(Passthrough::Scram(k)) => Some(k.client_key),
            _ => None,
        }
    }
}

/// An upstream's TLS: what the config asked for, and the rustls configuration built from it.
#[derive(Clone)]
pub struct TlsTarget {
    pub spec: crate::net::tls::UpstreamTls,
    pub config: std::sync::Arc<rustls::ClientConfig>,
}

impl PartialEq for TlsTarget {
    fn eq(&self, o: &Self) -> bool {
        self.spec == o.spec
    }
}
impl Eq for TlsTarget {}

impl std::fmt::Debug for Upstream {
    /// Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("sslmode", &self.tls.as_ref().map(|t| t.spec.mode.as_str()))
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub async fn open_socket(&self) -> io::Result<Stream> {
        if self.host.starts_with('/') {
            let path = PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port));
            return Ok(Stream::Unix(UnixStream::connect(path).await?));
        }
        if let Some(addr) = self.addr {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            return Ok(Stream::Tcp(s));
        }
        // Strip brackets so `[::1]` works as well as `::1`.
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let s = TcpStream::connect((host, self.port)).await?;
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach server: {0}")]
    Io(#[from] io::Error),
    #[error("server connect timed out")]
    Timeout,
    #[error("server refused login: {0}")]
    Refused(ClientError),
    #[error("server protocol error: {0}")]
    Protocol(&'static str),
    #[error("server asks for a password but none is configured")]
    NoPassword,
    #[error("TLS to server: {0}")]
    Tls(String),
    #[error("SCRAM passthrough: {0} (the password may have changed upstream)")]
    Passthrough(String),
    /// None of a database's upstreams could serve: why, per upstream; `tried`: a connection
    /// was attempted (not every circuit was open).
    #[error("{why}")]
    NoUpstream { why: String, tried: bool },
}

impl ConnectError {
    /// The server could not be reached (refused, reset, timed out) or is starting up: it may
    /// be restarting. A refused login, a protocol or TLS mistake, or a database whose upstreams' circuits are
    /// all open is not worth trying again at once.
    pub fn worth_retrying(&self) -> bool {
        match self {
            ConnectError::Io(_) | ConnectError::Timeout => true,
            ConnectError::NoUpstream { tried, .. } => *tried,
            // "the database system is starting up" (or shutting down, or in recovery).
            ConnectError::Refused(e) => e.code == "57P03",
            _ => false,
        }
    }

    /// What the client whose request needed this connection is told. Upstream addresses stay
    /// in the log; an upstream's own refusal keeps its SQLSTATE.
    pub fn to_client(&self) -> ClientError {
        match self {
            ConnectError::Refused(e) => ClientError::upstream(
                e.severity,
                &e.code,
                format!("server login failed: {}", e.message),
            ),
            // Says which servers and why (their states, never credentials).
            ConnectError::NoUpstream { why, .. } => ClientError::server_unavailable(why),
            _ => ClientError::server_unavailable(
                "server unavailable: pgsluice cannot connect to the database server",
            ),
        }
    }
}

/// What a fresh, logged-in server connection reported.
pub struct Established {
    pub stream: Stream,
    pub pid: i32,
    pub secret: i32,
    pub params: SessionParams,
}

/// A connection being opened, boxed so that pools can hold any [`Connector`].
pub type Opening<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Established, ConnectError>> + Send + 'a>,
>;

/// What opens server connections for a pool: [`Direct`] connects and logs in; the pool's
/// unit tests use fakes. Boxed per connection opened, not per message.
pub trait Connector: Send + Sync {
    fn establish<'a>(
        &'a self,
        up: &'a Upstream,
        timeout: Duration,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Established, ConnectError>> + Send + 'a>,
    >;
}

/// Connects to the upstream over the network and logs in.
pub struct Direct;

impl Connector for Direct {
    fn establish<'a>(
        &'a self,
        up: &'a Upstream,
        timeout: Duration,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Established, ConnectError>> + Send + 'a>,
    > {
        Box::pin(establish(up, timeout))
    }
}

pub async fn establish(up: &Upstream, timeout: Duration) -> Result<Established, ConnectError> {
    tokio::time::timeout(timeout, establish_inner(up))
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// The proxy's own connection (LISTEN, activity samples) to `up`'s database: on a database
/// with several upstreams, a server that fits `attrs` (default: the database's
/// `target_session_attrs`) and can hold a session (not a transaction pooler).
pub async fn establish_own(
    up: &Arc<Upstream>,
    timeout: Duration,
    attrs: Option<crate::config::SessionAttrs>,
) -> Result<Established, ConnectError> {
    let Some(route) = &up.route else {
        return establish(up, timeout).await;
    };
    let want = super::route::Want {
        attrs: attrs.unwrap_or(route.attrs),
        session: true,
        region: None,
    };
    let (est, _, _) = super::route::connect(&Direct, up, route, want, timeout).await?;
    Ok(est)
}

/// SSLRequest, then the TLS handshake if the server agrees (protocol 53.2.10). A server that
/// declines is used in plaintext only under sslmode=prefer. Unix sockets stay plaintext, as
/// with libpq.
async fn negotiate_tls(
    stream: Stream,
    host: &str,
    tls: &TlsTarget,
) -> Result<Stream, ConnectError> {
    use crate::net::tls::SslMode;
    use tokio::io::AsyncReadExt;
    let Stream::Tcp(mut tcp) = stream else {
        return Ok(stream);
    };
    let mut out = BytesMut::with_capacity(8);
    emit::ssl_request(&mut out);
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &out).await?;
    // Exactly one byte: anything the server sent after it must come through TLS.
    match tcp.read_u8().await? {
        b'S' => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = crate::net::tls::server_name(host).ok_or_else(|| {
                ConnectError::Tls(format!("{host:?} is not a valid TLS server name"))
            })?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let s = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            Ok(Stream::TlsToServer(Box::new(s)))
        }
        b'N' if tls.spec.mode == SslMode::Prefer => Ok(Stream::Tcp(tcp)),
        b'N' => Err(ConnectError::Tls(format!(
            "the server does not support TLS (server_tls_sslmode = \"{}\")",
            tls.spec.mode.as_str()
        ))),
        _ => Err(ConnectError::Protocol("unexpected answer to SSLRequest")),
    }
}

async fn establish_inner(up: &Upstream) -> Result<Established, ConnectError> {
    let mut stream = up.open_socket().await?;
    if let Some(tls) = &up.tls {
        stream = negotiate_tls(stream, &up.host, tls).await?;
    }
    let mut out = BytesMut::with_capacity(128);
    emit::startup(
        &mut out,
        &[("user", &up.login_user()), ("database", &up.dbname)],
    );
    stream.send(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut login = Login::Start;
    let (mut pid, mut secret) = (0, 0);
    let mut params = SessionParams::default();
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf, 1 << 20).await?;
        out.clear();
        if !login.is_done()
            && matches!(
                tag,
                be::PARAMETER_STATUS | be::BACKEND_KEY_DATA | be::READY_FOR_QUERY
            )
        {
            return Err(ConnectError::Protocol(
                "server sent session data before authentication finished",
            ));
        }
        match tag {
            be::AUTHENTICATION => {
                let req = views::auth_request(&body)
                    .ok_or(ConnectError::Protocol("bad authentication request"))?;
                login = login.step(req, up, &mut out).await?;
            }
            be::PARAMETER_STATUS => {
                if let Some((k, v)) = views::parameter_status(&body) {
                    params.reported.set(k, v);
                }
            }
            be::BACKEND_KEY_DATA => {
                (pid, secret) = views::backend_key_data(&body)
                    .ok_or(ConnectError::Protocol("bad BackendKeyData"))?;
            }
            be::ERROR_RESPONSE => {
                // A failed server login fails the client's request, whatever its severity.
                return Err(ConnectError::Refused(ClientError {
                    severity: emit::Severity::Fatal,
                    ..ClientError::from_server(&body)
                }));
            }
            be::READY_FOR_QUERY => {
                return Ok(Established {
                    stream,
                    pid,
                    secret,
                    params,
                });
            }
            be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
            _ => return Err(ConnectError::Protocol("unexpected message during login")),
        }
        if !out.is_empty() {
            stream.send(&out).await?;
        }
    }
}

/// Sends a CancelRequest for `pid`/`secret` and waits until the server closes the socket,
/// which it does after signalling the backend.
pub async fn send_cancel(up: &Upstream, pid: i32, secret: i32) -> io::Result<()> {
    let mut stream = up.open_socket().await?;
    let mut out = BytesMut::with_capacity(16);
    emit::cancel_request(&mut out, pid, secret);
    stream.send(&out).await?;
    let mut sink = [0u8; 64];
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}
