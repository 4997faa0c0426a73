//! String values with `${ENV_VAR}` substitution, done while deserializing so that an unset
//! variable is reported at the line of the value that names it.

use serde::{Deserialize, Deserializer, de::Error as _};
use std::fmt;
use std::ops::Deref;

/// A config string after `${NAME}` substitution. `$${` stands for a literal `${`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(String);

impl Text {
    pub fn new(s: impl Into<String>) -> Self {
        Text(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        substitute(&raw, |name| std::env::var(name).ok())
            .map(Text)
            .map_err(D::Error::custom)
    }
}

/// Replaces every `${NAME}` in `raw` with `lookup(NAME)`.
pub fn substitute(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !raw.contains("${") {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${` escapes a literal `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {raw:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::substitute;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables() {
        assert_eq!(
            substitute("a${PW}b${EMPTY}c", env).as_deref(),
            Ok("as3cretbc")
        );
        assert_eq!(substitute("plain", env).as_deref(), Ok("plain"));
        assert_eq!(substitute("$${PW}", env).as_deref(), Ok("${PW}"));
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert_eq!(
            substitute("${NOPE}", env),
            Err("environment variable NOPE is not set".into())
        );
        assert!(substitute("${PW", env).is_err());
        assert!(substitute("${A-B}", env).is_err());
    }
}
