//! `/mcp` on the `[http]` listener, as the MCP specification asks of a resource server:
//! Host and Origin checked (DNS rebinding: 403), `Authorization: Bearer` resolved by the
//! same identity code as wire logins (401 with the protected resource metadata's address;
//! refusals answered no sooner than the wire's failure floor), the body bounded (413), write
//! tools refused with 403 `insufficient_scope` for identities that may not write; then rmcp's
//! Streamable HTTP service, with the identity in the request's extensions. The token goes no
//! further than this module. RFC 9728 metadata at `/.well-known/oauth-protected-resource`.

use super::handler::Server;
use crate::app::App;
use crate::config::{Config, Mcp};
use crate::identity::Identity;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

pub type Body = BoxBody<Bytes, Infallible>;

/// Sessions (2025 revisions) open at once; an initialize beyond it gets 503.
const MAX_SESSIONS: usize = 1024;

/// Sessions one identity may hold open; an initialize beyond it gets 429.
const SESSIONS_PER_IDENTITY: usize = 64;

const SESSION_HEADER: &str = "mcp-session-id";

/// The scope a write tool needs, as 403 insufficient_scope names it.
const WRITE_SCOPE: &str = "pgsluice:write";

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The MCP endpoint: rmcp's service and its sessions, and who opened each.
pub struct Endpoint {
    service: StreamableHttpService<Server, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    /// Session id to the [`Identity::key`] that opened it: every request naming a session
    /// (DELETE and notifications included, which never reach the handler) must come from
    /// that identity.
    owners: dashmap::DashMap<String, String>,
}

impl Endpoint {
    pub fn new(app: Arc<App>) -> Endpoint {
        let sessions = Arc::new(LocalSessionManager::default());
        // Host, Origin and body size are checked here, per request and from the live
        // configuration; rmcp's own checks would only repeat them with the start-up values.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(usize::MAX)
            .with_sse_keep_alive(None);
        let service = StreamableHttpService::new(
            move || Ok(Server::new(app.clone(), None)),
            sessions.clone(),
            config,
        );
        Endpoint {
            service,
            sessions,
            owners: dashmap::DashMap::new(),
        }
    }
}

/// Whether `path` is served here.
pub fn owns(path: &str) -> bool {
    path == "/mcp" || path == METADATA_PATH || path == "/.well-known/oauth-protected-resource/mcp"
}

/// The endpoint's canonical URI.
pub fn resource(config: &Config, mcp: &Mcp) -> String {
    mcp.resource.clone().unwrap_or_else(|| {
        let addr = config
            .http
            .as_ref()
            .map(|h| h.addr.to_string())
            .unwrap_or_default();
        format!("http://{addr}/mcp")
    })
}

/// Where the protected resource metadata is, for WWW-Authenticate.
fn metadata_url(resource: &str) -> String {
    // RFC 9728 section 3.1: the well-known segment goes between host and path.
    match resource.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            let path = if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            };
            format!("{scheme}://{host}{METADATA_PATH}{path}")
        }
        None => METADATA_PATH.to_owned(),
    }
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// A JSON-RPC error outside any request (id null), with an HTTP status.
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    json_reply(
        status,
        json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } }),
    )
}

