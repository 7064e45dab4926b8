//! The worker pool: OS threads that take tasks from the work queue. An inference request is
//! decoded, embedded, adapted and predicted, and its prediction published; a learner-bound
//! message is decoded and, for learn and feedback, embedded, then handed to the learner with
//! its sequence number. All backbone work happens here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use rumqttc::Publish;
use sha2::{Digest, Sha256};

use crate::adapt::handle::AdaptHandle;
use crate::config::SourceTopic;
use crate::daemon::dashboard::Dashboard;
use crate::daemon::error::RequestError;
use crate::daemon::learner::{Sample, Step, Work};
use crate::daemon::outbox::Outbox;
use crate::daemon::queue::{Job, Task, WorkQueue};
use crate::daemon::reply::Prediction;
use crate::daemon::request::{
    check_size, parse_request, parse_text_source, sniff_id, Command, MAX_FEEDBACK_BYTES,
};
use crate::daemon::review::{Review, ReviewDoc};
use crate::daemon::serving::{FeedbackRing, PredictorSlot};
use crate::daemon::stats::{bump, Stats};
use crate::daemon::stream::Streams;
use crate::daemon::topics::Route;
use crate::head::validate_label;
use crate::model::{Embedder, Input};

/// What every worker shares.
pub struct Workers {
    pub embedder: Arc<Embedder>,
    pub queue: Arc<WorkQueue>,
    pub predictor: Arc<PredictorSlot>,
    pub adapt: Arc<AdaptHandle>,
    pub ring: FeedbackRing,
    pub outbox: Arc<Outbox>,
    pub stats: Arc<Stats>,
    /// Live streams: which of their windows' predictions are news.
    pub streams: Arc<Streams>,
    /// The last prediction, for dashboards and `{root}/correct` (none in unit tests).
    pub dashboard: Option<Arc<Dashboard>>,
    /// The configured sources (a Frigate snapshot's camera and object).
    pub sources: Vec<SourceTopic>,
    /// Prefix of generated request ids (the device id).
    pub device_id: String,
    pub max_payload_bytes: usize,
    pub top_k: usize,
    /// `head.open_set`, `head.open_set_frr`, `head.unknown_label`: `None` when off.
    pub open_set: Option<(f64, String)>,
    /// The review queue (`None` when `service.review` is off).
    pub review: Option<Review>,
    next_id: AtomicU64,
}

/// A request that failed, with the id to answer with.
type Failed = (Option<String>, RequestError);

/// The key that recognises a broker's redelivery (DUP) of a message already learned: topic and
/// payload. Not the packet identifier: mosquitto renumbers in-flight messages when it restores
/// sessions from its persistence file after a restart (tests/daemon.rs
/// `broker_restart_mid_stream_loses_nothing` learned a message twice with it). The price: an
/// identical message sent again on purpose is dropped if, and only if, it arrives as a DUP
/// redelivery while the first copy's key is still among the recent keys (docs/design.md).
pub fn message_key(p: &Publish) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(p.topic.as_bytes());
    h.update([0]);
    h.update(&p.payload);
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

impl Workers {
    /// The shared part of a pool.
    pub fn new(
        embedder: Arc<Embedder>,
        queue: Arc<WorkQueue>,
        predictor: Arc<PredictorSlot>,
        adapt: Arc<AdaptHandle>,
        outbox: Arc<Outbox>,
        stats: Arc<Stats>,
        settings: &crate::config::Settings,
    ) -> Workers {
        Workers {
            embedder,
            queue,
            predictor,
            adapt,
            ring: FeedbackRing::new(settings.service.feedback_ring),
            outbox,
            stats,
            streams: Arc::new(Streams::none()),
            dashboard: None,
            sources: settings.sources.clone(),
            device_id: settings.device_id.clone(),
            max_payload_bytes: settings.service.max_payload_bytes,
            top_k: settings.publish.top_k,
            review: Review::from_settings(&settings.service),
            open_set: settings.head.open_set.then(|| {
                (
                    settings.head.open_set_frr,
                    settings.head.unknown_label.clone(),
                )
            }),
            next_id: AtomicU64::new(1),
        }
    }

