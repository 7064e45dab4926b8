//! Configuration: the commented default TOML (embedded), a config file and `ADAPTD_*` environment
//! overrides, merged (raw) → deserialized → validated into [`Settings`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::adapt::AdaptConfig;
use crate::fleet::FleetConfig;
use crate::head::HeadConfig;

/// The shipped, fully commented default configuration (`systemd/adaptd.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../systemd/adaptd.toml");

/// Environment variables with the `ADAPTD_` prefix that are not config keys.
const RESERVED_ENV: &[&str] = &["ADAPTD_LOG", "ADAPTD_CONFIG"];

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

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: RawDevice,
    broker: RawBroker,
    model: RawModel,
    head: HeadConfig,
    adapt: AdaptConfig,
    fleet: FleetConfig,
    publish: RawPublish,
    state: RawState,
    service: RawService,
    #[serde(default)]
    sources: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: String,
    root: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    url: String,
    embedded_port: u16,
    client_id: String,
    username: String,
    password_file: String,
    ca_file: String,
    client_cert_file: String,
    client_key_file: String,
    keepalive_secs: u64,
    inflight: u16,
    request_queue: usize,
    reconnect_min_ms: u64,
    reconnect_max_ms: u64,
    max_packet_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    dir: String,
    cache: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    head_interval_secs: u64,
    head_every_samples: u64,
    stats_interval_secs: u64,
    top_k: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: String,
    snapshot_every_samples: u64,
    keep_heads: usize,
    samples_max_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    workers: usize,
    infer_queue: usize,
    feedback_ring: usize,
    max_payload_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    topic: String,
    #[serde(default)]
    qos: u8,
}

// ---------------------------------------------------------------- validated

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
}

/// Request handling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    pub workers: usize,
    pub infer_queue: usize,
    pub feedback_ring: usize,
    pub max_payload_bytes: usize,
}

/// An external topic filter mapped to inference.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    pub topic: String,
    pub qos: u8,
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
    pub sources: Vec<SourceSettings>,
}

/// Validates a device id (or other name used in topics) with the same rule as class labels
/// ([`crate::head::validate_label`]): 1..=64 bytes, no `+`, `#`, `/`, NUL or control characters.
pub fn validate_name(kind: &str, s: &str) -> Result<(), String> {
    crate::head::validate_label(s).map_err(|e| format!("{kind}: {e}"))
}

// ---------------------------------------------------------------- loading

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// Merges `over` into `base`; every key of `over` must exist in `base` (sources excepted).
fn merge(base: &mut toml::Table, over: toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, value) in over {
        if section == "sources" {
            base.insert(section, value);
            continue;
        }
        let Some(toml::Value::Table(base_section)) = base.get_mut(&section) else {
            return Err(ConfigError::UnknownKey {
                key: section,
                origin: origin.to_string(),
            });
        };
        let toml::Value::Table(keys) = value else {
            return Err(ConfigError::Parse {
                origin: origin.to_string(),
                message: format!("[{section}] must be a table"),
            });
        };
        for (key, v) in keys {
            if !base_section.contains_key(&key) {
                return Err(ConfigError::UnknownKey {
                    key: format!("{section}.{key}"),
                    origin: origin.to_string(),
                });
            }
            base_section.insert(key, v);
        }
    }
    Ok(())
}

