//! Which session settings a statement text may change: `SET [SESSION] name ...`, `RESET name`,
//! `RESET ALL`, the special forms (`SET ROLE`, `SET TIME ZONE`, `SET SCHEMA`, `SET NAMES`,
//! `SET SESSION AUTHORIZATION`, `SET SESSION CHARACTERISTICS AS TRANSACTION`) and
//! `set_config('name', ...)` calls. Transaction mode uses it to learn which settings a client
//! owns; the values themselves are read back from the server, so rollbacks and `SET LOCAL`
//! come out right without modelling them.

use super::lexer::{Lexer, Token};

/// What a statement text touches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Setting names (lowercase), custom ones (`app.tenant`) included.
    pub names: Vec<String>,
    /// A SET/RESET/DISCARD or set_config was seen at all.
    pub any: bool,
    /// A LISTEN statement (its notifications would arrive on a server the client has left).
    pub listen: bool,
}

/// Which of the words the relay looks for a text contains anywhere, found in one pass over
/// its bytes: most statements contain none, and then the text is never tokenized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    /// "set": SET, RESET, set_config.
    pub set: bool,
    /// "listen": LISTEN, UNLISTEN.
    pub listen: bool,
    pub deallocate: bool,
    /// "pgsluice_": the prefix of the proxy's server-side statement names.
    pub reserved: bool,
}

// Three bytes lowercased by `| 0x20` (which maps no other byte onto a lowercase letter),
// compared as one integer; the longer words are checked whole only where their first three
// letters are.
const fn word3(w: &[u8; 3]) -> u32 {
    w[0] as u32 | (w[1] as u32) << 8 | (w[2] as u32) << 16
}
const SET: u32 = word3(b"set");
const LIS: u32 = word3(b"lis");
const DEA: u32 = word3(b"dea");
const PGS: u32 = word3(b"pgs");
const DIS: u32 = word3(b"dis");

impl Mentions {
    pub fn of(text: &[u8]) -> Mentions {
        let mut m = Mentions::default();
        // This runs on every statement. Most positions are ruled out by their first two
        // bytes (the words start "se", "li", "de", "pg", "di"): eight positions at a time
        // while nine bytes follow, then one table lookup each.
        let mut i = 0;
        while i + 9 <= text.len() {
            let mut hits = pair_hits(&text[i..i + 9]);
            while hits != 0 {
                m.look_at(text, i + (hits.trailing_zeros() / 8) as usize);
                hits &= hits - 1;
            }
            i += 8;
        }
        for at in i..text.len() {
            m.look_at(text, at);
        }
        m
    }

    /// Notes the word that starts at `i`, if any.
    fn look_at(&mut self, text: &[u8], i: usize) {
        let Some(&[a, b, c]) = text.get(i..i + 3) else {
            return;
        };
        if PAIR_FIRST[usize::from(a)] & PAIR_SECOND[usize::from(b)] == 0 {
            return;
        }
        let rest = |word: &[u8]| {
            text.get(i..i + word.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(word))
        };
        match (u32::from(a) | u32::from(b) << 8 | u32::from(c) << 16) | 0x20_2020 {
            SET if set_may_count(text, i) => self.set = true,
            LIS if rest(b"listen") => self.listen = true,
            DEA if rest(b"deallocate") => self.deallocate = true,
            PGS if rest(b"pgsluice_") => self.reserved = true,
            // DISCARD changes settings too (scan notes it): counted with SET.
            DIS if rest(b"discard") && may_start_statement(text, i) => self.set = true,
            _ => {}
        }
    }

    /// Every statement that may change a session setting or LISTEN contains one of these.
    pub fn may_touch(self) -> bool {
        self.set || self.listen
    }
}

/// Which words may start with a byte (bit per word: set, listen, deallocate, pgsluice_,
/// discard), and which may have it second; a position is looked at only where they meet.
const PAIR_FIRST: [u8; 256] = pair_table(&[(b's', 1), (b'l', 2), (b'd', 4 | 16), (b'p', 8)]);
const PAIR_SECOND: [u8; 256] = pair_table(&[(b'e', 1 | 4), (b'i', 2 | 16), (b'g', 8)]);

