//! Criterion micro-benchmarks of what the relay does per message or per statement:
//! framing a run of messages, tracking replies and transaction state, rewriting a Bind's
//! statement name, the keyword filter and the query fingerprint.
//!
//!   cargo bench --bench hot_path

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use pgsluice::proto::{Framer, MAX_MESSAGE_LEN};
use pgsluice::relay::pipeline::{Entry, Kind, Pipeline};
use pgsluice::relay::prepared;
use pgsluice::sql::{fingerprint, session::Mentions};
use std::hint::black_box;

const QUERY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// What a server sends for one `SELECT` of one row: RowDescription, DataRow, CommandComplete,
/// ReadyForQuery.
fn select_reply() -> BytesMut {
    let mut b = BytesMut::new();
    message(
        &mut b,
        b'T',
        b"\0\x01abalance\0\0\0@\x04\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    message(&mut b, b'D', b"\0\x01\0\0\0\x044213");
    message(&mut b, b'C', b"SELECT 1\0");
    message(&mut b, b'Z', b"I");
    b
}

fn framing(c: &mut Criterion) {
    let mut run = BytesMut::new();
    for _ in 0..64 {
        run.extend_from_slice(&select_reply());
    }
    c.bench_function("frame 256 server messages", |b| {
        b.iter(|| {
            let mut f = Framer::default();
            let mut pos = 0;
            let mut n = 0;
            while let Ok(Some(h)) = f.next(black_box(&run), &mut pos, MAX_MESSAGE_LEN) {
                f.pass(&h, &mut pos);
                n += 1;
            }
            n
        })
    });
}

fn transaction_state(c: &mut Criterion) {
    // An extended-protocol round: Parse, Bind, Describe, Execute, Sync and their replies.
    let replies = [b'1', b'2', b'T', b'D', b'C', b'Z'];
    c.bench_function("pipeline: one extended round", |b| {
        let mut p = Pipeline::default();
        b.iter(|| {
            for k in [
                Kind::Parse,
                Kind::Bind,
                Kind::Describe,
                Kind::Execute,
                Kind::Sync,
            ] {
                p.push(Entry::pass(k));
            }
            let mut done = 0;
            for tag in replies {
                while p.complete(black_box(tag)).is_some() {
                    done += 1;
                }
            }
            done
        })
    });
}

fn bind_rewrite(c: &mut Criterion) {
    let mut body = BytesMut::new();
    body.put_slice(b"\0P_1\0");
    body.put_slice(b"\0\x01\0\x01\0\0\0\x0548213\0\x01\0\x01");
    c.bench_function("rename a Bind's statement", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            let avail = black_box(&body[..]);
            if let Some((portal, name, used)) = prepared::bind_names(avail) {
                prepared::write_bind_head(
                    &mut out,
                    avail.len(),
                    portal,
                    name.len(),
                    "sluice_1a2b3c4d",
                );
                out.extend_from_slice(&avail[used..]);
            }
            out.len()
        })
    });
}

fn statement_texts(c: &mut Criterion) {
    c.bench_function("keyword filter (set/listen/deallocate)", |b| {
        b.iter(|| Mentions::of(black_box(QUERY.as_bytes())))
    });
    c.bench_function("fingerprint", |b| {
        b.iter(|| fingerprint::fingerprint(black_box(QUERY)))
    });
    c.bench_function("normalize", |b| {
        b.iter(|| fingerprint::normalize(black_box(QUERY)))
    });
}

criterion_group!(
    benches,
    framing,
    transaction_state,
    bind_rewrite,
    statement_texts
);
criterion_main!(benches);
