//! A client's own counters, kept by its relay in plain fields and added to its pool's shared
//! totals (and its finished queries to the fingerprint table) once per transaction, when a
//! ReadyForQuery reports idle. So a query costs a few field updates and a clock read, and a
//! transaction a handful of relaxed atomic adds.

use super::KeyHasher;
use super::queries::{PoolQueries, QueryStats, Sample};
use super::totals::PoolStats;
use crate::sql::fingerprint;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Statement texts longer than this are counted under one shared fingerprint.
pub const MAX_FINGERPRINTED: usize = 64 * 1024;
/// Statement names a client remembers; past this it starts over.
const CLIENT_CACHE: usize = 256;
/// Distinct texts a worker thread remembers; past this it starts over.
const THREAD_CACHE: usize = 4096;

/// A statement as the fingerprint table files it.
pub type Known = (u64, Arc<str>);

/// Fingerprints and normalized texts, kept per worker thread rather than per client: clients
/// run the same few statements, and an idle client then holds none of it. Tasks may move
/// between threads; each thread's cache gives the same answers.
#[derive(Default)]
struct Texts {
    /// By a hash of the raw text, so a repeated text is not tokenized again.
    by_raw: HashMap<u64, Known, BuildHasherDefault<KeyHasher>>,
    /// By fingerprint, so texts that differ only in constants share one normalized text.
    by_fingerprint: HashMap<u64, Arc<str>, BuildHasherDefault<KeyHasher>>,
}

impl Texts {
    fn known(&mut self, fp: u64, text: impl FnOnce() -> String) -> Arc<str> {
        if self.by_fingerprint.len() >= THREAD_CACHE {
            self.by_fingerprint.clear();
        }
        self.by_fingerprint
            .entry(fp)
            .or_insert_with(|| Arc::from(text()))
            .clone()
    }
}

thread_local! {
    static TEXTS: std::cell::RefCell<Texts> = std::cell::RefCell::new(Texts::default());
    static SPARE_SAMPLES: crate::spare::List<Vec<Sample>> =
        const { std::cell::RefCell::new(Vec::new()) };
}
/// Empty sample lists kept per worker thread.
const SPARE_SAMPLES_MAX: usize = 64;

/// Where a meter adds its counts.
pub struct Sinks {
    pub pool: Arc<PoolStats>,
    pub queries: Arc<QueryStats>,
    /// The pool's own table in `queries`.
    pub table: Arc<PoolQueries>,
}

/// A client's named statements (foldhash: looked up per Bind, bounded by CLIENT_CACHE).
type Named = HashMap<Box<[u8]>, Known, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Meter {
    /// Shared by the pool's clients (see `Pool::sinks`).
    sinks: Option<Arc<Sinks>>,
    received: u64,
    sent: u64,
    /// The connection's whole life, never flushed (the audit log's disconnected line).
    total_received: u64,
    total_sent: u64,
    queries: u64,
    query_us: u64,
    xacts: u64,
    xact_us: u64,
    client_parses: u64,
    binds: u64,
    prepared_hits: u64,
    prepared_misses: u64,
    /// Few per transaction, and flushed at its end: 32 bits, paired with `busy_us`.
    prepared_evictions: u32,
    /// Query time since the last [`Meter::take_busy_us`] (saturating): what the server spent
    /// on the client's transaction, without the client's own pauses inside it.
    busy_us: u32,
    /// When the running query and transaction began ([`clock_us`]; 0: none running).
    query_start: u64,
    xact_start: u64,
    /// What runs now, when known.
    current: Option<Known>,
    rows: u64,
    error: bool,
    /// The unnamed prepared statement: most drivers use only that one, and need no map.
    unnamed: Option<Known>,
    /// The client's named prepared statements; made by the first one (boxed: the empty map
    /// would be 48 bytes of every client).
    #[allow(clippy::box_collection)]
    named: Option<Box<Named>>,
    samples: Vec<Sample>,
    /// An identity whose every statement is audited (boxed: nearly every client has none).
    pub audit: Option<Box<StatementAudit>>,
    /// The relay keeps the client's named statements, each with its fingerprint (transaction
    /// mode's statement cache): `named` stays empty.
    pub names_in_relay: bool,
}

