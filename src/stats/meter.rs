//! A client's own counters, kept by its relay in plain fields and added to its pool's shared
//! totals (and its finished queries to the fingerprint table) once per transaction, when a
//! ReadyForQuery reports idle. So a query costs a few field updates and a clock read, and a
//! transaction a handful of relaxed atomic adds.

use super::KeyHasher;
use super::queries::{QueryStats, Sample};
use super::totals::PoolStats;
use crate::backend::pool::PoolKey;
use crate::sql::fingerprint;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Statement texts longer than this are counted under one shared fingerprint.
pub const MAX_FINGERPRINTED: usize = 64 * 1024;
/// Distinct texts (and statement names) a client remembers; past this it starts over.
const CLIENT_CACHE: usize = 256;

/// Where a meter adds its counts.
pub struct Sinks {
    pub key: PoolKey,
    pub pool: Arc<PoolStats>,
    pub queries: Arc<QueryStats>,
}

#[derive(Default)]
pub struct Meter {
    sinks: Option<Sinks>,
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
    prepared_evictions: u64,
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
    /// The fingerprint of what runs now (0: none known).
    current: u64,
    rows: u64,
    error: bool,
    /// Normalized texts by fingerprint, so a repeated statement allocates nothing.
    texts: HashMap<u64, Arc<str>, BuildHasherDefault<KeyHasher>>,
    /// Fingerprints by a hash of the raw text, so a repeated text is not tokenized again.
    by_raw: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
    /// Fingerprints of the client's prepared statements by name ("" is the unnamed one).
    named: HashMap<Box<[u8]>, u64>,
    samples: Vec<Sample>,
}

impl Meter {
    pub fn new(sinks: Option<Sinks>) -> Meter {
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
        if self.query_start.is_none() {
            let now = Instant::now();
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

    /// A simple Query's text.
    pub fn query_text(&mut self, text: &[u8]) {
        self.current = self.fingerprint(text);
    }

    /// A Query or Parse whose text is longer than MAX_FINGERPRINTED (not read).
    pub fn long_statement(&mut self) {
        if self.tracks_queries() {
            self.current = self.remember(1, || "(statement longer than 64 KiB)".into());
        }
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
        let fp = self.fingerprint(text);
        if self.named.len() >= CLIENT_CACHE && !self.named.contains_key(name) {
            self.named.clear();
        }
        self.named.insert(name.into(), fp);
        self.current = fp;
    }

    /// The statement a Bind names (None: its name was not readable).
    pub fn bind_name(&mut self, name: Option<&[u8]>) {
        if let Some(fp) = name.and_then(|n| self.named.get(n)) {
            self.current = *fp;
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

    fn fingerprint(&mut self, text: &[u8]) -> u64 {
        if !self.tracks_queries() {
            return 0;
        }
        let text = text.strip_suffix(&[0]).unwrap_or(text);
        // Drivers send the same texts over and over (the extended protocol re-Parses its
        // unnamed statement every time): a hash of the raw bytes finds the fingerprint
        // without tokenizing. A 64-bit collision would only misfile one query's timing.
        let mut raw = KeyHasher::default();
        raw.write(text);
        let raw = raw.finish();
        if let Some(&fp) = self.by_raw.get(&raw) {
            return fp;
        }
        let text = utf8(text);
        let fp = fingerprint::fingerprint(&text);
        if self.by_raw.len() >= CLIENT_CACHE {
            self.by_raw.clear();
        }
        self.by_raw.insert(raw, fp);
        self.remember(fp, || fingerprint::normalize(&text))
    }

    fn remember(&mut self, fp: u64, text: impl FnOnce() -> String) -> u64 {
        if !self.texts.contains_key(&fp) {
            if self.texts.len() >= CLIENT_CACHE {
                // by_raw points into texts: a fingerprint found there must have its text.
                self.texts.clear();
                self.by_raw.clear();
            }
            self.texts.insert(fp, Arc::from(text()));
        }
        fp
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
        if let Some(s) = &self.sinks {
            s.pool.server_error(sqlstate);
        }
    }

    /// ReadyForQuery with transaction status `status`: a query ended; at idle a
    /// transaction did too, and the counts go to the shared totals.
    pub fn ready(&mut self, status: u8) {
        let Some(start) = self.query_start.take() else {
            return;
        };
        let now = Instant::now();
        let us = now.duration_since(start).as_micros() as u64;
        self.queries += 1;
        self.query_us += us;
        if let Some(s) = &self.sinks {
            s.pool.query_latency.observe_us(us);
        }
        if self.current != 0 {
            if let Some(text) = self.texts.get(&self.current) {
                self.samples.push(Sample {
                    fingerprint: self.current,
                    text: text.clone(),
                    us,
                    rows: self.rows,
                    error: self.error,
                });
            }
        }
        self.current = 0;
        self.rows = 0;
        self.error = false;
        if status == b'I' {
            if let Some(x) = self.xact_start.take() {
                let xact_us = now.duration_since(x).as_micros() as u64;
                self.xacts += 1;
                self.xact_us += xact_us;
                if let Some(s) = &self.sinks {
                    s.pool.xact_latency.observe_us(xact_us);
                }
            }
            self.flush();
        }
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
        add(&s.pool.prepared_evictions, &mut self.prepared_evictions);
        if !self.samples.is_empty() {
            s.queries.record(&s.key, &mut self.samples);
        }
    }
}

/// Text as UTF-8, replacing invalid bytes only when there are any: the check alone is much
/// cheaper than the lossy conversion, and statement texts are nearly always valid.
pub fn utf8(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}