    /// The dashboard that shows the last prediction and finds it for `{root}/correct`.
    pub fn with_dashboard(mut self, dashboard: Arc<Dashboard>) -> Workers {
        self.dashboard = Some(dashboard);
        self
    }

    /// The live streams whose windows these workers predict.
    pub fn with_streams(mut self, streams: Arc<Streams>) -> Workers {
        self.streams = streams;
        self
    }

    /// Generated ids start at `{device_id}-{n}` (after a restart: above the kept ones, so that
    /// an id names one sample for `cmd/unlearn`).
    pub fn with_first_id(self, n: u64) -> Workers {
        self.next_id.store(n.max(1), Ordering::Relaxed);
        self
    }

    /// A fresh request id (for requests that carry none).
    fn new_id(&self) -> String {
        format!(
            "{}-{}",
            self.device_id,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// One worker thread: takes tasks until the queue is closed and drained.
    pub fn run(&self, learner: Sender<Step>) {
        while let Some(task) = self.queue.pop() {
            match task {
                Task::Infer(job) => self.infer(job),
                Task::Learner { seq, job } => {
                    // Whatever happens while preparing, the learner gets this sequence number,
                    // or it would wait for it forever.
                    let work = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.prepare(&job)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!(topic = %job.publish.topic, "preparing a message panicked");
                        Work::Lost
                    });
                    let publish = job.publish;
                    if learner.send(Step { seq, publish, work }).is_err() {
                        tracing::error!("learner is gone; message left unacknowledged");
                    }
                }
            }
        }
    }

    fn infer(&self, job: Job) {
        let topic = &job.publish.topic;
        match self.predict(&job) {
            Ok(()) => {
                bump(&self.stats.infer_done);
                self.stats
                    .latency
                    .push(job.received.elapsed().as_secs_f64() * 1e3);
            }
            Err((id, e)) => self.outbox.refuse(topic, id.as_deref(), &e),
        }
    }