/// A bit (0x80 of its byte) for each of the first eight positions of `nine` where a word's
/// first two letters may stand; false hits are possible (the exact check follows), misses
/// are not. SWAR: each `eq` finds the zero bytes of a word XORed with a repeated letter.
fn pair_hits(nine: &[u8]) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let load = |s: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[..8]);
        u64::from_le_bytes(w) | 0x2020_2020_2020_2020
    };
    let (a, b) = (load(nine), load(&nine[1..]));
    let eq = |w: u64, c: u8| {
        let v = w ^ (ONES * u64::from(c));
        v.wrapping_sub(ONES) & !v & HIGH
    };
    let (d, e, i) = (eq(a, b'd'), eq(b, b'e'), eq(b, b'i'));
    (eq(a, b's') & e) | (eq(a, b'l') & i) | (d & (e | i)) | (eq(a, b'p') & eq(b, b'g'))
}

const fn pair_table(letters: &[(u8, u8)]) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < letters.len() {
        let (c, bits) = letters[i];
        t[c as usize] |= bits;
        t[c.to_ascii_uppercase() as usize] |= bits;
        i += 1;
    }
    t
}

/// Whether the "set" at `i` may be one [`scan`] acts on: `set_config` anywhere, or SET or
/// RESET where a statement may start. `UPDATE t SET ...` (three a transaction in pgbench's
/// tpcb-like) then costs no tokenizing.
fn set_may_count(text: &[u8], i: usize) -> bool {
    if text
        .get(i + 3..i + 10)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"_config"))
    {
        return true;
    }
    let word = match i.checked_sub(2) {
        Some(re) if text[re..i].eq_ignore_ascii_case(b"re") => re,
        _ => i,
    };
    may_start_statement(text, word)
}

/// False only where the word at `at` surely follows another token of its statement (or is
/// the tail of a longer word): the byte before it, back over spaces and tabs, is one that
/// ends a word, a number, a quoted name or a dollar quote as [`Lexer`] reads them. No
/// comment ends so (a newline, which may end a `--` comment, stops the walk back), nor
/// does `;`.
fn may_start_statement(text: &[u8], at: usize) -> bool {
    match text[..at].iter().rev().find(|&&b| b != b' ' && b != b'\t') {
        None => true,
        Some(&b) => !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'"') || b >= 0x80),
    }
}

/// Whether a text that names "pgsluice_" could address prepared statements with it: it has
/// the word PREPARE, EXECUTE or DEALLOCATE (as a keyword, not inside a name or a string).
pub fn addresses_statements(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    Lexer::new(&text).any(|t| {
        matches!(t, Token::Word(w) if ["prepare", "execute", "deallocate"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k)))
    })
}

/// Cheap filter: every statement of interest contains "set" (SET, RESET, set_config) or
/// "listen".
pub fn may_touch(text: &[u8]) -> bool {
    Mentions::of(text).may_touch()
}

fn word(t: &Token<'_>) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::Quoted(q) => Some(q.to_string()),
        _ => None,
    }
}

/// Reads a possibly qualified name (`a.b`) starting at `first`.
fn qualified<'a>(first: String, it: &mut std::iter::Peekable<Lexer<'a>>) -> String {
    let mut name = first;
    while it.peek() == Some(&Token::Punct('.')) {
        it.next();
        match it.next().as_ref().and_then(word) {
            Some(part) => {
                name.push('.');
                name.push_str(&part);
            }
            None => break,
        }
    }
    name
}

