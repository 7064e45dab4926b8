//! What adaptd publishes, one serde type per topic: the fields `docs/mqtt-api.md` documents.
//! `{root}/head` is the head file itself.

use serde::Serialize;

use crate::adapt::Method;
use crate::daemon::broker::BrokerInUse;
use crate::head::{Algorithm, ClassInfo, Scored};
use crate::model::audio::AudioSpec;
use crate::model::{Embedder, Modality};

/// `{root}/prediction`.
#[derive(Debug, Serialize)]
pub struct Prediction<'a> {
    pub id: String,
    /// The top class, or `head.unknown_label` when the input is like none of the classes.
    pub label: Option<&'a str>,
    /// The top class's score (also when `label` is the unknown label).
    pub score: Option<f32>,
    pub top: &'a [Scored],
    /// Whether the input is like a class the head knows (`None`: open set off, or not yet
    /// calibrated).
    pub known: Option<bool>,
    /// How unlike every known class the input is, and the threshold `known` compares it to.
    pub novelty: Option<f32>,
    pub threshold: Option<f32>,
    pub head_version: u64,
    /// The adaptation method applied, when a correction was active.
    pub adapted: Option<Method>,
    pub latency_ms: f64,
    pub backbone_ms: f64,
    /// The topic the input came in on.
    pub source: &'a str,
    /// The Frigate camera and object of a snapshot (`[[sources]] kind = "frigate"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'a str>,
    /// A sensor stream's window (`[[sources]] kind = "readings"`): the first and last reading
    /// it holds, counted from 0 since adaptd began following the topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings: Option<(u64, u64)>,
}

/// `{root}/learned`.
#[derive(Debug, Serialize)]
pub struct Learned<'a> {
    pub id: &'a str,
    pub label: &'a str,
    /// Samples the class holds now.
    pub samples: u64,
    pub head_version: u64,
}

/// `{root}/result`: a command that succeeded, with its command-specific fields.
#[derive(Debug, Serialize)]
pub struct CommandResult<'a, D: Serialize> {
    pub command: &'a str,
    pub ok: bool,
    pub head_version: u64,
    #[serde(flatten)]
    pub detail: D,
}

/// `{root}/error`.
#[derive(Debug, Serialize)]
pub struct ErrorReply<'a> {
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// The topic of the refused request.
    pub topic: &'a str,
    pub id: Option<&'a str>,
}

/// `{root}/drift` (retained).
#[derive(Debug, Serialize)]
pub struct Drift {
    pub alarm: bool,
    pub distance: Option<f64>,
    pub threshold: f64,
    pub target_samples: u64,
    pub head_version: u64,
    /// Unix seconds.
    pub time: u64,
}

/// `{root}/info` (retained).
#[derive(Debug, Serialize)]
pub struct Info<'a> {
    pub adaptd: &'static str,
    pub device_id: &'a str,
    pub root: &'a str,
    pub backbone: &'a BackboneSummary,
    pub broker: &'a BrokerInUse,
    pub head: HeadSummary,
    pub stored_samples: usize,
    pub adapt: serde_json::Value,
    pub fleet: serde_json::Value,
    /// Home Assistant discovery: enabled, discovery_prefix, node, entities published.
    pub homeassistant: serde_json::Value,
}

/// The backbone part of `{root}/info`; fixed for the daemon's life.
#[derive(Debug, Clone, Serialize)]
pub struct BackboneSummary {
    pub name: String,
    /// The model's identity (heads are tied to it): the ONNX file's SHA-256, hashed with the
    /// front-end recipe for a sound model.
    pub sha256: String,
    /// `image`, `audio`, `text`, `sensor` or `tensor`: what payloads the board takes.
    pub modality: Modality,
    pub input: InputSummary,
    /// A sound model's front-end: rate, STFT, mel bands, windows, duration limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSpec>,
    /// A text model's tokenizer: casing, token and byte limits, vocabulary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSummary>,
    /// A sensor model's window: channel names (the order of a window's arrays and the names
    /// readings use), samples per window, normalisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor: Option<SensorSummary>,
    pub embedding_dim: usize,
}

