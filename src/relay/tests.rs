//! Table tests of the relay without PostgreSQL: a client and a server that are the test's
//! ends of unix socket pairs (the server from the fake connector), scripted byte for byte.
//! Each test says what the client sends, what the server answers, exactly what arrives on
//! each side, what the relay reports, and whether the server could serve someone else.

use super::*;
use crate::backend::fake::{pool_on, settings};
use crate::backend::pool::{DbLimit, Pool};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as Peer;
use std::time::Duration;

/// How long the relay may sit with nothing to do before a step counts it as done.
const QUIET: Duration = Duration::from_millis(10);
/// How long an expected reply may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(5);

struct Rig {
    relay: Relay,
    client: Stream,
    client_peer: Peer,
    server: Option<ServerConn>,
    /// Whether the server is attached: in transaction mode only from NeedServer to Release,
    /// as the session does it.
    attached: bool,
    /// The hand-over reset to send when the server is attached.
    reset: Option<&'static str>,
    server_peer: Peer,
    state: ClientState,
    events: Vec<Event>,
    _pool: Arc<Pool>,
}

fn peer(s: tokio::net::UnixStream) -> Peer {
    let p = s.into_std().unwrap();
    p.set_nonblocking(true).unwrap();
    p
}

impl Rig {
    async fn new(transaction_mode: bool) -> Rig {
        let (pool, fake) = pool_on(settings(1), DbLimit::new(0));
        let never = tokio::sync::Notify::new();
        let server = pool
            .checkout(std::pin::pin!(never.notified()))
            .await
            .unwrap();
        let server_peer = peer(fake.take_peer(server.pid).unwrap());
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        Rig {
            relay: Relay::new(transaction_mode, 100),
            client: Stream::Unix(a),
            client_peer: peer(b),
            server: Some(server),
            attached: !transaction_mode,
            reset: None,
            server_peer,
            state: ClientState::default(),
            events: Vec::new(),
            _pool: pool,
        }
    }

    /// Runs the relay until it reports an event (kept in `events`) or goes quiet. The server
    /// is attached on NeedServer (with the hand-over reset, if one is set) and let go on
    /// Release.
    async fn run(&mut self) {
        loop {
            let Rig {
                relay,
                client,
                server,
                state,
                attached,
                ..
            } = self;
            let mut srv = if *attached { server.as_mut() } else { None };
            let step =
                std::future::poll_fn(|cx| relay.poll_relay(cx, client, srv.as_deref_mut(), state));
            let Ok(ev) = tokio::time::timeout(QUIET, step).await else {
                return;
            };
            match ev {
                Event::NeedServer => {
                    self.attached = true;
                    self.relay.reset_server_side();
                    if let Some(sql) = self.reset {
                        self.relay.send_handover_reset(sql);
                    }
                }
                ev => {
                    if matches!(ev, Event::Release { .. }) {
                        self.attached = false;
                    }
                    self.events.push(ev);
                    return;
                }
            }
        }
    }

    async fn client_sends(&mut self, bytes: &[u8]) {
        self.client_peer.write_all(bytes).unwrap();
        self.run().await;
    }

    async fn server_sends(&mut self, bytes: &[u8]) {
        self.server_peer.write_all(bytes).unwrap();
        self.run().await;
    }

    /// Exactly `want` arrives at `side` (running the relay until it has), and nothing more.
    async fn expect(&mut self, to_server: bool, want: &[u8]) {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let p = if to_server {
                &mut self.server_peer
            } else {
                &mut self.client_peer
            };
            let mut buf = [0u8; 4096];
            match p.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if got.len() >= want.len() || tokio::time::Instant::now() > deadline {
                        break;
                    }
                    self.run().await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let side = if to_server { "server" } else { "client" };
        assert_eq!(show(&got), show(want), "bytes to the {side}");
    }

    async fn expect_server(&mut self, want: &[u8]) {
        self.expect(true, want).await;
    }

    async fn expect_client(&mut self, want: &[u8]) {
        self.expect(false, want).await;
    }

    /// The next event the relay reports (running it until it does), or None after PATIENCE.
    async fn event(&mut self) -> Option<&Event> {
        let seen = self.events.len();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.events.len() == seen && tokio::time::Instant::now() < deadline {
            self.run().await;
        }
        self.events.get(seen)
    }

