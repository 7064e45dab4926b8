//! Request → reply: topics and routing, request decoding, the inference workers, outbound
//! publishing, and the one place where a failed request becomes an `{root}/error` reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use base64::Engine;
use rumqttc::{AsyncClient, Publish, QoS};
use serde::Deserialize;
use serde_json::json;

use crate::adapt::handle::AdaptHandle;
use crate::config::{Settings, SourceSettings};
use crate::daemon::error::RequestError;
use crate::daemon::stats::{bump, Stats};
use crate::head::Predictor;
use crate::model::Embedder;

/// Commands accepted on `{root}/cmd/<name>`.
pub const COMMANDS: &[&str] = &[
    "forget",
    "reset",
    "snapshot",
    "rollback",
    "algorithm",
    "import",
    "merge",
    "adapt-reset",
    "fleet-leave",
];

/// Longest request id accepted (bytes).
const MAX_ID_BYTES: usize = 128;

/// adaptd's topics under one root.
#[derive(Debug, Clone)]
pub struct Topics {
    pub root: String,
    pub infer: String,
    pub learn: String,
    pub learn_prefix: String,
    pub feedback: String,
    pub cmd_prefix: String,
    pub prediction: String,
    pub learned: String,
    pub result: String,
    pub head: String,
    pub info: String,
    pub status: String,
    pub error: String,
    pub stats: String,
    pub drift: String,
    /// Fleet topics, when `[fleet] group` is set.
    pub fleet: Option<FleetTopics>,
}

/// The topics of one fleet group.
#[derive(Debug, Clone)]
pub struct FleetTopics {
    /// `{prefix}/{group}/heads/` (+ device id: a board's signed local head, retained).
    pub heads_prefix: String,
    /// This board's signed head topic.
    pub mine: String,
    /// `{prefix}/{group}/cmd/`: group-wide commands (only `forget`).
    pub cmd_prefix: String,
}

impl Topics {
    /// The topics under `root`.
    pub fn new(root: &str) -> Topics {
        let t = |s: &str| format!("{root}/{s}");
        Topics {
            root: root.to_string(),
            infer: t("infer"),
            learn: t("learn"),
            learn_prefix: t("learn/"),
            feedback: t("feedback"),
            cmd_prefix: t("cmd/"),
            prediction: t("prediction"),
            learned: t("learned"),
            result: t("result"),
            head: t("head"),
            info: t("info"),
            status: t("status"),
            error: t("error"),
            stats: t("stats"),
            drift: t("drift"),
            fleet: None,
        }
    }

    /// Adds the fleet topics of `fleet` (if it names a group) for this device.
    pub fn with_fleet(mut self, fleet: &crate::fleet::FleetConfig, device_id: &str) -> Topics {
        if fleet.enabled() {
            let base = format!("{}/{}", fleet.topic_prefix, fleet.group);
            self.fleet = Some(FleetTopics {
                heads_prefix: format!("{base}/heads/"),
                mine: format!("{base}/heads/{device_id}"),
                cmd_prefix: format!("{base}/cmd/"),
            });
        }
        self
    }

    /// Subscriptions: adaptd's input topics and the configured sources.
    pub fn subscriptions(&self, sources: &[SourceSettings]) -> Vec<(String, QoS)> {
        let mut subs = vec![
            (self.infer.clone(), QoS::AtLeastOnce),
            (self.learn.clone(), QoS::AtLeastOnce),
            (format!("{}+", self.learn_prefix), QoS::AtLeastOnce),
            (self.feedback.clone(), QoS::AtLeastOnce),
            (format!("{}+", self.cmd_prefix), QoS::AtLeastOnce),
        ];
        if let Some(f) = &self.fleet {
            subs.push((format!("{}+", f.heads_prefix), QoS::AtLeastOnce));
            subs.push((format!("{}forget", f.cmd_prefix), QoS::AtLeastOnce));
        }
        for s in sources {
            let qos = if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            subs.push((s.topic.clone(), qos));
        }
        subs
    }

