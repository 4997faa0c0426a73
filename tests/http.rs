//! The HTTP endpoint: /health, /ready (flips with the upstream), /pools, /metrics counting
//! real traffic, parsed as OpenMetrics text.

mod support;

use pgsluice::config::PoolMode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET with a hand-written HTTP/1.1 request; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, "").await
}

/// GET with an Authorization header (none when empty).
async fn get_with(addr: std::net::SocketAddr, path: &str, authorization: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = if authorization.is_empty() {
        String::new()
    } else {
        format!("Authorization: {authorization}\r\n")
    };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "GET {path} timed out; got {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// `text` with an `[http]` section on a free port (`extra` lines added to it).
fn with_http(text: &str, extra: &str) -> String {
    text.replacen(
        "[admin]",
        &format!("[http]\naddr = \"127.0.0.1:0\"\n{extra}\n[admin]"),
        1,
    )
}

/// The value of one sample line, `name{labels} value`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_pools_and_metrics() {
    let mut pg = start_postgres();
    let text = with_http(&config_text(&pg, "", "pool_size = 3"), "");
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();

    assert_eq!(get(http, "/health").await, (200, "ok\n".to_owned()));
    assert_eq!(get(http, "/nope").await.0, 404);
    // The container's HEALTHCHECK: `pgsluice healthcheck` succeeds here, fails where
    // nothing answers.
    let check = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .args(["healthcheck", "--addr", &addr])
            .output()
            .unwrap()
    };
    assert!(check(http.to_string()).status.success());
    let nobody = check(format!(
        "127.0.0.1:{}",
        pgsluice::devdb::free_port().unwrap()
    ));
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("pgsluice healthcheck"));
    let (status, body) = get(http, "/ready").await;
    assert_eq!(status, 200, "{body}");

    let c = proxy.connect(PoolMode::Transaction).await;
    for i in 0..25 {
        c.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    assert!(
        connect(&proxy.url(PoolMode::Transaction, ("agent", "wrong"), "app"))
            .await
            .is_err()
    );

    let (status, metrics) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line:?}");
    }
    assert_eq!(
        sample(
            &metrics,
            r#"pgsluice_transactions_total{database="app",role="app_scram"}"#
        ),
        Some(25.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"pgsluice_auth_attempts_total{method="scram-sha-256",result="failed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"pgsluice_auth_attempts_total{method="scram-sha-256",result="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"pgsluice_client_errors_total{class="28"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "pgsluice_client_connections"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            r#"pgsluice_server_connections{database="app",role="app_scram",state="idle"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"pgsluice_pool_wait_seconds_count{database="app",role="app_scram"}"#
        ),
        Some(26.0),
        "25 transactions + the login checkout"
    );

    // The console's tables as JSON, with the console's column names.
    let (_, pools) = get(http, "/pools").await;
    let v: serde_json::Value = serde_json::from_str(&pools).unwrap();
    let p = &v["pools"][0];
    assert_eq!(
        (p["database"].as_str(), p["user"].as_str()),
        (Some("app"), Some("app_scram"))
    );
    assert_eq!(
        (
            p["pool_size"].as_i64(),
            p["sv_idle"].as_i64(),
            p["cl_active"].as_i64(),
            p["cl_waiting"].as_i64()
        ),
        (Some(3), Some(1), Some(1), Some(0)),
        "{pools}"
    );
    let (_, stats) = get(http, "/stats").await;
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let app_stats = v["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["database"] == "app")
        .unwrap();
    assert_eq!(app_stats["total_xact_count"], 25, "{stats}");
    assert_eq!(app_stats["total_query_count"], 25, "{stats}");
    let (_, clients) = get(http, "/clients").await;
    let v: serde_json::Value = serde_json::from_str(&clients).unwrap();
    assert_eq!(v["clients"].as_array().unwrap().len(), 1, "{clients}");
    assert_eq!(v["clients"][0]["user"], "agent");
    assert_eq!(v["clients"][0]["auth_method"], "scram-sha-256");
    let (_, servers) = get(http, "/servers").await;
    let v: serde_json::Value = serde_json::from_str(&servers).unwrap();
    assert_eq!(v["servers"][0]["state"], "idle", "{servers}");
    assert!(v["servers"][0]["remote_pid"].as_i64().unwrap() > 0);

    // 25 statements that differ only in a constant are one fingerprint.
    let (_, queries) = get(http, "/queries").await;
    let v: serde_json::Value = serde_json::from_str(&queries).unwrap();
    let q = v["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["query"] == "select ?")
        .unwrap_or_else(|| panic!("{queries}"));
    assert_eq!(
        (q["calls"].as_i64(), q["rows"].as_i64()),
        (Some(25), Some(25)),
        "{q}"
    );
    assert!(q["total_time_us"].as_i64().unwrap() >= q["max_time_us"].as_i64().unwrap());
    assert_eq!(q["errors"], 0);

    pg.stop();
    let (status, body) = get(http, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "app"),
        "{body}"
    );
    pg.restart().unwrap();
    let (status, body) = get(http, "/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_everything_but_health() {
    let pg = start_postgres();
    let text = with_http(&config_text(&pg, "", ""), "token = \"s3cret-token\"\n");
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();
    assert_eq!(get(http, "/health").await.0, 200);
    for path in ["/metrics", "/pools", "/queries", "/ready"] {
        assert_eq!(get(http, path).await.0, 401, "{path} without a token");
        assert_eq!(
            get_with(http, path, "Bearer wrong-token").await.0,
            401,
            "{path} with a wrong token"
        );
        let (status, body) = get_with(http, path, "Bearer s3cret-token").await;
        assert_eq!(status, 200, "{path}: {body}");
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let (status, body) = get_with(http, path, "bearer s3cret-token").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(get_with(http, path, "BEARER S3CRET-TOKEN").await.0, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_per_pool() {
    let pg = start_postgres();
    let text = with_http(&config_text(&pg, "", "pool_size = 2"), "");
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();
    let (_, before) = get(http, "/metrics").await;
    let q = r#"pgsluice_queries_total{database="app",role="app_scram"}"#;
    let rx = r#"pgsluice_client_received_bytes_total{database="app",role="app_scram"}"#;
    let q0 = sample(&before, q).unwrap();
    let rx0 = sample(&before, rx).unwrap();
    for i in 0..10 {
        c.query_one("SELECT $1::int", &[&i]).await.unwrap();
    }
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let (_, after) = get(http, "/metrics").await;
    // Each query_one is a Parse/Describe/Sync then a Bind/Execute/Sync: two queries.
    assert_eq!(sample(&after, q).unwrap() - q0, 21.0, "{after}");
    assert!(sample(&after, rx).unwrap() > rx0);
    assert_eq!(
        sample(
            &after,
            r#"pgsluice_server_errors_total{database="app",role="app_scram",class="22"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"pgsluice_query_duration_seconds_count{database="app",role="app_scram"}"#
        ),
        sample(&after, q)
    );
    assert_eq!(
        sample(
            &after,
            r#"pgsluice_pool_size{database="app",role="app_scram"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"pgsluice_upstream_up{database="app",role="app_scram"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_opens_after_a_failed_connect() {
    let mut pg = start_postgres();
    let text = with_http(
        // A short server_connect_timeout: the connect retries while PostgreSQL is down end
        // in 1 s instead of the default 15.
        &config_text(
            &pg,
            "server_login_retry = 30\nserver_connect_timeout = 1",
            "pool_size = 2",
        ),
        "",
    );
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();
    let circuit = r#"pgsluice_upstream_circuit_open{database="app",role="app_scram"}"#;
    let up = r#"pgsluice_upstream_up{database="app",role="app_scram"}"#;
    assert_eq!(sample(&get(http, "/metrics").await.1, circuit), Some(0.0));

    // The idle server dies with PostgreSQL; the next transaction needs a new connection.
    pg.stop();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    let (_, m) = get(http, "/metrics").await;
    assert_eq!(sample(&m, circuit), Some(1.0), "{m}");
    assert_eq!(sample(&m, up), Some(0.0));

    // Back up, but within server_login_retry: new transactions fail at once, untried.
    pg.restart().unwrap();
    let start = std::time::Instant::now();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_exhaust_the_http_port() {
    use tokio::io::AsyncReadExt;
    let pg = start_postgres();
    let text = with_http(
        &config_text(&pg, "", ""),
        "max_connections = 8\nrequest_timeout = 1",
    );
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();
    // Fifty sockets that never send a byte, and one that sends half a header.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // PostgreSQL clients are served meanwhile.
    let c = proxy.connect(PoolMode::Transaction).await;
    let v: i32 = c.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    // Within the timeout (and a margin for a loaded machine) the proxy has closed them all.
    for s in silent.iter_mut().chain(std::iter::once(&mut slow)) {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent socket is still open: {r:?}"
        );
    }
    // And the endpoint answers again.
    assert_eq!(get(http, "/health").await.0, 200);
}
