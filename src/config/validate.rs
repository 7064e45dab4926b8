//! Step 3 of 3, raw → [`Settings`]: each section checks its values and fills the defaults that
//! depend on the machine (hostname, state directory, core count), in one style:
//! `Raw<Section>::validate(self) -> Result<<Section>Settings, ConfigError>`. Sections are
//! checked in file order, so the first invalid key reported stays the same.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{
    RawBroker, RawConfig, RawDevice, RawHomeAssistant, RawModel, RawPublish, RawService, RawSource,
    RawState,
};
use super::{
    BrokerSettings, BrokerTarget, ConfigError, FrigateSource, HomeAssistantSettings,
    PublishSettings, ReadingsSource, ServiceSettings, Settings, SourceTopic, StateSettings,
    StreamSource, TlsSettings,
};
use crate::adapt::AdaptConfig;
use crate::fleet::FleetConfig;
use crate::head::{validate_label, HeadConfig};

/// Largest `state.unlearn_max_bytes` (the ledger is part of every snapshot, and snapshots
/// are read back up to 2 GiB).
const MAX_UNLEARN_BYTES: u64 = 1 << 30;

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Settings, ConfigError> {
        let device = self.device.validate()?;
        let broker = self.broker.validate(&device.id)?;
        let model = self.model.validate()?;
        let head = section("head", self.head, HeadConfig::validate)?;
        let adapt = section("adapt", self.adapt, AdaptConfig::validate)?;
        let fleet = section("fleet", self.fleet, FleetConfig::validate)?;
        let publish = self.publish.validate()?;
        let state = self.state.validate()?;
        let service = self.service.validate()?;
        let homeassistant = self.homeassistant.validate(&device.id)?;
        let sources = self
            .sources
            .into_iter()
            .map(RawSource::validate)
            .collect::<Result<_, _>>()?;
        Ok(Settings {
            device_id: device.id,
            root: device.root,
            broker,
            model_dir: model.dir,
            model_cache: model.cache,
            head,
            adapt,
            fleet,
            publish,
            state,
            service,
            homeassistant,
            sources,
        })
    }
}

/// `[head]`, `[adapt]` and `[fleet]` deserialize into their modules' config types, which check
/// themselves; a failure is reported under the section's name.
fn section<T, E: Display>(
    name: &str,
    config: T,
    check: impl FnOnce(&T) -> Result<(), E>,
) -> Result<T, ConfigError> {
    check(&config).map_err(|e| invalid(name, e.to_string()))?;
    Ok(config)
}

/// `[device]` validated; [`Settings`] holds these as `device_id` and `root`.
struct Device {
    id: String,
    root: String,
}

impl RawDevice {
    fn validate(self) -> Result<Device, ConfigError> {
        let id = non_empty(&self.id).unwrap_or_else(hostname);
        // Device ids go into topics: the label rule applies.
        validate_label(&id).map_err(|e| invalid("device.id", format!("device.id: {e}")))?;
        let root = self.root.replace("{device_id}", &id);
        if root.is_empty()
            || root.contains(['+', '#'])
            || root.ends_with('/')
            || root.starts_with('/')
        {
            return Err(invalid(
                "device.root",
                format!("{root:?}: must be non-empty, without + or #, and not start or end with /"),
            ));
        }
        Ok(Device { id, root })
    }
}

impl RawBroker {
    /// `device_id` names the default client id.
    fn validate(self, device_id: &str) -> Result<BrokerSettings, ConfigError> {
        let target = match non_empty(&self.url) {
            None => BrokerTarget::Embedded {
                port: self.embedded_port,
            },
            Some(url) => {
                let (tls, host, port) = parse_broker_url(&url)?;
                let tls = if tls { Some(self.tls()?) } else { None };
                BrokerTarget::External { host, port, tls }
            }
        };
        let password = match non_empty(&self.password_file) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid("broker.password_file", format!("cannot read {path}: {e}"))
                })?;
                Some(text.lines().next().unwrap_or_default().to_string())
            }
            None => None,
        };
        if self.inflight == 0 {
            return Err(invalid("broker.inflight", "must be at least 1"));
        }
        if self.request_queue < 4 {
            return Err(invalid("broker.request_queue", "must be at least 4"));
        }
        if self.keepalive_secs < 5 {
            return Err(invalid("broker.keepalive_secs", "must be at least 5"));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid(
                "broker.reconnect_min_ms",
                "need 0 < reconnect_min_ms <= reconnect_max_ms",
            ));
        }
        let client_id = non_empty(&self.client_id).unwrap_or_else(|| format!("adaptd-{device_id}"));
        Ok(BrokerSettings {
            target,
            client_id,
            username: non_empty(&self.username),
            password,
            keepalive: Duration::from_secs(self.keepalive_secs),
            inflight: self.inflight,
            request_queue: self.request_queue,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            max_packet_bytes: self.max_packet_bytes.max(64 * 1024),
        })
    }

    /// The TLS material an `mqtts://` URL needs.
    fn tls(&self) -> Result<TlsSettings, ConfigError> {
        let ca_file = non_empty(&self.ca_file)
            .ok_or_else(|| invalid("broker.ca_file", "mqtts:// needs a CA file (PEM)"))?;
        let client_auth = match (
            non_empty(&self.client_cert_file),
            non_empty(&self.client_key_file),
        ) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "broker.client_cert_file",
                    "client_cert_file and client_key_file go together",
                ))
            }
        };
        Ok(TlsSettings {
            ca_file: PathBuf::from(ca_file),
            client_auth,
        })
    }
}

