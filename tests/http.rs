//! The HTTP endpoint: /health, /ready (flips with the upstream), /pools, /metrics counting
//! real traffic, parsed as OpenMetrics text.

mod support;

use pgsluice::config::PoolMode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET with a hand-written HTTP/1.1 request; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
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
    let text = config_text(&pg, "", "pool_size = 3").replacen(
        "[admin]",
        "[http]\naddr = \"127.0.0.1:0\"\n\n[admin]",
        1,
    );
    let proxy = Proxy::start(&text).await;
    let http = proxy.running.http.unwrap();

    assert_eq!(get(http, "/health").await, (200, "ok\n".to_owned()));
    assert_eq!(get(http, "/nope").await.0, 404);
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

    let (_, pools) = get(http, "/pools").await;
    let v: serde_json::Value = serde_json::from_str(&pools).unwrap();
    assert_eq!(v["clients"], 1);
    let p = &v["pools"][0];
    assert_eq!(
        (p["database"].as_str(), p["role"].as_str()),
        (Some("app"), Some("app_scram"))
    );
    assert_eq!(
        (
            p["pool_size"].as_u64(),
            p["transactions"].as_u64(),
            p["server_idle"].as_u64()
        ),
        (Some(3), Some(25), Some(1))
    );

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
