//! The framer over arbitrary bytes, split at an arbitrary point: it must never panic, never
//! move backwards, and never walk past the buffer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::Framer;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).min(rest.len());
    let mut f = Framer::default();
    let mut pos = 0;
    for end in [cut, rest.len()] {
        let buf = &rest[..end];
        loop {
            let before = pos;
            match f.next(buf, &mut pos, 1 << 20) {
                Ok(Some(h)) => {
                    if h.tag == b'Z' || h.tag == b'S' {
                        if f.take(&h, buf, &mut pos).is_none() {
                            break;
                        }
                    } else {
                        f.pass(&h, &mut pos);
                    }
                }
                Ok(None) | Err(_) => break,
            }
            assert!(pos >= before);
        }
        assert!(pos <= buf.len() || f.mid_message());
    }
});