/// `[model]` validated; [`Settings`] holds these as `model_dir` and `model_cache`.
struct Model {
    dir: Option<PathBuf>,
    cache: bool,
}

impl RawModel {
    fn validate(self) -> Result<Model, ConfigError> {
        Ok(Model {
            dir: non_empty(&self.dir).map(PathBuf::from),
            cache: self.cache,
        })
    }
}

impl RawPublish {
    fn validate(self) -> Result<PublishSettings, ConfigError> {
        if self.top_k == 0 {
            return Err(invalid("publish.top_k", "must be at least 1"));
        }
        if self.stats_interval_secs == 0 {
            return Err(invalid("publish.stats_interval_secs", "must be at least 1"));
        }
        Ok(PublishSettings {
            head_interval: Duration::from_secs(self.head_interval_secs),
            head_every_samples: self.head_every_samples.max(1),
            stats_interval: Duration::from_secs(self.stats_interval_secs),
            top_k: self.top_k,
        })
    }
}

impl RawState {
    fn validate(self) -> Result<StateSettings, ConfigError> {
        if self.keep_heads == 0 {
            return Err(invalid("state.keep_heads", "must be at least 1"));
        }
        if self.unlearn_max_bytes > MAX_UNLEARN_BYTES {
            return Err(invalid(
                "state.unlearn_max_bytes",
                "must be at most 1073741824 (1 GiB; snapshots are read back up to 2 GiB)",
            ));
        }
        Ok(StateSettings {
            dir: non_empty(&self.dir)
                .map(PathBuf::from)
                .unwrap_or_else(default_state_dir),
            snapshot_every_samples: self.snapshot_every_samples.max(1),
            keep_heads: self.keep_heads,
            samples_max_bytes: self.samples_max_bytes,
            unlearn_max_bytes: self.unlearn_max_bytes,
        })
    }
}

