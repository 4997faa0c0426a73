//! Per-thread lists of empty containers. A client between transactions gives its buffers,
//! reply queue and sample list back here, so an idle client holds none of that memory, and
//! the next active client on the same worker takes one without allocating. Tasks may move
//! between worker threads; a container taken on one thread and given back on another is fine.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Whether each list is on. Off only in builds made to measure what a list saves
/// (`PGSLUICE_NO_SPARE_BUFFERS=1 cargo build --release`, and `_QUEUES`, `_SAMPLES`; see
/// docs/benchmarks.md): constants, so a normal build pays nothing for the choice.
pub const BUFFERS: bool = option_env!("PGSLUICE_NO_SPARE_BUFFERS").is_none();
pub const QUEUES: bool = option_env!("PGSLUICE_NO_SPARE_QUEUES").is_none();
pub const SAMPLES: bool = option_env!("PGSLUICE_NO_SPARE_SAMPLES").is_none();

/// A thread's spare containers of one kind.
pub type List<T> = RefCell<Vec<T>>;

/// A spare container from `list`, or a new empty one.
pub fn take<T: Default>(list: &'static LocalKey<List<T>>) -> T {
    list.with(|l| l.borrow_mut().pop()).unwrap_or_default()
}

/// Keeps `item` (already emptied by the caller) unless `list` holds `max` already.
pub fn give<T>(list: &'static LocalKey<List<T>>, item: T, max: usize) {
    list.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < max {
            l.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static TEST: List<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn reuses_up_to_max() {
        let mut a: Vec<u8> = take(&TEST);
        a.reserve(100);
        let ptr = a.as_ptr();
        a.clear();
        give(&TEST, a, 1);
        give(&TEST, Vec::with_capacity(5), 1); // over max: freed
        let b = take(&TEST);
        assert_eq!((b.as_ptr(), b.capacity() >= 100), (ptr, true));
        assert_eq!(take(&TEST).capacity(), 0);
    }
}