    /// What a message on `topic` asks for.
    pub fn route(&self, topic: &str, sources: &[SourceSettings]) -> Route {
        if topic == self.infer {
            return Route::Infer;
        }
        if topic == self.learn {
            return Route::Learn(None);
        }
        if let Some(label) = topic.strip_prefix(&self.learn_prefix) {
            return Route::Learn(Some(label.to_string()));
        }
        if topic == self.feedback {
            return Route::Feedback;
        }
        if let Some(cmd) = topic.strip_prefix(&self.cmd_prefix) {
            return Route::Command(cmd.to_string());
        }
        if let Some(f) = &self.fleet {
            if topic == f.mine {
                return Route::Ignore;
            }
            if let Some(peer) = topic.strip_prefix(&f.heads_prefix) {
                return Route::Peer(peer.to_string());
            }
            if topic.strip_prefix(&f.cmd_prefix) == Some("forget") {
                return Route::Command("forget".into());
            }
        }
        if sources.iter().any(|s| rumqttc::matches(topic, &s.topic)) {
            return Route::Infer;
        }
        Route::Ignore
    }
}

/// Where an inbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Infer,
    /// Learn, with the label from the topic when there is one.
    Learn(Option<String>),
    Feedback,
    Command(String),
    /// A fleet peer's signed head, with the peer's device id.
    Peer(String),
    Ignore,
}

/// An inbound message with its arrival time.
#[derive(Debug)]
pub struct Job {
    pub publish: Publish,
    pub route: Route,
    pub received: Instant,
}

/// The inference queue: bounded, and when full the oldest request is dropped (a camera wants
/// the latest frame).
#[derive(Debug)]
pub struct InferQueue {
    inner: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
    cap: usize,
}

impl InferQueue {
    /// An empty queue holding at most `cap` requests.
    pub fn new(cap: usize) -> InferQueue {
        InferQueue {
            inner: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            cap,
        }
    }

