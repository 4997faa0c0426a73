//! Connecting: both listeners, IPv6 and unix sockets on both sides, each upstream and client
//! auth method, and every login refusal with its SQLSTATE.

mod support;

use pgsluice::config::PoolMode;
use support::raw::{self, Raw};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_both_listeners() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let url = format!(
            "postgresql://agent:agent-pw@127.0.0.1:{}/app",
            proxy.port(mode)
        );
        let (ok, out, err) = psql(
            &pg,
            &url,
            &[
                "-c",
                "SELECT 1",
                "-c",
                "SELECT current_user, current_database()",
            ],
        );
        assert!(ok, "{mode:?}: {err}");
        assert_eq!(out, "1\napp_scram|appdb", "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_unix_listeners_and_upstreams() {
    let pg = start_postgres();
    let sock_dir = pg.dir.join("proxy-sock");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let text = config_text(&pg, "", "").replacen(
        "[admin]",
        &format!(
            "[[listeners]]\naddr = \"[::1]:0\"\nmode = \"transaction\"\n\n[[listeners]]\naddr = \"{}/.s.PGSQL.7777\"\nmode = \"session\"\n\n[admin]",
            sock_dir.display()
        ),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let v6 = proxy
        .running
        .listeners
        .iter()
        .find_map(|(a, _)| match a {
            pgsluice::config::ListenAddr::Tcp(sa) if sa.is_ipv6() => Some(*sa),
            _ => None,
        })
        .unwrap();
    // Client over IPv6 to an upstream reached over IPv6.
    let url = format!("postgresql://agent:agent-pw@[::1]:{}/app_v6", v6.port());
    let (ok, out, err) = psql(&pg, &url, &["-c", "SELECT inet_server_addr()"]);
    assert!(ok, "{err}");
    assert_eq!(out, "::1");
    // An upstream named by host name.
    let url = format!(
        "postgresql://agent:agent-pw@127.0.0.1:{}/app_byname",
        proxy.port(PoolMode::Session)
    );
    let (ok, out, err) = psql(&pg, &url, &["-c", "SELECT current_database()"]);
    assert!(ok, "{err}");
    assert_eq!(out, "appdb");
    // Client over the proxy's unix socket to an upstream reached over its unix socket.
    let url = format!(
        "host={} port=7777 user=agent password=agent-pw dbname=app_unix",
        sock_dir.display()
    );
    let (ok, out, err) = psql(
        &pg,
        &url,
        &["-c", "SELECT coalesce(inet_server_addr()::text, 'unix')"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "unix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_method_both_sides() {
    let pg = start_postgres();
    // Clients: SCRAM (plaintext stored), md5 (md5 hash stored), SCRAM (verifier stored), and
    // md5 forced by auth_type for a plaintext user.
    let verifier = postgres_protocol::password::scram_sha_256(b"verifier-pw");
    let text = config_text(&pg, "", "").replace(
        "[[users]]\nname = \"agent_plain\"",
        &format!(
            "[[users]]\nname = \"agent_verifier\"\npassword = \"{verifier}\"\nserver_user = \"app_scram\"\nserver_password = \"role-pw\"\n\n[[users]]\nname = \"agent_plain\""
        ),
    );
    let proxy = Proxy::start(&text).await;
    let port = proxy.port(PoolMode::Transaction);
    let mut open = Vec::new();
    for (user, pw, role) in [
        ("agent", "agent-pw", "app_scram"),
        ("agent_md5", "md5-agent-pw", "app_md5"),
        ("agent_plain", "plain-pw", "app_plain"),
        ("agent_verifier", "verifier-pw", "app_scram"),
    ] {
        let mut raw = Raw::open(port).await;
        let seen = raw
            .login(196608, user, pw, "app")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(seen.contains(&b'R'), "{user}");
        assert_eq!(
            raw.query("SELECT current_user").await.unwrap(),
            vec![role.to_owned()],
            "{user}"
        );
        open.push(raw);
    }
    // SHOW CLIENTS says how each logged in (auth_method and pool_mode are kept as bytes).
    let mut shown: Vec<_> = console(&pg, &proxy, ADMIN, "SHOW CLIENTS")
        .unwrap()
        .into_iter()
        .filter(|c| c["database"] == "app")
        .map(|c| {
            (
                c["user"].clone(),
                c["auth_method"].clone(),
                c["pool_mode"].clone(),
            )
        })
        .collect();
    shown.sort();
    let tx = "transaction".to_owned();
    assert_eq!(
        shown,
        [
            ("agent".into(), "scram-sha-256".into(), tx.clone()),
            ("agent_md5".into(), "md5".into(), tx.clone()),
            ("agent_plain".into(), "scram-sha-256".into(), tx.clone()),
            ("agent_verifier".into(), "scram-sha-256".into(), tx.clone()),
        ]
    );
    drop(open);
    // The md5-stored user must be challenged with md5 (AuthenticationMD5Password = 5).
    let mut raw = Raw::open(port).await;
    raw.send(&raw::startup_packet(
        196608,
        &[("user", "agent_md5"), ("database", "app")],
    ))
    .await;
    let (tag, body) = raw.recv().await.unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &5i32.to_be_bytes()[..]));

    let md5_proxy = Proxy::start(&config_text(&pg, "auth_type = \"md5\"", "")).await;
    let mut raw = Raw::open(md5_proxy.port(PoolMode::Session)).await;
    raw.send(&raw::startup_packet(
        196608,
        &[("user", "agent"), ("database", "app")],
    ))
    .await;
    let (tag, body) = raw.recv().await.unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &5i32.to_be_bytes()[..]));
    let mut raw = Raw::open(md5_proxy.port(PoolMode::Session)).await;
    raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
    assert_eq!(raw.query("SELECT 40 + 2").await.unwrap(), vec!["42"]);
}

