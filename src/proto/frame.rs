//! The framer: finds message boundaries (one tag byte, an Int32 length that counts itself)
//! in a byte buffer without copying. It never looks inside a body; callers either pass a
//! message through by length or take its body when they must read it.

/// Where one message starts in the buffer and how long its body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Offset of the tag byte in the buffer.
    pub start: usize,
    /// Body length, without tag and length word.
    pub body_len: usize,
}

impl Header {
    pub fn end(&self) -> usize {
        self.start + 5 + self.body_len
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
}

/// Streaming state: how many body bytes of the message being passed through are still to come.
/// The body of a passed message may arrive over many reads and is forwarded as it arrives.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    in_body: usize,
}

impl Framer {
    /// True while the body of a passed-through message is still arriving.
    pub fn mid_message(&self) -> bool {
        self.in_body > 0
    }

    /// Moves `pos` over the rest of a passed message's body, then returns the next header if
    /// all five of its bytes are in `buf`. `pos` is left at the header's start.
    pub fn next(
        &mut self,
        buf: &[u8],
        pos: &mut usize,
        max_len: usize,
    ) -> Result<Option<Header>, FrameError> {
        if self.in_body > 0 {
            let n = self.in_body.min(buf.len() - *pos);
            *pos += n;
            self.in_body -= n;
            if self.in_body > 0 {
                return Ok(None);
            }
        }
        let Some(head) = buf.get(*pos..*pos + 5) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 || len as usize > max_len {
            return Err(FrameError::BadLength {
                tag: tag as char,
                len: len.into(),
            });
        }
        Ok(Some(Header {
            tag,
            start: *pos,
            body_len: len as usize - 4,
        }))
    }

    /// Passes the message through: its bytes count as consumed, even those not read yet.
    pub fn pass(&mut self, h: &Header, pos: &mut usize) {
        *pos = h.start + 5;
        self.in_body = h.body_len;
    }

    /// The message's body from the current position on is passed through: `remaining` bytes
    /// of it are still to come (after the proxy replaced its start).
    pub fn pass_rest(&mut self, remaining: usize) {
        self.in_body = remaining;
    }

    /// Consumes the whole message and returns its body, or `None` (consuming nothing) until
    /// the buffer holds all of it.
    pub fn take<'a>(&mut self, h: &Header, buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
        let body = buf.get(h.start + 5..h.end())?;
        *pos = h.end();
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn walks_messages_split_at_every_byte() {
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'Z', b"I"));
        stream.extend(msg(b'D', &[9; 300]));
        for cut in 0..=stream.len() {
            let mut f = Framer::default();
            let mut tags = Vec::new();
            let mut buf = stream[..cut].to_vec();
            let mut pos = 0;
            for phase in 0..2 {
                while let Some(h) = f.next(&buf, &mut pos, 1 << 20).unwrap() {
                    if h.tag == b'Z' {
                        match f.take(&h, &buf, &mut pos) {
                            Some(body) => tags.push((h.tag, body.to_vec())),
                            None => break,
                        }
                    } else {
                        tags.push((h.tag, Vec::new()));
                        f.pass(&h, &mut pos);
                    }
                }
                if phase == 0 {
                    buf = stream.clone();
                }
            }
            assert_eq!(
                tags,
                vec![(b'Q', vec![]), (b'Z', b"I".to_vec()), (b'D', vec![])],
                "cut at {cut}"
            );
            assert_eq!(pos, stream.len());
            assert!(!f.mid_message());
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut f = Framer::default();
        let mut pos = 0;
        let bad = [b'Q', 0, 0, 0, 3];
        assert!(f.next(&bad, &mut pos, 100).is_err());
        let neg = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(f.next(&neg, &mut pos, 100).is_err());
        let huge = [b'Q', 0x40, 0, 0, 0];
        assert!(f.next(&huge, &mut pos, 1 << 20).is_err());
    }
}
