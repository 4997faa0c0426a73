//! TLS with certificates made in the test: psql with sslmode=require and verify-full,
//! plaintext refused under tls.mode = require, PostgreSQL 17's direct TLS from a hand-written
//! client (ALPN "postgresql"), the upstream over TLS with verify-full against a PostgreSQL
//! started with ssl=on, and certificate rotation on disk with no client dropped.

mod support;

use pgsluice::config::PoolMode;
use std::path::Path;
use std::time::Duration;
use support::certs::{self, Pki};
use support::*;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pgsluice-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tls_section(pki: &Pki, mode: &str) -> String {
    format!(
        "[tls]\nmode = \"{mode}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

/// A config with `[tls]` (and `general`), the HTTP endpoint on.
fn with_tls(pg: &pgsluice::devdb::DevDb, pki: &Pki, mode: &str, general: &str) -> String {
    config_text(pg, general, "pool_size = 3").replacen(
        "[admin]",
        &format!(
            "{}[http]\naddr = \"127.0.0.1:0\"\n\n[admin]",
            tls_section(pki, mode)
        ),
        1,
    )
}

fn psql_url(proxy: &Proxy, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} password={} dbname=app {extra}",
        proxy.port(PoolMode::Transaction),
        AGENT.0,
        AGENT.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_require_and_verify_full_and_plaintext_refused() {
    let pg = start_postgres();
    let dir = tmpdir("psql");
    let pki = certs::make(&dir, "", "pgsluice");
    let proxy = Proxy::start(&with_tls(&pg, &pki, "require", "")).await;

    let ca = pki.ca.display().to_string();
    let (ok, out, err) = psql(
        &pg,
        &psql_url(&proxy, &format!("sslmode=verify-full sslrootcert={ca}")),
        &["-c", "SELECT 40 + 2"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "42");
    let (ok, out, err) = psql(
        &pg,
        &psql_url(&proxy, "sslmode=require"),
        &["-c", "SELECT 'enc'"],
    );
    assert!(ok && out == "enc", "{err}");

    // The host name is checked: a name the certificate does not carry fails verify-full.
    let wrong = psql_url(&proxy, &format!("sslmode=verify-full sslrootcert={ca}"))
        .replace("host=localhost", "host=not-the-name.example");
    let (ok, _, err) = psql(&pg, &wrong, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("does not match"), "{err}");

    // Plaintext is refused under require, with a clear 28000.
    let (ok, _, err) = psql(
        &pg,
        &psql_url(&proxy, "sslmode=disable"),
        &["-c", "SELECT 1"],
    );
    assert!(
        !ok && err.contains("requires TLS") && err.contains("sslmode=require"),
        "{err}"
    );
    let e = connect(&proxy.url(PoolMode::Transaction, AGENT, "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");

    // SHOW CLIENTS tells an encrypted client by its tls column; SNI is kept.
    let c = tokio::spawn({
        let url = psql_url(&proxy, "sslmode=require");
        let bindir = pg.bindir.clone();
        async move {
            std::process::Command::new(bindir.join("psql"))
                .arg(url)
                .args(["-XAtq", "-c", "SELECT pg_sleep(2)"])
                .output()
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let admin = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} password={} dbname=pgsluice sslmode=require",
        proxy.port(PoolMode::Session),
        ADMIN.0,
        ADMIN.1
    );
    let (ok, out, err) = psql(&pg, &admin, &["-F", "|", "-c", "SHOW CLIENTS"]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("|app|"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("|TLSv1.3/"), "{line}");
    assert!(line.ends_with("|localhost"), "SNI: {line}");
    assert!(c.await.unwrap().status.success());

    let (_, metrics) = http_get(proxy.running.http.unwrap(), "/metrics").await;
    let ok_count: f64 = metrics
        .lines()
        .find(|l| l.starts_with("pgsluice_tls_handshakes_total{kind=\"sslrequest\",result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(ok_count >= 4.0, "{metrics}");
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with("pgsluice_tls_certificate_expiry_timestamp_seconds"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let at: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(at > now, "rcgen's certificate is valid for years: {expiry}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal HTTP GET (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql() {
    let pg = start_postgres();
    let dir = tmpdir("direct");
    let pki = certs::make(&dir, "", "pgsluice");
    let proxy = Proxy::start(&with_tls(&pg, &pki, "prefer", "")).await;
    let port = proxy.port(PoolMode::Transaction);

    // TLS from the first byte (sslnegotiation=direct), then the protocol inside it.
    let tls = certs::tls_connect(port, &pki.ca, true, &[b"postgresql"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let client = certs::postgres_over(tls).await.unwrap();
    let v: i32 = client.query_one("SELECT 7 * 6", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    let clients = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
    assert!(
        clients.iter().any(|c| c["tls"].starts_with("TLSv1.3/")),
        "{clients:?}"
    );

    // Direct TLS without ALPN "postgresql" gets no session.
    let refused = match certs::tls_connect(port, &pki.ca, true, &[]).await {
        Err(_) => true,
        Ok(tls) => certs::postgres_over(tls).await.is_err(),
    };
    assert!(refused, "direct TLS without ALPN must be refused");

    // Plaintext still works under prefer.
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();

    // Bytes sent behind an SSLRequest, before its answer, are not taken into the session,
    // encrypted or not (CVE-2021-23214): refused, as PostgreSQL does. Alone, the same
    // SSLRequest is answered 'S'.
    let ssl_request = [8i32.to_be_bytes(), 80877103i32.to_be_bytes()].concat();
    let startup = support::raw::startup_packet(196608, &[("user", AGENT.0), ("database", "app")]);
    let mut raw = support::raw::Raw::open(port).await;
    raw.send(&[ssl_request.clone(), startup].concat()).await;
    let (tag, body) = raw.recv().await.expect("an answer");
    assert_eq!(
        (tag, support::raw::error_code(&body)),
        (b'E', "08P01".to_owned())
    );
    assert!(String::from_utf8_lossy(&body).contains("unencrypted data after SSL request"));
    let mut raw = support::raw::Raw::open(port).await;
    raw.send(&ssl_request).await;
    assert_eq!(raw.recv_byte().await, b'S');
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_tls_verify_full() {
    let dir = tmpdir("upstream");
    let pki = certs::make(&dir, "", "upstream");
    let other = certs::make(&dir, "other-", "someone else");
    let pg = pgsluice::devdb::DevDb::start_with_files(
        &[
            // Plaintext TCP is refused upstream: only TLS gets in.
            "hostssl all all 127.0.0.1/32 md5",
            "hostnossl all all 127.0.0.1/32 reject",
        ],
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "server.pem"),
            ("ssl_key_file", "server.key"),
        ],
        &[
            ("server.pem", &pki.server_cert_pem),
            ("server.key", &pki.server_key_pem),
        ],
    )
    .unwrap();
    create_role_and_db(&pg);
    let general = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"",
        pki.ca.display()
    );
    let proxy = Proxy::start(&config_text(&pg, &general, "pool_size = 2")).await;
    let c = proxy.connect(PoolMode::Transaction).await;
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the server connection must be encrypted");
    let servers = console(&pg, &proxy, ADMIN, "SHOW SERVERS").unwrap();
    assert!(
        servers.iter().all(|s| s["tls"].starts_with("TLS")),
        "{servers:?}"
    );

    // The wrong CA: the proxy refuses the server's certificate and the client gets 57P03.
    let general = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"",
        other.ca.display()
    );
    let wrong = Proxy::start(&config_text(&pg, &general, "pool_size = 2")).await;
    let e = connect(&wrong.url(PoolMode::Transaction, AGENT, "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");

    // sslmode=disable cannot get in at all (hostnossl reject), so TLS was really used above.
    let plain = Proxy::start(&config_text(&pg, "server_tls_sslmode = \"disable\"", "")).await;
    assert!(
        connect(&plain.url(PoolMode::Transaction, AGENT, "app"))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_clients() {
    let pg = start_postgres();
    let dir = tmpdir("rotate");
    let first = certs::make(&dir, "", "first");
    let proxy = Proxy::start(&with_tls(&pg, &first, "require", "")).await;
    let url = |pki: &Pki| {
        psql_url(
            &proxy,
            &format!("sslmode=verify-full sslrootcert={}", pki.ca.display()),
        )
    };
    // A long-lived client on the first certificate.
    let tls = certs::postgres_over(
        certs::tls_connect(proxy.port(PoolMode::Transaction), &first.ca, false, &[])
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let v: i32 = tls.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);

    // New files from another CA replace the old ones on disk.
    let second = certs::make(&dir.join("next"), "", "second");
    std::fs::copy(&second.server_cert, &first.server_cert).unwrap();
    std::fs::copy(&second.server_key, &first.server_key).unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (ok, out, _) = psql(&pg, &url(&second), &["-c", "SELECT 'new'"]);
        if ok && out == "new" {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "new connections must get the new certificate");
    let (ok, _, err) = psql(&pg, &url(&first), &["-c", "SELECT 1"]);
    assert!(!ok, "the old CA no longer verifies: {err}");
    // The client connected before the rotation is still served.
    let v: i32 = tls.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn accepts_the_agents_contract_tls_section() {
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract");
    let read = |name: &str, fallback: &str| {
        std::fs::read_to_string(contract.join(name)).unwrap_or_else(|_| fallback.to_owned())
    };
    let minimal = read("minimal.toml", include_str!("data/minimal.toml"));
    let agents = read("agents.toml", include_str!("data/agents.toml"));
    // The [tls] table of agents.toml, up to the next table.
    let start = agents
        .find("\n[tls]")
        .expect("agents.toml has a [tls] table");
    let rest = &agents[start + 1..];
    let end = rest[1..].find("\n[").map_or(rest.len(), |i| i + 1);
    let dir = tmpdir("contract");
    let pki = certs::make(&dir, "", "contract");
    let text = fill_contract(&format!("{minimal}\n{}", &rest[..end]))
        .replace("@TLS_CERT@", &pki.server_cert.display().to_string())
        .replace("@TLS_KEY@", &pki.server_key.display().to_string());
    let c = pgsluice::config::Config::parse(&text, Path::new("agents.toml")).unwrap();
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.mode, pgsluice::config::ClientTlsMode::Prefer);
    let files = tls.files().unwrap();
    assert_eq!(
        (files.cert, files.key),
        (pki.server_cert.clone(), pki.server_key.clone())
    );
    // A certificate that does not load is refused naming the file.
    let broken = text.replace(
        &pki.server_cert.display().to_string(),
        &dir.join("missing.pem").display().to_string(),
    );
    let e = pgsluice::config::Config::parse(&broken, Path::new("agents.toml")).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let pg = start_postgres();
    let dir = tmpdir("cert");
    let pki = certs::make(&dir, "", "clients");
    let stranger = certs::make(&dir.join("other"), "", "stranger");
    use std::os::unix::fs::PermissionsExt;
    for k in [&pki.client_key, &stranger.client_key] {
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "hostssl app agent 127.0.0.1/32 cert\nhost all all all scram-sha-256\n",
    )
    .unwrap();
    let text = with_tls(
        &pg,
        &pki,
        "require",
        &format!("auth_hba_file = \"{}\"", hba.display()),
    )
    .replacen(
        "mode = \"require\"\n",
        &format!("mode = \"require\"\nca = \"{}\"\n", pki.ca.display()),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let base = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=agent dbname=app sslmode=verify-full sslrootcert={}",
        proxy.port(PoolMode::Transaction),
        pki.ca.display()
    );
    // CN=agent, signed by the configured CA: in without a password.
    let with_cert = format!(
        "{base} sslcert={} sslkey={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (ok, out, err) = psql(&pg, &with_cert, &["-c", "SELECT current_user"]);
    assert!(ok, "{err}");
    assert_eq!(out, SCRAM_ROLE);
    // SHOW CLIENTS says how it logged in, while it is connected.
    let mut held = std::process::Command::new(pg.bindir.join("psql"))
        .args([with_cert.as_str(), "-XAtqc", "SELECT pg_sleep(3)"])
        .spawn()
        .unwrap();
    let mut shown = Vec::new();
    for _ in 0..50 {
        shown = console(&pg, &proxy, ADMIN, "SHOW CLIENTS")
            .unwrap()
            .into_iter()
            .filter(|c| c["database"] == "app")
            .map(|c| (c["auth_method"].clone(), c["pool_mode"].clone()))
            .collect();
        if !shown.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown, [("cert".to_owned(), "transaction".to_owned())]);
    assert!(held.wait().unwrap().success());
    // No certificate: refused, 28000.
    let (ok, _, err) = psql(
        &pg,
        &format!("{base} password={}", AGENT.1),
        &["-c", "SELECT 1"],
    );
    assert!(
        !ok && err.contains("certificate authentication failed"),
        "{err}"
    );
    // A certificate from another CA does not even finish the TLS handshake.
    let foreign = format!(
        "{base} sslcert={} sslkey={}",
        stranger.client_cert.display(),
        stranger.client_key.display()
    );
    let (ok, _, err) = psql(&pg, &foreign, &["-c", "SELECT 1"]);
    assert!(
        !ok,
        "a certificate from an unknown CA must be refused: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