pub fn scan(text: &str) -> Touched {
    let mut out = Touched::default();
    let mut it = Lexer::new(text).peekable();
    let mut at_start = true;
    let push = |out: &mut Touched, n: &str| {
        out.any = true;
        if !out.names.iter().any(|x| x == n) {
            out.names.push(n.to_owned());
        }
    };
    while let Some(tok) = it.next() {
        if tok == Token::Semicolon {
            at_start = true;
            continue;
        }
        let starts = std::mem::replace(&mut at_start, false);
        // A quoted name is never a keyword in PostgreSQL (`"set" x` is a syntax error).
        let keyword = matches!(tok, Token::Word(_));
        let Some(w) = word(&tok) else { continue };
        if w == "set_config" && it.peek() == Some(&Token::Punct('(')) {
            it.next();
            if let Some(Token::Str(name)) = it.next() {
                push(&mut out, &name.to_ascii_lowercase());
            } else {
                out.any = true;
            }
            continue;
        }
        if !starts || !keyword {
            continue;
        }
        match w.as_str() {
            "set" => {
                let Some(mut next) = it.next().as_ref().and_then(word) else {
                    continue;
                };
                if next == "local" {
                    out.any = true; // ends with the transaction; nothing to keep
                    continue;
                }
                if next == "session" {
                    match it.next().as_ref().and_then(word) {
                        Some(n) if n == "authorization" => {
                            push(&mut out, "session_authorization");
                            continue;
                        }
                        Some(n) if n == "characteristics" => {
                            for g in [
                                "default_transaction_isolation",
                                "default_transaction_read_only",
                                "default_transaction_deferrable",
                            ] {
                                push(&mut out, g);
                            }
                            continue;
                        }
                        Some(n) => next = n,
                        None => continue,
                    }
                }
                let name = match next.as_str() {
                    "time" => "timezone".to_owned(),
                    "schema" => "search_path".to_owned(),
                    "names" => "client_encoding".to_owned(),
                    "transaction" => {
                        out.any = true;
                        continue;
                    }
                    _ => qualified(next, &mut it),
                };
                push(&mut out, &name);
            }
            "reset" => match it.next().as_ref().and_then(word) {
                Some(n) if n == "all" => out.any = true,
                Some(n) if n == "session" => push(&mut out, "session_authorization"),
                Some(n) => {
                    let name = qualified(n, &mut it);
                    push(&mut out, &name);
                }
                None => {}
            },
            "discard" => out.any = true,
            "listen" => out.listen = true,
            _ => {}
        }
    }
    out
}

/// The statement's first keyword, lowercased (None: it starts with something else, such as
/// a parenthesis or a quoted name).
pub fn first_keyword(text: &str) -> Option<String> {
    match Lexer::new(text).next()? {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        _ => None,
    }
}

/// `DEALLOCATE [PREPARE] name` as the whole text: the name (protocol-level statements are
/// the client's own in transaction mode, so the proxy answers it). `None` for anything else,
/// `DEALLOCATE ALL` included (the server runs that one).
pub fn deallocate_name(text: &str) -> Option<String> {
    let mut it = Lexer::new(text).filter(|t| *t != Token::Semicolon);
    if it.next().as_ref().and_then(word)? != "deallocate" {
        return None;
    }
    let mut name = it.next().as_ref().and_then(word)?;
    if name == "prepare" {
        name = it.next().as_ref().and_then(word)?;
    }
    (name != "all" && it.next().is_none()).then_some(name)
}

/// Whether `text` can be a LISTEN or UNLISTEN statement: it starts (after blanks) with one,
/// or with a comment. Checked on every transaction's first Query, so it reads a few bytes.
pub fn may_be_listen(text: &[u8]) -> bool {
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|i| matches!(text[i] | 0x20, b'l' | b'u' | b'-' | b'/'))
}

/// A LISTEN or UNLISTEN that is the whole text.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenCmd {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

