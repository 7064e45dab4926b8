//! The `[fleet]` section of the config and the hex public keys it lists.

use serde::{Deserialize, Serialize};

fn d_prefix() -> String {
    "adaptd/fleet".into()
}
fn d_max_peer_samples() -> u64 {
    1_000_000
}
fn d_max_peers() -> usize {
    1024
}
fn d_max_store_mb() -> u64 {
    1024
}
fn d_deltas() -> bool {
    true
}

/// The `[fleet]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Fleet group name; empty = no fleet (the board learns alone).
    #[serde(default)]
    pub group: String,
    /// Topic prefix of the fleet: heads on `{prefix}/{group}/heads/{device_id}`.
    #[serde(default = "d_prefix")]
    pub topic_prefix: String,
    /// Public keys (hex, 64 characters) whose heads are merged.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// A file with more trusted keys, one hex key per line (`#` comments).
    #[serde(default)]
    pub trusted_keys_file: String,
    /// Peer device ids never merged.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Largest sample count a peer head may claim; heads above it are rejected.
    #[serde(default = "d_max_peer_samples")]
    pub max_peer_samples: u64,
    /// Most peers merged.
    #[serde(default = "d_max_peers")]
    pub max_peers: usize,
    /// Most MiB of peer heads kept in the state directory (`fleet-heads/`); a head that would
    /// go beyond is refused (`fleet_store_full`).
    #[serde(default = "d_max_store_mb")]
    pub max_store_mb: u64,
    /// Send what was learned as deltas (`{prefix}/{group}/deltas/{device_id}`) beside the
    /// retained whole head, and take peers' changes from their deltas: whole heads are then
    /// read only to catch up (after connecting, or when a delta cannot be applied). Off keeps
    /// every peer's whole head coming (for a fleet with boards that send no deltas).
    #[serde(default = "d_deltas")]
    pub deltas: bool,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            group: String::new(),
            topic_prefix: d_prefix(),
            trusted_keys: Vec::new(),
            trusted_keys_file: String::new(),
            exclude: Vec::new(),
            max_peer_samples: d_max_peer_samples(),
            max_peers: d_max_peers(),
            max_store_mb: d_max_store_mb(),
            deltas: d_deltas(),
        }
    }
}

impl FleetConfig {
    /// Whether the board is in a fleet.
    pub fn enabled(&self) -> bool {
        !self.group.is_empty()
    }

    /// Checks names and keys (not the keys file, read at start).
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled() {
            crate::head::validate_label(&self.group).map_err(|e| format!("group: {e}"))?;
            if self.topic_prefix.is_empty()
                || self.topic_prefix.contains(['+', '#'])
                || self.topic_prefix.ends_with('/')
            {
                return Err("topic_prefix must be a topic without wildcards or trailing /".into());
            }
        }
        for k in &self.trusted_keys {
            parse_key(k)?;
        }
        if self.max_peers == 0 || self.max_peer_samples == 0 || self.max_store_mb == 0 {
            return Err("max_peers, max_peer_samples and max_store_mb must be ≥ 1".into());
        }
        Ok(())
    }

    /// [`max_store_mb`](Self::max_store_mb) in bytes.
    pub fn max_store_bytes(&self) -> u64 {
        self.max_store_mb.saturating_mul(1 << 20)
    }

    /// The trusted keys: the list plus the file.
    pub fn load_trusted(&self) -> Result<Vec<[u8; 32]>, String> {
        let mut keys: Vec<[u8; 32]> = self
            .trusted_keys
            .iter()
            .map(|k| parse_key(k))
            .collect::<Result<_, _>>()?;
        if !self.trusted_keys_file.is_empty() {
            let text = std::fs::read_to_string(&self.trusted_keys_file)
                .map_err(|e| format!("{}: {e}", self.trusted_keys_file))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                keys.push(
                    parse_key(line)
                        .map_err(|e| format!("{} line {}: {e}", self.trusted_keys_file, n + 1))?,
                );
            }
        }
        Ok(keys)
    }
}

/// Parses a hex Ed25519 public key.
pub fn parse_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("key {s:?}: not hex ({e})"))?;
    bytes
        .try_into()
        .map_err(|_| format!("key {s:?}: an Ed25519 public key is 32 bytes (64 hex digits)"))
}