    fn predict(&self, job: &Job) -> Result<(), Failed> {
        let (id, input) = match &job.window {
            // A live stream's window, cut by the intake.
            Some(window) => (None, window.input.clone()),
            None => {
                let payload = &job.publish.payload;
                check_size(payload, self.max_payload_bytes).map_err(|e| (None, e))?;
                let topic = &job.publish.topic;
                let text_field = self
                    .sources
                    .iter()
                    .filter(|s| rumqttc::matches(topic, &s.topic))
                    .find_map(|s| s.text_field.as_deref());
                let req = match text_field {
                    Some(field) => parse_text_source(payload, field),
                    None => parse_request(payload),
                }
                .map_err(|e| (sniff_id(payload), e))?;
                let input = req.input.ok_or_else(|| {
                    let e = RequestError::BadRequest(
                        "no image, tensor, audio, pcm, text or window".into(),
                    );
                    (req.id.clone(), e)
                })?;
                (req.id, input)
            }
        };
        let fail = |e: RequestError| (id.clone(), e);
        let started = Instant::now();
        let embedding = self.embedder.embed(&input).map_err(|e| fail(e.into()))?;
        let backbone_ms = started.elapsed().as_secs_f64() * 1e3;
        self.stats.backbone.push(backbone_ms);
        let predictor = self.predictor.get();
        if predictor.is_empty() {
            return Err(fail(RequestError::NoClasses {
                root: self.outbox.topics.root.clone(),
            }));
        }
        let adapted = self.adapt.snapshot();
        // Two classes at least: the review queue needs the margin between the top two.
        let mut prediction = adapted
            .predict(&predictor, &embedding, self.top_k.max(2))
            .map_err(|e| fail(e.into()))?;
        // The raw embedding is what feedback learns from and what adaptation observes.
        let embedding = Arc::new(embedding);
        self.adapt.offer(embedding.clone());
        let threshold = self
            .open_set
            .as_ref()
            .and_then(|(frr, _)| predictor.threshold(*frr));
        let known = prediction.known(threshold);
        let review = self
            .review
            .as_ref()
            .and_then(|r| Some((r, r.reason(&prediction, known)?)));
        let margin = prediction.margin();
        prediction.top.truncate(self.top_k);
        let best = prediction.top.first();
        let label = match (&self.open_set, known) {
            (Some((_, unknown)), Some(false)) => Some(unknown.as_str()),
            _ => best.map(|s| s.label.as_str()),
        };
        if let Route::Stream(source) = job.route {
            let score = best.map_or(0.0, |s| s.score);
            if !self
                .streams
                .changed(source, &job.publish.topic, label, score)
            {
                // Nothing new is heard: no message 2 times a second saying so.
                return Ok(());
            }
        }
        let id = id.unwrap_or_else(|| self.new_id());
        self.ring.insert(id.clone(), embedding.clone());
        let topic = &job.publish.topic;
        let origin = self
            .sources
            .iter()
            .filter(|s| rumqttc::matches(topic, &s.topic))
            .find_map(|s| s.frigate.as_ref()?.origin(topic));
        let doc = Prediction {
            id: id.clone(),
            label,
            score: best.map(|s| s.score),
            top: &prediction.top,
            known,
            novelty: prediction.novelty.filter(|_| self.open_set.is_some()),
            threshold,
            head_version: predictor.version(),
            adapted: adapted.is_active().then_some(adapted.method),
            latency_ms: job.received.elapsed().as_secs_f64() * 1e3,
            backbone_ms,
            source: topic,
            camera: origin.map(|o| o.0),
            object: origin.map(|o| o.1),
            readings: job.window.as_ref().and_then(|w| w.readings),
        };
        let bytes = serde_json::to_vec(&doc).map_err(|e| {
            let e = RequestError::BadRequest(format!("cannot encode the prediction: {e}"));
            (Some(id.clone()), e)
        })?;
        if let Some((r, reason)) = review.filter(|(r, _)| r.admit(Instant::now())) {
            r.keep(&id, embedding.clone());
            let offer = ReviewDoc {
                id: &id,
                reason,
                label,
                top: &prediction.top,
                margin,
                known,
                novelty: doc.novelty,
                source: topic,
                thumbnail: image_bytes(&input).and_then(|b| r.thumbnail(b)),
            };
            if let Ok(b) = serde_json::to_vec(&offer) {
                self.outbox.publish(
                    &self.outbox.topics.review,
                    rumqttc::QoS::AtMostOnce,
                    false,
                    b,
                );
            }
        }
        self.outbox.publish(
            &self.outbox.topics.prediction,
            rumqttc::QoS::AtMostOnce,
            false,
            bytes.clone(),
        );
        if let Some(d) = &self.dashboard {
            d.on_prediction(&id, &bytes, image_bytes(&input), origin.map(|o| o.0));
        }
        Ok(())
    }

    /// Turns a learner-bound message into what the learner applies.
    fn prepare(&self, job: &Job) -> Work {
        let payload = &job.publish.payload;
        let refused = |error| Work::Refused {
            id: sniff_id(payload),
            error,
        };
        match &job.route {
            Route::Learn(label) => {
                bump(&self.stats.learn_received);
                match self.learn_sample(&job.publish, label.as_deref()) {
                    Ok(s) => Work::Sample(s),
                    Err(e) => refused(e),
                }
            }
            Route::Feedback => {
                bump(&self.stats.learn_received);
                match self.feedback_sample(&job.publish) {
                    Ok(s) => Work::Sample(s),
                    Err(e) => refused(e),
                }
            }
            Route::Correct { new_class } => {
                bump(&self.stats.learn_received);
                match self.correct_sample(&job.publish, *new_class) {
                    Ok(s) => Work::Sample(s),
                    Err(e) => refused(e),
                }
            }
            Route::Command(name) => Work::Command(Command::parse(name, payload)),
            Route::Peer(peer) => Work::Peer(peer.clone()),
            Route::PeerDelta(peer) => Work::PeerDelta(peer.clone()),
            Route::Infer | Route::Stream(_) | Route::HomeAssistantStatus | Route::Ignore => {
                Work::Lost
            }
        }
    }

