//! Who gets in: address allow/deny lists (global, per database, per user) and pg_hba-style
//! rules, from 127.0.0.1 and ::1; per-address limits: lockout after repeated bad passwords
//! and recovery after it, connections per address, connection attempts per second.

mod support;

use pgsluice::config::PoolMode;
use std::time::{Duration, Instant};
use support::*;

/// `general` and `db_extra` as in config_text, plus a session listener on [::1] and
/// `users_extra` appended to the agent_md5 user.
fn config(pg: &pgsluice::devdb::DevDb, general: &str, db_extra: &str, md5_extra: &str) -> String {
    let text = config_text(pg, general, db_extra).replacen(
        "[[listeners]]",
        "[[listeners]]\naddr = \"[::1]:0\"\nmode = \"session\"\n\n[[listeners]]",
        1,
    );
    let at = text.find("name = \"agent_md5\"").unwrap();
    let end = at + text[at..].find("\n\n").unwrap();
    format!("{}\n{md5_extra}{}", &text[..end], &text[end..])
}

/// The port of the first listener on an IPv6 (or IPv4) address in `mode`.
fn port_of(proxy: &Proxy, v6: bool, mode: PoolMode) -> u16 {
    proxy
        .running
        .listeners
        .iter()
        .find_map(|(a, m)| match a {
            pgsluice::config::ListenAddr::Tcp(sa) if sa.is_ipv6() == v6 && *m == mode => {
                Some(sa.port())
            }
            _ => None,
        })
        .unwrap()
}

/// The [::1] listener's port.
fn v6_port(proxy: &Proxy) -> u16 {
    port_of(proxy, true, PoolMode::Session)
}

fn url(host: &str, port: u16, user: (&str, &str), db: &str) -> String {
    format!(
        "host={host} port={port} user={} password={} dbname={db}",
        user.0, user.1
    )
}