    /// What arrives at one side until it ends with `end` (or PATIENCE runs out).
    async fn read_until(&mut self, to_server: bool, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        while !got.ends_with(end) && std::time::Instant::now() < deadline {
            let p = if to_server {
                &mut self.server_peer
            } else {
                &mut self.client_peer
            };
            let mut buf = [0u8; 1024];
            match p.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => self.run().await,
            }
        }
        got
    }

    /// The relay lets the server go, `clean` or not.
    async fn expect_release(&mut self, clean: bool) {
        match self.last_event().await {
            Some(Event::Release { clean: c, .. }) => assert_eq!(*c, clean, "clean release"),
            other => panic!("expected a release, got {other:?}"),
        }
    }

    /// The last event reported: the one just reported, or the next one.
    async fn last_event(&mut self) -> Option<&Event> {
        if self.events.is_empty() {
            return self.event().await;
        }
        self.events.last()
    }
}

/// Messages as (tag, body) pairs, so that a mismatch reads as protocol.
fn show(b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= b.len() {
        let len = u32::from_be_bytes([b[i + 1], b[i + 2], b[i + 3], b[i + 4]]) as usize;
        let end = (i + 1 + len).min(b.len());
        out.push(format!(
            "{}:{}",
            b[i] as char,
            String::from_utf8_lossy(&b[i + 5..end])
        ));
        i = end;
    }
    if i < b.len() {
        out.push(format!("partial:{:?}", &b[i..]));
    }
    out
}

