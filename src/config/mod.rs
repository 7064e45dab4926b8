//! Configuration, in three steps: the sections as written (`raw.rs`), merged from the embedded
//! defaults, a config file and `ADAPTD_*` environment overrides (`merge.rs`), then validated
//! into [`Settings`] (`validate.rs`). This file holds what the rest of the crate
//! sees: the shipped defaults, the settings types and how to load them.

mod merge;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapt::AdaptConfig;
use crate::fleet::FleetConfig;
use crate::head::HeadConfig;

/// The shipped, fully commented default configuration (`systemd/adaptd.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../systemd/adaptd.toml");

/// Errors while reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("unknown config key {key} (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerTarget {
    /// Start rumqttd in-process on 127.0.0.1:port (0 = any free port).
    Embedded { port: u16 },
    /// An external broker.
    External {
        host: String,
        port: u16,
        tls: Option<TlsSettings>,
    },
}

/// TLS material for `mqtts://`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// CA certificate(s), PEM.
    pub ca_file: PathBuf,
    /// Client certificate and key for mutual TLS, PEM.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Broker connection settings.
#[derive(Clone, PartialEq)]
pub struct BrokerSettings {
    pub target: BrokerTarget,
    pub client_id: String,
    pub username: Option<String>,
    /// Read from `password_file`; never logged (Debug redacts it).
    pub password: Option<String>,
    pub keepalive: Duration,
    pub inflight: u16,
    /// Requests (publishes, acks, subscriptions) rumqttc holds for its event loop.
    pub request_queue: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_packet_bytes: usize,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("target", &self.target)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keepalive", &self.keepalive)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

/// Publishing cadence.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishSettings {
    pub head_interval: Duration,
    pub head_every_samples: u64,
    pub stats_interval: Duration,
    pub top_k: usize,
}

/// State directory settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    pub dir: PathBuf,
    pub snapshot_every_samples: u64,
    pub keep_heads: usize,
    pub samples_max_bytes: u64,
    /// Budget of the ledger of learned samples by id (`cmd/unlearn`, `cmd/relabel`).
    pub unlearn_max_bytes: u64,
}

/// Request handling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    pub workers: usize,
    pub infer_queue: usize,
    pub feedback_ring: usize,
    pub max_payload_bytes: usize,
    /// The review queue (`{root}/review`, `daemon/review.rs`).
    pub review: bool,
    /// Offer a prediction whose top two scores are closer than this.
    pub review_margin: f32,
    /// At most one offer per interval.
    pub review_interval: Duration,
    /// Budget of the embeddings kept for feedback on offered predictions.
    pub review_max_bytes: usize,
    /// Thumbnail size (longest side, pixels); 0 = none.
    pub review_thumbnail_px: u32,
}

/// An external topic filter mapped to inference.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTopic {
    pub topic: String,
    pub qos: u8,
    /// `kind = "stream"`: audio chunks gathered into a sliding window; `None`: each message is
    /// one input.
    pub stream: Option<StreamSource>,
    /// `kind = "frigate"`: `topic` is `{prefix}/+/+/snapshot`; the camera and object come from
    /// the topic.
    pub frigate: Option<FrigateSource>,
    /// `text_field = "…"`: a JSON message's text is this field (a voice assistant's transcript,
    /// e.g. Rhasspy's `hermes/asr/textCaptured` `{"text": …, "siteId": …}`); a payload that is
    /// not a JSON object is the text itself.
    pub text_field: Option<String>,
    /// `kind = "readings"`: a sensor's readings gathered into the model's windows.
    pub readings: Option<ReadingsSource>,
}

/// A live sensor source (`[[sources]] kind = "readings"`): each message one reading or a few,
/// gathered per topic into the sensor model's window.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsSource {
    /// Readings between two windows; `None` = the model's window length (each reading in one
    /// window).
    pub hop: Option<usize>,
}

/// Frigate's per-camera object snapshots (`[[sources]] kind = "frigate"`).
#[derive(Debug, Clone, PartialEq)]
pub struct FrigateSource {
    /// Frigate's topic prefix (`frigate`).
    pub prefix: String,
    /// Cameras to classify; empty = all.
    pub cameras: Vec<String>,
    /// Objects to classify; empty = all.
    pub objects: Vec<String>,
}

impl FrigateSource {
    /// The camera and object of a snapshot topic `{prefix}/{camera}/{object}/snapshot`, when
    /// it is one this source takes.
    pub fn origin<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/snapshot")?;
        let (camera, object) = rest.split_once('/')?;
        let wanted = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        (!camera.is_empty()
            && !object.is_empty()
            && !object.contains('/')
            && wanted(&self.cameras, camera)
            && wanted(&self.objects, object))
        .then_some((camera, object))
    }
}

/// `[homeassistant]`: MQTT discovery for Home Assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct HomeAssistantSettings {
    /// `None` = auto: on unless the broker is adaptd's embedded one.
    pub enabled: Option<bool>,
    pub discovery_prefix: String,
    /// The device's name; already defaulted.
    pub node_name: String,
    /// Publish the last classified image.
    pub image: bool,
}

/// A live audio source's sliding window (`[[sources]] kind = "stream"`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSource {
    /// Window length; `None` = one window of the model.
    pub window_seconds: Option<f64>,
    /// Time between windows.
    pub hop_seconds: f64,
    /// Score at which the top label counts as heard.
    pub threshold: f32,
}

/// Validated settings: the rest of the code only sees these.
#[derive(Debug, Clone)]
pub struct Settings {
    pub device_id: String,
    /// Topic root, e.g. `adaptd/cam1`.
    pub root: String,
    pub broker: BrokerSettings,
    /// Model directory; `None` = the shipped model.
    pub model_dir: Option<PathBuf>,
    /// Cache the decluttered model in the state directory (faster start).
    pub model_cache: bool,
    pub head: HeadConfig,
    pub adapt: AdaptConfig,
    pub fleet: FleetConfig,
    pub publish: PublishSettings,
    pub state: StateSettings,
    pub service: ServiceSettings,
    pub homeassistant: HomeAssistantSettings,
    pub sources: Vec<SourceTopic>,
}

impl Settings {
    /// Loads the defaults, then `file` (if any; else `$CONFIGURATION_DIRECTORY/adaptd.toml`
    /// when systemd set that directory and the file exists), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let systemd_file = std::env::var_os("CONFIGURATION_DIRECTORY")
            .map(|d| PathBuf::from(d).join("adaptd.toml"))
            .filter(|p| p.is_file());
        let file = file.or(systemd_file.as_deref());
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let origin = file.map(|p| p.display().to_string()).unwrap_or_default();
        Settings::from_parts(text.as_deref(), &origin, std::env::vars())
    }

    /// Builds settings from a config text (or none) and a set of environment variables.
    pub fn from_parts(
        text: Option<&str>,
        origin: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        merge::merged(text, origin, env)?.validate()
    }
}
