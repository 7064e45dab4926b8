//! The learner: one thread that owns the head, the stored samples, the state directory and the
//! fleet peers. It receives labeled embeddings and commands from the workers, puts them back in
//! arrival order, commits samples durably (WAL fsync before the MQTT ack), runs commands,
//! snapshots, refreshes the prediction snapshot and publishes heads, info and stats. It holds
//! no backbone and no network client: its unit tests feed it synthetic embeddings.

mod commands;
mod order;
pub mod record;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};

use crate::adapt::handle::AdaptHandle;
use crate::cbor::{Bytes, F32s};
use crate::config::Settings;
use crate::daemon::broker::BrokerInUse;
use crate::daemon::error::RequestError;
use crate::daemon::outbox::Outbox;
use crate::daemon::queue::WorkQueue;
use crate::daemon::reply::{
    BackboneSummary, FleetCounts, HeadSummary, Info, Learned, LearnerFigures, QueueDepths,
};
use crate::daemon::request::{Command, MAX_HEAD_BYTES};
use crate::daemon::serving::PredictorSlot;
use crate::daemon::stats::{bump, Stats};
use crate::fleet::{Accepted, FleetState, Follow};
use crate::head::{Expect, Head, HeadError};
use crate::state::ledger::Ledger;
use crate::state::recovery::{Dedup, Restored};
use crate::state::samples::SampleStore;
use crate::state::store::{LearnRecord, SnapshotData, Store, WalRecord};

pub use order::InOrder;

/// Most steps applied per turn (samples among them are committed with one fsync).
const BATCH: usize = 64;
/// Format tag of snapshots.
const SNAPSHOT_FORMAT: &str = "adaptd-state-1";

/// One learner-bound message, prepared by a worker, with its place in arrival order.
#[derive(Debug)]
pub struct Step {
    /// Arrival order, from the work queue.
    pub seq: u64,
    /// The message, acknowledged by the learner once its effect is durable.
    pub publish: Publish,
    pub work: Work,
}

/// What a step asks of the learner.
#[derive(Debug)]
pub enum Work {
    /// A labeled embedding from `learn` or `feedback`.
    Sample(Sample),
    /// A learn or feedback message that cannot succeed: answered and acknowledged in order.
    Refused {
        id: Option<String>,
        error: RequestError,
    },
    /// A command on `{root}/cmd/<name>`, parsed (or not) by the worker.
    Command(Result<Command, RequestError>),
    /// A fleet peer's signed head, with the peer's device id.
    Peer(String),
    /// A fleet peer's signed delta, with the peer's device id.
    PeerDelta(String),
    /// The worker failed to prepare the message: left unacknowledged, so it is redelivered.
    Lost,
}

/// A labeled embedding ready to commit.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub label: String,
    pub embedding: Vec<f32>,
    /// Recognises a broker's redelivery of the same message ([`crate::daemon::workers`]).
    pub key: [u8; 16],
}

/// What the learner shares with the rest of the daemon.
pub struct Context {
    pub settings: Settings,
    pub backbone: BackboneSummary,
    /// The broker in use, for `{root}/info`.
    pub broker: BrokerInUse,
    pub outbox: Arc<Outbox>,
    pub predictor: Arc<PredictorSlot>,
    pub adapt: Arc<AdaptHandle>,
    pub queue: Arc<WorkQueue>,
    pub stats: Arc<Stats>,
    /// The last prediction and Home Assistant's entities, which follow the classes.
    pub dashboard: Arc<crate::daemon::dashboard::Dashboard>,
}

/// What a head file (imported, merged, rolled back to, or a peer's) must match: this backbone
/// and its embedding size.
fn expect_head(backbone: &BackboneSummary) -> Expect<'_> {
    Expect {
        backbone_sha256: Some(&backbone.sha256),
        dim: Some(backbone.embedding_dim),
        max_bytes: MAX_HEAD_BYTES,
    }
}