fn with_authenticate(mut r: Response<Body>, value: String) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Serves one request to /mcp or the metadata.
pub async fn handle(
    app: &Arc<App>,
    endpoint: &Endpoint,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let config = app.config.load_full();
    let Some(mcp) = config.mcp.as_ref().filter(|m| m.enabled) else {
        return full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "MCP is not enabled ([mcp] enabled)\n".into(),
        );
    };
    let resource = resource(&config, mcp);
    if req.uri().path() != "/mcp" {
        return metadata(&config, &resource);
    }
    if let Err(why) = host_and_origin(mcp, &resource, &req) {
        tracing::warn!(%peer, why, "mcp: request refused (DNS rebinding protection)");
        return rpc_error(StatusCode::FORBIDDEN, -32600, why);
    }
    if req.method() == Method::GET {
        // No server-initiated messages: no standalone SSE stream (the specification allows 405).
        let mut r = full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
        return r;
    }
    let identity = match authenticate(app, &config, mcp, &resource, &req, peer).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, mcp.max_request_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "request body too large",
            );
        }
        Err(_) => return rpc_error(StatusCode::BAD_REQUEST, -32700, "request body unreadable"),
    };
    let screened = if parts.method == Method::POST {
        match screen(&body) {
            Ok(s) => Some(s),
            Err((status, code, why)) => return rpc_error(status, code, why),
        }
    } else {
        None
    };
    let screened = screened.unwrap_or_default();
    if screened.writes && !super::tools::may_write(&config, &identity) {
        tracing::info!(identity = %identity.name, "mcp: write tool refused (insufficient_scope)");
        let r = rpc_error(StatusCode::FORBIDDEN, -32600, "this identity may not write");
        return with_authenticate(
            r,
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"{WRITE_SCOPE}\", resource_metadata=\"{}\"",
                metadata_url(&resource)
            ),
        );
    }
    let key = identity.key();
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session
        && endpoint.owners.get(id).is_some_and(|o| *o != key)
    {
        tracing::warn!(identity = %identity.name, "mcp: a request named another identity's session");
        // As for an unknown session: nothing says whose it is.
        return rpc_error(StatusCode::NOT_FOUND, -32001, "Session not found");
    }
    if screened.initialize
        && let Some(r) = too_many_sessions(endpoint, &key).await
    {
        return r;
    }
    let is_delete = parts.method == Method::DELETE;
    parts.extensions.insert(identity);
    // Cancelled when the reply is dropped before its end: the client went away, so its
    // call stops on the server (the stateless revision's own token covers only that one).
    let gone = CallGone(tokio_util::sync::CancellationToken::new());
    let guard = gone.0.clone().drop_guard();
    parts.extensions.insert(gone);
    let req = Request::from_parts(parts, Full::new(body));
    let mut service = endpoint.service.clone();
    let reply = match tower_service::Service::call(&mut service, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if screened.initialize
        && let Some(id) = reply
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        endpoint.owners.insert(id.to_owned(), key);
    }
    if is_delete
        && reply.status().is_success()
        && let Some(id) = &session
    {
        endpoint.owners.remove(id);
    }
    reply.map(|inner| {
        Watched {
            inner,
            guard: Some(guard),
        }
        .boxed()
    })
}

/// Cancelled when the HTTP client stops waiting for the reply.
#[derive(Clone)]
pub struct CallGone(pub tokio_util::sync::CancellationToken);

/// A reply body that cancels its call when dropped unfinished.
struct Watched {
    inner: Body,
    guard: Option<tokio_util::sync::DropGuard>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled
            && let Some(g) = self.guard.take()
        {
            g.disarm();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// RFC 9728 protected resource metadata.
fn metadata(config: &Config, resource: &str) -> Response<Body> {
    let servers: Vec<&str> = config
        .jwt
        .as_ref()
        .and_then(|j| j.issuer.as_ref())
        .map(|i| vec![i.as_str()])
        .unwrap_or_default();
    json_reply(
        StatusCode::OK,
        json!({
            "resource": resource,
            "authorization_servers": servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["pgsluice:read", WRITE_SCOPE],
            "resource_name": "pgsluice",
            "resource_documentation": "https://github.com/pgsluice/pgsluice/blob/main/docs/mcp.md",
        }),
    )
}

/// Host must be one the endpoint answers to; Origin, when present, one it allows.
fn host_and_origin(mcp: &Mcp, resource: &str, req: &Request<Incoming>) -> Result<(), &'static str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed = |h: &str| {
        let name = host_name(h);
        if mcp.allowed_hosts.is_empty() {
            let own = resource
                .split_once("://")
                .map(|(_, r)| host_name(r.split('/').next().unwrap_or("")))
                .unwrap_or("");
            ["localhost", "127.0.0.1", "[::1]", own].contains(&name)
        } else {
            mcp.allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(h) || a.eq_ignore_ascii_case(name))
        }
    };
    if !allowed(host) {
        return Err("Host not allowed");
    }
    match req.headers().get(header::ORIGIN).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(o))
            if mcp
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o)) =>
        {
            Ok(())
        }
        Some(_) => Err("Origin not allowed"),
    }
}

/// `name` of `name:port` (IPv6 literals keep their brackets).
fn host_name(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    h.rsplit_once(':').map_or(h, |(n, _)| n)
}