fn m(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn z(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.push(0);
    v
}

fn query(sql: &str) -> Vec<u8> {
    m(b'Q', &z(sql.as_bytes()))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = z(name.as_bytes());
    b.extend(z(sql.as_bytes()));
    b.extend_from_slice(&0u16.to_be_bytes());
    m(b'P', &b)
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = z(portal.as_bytes());
    b.extend(z(stmt.as_bytes()));
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    m(b'B', &b)
}

fn execute() -> Vec<u8> {
    m(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    m(b'S', &[])
}

fn ready(status: u8) -> Vec<u8> {
    m(b'Z', &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    m(b'C', &z(tag.as_bytes()))
}

fn row(v: &str) -> Vec<u8> {
    let mut b = 1u16.to_be_bytes().to_vec();
    b.extend_from_slice(&(v.len() as u32).to_be_bytes());
    b.extend_from_slice(v.as_bytes());
    m(b'D', &b)
}

fn error(code: &str) -> Vec<u8> {
    let mut b = b"SERROR\0".to_vec();
    b.push(b'C');
    b.extend(z(code.as_bytes()));
    b.extend(b"Mfailed\0\0");
    m(b'E', &b)
}

fn parse_complete() -> Vec<u8> {
    m(b'1', &[])
}

fn bind_complete() -> Vec<u8> {
    m(b'2', &[])
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The server name the relay gives a client statement with this text (default search_path).
fn server_name(sql: &str) -> String {
    let mut tail = z(sql.as_bytes());
    tail.extend_from_slice(&0u16.to_be_bytes());
    Statement::new(&tail, b"").server_name.to_string()
}

#[tokio::test]
async fn a_simple_query_passes_both_ways_and_frees_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    r.expect_server(&query("SELECT 1")).await;
    let reply = cat(&[row("1"), complete("SELECT 1"), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: false
        })
    );
    assert!(r.relay.server_reusable());
}

#[tokio::test]
async fn a_transaction_block_keeps_the_server_until_it_ends() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("BEGIN")).await;
    r.server_sends(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    r.expect_client(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert!(!r.relay.server_reusable());
    r.client_sends(&query("COMMIT")).await;
    r.server_sends(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
    assert!(r.relay.server_reusable());
}

#[tokio::test]
async fn a_failed_transaction_block_keeps_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("BEGIN; SELECT 1/0")).await;
    let reply = cat(&[complete("BEGIN"), error("22012"), ready(b'E')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert!(r.events.is_empty());
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn session_mode_never_releases_the_server() {
    let mut r = Rig::new(false).await;
    r.client_sends(&query("SELECT 1")).await;
    r.server_sends(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    r.expect_client(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    assert!(r.events.is_empty(), "{:?}", r.events);
}

#[tokio::test]
async fn pipelined_queries_release_only_after_the_last_reply() {
    let mut r = Rig::new(true).await;
    let two = cat(&[query("SELECT 1"), query("SELECT 2")]);
    r.client_sends(&two).await;
    r.expect_server(&two).await;
    r.server_sends(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    assert!(r.events.is_empty(), "one reply is still owed");
    r.server_sends(&cat(&[row("2"), complete("SELECT 1"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
    r.expect_client(&cat(&[
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
        row("2"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
}

#[tokio::test]
async fn an_unnamed_extended_query_passes_unchanged() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[parse("", "SELECT 1"), bind("", ""), execute(), sync()]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
    let reply = cat(&[
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn extended_messages_before_a_sync_hold_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[parse("", "SELECT 1"), bind("", ""), execute()]))
        .await;
    r.server_sends(&cat(&[
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
    ]))
    .await;
    assert!(
        r.events.is_empty(),
        "an implicit transaction is open until Sync"
    );
    assert!(!r.relay.server_reusable());
    r.client_sends(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_named_statement_is_renamed_on_the_server_and_answered_from_it_later() {
    let mut r = Rig::new(true).await;
    let name = server_name("SELECT 1");
    r.client_sends(&cat(&[parse("s1", "SELECT 1"), sync()]))
        .await;
    r.expect_server(&cat(&[parse(&name, "SELECT 1"), sync()]))
        .await;
    r.server_sends(&cat(&[parse_complete(), ready(b'I')])).await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // Bound by its client name: the server sees the keyed name.
    r.client_sends(&cat(&[bind("", "s1"), execute(), sync()]))
        .await;
    r.expect_server(&cat(&[bind("", &name), execute(), sync()]))
        .await;
}

#[tokio::test]
async fn a_second_parse_of_the_same_text_is_answered_by_the_proxy() {
    let mut r = Rig::new(true).await;
    let name = server_name("SELECT 1");
    r.client_sends(&cat(&[parse("a", "SELECT 1"), sync()]))
        .await;
    r.server_sends(&cat(&[parse_complete(), ready(b'I')])).await;
    r.expect_server(&cat(&[parse(&name, "SELECT 1"), sync()]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // Same text under another client name: the server already has it.
    r.client_sends(&cat(&[parse("b", "SELECT 1"), sync()]))
        .await;
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
}

#[tokio::test]
async fn binding_an_unknown_statement_is_refused_by_the_proxy() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[bind("", "nope"), execute(), sync()]))
        .await;
    // Nothing reaches the server but the Sync that ends the pipeline.
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    let shown = show(&got);
    assert!(
        shown[0].starts_with("E:") && shown[0].contains("26000"),
        "{shown:?}"
    );
    assert_eq!(shown.last().map(String::as_str), Some("Z:I"));
}

#[tokio::test]
async fn an_error_mid_pipeline_skips_to_the_sync() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(),
        parse("", "SELECT 2"),
        bind("", ""),
        execute(),
        sync(),
    ]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
    let reply = cat(&[
        parse_complete(),
        bind_complete(),
        error("22012"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
    assert!(r.relay.server_reusable());
}

#[tokio::test]
async fn a_set_marks_the_session_for_a_settings_read_back() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SET search_path = x")).await;
    r.server_sends(&cat(&[complete("SET"), ready(b'I')])).await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: true
        })
    );
}

#[tokio::test]
async fn parameter_status_updates_what_the_client_was_told() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SET application_name = 'a'")).await;
    let mut status = z(b"application_name");
    status.extend(z(b"a"));
    let reply = cat(&[complete("SET"), m(b'S', &status), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert_eq!(r.state.params.reported.get("application_name"), Some("a"));
}

#[tokio::test]
async fn sql_prepare_retires_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("PREPARE p AS SELECT 1")).await;
    r.server_sends(&cat(&[complete("PREPARE"), ready(b'I')]))
        .await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: false,
            resync: false
        })
    );
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn statements_under_the_proxys_names_are_refused_in_sql() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("EXECUTE pgsluice_abc")).await;
    let got = r.read_until(false, &ready(b'I')).await;
    let shown = show(&got);
    assert!(shown[0].contains("42501"), "{shown:?}");
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn a_server_that_dies_mid_message_is_reported() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    let full = row("12345");
    r.server_peer.write_all(&full[..7]).unwrap();
    r.run().await;
    r.server_peer.shutdown(std::net::Shutdown::Both).unwrap();
    r.run().await;
    assert_eq!(r.last_event().await, Some(&Event::ServerGone));
    assert!(r.relay.server_mid_message());
}

#[tokio::test]
async fn a_client_that_leaves_is_reported() {
    let mut r = Rig::new(true).await;
    r.client_peer.shutdown(std::net::Shutdown::Both).unwrap();
    r.run().await;
    assert_eq!(r.last_event().await, Some(&Event::ClientGone));
}

#[tokio::test]
async fn terminate_is_reported_and_not_forwarded() {
    let mut r = Rig::new(true).await;
    r.client_sends(&m(b'X', &[])).await;
    assert_eq!(r.last_event().await, Some(&Event::ClientTerminated));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn an_unknown_message_type_is_a_protocol_violation() {
    let mut r = Rig::new(true).await;
    r.client_sends(&m(b'!', b"x")).await;
    assert!(matches!(r.last_event().await, Some(Event::Protocol(_))));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn an_oversized_small_message_is_refused_at_its_header() {
    let mut r = Rig::new(true).await;
    // A Sync claiming 20,000 bytes: PostgreSQL's limit for it is 10,000.
    let mut header = vec![b'S'];
    header.extend_from_slice(&20_000u32.to_be_bytes());
    r.client_sends(&header).await;
    assert!(matches!(r.last_event().await, Some(Event::Protocol(_))));
}

#[tokio::test]
async fn copy_in_ends_with_the_servers_reply() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("COPY t FROM STDIN")).await;
    let copy_in = m(b'G', &[0, 0, 0]);
    r.server_sends(&copy_in).await;
    r.expect_client(&copy_in).await;
    let data = cat(&[m(b'd', b"1\n"), m(b'c', &[])]);
    r.client_sends(&data).await;
    r.expect_server(&cat(&[query("COPY t FROM STDIN"), data.clone()]))
        .await;
    r.server_sends(&cat(&[complete("COPY 1"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn copy_data_with_no_copy_running_is_dropped() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[m(b'd', b"stray"), query("SELECT 1")]))
        .await;
    // PostgreSQL ignores them outside COPY: no server is taken for them.
    r.expect_server(&query("SELECT 1")).await;
}

#[tokio::test]
async fn a_failed_copy_with_syncs_inside_it_is_never_reused() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[
        parse("", "COPY t FROM STDIN"),
        bind("", ""),
        execute(),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[
        parse_complete(),
        bind_complete(),
        m(b'G', &[0, 0, 0]),
    ]))
    .await;
    // A Sync inside the COPY, then the COPY fails.
    r.client_sends(&cat(&[m(b'd', b"bad\n"), sync(), m(b'c', &[]), sync()]))
        .await;
    r.server_sends(&cat(&[error("22P02"), ready(b'I')])).await;
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn the_handover_reset_goes_ahead_of_the_clients_message_and_its_replies_are_dropped() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("SELECT 1")).await;
    let got = r.read_until(true, &query("SELECT 1")).await;
    let shown = show(&got);
    assert!(
        shown[0].starts_with("Q:RESET ALL; PREPARE pgsluice_w_"),
        "{shown:?}"
    );
    assert!(shown[1].starts_with("D:Spgsluice_w_"), "{shown:?}");
    assert!(shown[2].starts_with("C:Spgsluice_w_"), "{shown:?}");
    assert_eq!(shown[3], "H:");
    assert_eq!(shown[4], "Q:SELECT 1\0");
    // The reset's replies, the witness's, then the client's own.
    let own = cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        m(b't', &[0, 0]),
        m(b'T', &[0, 0]),
        m(b'3', &[]),
    ]);
    let mine = cat(&[row("1"), complete("SELECT 1"), ready(b'I')]);
    r.server_sends(&cat(&[own, mine.clone()])).await;
    r.expect_client(&mine).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_reset_that_did_not_finish_stops_the_clients_work() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("SELECT 'secret'")).await;
    // Canceled during the reset: its error, then the witness is missing.
    r.server_sends(&cat(&[error("57014"), ready(b'I'), error("26000")]))
        .await;
    assert_eq!(r.last_event().await, Some(&Event::HandoverFailed));
    r.expect_client(&[]).await;
}

#[tokio::test]
async fn a_reset_followed_by_a_refused_query_ends_the_witness_transaction_before_release() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("BEGIN; LISTEN jobs")).await;
    let own = cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        m(b't', &[0, 0]),
        m(b'T', &[0, 0]),
        m(b'3', &[]),
    ]);
    r.server_sends(&own).await;
    // The refusal reaches the client without waiting for anything more.
    let got = r.read_until(false, &ready(b'I')).await;
    let shown = show(&got);
    assert!(shown[0].contains("0A000"), "{shown:?}");
    assert!(
        r.events.is_empty(),
        "not let go with the witness's transaction open"
    );
    assert!(!r.relay.server_reusable());
    // The proxy ends that transaction with a Sync of its own; its ReadyForQuery is dropped.
    let to_server = r.read_until(true, &sync()).await;
    assert!(to_server.ends_with(&cat(&[m(b'H', &[]), sync()])));
    r.server_sends(&ready(b'I')).await;
    r.expect_release(true).await;
    r.expect_client(&[]).await;
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(z(name.as_bytes()));
    m(b'C', &b)
}

