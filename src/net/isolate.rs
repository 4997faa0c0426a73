//! A panic in one connection's task must not take anything else down: [`Isolated`] polls a
//! connection's future inside `catch_unwind`, so a panic ends that connection only (its
//! socket and guards dropped as the future is), is logged with the connection id, and the
//! process and every other connection go on. Shared state never stays poisoned: every
//! mutex here is locked with `unwrap_or_else(PoisonError::into_inner)`.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Isolated<F> {
    /// The connection's future, in the task's own allocation (one allocation per
    /// connection, not two); None once it ended.
    inner: Option<F>,
    id: u64,
}

/// Wraps connection `id`'s future.
pub fn isolated<F: Future<Output = ()>>(id: u64, f: F) -> Isolated<F> {
    Isolated { inner: Some(f), id }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    /// True when the connection ended by a panic.
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let id = self.id;
        // SAFETY: `inner` is pinned structurally: nothing moves it out of a pinned
        // `Isolated` (there is no Drop impl and no other method takes it), it is polled in
        // place through this projection and dropped in place by `Pin::set`, and `Isolated`
        // is Unpin only when `F` is.
        let mut inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        let Some(f) = inner.as_mut().as_pin_mut() else {
            return Poll::Ready(false);
        };
        // The future is dropped right after a panic, never polled again, so whatever state
        // it left half-changed is never observed: asserting unwind safety is sound here.
        match catch_unwind(AssertUnwindSafe(|| f.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                inner.set(None);
                Poll::Ready(false)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(conn = id, panic = %what, "connection task panicked: that connection is closed, nothing else is affected");
                // Dropped now, in place: its guards (slots, counts) are released at once.
                inner.set(None);
                Poll::Ready(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_panic_ends_only_its_own_task_and_drops_its_guards() {
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let panicked = tokio::spawn(isolated(7, async move {
            let _g = Guard(d);
            tokio::task::yield_now().await;
            panic!("boom in connection 7");
        }));
        let fine = tokio::spawn(isolated(8, async {
            tokio::task::yield_now().await;
        }));
        assert!(panicked.await.unwrap(), "the panic is caught and reported");
        assert!(!fine.await.unwrap());
        assert!(
            dropped.load(Ordering::SeqCst),
            "the connection's guards were dropped"
        );
    }
}