/// A parked client's part of its meter ([`Meter::keep`]).
pub struct Kept {
    unnamed: Option<Known>,
    #[allow(clippy::box_collection)]
    named: Option<Box<Named>>,
    audit: Option<Box<StatementAudit>>,
}

/// Where a client's statement lines go, and what they say of it.
pub struct StatementAudit {
    pub sink: crate::audit::Sink,
    pub conn: u64,
    pub identity: Arc<str>,
    /// The SQLSTATE of the running statement's error, if it failed.
    sqlstate: Option<[u8; 5]>,
}

impl StatementAudit {
    pub fn new(sink: crate::audit::Sink, conn: u64, identity: Arc<str>) -> StatementAudit {
        StatementAudit {
            sink,
            conn,
            identity,
            sqlstate: None,
        }
    }

    /// One line per statement: its normalized text (constants out, so no values are
    /// logged), duration, rows and SQLSTATE.
    fn statement(&mut self, text: Option<&str>, us: u64, rows: u64) {
        let sqlstate = self
            .sqlstate
            .take()
            .map(|c| String::from_utf8_lossy(&c).into_owned());
        let fields = serde_json::json!({
            "identity": &*self.identity,
            "statement": text,
            "duration_us": us,
            "rows": rows,
            "sqlstate": sqlstate.as_deref().unwrap_or("00000"),
        });
        self.sink.event("statement", self.conn, fields);
    }
}

impl Meter {
    pub fn new(sinks: Option<Arc<Sinks>>) -> Meter {
        Meter {
            sinks,
            ..Meter::default()
        }
    }

    /// Whether statement texts are fingerprinted.
    pub fn tracks_queries(&self) -> bool {
        self.sinks.as_ref().is_some_and(|s| s.queries.enabled())
    }

    pub fn received(&mut self, n: usize) {
        self.received += n as u64;
        self.total_received += n as u64;
    }

    pub fn sent(&mut self, n: usize) {
        self.sent += n as u64;
        self.total_sent += n as u64;
    }

    /// Bytes from and to the client over the connection's life.
    pub fn bytes(&self) -> (u64, u64) {
        (self.total_received, self.total_sent)
    }

    /// A message that asks the server for work (Query, Parse, Bind, Execute, FunctionCall).
    pub fn request(&mut self) {
        if self.query_start == 0 {
            let now = clock_us();
            self.query_start = now;
            if self.xact_start == 0 {
                self.xact_start = now;
            }
        }
    }

    /// A simple Query's text.
    pub fn query_text(&mut self, text: &[u8]) {
        self.current = self.fingerprint(text);
    }

    /// A Query or Parse whose text is longer than MAX_FINGERPRINTED (not read); a Parse's
    /// statement `name` is filed under it.
    pub fn long_statement(&mut self, parse_name: Option<&[u8]>) {
        let Some(known) = self.long_known() else {
            return;
        };
        self.current = Some(known.clone());
        if let Some(name) = parse_name {
            self.file(name, Some(known));
        }
    }

    /// The shared entry of statements longer than MAX_FINGERPRINTED, when tracked.
    fn long_known(&self) -> Option<Known> {
        self.tracks_queries().then(|| {
            let text = TEXTS.with(|t| {
                t.borrow_mut()
                    .known(1, || "(statement longer than 64 KiB)".into())
            });
            (1, text)
        })
    }

    /// A client's Parse; `passthrough`: it goes to the server as it is (no statement cache).
    pub fn parse_message(&mut self, passthrough: bool) {
        self.client_parses += 1;
        if passthrough {
            self.prepared_misses += 1;
        }
    }

    pub fn bind_message(&mut self) {
        self.binds += 1;
    }

    /// The text of a Parse of statement `name`.
    pub fn parse_text(&mut self, name: &[u8], text: &[u8]) {
        let known = self.fingerprint(text);
        self.current = known.clone();
        self.file(name, known);
    }

