//! Messages the proxy writes itself, appended to a `BytesMut` so several go out in one write.

use bytes::{BufMut, BytesMut};

/// Appends one message: tag, then a length word filled in after `body` wrote the body.
pub fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early on the client; drop any (they cannot be sent).
    // The usual text has none and is copied whole (a login writes a dozen of these).
    if s.as_bytes().contains(&0) {
        buf.extend(s.bytes().filter(|&b| b != 0));
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
    buf.put_u8(0);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse with the fields libpq shows (protocol 53.8).
pub fn error_response(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    text: &str,
    detail: Option<&str>,
) {
    message(buf, b'E', |b| {
        b.put_u8(b'S');
        cstr(b, severity.as_str());
        b.put_u8(b'V');
        cstr(b, severity.as_str());
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, text);
        if let Some(d) = detail {
            b.put_u8(b'D');
            cstr(b, d);
        }
        b.put_u8(0);
    });
}

pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword: how a token is asked for.
pub fn auth_cleartext(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// Tells a client asking for a newer minor version (or `_pq_.` options) what we speak: 3.0.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: i32, unsupported: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32(newest_minor);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            cstr(b, o);
        }
    });
}

/// A simple Query, as the proxy sends its own statements upstream.
pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| cstr(b, sql));
}

/// Parse of the unnamed statement, parameter types left to the server.
pub fn parse_unnamed(buf: &mut BytesMut, sql: &str) {
    message(buf, b'P', |b| {
        b.put_u8(0);
        cstr(b, sql);
        b.put_i16(0);
    });
}

/// Bind of the unnamed portal to the unnamed statement, every parameter as text.
pub fn bind_text(buf: &mut BytesMut, params: &[&str]) {
    let params: Vec<Option<&str>> = params.iter().copied().map(Some).collect();
    bind_nullable(buf, &params);
}

/// Execute of the unnamed portal, all rows.
pub fn execute_unnamed(buf: &mut BytesMut) {
    execute_rows(buf, 0);
}

/// Execute of the unnamed portal, at most `max_rows` rows (0: all).
pub fn execute_rows(buf: &mut BytesMut, max_rows: i32) {
    message(buf, b'E', |b| {
        b.put_u8(0);
        b.put_i32(max_rows);
    });
}

/// Bind of the unnamed portal, parameters as text or NULL.
pub fn bind_nullable(buf: &mut BytesMut, params: &[Option<&str>]) {
    message(buf, b'B', |b| {
        b.put_u8(0);
        b.put_u8(0);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(p) => {
                    b.put_i32(p.len() as i32);
                    b.put_slice(p.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i16(0);
    });
}

/// Describe of the unnamed portal.
pub fn describe_portal(buf: &mut BytesMut) {
    message(buf, b'D', |b| {
        b.put_u8(b'P');
        b.put_u8(0);
    });
}

/// CopyFail: ends a COPY FROM STDIN the proxy cannot feed.
pub fn copy_fail(buf: &mut BytesMut, reason: &str) {
    message(buf, b'f', |b| cstr(b, reason));
}

pub fn sync(buf: &mut BytesMut) {
    message(buf, b'S', |_| {});
}

/// SSLRequest (protocol 53.7): length 8, code 80877103.
pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(80_877_103);
}

pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

/// The upstream StartupMessage for protocol 3.0.
pub fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(crate::proto::startup::PROTOCOL_3_0);
    for (k, v) in params {
        cstr(buf, k);
        cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(crate::proto::startup::CANCEL_REQUEST);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

pub fn password(buf: &mut BytesMut, text: &str) {
    message(buf, b'p', |b| cstr(b, text));
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, b'p', |b| {
        cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'p', |b| b.put_slice(data));
}