fn describe(target: u8, name: &str) -> Vec<u8> {
    let mut b = vec![target];
    b.extend(z(name.as_bytes()));
    m(b'D', &b)
}

/// A client statement `name` with `sql`, prepared on the server (ParseComplete answered).
async fn prepared(r: &mut Rig, name: &str, sql: &str) {
    r.client_sends(&cat(&[parse(name, sql), sync()])).await;
    r.server_sends(&cat(&[parse_complete(), ready(b'I')])).await;
    r.expect_server(&cat(&[parse(&server_name(sql), sql), sync()]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
}

#[tokio::test]
async fn listen_between_transactions_goes_to_the_notification_hub() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("LISTEN jobs")).await;
    assert!(matches!(r.last_event().await, Some(Event::Listen(_))));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn deallocate_of_a_client_statement_is_answered_by_the_proxy() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&query("DEALLOCATE s1")).await;
    r.expect_client(&cat(&[complete("DEALLOCATE"), ready(b'I')]))
        .await;
    // Gone for the client: binding it is refused, and only the Sync reaches a server.
    r.client_sends(&cat(&[bind("", "s1"), execute(), sync()]))
        .await;
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    assert!(show(&got)[0].contains("26000"), "{:?}", show(&got));
}

#[tokio::test]
async fn closing_a_statement_keeps_it_on_the_server_for_others() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&cat(&[close_statement("s1"), sync()])).await;
    // Only the Sync reaches the server; the CloseComplete is the proxy's.
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    r.expect_client(&cat(&[m(b'3', &[]), ready(b'I')])).await;
    assert_eq!(r.server.as_ref().map(|s| s.statements.len()), Some(1));
}

