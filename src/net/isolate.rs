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
    inner: Option<Pin<Box<F>>>,
    id: u64,
}

/// Wraps connection `id`'s future.
pub fn isolated<F: Future<Output = ()>>(id: u64, f: F) -> Isolated<F> {
    Isolated {
        inner: Some(Box::pin(f)),
        id,
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    /// True when the connection ended by a panic.
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let id = self.id;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(false);
        };
        // The future is dropped right after a panic, never polled again, so whatever state
        // it left half-changed is never observed: asserting unwind safety is sound here.
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.inner = None;
                Poll::Ready(false)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(conn = id, panic = %what, "connection task panicked: that connection is closed, nothing else is affected");
                self.inner = None;
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
