//! Named prepared statements in transaction mode. A client's statement names are its own;
//! on the server the proxy names a statement after its text and parameter types
//! (`pgsluice_<hash>`), so one copy on a server serves every client that prepared the same
//! query before it was parsed there (never an older copy: `Statement::parsed`), and any
//! server can be given a client's statement when its next transaction lands there. Each
//! server keeps a bounded, least-recently-used set of what it has.

use crate::backend::statements::parse_clock;
use crate::proto::tag::frontend as fe;
use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// A statement as the client prepared it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text, NUL, parameter count and types.
    pub tail: Bytes,
    /// Session settings its text may change (SET, set_config): each execution is noted.
    pub settings: Option<Box<[String]>>,
    /// When the client parsed it ([`parse_clock`]): it runs only on server copies parsed
    /// since, as a direct connection's statement is planned no earlier than its Parse.
    pub parsed: u64,
    /// Its fingerprint, for the statistics of its executions (None: not tracked).
    pub fingerprint: Option<crate::stats::meter::Known>,
}

impl Statement {
    /// The text it holds for its client: the Parse's and the normalized one.
    fn text_bytes(&self) -> usize {
        self.tail.len() + self.fingerprint.as_ref().map_or(0, |(_, t)| t.len())
    }
}

impl Statement {
    /// `search_path` is the client's: one text under two search paths names two tables, and
    /// PostgreSQL, asked to reuse a plan for the other, fails with "cached plan must not
    /// change result type" where a direct connection would have planned afresh.
    pub fn new(tail: &[u8], search_path: &[u8]) -> Statement {
        let digest = Sha256::new()
            .chain_update(*NAME_KEY)
            .chain_update((search_path.len() as u64).to_le_bytes())
            .chain_update(search_path)
            .chain_update(tail)
            .finalize();
        // 96 bits of SHA-256: distinct statements never share a name in practice.
        let key: [u8; 12] = digest[..12].try_into().unwrap_or_default();
        let (server_name, tail) = shared_text(key, tail);
        Statement {
            server_name,
            tail,
            settings: None,
            parsed: parse_clock(),
            fingerprint: None,
        }
    }
}

/// Statement texts a worker thread made lately, by their server name's digest: clients that
/// prepare the same statement (the clients of one application do) share one copy of its
/// name and text instead of keeping one each while idle.
#[derive(Default)]
struct RecentTexts {
    by_digest: HashMap<[u8; 12], (Arc<str>, Bytes), foldhash::fast::RandomState>,
    bytes: usize,
}

/// Texts longer than this are not shared (nor kept here).
const SHARED_TEXT_MAX: usize = 16 << 10;
/// What one thread's list may hold before it starts over: bytes, counting each entry's
/// table slot, name and shared-buffer header as well as its text, and entries.
const RECENT_TEXTS_BYTES: usize = 1 << 20;
const RECENT_TEXTS_MAX: usize = 4096;
/// An entry's memory besides its text (slot, `Arc<str>` name, `Bytes` header), rounded up.
const RECENT_ENTRY_OVERHEAD: usize = 192;

thread_local! {
    static RECENT_TEXTS: std::cell::RefCell<RecentTexts> = std::cell::RefCell::default();
}

/// The server name and text of the statement with `digest`, shared when this thread made
/// them lately.
fn shared_text(digest: [u8; 12], tail: &[u8]) -> (Arc<str>, Bytes) {
    let make = || {
        let name = format!("pgsluice_{}", hex::encode(digest));
        (Arc::from(name), Bytes::copy_from_slice(tail))
    };
    if tail.len() > SHARED_TEXT_MAX {
        return make();
    }
    RECENT_TEXTS.with_borrow_mut(|r| {
        if let Some((name, text)) = r.by_digest.get(&digest)
            && text[..] == *tail
        {
            return (name.clone(), text.clone());
        }
        let cost = tail.len() + RECENT_ENTRY_OVERHEAD;
        if r.bytes + cost > RECENT_TEXTS_BYTES || r.by_digest.len() >= RECENT_TEXTS_MAX {
            *r = RecentTexts::default();
        }
        let made = make();
        r.bytes += cost;
        r.by_digest.insert(digest, made.clone());
        made
    })
}

/// Keys the server-side names, so that no client can compute the name of another client's
/// statement from its text (and replace it under that name). One per process: every pool of
/// the process shares servers' statement caches by the same names.
static NAME_KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(rand::random);