/// A client may send its first query behind its password without waiting for
/// AuthenticationOk (PostgreSQL and PgBouncer answer it). The proxy read that query with the
/// password message and dropped it: the client waited for an answer that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_behind_the_password_is_answered() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        for (user, pw) in [("agent", "agent-pw"), ("agent_md5", "md5-agent-pw")] {
            let mut raw = Raw::open(proxy.port(mode)).await;
            raw.behind_auth = raw::message(b'Q', b"SELECT 40 + 2, current_user\0");
            raw.login(196608, user, pw, "app")
                .await
                .unwrap_or_else(|e| panic!("{mode:?} {user}: {e}"));
            let mut rows = Vec::new();
            loop {
                let (tag, body) = raw
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("{mode:?} {user}: no answer to the query"));
                match tag {
                    b'D' => rows.push(String::from_utf8_lossy(&body).into_owned()),
                    b'E' => panic!("{mode:?} {user}: {}", raw::error_code(&body)),
                    b'Z' => break,
                    _ => {}
                }
            }
            let role = if user == "agent" {
                "app_scram"
            } else {
                "app_md5"
            };
            assert_eq!(rows.len(), 1, "{mode:?} {user}: {rows:?}");
            assert!(
                rows[0].contains("42") && rows[0].contains(role),
                "{mode:?} {user}: {rows:?}"
            );
        }
    }
    // The admin console takes its first command the same way.
    let mut raw = Raw::open(proxy.port(PoolMode::Transaction)).await;
    raw.behind_auth = raw::message(b'Q', b"SHOW VERSION\0");
    raw.login(196608, ADMIN.0, ADMIN.1, "pgsluice")
        .await
        .unwrap_or_else(|e| panic!("console: {e}"));
    let (tag, body) = raw.recv().await.expect("console: no answer to the command");
    assert_eq!(tag, b'T', "{}", String::from_utf8_lossy(&body));
    let (tag, body) = raw.recv().await.expect("console: no row");
    assert_eq!(tag, b'D');
    assert!(String::from_utf8_lossy(&body).contains("pgsluice"));
}