/// The learner's state.
pub struct Learner {
    ctx: Context,
    head: Head,
    samples: SampleStore,
    /// Learned samples by id, for `cmd/unlearn` and `cmd/relabel`.
    ledger: Ledger,
    store: Store,
    dedup: Dedup,
    /// Fleet identity and peers (the key exists even without a group).
    fleet: FleetState,
    /// Prequential accuracy overall and per class (`training.json`).
    record: record::Record,
    since_snapshot: u64,
    unpublished: u64,
    /// The local head changed: `{root}/head`, the fleet envelope and `info` are due.
    head_dirty: bool,
    /// Only the fleet changed (a peer's head): `info` is due, the local head is not
    /// republished (at fleet scale every peer update would otherwise make every board resend
    /// its own head).
    info_dirty: bool,
    predictor_stale: bool,
    last_publish: Instant,
    /// Predictor refreshes (possibly O(d³)).
    refresh: DutyCycle,
    /// `auto`'s candidates (8 d × d solves).
    candidates: DutyCycle,
    last_stats: Instant,
    /// Incremented on every loop turn and step: the watchdog checks it moves.
    pub heartbeat: Arc<AtomicU64>,
}

/// An expensive step kept to about 10% of the wall clock: due once ten times its last cost
/// has passed since it last ran.
struct DutyCycle {
    last: Instant,
    cost: Duration,
}

