//! The daemon's one shutdown signal: a token that `run` triggers once, and that every thread and
//! task observes. Each stage then drains what it already holds and ends; the learner, last in
//! line, ends when every stage feeding it has ended, so nothing handed to it is left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A cloneable shutdown token.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// A token not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the shutdown (idempotent).
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has begun (for tasks).
    pub async fn triggered(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

/// Triggers the shutdown when dropped: `run` holds one, so an early error return stops every
/// thread it had started instead of leaving them running.
#[derive(Debug)]
pub struct TriggerOnDrop(pub Shutdown);

impl Drop for TriggerOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_and_late_waiters_return_at_once() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.triggered().await }
        });
        assert!(!s.is_triggered());
        s.trigger();
        waiter.await.expect("waiter");
        s.triggered().await;
        assert!(s.is_triggered());
    }
}
