//! Service counters, latency percentiles and memory readings published on `{root}/stats`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::daemon::reply::{
    InferCounts, LearnCounts, LearnerFigures, MqttCounts, Percentiles, Prequential, StatsReport,
};

use crate::model::latency::quantile;

/// How many recent latencies the percentiles are computed over.
const WINDOW: usize = 1024;

/// A fixed window of recent values with percentiles.
#[derive(Debug, Default)]
pub struct Window {
    values: Mutex<VecDeque<f64>>,
}

impl Window {
    /// Records one value (milliseconds).
    pub fn push(&self, v: f64) {
        // Never held across an await; the critical section is a push.
        let mut q = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == WINDOW {
            q.pop_front();
        }
        q.push_back(v);
    }

    /// (p50, p99) of the window, `None` when empty.
    pub fn percentiles(&self) -> Option<(f64, f64)> {
        let mut v: Vec<f64> = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((quantile(&v, 0.5), quantile(&v, 0.99)))
    }
}

/// Counters shared by the driver, the workers and the learner.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub infer_received: AtomicU64,
    pub infer_done: AtomicU64,
    pub infer_dropped: AtomicU64,
    pub learn_received: AtomicU64,
    pub learned: AtomicU64,
    pub duplicates: AtomicU64,
    pub errors: AtomicU64,
    pub publish_dropped: AtomicU64,
    pub prequential_total: AtomicU64,
    pub prequential_correct: AtomicU64,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    /// End to end: message received → prediction published.
    pub latency: Window,
    /// Backbone time per inference.
    pub backbone: Window,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            infer_received: AtomicU64::new(0),
            infer_done: AtomicU64::new(0),
            infer_dropped: AtomicU64::new(0),
            learn_received: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            prequential_total: AtomicU64::new(0),
            prequential_correct: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            latency: Window::default(),
            backbone: Window::default(),
        }
    }
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Resident set size of this process in bytes (Linux), 0 when unknown.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

impl Stats {
    /// The `{root}/stats` document, with the learner's figures.
    pub fn report(&self, learner: LearnerFigures) -> StatsReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let pct = |w: &Window| w.percentiles().map(|(p50, p99)| Percentiles { p50, p99 });
        let total = get(&self.prequential_total);
        let correct = get(&self.prequential_correct);
        StatsReport {
            uptime_secs: self.started.elapsed().as_secs(),
            infer: InferCounts {
                received: get(&self.infer_received),
                done: get(&self.infer_done),
                dropped: get(&self.infer_dropped),
            },
            learn: LearnCounts {
                received: get(&self.learn_received),
                learned: get(&self.learned),
                duplicates: get(&self.duplicates),
            },
            errors: get(&self.errors),
            publish_dropped: get(&self.publish_dropped),
            latency_ms: pct(&self.latency),
            backbone_ms: pct(&self.backbone),
            prequential: Prequential {
                samples: total,
                correct,
                accuracy: (total > 0).then(|| correct as f64 / total as f64),
            },
            mqtt: MqttCounts {
                connects: get(&self.connects),
                connection_errors: get(&self.connection_errors),
            },
            rss_bytes: rss_bytes(),
            learner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_window() {
        let w = Window::default();
        assert!(w.percentiles().is_none());
        for i in 1..=100 {
            w.push(f64::from(i));
        }
        let (p50, p99) = w.percentiles().expect("values");
        assert!((50.0..=51.0).contains(&p50));
        assert!((98.0..=100.0).contains(&p99));
        assert!(rss_bytes() > 0);
    }
}
