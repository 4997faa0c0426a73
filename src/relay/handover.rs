//! The hand-over reset, confirmed without a round trip.
//!
//! The reset goes ahead of the next client's first message in the same write. Any client on
//! the upstream role can learn the server's pid and cancel it while the reset runs: the
//! rest of the reset's query string is then skipped, and the client's message would run on
//! what the previous client left. So the reset runs as one explicit transaction and, once it
//! has committed, prepares a witness statement whose name is random per hand-over, and a Describe of that statement follows, without a Sync,
//! before the client's messages. If the reset did not finish, the witness does not exist,
//! the Describe fails, and PostgreSQL skips everything up to the next Sync: the client's
//! messages never run (the relay then closes both ends). A Close drops the witness again.
//!
//! Describe and Close open the implicit transaction the client's first message would open
//! anyway, and their replies travel with that message's (PostgreSQL holds extended-protocol
//! replies until a Sync or Flush; no Flush is sent, which would cost a wake-up per
//! hand-over). If the proxy answers that message itself, the relay sends a Sync of its own;
//! either way the server is let go only after a ReadyForQuery. They take no snapshot and do
//! not mark the transaction as a pipeline, so `BEGIN ISOLATION LEVEL ...`, VACUUM and CREATE
//! INDEX CONCURRENTLY still work as the client's first statement. (An Execute would not do: VACUUM then fails with 25001.)

use super::prepared::{write_close_statement, write_describe_statement};
use crate::proto::emit;
use bytes::{BufMut, BytesMut};

const PREFIX: &[u8; 11] = b"pgsluice_w_";

/// The witness's name: the prefix and 16 hex digits, unguessable by the previous client.
pub type Witness = [u8; 27];

pub fn new_witness() -> Witness {
    let mut name = [0u8; 27];
    name[..11].copy_from_slice(PREFIX);
    let n: u64 = rand::random();
    for (i, d) in name[11..].iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(n >> (60 - 4 * i)) as usize & 15];
    }
    name
}

/// Writes the reset (`sql`, ending with the witness's PREPARE), the Describe that fails
/// unless the reset finished, and the Close that drops the witness.
pub fn write(out: &mut BytesMut, sql: &str, witness: &Witness) {
    // The prefix is ASCII and the digits are hex: the name is valid UTF-8.
    let name = std::str::from_utf8(witness).unwrap_or("pgsluice_w_");
    emit::message(out, crate::proto::tag::frontend::QUERY, |b| {
        // One explicit transaction, committed before the witness exists: PREPARE is not
        // transactional, so a reset rolled back after it would still leave the witness.
        b.put_slice(b"BEGIN; ");
        b.put_slice(sql.as_bytes());
        b.put_slice(b"; COMMIT; PREPARE ");
        b.put_slice(witness);
        b.put_slice(b" AS SELECT\0");
    });
    write_describe_statement(out, name);
    write_close_statement(out, name);
}

/// The same with a token client's claims set inside the reset's transaction: the witness is
/// prepared only once they are, so if setting them fails (or is cancelled) the client's
/// messages never run. The claims go as bind parameters of an Execute between two queries:
/// after an error there the server skips everything up to the client's next Sync, the
/// second query and the witness included.
pub fn write_with_claims(
    out: &mut BytesMut,
    sql: Option<&str>,
    claims: &[impl std::ops::Deref<Target = crate::identity::claims::Delivery>],
    witness: &Witness,
) {
    let name = std::str::from_utf8(witness).unwrap_or("pgsluice_w_");
    emit::message(out, crate::proto::tag::frontend::QUERY, |b| {
        b.put_slice(b"BEGIN");
        if let Some(sql) = sql {
            b.put_slice(b"; ");
            b.put_slice(sql.as_bytes());
        }
        b.put_u8(0);
    });
    for d in claims {
        emit::parse_unnamed(out, d.sql);
        emit::bind_text(out, &d.params());
        emit::execute_unnamed(out);
    }
    emit::message(out, crate::proto::tag::frontend::QUERY, |b| {
        b.put_slice(b"COMMIT; PREPARE ");
        b.put_slice(witness);
        b.put_slice(b" AS SELECT\0");
    });
    write_describe_statement(out, name);
    write_close_statement(out, name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witnesses_differ_and_are_sql_identifiers() {
        let (a, b) = (new_witness(), new_witness());
        assert_ne!(a, b);
        for w in [a, b] {
            assert!(w.starts_with(PREFIX));
            assert!(
                w.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
            );
        }
    }

    #[test]
    fn the_reset_describe_and_close_follow_each_other() {
        let w = *b"pgsluice_w_0123456789abcdef";
        let mut out = BytesMut::new();
        write(&mut out, "RESET ALL", &w);
        let q = b"BEGIN; RESET ALL; COMMIT; PREPARE pgsluice_w_0123456789abcdef AS SELECT\0";
        assert_eq!(out[0], b'Q');
        assert_eq!(&out[5..5 + q.len()], q);
        let rest = &out[5 + q.len()..];
        assert_eq!(rest[0], b'D');
        assert_eq!(&rest[5..7], b"Sp");
        let close = &rest[1 + 4 + 1 + w.len() + 1..];
        assert_eq!(close[0], b'C');
        assert_eq!(close.len(), 1 + 4 + 1 + w.len() + 1);
    }
}