/// The SQLSTATE and message of a failed connect, or "ok".
async fn attempt(url: &str) -> (String, String) {
    match connect(url).await {
        Ok(c) => {
            c.simple_query("SELECT 1").await.unwrap();
            ("ok".into(), String::new())
        }
        Err(e) => (
            sqlstate(&e),
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists_global_database_and_user() {
    let pg = start_postgres();
    // Global: ::1 denied.
    let proxy = Proxy::start(&config(&pg, "deny_addresses = [\"::1\"]", "", "")).await;
    let v4 = port_of(&proxy, false, PoolMode::Session);
    let v6 = v6_port(&proxy);
    assert_eq!(attempt(&url("127.0.0.1", v4, AGENT, "app")).await.0, "ok");
    let (code, msg) = attempt(&url("::1", v6, AGENT, "app")).await;
    assert_eq!(code, "28000");
    assert!(
        msg.contains("access rules") && !msg.contains("agent"),
        "{msg}"
    );
    drop(proxy);

    // Per database: only ::1 may use app; app_byname is open to all.
    let proxy = Proxy::start(&config(&pg, "", "allow_addresses = [\"::1/128\"]", "")).await;
    let v4 = port_of(&proxy, false, PoolMode::Session);
    let v6 = v6_port(&proxy);
    assert_eq!(attempt(&url("::1", v6, AGENT, "app")).await.0, "ok");
    assert_eq!(
        attempt(&url("127.0.0.1", v4, AGENT, "app")).await.0,
        "28000"
    );
    assert_eq!(
        attempt(&url("127.0.0.1", v4, AGENT, "app_byname")).await.0,
        "ok"
    );
    drop(proxy);

    // Per user, checked after the password: a wrong password says 28P01 as for anyone.
    let proxy = Proxy::start(&config(
        &pg,
        "",
        "",
        "allow_addresses = [\"127.0.0.0/8\"]\n",
    ))
    .await;
    let v4 = port_of(&proxy, false, PoolMode::Session);
    let v6 = v6_port(&proxy);
    assert_eq!(
        attempt(&url("127.0.0.1", v4, AGENT_MD5, "app")).await.0,
        "ok"
    );
    assert_eq!(attempt(&url("::1", v6, AGENT_MD5, "app")).await.0, "28000");
    assert_eq!(
        attempt(&url("::1", v6, (AGENT_MD5.0, "wrong"), "app"))
            .await
            .0,
        "28P01"
    );
    assert_eq!(
        attempt(&url("::1", v6, ("nobody", "x"), "app")).await.0,
        "28P01",
        "an unknown user looks the same"
    );
    assert_eq!(attempt(&url("::1", v6, AGENT, "app")).await.0, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_rules_from_a_file() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-hba-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba = dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "# pgsluice's own rules
host    app     agent        127.0.0.1/32   scram-sha-256
host    app     agent        ::1/128        reject
hostssl all     agent_plain  all            md5
host    all     agent_md5    all            md5
",
    )
    .unwrap();
    let general = format!("auth_hba_file = \"{}\"", hba.display());
    let proxy = Proxy::start(&config(&pg, &general, "", "")).await;
    let v4 = port_of(&proxy, false, PoolMode::Session);
    let v6 = v6_port(&proxy);
    assert_eq!(attempt(&url("127.0.0.1", v4, AGENT, "app")).await.0, "ok");
    let (code, msg) = attempt(&url("::1", v6, AGENT, "app")).await;
    assert_eq!(code, "28000");
    assert!(
        msg.starts_with("pg_hba.conf rejects connection for host \"::1\""),
        "{msg}"
    );
    // agent_md5 falls through to the md5 line from both addresses.
    assert_eq!(attempt(&url("::1", v6, AGENT_MD5, "app")).await.0, "ok");
    // agent_plain only over TLS: plaintext finds no entry.
    let (code, msg) = attempt(&url("127.0.0.1", v4, ("agent_plain", "plain-pw"), "app")).await;
    assert_eq!(code, "28000");
    assert!(
        msg.starts_with("no pg_hba.conf entry for host \"127.0.0.1\""),
        "{msg}"
    );

    // A broken file is refused at load with its line.
    std::fs::write(&hba, "host all all all md5\nhost all all 300.1.1.1 md5\n").unwrap();
    let e = pgsluice::config::Config::parse(
        &config(&pg, &general, "", ""),
        std::path::Path::new("t.toml"),
    )
    .unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.to_string().starts_with(&format!("{}:2:", hba.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_after_bad_passwords_and_recovery() {
    let pg = start_postgres();
    let general = "limits_exempt = []\nauth_failure_limit = 3\nauth_failure_window = 60\nauth_failure_lockout = 1.5";
    let proxy = Proxy::start(&config(&pg, general, "", "")).await;
    let v4 = port_of(&proxy, false, PoolMode::Session);
    let v6 = v6_port(&proxy);
    for _ in 0..3 {
        assert_eq!(
            attempt(&url("127.0.0.1", v4, (AGENT.0, "guess"), "app"))
                .await
                .0,
            "28P01"
        );
    }
    // Locked out: even the right password is refused, without a word about users.
    let (code, msg) = attempt(&url("127.0.0.1", v4, AGENT, "app")).await;
    assert_eq!(code, "28000");
    assert!(
        msg.contains("too many failed authentication attempts"),
        "{msg}"
    );
    // Another address is not affected.
    assert_eq!(attempt(&url("::1", v6, AGENT, "app")).await.0, "ok");
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(attempt(&url("127.0.0.1", v4, AGENT, "app")).await.0, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_attempts_per_address() {
    let pg = start_postgres();
    let general = "limits_exempt = []\nmax_connections_per_address = 2";
    let proxy = Proxy::start(&config(&pg, general, "", "")).await;
    let v4 = proxy.port(PoolMode::Transaction);
    let a = connect(&url("127.0.0.1", v4, AGENT, "app")).await.unwrap();
    let b = connect(&url("127.0.0.1", v4, AGENT, "app")).await.unwrap();
    let (code, msg) = attempt(&url("127.0.0.1", v4, AGENT, "app")).await;
    assert_eq!(code, "53300");
    assert!(
        msg.contains("too many connections from this address"),
        "{msg}"
    );
    // Loopback over IPv6 is another address.
    assert_eq!(
        attempt(&url("::1", v6_port(&proxy), AGENT, "app")).await.0,
        "ok"
    );
    drop(a);
    let mut back = false;
    for _ in 0..40 {
        if attempt(&url("127.0.0.1", v4, AGENT, "app")).await.0 == "ok" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "a closed connection gives its place back");
    b.simple_query("SELECT 1").await.unwrap();
    drop(proxy);

    // Attempts: 5 a second, bursts of 10; the rest of a fast burst is refused.
    let general = "limits_exempt = []\nconnection_attempts_per_second = 5";
    let proxy = Proxy::start(&config(&pg, general, "", "")).await;
    let v4 = proxy.port(PoolMode::Transaction);
    let mut ok = 0;
    let mut limited = 0;
    let start = Instant::now();
    for _ in 0..40 {
        match attempt(&url("127.0.0.1", v4, AGENT, "app"))
            .await
            .0
            .as_str()
        {
            "ok" => ok += 1,
            "53300" => limited += 1,
            other => panic!("{other}"),
        }
    }
    // The burst of 10, plus what the bucket refilled at 5 a second meanwhile.
    let refilled = (start.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        ok >= 10 && ok <= 10 + refilled + 1,
        "ok {ok}, limited {limited}, refilled {refilled}"
    );
    assert!(limited > 0, "a fast burst past the limit is refused");
    assert_eq!(ok + limited, 40);
}

/// A plaintext password's SCRAM verifier is derived at start and after a reload, not at the
/// user's first login: otherwise that first login is milliseconds slower than an unknown
/// user's, and the timing tells which names exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_passwords_are_derived_before_anyone_logs_in() {
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-warm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgsluice.toml");
    std::fs::write(&path, config(&pg, "", "", "")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let app = &proxy.running.app;
    let warm = |user: &str, pw: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !app.has_verifier(user, pw) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        app.has_verifier(user, pw)
    };
    assert!(warm(AGENT.0, AGENT.1));
    assert!(!app.has_verifier(AGENT.0, "not-the-password"));
    // A password changed by RELOAD is derived before its first login too.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(AGENT.1, "changed-pw")).unwrap();
    app.reload().unwrap();
    assert!(warm(AGENT.0, "changed-pw"));
    let _ = std::fs::remove_dir_all(&dir);
}
