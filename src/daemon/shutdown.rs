//! The daemon's one shutdown signal: a token that `run` triggers once, and that every thread and
//! task observes. Each stage then drains what it already holds and ends; the learner, last in
//! line, ends when every stage feeding it has ended, so nothing handed to it is left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cloneable shutdown token.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A token not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the shutdown (idempotent).
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
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

    #[test]
    fn every_clone_sees_the_trigger_and_a_dropped_guard_triggers() {
        let s = Shutdown::new();
        let seen = s.clone();
        assert!(!seen.is_triggered());
        s.trigger();
        assert!(seen.is_triggered());
        let t = Shutdown::new();
        drop(TriggerOnDrop(t.clone()));
        assert!(t.is_triggered());
    }
}
