//! The learner: one thread that owns the head, the stored samples and the state directory; it
//! learns labeled samples durably (WAL fsync before the MQTT ack), runs commands, snapshots,
//! refreshes the prediction snapshot and publishes heads, info and stats.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cbor::{Bytes, F32s};
use crate::daemon::error::RequestError;
use crate::daemon::service::{
    check_label, check_size, embed_input, parse_request, sniff_id, Route, Shared,
};
use crate::daemon::stats::bump;
use crate::fleet::{Accepted, FleetState};
use crate::head::{Algorithm, Expect, Head, HeadConfig};
use crate::state::samples::SampleStore;
use crate::state::store::{LearnRecord, Recovered, SnapshotData, Store};

/// Message keys remembered to drop broker redeliveries.
const DEDUP_KEYS: usize = 8192;
/// Most learn messages committed with one fsync.
const BATCH: usize = 64;
/// Longest a prepared sample waits for its fsync and acknowledgement within a batch.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Largest head file accepted by import/merge/rollback.
const MAX_HEAD_BYTES: usize = 64 * 1024 * 1024;
/// Format tag of snapshots.
const SNAPSHOT_FORMAT: &str = "adaptd-state-1";

/// What the learner thread receives.
#[derive(Debug)]
pub enum LearnerMsg {
    /// A learn, feedback or command message.
    Job(crate::daemon::service::Job),
    /// Finish queued work, snapshot, publish, stop.
    Stop,
}

/// Recently learned message keys (bounded).
#[derive(Debug, Default)]
struct Dedup {
    order: VecDeque<[u8; 16]>,
    set: HashSet<[u8; 16]>,
}

impl Dedup {
    fn insert(&mut self, k: [u8; 16]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > DEDUP_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    fn contains(&self, k: &[u8; 16]) -> bool {
        self.set.contains(k)
    }
}

/// The key that recognises a broker's redelivery (DUP) of a message already learned: topic and
/// payload. Not the packet identifier: mosquitto renumbers in-flight messages when it restores
/// sessions from its persistence file after a restart (tests/daemon.rs
/// `broker_restart_mid_stream_loses_nothing` learned a message twice with it). The price: an
/// identical message sent again on purpose is dropped if, and only if, it arrives as a DUP
/// redelivery while the first copy's key is still among the recent keys (docs/design.md).
fn message_key(p: &Publish) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(p.topic.as_bytes());
    h.update([0]);
    h.update(&p.payload);
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// A sample ready to be committed.
struct Pending {
    publish: Publish,
    id: String,
    label: String,
    embedding: Vec<f32>,
    key: [u8; 16],
}

/// The learner's state.
pub struct Learner {
    shared: Arc<Shared>,
    head: Head,
    samples: SampleStore,
    store: Store,
    dedup: Dedup,
    since_snapshot: u64,
    unpublished: u64,
    head_dirty: bool,
    predictor_stale: bool,
    last_publish: Instant,
    last_refresh: Instant,
    last_refresh_cost: Duration,
    last_stats: Instant,
    /// Fleet identity and peers (the key exists even without a group).
    fleet: FleetState,
    /// Incremented on every loop turn: the watchdog checks it moves.
    pub heartbeat: Arc<AtomicU64>,
}

/// The head and samples rebuilt from the state directory.
pub struct Restored {
    pub head: Head,
    pub samples: SampleStore,
    dedup: Dedup,
    /// Human-readable notes on what recovery found (torn WAL, corrupt snapshot).
    pub notes: Vec<String>,
}

/// Rebuilds the learner state: snapshot (or fallback head) + WAL replay.
pub fn restore(
    rec: Recovered,
    config: &HeadConfig,
    dim: usize,
    sha256: &str,
    samples_budget: u64,
) -> anyhow::Result<Restored> {
    let expect = Expect {
        backbone_sha256: Some(sha256),
        dim: Some(dim),
        max_bytes: usize::MAX,
    };
    let mut notes = Vec::new();
    let mut dedup = Dedup::default();
    let (mut head, mut samples) = match &rec.snapshot {
        Some(s) => {
            let head = if s.head.0.is_empty() {
                Head::new(config, dim, sha256)
            } else {
                Head::from_bytes(&s.head.0, &expect).map_err(|e| {
                    anyhow::anyhow!(
                        "the state directory holds a head this model cannot use ({e}); \
                         restore the model it was trained with, or move the state directory \
                         aside to start afresh"
                    )
                })?
            };
            let samples = SampleStore::from_bytes(&s.samples.0, dim, samples_budget, config.seed)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for k in &s.dedup {
                dedup.insert(*k);
            }
            (head, samples)
        }
        None => {
            let head = match &rec.fallback_head {
                Some(bytes) => Head::from_bytes(bytes, &expect)
                    .map_err(|e| anyhow::anyhow!("fallback head: {e}"))?,
                None => Head::new(config, dim, sha256),
            };
            (head, SampleStore::new(dim, samples_budget, config.seed))
        }
    };
    if let Some(c) = &rec.corrupt_snapshot {
        notes.push(c.clone());
    }
    if rec.torn_bytes > 0 {
        notes.push(format!(
            "cut {} bytes of torn or corrupt write-ahead log tail (never acknowledged)",
            rec.torn_bytes
        ));
    }
    if rec.removed_temp_files > 0 {
        notes.push(format!("removed {} temp file(s)", rec.removed_temp_files));
    }
    let replayed = rec.records.len();
    for r in rec.records {
        head.update(&r.embedding.0, &r.label)
            .map_err(|e| anyhow::anyhow!("replaying WAL record {}: {e}", r.seq))?;
        samples.add(&r.label, &r.embedding.0);
        if let Some(k) = r.key {
            dedup.insert(k);
        }
    }
    if replayed > 0 {
        notes.push(format!("replayed {replayed} write-ahead log record(s)"));
    }
    Ok(Restored {
        head,
        samples,
        dedup,
        notes,
    })
}

fn json_or_text(payload: &[u8], field: &str) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        return match v.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    Some(text.trim_matches('"').to_string())
}