impl DutyCycle {
    fn new(now: Instant) -> DutyCycle {
        DutyCycle {
            last: now,
            cost: Duration::ZERO,
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.cost * 10
    }

    /// Records a run that began at `started` and has just ended.
    fn ran(&mut self, started: Instant) {
        self.cost = started.elapsed();
        self.last = Instant::now();
    }
}

impl Learner {
    /// A learner over restored state.
    pub fn new(ctx: Context, restored: Restored, store: Store, mut fleet: FleetState) -> Learner {
        let now = Instant::now();
        if fleet.config.enabled() {
            // Peers' heads from the state directory: predictions start with the fleet head
            // before the broker resends anything (the retained heads then change nothing).
            fleet.peers.restore(
                &expect_head(&ctx.backbone),
                restored.head.algorithm(),
                &fleet.config.group,
            );
        }
        let record = record::Record::load(&store.dir().join(crate::state::files::TRAINING));
        let mut head = restored.head;
        head.recall(&restored.samples.iter().collect::<Vec<_>>());
        Learner {
            ctx,
            head,
            samples: restored.samples,
            ledger: restored.ledger,
            store,
            dedup: restored.dedup,
            fleet,
            record,
            since_snapshot: 0,
            unpublished: 0,
            head_dirty: true,
            info_dirty: false,
            predictor_stale: true,
            last_publish: now - Duration::from_secs(3600),
            refresh: DutyCycle::new(now),
            candidates: DutyCycle::new(now),
            last_stats: now,
            heartbeat: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The thread body: applies steps in arrival order until every sender is gone (the
    /// workers end after shutdown, having handed over all they took), then snapshots and
    /// publishes.
    pub fn run(mut self, rx: Receiver<Step>) {
        self.refresh_predictor();
        self.publish_head_and_info();
        let mut order = InOrder::default();
        let mut open = true;
        while open {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(step) => order.insert(step),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            while let Ok(step) = rx.try_recv() {
                order.insert(step);
            }
            loop {
                let ready = order.take_ready(BATCH);
                if ready.is_empty() {
                    break;
                }
                self.apply(ready);
            }
            self.housekeeping(!open);
        }
        if !order.is_empty() {
            // Only a step lost by a worker leaves a gap; what follows it was never acked.
            tracing::error!(
                waiting = order.len(),
                "learner stopped with messages after a gap"
            );
        }
        if let Err(e) = self.snapshot() {
            tracing::error!("final snapshot failed: {e:#}");
        }
        self.refresh_predictor();
        self.publish_head_and_info();
    }

    /// Applies steps given in arrival order: consecutive samples are committed with one fsync;
    /// a command or peer head sees every sample that arrived before it.
    pub fn apply(&mut self, steps: Vec<Step>) {
        let mut pending: Vec<(Publish, Sample)> = Vec::new();
        for step in steps {
            // Progress per message, not per batch: a long backlog must not starve the watchdog.
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            self.ctx.queue.learner_done(step.publish.payload.len());
            let publish = step.publish;
            match step.work {
                Work::Sample(s) => {
                    let seen = |k: &[u8; 16]| {
                        self.dedup.contains(k) || pending.iter().any(|(_, p)| p.key == *k)
                    };
                    if publish.dup && seen(&s.key) {
                        bump(&self.ctx.stats.duplicates);
                        self.ctx.outbox.ack(&publish);
                    } else if let Err(e) = self.class_room(&s.label, &pending) {
                        // Refused before the log: nothing changes, and it is never retried.
                        self.ctx.outbox.refuse(&publish.topic, Some(&s.id), &e);
                        self.ctx.outbox.ack(&publish);
                    } else {
                        pending.push((publish, s));
                    }
                }
                Work::Refused { id, error } => {
                    // A message that can never succeed is acknowledged: redelivering it forever
                    // would help nobody.
                    self.ctx
                        .outbox
                        .refuse(&publish.topic, id.as_deref(), &error);
                    self.ctx.outbox.ack(&publish);
                }
                Work::Command(cmd) => {
                    self.commit(std::mem::take(&mut pending));
                    self.command(&publish, cmd);
                }
                Work::Peer(peer) => {
                    self.commit(std::mem::take(&mut pending));
                    self.peer_head(&peer, &publish, false);
                }
                Work::PeerDelta(peer) => {
                    self.commit(std::mem::take(&mut pending));
                    self.peer_head(&peer, &publish, true);
                }
                Work::Lost => {}
            }
        }
        self.commit(pending);
    }

    /// Whether `label` may be learned: a new class needs room under `head.max_classes`,
    /// counting the new labels of samples not yet committed.
    fn class_room(&self, label: &str, pending: &[(Publish, Sample)]) -> Result<(), RequestError> {
        let known = |l: &str| self.head.class_stats(l).is_some();
        if known(label) || pending.iter().any(|(_, p)| p.label == label) {
            return Ok(());
        }
        let limit = self.ctx.settings.head.max_classes;
        let mut new: Vec<&str> = pending
            .iter()
            .map(|(_, p)| p.label.as_str())
            .filter(|l| !known(l))
            .collect();
        new.sort_unstable();
        new.dedup();
        if self.head.classes().len() + new.len() >= limit {
            return Err(RequestError::Head(HeadError::TooManyClasses { limit }));
        }
        Ok(())
    }

    /// Logs the batch durably, acknowledges it, then learns it.
    fn commit(&mut self, batch: Vec<(Publish, Sample)>) {
        if batch.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for (publish, s) in batch {
            records.push(WalRecord::Learn(LearnRecord {
                seq: self.store.next_seq(),
                label: s.label,
                embedding: F32s(s.embedding),
                key: Some(s.key),
                id: Some(s.id.clone()),
            }));
            sources.push((publish, s.id));
        }
        if let Err(e) = self.store.append(&records) {
            // Not durable: no ack, so the broker redelivers after a restart.
            tracing::error!("write-ahead log append failed: {e}");
            for (publish, id) in &sources {
                self.ctx.outbox.refuse(
                    &publish.topic,
                    Some(id),
                    &RequestError::Storage(std::io::Error::new(e.kind(), e.to_string())),
                );
            }
            return;
        }
        let predictor = self.ctx.predictor.get();
        // The input transform's buffer, reused across the batch.
        let mut z = Vec::new();
        let mut learned = Vec::new();
        let mut replies = Vec::new();
        let records = records.iter().filter_map(|r| match r {
            WalRecord::Learn(l) => Some(l),
            WalRecord::Unlearn(_) => None,
        });
        for (r, (publish, id)) in records.zip(sources) {
            self.ctx.outbox.ack(&publish);
            let x = &r.embedding.0;
            if !predictor.is_empty() {
                // The top class only: no softmax, no open-set score (the record needs neither).
                if let Some(best) = predictor.top1(x, &mut z) {
                    bump(&self.ctx.stats.prequential_total);
                    let right = predictor.labels().get(best) == Some(&r.label);
                    if right {
                        bump(&self.ctx.stats.prequential_correct);
                    }
                    // A class the predictor does not know yet cannot be right: its first
                    // sample says nothing about how well the class is learned.
                    if predictor.labels().contains(&r.label) {
                        self.record.observe(&r.label, right);
                    }
                }
            }
            if let Err(e) = self.head.update(x, &r.label) {
                // The record is in the WAL but the head refused it (e.g. class limit): the
                // replay refuses it the same way. Report it.
                self.ctx
                    .outbox
                    .refuse(&publish.topic, Some(&id), &RequestError::Head(e));
                continue;
            }
            self.samples.add(&r.label, x);
            self.ledger.insert(&id, &r.label, x);
            if let Some(k) = r.key {
                self.dedup.insert(k);
            }
            bump(&self.ctx.stats.learned);
            learned.push((id.clone(), r.label.clone()));
            self.since_snapshot += 1;
            self.unpublished += 1;
            self.head_dirty = true;
            self.predictor_stale = true;
            let samples = self.head.class_stats(&r.label).map_or(0, |c| c.count());
            replies.push((samples, self.head.version()));
        }
        // The end of a burst: predictions use what was just learned before it is confirmed,
        // so a client that sees `learned` and then asks gets an answer that knows it. While
        // more is queued, refreshes keep to the duty cycle of `housekeeping`.
        if self.predictor_stale && self.ctx.queue.learner_depth() == 0 {
            self.refresh_predictor();
        }
        for ((id, label), (samples, head_version)) in learned.iter().zip(replies) {
            self.ctx.outbox.reply(
                &self.ctx.outbox.topics.learned,
                &Learned {
                    id,
                    label,
                    samples,
                    head_version,
                },
            );
        }
        self.snapshot_when_due();
        // The select's options first: Home Assistant refuses a state that is not one of them.
        self.classes_to_dashboard();
        // A correction of the last prediction shows on the dashboard.
        for (id, label) in learned {
            self.ctx.dashboard.corrected(&id, &label);
        }
    }

    /// Snapshots once `state.snapshot_every_samples` changes are only in the write-ahead log.
    fn snapshot_when_due(&mut self) {
        if self.since_snapshot >= self.ctx.settings.state.snapshot_every_samples {
            if let Err(e) = self.snapshot() {
                tracing::error!("snapshot failed: {e:#}");
            }
        }
    }

    /// The dashboard's correcting select offers the head's classes.
    fn classes_to_dashboard(&self) {
        let names = self.head.classes().into_iter().map(|c| c.name).collect();
        self.ctx.dashboard.set_classes(names);
    }

    fn snapshot(&mut self) -> std::io::Result<()> {
        let head = self
            .head
            .to_bytes()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT.into(),
            last_seq: self.store.last_seq(),
            head: Bytes(head),
            samples: Bytes(self.samples.to_bytes()),
            dedup: self.dedup.keys().copied().collect(),
            ledger: Bytes(self.ledger.to_bytes()),
        };
        self.store.snapshot(&data, self.head.version())?;
        self.since_snapshot = 0;
        // A statistic, not state: losing the samples since the last snapshot costs nothing.
        if let Err(e) = self
            .record
            .save(&self.store.dir().join(crate::state::files::TRAINING))
        {
            tracing::warn!("cannot save the training record: {e}");
        }
        Ok(())
    }

    fn refresh_predictor(&mut self) {
        let started = Instant::now();
        let full = self.ctx.adapt.wants_covariance();
        if self.fleet.peers.heads.is_empty() {
            self.ctx.predictor.set(self.head.snapshot());
            self.ctx
                .adapt
                .set_head_domain(crate::adapt::HeadDomain::of(&self.head, full));
        } else {
            // Predict with the fleet head: local statistics merged with every peer's.
            let fleet = self.fleet.peers.fleet_head(&self.head);
            self.ctx.predictor.set(fleet.snapshot());
            self.ctx
                .adapt
                .set_head_domain(crate::adapt::HeadDomain::of(&fleet, full));
        }
        self.refresh.ran(started);
        self.predictor_stale = false;
    }

    /// `{root}/head` and the fleet envelope when the local head changed, then `info`; what
    /// fails stays dirty and is retried on the next turn.
    fn publish_head_and_info(&mut self) {
        if self.head_dirty && !self.publish_local_head() {
            return;
        }
        if self
            .ctx
            .outbox
            .retain(&self.ctx.outbox.topics.info, &self.info())
        {
            self.head_dirty = false;
            self.info_dirty = false;
            self.unpublished = 0;
            self.last_publish = Instant::now();
        }
    }

    /// The local head on `{root}/head` and, with a fleet group, sealed on the group topic
    /// (retained) and, with deltas on, what was learned since the last one on the delta topic;
    /// false if the outbox refused one of the retained ones.
    fn publish_local_head(&mut self) -> bool {
        let outbox = &self.ctx.outbox;
        match self.head.to_bytes() {
            Ok(bytes) => {
                if !outbox.publish(&outbox.topics.head, QoS::AtLeastOnce, true, bytes) {
                    return false;
                }
            }
            Err(e) => tracing::error!("cannot encode head: {e}"),
        }
        let Some(f) = &outbox.topics.fleet else {
            return true;
        };
        let (device, group) = (&self.ctx.settings.device_id, &self.fleet.config.group);
        let env = match self.fleet.identity.seal(device, group, &self.head) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!("cannot seal the fleet head: {e}");
                return true;
            }
        };
        let whole = env.len();
        if !outbox.publish(&f.mine, QoS::AtLeastOnce, true, env) {
            return false;
        }
        if f.deltas {
            match self
                .fleet
                .identity
                .next_delta(device, group, &self.head, whole)
            {
                // Not retained: a board that misses it fetches the retained head.
                Ok(Some(d)) => {
                    outbox.publish(&f.my_deltas, QoS::AtLeastOnce, false, d);
                }
                // The same head again (an earlier `info` was refused): peers have it.
                Ok(None) => return true,
                Err(e) => tracing::error!("cannot seal the fleet delta: {e}"),
            }
            self.head.start_journal();
        }
        true
    }