/// foldhash, not SipHash: a Bind's name is looked up in every prepared transaction, and the
/// map is one client's own and bounded, so a crafted collision could only slow its owner.
type Map = HashMap<Box<[u8]>, Arc<Statement>, foldhash::fast::RandomState>;

/// Names a client keeps in a list before they go in a map.
const FEW: usize = 8;

/// A client's statement names: most drivers name one or a few, and a list of them costs 24
/// bytes a name where a hash table's first allocation is 128 bytes (every idle client holds
/// it); a list of at most FEW is searched as fast as a table.
#[derive(Debug)]
enum Names {
    Few(Vec<(Box<[u8]>, Arc<Statement>)>),
    Many(Map),
}

impl Default for Names {
    fn default() -> Self {
        Names::Few(Vec::new())
    }
}

impl Names {
    fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        match self {
            Names::Few(v) => v.iter().find(|(n, _)| **n == *name).map(|(_, s)| s),
            Names::Many(m) => m.get(name),
        }
    }

    fn insert(&mut self, name: &[u8], s: Arc<Statement>) -> Option<Arc<Statement>> {
        match self {
            Names::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(n, _)| **n == *name) {
                    return Some(std::mem::replace(&mut slot.1, s));
                }
                if v.len() < FEW {
                    // One more at a time: a list that grows by doubling holds room for four.
                    v.reserve_exact(1);
                    v.push((name.into(), s));
                    return None;
                }
                let mut m: Map = v.drain(..).collect();
                m.insert(name.into(), s);
                *self = Names::Many(m);
                None
            }
            Names::Many(m) => m.insert(name.into(), s),
        }
    }

    fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        match self {
            Names::Few(v) => {
                let i = v.iter().position(|(n, _)| **n == *name)?;
                Some(v.swap_remove(i).1)
            }
            Names::Many(m) => m.remove(name),
        }
    }

    fn len(&self) -> usize {
        match self {
            Names::Few(v) => v.len(),
            Names::Many(m) => m.len(),
        }
    }
}

/// The most statement text one client may keep named, over all its statements.
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 64 << 20;

/// The client's statement names; the list is made by the first one (most clients of a pooler
/// never name a statement).
#[derive(Default, Debug)]
pub struct ClientStatements {
    map: Option<Box<Named>>,
}

#[derive(Default, Debug)]
struct Named {
    names: Names,
    /// The texts' bytes, for [`MAX_CLIENT_STATEMENT_BYTES`].
    bytes: usize,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.map.as_ref()?.names.get(name)
    }
    pub fn insert(&mut self, name: &[u8], s: Arc<Statement>) {
        let m = self.map.get_or_insert_with(Default::default);
        m.bytes += s.text_bytes();
        if let Some(old) = m.names.insert(name, s) {
            m.bytes -= old.text_bytes();
        }
    }
    pub fn remove(&mut self, name: &[u8]) {
        if let Some(m) = &mut self.map
            && let Some(old) = m.names.remove(name)
        {
            m.bytes -= old.text_bytes();
        }
    }
    pub fn clear(&mut self) {
        self.map = None;
    }
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.names.len())
    }
    /// Bytes of statement text held for this client.
    pub fn bytes(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.bytes)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parse ('P') with a new name.
