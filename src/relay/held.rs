//! Bytes a relay holds beyond its normal buffer to read one message whole (a Query it scans,
//! a Parse it renames). Bounded per message and for the whole process, so a few clients
//! sending unfinished giant messages cannot make the proxy allocate without limit. The
//! budget is process-wide by nature (memory is), hence one counter for every proxy in the
//! process.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest message a relay reads whole.
pub const MAX_HELD_MESSAGE: usize = 16 << 20;
/// All relays together hold at most this much beyond their normal buffers.
pub const PROCESS_BUDGET: usize = 256 << 20;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// Changes one relay's reservation from `*held` to `want` bytes. False (and nothing
/// changed) when `want` is over the per-message limit or the process budget is spent.
pub fn resize(held: &mut u32, want: usize) -> bool {
    let now = *held as usize;
    if want == now {
        // Every poll of every relay comes here: nothing to do, nothing shared touched.
        return true;
    }
    if want < now {
        HELD.fetch_sub(now - want, Ordering::AcqRel);
        *held = want as u32;
        return true;
    }
    if want > MAX_HELD_MESSAGE {
        return false;
    }
    let more = want - now;
    if HELD.fetch_add(more, Ordering::AcqRel) + more > PROCESS_BUDGET {
        HELD.fetch_sub(more, Ordering::AcqRel);
        return false;
    }
    *held = want as u32;
    true
}

/// Bytes held by every relay of the process (for tests and SHOW MEM).
pub fn in_use() -> usize {
    HELD.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let mut a = 0u32;
        assert!(!resize(&mut a, MAX_HELD_MESSAGE + 1));
        assert_eq!(a, 0);
        assert!(resize(&mut a, 1 << 20));
        assert!(resize(&mut a, 4 << 20));
        assert_eq!(a, 4 << 20);
        assert!(resize(&mut a, 0));
        assert_eq!(a, 0);
        // The process budget: sixteen messages of the largest size fill it.
        let mut many = vec![0u32; PROCESS_BUDGET / MAX_HELD_MESSAGE + 1];
        let granted = many
            .iter_mut()
            .filter_map(|h| resize(h, MAX_HELD_MESSAGE).then_some(()))
            .count();
        assert!(granted < many.len(), "the budget let {granted} through");
        for h in &mut many {
            resize(h, 0);
        }
    }
}