#[tokio::test]
async fn describe_of_a_statement_goes_to_its_server_name() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&cat(&[describe(b'S', "s1"), sync()])).await;
    r.expect_server(&cat(&[describe(b'S', &server_name("SELECT 1")), sync()]))
        .await;
    let reply = cat(&[m(b't', &[0, 0]), m(b'T', &[0, 0]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
}

#[tokio::test]
async fn describe_of_a_portal_passes_unchanged() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        describe(b'P', ""),
        execute(),
        sync(),
    ]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
}

#[tokio::test]
async fn the_unnamed_statement_of_someone_else_cannot_be_bound() {
    let mut r = Rig::new(true).await;
    // No Parse of the unnamed statement in this attachment.
    r.client_sends(&cat(&[bind("", ""), execute(), sync()]))
        .await;
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    assert!(show(&got)[0].contains("26000"), "{:?}", show(&got));
}

#[tokio::test]
async fn the_least_recently_used_statement_is_closed_to_make_room() {
    let mut r = Rig::new(true).await;
    r.relay.max_prepared = 1;
    prepared(&mut r, "a", "SELECT 1").await;
    r.client_sends(&cat(&[parse("b", "SELECT 2"), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 1")),
        parse(&server_name("SELECT 2"), "SELECT 2"),
        sync(),
    ]))
    .await;
    // The CloseComplete is the proxy's own: dropped.
    r.server_sends(&cat(&[m(b'3', &[]), parse_complete(), ready(b'I')]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
}

#[tokio::test]
async fn an_evicted_statement_is_prepared_again_when_used() {
    let mut r = Rig::new(true).await;
    r.relay.max_prepared = 1;
    prepared(&mut r, "a", "SELECT 1").await;
    r.client_sends(&cat(&[parse("b", "SELECT 2"), sync()]))
        .await;
    r.server_sends(&cat(&[m(b'3', &[]), parse_complete(), ready(b'I')]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 1")),
        parse(&server_name("SELECT 2"), "SELECT 2"),
        sync(),
    ]))
    .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // `a` again: SELECT 2 goes, SELECT 1 comes back, then the Bind.
    r.client_sends(&cat(&[bind("", "a"), execute(), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 2")),
        parse(&server_name("SELECT 1"), "SELECT 1"),
        bind("", &server_name("SELECT 1")),
        execute(),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[
        m(b'3', &[]),
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
    r.expect_client(&cat(&[
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
}

#[tokio::test]
async fn notices_and_empty_queries_pass_through() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("")).await;
    let notice = m(b'N', b"SWARNING\0C01000\0Mnote\0\0");
    let reply = cat(&[notice, m(b'I', &[]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn copy_out_passes_through() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("COPY t TO STDOUT")).await;
    let reply = cat(&[
        m(b'H', &[0, 0, 0]),
        m(b'd', b"1\n"),
        m(b'c', &[]),
        complete("COPY 1"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_function_call_is_answered_like_a_query() {
    let mut r = Rig::new(true).await;
    let call = m(b'F', &[0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
    r.client_sends(&call).await;
    r.expect_server(&call).await;
    let reply = cat(&[m(b'V', &[255, 255, 255, 255]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_fatal_error_from_the_server_is_delivered_before_it_goes() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT pg_sleep(10)")).await;
    let fatal = m(b'E', b"SFATAL\0C57P01\0Mterminating\0\0");
    r.server_peer.write_all(&fatal).unwrap();
    r.server_peer.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(r.event().await, Some(&Event::ServerGone));
    assert!(r.relay.server_sent_fatal());
    r.expect_client(&fatal).await;
}

#[tokio::test]
async fn bytes_after_the_last_ready_for_query_make_the_release_unclean() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    let fatal = m(b'E', b"SFATAL\0C57P01\0Mterminating\0\0");
    r.server_sends(&cat(&[complete("SELECT 0"), ready(b'I'), fatal]))
        .await;
    r.expect_release(false).await;
    r.expect_client(&cat(&[complete("SELECT 0"), ready(b'I')]))
        .await;
}

#[tokio::test]
async fn a_set_inside_a_transaction_is_read_back_after_it() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query(
        "BEGIN; SET LOCAL work_mem = '1MB'; SET statement_timeout = 5",
    ))
    .await;
    r.server_sends(&cat(&[
        complete("BEGIN"),
        complete("SET"),
        complete("SET"),
        ready(b'T'),
    ]))
    .await;
    r.client_sends(&query("COMMIT")).await;
    r.server_sends(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: true
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off_after_the_stall_timeout() {
    let mut r = Rig::new(true).await;
    r.relay.stall_timeout = Some(Duration::from_secs(2));
    r.client_sends(&query("SELECT repeat('x', 1000000)")).await;
    // Far more than the relay buffers, and more than the socket pair holds.
    let big = row(&"x".repeat(200_000));
    let mut sent = 0;
    while sent < 8 {
        match r.server_peer.write(&big) {
            Ok(_) => sent += 1,
            Err(_) => break,
        }
        r.run().await;
    }
    let start = tokio::time::Instant::now();
    assert_eq!(r.event().await, Some(&Event::ClientStalled));
    assert!(start.elapsed() <= Duration::from_secs(3));
}
