//! The console's command language, PgBouncer's (doc/usage.md, "Admin console"): `SHOW x`,
//! `RELOAD`, `PAUSE [db]`, `RESUME [db]`, `DISABLE db`, `ENABLE db`, `KILL db`,
//! `KILL_CLIENT id`, `KILL_IDENTITY name`, `RECONNECT [db]`, `SHUTDOWN [WAIT_CLOSE]`. Words are case-insensitive,
//! a database may be quoted, one statement per query, a trailing `;` is allowed.

use crate::sql::lexer::{Lexer, Token};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// SHOW and the lowercased name of what to show.
    Show(String),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Disable(String),
    Enable(String),
    Kill(String),
    KillClient(u64),
    /// Closes every client of a token identity (an API key's name or a token subject).
    KillIdentity(String),
    Reconnect(Option<String>),
    Shutdown,
}

impl Command {
    /// Whether a stats user (`[admin] stats_users`) may run it: SHOW only.
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }
}

/// Why a text is not a command; worded for the psql user.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty query")]
    Empty,
    #[error("unknown command: {0} (try SHOW HELP)")]
    Unknown(String),
    #[error("{0} needs {1}")]
    Missing(&'static str, &'static str),
    #[error("unexpected text after {0}")]
    Trailing(&'static str),
    #[error("one command per query")]
    Several,
}

fn name(t: &Token<'_>) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::Quoted(q) => Some(q.replace("\"\"", "\"")),
        _ => None,
    }
}

pub fn parse(text: &str) -> Result<Command, ParseError> {
    let mut toks: Vec<Token<'_>> = Lexer::new(text).collect();
    while toks.last() == Some(&Token::Semicolon) {
        toks.pop();
    }
    if toks.contains(&Token::Semicolon) {
        return Err(ParseError::Several);
    }
    let mut it = toks.iter();
    let Some(first) = it.next() else {
        return Err(ParseError::Empty);
    };
    let verb = match first {
        Token::Word(w) => w.to_ascii_uppercase(),
        _ => return Err(ParseError::Unknown(text.trim().chars().take(40).collect())),
    };
    let arg = it.next();
    let rest = it.next();
    let one = |label: &'static str| -> Result<Option<String>, ParseError> {
        if rest.is_some() {
            return Err(ParseError::Trailing(label));
        }
        match arg {
            None => Ok(None),
            Some(t) => name(t)
                .map(Some)
                .ok_or(ParseError::Missing(label, "a database name")),
        }
    };
    let required = |label: &'static str| -> Result<String, ParseError> {
        one(label)?.ok_or(ParseError::Missing(label, "a database name"))
    };
    let none = |label: &'static str| -> Result<(), ParseError> {
        if arg.is_some() {
            Err(ParseError::Trailing(label))
        } else {
            Ok(())
        }
    };
    Ok(match verb.as_str() {
        "SHOW" => {
            let what = one("SHOW")?.ok_or(ParseError::Missing("SHOW", "what to show"))?;
            Command::Show(what)
        }
        "RELOAD" => none("RELOAD").map(|_| Command::Reload)?,
        "PAUSE" => Command::Pause(one("PAUSE")?),
        "RESUME" => Command::Resume(one("RESUME")?),
        "RECONNECT" => Command::Reconnect(one("RECONNECT")?),
        "DISABLE" => Command::Disable(required("DISABLE")?),
        "ENABLE" => Command::Enable(required("ENABLE")?),
        "KILL" => Command::Kill(required("KILL")?),
        "KILL_IDENTITY" => {
            if rest.is_some() {
                return Err(ParseError::Trailing("KILL_IDENTITY"));
            }
            // Identity names are case-sensitive and may hold '-': taken as written.
            let name = match arg {
                Some(Token::Word(w)) => Some((*w).to_owned()),
                Some(Token::Quoted(q)) => Some(q.replace("\"\"", "\"")),
                Some(Token::Str(s)) => Some(s.replace("''", "'")),
                _ => None,
            };
            Command::KillIdentity(
                name.ok_or(ParseError::Missing("KILL_IDENTITY", "an identity name"))?,
            )
        }
        "KILL_CLIENT" => {
            if rest.is_some() {
                return Err(ParseError::Trailing("KILL_CLIENT"));
            }
            let id = match arg {
                Some(Token::Number(n)) => n.parse().ok(),
                _ => None,
            };
            Command::KillClient(id.ok_or(ParseError::Missing("KILL_CLIENT", "a client id"))?)
        }
        "SHUTDOWN" => {
            if rest.is_some() {
                return Err(ParseError::Trailing("SHUTDOWN"));
            }
            match arg.and_then(name).as_deref() {
                None | Some("wait_close") => Command::Shutdown,
                Some(_) => return Err(ParseError::Trailing("SHUTDOWN")),
            }
        }
        _ => return Err(ParseError::Unknown(verb)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("show pools;"), Ok(Command::Show("pools".into())));
        assert_eq!(
            parse("SHOW STATS_TOTALS"),
            Ok(Command::Show("stats_totals".into()))
        );
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(
            parse("resume \"My Db\""),
            Ok(Command::Resume(Some("My Db".into())))
        );
        assert_eq!(parse("kill_client 42"), Ok(Command::KillClient(42)));
        assert_eq!(
            parse("KILL_IDENTITY 'batch-agent'"),
            Ok(Command::KillIdentity("batch-agent".into()))
        );
        assert_eq!(
            parse("kill_identity \"Bob\""),
            Ok(Command::KillIdentity("Bob".into()))
        );
        assert_eq!(
            parse("kill_identity"),
            Err(ParseError::Missing("KILL_IDENTITY", "an identity name"))
        );
        assert_eq!(parse("SHUTDOWN WAIT_CLOSE;"), Ok(Command::Shutdown));
        assert_eq!(parse("RELOAD"), Ok(Command::Reload));
        assert!(Command::Show("x".into()).read_only());
        assert!(!Command::Reload.read_only());
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse(" ; "), Err(ParseError::Empty));
        assert_eq!(parse("select 1"), Err(ParseError::Unknown("SELECT".into())));
        assert_eq!(
            parse("show"),
            Err(ParseError::Missing("SHOW", "what to show"))
        );
        assert_eq!(
            parse("kill"),
            Err(ParseError::Missing("KILL", "a database name"))
        );
        assert_eq!(
            parse("kill_client abc"),
            Err(ParseError::Missing("KILL_CLIENT", "a client id"))
        );
        assert_eq!(parse("reload now"), Err(ParseError::Trailing("RELOAD")));
        assert_eq!(parse("show pools; show stats"), Err(ParseError::Several));
        assert!(parse("'").is_err());
    }
}
