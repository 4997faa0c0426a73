//! The HTTP endpoint on `[http] addr` (hyper 1): `/health` (the process answers), `/ready`
//! (listening, and every configured database reachable; 503 with a JSON reason otherwise, for
//! Kubernetes readiness probes), `/pools` (JSON) and `/metrics` (OpenMetrics text).

use crate::app::App;
use crate::backend::connect::Upstream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long /ready waits for each database's TCP connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(app.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/health" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/metrics" => {
            refresh_pool_gauges(&app);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                app.metrics.encode(),
            )
        }
        "/pools" => reply(
            StatusCode::OK,
            "application/json",
            pools_json(&app).to_string(),
        ),
        "/ready" => {
            let (ready, body) = readiness(&app).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /ready, /pools, /metrics\n".into(),
        ),
    })
}

fn refresh_pool_gauges(app: &App) {
    use crate::metrics::{PoolLabels, ServerStateLabels};
    for pool in app.pools.all() {
        let c = pool.counts();
        let (database, role) = (pool.key.database.to_string(), pool.key.role.to_string());
        let state = |state| ServerStateLabels {
            database: database.clone(),
            role: role.clone(),
            state,
        };
        app.metrics
            .server_connections
            .get_or_create(&state("idle"))
            .set(c.idle as i64);
        app.metrics
            .server_connections
            .get_or_create(&state("active"))
            .set((c.open - c.idle) as i64);
        app.metrics
            .clients_waiting
            .get_or_create(&PoolLabels {
                database: database.clone(),
                role: role.clone(),
            })
            .set(c.waiting as i64);
    }
}

fn pools_json(app: &App) -> serde_json::Value {
    let pools: Vec<serde_json::Value> = app
        .pools
        .all()
        .iter()
        .map(|p| {
            let c = p.counts();
            serde_json::json!({
                "database": &*p.key.database,
                "role": &*p.key.role,
                "pool_size": p.settings.size,
                "server_active": c.open - c.idle,
                "server_idle": c.idle,
                "clients_waiting": c.waiting,
                "transactions": p.metrics.transactions.get(),
            })
        })
        .collect();
    serde_json::json!({ "clients": app.client_count(), "pools": pools })
}

/// Ready when the proxy accepts connections and every configured database answers a TCP
/// (or unix socket) connect.
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
        let probe = Upstream {
            host: db.host.to_string(),
            port: db.port,
            dbname: String::new(),
            user: String::new(),
            password: None,
        };
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe.open_socket()).await,
            Ok(Ok(_))
        );
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