/// A client that sends its SCRAM first message in the same write as its startup packet (it
/// knows the mechanism) is read in order: nothing behind the startup packet is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_first_message_behind_the_startup_packet_is_read() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let mut raw = Raw::open(proxy.port(mode)).await;
        let mut scram = ScramSha256::new(AGENT.1.as_bytes(), ChannelBinding::unsupported());
        let mut first = raw::startup_packet(196608, &[("user", AGENT.0), ("database", "app")]);
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        body.extend_from_slice(scram.message());
        first.extend(raw::message(b'p', &body));
        raw.send(&first).await;
        let (tag, body) = raw.recv().await.expect("AuthenticationSASL");
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &10i32.to_be_bytes()[..]),
            "{mode:?}"
        );
        let (tag, body) = raw.recv().await.expect("SASLContinue");
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &11i32.to_be_bytes()[..]),
            "{mode:?}"
        );
        scram.update(&body[4..]).unwrap();
        let mut last = raw::message(b'p', scram.message());
        last.extend(raw::message(b'Q', b"SELECT current_user\0"));
        raw.send(&last).await;
        let mut rows = Vec::new();
        loop {
            let (tag, body) = raw.recv().await.expect("an answer");
            match tag {
                b'R' if body[..4] == 12i32.to_be_bytes() => scram.finish(&body[4..]).unwrap(),
                b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
                b'E' => panic!("{mode:?}: {}", raw::error_code(&body)),
                b'Z' if !rows.is_empty() => break,
                _ => {}
            }
        }
        assert_eq!(rows, ["app_scram"], "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_right_sqlstate() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "max_client_conn = 3", "")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let e = connect(&proxy.url(mode, ("agent", "wrong"), "app"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{e}");
        let e = connect(&proxy.url(mode, ("nobody", "x"), "app"))
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&e),
            "28P01",
            "unknown users look like wrong passwords: {e}"
        );
        let e = connect(&proxy.url(mode, AGENT, "nope")).await.unwrap_err();
        assert_eq!(sqlstate(&e), "3D000", "{e}");
        assert_eq!(
            e.as_db_error().unwrap().message(),
            "database \"nope\" does not exist"
        );
    }
    // max_client_conn = 3: the fourth concurrent client is refused with 53300.
    let a = proxy.connect(PoolMode::Transaction).await;
    let b = proxy.connect(PoolMode::Transaction).await;
    let c = proxy.connect(PoolMode::Session).await;
    let e = connect(&proxy.url(PoolMode::Transaction, AGENT, "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    for client in [&a, &b, &c] {
        let row = client
            .query_one("SELECT 7", &[])
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
    }
    drop((a, b));
    // Places free up when clients leave.
    let mut ok = false;
    for _ in 0..50 {
        if connect(&proxy.url(PoolMode::Transaction, AGENT, "app"))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "a client slot must be freed when a client disconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_gssenc_and_protocol_negotiation() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    let port = proxy.port(PoolMode::Transaction);
    // SSLRequest and GSSENCRequest are answered 'N', then a plain startup proceeds.
    let mut raw = Raw::open(port).await;
    raw.send(&[0, 0, 0, 8, 4, 210, 22, 47]).await;
    assert_eq!(raw.recv_byte().await, b'N');
    raw.send(&[0, 0, 0, 8, 4, 210, 22, 48]).await;
    assert_eq!(raw.recv_byte().await, b'N');
    raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
    assert_eq!(raw.query("SELECT 1").await.unwrap(), vec!["1"]);
    // A protocol 3.2 client (PostgreSQL 18 libpq) is told we speak 3.0, before authentication.
    let mut raw = Raw::open(port).await;
    let seen = raw
        .login((3 << 16) | 2, "agent", "agent-pw", "app")
        .await
        .unwrap();
    assert_eq!(
        seen.first(),
        Some(&b'v'),
        "NegotiateProtocolVersion comes first: {seen:?}"
    );
    assert_eq!(raw.query("SELECT 2").await.unwrap(), vec!["2"]);
    // Protocol 2 is refused with 0A000.
    let mut raw = Raw::open(port).await;
    let e = raw
        .login(2 << 16, "agent", "agent-pw", "app")
        .await
        .unwrap_err();
    assert_eq!(e, "0A000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_reports_the_real_backend_pid() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    let mut raw = Raw::open(proxy.port(PoolMode::Session)).await;
    raw.login(196608, "agent", "agent-pw", "app").await.unwrap();
    let pid = raw.query("SELECT pg_backend_pid()").await.unwrap();
    assert_eq!(pid, vec![raw.pid.to_string()]);
    // Parameters are reported as PostgreSQL spells them.
    for name in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
    ] {
        assert!(
            raw.params.iter().any(|(k, _)| k == name),
            "missing {name}: {:?}",
            raw.params
        );
    }
}

/// Runs `pgsluice check-config FILE` with extra environment; (success, stderr).
fn check_config(file: &std::path::Path, envs: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .envs(envs.iter().copied())
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("pgsluice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    let listener = "[[listeners]]\naddr = \"127.0.0.1:6432\"\nmode = \"session\"\n";
    std::fs::write(&file, listener).unwrap();
    assert_eq!(check_config(&file, &[]), (true, String::new()));

    std::fs::write(&file, listener.replace("session", "transactoin")).unwrap();
    let (ok, err) = check_config(&file, &[]);
    assert!(!ok);
    assert!(err.starts_with(&format!("{}:3:", file.display())), "{err}");
    assert!(
        err.contains("key `mode`") && err.contains("transactoin"),
        "{err}"
    );

    // ${ENV} substitution: an unset variable is an error naming it and its line.
    std::fs::write(
        &file,
        format!("{listener}[[users]]\nname = \"a\"\npassword = \"${{PGSLUICE_TEST_VAR}}\"\n"),
    )
    .unwrap();
    let (ok, err) = check_config(&file, &[]);
    assert!(
        !ok && err.contains(":6:") && err.contains("PGSLUICE_TEST_VAR is not set"),
        "{err}"
    );
    assert!(check_config(&file, &[("PGSLUICE_TEST_VAR", "pw")]).0);

    // The documented example is a valid configuration.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let env = [
        ("AGENT_PASSWORD", "a"),
        ("APP_DB_PASSWORD", "b"),
        ("ADMIN_PASSWORD", "c"),
    ];
    let (ok, err) = check_config(&example, &env);
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn accepts_the_shared_minimal_contract() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract/minimal.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| include_str!("data/minimal.toml").to_owned());
    let filled = fill_contract(&text);
    let c = pgsluice::config::Config::parse(&filled, &path).unwrap();
    assert_eq!(c.listeners[0].get_ref().mode, PoolMode::Session);
    assert_eq!(c.listeners[1].get_ref().mode, PoolMode::Transaction);
    let db = c.database("app").unwrap();
    assert_eq!(
        (db.port, db.dbname.as_deref(), db.pool_size),
        (5432, Some("postgres"), Some(20))
    );
    let agent = c.user("agent").unwrap();
    assert_eq!(agent.server_user.as_deref(), Some("postgres"));
    assert_eq!(c.admin.users.len(), 1);
}
