//! The HTTP endpoint on `[http] addr` (hyper 1): `/health` (the process answers), `/ready`
//! (listening, and every configured database reachable; 503 with a JSON reason otherwise, for
//! Kubernetes readiness probes), `/metrics` (OpenMetrics text), and the admin console's
//! tables as JSON: `/pools`, `/clients`, `/servers`, `/stats`, `/databases`, `/queries`,
//! `/activity`.
//! With `[http] token`, all but /health need `Authorization: Bearer <token>`.

use crate::app::App;
use crate::backend::connect::Upstream;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Time an MCP request may take beyond its statement_timeout (checkout, hand-over, reply).
const MCP_SLACK: Duration = Duration::from_secs(10);

type Body = crate::mcp::http::Body;

/// How long /ready waits for each database's TCP connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts HTTP connections: at most `max_connections` at once (more are closed on arrival,
/// so unauthenticated sockets cannot use up the process's descriptors), one request each,
/// within `request_timeout` from accept to the end of the response.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let (limit, header_timeout, timeout) = {
        let config = app.config.load();
        let Some(h) = config.http.as_ref() else {
            return;
        };
        let t = h.request_timeout.duration();
        // An MCP tool call may run for its statement_timeout.
        let mcp = config
            .mcp
            .as_ref()
            .filter(|m| m.enabled)
            .map(|m| m.statement_timeout.duration() + MCP_SLACK);
        (h.max_connections.max(1), t, mcp.map_or(t, |m| m.max(t)))
    };
    let mcp = Arc::new(crate::mcp::http::Endpoint::new(app.clone()));
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut backoff = crate::net::listener::AcceptBackoff::new("http");
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.reset();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(limit, "http: too many connections, closing new ones");
                refused_logged = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let mcp = mcp.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(app.clone(), mcp.clone(), req, peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(timeout, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "http connection ended with an error"),
                Err(_) => tracing::debug!("http connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    reply(status, "application/json", v.to_string())
}

/// With `[http] token` set, everything but /health needs `Authorization: Bearer <token>`.
fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let config = app.config.load();
    let Some(token) = config.http.as_ref().and_then(|h| h.token.as_ref()) else {
        return true;
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    use subtle::ConstantTimeEq;
    presented.as_bytes().ct_eq(token.as_str().as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110, 11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The console table behind a JSON endpoint: `/pools` is SHOW POOLS, and so on.
fn console_table(path: &str) -> Option<&'static str> {
    Some(match path {
        "/pools" => "pools",
        "/clients" => "clients",
        "/servers" => "servers",
        "/stats" => "stats",
        "/databases" => "databases",
        "/queries" => "queries",
        "/activity" => "activity",
        "/upstreams" => "upstreams",
        _ => return None,
    })
}

async fn handle(
    app: Arc<App>,
    mcp: Arc<crate::mcp::http::Endpoint>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if path == "/health" {
        return Ok(reply(StatusCode::OK, "text/plain", "ok\n".into()));
    }
    // MCP agents authenticate with their own tokens, not `[http] token`.
    if crate::mcp::http::owns(path) {
        return Ok(crate::mcp::http::handle(&app, &mcp, req, peer).await);
    }
    if !authorized(&app, &req) {
        tracing::info!(path, "http request without a valid bearer token");
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "a valid bearer token is required" }),
        );
        if let Ok(v) = "Bearer".parse() {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        return Ok(r);
    }
    if let Some(name) = console_table(path) {
        let rows = crate::admin::show::table(&app, name)
            .map(|t| t.to_json())
            .unwrap_or_default();
        return Ok(json(StatusCode::OK, serde_json::json!({ name: rows })));
    }
    Ok(match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        "/ready" => {
            let (ready, body) = readiness(&app).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /ready, /metrics, /pools, /clients, /servers, /stats, /databases, /queries, /activity, /upstreams\n".into(),
        ),
    })
}

/// Ready when the proxy accepts connections and every configured database answers a TCP
/// (or unix socket) connect (one of its upstreams, when it has several).
async fn readiness(app: &App) -> (bool, serde_json::Value) {
    if app.is_shutting_down() {
        return (
            false,
            serde_json::json!({ "ready": false, "reason": "shutting down" }),
        );
    }
    let config = app.config.load_full();
    let mut down = Vec::new();
    for db in config.databases.iter().map(|d| d.get_ref()) {
        // A database with several upstreams is up while one of them answers.
        let mut ok = false;
        for e in db.endpoints() {
            let probe = Upstream {
                host: e.host.to_string(),
                port: e.port.unwrap_or(db.port),
                dbname: String::new(),
                user: String::new(),
                password: None,
                tls: None,
                passthrough: None,
                tenant: None,
                addr: None,
                route: None,
            };
            ok = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, probe.open_socket()).await,
                Ok(Ok(_))
            );
            if ok {
                break;
            }
        }
        if !ok {
            down.push(db.name.to_string());
        }
    }
    if down.is_empty() {
        (true, serde_json::json!({ "ready": true }))
    } else {
        (
            false,
            serde_json::json!({ "ready": false, "reason": "database server unreachable", "databases": down }),
        )
    }
}