    /// The embedding of a prediction by id: a recent one (the feedback ring), else one the
    /// review queue offered and kept longer.
    fn embedding_of(&self, id: &str) -> Result<Arc<Vec<f32>>, RequestError> {
        self.ring
            .get(id)
            .or_else(|| self.review.as_ref()?.get(id))
            .ok_or_else(|| RequestError::UnknownId(id.to_string()))
    }

    fn learn_sample(
        &self,
        publish: &Publish,
        topic_label: Option<&str>,
    ) -> Result<Sample, RequestError> {
        check_size(&publish.payload, self.max_payload_bytes)?;
        let req = parse_request(&publish.payload)?;
        let label = match (topic_label, req.label) {
            (Some(_), Some(_)) => {
                return Err(RequestError::BadRequest(
                    "label given in both topic and payload".into(),
                ))
            }
            (Some(l), None) => l.to_string(),
            (None, Some(l)) => l,
            (None, None) => {
                return Err(RequestError::BadRequest(format!(
                    "no label: publish to {}/learn/<label> or give \"label\" in JSON",
                    self.outbox.topics.root
                )))
            }
        };
        validate_label(&label)?;
        let input = req
            .input
            .ok_or_else(|| RequestError::BadRequest("no image or tensor".into()))?;
        let embedding = self.embedder.embed(&input)?;
        Ok(Sample {
            id: req.id.unwrap_or_else(|| self.new_id()),
            label,
            embedding,
            key: message_key(publish),
        })
    }

    /// `{root}/correct` (one of the classes: Home Assistant's select) or `{root}/teach` (any
    /// label: its text entity) for the last prediction.
    fn correct_sample(&self, publish: &Publish, new_class: bool) -> Result<Sample, RequestError> {
        check_size(&publish.payload, MAX_FEEDBACK_BYTES)?;
        let label = correct_label(&publish.payload)?;
        validate_label(&label)?;
        if !new_class && !self.predictor.get().labels().contains(&label) {
            // The select offers the classes: anything else is a mistake, not a new class.
            return Err(RequestError::UnknownLabel(label));
        }
        let id = self.dashboard.as_ref().and_then(|d| d.last_id()).ok_or(
            RequestError::NothingToCorrect("nothing was predicted since the start"),
        )?;
        let embedding = self.embedding_of(&id)?;
        // The same label for two different predictions is two different messages.
        let mut h = Sha256::new();
        h.update(message_key(publish));
        h.update(id.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize()[..16]);
        Ok(Sample {
            id,
            label,
            embedding: embedding.as_ref().clone(),
            key,
        })
    }

    fn feedback_sample(&self, publish: &Publish) -> Result<Sample, RequestError> {
        check_size(&publish.payload, MAX_FEEDBACK_BYTES)?;
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
        let id = req
            .id
            .ok_or_else(|| RequestError::BadRequest("feedback needs the prediction id".into()))?;
        let label = req
            .label
            .ok_or_else(|| RequestError::BadRequest("feedback needs a label".into()))?;
        validate_label(&label)?;
        let embedding = self.embedding_of(&id)?;
        Ok(Sample {
            id,
            label,
            embedding: embedding.as_ref().clone(),
            key: message_key(publish),
        })
    }
}

/// The JPEG/PNG bytes of an image input, as they came (for the dashboard's image).
fn image_bytes(input: &Input) -> Option<&[u8]> {
    let bytes: &[u8] = match input {
        Input::Payload(b) => b,
        Input::Image(b) => b,
        _ => return None,
    };
    let image = bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    image.then_some(bytes)
}

/// The label of a `{root}/correct` payload: the label as text, or `{"label": "…"}`.
fn correct_label(payload: &[u8]) -> Result<String, RequestError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| {
            RequestError::Head(crate::head::HeadError::BadLabel(
                "the label is not UTF-8".into(),
            ))
        })?
        .trim();
    if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Correct {
            label: String,
        }
        let c: Correct =
            serde_json::from_str(text).map_err(|e| RequestError::BadJson(e.to_string()))?;
        return Ok(c.label);
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

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
