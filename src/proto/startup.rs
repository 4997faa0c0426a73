//! The startup packet (protocol 53.2.1 and 55.2): StartupMessage, SSLRequest, GSSENCRequest
//! and CancelRequest, plus the `options` parameter as PostgreSQL splits it (pg_split_opts in
//! src/backend/utils/init/postinit.c).

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
/// Longest startup packet PostgreSQL accepts (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Protocol 3.0, the newest this proxy speaks.
pub const PROTOCOL_3_0: i32 = 3 << 16;

#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: Vec<u8> },
    Startup(Startup),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Startup {
    pub minor: u16,
    pub user: String,
    pub database: String,
    /// Run-time parameters in the order sent, `options -c` settings included.
    pub params: Vec<(String, String)>,
    /// `_pq_.` protocol options, which this proxy does not support (listed back to the client).
    pub protocol_options: Vec<String>,
    pub replication: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    Length,
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    Protocol(u16, u16),
    #[error("invalid startup packet layout: {0}")]
    Layout(&'static str),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("invalid command-line argument in options: {0:?}")]
    Option(String),
}

/// Parses a startup packet body: everything after its Int32 length.
pub fn parse(body: &[u8]) -> Result<Request, StartupError> {
    let Some(code) = body.get(..4) else {
        return Err(StartupError::Length);
    };
    let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(Request::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(Request::GssEnc),
        CANCEL_REQUEST if rest.len() >= 8 && rest.len() <= 260 => Ok(Request::Cancel {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: rest[4..].to_vec(),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::Length),
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::Protocol(major, minor));
            }
            parse_params(rest, minor).map(Request::Startup)
        }
    }
}

fn parse_params(mut rest: &[u8], minor: u16) -> Result<Startup, StartupError> {
    let mut s = Startup {
        minor,
        ..Startup::default()
    };
    let mut database = None;
    loop {
        let name = cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = cstr(&mut rest)?;
        match name.as_str() {
            "user" => s.user = value,
            "database" => database = Some(value),
            "options" => s.params.extend(split_options(&value)?),
            "replication" => {
                s.replication = !matches!(value.as_str(), "false" | "off" | "no" | "0")
            }
            n if n.starts_with("_pq_.") => s.protocol_options.push(name),
            _ => s.params.push((name, value)),
        }
    }
    if !rest.is_empty() {
        return Err(StartupError::Layout("data after the final terminator"));
    }
    if s.user.is_empty() {
        return Err(StartupError::NoUser);
    }
    s.database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| s.user.clone());
    Ok(s)
}

fn cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Layout("missing terminator"))?;
    let s = std::str::from_utf8(&rest[..nul])
        .map_err(|_| StartupError::Layout("parameter is not valid UTF-8"))?;
    *rest = &rest[nul + 1..];
    Ok(s.to_owned())
}

/// Splits `options` on unescaped whitespace (a backslash escapes the next character) and
/// reads `-c name=value`, `-cname=value` and `--name=value` as run-time settings.
pub fn split_options(options: &str) -> Result<Vec<(String, String)>, StartupError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if c == '\\' {
            if let Some(next) = chars.next() {
                word.push(next);
            }
        } else {
            word.push(c);
        }
    }
    if in_word {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| StartupError::Option(w.clone()))?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_owned()
        } else {
            return Err(StartupError::Option(w));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| StartupError::Option(setting.clone()))?;
        if name.is_empty() {
            return Err(StartupError::Option(setting.clone()));
        }
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        for (k, v) in pairs {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_startup_with_options() {
        let p = packet(
            PROTOCOL_3_0,
            &[
                ("user", "bob"),
                ("application_name", "psql"),
                (
                    "options",
                    "-c search_path=a,b --statement-timeout=5s -cwork_mem=64kB",
                ),
            ],
        );
        let Request::Startup(s) = parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!(s.user, "bob");
        assert_eq!(s.database, "bob");
        assert_eq!(
            s.params,
            vec![
                ("application_name".into(), "psql".into()),
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64kB".into())
            ]
        );
    }

    #[test]
    fn escaped_spaces_stay_in_values() {
        assert_eq!(
            split_options(r"-c application_name=my\ agent").unwrap(),
            vec![("application_name".into(), "my agent".into())]
        );
        assert!(split_options("-x").is_err());
        assert!(split_options("-c").is_err());
    }

    #[test]
    fn special_requests_and_errors() {
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()), Ok(Request::Ssl));
        assert_eq!(parse(&GSSENC_REQUEST.to_be_bytes()), Ok(Request::GssEnc));
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&42i32.to_be_bytes());
        c.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse(&c),
            Ok(Request::Cancel {
                pid: 42,
                secret: vec![1, 2, 3, 4]
            })
        );
        assert_eq!(
            parse(&packet(2 << 16, &[("user", "a")])),
            Err(StartupError::Protocol(2, 0))
        );
        assert_eq!(
            parse(&packet(PROTOCOL_3_0, &[("database", "x")])),
            Err(StartupError::NoUser)
        );
        assert!(parse(&[0, 3, 0, 0, b'u', b's']).is_err());
        let Request::Startup(s) =
            parse(&packet((3 << 16) | 2, &[("user", "a"), ("_pq_.x", "1")])).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (s.minor, s.protocol_options),
            (2, vec!["_pq_.x".to_string()])
        );
    }
}