/// The identity the bearer token proves, or the 401 to send.
async fn authenticate(
    app: &Arc<App>,
    config: &Config,
    mcp: &Mcp,
    resource: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Arc<Identity>, Response<Body>> {
    let challenge = |extra: &str| {
        format!(
            "Bearer resource_metadata=\"{}\"{extra}",
            metadata_url(resource)
        )
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::bearer_token);
    let Some(token) = token else {
        let r = rpc_error(
            StatusCode::UNAUTHORIZED,
            -32001,
            "authentication required: Authorization: Bearer <API key or JWT>",
        );
        return Err(with_authenticate(r, challenge("")));
    };
    let arrived = tokio::time::Instant::now();
    let audiences: Vec<String> = if mcp.audiences.is_empty() {
        vec![resource.to_owned()]
    } else {
        mcp.audiences.clone()
    };
    match crate::identity::from_bearer(config, &app.jwks, token, Some(&audiences)).await {
        Ok(identity) => {
            app.metrics.auth_result(identity.source.method(), true);
            Ok(Arc::new(identity))
        }
        Err(why) => {
            app.metrics.auth_result("mcp", false);
            tracing::info!(%peer, reason = why.as_str(), "mcp: bearer token refused");
            if app.audit.enabled() {
                let fields =
                    json!({ "endpoint": "mcp", "peer": peer.to_string(), "reason": why.as_str() });
                app.audit.event("token_refused", 0, fields).await;
            }
            tokio::time::sleep_until(arrived + crate::frontend::token_login::FAILURE_FLOOR).await;
            let r = rpc_error(StatusCode::UNAUTHORIZED, -32001, "invalid or expired token");
            Err(with_authenticate(
                r,
                challenge(
                    ", error=\"invalid_token\", error_description=\"the token was not accepted\"",
                ),
            ))
        }
    }
}

/// What the front needs to know of a POST body before rmcp reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// It calls a write tool (alone or in a batch).
    pub writes: bool,
    /// It is an initialize request (a new session).
    pub initialize: bool,
}

/// A POST body: JSON-RPC (an object or a batch), or the error to answer with.
pub fn screen(body: &[u8]) -> Result<Screened, (StatusCode, i64, &'static str)> {
    let message: Value = serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            -32700,
            "Parse error: the body is not JSON",
        )
    })?;
    if !(message.is_object() || message.is_array()) {
        return Err((
            StatusCode::BAD_REQUEST,
            -32600,
            "Invalid Request: expected a JSON-RPC object",
        ));
    }
    Ok(Screened {
        writes: wants_write(&message),
        initialize: is_initialize(&message),
    })
}

/// Whether a JSON-RPC message (or batch) calls a write tool.
fn wants_write(m: &Value) -> bool {
    match m {
        Value::Array(batch) => batch.iter().any(wants_write),
        Value::Object(o) => {
            o.get("method").and_then(Value::as_str) == Some("tools/call")
                && o.get("params")
                    .and_then(|p| p.get("name"))
                    .and_then(Value::as_str)
                    .is_some_and(|n| super::tools::WRITE_TOOLS.contains(&n))
        }
        _ => false,
    }
}

fn is_initialize(m: &Value) -> bool {
    m.get("method").and_then(Value::as_str) == Some("initialize")
}

/// 503 when the endpoint holds its most sessions, 429 when this identity holds its own
/// most; None when a new one may open. Forgets owners of sessions rmcp has ended.
async fn too_many_sessions(endpoint: &Endpoint, key: &str) -> Option<Response<Body>> {
    let open = endpoint.sessions.sessions.read().await;
    if endpoint.owners.len() > open.len() {
        endpoint
            .owners
            .retain(|id, _| open.contains_key(id.as_str()));
    }
    if open.len() >= MAX_SESSIONS {
        return Some(rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            -32603,
            "too many MCP sessions: try again later",
        ));
    }
    let mine = endpoint.owners.iter().filter(|o| o.value() == key).count();
    (mine >= SESSIONS_PER_IDENTITY).then(|| {
        rpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            -32603,
            "this identity has too many open MCP sessions: close some (DELETE)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_goes_between_host_and_path() {
        assert_eq!(
            metadata_url("https://db.example.com/mcp"),
            "https://db.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn host_names_without_ports() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn batches_are_searched_for_writes() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "execute"}});
        assert!(wants_write(&call));
        assert!(wants_write(&json!([{"method": "ping"}, call])));
        assert!(!wants_write(
            &json!({"method": "tools/call", "params": {"name": "query"}})
        ));
    }
}