    /// The `{root}/info` document.
    fn info(&self) -> Info<'_> {
        Info {
            adaptd: env!("CARGO_PKG_VERSION"),
            device_id: &self.ctx.settings.device_id,
            root: &self.ctx.outbox.topics.root,
            backbone: &self.ctx.backbone,
            broker: &self.ctx.broker,
            head: HeadSummary {
                algorithm: self.head.algorithm(),
                version: self.head.version(),
                samples: self.head.samples(),
                training: self
                    .record
                    .summary(self.head.classes().iter().map(|c| c.name.as_str())),
                auto: self.head.auto_summary(),
                classes: self.head.classes(),
            },
            stored_samples: self.samples.len(),
            adapt: self.ctx.adapt.status_json(),
            fleet: self.fleet.info(),
            homeassistant: self.ctx.dashboard.info(),
        }
    }

    /// A fleet peer's signed head or delta: verified, then merged into the prediction head;
    /// a delta that cannot be applied subscribes to the peer's retained head until it comes.
    fn peer_head(&mut self, peer: &str, publish: &Publish, delta: bool) {
        let expect = expect_head(&self.ctx.backbone);
        let (payload, algorithm) = (&publish.payload, self.head.algorithm());
        let (result, follow) = if delta {
            self.fleet.on_delta(peer, payload, &expect, algorithm)
        } else {
            self.fleet.on_peer(peer, payload, &expect, algorithm)
        };
        match follow {
            Follow::Nothing => {}
            Follow::Fetch => self.fetch(peer),
            Follow::Fetched => {
                if let Some(f) = &self.ctx.outbox.topics.fleet {
                    self.ctx.outbox.subscribe(&f.head_of(peer), false);
                }
            }
        }
        match result {
            Ok(Accepted::Updated) => {
                tracing::info!(peer, "fleet head updated");
                self.info_dirty = true;
                self.predictor_stale = true;
                // Predictions follow peers at once, not at the next duty-cycle slot; during a
                // burst of peer heads (a fleet reconnecting) refreshes keep to the duty cycle
                // of `housekeeping`, as for samples.
                if self.ctx.queue.learner_depth() == 0 {
                    self.refresh_predictor();
                }
            }
            Ok(Accepted::Unchanged) => {}
            Ok(Accepted::Fetch(version)) => {
                tracing::info!(peer, version, "fleet delta needs the peer's whole head");
            }
            Err(e) => {
                tracing::warn!(peer, delta, "rejected fleet head: {e}");
                self.ctx
                    .outbox
                    .refuse(&publish.topic, None, &RequestError::Fleet(e));
            }
        }
        self.ctx.outbox.ack(publish);
    }