    /// Files statement `name` under `known` (None: not tracked now, so a later Bind must not
    /// find what an earlier Parse was).
    fn file(&mut self, name: &[u8], known: Option<Known>) {
        if self.names_in_relay && !name.is_empty() {
            // The relay files it with the statement ([`Meter::statement_of`]).
            return;
        }
        let Some(known) = known else {
            if name.is_empty() {
                self.unnamed = None;
            } else if let Some(named) = &mut self.named {
                named.remove(name);
            }
            return;
        };
        if name.is_empty() {
            self.unnamed = Some(known);
            return;
        }
        let named = self.named.get_or_insert_with(Default::default);
        if named.len() >= CLIENT_CACHE && !named.contains_key(name) {
            named.clear();
        }
        named.insert(name.into(), known);
    }

    /// What a named Parse with a text of `len` bytes runs, for the relay to file with the
    /// statement: the shared entry for a long text (whose Parse may have been metered reads
    /// ago), else what the Parse just metered was.
    pub fn statement_of(&self, len: usize) -> Option<Known> {
        if len > MAX_FINGERPRINTED {
            self.long_known()
        } else {
            self.current.clone()
        }
    }

    /// A Bind of a statement the relay filed (`names_in_relay`).
    pub fn bind_statement(&mut self, known: Option<&Known>) {
        if let Some(k) = known {
            self.current = Some(k.clone());
        }
    }

    /// The statement a Bind names (None: its name was not readable).
    pub fn bind_name(&mut self, name: Option<&[u8]>) {
        let known = match name {
            Some([]) => self.unnamed.as_ref(),
            Some(n) => self.named.as_ref().and_then(|m| m.get(n)),
            None => None,
        };
        if let Some(k) = known {
            self.current = Some(k.clone());
        }
    }

    pub fn prepared(&mut self, hit: bool) {
        if hit {
            self.prepared_hits += 1;
        } else {
            self.prepared_misses += 1;
        }
    }

    pub fn prepared_evicted(&mut self) {
        self.prepared_evictions += 1;
    }

