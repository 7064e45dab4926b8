//! The work queue between the intake and the workers, in two lanes: inference (bounded; when
//! full the oldest request is dropped, since a camera wants the latest frame) and the
//! learner's messages (never dropped; numbered in arrival order so that the learner commits
//! them in that order whichever worker finishes first).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};

use crate::daemon::shutdown::Shutdown;
use crate::daemon::topics::Route;

/// Learner-bound messages allowed to wait. QoS 1 learn messages are in practice bounded by the
/// broker's inflight window (acknowledged only once durable); this cap stops a flood of QoS 0
/// learn messages.
pub const LEARNER_QUEUE: u64 = 1024;

/// Bytes of learner-bound payloads allowed to wait before the MQTT loop stops reading from the
/// broker ([`WorkQueue::learner_full`]). After a restart every peer's retained head arrives at
/// once, megabytes each, faster than the learner merges them, and the broker's in-flight
/// window did not bound them (70 slda heads, 470 MB, were seen queued): TCP holds the rest.
pub const LEARNER_QUEUE_BYTES: u64 = 64 << 20;

/// How often an idle worker looks at the shutdown token.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// An inbound message with its route and arrival time.
#[derive(Debug)]
pub struct Job {
    pub publish: Publish,
    pub route: Route,
    pub received: Instant,
    /// A live stream's window, cut by the intake ([`crate::daemon::stream`]): the input, in
    /// place of the payload.
    pub window: Option<Box<crate::daemon::stream::StreamWindow>>,
}

/// What a worker takes from the queue.
#[derive(Debug)]
pub enum Task {
    /// An inference request.
    Infer(Job),
    /// A message for the learner, with its place in arrival order.
    Learner { seq: u64, job: Job },
}

/// Why a learner-bound message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many waiting, and the message is QoS 0 (no backpressure possible).
    Busy,
    /// Shutting down: left unacknowledged, the broker redelivers it after the restart.
    Closed,
}

#[derive(Debug, Default)]
struct Lanes {
    infer: VecDeque<Job>,
    learner: VecDeque<(u64, Job)>,
    next_seq: u64,
    /// Alternates the lanes when both have work, so neither starves the other.
    learner_turn: bool,
}

/// The two-lane queue. Pushing and the workers' decision to stop happen under one lock, so no
/// message can be queued after the last worker has left.
#[derive(Debug)]
pub struct WorkQueue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    infer_cap: usize,
    shutdown: Shutdown,
    /// Learner-bound messages queued or on their way to the learner.
    learner_depth: AtomicU64,
    /// Their payload bytes.
    learner_bytes: AtomicU64,
}

