//! The daemon's adaptation thread: takes the embeddings of inference requests without ever
//! blocking a worker, updates the target statistics, recomputes the correction off the hot
//! path (at most ~10% of one core), keeps the statistics in the state directory and raises
//! the retained drift alarm on `{root}/drift`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::QoS;
use serde_json::json;

use super::{AdaptConfig, Adapted, Adapter, Source, TargetStats};
use crate::service::Shared;

/// File name of the target statistics in the state directory.
pub const FILE: &str = "adapt.cbor";

/// A message for the adaptation thread.
pub enum Msg {
    /// The embedding of an inference request.
    Sample(Arc<Vec<f32>>),
    /// Forget the target domain.
    Reset,
    /// Persist and stop.
    Stop,
}

/// Drift alarm state.
#[derive(Debug, Clone, Default)]
struct Status {
    drift: Option<f64>,
    alarm: Option<bool>,
    target_weight: f64,
    target_seen: u64,
    recompute_ms: f64,
}

/// What the rest of the daemon sees of adaptation: the current snapshot, the head's source
/// statistics (set by the learner) and counters.
pub struct AdaptHandle {
    config: AdaptConfig,
    tx: SyncSender<Msg>,
    snapshot: RwLock<Arc<Adapted>>,
    source: RwLock<Option<Arc<Source>>>,
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
            source: RwLock::new(None),
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

    fn set_snapshot(&self, a: Arc<Adapted>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// Whether the learner should include the full covariance in [`set_source`](Self::set_source).
    pub fn wants_covariance(&self) -> bool {
        self.config.method == super::Method::Coral
    }

    /// Called by the learner whenever its head changes.
    pub fn set_source(&self, s: Source) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(s));
    }

    fn source(&self) -> Option<Arc<Source>> {
        self.source
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

    /// Asks the thread to persist and stop.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
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

/// Loads the target statistics kept in `dir`, or fresh ones (with a note) when missing or
/// unreadable.
pub fn restore(
    dir: &Path,
    config: &AdaptConfig,
    sha: &str,
    dim: usize,
) -> (TargetStats, Option<String>) {
    let path = dir.join(FILE);
    let full = config.method == super::Method::Coral;
    let fresh = TargetStats::new(dim, config.window, full);
    match std::fs::read(&path) {
        Ok(bytes) => match TargetStats::from_bytes(&bytes, sha, dim, config.window, full) {
            Ok(t) => (t, None),
            Err(e) => (
                fresh,
                Some(format!(
                    "{}: {e}; starting adaptation afresh",
                    path.display()
                )),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (fresh, None),
        Err(e) => (
            fresh,
            Some(format!(
                "{}: {e}; starting adaptation afresh",
                path.display()
            )),
        ),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Worker {
    shared: Arc<Shared>,
    adapter: Adapter,
    path: PathBuf,
    sha: String,
    dirty: bool,
    last_persist: Instant,
    last_recompute: Instant,
    recompute_cost: Duration,
}

impl Worker {
    fn handle(&self) -> &AdaptHandle {
        &self.shared.adapt
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        let bytes = self.adapter.target().to_bytes(&self.sha);
        match crate::store::write_atomic(&self.path, &bytes) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("saving adaptation statistics: {e}"),
        }
        self.last_persist = Instant::now();
    }

    fn recompute(&mut self, force: bool) {
        let Some(source) = self.handle().source() else {
            return;
        };
        // Bound the (possibly O(d³)) recompute to ~10% of the wall clock.
        if !force && self.last_recompute.elapsed() < self.recompute_cost * 10 {
            return;
        }
        let started = Instant::now();
        let predictor = self.shared.predictor();
        let snap = self.adapter.recompute(&source, &predictor);
        self.handle().set_snapshot(snap);
        self.recompute_cost = started.elapsed();
        self.last_recompute = Instant::now();
        let drift = self.adapter.drift(&source);
        let threshold = self.adapter.config().drift_threshold;
        let mut st = self
            .handle()
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.drift = drift;
        st.target_weight = self.adapter.target().weight();
        st.target_seen = self.adapter.target().seen();
        st.recompute_ms = self.recompute_cost.as_secs_f64() * 1e3;
        let Some(d) = drift else {
            return;
        };
        // Hysteresis: on above the threshold, off below 80% of it.
        let alarm = match st.alarm {
            Some(true) => d >= 0.8 * threshold,
            _ => d > threshold,
        };
        if st.alarm != Some(alarm) {
            st.alarm = Some(alarm);
            drop(st);
            if alarm {
                tracing::warn!(
                    drift = d,
                    threshold,
                    "drift alarm: this board's inputs moved away from the head's training data"
                );
            } else {
                tracing::info!(drift = d, threshold, "drift alarm cleared");
            }
            self.publish_drift(alarm, Some(d), source.version);
        }
    }

    fn publish_drift(&self, alarm: bool, distance: Option<f64>, head_version: u64) {
        let doc = json!({
            "alarm": alarm,
            "distance": distance,
            "threshold": self.adapter.config().drift_threshold,
            "target_samples": self.adapter.target().seen(),
            "head_version": head_version,
            "time": unix_now(),
        });
        self.shared.publish(
            &self.shared.topics.drift,
            QoS::AtLeastOnce,
            true,
            doc.to_string().into_bytes(),
        );
    }

    fn reset(&mut self) {
        self.adapter.reset();
        self.handle().set_snapshot(self.adapter.snapshot());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("removing {}: {e}", self.path.display()),
        }
        self.dirty = false;
        let was = {
            let mut st = self
                .handle()
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let was = st.alarm;
            *st = Status::default();
            was
        };
        if was == Some(true) {
            self.publish_drift(false, None, self.shared.predictor().version());
        }
        tracing::info!("adaptation statistics reset");
    }
}

/// The thread body: runs until [`Msg::Stop`] or until every sender is gone.
pub fn run(shared: Arc<Shared>, rx: Receiver<Msg>, adapter: Adapter, dir: &Path, sha: String) {
    let persist_every = Duration::from_secs(adapter.config().persist_interval_secs.max(1));
    let now = Instant::now();
    let mut w = Worker {
        shared,
        adapter,
        path: dir.join(FILE),
        sha,
        dirty: false,
        last_persist: now,
        last_recompute: now,
        recompute_cost: Duration::ZERO,
    };
    {
        let mut st = w.handle().status.lock().unwrap_or_else(|p| p.into_inner());
        st.target_seen = w.adapter.target().seen();
        st.target_weight = w.adapter.target().weight();
    }
    // A restored target domain applies from the start, once the head's statistics are known.
    let mut primed = w.adapter.target().seen() == 0;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Msg::Sample(x)) => {
                let p = w.shared.predictor();
                w.adapter.observe(&x, &p);
                w.dirty = true;
            }
            Ok(Msg::Reset) => w.reset(),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if !primed && w.handle().source().is_some() {
            w.recompute(true);
            primed = true;
        }
        if w.adapter.due() {
            w.recompute(false);
        }
        if w.last_persist.elapsed() >= persist_every {
            w.persist();
        }
    }
    w.persist();
}