pub fn write_parse(out: &mut BytesMut, name: &str, tail: &[u8]) {
    out.put_u8(fe::PARSE);
    out.put_i32((4 + name.len() + 1 + tail.len()) as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(tail);
}

/// Close ('C') of a statement.
pub fn write_close_statement(out: &mut BytesMut, name: &str) {
    write_statement_message(out, fe::CLOSE, name);
}

/// Close or Describe of a statement (`S`) by its server name.
fn write_statement_message(out: &mut BytesMut, tag: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// The start of a Bind whose statement name is replaced: tag, new length, portal, name.
/// The rest of the original body follows unchanged.
pub fn write_bind_head(
    out: &mut BytesMut,
    body_len: usize,
    portal: &[u8],
    old_name_len: usize,
    name: &str,
) {
    let new_len = 4 + body_len - old_name_len + name.len();
    out.put_u8(fe::BIND);
    out.put_i32(new_len as i32);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// Describe ('D') of a statement by its server name.
pub fn write_describe_statement(out: &mut BytesMut, name: &str) {
    write_statement_message(out, fe::DESCRIBE, name);
}

/// Splits `name NUL rest` (Parse body); `None` without a terminator.
pub fn split_name(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    Some((&body[..nul], &body[nul + 1..]))
}

/// The portal and statement names at the start of a Bind body, and how many bytes they take.
/// `None` until both terminators are within `avail` (which is at most the body).
pub fn bind_names(avail: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let p = avail.iter().position(|&b| b == 0)?;
    let rest = &avail[p + 1..];
    let s = rest.iter().position(|&b| b == 0)?;
    Some((&avail[..p], &rest[..s], p + 1 + s + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_move_from_the_list_to_a_map_and_keep_their_statements() {
        let mut c = ClientStatements::default();
        let st = |i: usize| Arc::new(Statement::new(format!("select {i}\0\0\0").as_bytes(), b""));
        let all: Vec<_> = (0..FEW * 2).map(st).collect();
        for (i, s) in all.iter().enumerate() {
            c.insert(format!("s{i}").as_bytes(), s.clone());
            assert_eq!(c.len(), i + 1);
            if i < FEW {
                assert!(matches!(c.map.as_ref().unwrap().names, Names::Few(_)));
            }
        }
        assert!(matches!(c.map.as_ref().unwrap().names, Names::Many(_)));
        for (i, s) in all.iter().enumerate() {
            assert!(Arc::ptr_eq(c.get(format!("s{i}").as_bytes()).unwrap(), s));
        }
        // Replacing a name keeps the count and the bytes right, in either form.
        let mut few = ClientStatements::default();
        few.insert(b"a", all[0].clone());
        few.insert(b"b", all[1].clone());
        few.insert(b"a", all[2].clone());
        assert_eq!(
            (few.len(), few.bytes()),
            (2, all[1].tail.len() + all[2].tail.len())
        );
        assert!(Arc::ptr_eq(few.get(b"a").unwrap(), &all[2]));
        few.remove(b"a");
        assert_eq!(
            (few.len(), few.bytes(), few.get(b"a").is_none()),
            (1, all[1].tail.len(), true)
        );
        assert!(Arc::ptr_eq(few.get(b"b").unwrap(), &all[1]));
        let bytes_before = c.bytes();
        c.remove(b"s3");
        assert_eq!(
            (c.len(), c.bytes()),
            (FEW * 2 - 1, bytes_before - all[3].tail.len())
        );
        assert!(c.get(b"s3").is_none() && c.get(b"s4").is_some());
    }

    #[test]
    fn clients_that_prepare_one_text_share_its_copy() {
        let a = Statement::new(b"select 42\0\0\0", b"");
        let b = Statement::new(b"select 42\0\0\0", b"");
        assert!(Arc::ptr_eq(&a.server_name, &b.server_name));
        assert_eq!(a.tail.as_ptr(), b.tail.as_ptr(), "one copy of the text");
        // Not under another search path, and not a text past the bound.
        let c = Statement::new(b"select 42\0\0\0", b"other");
        assert!(!Arc::ptr_eq(&a.server_name, &c.server_name));
        let long = format!("select '{}'\0\0\0", "x".repeat(SHARED_TEXT_MAX));
        let (d, e) = (
            Statement::new(long.as_bytes(), b""),
            Statement::new(long.as_bytes(), b""),
        );
        assert_eq!(d.server_name, e.server_name);
        assert_ne!(d.tail.as_ptr(), e.tail.as_ptr());
    }

    #[test]
    fn same_text_same_server_name() {
        let a = Statement::new(b"select 1\0\0\0", b"");
        let b = Statement::new(b"select 1\0\0\0", b"");
        let c = Statement::new(b"select 2\0\0\0", b"");
        let d = Statement::new(b"select 1\0\0\0", b"tenant_a");
        assert_ne!(
            a.server_name, d.server_name,
            "search_path is part of the name"
        );
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn rewritten_messages_are_well_formed() {
        let mut out = BytesMut::new();
        write_bind_head(&mut out, 20, b"", 2, "pgsluice_x");
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        // 20-byte body with a 2-byte name becomes one with a 10-byte name.
        assert_eq!(len, 4 + 20 - 2 + 10);
        assert_eq!(bind_names(b"\0s1\0rest"), Some((&b""[..], &b"s1"[..], 4)));
        assert_eq!(bind_names(b"\0s1"), None);
        assert_eq!(split_name(b"n\0q\0"), Some((&b"n"[..], &b"q\0"[..])));
    }
}
