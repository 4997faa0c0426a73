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
    state: ClientSession,
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
            .checkout(std::pin::pin!(never.notified()), &Default::default())
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
            state: ClientSession::default(),
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
    error_response("ERROR", code, "failed")
}

/// A FATAL error, as a server sends before it closes (57P01: terminated, or shut down).
fn fatal(code: &str) -> Vec<u8> {
    error_response(
        "FATAL",
        code,
        "terminating connection due to administrator command",
    )
}

fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(z(severity.as_bytes()));
    b.push(b'C');
    b.extend(z(code.as_bytes()));
    b.push(b'M');
    b.extend(z(message.as_bytes()));
    b.push(0);
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

mod failures;
mod queries;
mod statements;