/// Applies `ADAPTD_<SECTION>_<KEY>` variables; values take the type of the default.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("ADAPTD_") else {
            continue;
        };
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let unknown = || ConfigError::UnknownKey {
            key: name.clone(),
            origin: "environment".into(),
        };
        let (section, key) = lower.split_once('_').ok_or_else(unknown)?;
        let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
            return Err(unknown());
        };
        let Some(current) = sec.get(key) else {
            return Err(unknown());
        };
        let parsed = match current {
            toml::Value::String(_) => toml::Value::String(value),
            _ => {
                let doc = format!("v = {value}");
                let t = parse_table(&doc, &name)?;
                t.get("v").cloned().ok_or_else(unknown)?
            }
        };
        sec.insert(key.to_string(), parsed);
    }
    Ok(())
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
        let mut table = parse_table(DEFAULT_TOML, "defaults")?;
        if let Some(text) = text {
            merge(&mut table, parse_table(text, origin)?, origin)?;
        }
        apply_env(&mut table, env)?;
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: "merged configuration".into(),
                    message: e.to_string(),
                })?;
        validate(raw)
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
    if rc == 0 && validate_name("hostname", &name).is_ok() {
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
    let probe = dir.join(".adaptd-write-probe");
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

fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let device_id = non_empty(&raw.device.id).unwrap_or_else(hostname);
    validate_name("device.id", &device_id).map_err(|m| invalid("device.id", m))?;
    let root = raw.device.root.replace("{device_id}", &device_id);
    if root.is_empty() || root.contains(['+', '#']) || root.ends_with('/') || root.starts_with('/')
    {
        return Err(invalid(
            "device.root",
            format!("{root:?}: must be non-empty, without + or #, and not start or end with /"),
        ));
    }
    let b = raw.broker;
    let target = match non_empty(&b.url) {
        None => BrokerTarget::Embedded {
            port: b.embedded_port,
        },
        Some(url) => {
            let (tls, host, port) = parse_broker_url(&url)?;
            let tls = if tls {
                let ca_file = non_empty(&b.ca_file)
                    .ok_or_else(|| invalid("broker.ca_file", "mqtts:// needs a CA file (PEM)"))?;
                let client_auth = match (
                    non_empty(&b.client_cert_file),
                    non_empty(&b.client_key_file),
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
                Some(TlsSettings {
                    ca_file: PathBuf::from(ca_file),
                    client_auth,
                })
            } else {
                None
            };
            BrokerTarget::External { host, port, tls }
        }
    };
    let password = match non_empty(&b.password_file) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid("broker.password_file", format!("cannot read {path}: {e}")))?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        None => None,
    };
    if b.inflight == 0 {
        return Err(invalid("broker.inflight", "must be at least 1"));
    }
    if b.request_queue < 4 {
        return Err(invalid("broker.request_queue", "must be at least 4"));
    }
    if b.keepalive_secs < 5 {
        return Err(invalid("broker.keepalive_secs", "must be at least 5"));
    }
    if b.reconnect_min_ms == 0 || b.reconnect_max_ms < b.reconnect_min_ms {
        return Err(invalid(
            "broker.reconnect_min_ms",
            "need 0 < reconnect_min_ms <= reconnect_max_ms",
        ));
    }
    let client_id = non_empty(&b.client_id).unwrap_or_else(|| format!("adaptd-{device_id}"));
    let broker = BrokerSettings {
        target,
        client_id,
        username: non_empty(&b.username),
        password,
        keepalive: Duration::from_secs(b.keepalive_secs),
        inflight: b.inflight,
        request_queue: b.request_queue,
        reconnect_min: Duration::from_millis(b.reconnect_min_ms),
        reconnect_max: Duration::from_millis(b.reconnect_max_ms),
        max_packet_bytes: b.max_packet_bytes.max(64 * 1024),
    };
    raw.head
        .validate()
        .map_err(|e| invalid("head", e.to_string()))?;
    raw.adapt.validate().map_err(|e| invalid("adapt", e))?;
    raw.fleet.validate().map_err(|e| invalid("fleet", e))?;
    let p = raw.publish;
    if p.top_k == 0 {
        return Err(invalid("publish.top_k", "must be at least 1"));
    }
    if p.stats_interval_secs == 0 {
        return Err(invalid("publish.stats_interval_secs", "must be at least 1"));
    }
    let s = raw.state;
    if s.keep_heads == 0 {
        return Err(invalid("state.keep_heads", "must be at least 1"));
    }
    let sv = raw.service;
    if sv.infer_queue == 0 || sv.feedback_ring == 0 {
        return Err(invalid(
            "service",
            "infer_queue and feedback_ring must be at least 1",
        ));
    }
    if sv.max_payload_bytes == 0 {
        return Err(invalid("service.max_payload_bytes", "must be positive"));
    }
    let workers = if sv.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        sv.workers
    };
    let mut sources = Vec::new();
    for src in raw.sources {
        if src.topic.is_empty() || src.qos > 1 {
            return Err(invalid(
                "sources",
                format!("{:?}: topic must be non-empty and qos 0 or 1", src.topic),
            ));
        }
        sources.push(SourceSettings {
            topic: src.topic,
            qos: src.qos,
        });
    }
    Ok(Settings {
        device_id,
        root,
        broker,
        model_dir: non_empty(&raw.model.dir).map(PathBuf::from),
        model_cache: raw.model.cache,
        head: raw.head,
        adapt: raw.adapt,
        fleet: raw.fleet,
        publish: PublishSettings {
            head_interval: Duration::from_secs(p.head_interval_secs),
            head_every_samples: p.head_every_samples.max(1),
            stats_interval: Duration::from_secs(p.stats_interval_secs),
            top_k: p.top_k,
        },
        state: StateSettings {
            dir: non_empty(&s.dir)
                .map(PathBuf::from)
                .unwrap_or_else(default_state_dir),
            snapshot_every_samples: s.snapshot_every_samples.max(1),
            keep_heads: s.keep_heads,
            samples_max_bytes: s.samples_max_bytes,
        },
        service: ServiceSettings {
            workers,
            infer_queue: sv.infer_queue,
            feedback_ring: sv.feedback_ring,
            max_payload_bytes: sv.max_payload_bytes,
        },
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_load_and_are_embedded() {
        let s = Settings::from_parts(None, "", env(&[("ADAPTD_STATE_DIR", "/tmp/x")]))
            .expect("defaults");
        assert_eq!(s.broker.target, BrokerTarget::Embedded { port: 1883 });
        assert!(s.root.starts_with("adaptd/"));
        assert_eq!(s.state.dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.publish.top_k, 3);
    }

    #[test]
    fn env_overrides_take_the_type_of_the_key() {
        let s = Settings::from_parts(
            None,
            "",
            env(&[
                ("ADAPTD_BROKER_URL", "mqtt://127.0.0.1:1999"),
                ("ADAPTD_DEVICE_ID", "cam1"),
                ("ADAPTD_STATE_DIR", "/tmp/s"),
                ("ADAPTD_PUBLISH_TOP_K", "5"),
                ("ADAPTD_HEAD_ALGORITHM", "slda"),
                ("ADAPTD_LOG", "debug"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("env");
        assert_eq!(
            s.broker.target,
            BrokerTarget::External {
                host: "127.0.0.1".into(),
                port: 1999,
                tls: None
            }
        );
        assert_eq!(s.root, "adaptd/cam1");
        assert_eq!(s.broker.client_id, "adaptd-cam1");
        assert_eq!(s.publish.top_k, 5);
        assert_eq!(s.head.algorithm.to_string(), "slda");
    }

    #[test]
    fn unknown_keys_are_errors_in_file_and_env() {
        let e = Settings::from_parts(Some("[broker]\nurll = \"x\"\n"), "f.toml", env(&[]))
            .expect_err("typo");
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e}");
        let e = Settings::from_parts(None, "", env(&[("ADAPTD_BROKER_URLL", "x")]))
            .expect_err("env typo");
        assert!(e.to_string().contains("ADAPTD_BROKER_URLL"));
        let e =
            Settings::from_parts(Some("[nope]\na = 1\n"), "f.toml", env(&[])).expect_err("section");
        assert!(matches!(e, ConfigError::UnknownKey { .. }));
    }

    #[test]
    fn invalid_values_are_refused() {
        for (text, key) in [
            ("[device]\nid = \"a/b\"\n", "device.id"),
            ("[broker]\nurl = \"http://x\"\n", "broker.url"),
            ("[broker]\nurl = \"mqtts://x\"\n", "broker.ca_file"),
            ("[publish]\ntop_k = 0\n", "publish.top_k"),
        ] {
            let e = Settings::from_parts(Some(text), "f", env(&[("ADAPTD_STATE_DIR", "/tmp")]))
                .expect_err(text);
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Settings::from_parts(Some("[broker]\nkeepalive_secs = \"x\"\n"), "f", env(&[]))
            .expect_err("type");
        assert!(matches!(e, ConfigError::Parse { .. }));
    }

    #[test]
    fn shipped_head_defaults_equal_the_code_defaults() {
        let s =
            Settings::from_parts(None, "", env(&[("ADAPTD_STATE_DIR", "/tmp")])).expect("defaults");
        assert_eq!(s.head, HeadConfig::default());
        let e = Settings::from_parts(
            Some("[head]\nslda_shrinkage = 2.0\n"),
            "f",
            env(&[("ADAPTD_STATE_DIR", "/tmp")]),
        )
        .expect_err("bad shrinkage");
        assert!(e.to_string().contains("head"), "{e}");
    }

    #[test]
    fn sources_and_urls() {
        let s = Settings::from_parts(
            Some("[broker]\nurl = \"mqtt://broker.lan\"\n[[sources]]\ntopic = \"cam/+/snap\"\n"),
            "f",
            env(&[("ADAPTD_STATE_DIR", "/tmp")]),
        )
        .expect("sources");
        assert_eq!(s.sources.len(), 1);
        assert!(matches!(
            s.broker.target,
            BrokerTarget::External { port: 1883, .. }
        ));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("label", "cat").is_ok());
        for bad in ["", "a+b", "a#", "a/b", "a\0b", &"x".repeat(65)] {
            assert!(validate_name("label", bad).is_err(), "{bad:?}");
        }
    }
}