impl Learner {
    /// A learner over restored state.
    pub fn new(
        shared: Arc<Shared>,
        restored: Restored,
        store: Store,
        fleet: FleetState,
    ) -> Learner {
        let now = Instant::now();
        Learner {
            shared,
            head: restored.head,
            samples: restored.samples,
            store,
            dedup: restored.dedup,
            since_snapshot: 0,
            unpublished: 0,
            head_dirty: true,
            predictor_stale: true,
            last_publish: now - Duration::from_secs(3600),
            last_refresh: now,
            last_refresh_cost: Duration::ZERO,
            last_stats: now,
            fleet,
            heartbeat: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The thread body: process messages until `Stop`, then snapshot and publish.
    pub fn run(mut self, rx: Receiver<LearnerMsg>) {
        self.refresh_predictor();
        self.publish_head_and_info();
        let mut stop = false;
        while !stop {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    stop = true;
                    None
                }
            };
            let mut batch = Vec::new();
            if let Some(m) = first {
                batch.push(m);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            let mut pending = Vec::new();
            let mut since_commit = Instant::now();
            for m in batch {
                // On a slow board a batch of embeddings takes long: commit (fsync + ack) what
                // is ready at least every COMMIT_EVERY instead of only at the end.
                if !pending.is_empty() && since_commit.elapsed() >= COMMIT_EVERY {
                    self.commit(std::mem::take(&mut pending));
                    since_commit = Instant::now();
                }
                // Progress per message, not per batch: a backlog of slow embeddings on a board
                // must not starve the watchdog.
                self.heartbeat.fetch_add(1, Ordering::Relaxed);
                match m {
                    LearnerMsg::Stop => stop = true,
                    LearnerMsg::Job(job) => {
                        self.shared.learn_depth.fetch_sub(1, Ordering::Relaxed);
                        match job.route.clone() {
                            Route::Learn(label) => {
                                if let Some(p) = self.prepare_learn(job.publish, label) {
                                    pending.push(p);
                                }
                            }
                            Route::Feedback => {
                                if let Some(p) = self.prepare_feedback(job.publish) {
                                    pending.push(p);
                                }
                            }
                            Route::Command(name) => {
                                // Commands see every sample received before them.
                                self.commit(std::mem::take(&mut pending));
                                self.command(&name, job.publish);
                            }
                            Route::Peer(peer) => {
                                self.commit(std::mem::take(&mut pending));
                                self.peer_head(&peer, job.publish);
                            }
                            Route::Infer | Route::Ignore => {}
                        }
                    }
                }
            }
            self.commit(pending);
            self.housekeeping(stop);
        }
        if let Err(e) = self.snapshot() {
            tracing::error!("final snapshot failed: {e:#}");
        }
        self.refresh_predictor();
        self.publish_head_and_info();
    }

    /// Decodes and embeds a learn message; on failure replies with an error and acks it
    /// (a malformed message redelivered forever would help nobody).
    fn prepare_learn(&mut self, publish: Publish, topic_label: Option<String>) -> Option<Pending> {
        bump(&self.shared.stats.learn_received);
        let key = message_key(&publish);
        if publish.dup && self.dedup.contains(&key) {
            bump(&self.shared.stats.duplicates);
            self.shared.ack(&publish);
            return None;
        }
        let result = (|| {
            check_size(
                &publish.payload,
                self.shared.settings.service.max_payload_bytes,
            )?;
            let req = parse_request(&publish.payload)?;
            let label = match (topic_label, req.label) {
                (Some(_), Some(_)) => {
                    return Err(RequestError::BadRequest(
                        "label given in both topic and payload".into(),
                    ))
                }
                (Some(l), None) | (None, Some(l)) => l,
                (None, None) => {
                    return Err(RequestError::BadRequest(format!(
                        "no label: publish to {}/learn/<label> or give \"label\" in JSON",
                        self.shared.topics.root
                    )))
                }
            };
            check_label(&label)?;
            let input = req
                .input
                .ok_or_else(|| RequestError::BadRequest("no image or tensor".into()))?;
            let embedding = embed_input(&self.shared.embedder, &input)?;
            Ok((req.id, label, embedding))
        })();
        match result {
            Ok((id, label, embedding)) => Some(Pending {
                id: id.unwrap_or_else(|| self.shared.new_id()),
                publish,
                label,
                embedding,
                key,
            }),
            Err(e) => {
                self.shared
                    .reply_error(&publish.topic, sniff_id(&publish.payload).as_deref(), &e);
                self.shared.ack(&publish);
                None
            }
        }
    }

    fn prepare_feedback(&mut self, publish: Publish) -> Option<Pending> {
        bump(&self.shared.stats.learn_received);
        let key = message_key(&publish);
        if publish.dup && self.dedup.contains(&key) {
            bump(&self.shared.stats.duplicates);
            self.shared.ack(&publish);
            return None;
        }
        let result = (|| {
            check_size(&publish.payload, 64 * 1024)?;
            if publish.payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(RequestError::BadJson(
                    "feedback is a JSON object {\"id\": …, \"label\": …}".into(),
                ));
            }
            let req = parse_request(&publish.payload)?;
            if req.input.is_some() {
                return Err(RequestError::BadRequest(
                    "feedback carries only id and label".into(),
                ));
            }
            let id = req.id.ok_or_else(|| {
                RequestError::BadRequest("feedback needs the prediction id".into())
            })?;
            let label = req
                .label
                .ok_or_else(|| RequestError::BadRequest("feedback needs a label".into()))?;
            check_label(&label)?;
            let embedding = self
                .shared
                .ring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .ok_or_else(|| RequestError::UnknownId(id.clone()))?;
            Ok((id, label, embedding.as_ref().clone()))
        })();
        match result {
            Ok((id, label, embedding)) => Some(Pending {
                publish,
                id,
                label,
                embedding,
                key,
            }),
            Err(e) => {
                self.shared
                    .reply_error(&publish.topic, sniff_id(&publish.payload).as_deref(), &e);
                self.shared.ack(&publish);
                None
            }
        }
    }

