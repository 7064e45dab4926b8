//! The daemon's adaptation thread: takes the embeddings of inference requests without ever
//! blocking a worker, updates the target statistics, recomputes the correction off the hot
//! path (at most ~10% of one core), keeps the statistics in the state directory and raises
//! the retained drift alarm on `{root}/drift`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::adapt::handle::{AdaptHandle, Msg, Status};
use crate::adapt::{AdaptConfig, Adapter, TargetStats};
use crate::daemon::outbox::Outbox;
use crate::daemon::reply::Drift;
use crate::daemon::serving::PredictorSlot;
use crate::daemon::shutdown::Shutdown;

/// What the adaptation thread shares with the rest of the daemon.
pub struct Context {
    pub handle: Arc<AdaptHandle>,
    pub predictor: Arc<PredictorSlot>,
    pub outbox: Arc<Outbox>,
    pub shutdown: Shutdown,
}
use crate::state::files::ADAPT;

/// Loads the target statistics kept in `dir`, or fresh ones (with a note) when missing or
/// unreadable.
pub fn restore(
    dir: &Path,
    config: &AdaptConfig,
    sha: &str,
    dim: usize,
) -> (TargetStats, Option<String>) {
    let path = dir.join(ADAPT);
    let full = config.method == crate::adapt::Method::Coral;
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
    ctx: Context,
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
        &self.ctx.handle
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        let bytes = self.adapter.target().to_bytes(&self.sha);
        match crate::state::files::write_atomic(&self.path, &bytes) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("saving adaptation statistics: {e}"),
        }
        self.last_persist = Instant::now();
    }

    fn recompute(&mut self, force: bool) {
        let Some(source) = self.handle().head_domain() else {
            return;
        };
        // Bound the (possibly O(d³)) recompute to ~10% of the wall clock.
        if !force && self.last_recompute.elapsed() < self.recompute_cost * 10 {
            return;
        }
        let started = Instant::now();
        let predictor = self.ctx.predictor.get();
        let snap = self.adapter.recompute(&source, &predictor);
        self.handle().set_snapshot(snap);
        self.recompute_cost = started.elapsed();
        self.last_recompute = Instant::now();
        let drift = self.adapter.drift(&source);
        let threshold = self.adapter.config().drift_threshold;
        let mut st = self.handle().status();
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
        let doc = Drift {
            alarm,
            distance,
            threshold: self.adapter.config().drift_threshold,
            target_samples: self.adapter.target().seen(),
            head_version,
            time: unix_now(),
        };
        self.ctx.outbox.retain(&self.ctx.outbox.topics.drift, &doc);
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
            let mut st = self.handle().status();
            let was = st.alarm;
            *st = Status::default();
            was
        };
        if was == Some(true) {
            self.publish_drift(false, None, self.ctx.predictor.get().version());
        }
        tracing::info!("adaptation statistics reset");
    }
}

/// The thread body: runs until shutdown (or until every sender is gone), then persists.
pub fn run(ctx: Context, rx: Receiver<Msg>, adapter: Adapter, dir: &Path, sha: String) {
    let persist_every = Duration::from_secs(adapter.config().persist_interval_secs.max(1));
    let now = Instant::now();
    let mut w = Worker {
        ctx,
        adapter,
        path: dir.join(ADAPT),
        sha,
        dirty: false,
        last_persist: now,
        last_recompute: now,
        recompute_cost: Duration::ZERO,
    };
    {
        let mut st = w.handle().status();
        st.target_seen = w.adapter.target().seen();
        st.target_weight = w.adapter.target().weight();
    }
    // A restored target domain applies from the start, once the head's statistics are known.
    let mut primed = w.adapter.target().seen() == 0;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Msg::Sample(x)) => {
                let p = w.ctx.predictor.get();
                w.adapter.observe(&x, &p);
                w.dirty = true;
            }
            Ok(Msg::Reset) => w.reset(),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if w.ctx.shutdown.is_triggered() {
            break;
        }
        if !primed && w.handle().head_domain().is_some() {
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
