//! Hostile clients: lengths of 0, negative and 1 GiB (a startup packet's closed silently);
//! messages split at every byte; a slowloris startup; two thousand half-open connections;
//! unknown message types and protocol switches mid-stream; a cancel with a wrong key. Each
//! gets a clear answer (or is cut off in bounded time) and nobody else notices.

mod support;

use pgsluice::config::PoolMode;
use std::time::{Duration, Instant};
use support::raw::{self, Raw};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The next message, which must be an ErrorResponse with `code`, then the connection ends.
async fn expect_error_and_close(raw: &mut Raw, code: &str, what: &str) {
    let start = Instant::now();
    let (tag, body) = raw
        .recv()
        .await
        .unwrap_or_else(|| panic!("{what}: closed without an error"));
    assert_eq!(
        (tag, raw::error_code(&body)),
        (b'E', code.to_owned()),
        "{what}"
    );
    assert!(
        raw.recv().await.is_none(),
        "{what}: the connection must close"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{what}: answered late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_zero_negative_and_one_gib() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let port = proxy.port(mode);
        // In the startup packet: closed without a word, as PostgreSQL does (a reply here is
        // what node-postgres's connect-then-end race turns into an unhandled error).
        for len in [0i32, -1, 1 << 30] {
            let mut r = Raw::open(port).await;
            r.send(&len.to_be_bytes()).await;
            let start = std::time::Instant::now();
            assert!(r.recv().await.is_none(), "startup length {len}: a reply");
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "startup length {len}: closed late"
            );
        }
        // After login: the 1 GiB message is refused at once, not awaited.
        for len in [0i32, 3, -5, 1 << 30] {
            let mut r = Raw::open(port).await;
            r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
            let mut m = vec![b'Q'];
            m.extend_from_slice(&len.to_be_bytes());
            r.send(&m).await;
            expect_error_and_close(&mut r, "08P01", &format!("{mode:?} message length {len}"))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_split_at_every_byte() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut r = Raw::open(proxy.port(mode)).await;
        r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
        let mut bytes = raw::message(b'Q', b"SELECT 'simple'\0");
        bytes.extend(raw::ext::parse("s1", "SELECT $1::text || '!'"));
        bytes.extend(raw::ext::bind("", "s1", &[Some("split")]));
        bytes.extend(raw::ext::execute("", 0));
        bytes.extend(raw::ext::sync());
        // One byte per write, with a pause, so every boundary is a read boundary.
        r.stream.set_nodelay(true).unwrap();
        for b in &bytes {
            r.stream.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let replies = r.replies_until_ready(2).await;
        let text = replies.join(" ");
        assert!(text.contains("D:simple"), "{mode:?}: {text}");
        assert!(text.contains("D:split!"), "{mode:?}: {text}");
        assert!(!text.contains("E:"), "{mode:?}: {text}");
    }
}

/// Raises this process's soft descriptor limit to `want` (or the hard limit).
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_half_open_connections_are_bounded() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(
        &pg,
        "client_login_timeout = 4",
        "pool_size = 2",
    ))
    .await;
    let port = proxy.port(PoolMode::Transaction);
    // A startup packet one byte every 200 ms (6.6 s for all of it): cut off at 4 s.
    let slow = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let packet = raw::startup_packet(196608, &[("user", "agent"), ("database", "app")]);
        let start = Instant::now();
        for b in packet {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
            {
                break;
            }
        }
        start.elapsed()
    });
    // Two thousand connections that never send a byte (both ends live in this process).
    raise_fd_limit(8192);
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    // Meanwhile a real client is served at once.
    let start = Instant::now();
    let c = proxy.connect(PoolMode::Transaction).await;
    c.simple_query("SELECT 1").await.unwrap();
    // Well before the half-open connections time out (4 s): nobody waits for them.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let cut = slow.await.unwrap();
    assert!(
        cut >= Duration::from_secs(3) && cut < Duration::from_secs(6),
        "slowloris cut off after {cut:?} (all of its packet takes 6.6 s)"
    );
    // Every half-open connection is closed by the proxy within the login timeout.
    let deadline = Instant::now() + Duration::from_secs(12);
    for mut s in idle {
        let mut b = [0u8; 1];
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "still open: {r:?}");
    }
    let lists = console(&pg, &proxy, ADMIN, "SHOW LISTS").unwrap();
    let login = lists.iter().find(|r| r["list"] == "login_clients").unwrap();
    assert!(login["items"].parse::<i64>().unwrap() <= 1, "{lists:?}");
    c.simple_query("SELECT 2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_protocol_switches_and_wrong_cancel_keys() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 2")).await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let port = proxy.port(mode);
        for (what, bytes) in [
            ("unknown type 'z'", raw::message(b'z', b"")),
            (
                "a StartupMessage after login",
                raw::startup_packet(196608, &[("user", "agent")]),
            ),
            (
                "an SSLRequest after login",
                vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            ),
        ] {
            let mut r = Raw::open(port).await;
            r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
            r.send(&bytes).await;
            expect_error_and_close(&mut r, "08P01", &format!("{mode:?}: {what}")).await;
        }
    }
    // A cancel with the right pid and a wrong key: ignored, and nothing is said back.
    let mut r = Raw::open(proxy.port(PoolMode::Session)).await;
    r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    r.send(&raw::message(b'Q', b"SELECT 'finished', pg_sleep(1)\0"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port(PoolMode::Session)))
        .await
        .unwrap();
    let mut cancel = vec![0, 0, 0, 16];
    cancel.extend_from_slice(&80877102i32.to_be_bytes());
    cancel.extend_from_slice(&r.pid.to_be_bytes());
    cancel.extend_from_slice(&r.secret.wrapping_add(1).to_be_bytes());
    c.write_all(&cancel).await.unwrap();
    let mut answer = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "a cancel request gets no reply, right key or not");
    let replies = r.replies_until_ready(1).await.join(" ");
    assert!(
        replies.contains("finished") && !replies.contains("57014"),
        "{replies}"
    );
}