pub fn listen_statement(text: &str) -> Option<ListenCmd> {
    let mut it = Lexer::new(text).filter(|t| *t != Token::Semicolon);
    let verb = it.next().as_ref().and_then(word)?;
    let cmd = match (verb.as_str(), it.next()) {
        ("unlisten", Some(Token::Punct('*'))) => ListenCmd::UnlistenAll,
        ("listen", Some(t)) => ListenCmd::Listen(word(&t)?),
        ("unlisten", Some(t)) => ListenCmd::Unlisten(word(&t)?),
        _ => return None,
    };
    it.next().is_none().then_some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_commands_found_as_words_only() {
        assert!(addresses_statements(b"deallocate pgsluice_ab; select 1"));
        assert!(addresses_statements(b"EXECUTE pgsluice_ab(1)"));
        assert!(!addresses_statements(
            b"SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsluice_%'"
        ));
        assert!(!addresses_statements(b"SELECT 'execute pgsluice_x'"));
    }

    fn names(s: &str) -> Vec<String> {
        scan(s).names
    }

    #[test]
    fn finds_session_settings() {
        assert_eq!(names("SET search_path TO a, b"), vec!["search_path"]);
        assert_eq!(
            names("set SESSION statement_timeout = '5s'; select 1"),
            vec!["statement_timeout"]
        );
        assert_eq!(
            names("RESET work_mem; SET ROLE admin"),
            vec!["work_mem", "role"]
        );
        assert_eq!(names("SET TIME ZONE 'UTC'"), vec!["timezone"]);
        assert_eq!(names("SET app.tenant = 'x'"), vec!["app.tenant"]);
        assert_eq!(
            names("select set_config('Request.Claims', '{}', false)"),
            vec!["request.claims"]
        );
        assert_eq!(
            names("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            vec![
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable"
            ]
        );
    }

    #[test]
    fn listen_statements() {
        assert_eq!(
            listen_statement("LISTEN Jobs;"),
            Some(ListenCmd::Listen("jobs".into()))
        );
        assert_eq!(
            listen_statement("listen \"Jobs\""),
            Some(ListenCmd::Listen("Jobs".into()))
        );
        assert_eq!(listen_statement("UNLISTEN *"), Some(ListenCmd::UnlistenAll));
        assert_eq!(
            listen_statement("unlisten a"),
            Some(ListenCmd::Unlisten("a".into()))
        );
        assert_eq!(listen_statement("LISTEN a; SELECT 1"), None);
        assert_eq!(listen_statement("NOTIFY a"), None);
    }

    #[test]
    fn deallocate_of_one_name() {
        assert_eq!(deallocate_name("DEALLOCATE s1"), Some("s1".into()));
        assert_eq!(
            deallocate_name("deallocate prepare \"S 2\";"),
            Some("S 2".into())
        );
        assert_eq!(deallocate_name("DEALLOCATE ALL"), None);
        assert_eq!(deallocate_name("DEALLOCATE s1; SELECT 1"), None);
        assert_eq!(deallocate_name("SELECT 1"), None);
    }

    #[test]
    fn ignores_what_is_not_a_session_setting() {
        assert_eq!(
            scan("SELECT 'SET x = 1' /* SET y */").names,
            Vec::<String>::new()
        );
        assert!(
            !scan("UPDATE t SET a = 1").any,
            "SET inside UPDATE is not a statement start"
        );
        assert!(scan("SET LOCAL x = 1").names.is_empty());
        assert!(!scan("\"set\" x = 1").any, "a quoted name is no keyword");
        assert!(scan("RESET ALL").any);
        assert!(scan("select 1; LISTEN jobs").listen);
        assert!(!scan("select 'LISTEN x'").listen);
        assert!(!may_touch(b"SELECT 1"));
    }

    #[test]
    fn set_counts_only_where_a_statement_may_start() {
        for text in [
            "SET x = 1",
            "  reset x",
            "select 1;SET x = 1",
            "select 1; \t RESET ALL",
            "/* c */SET x = 1",
            "-- note\nSET x = 1",
            "select 'a'\nset x = 1",
            "UPDATE t SET a = 1; SET b = 2",
            "select pg_catalog.set_config('a', 'b', false)",
            "select a.SET_CONFIG('a', 'b', false)",
            "(SET x = 1)",
        ] {
            assert!(may_touch(text.as_bytes()), "{text:?}");
        }
        for text in [
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7",
            "update \"T\" set a = 1",
            "select offset, asset, xreset from settings",
            "insert into t values (1) on conflict (id) do update set a = 2",
            "select 1 set",
        ] {
            assert!(!may_touch(text.as_bytes()), "{text:?}");
            assert!(!scan(text).any, "{text:?}");
        }
    }

    #[test]
    fn the_filter_passes_everything_scan_acts_on() {
        // Texts made of pieces that stress the filter's edges, every order: whenever `scan`
        // notes a setting or a LISTEN, the filter let the text through.
        let pieces = [
            "\"set\" a",
            "\"reset\"",
            "discard all",
            "DISCARD",
            "SET x = 1",
            "reset y",
            "set_config('a','b',false)",
            "UPDATE t",
            " SET a = 1",
            ";",
            "\n",
            "\t",
            " ",
            "/* c */",
            "-- c\n",
            "'s'",
            "\"q\"",
            "$$d$$",
            "1",
            "é",
            "re",
            "x",
            "(",
            ")",
            "LISTEN z",
            ".",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..50_000 {
            let text = joined(&mut seed, 6, &pieces).concat();
            let t = scan(&text);
            if t.any || t.listen {
                assert!(may_touch(text.as_bytes()), "{text:?} -> {t:?}");
            }
        }
    }

    /// One to `most` pieces picked by a xorshift generator.
    fn joined<'a, T: ?Sized>(seed: &mut u64, most: u64, pieces: &[&'a T]) -> Vec<&'a T> {
        let mut picked = Vec::new();
        for _ in 0..(*seed % most + 1) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            picked.push(pieces[(*seed % pieces.len() as u64) as usize]);
        }
        picked
    }

    /// The former scan, one window at a time: what the table filter must agree with.
    fn mentions_by_windows(text: &[u8]) -> Mentions {
        let mut m = Mentions::default();
        for (i, w) in text.windows(3).enumerate() {
            let low = |k: usize| w[k] | 0x20;
            let rest = |word: &[u8]| {
                text.get(i..i + word.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(word))
            };
            match (low(0), low(1), low(2)) {
                (b's', b'e', b't') if set_may_count(text, i) => m.set = true,
                (b'l', b'i', b's') if rest(b"listen") => m.listen = true,
                (b'd', b'e', b'a') if rest(b"deallocate") => m.deallocate = true,
                (b'p', b'g', b's') if rest(b"pgsluice_") => m.reserved = true,
                (b'd', b'i', b's') if rest(b"discard") && may_start_statement(text, i) => {
                    m.set = true
                }
                _ => {}
            }
        }
        m
    }

    #[test]
    fn the_pair_filter_finds_what_a_scan_of_every_position_finds() {
        let pieces: [&[u8]; 16] = [
            b"set",
            b"SeT",
            b"re",
            b"listen",
            b"LISTEN",
            b"deallocate",
            b"pgsluice_",
            b"discard",
            b" ",
            b";",
            b"x",
            b"\x13\x05\x14",
            b"_config",
            b"sE",
            b"pG",
            b"dI",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..50_000 {
            let text = joined(&mut seed, 8, &pieces).concat();
            assert_eq!(Mentions::of(&text), mentions_by_windows(&text), "{text:?}");
        }
        // Each word at every lane of the eight-at-a-time scan, among bytes whose borrows
        // could disturb it.
        for k in 0..24 {
            for filler in [b'x', 0, 1, 0xff, b' ', b'S', b'e'] {
                for word in [
                    &b"set"[..],
                    b"ReSeT",
                    b"listen",
                    b"DEALLOCATE",
                    b"pgsluice_",
                    b"discard",
                ] {
                    for after in 0..10 {
                        let text = [&vec![filler; k][..], word, &vec![filler; after]].concat();
                        assert_eq!(Mentions::of(&text), mentions_by_windows(&text), "{text:?}");
                    }
                }
            }
        }
        // Every byte pair in front of each word's tail.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for tail in [&b"t x"[..], b"sten", b"allocate", b"sluice_", b"scard"] {
                    let text = [&[a, b][..], tail].concat();
                    assert_eq!(Mentions::of(&text), mentions_by_windows(&text), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn mentions_finds_each_word_in_any_case_and_nothing_else() {
        let m = |t: &str| Mentions::of(t.as_bytes());
        assert_eq!(
            m("SELECT abalance FROM t WHERE aid = 1"),
            Mentions::default()
        );
        assert!(m("reSeT ALL").set && !m("reSeT ALL").listen);
        assert!(m("UNLISTEN *").listen);
        assert!(m("x DeAllocate p").deallocate);
        // Bytes that `| 0x20` maps onto other punctuation never match a letter.
        assert_eq!(
            m("\x13\x05\x14 @SET"),
            Mentions {
                set: true,
                ..Default::default()
            }
        );
        assert!(!m("se").set && !m("listn").listen && !m("dealloc").deallocate);
        assert!(may_be_listen(b"  LISTEN x") && may_be_listen(b"/* c */ listen x"));
        assert!(may_be_listen(b"unlisten *") && !may_be_listen(b"SELECT 1"));
    }
}