    /// Logs the batch durably, acknowledges it, then learns it.
    fn commit(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for p in batch {
            records.push(LearnRecord {
                seq: self.store.next_seq(),
                label: p.label,
                embedding: F32s(p.embedding),
                key: Some(p.key),
            });
            sources.push((p.publish, p.id));
        }
        if let Err(e) = self.store.append(&records) {
            // Not durable: no ack, so the broker redelivers after a restart.
            tracing::error!("write-ahead log append failed: {e}");
            for (publish, id) in &sources {
                self.shared.reply_error(
                    &publish.topic,
                    Some(id),
                    &RequestError::Storage(std::io::Error::new(e.kind(), e.to_string())),
                );
            }
            return;
        }
        let predictor = self.shared.predictor();
        for (r, (publish, id)) in records.iter().zip(sources) {
            self.shared.ack(&publish);
            let x = &r.embedding.0;
            if !predictor.is_empty() {
                if let Ok(pred) = predictor.predict(x, 1) {
                    bump(&self.shared.stats.prequential_total);
                    if pred.top.first().is_some_and(|s| s.label == r.label) {
                        bump(&self.shared.stats.prequential_correct);
                    }
                }
            }
            if let Err(e) = self.head.update(x, &r.label) {
                // The record is in the WAL but the head refused it (e.g. class limit): the
                // replay refuses it the same way. Report it.
                self.shared
                    .reply_error(&publish.topic, Some(&id), &RequestError::Head(e));
                continue;
            }
            self.samples.add(&r.label, x);
            if let Some(k) = r.key {
                self.dedup.insert(k);
            }
            bump(&self.shared.stats.learned);
            self.since_snapshot += 1;
            self.unpublished += 1;
            self.head_dirty = true;
            self.predictor_stale = true;
            let samples = self.head.class_stats(&r.label).map_or(0, |c| c.count());
            self.shared.publish_json(
                &self.shared.topics.learned,
                &json!({
                    "id": id,
                    "label": r.label,
                    "samples": samples,
                    "head_version": self.head.version(),
                }),
            );
        }
        if self.since_snapshot >= self.shared.settings.state.snapshot_every_samples {
            if let Err(e) = self.snapshot() {
                tracing::error!("snapshot failed: {e:#}");
            }
        }
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
            dedup: self.dedup.order.iter().copied().collect(),
        };
        self.store.snapshot(&data, self.head.version())?;
        self.since_snapshot = 0;
        Ok(())
    }

    fn refresh_predictor(&mut self) {
        let started = Instant::now();
        let full = self.shared.adapt.wants_covariance();
        if self.fleet.peers.heads.is_empty() {
            self.shared.set_predictor(self.head.snapshot());
            self.shared
                .adapt
                .set_source(crate::adapt::Source::of(&self.head, full));
        } else {
            // Predict with the fleet head: local statistics merged with every peer's.
            let fleet = self.fleet.peers.fleet_head(&self.head);
            self.shared.set_predictor(fleet.snapshot());
            self.shared
                .adapt
                .set_source(crate::adapt::Source::of(&fleet, full));
        }
        self.last_refresh_cost = started.elapsed();
        self.last_refresh = Instant::now();
        self.predictor_stale = false;
    }

    fn publish_head_and_info(&mut self) {
        match self.head.to_bytes() {
            Ok(bytes) => {
                if !self
                    .shared
                    .publish(&self.shared.topics.head, QoS::AtLeastOnce, true, bytes)
                {
                    return; // stays dirty: retried on the next turn
                }
            }
            Err(e) => tracing::error!("cannot encode head: {e}"),
        }
        if let Some(f) = &self.shared.topics.fleet {
            let device = &self.shared.settings.device_id;
            match self
                .fleet
                .identity
                .seal(device, &self.fleet.config.group, &self.head)
            {
                Ok(env) => {
                    if !self.shared.publish(&f.mine, QoS::AtLeastOnce, true, env) {
                        return;
                    }
                }
                Err(e) => tracing::error!("cannot seal the fleet head: {e}"),
            }
        }
        let info = self.info();
        if self.shared.publish(
            &self.shared.topics.info,
            QoS::AtLeastOnce,
            true,
            info.to_string().into_bytes(),
        ) {
            self.head_dirty = false;
            self.unpublished = 0;
            self.last_publish = Instant::now();
        }
    }

    /// The `{root}/info` document.
    pub fn info(&self) -> serde_json::Value {
        let b = self.shared.embedder.backbone.info();
        let spec = &self.shared.embedder.model.spec.input;
        json!({
            "adaptd": env!("CARGO_PKG_VERSION"),
            "device_id": self.shared.settings.device_id,
            "root": self.shared.topics.root,
            "backbone": {
                "name": b.name,
                "sha256": b.sha256,
                "input": {
                    "shape": spec.shape,
                    "layout": format!("{:?}", spec.layout).to_lowercase(),
                    "mean": spec.mean,
                    "std": spec.std,
                },
                "embedding_dim": b.embedding_dim,
            },
            "head": {
                "algorithm": self.head.algorithm(),
                "version": self.head.version(),
                "samples": self.head.samples(),
                "classes": self.head.classes().iter()
                    .map(|c| json!({"name": c.name, "samples": c.samples}))
                    .collect::<Vec<_>>(),
            },
            "stored_samples": self.samples.len(),
            "adapt": self.shared.adapt.status_json(),
            "fleet": self.fleet.info(),
        })
    }

    /// A fleet peer's signed head: verified, then merged into the prediction head.
    fn peer_head(&mut self, peer: &str, publish: Publish) {
        let (sha, dim) = self.expect();
        let expect = Expect {
            backbone_sha256: Some(&sha),
            dim: Some(dim),
            max_bytes: MAX_HEAD_BYTES,
        };
        match self
            .fleet
            .on_peer(peer, &publish.payload, &expect, self.head.algorithm())
        {
            Ok(Accepted::Updated) => {
                tracing::info!(peer, "fleet head updated");
                self.head_dirty = true;
                // Predictions follow peers at once, not at the next duty-cycle slot.
                self.refresh_predictor();
            }
            Ok(Accepted::Unchanged) => {}
            Err(e) => {
                tracing::warn!(peer, "rejected fleet head: {e}");
                self.shared
                    .reply_error(&publish.topic, None, &RequestError::Fleet(e));
            }
        }
        self.shared.ack(&publish);
    }

    fn housekeeping(&mut self, stopping: bool) {
        let publish = self.shared.settings.publish.clone();
        if self.predictor_stale {
            // Bound the time spent on (possibly O(d³)) snapshots to ~10% of the wall clock.
            if stopping || self.last_refresh.elapsed() >= self.last_refresh_cost * 10 {
                self.refresh_predictor();
            }
        }
        let due = self.last_publish.elapsed() >= publish.head_interval
            || self.unpublished >= publish.head_every_samples;
        if self.head_dirty && due && !self.predictor_stale {
            self.publish_head_and_info();
        }
        if self.last_stats.elapsed() >= publish.stats_interval {
            self.last_stats = Instant::now();
            let extra = json!({
                "queues": {
                    "infer": self.shared.infer_queue.len(),
                    "learn": self.shared.learn_depth.load(Ordering::Relaxed),
                },
                "head_version": self.head.version(),
                "classes": self.head.classes().len(),
                "stored_samples": self.samples.len(),
                "stored_samples_bytes": self.samples.heap_bytes(),
                "connected": self.shared.connected.load(Ordering::Relaxed),
                "adapt": self.shared.adapt.status_json(),
                "fleet": {
                    "peers": self.fleet.peers.heads.len(),
                    "rejected": self.fleet.peers.rejected,
                },
            });
            let doc = self.shared.stats.to_json(extra);
            self.shared.publish_json(&self.shared.topics.stats, &doc);
        }
    }

    /// Runs a command; replies on `{root}/result` or `{root}/error`; acks after it is durable.
    fn command(&mut self, name: &str, publish: Publish) {
        let result = self.run_command(name, &publish);
        match result {
            Ok(detail) => {
                let mut doc = json!({
                    "command": name,
                    "ok": true,
                    "head_version": self.head.version(),
                });
                if let (Some(d), serde_json::Value::Object(extra)) = (doc.as_object_mut(), detail) {
                    d.extend(extra);
                }
                self.shared.publish_json(&self.shared.topics.result, &doc);
            }
            Err(e) => self.shared.reply_error(&publish.topic, None, &e),
        }
        self.shared.ack(&publish);
    }

    fn expect(&self) -> (String, usize) {
        let b = self.shared.embedder.backbone.info();
        (b.sha256.clone(), b.embedding_dim)
    }

    fn load_head(&self, bytes: &[u8]) -> Result<Head, RequestError> {
        let (sha, dim) = self.expect();
        Ok(Head::from_bytes(
            bytes,
            &Expect {
                backbone_sha256: Some(&sha),
                dim: Some(dim),
                max_bytes: MAX_HEAD_BYTES,
            },
        )?)
    }

    /// Makes `head` current with a version above every earlier one, snapshots and publishes.
    fn install(&mut self, mut head: Head) -> Result<(), RequestError> {
        let version = self.head.version().max(head.version()) + 1;
        head.set_version(version);
        let previous = std::mem::replace(&mut self.head, head);
        if let Err(e) = self.snapshot() {
            self.head = previous;
            return Err(e.into());
        }
        self.after_change();
        Ok(())
    }

    fn after_change(&mut self) {
        self.head_dirty = true;
        self.refresh_predictor();
        self.publish_head_and_info();
    }

    fn run_command(
        &mut self,
        name: &str,
        publish: &Publish,
    ) -> Result<serde_json::Value, RequestError> {
        let payload = &publish.payload;
        match name {
            "forget" => {
                check_size(payload, 1024)?;
                let label = json_or_text(payload, "label")
                    .ok_or_else(|| RequestError::BadRequest("forget needs a label".into()))?;
                check_label(&label)?;
                let mut head = self.head.clone();
                if !head.forget(&label) {
                    return Err(RequestError::UnknownLabel(label));
                }
                self.samples.forget(&label);
                self.install(head)?;
                Ok(json!({ "label": label }))
            }
            "reset" => {
                let mut head = self.head.clone();
                head.reset();
                self.samples.clear();
                self.install(head)?;
                Ok(json!({}))
            }
            "snapshot" => {
                self.refresh_predictor();
                self.snapshot()?;
                self.publish_head_and_info();
                Ok(json!({}))
            }
            "rollback" => {
                check_size(payload, 1024)?;
                let versions = self.store.head_versions()?;
                let wanted = match json_or_text(payload, "version").filter(|s| !s.is_empty()) {
                    Some(v) => v.parse::<u64>().map_err(|_| {
                        RequestError::BadRequest(format!("version {v:?} is not a number"))
                    })?,
                    None => *versions
                        .iter()
                        .rev()
                        .find(|v| **v < self.head.version())
                        .ok_or(RequestError::NoSuchVersion(0))?,
                };
                if !versions.contains(&wanted) {
                    return Err(RequestError::NoSuchVersion(wanted));
                }
                let head = self.load_head(&self.store.load_head(wanted)?)?;
                self.install(head)?;
                Ok(json!({ "restored": wanted, "kept": versions }))
            }
            "algorithm" => {
                check_size(payload, 1024)?;
                let text = json_or_text(payload, "algorithm")
                    .ok_or_else(|| RequestError::BadRequest("algorithm needs a name".into()))?;
                let algorithm: Algorithm = text.parse()?;
                let mut config = self.head.config().clone();
                config.algorithm = algorithm;
                let (sha, dim) = self.expect();
                let mut head = Head::new(&config, dim, &sha);
                for (label, x) in self.samples.iter() {
                    head.update(x, label)?;
                }
                let retrained = head.samples();
                self.install(head)?;
                Ok(json!({ "algorithm": algorithm, "retrained_samples": retrained }))
            }
            "import" => {
                check_size(payload, MAX_HEAD_BYTES)?;
                let head = self.load_head(payload)?;
                self.install(head)?;
                Ok(json!({ "classes": self.head.classes().len() }))
            }
            "merge" => {
                check_size(payload, MAX_HEAD_BYTES)?;
                let other = self.load_head(payload)?;
                let mut head = self.head.clone();
                head.merge(&other)?;
                self.install(head)?;
                Ok(json!({ "classes": self.head.classes().len() }))
            }
            "adapt-reset" => {
                if !self.shared.adapt.reset() {
                    return Err(RequestError::Storage(std::io::Error::other(
                        "the adaptation thread stopped",
                    )));
                }
                Ok(json!({}))
            }
            "fleet-leave" => {
                check_size(payload, 1024)?;
                let peer = json_or_text(payload, "peer")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        RequestError::BadRequest("fleet-leave needs a peer device id".into())
                    })?;
                crate::config::validate_name("peer", &peer).map_err(RequestError::BadRequest)?;
                let was_merged = self.fleet.peers.exclude(&peer);
                self.after_change();
                Ok(json!({ "peer": peer, "was_merged": was_merged }))
            }
            other => Err(RequestError::UnknownCommand(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, pkid: u16, payload: &[u8]) -> Publish {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.pkid = pkid;
        p
    }

    #[test]
    fn redelivery_keys_depend_on_topic_and_payload_only() {
        let first = publish("adaptd/a/learn/cat", 7, b"jpeg bytes");
        // A redelivery, even renumbered by a restarted broker, has the same key.
        let mut redelivered = publish("adaptd/a/learn/cat", 9, b"jpeg bytes");
        redelivered.dup = true;
        assert_eq!(message_key(&first), message_key(&redelivered));
        assert_ne!(
            message_key(&first),
            message_key(&publish("adaptd/a/learn/dog", 7, b"jpeg bytes"))
        );
        assert_ne!(
            message_key(&first),
            message_key(&publish("adaptd/a/learn/cat", 7, b"other bytes"))
        );
    }
}