impl WorkQueue {
    /// An empty queue whose inference lane holds at most `infer_cap` requests.
    pub fn new(infer_cap: usize, shutdown: Shutdown) -> WorkQueue {
        WorkQueue {
            lanes: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            infer_cap: infer_cap.max(1),
            shutdown,
            learner_depth: AtomicU64::new(0),
            learner_bytes: AtomicU64::new(0),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an inference request; returns the one dropped to make room, if any. `Err` gives
    /// the request back when shutting down.
    pub fn push_infer(&self, job: Job) -> Result<Option<Job>, Job> {
        let mut l = self.lanes();
        if self.shutdown.is_triggered() {
            return Err(job);
        }
        let dropped = if l.infer.len() >= self.infer_cap {
            l.infer.pop_front()
        } else {
            None
        };
        l.infer.push_back(job);
        drop(l);
        self.ready.notify_one();
        Ok(dropped)
    }

    /// Queues a message for the learner with the next sequence number; a refused one comes
    /// back (boxed: refusals are rare, the `Ok` path stays small).
    pub fn push_learner(&self, job: Job) -> Result<u64, (Refused, Box<Job>)> {
        let mut l = self.lanes();
        if self.shutdown.is_triggered() {
            return Err((Refused::Closed, Box::new(job)));
        }
        if job.publish.qos == QoS::AtMostOnce
            && self.learner_depth.load(Ordering::Relaxed) >= LEARNER_QUEUE
        {
            return Err((Refused::Busy, Box::new(job)));
        }
        let bytes = job.publish.payload.len() as u64;
        let seq = l.next_seq;
        l.next_seq += 1;
        l.learner.push_back((seq, job));
        self.learner_depth.fetch_add(1, Ordering::Relaxed);
        self.learner_bytes.fetch_add(bytes, Ordering::Relaxed);
        drop(l);
        self.ready.notify_one();
        Ok(seq)
    }

    /// Takes the next task, waiting for one; `None` once shutdown has begun and both lanes are
    /// empty.
    pub fn pop(&self) -> Option<Task> {
        let mut l = self.lanes();
        loop {
            let learner_first = l.learner_turn || l.infer.is_empty();
            let task = if learner_first {
                l.learner
                    .pop_front()
                    .map(|(seq, job)| Task::Learner { seq, job })
                    .or_else(|| l.infer.pop_front().map(Task::Infer))
            } else {
                l.infer.pop_front().map(Task::Infer)
            };
            if let Some(t) = task {
                l.learner_turn = !matches!(t, Task::Learner { .. });
                return Some(t);
            }
            if self.shutdown.is_triggered() {
                return None;
            }
            l = self
                .ready
                .wait_timeout(l, IDLE_CHECK)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Called by the learner for each message it has applied (`bytes`: its payload's length).
    pub fn learner_done(&self, bytes: usize) {
        self.learner_depth.fetch_sub(1, Ordering::Relaxed);
        self.learner_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Whether the learner's backlog holds [`LEARNER_QUEUE_BYTES`] or more: the MQTT loop
    /// stops reading until it does not.
    pub fn learner_full(&self) -> bool {
        self.learner_bytes.load(Ordering::Relaxed) >= LEARNER_QUEUE_BYTES
    }

    /// Inference requests waiting.
    pub fn infer_len(&self) -> usize {
        self.lanes().infer.len()
    }

    /// Learner-bound messages queued or on their way.
    pub fn learner_depth(&self) -> u64 {
        self.learner_depth.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(topic: &str, qos: QoS) -> Job {
        Job {
            window: None,
            publish: Publish::new(topic, qos, vec![]),
            route: Route::Infer,
            received: Instant::now(),
        }
    }

    fn topic(t: Option<Task>) -> Option<String> {
        t.map(|t| match t {
            Task::Infer(j) | Task::Learner { job: j, .. } => j.publish.topic,
        })
    }

    #[test]
    fn infer_lane_drops_oldest_and_drains_after_shutdown() {
        let s = Shutdown::new();
        let q = WorkQueue::new(2, s.clone());
        assert!(q
            .push_infer(job("a", QoS::AtMostOnce))
            .expect("a")
            .is_none());
        assert!(q
            .push_infer(job("b", QoS::AtMostOnce))
            .expect("b")
            .is_none());
        let dropped = q.push_infer(job("c", QoS::AtMostOnce)).expect("c");
        assert_eq!(dropped.map(|j| j.publish.topic).as_deref(), Some("a"));
        s.trigger();
        assert!(q.push_infer(job("d", QoS::AtMostOnce)).is_err());
        assert_eq!(topic(q.pop()).as_deref(), Some("b"));
        assert_eq!(topic(q.pop()).as_deref(), Some("c"));
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_learner_backlog_of_many_bytes_is_full_until_applied() {
        let q = WorkQueue::new(8, Shutdown::new());
        let big = |t: &str| Job {
            publish: Publish::new(
                t,
                QoS::AtLeastOnce,
                vec![0u8; (LEARNER_QUEUE_BYTES / 2) as usize],
            ),
            ..job(t, QoS::AtLeastOnce)
        };
        q.push_learner(big("a")).expect("a");
        assert!(!q.learner_full());
        q.push_learner(big("b")).expect("QoS 1 always queues");
        assert!(q.learner_full());
        q.learner_done((LEARNER_QUEUE_BYTES / 2) as usize);
        assert!(!q.learner_full());
    }

    #[test]
    fn learner_lane_numbers_in_order_alternates_and_pushes_back() {
        let s = Shutdown::new();
        let q = WorkQueue::new(8, s.clone());
        assert_eq!(q.push_learner(job("l0", QoS::AtLeastOnce)).ok(), Some(0));
        assert_eq!(q.push_learner(job("l1", QoS::AtLeastOnce)).ok(), Some(1));
        q.push_infer(job("i0", QoS::AtMostOnce)).expect("i0");
        // Infer first (it is not the learner's turn at the start), then alternate.
        assert_eq!(topic(q.pop()).as_deref(), Some("i0"));
        match q.pop() {
            Some(Task::Learner { seq, job }) => {
                assert_eq!((seq, job.publish.topic.as_str()), (0, "l0"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.learner_depth(), 2);
        q.learner_done(0);
        for _ in 0..LEARNER_QUEUE {
            q.push_learner(job("x", QoS::AtLeastOnce))
                .expect("QoS 1 always queues");
        }
        let (why, _) = q.push_learner(job("y", QoS::AtMostOnce)).expect_err("busy");
        assert_eq!(why, Refused::Busy);
        s.trigger();
        let (why, _) = q
            .push_learner(job("z", QoS::AtLeastOnce))
            .expect_err("closed");
        assert_eq!(why, Refused::Closed);
    }
}
