//! One direction of a relay: a buffer that is both the read buffer and the queue of bytes to
//! write, the framer walking it, and an overflow buffer used only when the proxy changes the
//! stream (renames a statement, drops a reply it asked for itself, adds its own message).
//! Unchanged traffic is written straight from the read buffer.

use crate::proto::Framer;
use bytes::{Buf, BytesMut};
use std::cell::RefCell;

/// Empty buffers kept per worker thread for the next client that reads: a client between
/// transactions holds no buffer memory, and an active one takes a buffer without allocating.
const SPARE_MAX: usize = 64;
/// Larger buffers (grown by a big result) are freed instead of kept.
const SPARE_CAPACITY_MAX: usize = 128 * 1024;
/// What a client keeps per buffer while it waits inside a transaction (four buffers per
/// attached server): two reads' worth.
const KEPT_CAPACITY_MAX: usize = 2 * super::READ_CHUNK;

thread_local! {
    static SPARE: crate::spare::List<BytesMut> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `want` bytes, reused when one is spare.
pub fn spare_buffer(want: usize) -> BytesMut {
    let mut b = crate::spare::take(&SPARE);
    // An empty buffer that is not shared gets its whole allocation back here, without copying.
    b.reserve(want);
    b
}

fn give_back(b: &mut BytesMut) {
    let mut b = std::mem::take(b);
    if crate::spare::BUFFERS && within(&mut b, SPARE_CAPACITY_MAX) {
        crate::spare::give(&SPARE, b, SPARE_MAX);
    }
}

/// Whether an empty buffer's allocation is at most `max` bytes. Its capacity alone can say
/// less: what was read and written went from its front.
fn within(b: &mut BytesMut, max: usize) -> bool {
    !b.try_reclaim(max + 1)
}

#[derive(Default)]
pub struct Half {
    /// Bytes read and not yet written; `buf[..pos]` has been walked and may be written.
    pub buf: BytesMut,
    pub pos: usize,
    pub framer: Framer,
    /// Bytes that go out before `buf[..pos]`: filled only where the stream was changed.
    pub out: BytesMut,
}

impl Half {
    /// Something is ready to write.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.pos > 0
    }

    /// The next bytes to write: the changed part first, to keep order.
    pub fn output(&self) -> &[u8] {
        if self.out.is_empty() {
            &self.buf[..self.pos]
        } else {
            &self.out
        }
    }

    /// Everything ready to write, in order: the changed part, then the walked bytes after it
    /// (one vectored write sends a renamed Bind's head and the rest of it, or the proxy's
    /// own statement and the client's message behind it, in one system call).
    pub fn output_parts(&self) -> [&[u8]; 2] {
        [&self.out, &self.buf[..self.pos]]
    }

    /// `n` bytes were written: from `out` first, then from the walked bytes.
    pub fn consume_output(&mut self, n: usize) {
        let from_out = n.min(self.out.len());
        self.out.advance(from_out);
        if from_out > 0 && self.out.is_empty() && self.out.capacity() == 0 {
            // Written to the end of its allocation: shows no capacity, so
            // `release_empty` would never see it.
            give_back(&mut self.out);
        }
        self.buf.advance(n - from_out);
        self.pos -= n - from_out;
    }

    /// Moves the walked bytes before `upto` into `out`, so a change can be made at `upto`.
    /// Copies only when the stream is being changed.
    pub fn cut_at(&mut self, upto: usize) {
        self.out_ready(upto);
        if upto > 0 {
            self.out.extend_from_slice(&self.buf[..upto]);
            self.buf.advance(upto);
            self.pos -= upto;
        }
    }

    /// Removes the whole message of `len` bytes at `start`, already walked (a reply the
    /// proxy asked for itself). At the front of the buffer with nothing changed before it,
    /// that is a pointer move; elsewhere what precedes it is moved out first.
    pub fn remove_walked(&mut self, start: usize, len: usize) {
        if start == 0 && self.out.is_empty() {
            self.buf.advance(len);
            self.pos -= len;
            return;
        }
        self.pos = start;
        self.cut_at(start);
        self.drop_front(len);
    }

    /// Drops `n` bytes at the front of `buf` (a message being removed; `cut_at` came first).
    pub fn drop_front(&mut self, n: usize) {
        self.buf.advance(n);
        self.pos = self.pos.saturating_sub(n);
    }

    /// `out` released while waiting takes a spare buffer back before it is written to.
    fn out_ready(&mut self, want: usize) {
        if self.out.capacity() == 0 {
            self.out = spare_buffer(want.max(1024));
        }
    }

    /// Adds the proxy's own bytes at the walked boundary.
    pub fn insert(&mut self, f: impl FnOnce(&mut BytesMut)) {
        let at = self.pos;
        self.cut_at(at);
        f(&mut self.out);
    }

    /// Drops walked bytes that are not to be sent at all (a refused request).
    pub fn discard_walked(&mut self) {
        self.buf.advance(self.pos);
        self.pos = 0;
    }

    /// Returns the buffers' memory while they hold nothing (the relay is about to wait);
    /// with `keep_ordinary`, only buffers grown past two reads' worth.
    pub fn release_empty(&mut self, keep_ordinary: bool) {
        let goes = |b: &mut BytesMut| {
            b.is_empty() && b.capacity() > 0 && !(keep_ordinary && within(b, KEPT_CAPACITY_MAX))
        };
        if goes(&mut self.buf) {
            give_back(&mut self.buf);
            self.pos = 0;
        }
        if goes(&mut self.out) {
            give_back(&mut self.out);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.out.is_empty() && self.pos == 0 && !self.framer.mid_message()
    }
}

// Two per client (80 bytes each today).
const _: () = assert!(std::mem::size_of::<Half>() <= 80);

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer whose front was consumed shows only its tail as capacity: what the spare
    /// pool and a transaction keep is judged by its allocation.
    #[test]
    fn a_buffer_grown_by_a_large_message_is_not_ordinary() {
        use bytes::Buf;
        let mut grown = BytesMut::with_capacity(1 << 20);
        grown.extend_from_slice(&vec![0; (1 << 20) - 1000]);
        grown.advance(grown.len());
        assert!(grown.capacity() < KEPT_CAPACITY_MAX);
        assert!(!within(&mut grown, SPARE_CAPACITY_MAX));
        assert!(within(
            &mut BytesMut::with_capacity(16 * 1024),
            KEPT_CAPACITY_MAX
        ));
    }

    #[test]
    fn removing_a_walked_message_keeps_the_rest() {
        // At the front: the bytes after it stay, unwalked ones too.
        let mut h = Half::default();
        h.buf.extend_from_slice(b"MMMMaaabb");
        h.pos = 7;
        h.remove_walked(0, 4);
        assert_eq!(
            (&h.buf[..], h.pos, h.out.is_empty()),
            (&b"aaabb"[..], 3, true)
        );
        // In the middle: what precedes it goes out first, in order.
        let mut h = Half::default();
        h.buf.extend_from_slice(b"aaMMMMbb");
        h.pos = 6;
        h.remove_walked(2, 4);
        let mut sent = Vec::new();
        while h.has_output() {
            let n = h.output().len();
            sent.extend_from_slice(h.output());
            h.consume_output(n);
        }
        assert_eq!((sent, &h.buf[..]), (b"aa".to_vec(), &b"bb"[..]));
    }

    #[test]
    fn a_write_across_both_parts_consumes_them_in_order() {
        let mut h = Half::default();
        h.buf.extend_from_slice(b"cdefg");
        h.pos = 4;
        h.out.extend_from_slice(b"ab");
        assert_eq!(h.output_parts(), [&b"ab"[..], &b"cdef"[..]]);
        h.consume_output(1);
        assert_eq!(h.output_parts(), [&b"b"[..], &b"cdef"[..]]);
        h.consume_output(3);
        assert_eq!(h.output_parts(), [&b""[..], &b"ef"[..]]);
        assert_eq!((&h.buf[..], h.pos), (&b"efg"[..], 2));
    }

    #[test]
    fn changes_keep_order() {
        let mut h = Half::default();
        h.buf.extend_from_slice(b"aaabbbccc");
        h.pos = 6;
        h.cut_at(3);
        assert_eq!((&h.out[..], h.pos), (&b"aaa"[..], 3));
        h.drop_front(3); // drop "bbb"
        h.insert(|o| o.extend_from_slice(b"XY"));
        assert_eq!(&h.out[..], b"aaaXY");
        h.pos = 3;
        let mut sent = Vec::new();
        while h.has_output() {
            let n = h.output().len().min(2);
            sent.extend_from_slice(&h.output()[..n]);
            h.consume_output(n);
        }
        assert_eq!(sent, b"aaaXYccc");
    }
}