    /// Adds a request; returns the one dropped to make room, if any.
    pub fn push(&self, job: Job) -> Option<Job> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = if g.0.len() >= self.cap {
            g.0.pop_front()
        } else {
            None
        };
        g.0.push_back(job);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// Takes the oldest request, waiting for one; `None` once closed and drained.
    pub fn pop(&self) -> Option<Job> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(j) = g.0.pop_front() {
                return Some(j);
            }
            if g.1 {
                return None;
            }
            g = self.ready.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Closes the queue: workers finish what is queued, then stop.
    pub fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_all();
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Recent predictions' embeddings by id, for `{root}/feedback`.
#[derive(Debug)]
pub struct FeedbackRing {
    entries: VecDeque<(String, Arc<Vec<f32>>)>,
    cap: usize,
}

impl FeedbackRing {
    /// An empty ring of `cap` entries.
    pub fn new(cap: usize) -> FeedbackRing {
        FeedbackRing {
            entries: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Remembers a prediction's embedding.
    pub fn insert(&mut self, id: String, embedding: Arc<Vec<f32>>) {
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back((id, embedding));
    }

    /// The embedding of the newest prediction with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<f32>>> {
        self.entries
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
    }
}

/// State shared by the driver, the workers and the learner. Locks here are std locks held for
/// a copy or a push, never across an `.await`.
pub struct Shared {
    pub settings: Settings,
    pub topics: Topics,
    pub client: AsyncClient,
    pub embedder: Arc<Embedder>,
    pub predictor: RwLock<Predictor>,
    /// Domain adaptation: the correction inference applies, and the adaptation thread's inbox.
    pub adapt: AdaptHandle,
    pub ring: Mutex<FeedbackRing>,
    pub infer_queue: InferQueue,
    pub stats: Stats,
    /// Learn/feedback/command messages queued for the learner.
    pub learn_depth: AtomicU64,
    /// Set once shutdown begins: the driver stops taking new requests.
    pub stopping: AtomicBool,
    /// Set while the broker connection is up.
    pub connected: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        settings: Settings,
        client: AsyncClient,
        embedder: Arc<Embedder>,
        predictor: Predictor,
        adapt: AdaptHandle,
    ) -> Shared {
        let topics = Topics::new(&settings.root).with_fleet(&settings.fleet, &settings.device_id);
        let ring = FeedbackRing::new(settings.service.feedback_ring);
        let queue = InferQueue::new(settings.service.infer_queue);
        Shared {
            settings,
            topics,
            client,
            embedder,
            predictor: RwLock::new(predictor),
            adapt,
            ring: Mutex::new(ring),
            infer_queue: queue,
            stats: Stats::default(),
            learn_depth: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh request id (used when a request carries none).
    pub fn new_id(&self) -> String {
        format!(
            "{}-{}",
            self.settings.device_id,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The current prediction snapshot.
    pub fn predictor(&self) -> Predictor {
        self.predictor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the prediction snapshot.
    pub fn set_predictor(&self, p: Predictor) {
        *self.predictor.write().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// Publishes without ever blocking: when rumqttc's request queue is full (e.g. while
    /// offline) the message is dropped and counted. Returns whether it was queued.
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        if !retain && !self.connected.load(Ordering::Relaxed) {
            // Offline, a passing message (stats, a reply) would only wait in rumqttc's request
            // queue, go out stale after the reconnection, and fill the queue in a long outage
            // so that the reconnection's own subscribe could not get in. Retained state
            // (head, info, status, drift) still queues: it is published on change, and the
            // head and info stay dirty until a publish is taken.
            bump(&self.stats.publish_dropped);
            return false;
        }
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                bump(&self.stats.publish_dropped);
                tracing::debug!(topic, error = %e, "publish dropped");
                false
            }
        }
    }

    /// Publishes a JSON document (QoS 0, not retained).
    pub fn publish_json(&self, topic: &str, doc: &serde_json::Value) -> bool {
        self.publish(topic, QoS::AtMostOnce, false, doc.to_string().into_bytes())
    }

    /// Acknowledges a QoS 1 message. A failed ack (offline) is harmless: the broker redelivers
    /// with DUP set and the learner drops the duplicate.
    pub fn ack(&self, publish: &Publish) {
        if publish.qos != QoS::AtMostOnce {
            if let Err(e) = self.client.try_ack(publish) {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
    }

    /// The one place a failed request becomes an `{root}/error` reply.
    pub fn reply_error(&self, topic: &str, id: Option<&str>, err: &RequestError) {
        bump(&self.stats.errors);
        tracing::info!(topic, id, code = err.code(), "request refused: {err}");
        let doc = json!({
            "code": err.code(),
            "message": err.to_string(),
            "topic": topic,
            "id": id,
        });
        self.publish_json(&self.topics.error, &doc);
    }
}

/// A decoded request body.
#[derive(Debug, Default)]
pub struct Request {
    /// Request id (echoed in replies).
    pub id: Option<String>,
    /// Label, for learn and feedback.
    pub label: Option<String>,
    /// Input tensor, when the request carries an input.
    pub input: Option<Input>,
}

/// The input part of a request.
#[derive(Debug)]
pub enum Input {
    /// The raw payload: JPEG, PNG, raw f32 or a bare JSON array.
    Payload(bytes::Bytes),
    /// An image from a JSON request's `image` (base64).
    Image(Vec<u8>),
    /// A tensor from a JSON request's `tensor`.
    Tensor(Vec<f64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    tensor: Option<Vec<f64>>,
}

/// Checks the payload size limit.
pub fn check_size(payload: &[u8], max: usize) -> Result<(), RequestError> {
    if payload.len() > max {
        return Err(RequestError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    Ok(())
}

/// Best-effort id of a request, for error replies to requests that fail to parse fully.
pub fn sniff_id(payload: &[u8]) -> Option<String> {
    if payload.first() != Some(&b'{') || payload.len() > 1 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    id_string(v.get("id")?).ok()
}

fn id_string(v: &serde_json::Value) -> Result<String, RequestError> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => {
            return Err(RequestError::BadRequest(
                "id must be a string or a number".into(),
            ))
        }
    };
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(RequestError::BadRequest(format!(
            "id must be 1..={MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(s)
}

/// Decodes a request: a JSON object (`id`, `label`, `image` base64 or `tensor`), or any other
/// payload taken as the input itself.
pub fn parse_request(payload: &bytes::Bytes) -> Result<Request, RequestError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(Request {
            input: Some(Input::Payload(payload.clone())),
            ..Request::default()
        });
    }
    let req: JsonRequest =
        serde_json::from_slice(payload).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let id = req.id.as_ref().map(id_string).transpose()?;
    let input = match (req.image, req.tensor) {
        (Some(_), Some(_)) => {
            return Err(RequestError::BadRequest(
                "give either image or tensor, not both".into(),
            ))
        }
        (Some(b64), None) => Some(Input::Image(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| RequestError::BadRequest(format!("image is not base64: {e}")))?,
        )),
        (None, Some(t)) => Some(Input::Tensor(t)),
        (None, None) => None,
    };
    Ok(Request {
        id,
        label: req.label,
        input,
    })
}

/// Validates a label (topic-safe, ≤ 64 bytes).
pub fn check_label(label: &str) -> Result<(), RequestError> {
    Ok(crate::head::validate_label(label)?)
}

/// Turns a request's input into an embedding (decode, preprocess, backbone).
pub fn embed_input(embedder: &Embedder, input: &Input) -> Result<Vec<f32>, RequestError> {
    let tensor = match input {
        Input::Payload(bytes) => embedder.preprocessor.decode(bytes),
        Input::Image(bytes) => embedder.preprocessor.from_image_bytes(bytes),
        Input::Tensor(values) => embedder.preprocessor.from_values(values),
    }
    .map_err(|e| RequestError::Embedder(e.into()))?;
    embedder
        .backbone
        .embed(&tensor)
        .map_err(|e| RequestError::Embedder(e.into()))
}

/// One inference worker: takes requests until the queue closes.
pub fn infer_worker(shared: Arc<Shared>) {
    while let Some(job) = shared.infer_queue.pop() {
        let topic = job.publish.topic.clone();
        match infer(&shared, &job) {
            Ok(doc) => {
                bump(&shared.stats.infer_done);
                shared.publish_json(&shared.topics.prediction, &doc);
                shared
                    .stats
                    .latency
                    .push(job.received.elapsed().as_secs_f64() * 1e3);
            }
            Err((id, e)) => shared.reply_error(&topic, id.as_deref(), &e),
        }
    }
}

type Failed = (Option<String>, RequestError);

fn infer(shared: &Shared, job: &Job) -> Result<serde_json::Value, Failed> {
    let payload = &job.publish.payload;
    check_size(payload, shared.settings.service.max_payload_bytes).map_err(|e| (None, e))?;
    let req = parse_request(payload).map_err(|e| (sniff_id(payload), e))?;
    let id = req.id.clone();
    let fail = |e: RequestError| (id.clone(), e);
    let input = req
        .input
        .as_ref()
        .ok_or_else(|| fail(RequestError::BadRequest("no image or tensor".into())))?;
    let started = Instant::now();
    let embedding = embed_input(&shared.embedder, input).map_err(fail)?;
    let backbone_ms = started.elapsed().as_secs_f64() * 1e3;
    shared.stats.backbone.push(backbone_ms);
    let predictor = shared.predictor();
    if predictor.is_empty() {
        return Err(fail(RequestError::NoClasses {
            root: shared.topics.root.clone(),
        }));
    }
    let adapted = shared.adapt.snapshot();
    let prediction = adapted
        .predict(&predictor, &embedding, shared.settings.publish.top_k)
        .map_err(|e| fail(e.into()))?;
    let id = id.unwrap_or_else(|| shared.new_id());
    // The raw embedding is what feedback learns from and what adaptation observes.
    let embedding = Arc::new(embedding);
    shared
        .ring
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), embedding.clone());
    shared.adapt.offer(embedding);
    let best = prediction.top.first();
    Ok(json!({
        "id": id,
        "label": best.map(|s| s.label.clone()),
        "score": best.map(|s| s.score),
        "top": prediction.top,
        "head_version": predictor.version(),
        "adapted": adapted.is_active().then_some(adapted.method),
        "latency_ms": job.received.elapsed().as_secs_f64() * 1e3,
        "backbone_ms": backbone_ms,
        "source": job.publish.topic,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = Topics::new("adaptd/cam");
        let src = vec![SourceSettings {
            topic: "frigate/+/snapshot".into(),
            qos: 0,
        }];
        assert_eq!(t.route("adaptd/cam/infer", &src), Route::Infer);
        assert_eq!(t.route("frigate/door/snapshot", &src), Route::Infer);
        assert_eq!(
            t.route("adaptd/cam/learn/cat", &src),
            Route::Learn(Some("cat".into()))
        );
        assert_eq!(t.route("adaptd/cam/learn", &src), Route::Learn(None));
        assert_eq!(t.route("adaptd/cam/feedback", &src), Route::Feedback);
        assert_eq!(
            t.route("adaptd/cam/cmd/forget", &src),
            Route::Command("forget".into())
        );
        assert_eq!(t.route("adaptd/cam/prediction", &src), Route::Ignore);
    }

    #[test]
    fn requests_parse_or_fail_clearly() {
        let b = |s: &str| bytes::Bytes::from(s.to_string());
        let r =
            parse_request(&b("{\"id\": 7, \"label\": \"cat\", \"tensor\": [1, 2]}")).expect("json");
        assert_eq!(r.id.as_deref(), Some("7"));
        assert!(matches!(r.input, Some(Input::Tensor(ref t)) if t.len() == 2));
        let r = parse_request(&b("{\"image\": \"aGVsbG8=\"}")).expect("b64");
        assert!(matches!(r.input, Some(Input::Image(ref i)) if i == b"hello"));
        assert!(matches!(
            parse_request(&b("[1,2,3]")).expect("bare").input,
            Some(Input::Payload(_))
        ));
        for (bad, code) in [
            ("{\"tensor\": [1,", "bad_json"),
            ("{\"tensr\": [1]}", "bad_json"),
            ("{\"image\": \"***\"}", "bad_request"),
            ("{\"image\": \"aGk=\", \"tensor\": [1]}", "bad_request"),
            ("{\"id\": {\"a\": 1}}", "bad_request"),
        ] {
            assert_eq!(parse_request(&b(bad)).expect_err(bad).code(), code, "{bad}");
        }
        assert_eq!(
            sniff_id(b"{\"id\": \"x\", \"oops\": 1}").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn infer_queue_drops_oldest() {
        let q = InferQueue::new(2);
        let job = |t: &str| Job {
            publish: Publish::new(t, QoS::AtMostOnce, vec![]),
            route: Route::Infer,
            received: Instant::now(),
        };
        assert!(q.push(job("a")).is_none());
        assert!(q.push(job("b")).is_none());
        assert_eq!(
            q.push(job("c")).map(|j| j.publish.topic).as_deref(),
            Some("a")
        );
        q.close();
        assert_eq!(q.pop().map(|j| j.publish.topic).as_deref(), Some("b"));
        assert_eq!(q.pop().map(|j| j.publish.topic).as_deref(), Some("c"));
        assert!(q.pop().is_none());
    }

    #[test]
    fn feedback_ring_is_bounded() {
        let mut r = FeedbackRing::new(2);
        for i in 0..3 {
            r.insert(format!("p{i}"), Arc::new(vec![i as f32]));
        }
        assert!(r.get("p0").is_none());
        assert_eq!(r.get("p2").map(|e| e[0]), Some(2.0));
    }
}
