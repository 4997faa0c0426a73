//! A tokenizer for PostgreSQL SQL text following the lexical rules of src/backend/parser/scan.l:
//! `--` and nested `/* */` comments, '' strings with E'' backslash escapes, $tag$ dollar
//! quotes, "" quoted identifiers. It never panics on any input; unterminated constructs end
//! at the end of the text.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier, as written.
    Word(&'a str),
    /// A quoted identifier's text (without quotes; `""` left doubled).
    Quoted(&'a str),
    /// A string constant's raw text between its quotes.
    Str(&'a str),
    Number(&'a str),
    Punct(char),
    /// `;` between statements.
    Semicolon,
}

pub struct Lexer<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(s: &'a str) -> Self {
        Lexer { s, i: 0 }
    }

    fn peek(&self, at: usize) -> Option<u8> {
        self.s.as_bytes().get(at).copied()
    }

    /// Skips whitespace and comments.
    fn skip_blank(&mut self) {
        let b = self.s.as_bytes();
        loop {
            while self.i < b.len() && b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            if b[self.i..].starts_with(b"--") {
                while self.i < b.len() && b[self.i] != b'\n' {
                    self.i += 1;
                }
            } else if b[self.i..].starts_with(b"/*") {
                let mut depth = 0usize;
                while self.i < b.len() {
                    if b[self.i..].starts_with(b"/*") {
                        depth += 1;
                        self.i += 2;
                    } else if b[self.i..].starts_with(b"*/") {
                        depth -= 1;
                        self.i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.i += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Text from `start` to the closing `quote`, where a doubled quote (and, if
    /// `backslash`, a backslash) escapes. Leaves `i` after the closing quote.
    fn quoted(&mut self, start: usize, quote: u8, backslash: bool) -> &'a str {
        let b = self.s.as_bytes();
        let mut j = start;
        while j < b.len() {
            if backslash && b[j] == b'\\' {
                j += 2;
            } else if b[j] == quote {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    self.i = j + 1;
                    return self.s.get(start..j).unwrap_or("");
                }
            } else {
                j += 1;
            }
        }
        self.i = b.len();
        self.s.get(start..).unwrap_or("")
    }

    fn dollar_quoted(&mut self) -> Option<Token<'a>> {
        let b = self.s.as_bytes();
        let tag_end =
            (self.i + 1..b.len()).find(|&j| !(b[j].is_ascii_alphanumeric() || b[j] == b'_'))?;
        if b[tag_end] != b'$' || b.get(self.i + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let tag = &self.s[self.i..=tag_end];
        let body = tag_end + 1;
        let end = self.s[body..].find(tag).map_or(b.len(), |k| body + k);
        self.i = (end + tag.len()).min(b.len());
        Some(Token::Str(self.s.get(body..end).unwrap_or("")))
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_blank();
        let b = self.s.as_bytes();
        let c = *b.get(self.i)?;
        let start = self.i;
        if c == b'\'' {
            return Some(Token::Str(self.quoted(start + 1, b'\'', false)));
        }
        if (c == b'e' || c == b'E') && self.peek(start + 1) == Some(b'\'') {
            return Some(Token::Str(self.quoted(start + 2, b'\'', true)));
        }
        if c == b'"' {
            return Some(Token::Quoted(self.quoted(start + 1, b'"', false)));
        }
        if c == b'$'
            && let Some(t) = self.dollar_quoted()
        {
            return Some(t);
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let mut j = start;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$' || b[j] >= 0x80)
            {
                j += 1;
            }
            self.i = j;
            return Some(Token::Word(self.s.get(start..j).unwrap_or("")));
        }
        if c.is_ascii_digit() {
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                j += 1;
            }
            self.i = j;
            return Some(Token::Number(self.s.get(start..j).unwrap_or("")));
        }
        // Any other character (UTF-8 aware, so slicing stays on boundaries).
        let ch = self.s[start..].chars().next()?;
        self.i = start + ch.len_utf8();
        Some(if ch == ';' {
            Token::Semicolon
        } else {
            Token::Punct(ch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Token<'_>> {
        Lexer::new(s).collect()
    }

    #[test]
    fn literals_comments_and_quotes() {
        assert_eq!(
            toks("SET x = 'a;b' -- c;\n; /* d /* e; */ */ E'f\\'g' $q$h;$q$ \"I;d\""),
            vec![
                Token::Word("SET"),
                Token::Word("x"),
                Token::Punct('='),
                Token::Str("a;b"),
                Token::Semicolon,
                Token::Str("f\\'g"),
                Token::Str("h;"),
                Token::Quoted("I;d"),
            ]
        );
    }

    #[test]
    fn never_panics_on_broken_text() {
        for s in [
            "'", "E'\\", "$a$", "$", "/*", "/* /*", "\"", "-", "é;ß", "$1", "1.5e3x",
        ] {
            let _ = toks(s);
        }
    }
}
