//! A minimal hand-written protocol client, for what drivers will not do: garbage bytes,
//! protocol 3.2 startup, reading BackendKeyData.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub pid: i32,
    pub secret: i32,
    pub params: Vec<(String, String)>,
    /// Sent in the same write as the last authentication message (md5 answer or SCRAM
    /// client-final), without waiting for AuthenticationOk.
    pub behind_auth: Vec<u8>,
}

pub fn startup_packet(version: i32, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32(0);
    b.put_i32(version);
    for (k, v) in pairs {
        b.put_slice(k.as_bytes());
        b.put_u8(0);
        b.put_slice(v.as_bytes());
        b.put_u8(0);
    }
    b.put_u8(0);
    let len = b.len() as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.to_vec()
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The SQLSTATE in an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    let mut fields = body.split(|&b| b == 0);
    fields
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

impl Raw {
    pub async fn open(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            behind_auth: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one message; None on EOF or after 10 s.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some((tag, body));
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads one raw byte (the answer to SSLRequest).
    /// The value of a ParameterStatus the greeting reported.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub async fn recv_byte(&mut self) -> u8 {
        self.stream.read_u8().await.unwrap()
    }

    /// Starts up with `version`, logs in with SCRAM or md5, and reads up to ReadyForQuery.
    /// Returns every message tag seen before authentication requests, for negotiation tests.
    pub async fn login(
        &mut self,
        version: i32,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Vec<u8>, String> {
        self.login_with(version, user, password, db, &[]).await
    }

    /// `login` with more startup parameters; ParameterStatus values land in `params`.
    pub async fn login_with(
        &mut self,
        version: i32,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let mut pairs = vec![("user", user), ("database", db)];
        pairs.extend_from_slice(extra);
        self.send(&startup_packet(version, &pairs)).await;
        let mut seen = Vec::new();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.recv().await.ok_or("connection closed")?;
            seen.push(tag);
            match tag {
                b'R' => {
                    let kind = i32::from_be_bytes(body[..4].try_into().unwrap());
                    match kind {
                        0 => {}
                        5 => {
                            let salt: [u8; 4] = body[4..8].try_into().unwrap();
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            let mut b = hash.into_bytes();
                            b.push(0);
                            let mut m = message(b'p', &b);
                            m.append(&mut self.behind_auth);
                            self.send(&m).await;
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut b = b"SCRAM-SHA-256\0".to_vec();
                            b.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            b.extend_from_slice(s.message());
                            self.send(&message(b'p', &b)).await;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().unwrap();
                            s.update(&body[4..]).unwrap();
                            let mut m = message(b'p', s.message());
                            m.append(&mut self.behind_auth);
                            self.send(&m).await;
                        }
                        12 => scram
                            .as_mut()
                            .unwrap()
                            .finish(&body[4..])
                            .map_err(|e| e.to_string())?,
                        k => return Err(format!("unexpected auth request {k}")),
                    }
                }
                b'K' => {
                    self.pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                    self.secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                }
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                    self.params.push((k, v));
                }
                b'E' => return Err(error_code(&body)),
                b'Z' => return Ok(seen),
                _ => {}
            }
        }
    }

    /// Runs a simple query; returns its columns' names and type OIDs, or the SQLSTATE.
    pub async fn columns(&mut self, sql: &str) -> Result<Vec<(String, u32)>, String> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send(&message(b'Q', &b)).await;
        let (mut cols, mut err) = (Vec::new(), None);
        loop {
            let (tag, body) = self.recv().await.ok_or("connection closed")?;
            match tag {
                b'T' => cols = row_description(&body),
                b'E' => err = Some(error_code(&body)),
                b'Z' => return err.map_or(Ok(cols), Err),
                _ => {}
            }
        }
    }

    /// Runs a simple query; returns the first column of each row, or the SQLSTATE.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send(&message(b'Q', &b)).await;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let Some((tag, body)) = self.recv().await else {
                // A FATAL error ends the connection without ReadyForQuery.
                return Err(err.unwrap_or_else(|| "connection closed".into()));
            };
            match tag {
                b'D' => {
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    rows.push(if len < 0 {
                        "NULL".into()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                    });
                }
                b'E' => err = Some(error_code(&body)),
                b'Z' => return err.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

/// A RowDescription's (name, type OID) per field.
fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut rest = &body[2..];
    let mut out = Vec::new();
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        // table OID (4), column (2), then the type OID.
        let t = &rest[end + 1 + 6..];
        out.push((name, u32::from_be_bytes(t[..4].try_into().unwrap())));
        rest = &rest[end + 1 + 18..];
    }
    out
}

/// Extended-protocol messages, for tests that drive the protocol by hand.
pub mod ext {
    use super::message;

    fn cstr(v: &mut Vec<u8>, s: &str) {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }

    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0i16.to_be_bytes());
        message(b'P', &b)
    }

    /// Bind with text parameters (None = NULL), text results.
    pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        message(b'B', &b)
    }

    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        cstr(&mut b, name);
        message(b'D', &b)
    }

    pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&max_rows.to_be_bytes());
        message(b'E', &b)
    }

    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        cstr(&mut b, name);
        message(b'C', &b)
    }

    pub fn sync() -> Vec<u8> {
        message(b'S', &[])
    }

    pub fn flush() -> Vec<u8> {
        message(b'H', &[])
    }
}

/// A reply reduced to what tests compare: the tag, and for DataRow the first column,
/// for ErrorResponse the SQLSTATE, for CommandComplete the tag text.
pub fn summarize(tag: u8, body: &[u8]) -> String {
    match tag {
        b'D' => {
            let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
            if len < 0 {
                "D:NULL".into()
            } else {
                format!("D:{}", String::from_utf8_lossy(&body[6..6 + len as usize]))
            }
        }
        b'E' => format!("E:{}", error_code(body)),
        b'C' => format!("C:{}", String::from_utf8_lossy(&body[..body.len() - 1])),
        b'Z' => format!("Z:{}", body[0] as char),
        t => (t as char).to_string(),
    }
}

/// Reads replies from any reader up to and including the `n`th ReadyForQuery, summarized.
pub async fn read_replies<R: tokio::io::AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<String> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < n {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() <= len {
                break;
            }
            let tag = buf[0];
            buf.advance(5);
            let body = buf.split_to(len - 4);
            if tag == b'Z' {
                seen += 1;
            }
            if !matches!(tag, b'N' | b'S') {
                out.push(summarize(tag, &body));
            }
            if seen == n {
                return out;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(20), r.read_buf(&mut buf)).await;
        assert!(
            matches!(got, Ok(Ok(n)) if n > 0),
            "connection ended or stalled; got {out:?}"
        );
    }
    out
}

impl Raw {
    /// Reads replies up to and including the `n`th ReadyForQuery, summarized.
    pub async fn replies_until_ready(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let (tag, body) = self.recv().await.expect("reply");
            if tag == b'Z' {
                seen += 1;
            }
            if !matches!(tag, b'N' | b'S') {
                out.push(summarize(tag, &body));
            }
        }
        out
    }
}
