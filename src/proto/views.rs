//! Read-only views of the few messages the proxy must look inside. Each parser takes a
//! complete, bounded body and returns `None` on anything malformed, never panicking.

/// A cursor over a message body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*head))
    }
    fn cstr(&mut self) -> Option<&'a str> {
        let nul = self.0.iter().position(|&b| b == 0)?;
        let s = std::str::from_utf8(&self.0[..nul]).ok()?;
        self.0 = &self.0[nul + 1..];
        Some(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// ParameterStatus ('S'): name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut b = Body(body);
    let pair = (b.cstr()?, b.cstr()?);
    b.done().then_some(pair)
}

/// BackendKeyData ('K') for protocol 3.0: process id and a 4-byte secret.
pub fn backend_key_data(body: &[u8]) -> Option<(i32, i32)> {
    let mut b = Body(body);
    let pair = (b.i32()?, b.i32()?);
    b.done().then_some(pair)
}

/// The fields of an ErrorResponse or NoticeResponse the proxy uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: &'a str,
    pub hint: &'a str,
    /// The cursor position in the statement text (1-based), as text.
    pub position: &'a str,
}

pub fn error_fields(body: &[u8]) -> Option<ErrorFields<'_>> {
    let mut b = Body(body);
    let mut f = ErrorFields::default();
    loop {
        let (&kind, rest) = b.0.split_first()?;
        b.0 = rest;
        if kind == 0 {
            return b.done().then_some(f);
        }
        let value = b.cstr()?;
        match kind {
            b'V' => f.severity = value,
            b'S' if f.severity.is_empty() => f.severity = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            b'D' => f.detail = value,
            b'H' => f.hint = value,
            b'P' => f.position = value,
            _ => {}
        }
    }
}

/// An Authentication request ('R') from a server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<&'a str>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

impl AuthRequest<'_> {
    /// The request's name in the protocol documentation, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AuthRequest::Ok => "AuthenticationOk",
            AuthRequest::Cleartext => "AuthenticationCleartextPassword",
            AuthRequest::Md5(_) => "AuthenticationMD5Password",
            AuthRequest::Sasl(_) => "AuthenticationSASL",
            AuthRequest::SaslContinue(_) => "AuthenticationSASLContinue",
            AuthRequest::SaslFinal(_) => "AuthenticationSASLFinal",
            AuthRequest::Other(_) => "an unsupported authentication request",
        }
    }
}

pub fn auth_request(body: &[u8]) -> Option<AuthRequest<'_>> {
    let mut b = Body(body);
    Some(match b.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => AuthRequest::Md5(b.rest().try_into().ok()?),
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = b.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m);
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(b.rest()),
        12 => AuthRequest::SaslFinal(b.rest()),
        n => AuthRequest::Other(n),
    })
}

/// SASLInitialResponse ('p' after AuthenticationSASL): mechanism and client-first-message.
pub fn sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let mut b = Body(body);
    let mechanism = b.cstr()?;
    let len = b.i32()?;
    let data = b.rest();
    (len >= 0 && len as usize == data.len()).then_some((mechanism, data))
}

/// A DataRow ('D') of two text columns: the first non-null, the second possibly NULL.
pub fn two_text_columns(body: &[u8]) -> Option<(&str, Option<&str>)> {
    let mut b = Body(body);
    let (&[h0, h1], rest) = b.0.split_first_chunk::<2>()?;
    b.0 = rest;
    if i16::from_be_bytes([h0, h1]) != 2 {
        return None;
    }
    let mut col = || -> Option<Option<&str>> {
        let len = b.i32()?;
        if len < 0 {
            return Some(None);
        }
        let (v, rest) = b.0.split_at_checked(len as usize)?;
        b.0 = rest;
        Some(Some(std::str::from_utf8(v).ok()?))
    };
    let first = col()??;
    let second = col()?;
    b.done().then_some((first, second))
}

/// A column of a RowDescription ('T'): its name and type OID.
#[derive(Debug, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: u32,
}

/// RowDescription ('T'): the columns, or None when malformed.
pub fn row_description(body: &[u8]) -> Option<Vec<Column<'_>>> {
    let mut b = Body(body);
    let (&count, rest) = b.0.split_first_chunk::<2>()?;
    b.0 = rest;
    let count = i16::from_be_bytes(count);
    // Each column takes at least 19 bytes: a bound before allocating.
    if count < 0 || count as usize * 19 > b.0.len() {
        return None;
    }
    let mut cols = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = b.cstr()?;
        let (_table, rest) = b.0.split_at_checked(6)?;
        b.0 = rest;
        let type_oid = b.i32()? as u32;
        let (_rest_of_column, rest) = b.0.split_at_checked(8)?;
        b.0 = rest;
        cols.push(Column { name, type_oid });
    }
    b.done().then_some(cols)
}

