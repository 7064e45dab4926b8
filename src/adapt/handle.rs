//! What the rest of the daemon sees of domain adaptation: the correction inference applies,
//! the head's domain statistics, the drift status, and the inbox of the adaptation thread
//! (`daemon::adaptation`), which it feeds without ever blocking.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::json;

use super::{AdaptConfig, Adapted, HeadDomain};

/// A message for the adaptation thread.
pub enum Msg {
    /// The embedding of an inference request.
    Sample(Arc<Vec<f32>>),
    /// Forget the target domain.
    Reset,
}

/// Drift alarm state, written by the adaptation thread.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub drift: Option<f64>,
    pub alarm: Option<bool>,
    pub target_weight: f64,
    pub target_seen: u64,
    pub recompute_ms: f64,
}

/// What the rest of the daemon sees of adaptation: the current snapshot, the head's source
/// statistics (set by the learner) and counters.
pub struct AdaptHandle {
    config: AdaptConfig,
    tx: SyncSender<Msg>,
    snapshot: RwLock<Arc<Adapted>>,
    head_domain: RwLock<Option<Arc<HeadDomain>>>,
    status: Mutex<Status>,
    /// Embeddings skipped because the thread was busy.
    pub dropped: AtomicU64,
}

impl AdaptHandle {
    /// A handle and the receiving end for [`run`].
    pub fn new(config: AdaptConfig) -> (AdaptHandle, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let h = AdaptHandle {
            snapshot: RwLock::new(Arc::new(Adapted::identity(config.method))),
            config,
            tx,
            head_domain: RwLock::new(None),
            status: Mutex::new(Status::default()),
            dropped: AtomicU64::new(0),
        };
        (h, rx)
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptConfig {
        &self.config
    }

    /// Offers an embedding; never blocks (skipped and counted when the thread is behind).
    pub fn offer(&self, x: Arc<Vec<f32>>) {
        match self.tx.try_send(Msg::Sample(x)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The current snapshot (what inference applies).
    pub fn snapshot(&self) -> Arc<Adapted> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the snapshot (the adaptation thread, after a recompute).
    pub fn set_snapshot(&self, a: Arc<Adapted>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// Whether the learner should include the full covariance in
    /// [`set_head_domain`](Self::set_head_domain).
    pub fn wants_covariance(&self) -> bool {
        self.config.method == super::Method::Coral
    }

    /// Called by the learner whenever its head changes.
    pub fn set_head_domain(&self, s: HeadDomain) {
        *self.head_domain.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(s));
    }

    /// The head's source statistics, once the learner has set them.
    pub fn head_domain(&self) -> Option<Arc<HeadDomain>> {
        self.head_domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the target domain: the correction stops at once, the statistics are cleared
    /// (and their file removed) by the thread after the samples queued before.
    pub fn reset(&self) -> bool {
        self.set_snapshot(Arc::new(Adapted::identity(self.config.method)));
        self.tx.send(Msg::Reset).is_ok()
    }

    /// The drift status, for the adaptation thread to update.
    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `adapt` part of `{root}/stats` and `{root}/info`.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let snap = self.snapshot();
        json!({
            "method": self.config.method,
            "active": snap.is_active(),
            "target_samples": s.target_seen,
            "target_weight": (s.target_weight * 10.0).round() / 10.0,
            "drift": s.drift,
            "drift_threshold": self.config.drift_threshold,
            "drift_alarm": s.alarm.unwrap_or(false),
            "recompute_ms": (s.recompute_ms * 10.0).round() / 10.0,
            "dropped": self.dropped.load(Ordering::Relaxed),
        })
    }
}