/// The text part of a text model's backbone summary.
#[derive(Debug, Clone, Serialize)]
pub struct TextSummary {
    pub lowercase: bool,
    /// Longer texts are cut to this many tokens (`[CLS]` and `[SEP]` included).
    pub max_tokens: usize,
    /// Longer payloads are refused (`too_long`).
    pub max_bytes: usize,
    pub vocab_size: usize,
    pub vocab_sha256: String,
}

/// The window of a sensor model's backbone summary.
#[derive(Debug, Clone, Serialize)]
pub struct SensorSummary {
    pub channels: Vec<String>,
    pub samples: usize,
    pub normalise: crate::model::sensor::Normalise,
}

/// The input a backbone expects.
#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    pub shape: Vec<usize>,
    /// `nchw` or `nhwc`.
    pub layout: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl BackboneSummary {
    /// The summary of a loaded model.
    pub fn of(embedder: &Embedder) -> BackboneSummary {
        let b = embedder.backbone.info();
        let spec = &embedder.model.spec.input;
        BackboneSummary {
            name: b.name.clone(),
            sha256: b.sha256.clone(),
            modality: embedder.modality(),
            audio: embedder.model.spec.audio.clone(),
            text: embedder.tokenizer.as_ref().map(|t| TextSummary {
                lowercase: t.spec().lowercase,
                max_tokens: t.spec().max_tokens,
                max_bytes: t.spec().max_bytes,
                vocab_size: t.vocab_len(),
                vocab_sha256: t.vocab_sha256().to_string(),
            }),
            sensor: embedder.windows.as_ref().map(|w| SensorSummary {
                channels: w.spec().channels.clone(),
                samples: w.length(),
                normalise: w.spec().normalise,
            }),
            input: InputSummary {
                shape: spec.shape.clone(),
                layout: format!("{:?}", spec.layout).to_lowercase(),
                mean: spec.mean,
                std: spec.std,
            },
            embedding_dim: b.embedding_dim,
        }
    }
}

/// The head part of `{root}/info`.
#[derive(Debug, Serialize)]
pub struct HeadSummary {
    pub algorithm: Algorithm,
    pub version: u64,
    pub samples: u64,
    /// Prequential accuracy overall, recent and per class, and which classes have enough.
    pub training: crate::daemon::learner::record::Summary,
    /// `auto`: the candidate it predicts with and how each did (absent for other learners).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::head::AutoSummary>,
    pub classes: Vec<ClassInfo>,
}

/// `{root}/stats`: the service counters (`stats.rs`) and the learner's figures.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub uptime_secs: u64,
    pub infer: InferCounts,
    pub learn: LearnCounts,
    pub errors: u64,
    pub publish_dropped: u64,
    /// End to end: message received → prediction published, over the recent window.
    pub latency_ms: Option<Percentiles>,
    /// Backbone time per inference, over the recent window.
    pub backbone_ms: Option<Percentiles>,
    pub prequential: Prequential,
    pub mqtt: MqttCounts,
    pub rss_bytes: u64,
    #[serde(flatten)]
    pub learner: LearnerFigures,
}

#[derive(Debug, Serialize)]
pub struct InferCounts {
    pub received: u64,
    pub done: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct LearnCounts {
    pub received: u64,
    pub learned: u64,
    pub duplicates: u64,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// Test-then-train accuracy of learned samples.
#[derive(Debug, Serialize)]
pub struct Prequential {
    pub samples: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MqttCounts {
    pub connects: u64,
    pub connection_errors: u64,
}

/// The learner's part of `{root}/stats`.
#[derive(Debug, Serialize)]
pub struct LearnerFigures {
    pub queues: QueueDepths,
    pub head_version: u64,
    pub classes: usize,
    /// `auto`: as in `{root}/info` `head.auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::head::AutoSummary>,
    pub stored_samples: usize,
    pub stored_samples_bytes: usize,
    pub connected: bool,
    pub adapt: serde_json::Value,
    pub fleet: FleetCounts,
}

#[derive(Debug, Serialize)]
pub struct QueueDepths {
    pub infer: usize,
    pub learn: u64,
}

#[derive(Debug, Serialize)]
pub struct FleetCounts {
    pub peers: usize,
    pub rejected: u64,
}