/// The fields of a DataRow ('D') in order (None: SQL NULL), or None when malformed.
pub fn data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut b = Body(body);
    let (&count, rest) = b.0.split_first_chunk::<2>()?;
    b.0 = rest;
    let count = i16::from_be_bytes(count);
    if count < 0 || count as usize * 4 > b.0.len() {
        return None;
    }
    let mut fields = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = b.i32()?;
        if len < 0 {
            fields.push(None);
            continue;
        }
        let (v, rest) = b.0.split_at_checked(len as usize)?;
        b.0 = rest;
        fields.push(Some(v));
    }
    b.done().then_some(fields)
}

/// CommandComplete ('C'): the command tag.
pub fn command_tag(body: &[u8]) -> Option<&str> {
    let mut b = Body(body);
    let tag = b.cstr()?;
    b.done().then_some(tag)
}

/// PasswordMessage ('p'): the text up to its terminator.
pub fn password(body: &[u8]) -> Option<&[u8]> {
    let (last, text) = body.split_last()?;
    (*last == 0 && !text.contains(&0)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::emit;
    use bytes::BytesMut;

    #[test]
    fn row_descriptions_and_data_rows() {
        let mut rd = vec![0, 2];
        for (name, oid) in [("id", 23u32), ("note", 25)] {
            rd.extend_from_slice(name.as_bytes());
            rd.push(0);
            rd.extend_from_slice(&[0; 6]);
            rd.extend_from_slice(&oid.to_be_bytes());
            rd.extend_from_slice(&[0; 8]);
        }
        let cols = row_description(&rd).unwrap();
        assert_eq!(
            cols[1],
            Column {
                name: "note",
                type_oid: 25
            }
        );
        assert_eq!(row_description(&rd[..rd.len() - 1]), None);
        // A count the body cannot hold is refused before anything is allocated.
        assert_eq!(row_description(&[0x7f, 0xff, b'a', 0]), None);
        let dr = [0, 2, 0, 0, 0, 1, b'7', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row(&dr), Some(vec![Some(&b"7"[..]), None]));
        assert_eq!(data_row(&dr[..6]), None);
        assert_eq!(command_tag(b"SELECT 3\0"), Some("SELECT 3"));
        assert_eq!(command_tag(b"SELECT 3"), None);
    }

    #[test]
    fn reads_what_emit_writes() {
        let mut b = BytesMut::new();
        emit::error_response(&mut b, emit::Severity::Fatal, "28P01", "nope", Some("d"));
        let f = error_fields(&b[5..]).unwrap();
        assert_eq!((f.severity, f.code, f.message), ("FATAL", "28P01", "nope"));
        let mut b = BytesMut::new();
        emit::parameter_status(&mut b, "TimeZone", "UTC");
        assert_eq!(parameter_status(&b[5..]), Some(("TimeZone", "UTC")));
        let mut b = BytesMut::new();
        emit::auth_sasl(&mut b, &["SCRAM-SHA-256"]);
        assert_eq!(
            auth_request(&b[5..]),
            Some(AuthRequest::Sasl(vec!["SCRAM-SHA-256"]))
        );
        let mut b = BytesMut::new();
        emit::sasl_initial_response(&mut b, "SCRAM-SHA-256", b"n,,n=,r=x");
        assert_eq!(
            sasl_initial_response(&b[5..]),
            Some(("SCRAM-SHA-256", &b"n,,n=,r=x"[..]))
        );
    }

    #[test]
    fn malformed_bodies_are_none() {
        assert_eq!(parameter_status(b"a\0b"), None);
        assert_eq!(parameter_status(b"a\0b\0extra"), None);
        assert_eq!(backend_key_data(&[0; 7]), None);
        assert_eq!(error_fields(b"Sx"), None);
        assert_eq!(auth_request(&[0, 0]), None);
        assert_eq!(auth_request(&[0, 0, 0, 5, 1]), None);
        assert_eq!(sasl_initial_response(b"M\0\0\0\0\x09abc"), None);
        assert_eq!(password(b"abc"), None);
    }
}