impl RawService {
    fn validate(self) -> Result<ServiceSettings, ConfigError> {
        if self.infer_queue == 0 || self.feedback_ring == 0 {
            return Err(invalid(
                "service",
                "infer_queue and feedback_ring must be at least 1",
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(invalid("service.max_payload_bytes", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.review_margin) {
            return Err(invalid("service.review_margin", "must be in [0, 1]"));
        }
        if !(self.review_interval_secs.is_finite()
            && (0.0..=86400.0).contains(&self.review_interval_secs))
        {
            return Err(invalid(
                "service.review_interval_secs",
                "must be in [0, 86400]",
            ));
        }
        if self.review_thumbnail_px > 1024 {
            return Err(invalid(
                "service.review_thumbnail_px",
                "must be at most 1024",
            ));
        }
        let workers = if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        };
        Ok(ServiceSettings {
            workers,
            infer_queue: self.infer_queue,
            feedback_ring: self.feedback_ring,
            max_payload_bytes: self.max_payload_bytes,
            review: self.review,
            review_margin: self.review_margin,
            review_interval: Duration::from_secs_f64(self.review_interval_secs),
            review_max_bytes: usize::try_from(self.review_max_bytes).unwrap_or(usize::MAX),
            review_thumbnail_px: self.review_thumbnail_px,
        })
    }
}

impl RawHomeAssistant {
    fn validate(self, device_id: &str) -> Result<HomeAssistantSettings, ConfigError> {
        let enabled = match self.enabled.trim() {
            "auto" | "" => None,
            "true" | "on" | "yes" => Some(true),
            "false" | "off" | "no" => Some(false),
            other => {
                return Err(invalid(
                    "homeassistant.enabled",
                    format!("{other:?} is not \"auto\", \"true\" or \"false\""),
                ))
            }
        };
        let prefix = self.discovery_prefix.trim().trim_end_matches('/');
        if prefix.is_empty() || prefix.contains(['+', '#', '\0']) {
            return Err(invalid(
                "homeassistant.discovery_prefix",
                "must be a non-empty topic without + or #",
            ));
        }
        let node_name = non_empty(&self.node_name).unwrap_or_else(|| format!("adaptd {device_id}"));
        if node_name.len() > 128 || node_name.chars().any(char::is_control) {
            return Err(invalid(
                "homeassistant.node_name",
                "at most 128 bytes, no control characters",
            ));
        }
        Ok(HomeAssistantSettings {
            enabled,
            discovery_prefix: prefix.to_string(),
            node_name,
            image: self.image,
        })
    }
}

impl RawSource {
    fn validate(self) -> Result<SourceTopic, ConfigError> {
        let bad = |why: &str| invalid("sources", format!("{:?}: {why}", self.topic));
        if self.topic.is_empty() || self.qos > 1 {
            return Err(bad("topic must be non-empty and qos 0 or 1"));
        }
        let stream_keys =
            self.window_seconds.is_some() || self.hop_seconds.is_some() || self.threshold.is_some();
        let kind = self.kind.as_deref().unwrap_or("frames");
        if kind != "readings" && self.hop_readings.is_some() {
            return Err(bad("hop_readings is for kind = \"readings\""));
        }
        if kind == "readings" {
            if stream_keys {
                return Err(bad(
                    "window_seconds, hop_seconds and threshold are for kind = \"stream\"; \
                     readings use hop_readings",
                ));
            }
            if self.hop_readings == Some(0) {
                return Err(bad("hop_readings must be at least 1"));
            }
            if self.text_field.is_some() || self.cameras.is_some() || self.objects.is_some() {
                return Err(bad(
                    "text_field, cameras and objects are not for kind = \"readings\"",
                ));
            }
            return Ok(SourceTopic {
                topic: self.topic,
                qos: self.qos,
                stream: None,
                frigate: None,
                text_field: None,
                readings: Some(ReadingsSource {
                    hop: self.hop_readings,
                }),
            });
        }
        if kind != "frames" && self.text_field.is_some() {
            return Err(bad("text_field is for kind = \"frames\""));
        }
        if self.text_field.as_deref() == Some("") {
            return Err(bad("text_field must name a JSON field"));
        }
        if kind != "frigate" && (self.cameras.is_some() || self.objects.is_some()) {
            return Err(bad("cameras and objects are for kind = \"frigate\""));
        }
        if kind == "frigate" {
            if stream_keys {
                return Err(bad(
                    "window_seconds, hop_seconds and threshold are for kind = \"stream\"",
                ));
            }
            let prefix = self.topic.trim_end_matches('/').to_string();
            if prefix.is_empty() || prefix.contains(['+', '#']) {
                return Err(bad(
                    "topic is Frigate's topic prefix (e.g. \"frigate\"), without wildcards",
                ));
            }
            let names = |v: Option<Vec<String>>, what: &str| -> Result<Vec<String>, ConfigError> {
                let v = v.unwrap_or_default();
                if v.iter()
                    .any(|n| n.is_empty() || n.contains(['+', '#', '/']))
                {
                    return Err(bad(&format!("{what} must be names without + # /")));
                }
                Ok(v)
            };
            let frigate = FrigateSource {
                cameras: names(self.cameras, "cameras")?,
                objects: names(self.objects, "objects")?,
                prefix: prefix.clone(),
            };
            return Ok(SourceTopic {
                topic: format!("{prefix}/+/+/snapshot"),
                qos: self.qos,
                stream: None,
                frigate: Some(frigate),
                text_field: None,
                readings: None,
            });
        }
        let stream = match kind {
            "frames" if stream_keys => {
                return Err(bad(
                    "window_seconds, hop_seconds and threshold are for kind = \"stream\"",
                ))
            }
            "frames" => None,
            "stream" => {
                let window = self.window_seconds;
                let hop = self.hop_seconds.unwrap_or(0.48);
                let threshold = self.threshold.unwrap_or(0.5);
                if let Some(w) = window {
                    if !(w.is_finite() && w > 0.0 && w <= 30.0) {
                        return Err(bad("window_seconds must be in (0, 30]"));
                    }
                }
                if !(hop.is_finite() && hop >= 0.05 && hop <= window.unwrap_or(30.0)) {
                    return Err(bad(
                        "hop_seconds must be at least 0.05 and at most the window",
                    ));
                }
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(bad("threshold must be in [0, 1]"));
                }
                Some(StreamSource {
                    window_seconds: window,
                    hop_seconds: hop,
                    threshold,
                })
            }
            other => {
                return Err(bad(&format!(
                    "kind {other:?} is not frames, stream, frigate or readings"
                )))
            }
        };
        Ok(SourceTopic {
            topic: self.topic,
            qos: self.qos,
            stream,
            frigate: None,
            text_field: self.text_field,
            readings: None,
        })
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_string())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if rc == 0 && validate_label(&name).is_ok() {
        name
    } else {
        "adaptd".into()
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, colon-separated: the first is ours.
        let d = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(d);
    }
    let system = Path::new("/var/lib/adaptd");
    let writable = std::fs::create_dir_all(system).is_ok() && tempfile_probe(system);
    if writable {
        return system.to_path_buf();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".local/state/adaptd")
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(crate::state::files::WRITE_PROBE);
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn parse_broker_url(url: &str) -> Result<(bool, String, u16), ConfigError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(invalid(
            "broker.url",
            format!("{url:?} must start with mqtt:// or mqtts://"),
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| invalid("broker.url", format!("bad port {p:?}")))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(invalid("broker.url", "no host"));
    }
    Ok((tls, host, port))
}