    fn fingerprint(&mut self, text: &[u8]) -> Option<Known> {
        if !self.tracks_queries() {
            return None;
        }
        let text = text.strip_suffix(&[0]).unwrap_or(text);
        if self.audit.is_some() {
            // An audited statement's line says what it is from its own text, never from a
            // cached entry a crafted text could share (hashes can be made to collide).
            let text = utf8(text);
            let fp = fingerprint::fingerprint(&text);
            return Some((fp, Arc::from(fingerprint::normalize(&text))));
        }
        // Drivers send the same texts over and over (the extended protocol re-Parses its
        // unnamed statement every time), and the simple protocol the same ones with other
        // numbers: a hash of the text's shape (or of its bytes, where the shape cannot be
        // told), keyed per process so no client can aim at another's entry, finds the
        // fingerprint without tokenizing. A chance 64-bit collision would only misfile one
        // query's timing.
        let raw = fingerprint::shape(text).unwrap_or_else(|| fingerprint::raw_key(text));
        TEXTS.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(k) = t.by_raw.get(&raw) {
                return Some(k.clone());
            }
            let text = utf8(text);
            let fp = fingerprint::fingerprint(&text);
            let known = (fp, t.known(fp, || fingerprint::normalize(&text)));
            if t.by_raw.len() >= THREAD_CACHE {
                t.by_raw.clear();
            }
            t.by_raw.insert(raw, known.clone());
            Some(known)
        })
    }

    /// A CommandComplete: its row count, where the tag has one.
    pub fn command_complete(&mut self, body: &[u8]) {
        let tag = body.strip_suffix(&[0]).unwrap_or(body);
        let n = tag.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
        if tag.contains(&b' ') && !n.is_empty() && n.iter().all(u8::is_ascii_digit) {
            let rows = n.iter().fold(0u64, |a, d| {
                a.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            self.rows = self.rows.saturating_add(rows);
        }
    }

    /// A server ErrorResponse with this SQLSTATE.
    pub fn error(&mut self, sqlstate: &str) {
        self.error = true;
        if let (Some(a), Ok(code)) = (&mut self.audit, <[u8; 5]>::try_from(sqlstate.as_bytes())) {
            a.sqlstate = Some(code);
        }
        if let Some(s) = &self.sinks {
            s.pool.server_error(sqlstate);
        }
    }

    /// ReadyForQuery with transaction status `status`: a query ended; at idle a
    /// transaction did too, and the counts go to the shared totals.
    pub fn ready(&mut self, status: u8) {
        let start = std::mem::take(&mut self.query_start);
        if start == 0 {
            return;
        }
        let now = clock_us();
        let us = now - start;
        self.queries += 1;
        self.query_us += us;
        self.busy_us = self
            .busy_us
            .saturating_add(u32::try_from(us).unwrap_or(u32::MAX));
        if let Some(s) = &self.sinks {
            s.pool.query_latency.observe_us(us);
        }
        if let Some(a) = &mut self.audit {
            a.statement(self.current.as_ref().map(|c| &*c.1), us, self.rows);
        }
        if let Some((fingerprint, text)) = self.current.take() {
            if self.samples.capacity() == 0 {
                self.samples = crate::spare::take(&SPARE_SAMPLES);
            }
            self.samples.push(Sample {
                fingerprint,
                text,
                us,
                rows: self.rows,
                error: self.error,
            });
        }
        self.rows = 0;
        self.error = false;
        if status == b'I' {
            let x = std::mem::take(&mut self.xact_start);
            if x != 0 {
                let xact_us = now - x;
                self.xacts += 1;
                self.xact_us += xact_us;
                if let Some(s) = &self.sinks {
                    s.pool.xact_latency.observe_us(xact_us);
                }
            }
            self.flush();
        }
    }

    /// What a parked client's meter must keep (its statements' fingerprints, its audit
    /// line's sink), after its counts are flushed; None when that is nothing. The rest of the
    /// meter is made again when the client comes back ([`Meter::restore`]).
    pub fn keep(&mut self) -> Option<Kept> {
        self.flush();
        let kept = Kept {
            unnamed: self.unnamed.take(),
            named: self.named.take(),
            audit: self.audit.take(),
        };
        (kept.unnamed.is_some() || kept.named.is_some() || kept.audit.is_some()).then_some(kept)
    }

    pub fn restore(&mut self, kept: Kept) {
        self.unnamed = kept.unnamed;
        self.named = kept.named;
        self.audit = kept.audit;
    }

    /// The query time counted since the last call.
    pub fn take_busy_us(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.busy_us))
    }

    /// Adds everything counted so far to the shared totals.
    pub fn flush(&mut self) {
        let Some(s) = &self.sinks else { return };
        let t = &s.pool.totals;
        let add = |a: &std::sync::atomic::AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        };
        add(&t.received, &mut self.received);
        add(&t.sent, &mut self.sent);
        add(&t.queries, &mut self.queries);
        add(&t.query_us, &mut self.query_us);
        add(&t.xacts, &mut self.xacts);
        add(&t.xact_us, &mut self.xact_us);
        add(&t.client_parses, &mut self.client_parses);
        add(&t.binds, &mut self.binds);
        add(&s.pool.prepared_hits, &mut self.prepared_hits);
        add(&t.server_parses, &mut self.prepared_misses);
        let mut evictions = u64::from(std::mem::take(&mut self.prepared_evictions));
        add(&s.pool.prepared_evictions, &mut evictions);
        if !self.samples.is_empty() {
            s.queries.record_in(&s.table, &mut self.samples);
            // Between transactions the list goes back: an idle client holds none.
            let list = std::mem::take(&mut self.samples);
            if crate::spare::SAMPLES {
                crate::spare::give(&SPARE_SAMPLES, list, SPARE_SAMPLES_MAX);
            }
        }
    }
}

/// Microseconds on the monotonic clock, plus one (so 0 can mean "not started"): half the
/// size of an `Option<Instant>` in every client's meter.
fn clock_us() -> u64 {
    // The clock Instant reads, without Instant's checked subtraction and 128-bit
    // microseconds: read twice per statement.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC exists on every Linux and
    // cannot fail with a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000 + 1
}

/// Text as UTF-8, replacing invalid bytes only when there are any: the check alone is much
/// cheaper than the lossy conversion, and statement texts are nearly always valid.
pub fn utf8(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

// Part of every client's Relay (224 bytes today).
const _: () = assert!(std::mem::size_of::<Meter>() <= 232);