    /// Subscribes to `peer`'s retained head (its delta could not be applied); retried from
    /// `housekeeping` while the request queue is full.
    fn fetch(&mut self, peer: &str) {
        if let Some(f) = &self.ctx.outbox.topics.fleet {
            if self.ctx.outbox.subscribe(&f.head_of(peer), true) {
                self.fleet.fetch_queued(peer);
            }
        }
    }

    fn housekeeping(&mut self, stopping: bool) {
        self.ctx.dashboard.tick();
        self.fleet.peers.save_due(stopping);
        for peer in self.fleet.fetches_to_queue() {
            self.fetch(&peer);
        }
        let publish = self.ctx.settings.publish.clone();
        if self.predictor_stale {
            // Bound the time spent on (possibly O(d³)) snapshots to ~10% of the wall clock.
            if stopping || self.refresh.due() {
                self.refresh_predictor();
            }
        }
        // `auto`'s candidates (8 d × d solves) score the labeled samples that follow; they are
        // not needed to predict, so they wait until nothing is queued, and take ~10% of the
        // wall clock at most, as snapshots do.
        if !stopping
            && !self.predictor_stale
            && self.head.candidates_due()
            && self.ctx.queue.learner_depth() == 0
            && self.candidates.due()
        {
            let started = Instant::now();
            if self.head.refresh_candidates() {
                // The leave-one-out check chose another candidate: predict with it.
                self.predictor_stale = true;
                self.head_dirty = true;
            }
            self.candidates.ran(started);
        }
        let due = self.last_publish.elapsed() >= publish.head_interval
            || self.unpublished >= publish.head_every_samples;
        if (self.head_dirty || self.info_dirty) && due && !self.predictor_stale {
            self.publish_head_and_info();
        }
        if self.last_stats.elapsed() >= publish.stats_interval {
            self.last_stats = Instant::now();
            let doc = self.ctx.stats.report(LearnerFigures {
                queues: QueueDepths {
                    infer: self.ctx.queue.infer_len(),
                    learn: self.ctx.queue.learner_depth(),
                },
                head_version: self.head.version(),
                classes: self.head.classes().len(),
                auto: self.head.auto_summary(),
                stored_samples: self.samples.len(),
                stored_samples_bytes: self.samples.heap_bytes(),
                connected: self.ctx.outbox.is_connected(),
                adapt: self.ctx.adapt.status_json(),
                fleet: FleetCounts {
                    peers: self.fleet.peers.heads.len(),
                    rejected: self.fleet.peers.rejected,
                },
            });
            self.ctx.outbox.reply(&self.ctx.outbox.topics.stats, &doc);
        }
    }
}
