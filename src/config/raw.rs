//! Step 1 of 3, the configuration as written: serde structs mirroring the TOML sections, with
//! unknown keys refused. `[head]`, `[adapt]` and `[fleet]` use their modules' config types.

use serde::Deserialize;

use crate::adapt::AdaptConfig;
use crate::fleet::FleetConfig;
use crate::head::HeadConfig;

/// The whole merged configuration, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub device: RawDevice,
    pub broker: RawBroker,
    pub model: RawModel,
    pub head: HeadConfig,
    pub adapt: AdaptConfig,
    pub fleet: FleetConfig,
    pub publish: RawPublish,
    pub state: RawState,
    pub service: RawService,
    pub homeassistant: RawHomeAssistant,
    #[serde(default)]
    pub sources: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub id: String,
    pub root: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub url: String,
    pub embedded_port: u16,
    pub client_id: String,
    pub username: String,
    pub password_file: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    pub keepalive_secs: u64,
    pub inflight: u16,
    pub request_queue: usize,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub max_packet_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub dir: String,
    pub cache: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub head_interval_secs: u64,
    pub head_every_samples: u64,
    pub stats_interval_secs: u64,
    pub top_k: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub dir: String,
    pub snapshot_every_samples: u64,
    pub keep_heads: usize,
    pub samples_max_bytes: u64,
    pub unlearn_max_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub workers: usize,
    pub infer_queue: usize,
    pub feedback_ring: usize,
    pub max_payload_bytes: usize,
    pub review: bool,
    pub review_margin: f32,
    pub review_interval_secs: f64,
    pub review_max_bytes: u64,
    pub review_thumbnail_px: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomeAssistant {
    pub enabled: String,
    pub discovery_prefix: String,
    pub node_name: String,
    pub image: bool,
}

/// One `[[sources]]` entry. The shipped file has none (only a commented example), so `qos`
/// defaults here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    /// `frames` (default), `stream`, `frigate` or `readings`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub window_seconds: Option<f64>,
    #[serde(default)]
    pub hop_seconds: Option<f64>,
    #[serde(default)]
    pub threshold: Option<f32>,
    /// `kind = "frigate"`: the cameras and objects to classify (empty = all).
    #[serde(default)]
    pub cameras: Option<Vec<String>>,
    #[serde(default)]
    pub objects: Option<Vec<String>>,
    /// `kind = "frames"` on a text model: the JSON field holding the text.
    #[serde(default)]
    pub text_field: Option<String>,
    /// `kind = "readings"`: readings between two windows (default: the model's window length).
    #[serde(default)]
    pub hop_readings: Option<usize>,
}
