//! Fleet learning: this board's Ed25519 identity, signed head envelopes on the group topic,
//! verification of peers' heads (trusted key, signature, replay, backbone, algorithm, bounded
//! statistics), the peer table and the fleet head (local statistics merged with every peer's
//! latest local head). See `docs/fleet.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cbor::Bytes;
use crate::head::{Algorithm, Expect, Head, HeadError};
use crate::state::files::{write_atomic, write_atomic_with, FLEET_KEY, FLEET_PEERS};

/// Largest |mean| of an embedding dimension a peer head may claim (and its square for the
/// variance): far beyond any real backbone's outputs, small enough to keep merges finite.
const MAX_ABS_MEAN: f64 = 1e6;

/// Envelope format name and version.
pub const ENVELOPE_FORMAT: &str = "adaptd-fleet-head";
const ENVELOPE_VERSION: u32 = 1;
/// Domain separation of the signed message.
const SIGNING_TAG: &[u8] = b"adaptd fleet head v1\0";

fn d_prefix() -> String {
    "adaptd/fleet".into()
}
fn d_max_peer_samples() -> u64 {
    1_000_000
}
fn d_max_peers() -> usize {
    64
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
        if self.max_peers == 0 || self.max_peer_samples == 0 {
            return Err("max_peers and max_peer_samples must be ≥ 1".into());
        }
        Ok(())
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

/// Why a peer's head was refused. Stable codes for `{root}/error`.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("not a signed fleet head envelope: {0}")]
    Unsigned(String),
    #[error("head signed by a key that is not trusted ({0})")]
    Untrusted(String),
    #[error("bad signature (tampered or corrupted head)")]
    BadSignature,
    #[error("envelope for {got:?} arrived on the topic of {topic:?}")]
    WrongPeer { topic: String, got: String },
    #[error("peer {peer} is bound to another key")]
    KeyChanged { peer: String },
    #[error("replayed or stale head: version {got} of {peer}, already have {have}")]
    Replay { peer: String, have: u64, got: u64 },
    #[error("peer head claims {got} samples, above the cap of {cap} (fleet.max_peer_samples)")]
    TooManySamples { got: u64, cap: u64 },
    #[error("absurd statistics: {0}")]
    Absurd(String),
    #[error("too many peers (fleet.max_peers = {0})")]
    TooManyPeers(usize),
    #[error("peer {0} is excluded")]
    Excluded(String),
    #[error(transparent)]
    Head(#[from] HeadError),
}

impl FleetError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            FleetError::Unsigned(_) => "fleet_unsigned",
            FleetError::Untrusted(_) => "fleet_untrusted",
            FleetError::BadSignature => "fleet_bad_signature",
            FleetError::WrongPeer { .. } => "fleet_wrong_peer",
            FleetError::KeyChanged { .. } => "fleet_key_changed",
            FleetError::Replay { .. } => "fleet_replay",
            FleetError::TooManySamples { .. } => "fleet_too_many_samples",
            FleetError::TooManyPeers(_) => "fleet_too_many_peers",
            FleetError::Absurd(_) => "fleet_absurd",
            FleetError::Excluded(_) => "fleet_excluded",
            FleetError::Head(e) => e.code(),
        }
    }
}

/// This board's signing key.
pub struct Identity {
    pair: Ed25519KeyPair,
}

impl Identity {
    /// Loads `dir/fleet.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Identity> {
        let path = dir.join(FLEET_KEY);
        let other = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        match std::fs::read(&path) {
            Ok(pkcs8) => Ed25519KeyPair::from_pkcs8(&pkcs8)
                .map(|pair| Identity { pair })
                .map_err(|e| {
                    other(format!(
                        "{}: not an Ed25519 PKCS#8 key: {e}",
                        path.display()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| other("cannot generate a key".into()))?;
                // Private from its creation: a power cut leaves no half-written key.
                write_atomic_with(&path, Some(0o600), |w| w.write_all(pkcs8.as_ref()))?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|e| other(format!("generated key unreadable: {e}")))?;
                tracing::info!(path = %path.display(), "generated this board's fleet key");
                Ok(Identity { pair })
            }
            Err(e) => Err(e),
        }
    }

    /// A key pair from a fixed seed. For tests and fuzzing only: a board's key comes from
    /// [`Identity::load_or_create`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<Identity, String> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|pair| Identity { pair })
            .map_err(|e| format!("bad Ed25519 seed: {e}"))
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        k
    }

    /// Re-signs an envelope with this key, whatever it holds (`None` if it is not an envelope).
    /// For fuzzing: lets a fuzzer reach the checks behind the signature with mutated heads.
    pub fn resign(&self, envelope: &[u8]) -> Option<Vec<u8>> {
        let mut env: Envelope = ciborium::from_reader(envelope).ok()?;
        let msg = signed_message(&env.device_id, &env.group, env.version, &env.head.0);
        env.public_key = Bytes(self.pair.public_key().as_ref().to_vec());
        env.signature = Bytes(self.pair.sign(&msg).as_ref().to_vec());
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out).ok()?;
        Some(out)
    }

    /// Seals `head` (the board's local head) for the group.
    pub fn seal(&self, device_id: &str, group: &str, head: &Head) -> Result<Vec<u8>, HeadError> {
        let bytes = head.to_bytes()?;
        let version = head.version();
        let msg = signed_message(device_id, group, version, &bytes);
        let env = Envelope {
            format: ENVELOPE_FORMAT.into(),
            envelope_version: ENVELOPE_VERSION,
            device_id: device_id.into(),
            group: group.into(),
            version,
            head: Bytes(bytes),
            public_key: Bytes(self.pair.public_key().as_ref().to_vec()),
            signature: Bytes(self.pair.sign(&msg).as_ref().to_vec()),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out)
            .map_err(|e| HeadError::Encode(format!("fleet envelope: {e}")))?;
        Ok(out)
    }
}

/// The signed message: tag, device id, group, version, SHA-256 of the head file.
fn signed_message(device_id: &str, group: &str, version: u64, head: &[u8]) -> Vec<u8> {
    let mut m = SIGNING_TAG.to_vec();
    for s in [device_id, group] {
        m.extend((s.len() as u32).to_le_bytes());
        m.extend(s.as_bytes());
    }
    m.extend(version.to_le_bytes());
    m.extend(Sha256::digest(head));
    m
}

/// A signed head as it travels on the fleet topic (CBOR).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: String,
    pub envelope_version: u32,
    pub device_id: String,
    pub group: String,
    pub version: u64,
    pub head: Bytes,
    pub public_key: Bytes,
    pub signature: Bytes,
}

/// A verified peer head.
pub struct Verified {
    pub version: u64,
    pub head: Head,
    pub key: String,
    pub head_sha256: String,
}

/// Checks an envelope from `peer`'s topic: format, group, trusted key, signature, then the
/// head itself (backbone, dimension, values) and the sample cap. Replay is checked by
/// [`Peers::accept`].
pub fn open(
    bytes: &[u8],
    peer: &str,
    group: &str,
    trusted: &[[u8; 32]],
    expect: &Expect<'_>,
    algorithm: Algorithm,
    max_samples: u64,
) -> Result<Verified, FleetError> {
    if bytes.len() > expect.max_bytes.saturating_add(4096) {
        return Err(FleetError::Head(HeadError::TooLarge {
            got: bytes.len(),
            limit: expect.max_bytes,
        }));
    }
    let env: Envelope =
        ciborium::from_reader(bytes).map_err(|e| FleetError::Unsigned(e.to_string()))?;
    if env.format != ENVELOPE_FORMAT || env.envelope_version != ENVELOPE_VERSION {
        return Err(FleetError::Unsigned(format!(
            "format {:?} v{}",
            env.format, env.envelope_version
        )));
    }
    if env.device_id != peer || env.group != group {
        return Err(FleetError::WrongPeer {
            topic: peer.into(),
            got: format!("{}@{}", env.device_id, env.group),
        });
    }
    let key: [u8; 32] = env
        .public_key
        .0
        .as_slice()
        .try_into()
        .map_err(|_| FleetError::Unsigned("public key is not 32 bytes".into()))?;
    let key_hex = hex::encode(key);
    if !trusted.contains(&key) {
        return Err(FleetError::Untrusted(key_hex));
    }
    let msg = signed_message(&env.device_id, &env.group, env.version, &env.head.0);
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&msg, &env.signature.0)
        .map_err(|_| FleetError::BadSignature)?;
    let head = Head::from_bytes(&env.head.0, expect)?;
    if head.version() != env.version {
        return Err(FleetError::Unsigned(
            "envelope and head versions differ".into(),
        ));
    }
    if head.algorithm() != algorithm {
        return Err(FleetError::Head(HeadError::AlgorithmMismatch {
            expected: algorithm,
            got: head.algorithm(),
        }));
    }
    if head.samples() > max_samples {
        return Err(FleetError::TooManySamples {
            got: head.samples(),
            cap: max_samples,
        });
    }
    let s = head.source_stats();
    let bounded = s.mean().iter().all(|m| m.abs() <= MAX_ABS_MEAN)
        && s.var().iter().all(|v| *v <= MAX_ABS_MEAN * MAX_ABS_MEAN);
    if !bounded {
        return Err(FleetError::Absurd(
            "embedding means or variances far outside any backbone's range".into(),
        ));
    }
    Ok(Verified {
        version: env.version,
        head,
        key: key_hex,
        head_sha256: hex::encode(Sha256::digest(&env.head.0)),
    })
}

/// What is remembered of a peer across restarts: its key and its last accepted version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    pub key: String,
    pub version: u64,
    pub head_sha256: String,
}

/// The peers file: what was seen of each peer, and the peers excluded at run time.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PeersFile {
    #[serde(default)]
    seen: BTreeMap<String, Seen>,
    #[serde(default)]
    excluded: Vec<String>,
}

/// One peer's latest local head.
pub struct Peer {
    pub version: u64,
    pub head: Head,
    pub key: String,
}

/// The peers of this board: their latest heads, and what was seen of each (persisted).
pub struct Peers {
    pub heads: BTreeMap<String, Peer>,
    pub seen: BTreeMap<String, Seen>,
    pub excluded: Vec<String>,
    pub rejected: u64,
    path: Option<PathBuf>,
}

/// What [`Peers::accept`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A new or newer head: the fleet head changes.
    Updated,
    /// The same head again (a republish or a restart): nothing changes.
    Unchanged,
}

impl Peers {
    /// Peers remembered in `dir` (or none), with the configured exclusions.
    pub fn load(dir: Option<&Path>, excluded: Vec<String>) -> Peers {
        let path = dir.map(|d| d.join(FLEET_PEERS));
        let file: PeersFile = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut all = excluded;
        for e in file.excluded {
            if !all.contains(&e) {
                all.push(e);
            }
        }
        Peers {
            heads: BTreeMap::new(),
            seen: file.seen,
            excluded: all,
            rejected: 0,
            path,
        }
    }

    fn save(&self) {
        let Some(p) = &self.path else { return };
        let file = PeersFile {
            seen: self.seen.clone(),
            excluded: self.excluded.clone(),
        };
        match serde_json::to_vec_pretty(&file) {
            Ok(b) => {
                if let Err(e) = write_atomic(p, &b) {
                    tracing::warn!("saving {}: {e}", p.display());
                }
            }
            Err(e) => tracing::warn!("encoding fleet peers: {e}"),
        }
    }

    /// Takes a verified head from `peer`: rejects excluded peers, key changes and versions
    /// older than (or equal to but different from) the last accepted one.
    pub fn accept(
        &mut self,
        peer: &str,
        v: Verified,
        max_peers: usize,
    ) -> Result<Accepted, FleetError> {
        if self.excluded.iter().any(|e| e == peer) {
            return Err(FleetError::Excluded(peer.into()));
        }
        if let Some(s) = self.seen.get(peer) {
            if s.key != v.key {
                return Err(FleetError::KeyChanged { peer: peer.into() });
            }
            let same = v.version == s.version && v.head_sha256 == s.head_sha256;
            if v.version < s.version || (v.version == s.version && !same) {
                return Err(FleetError::Replay {
                    peer: peer.into(),
                    have: s.version,
                    got: v.version,
                });
            }
            if same && self.heads.contains_key(peer) {
                return Ok(Accepted::Unchanged);
            }
        }
        if !self.heads.contains_key(peer) && self.heads.len() >= max_peers {
            return Err(FleetError::TooManyPeers(max_peers));
        }
        self.seen.insert(
            peer.into(),
            Seen {
                key: v.key.clone(),
                version: v.version,
                head_sha256: v.head_sha256,
            },
        );
        self.save();
        self.heads.insert(
            peer.into(),
            Peer {
                version: v.version,
                head: v.head,
                key: v.key,
            },
        );
        Ok(Accepted::Updated)
    }

    /// Drops a peer and never merges it again (until the exclusion is lifted in the config).
    pub fn exclude(&mut self, peer: &str) -> bool {
        if !self.excluded.iter().any(|e| e == peer) {
            self.excluded.push(peer.into());
            self.save();
        }
        self.heads.remove(peer).is_some()
    }

    /// The fleet head: `local` merged with every peer's head, in peer-id order. Peers whose
    /// head cannot be merged (another algorithm) are skipped with a warning.
    pub fn fleet_head(&self, local: &Head) -> Head {
        let mut h = local.clone();
        for (id, p) in &self.heads {
            if let Err(e) = h.merge(&p.head) {
                tracing::warn!(peer = %id, "cannot merge peer head: {e}");
            }
        }
        h.set_version(local.version());
        h
    }

    /// The `fleet.peers` part of `{root}/info`.
    pub fn info(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.heads
                .iter()
                .map(|(id, p)| {
                    serde_json::json!({
                        "id": id,
                        "version": p.version,
                        "samples": p.head.samples(),
                        "classes": p.head.classes().len(),
                        "key": p.key,
                    })
                })
                .collect(),
        )
    }
}

/// Everything the learner needs for the fleet: config, identity, trusted keys, peers.
pub struct FleetState {
    pub config: FleetConfig,
    pub identity: Identity,
    trusted: Vec<[u8; 32]>,
    pub peers: Peers,
}

impl FleetState {
    /// Loads the identity (created on first start), the trusted keys and the remembered peers.
    pub fn load(config: &FleetConfig, state_dir: &Path) -> anyhow::Result<FleetState> {
        use anyhow::Context as _;
        let identity = Identity::load_or_create(state_dir)
            .with_context(|| format!("fleet key in {}", state_dir.display()))?;
        let trusted = config.load_trusted().map_err(anyhow::Error::msg)?;
        if config.enabled() && trusted.is_empty() {
            tracing::warn!(
                group = %config.group,
                "fleet group set but no trusted keys: every peer head will be rejected"
            );
        }
        Ok(FleetState {
            config: config.clone(),
            identity,
            trusted,
            peers: Peers::load(Some(state_dir), config.exclude.clone()),
        })
    }

    /// Verifies and takes a peer's envelope (an empty payload withdraws the peer's head).
    pub fn on_peer(
        &mut self,
        peer: &str,
        payload: &[u8],
        expect: &Expect<'_>,
        algorithm: Algorithm,
    ) -> Result<Accepted, FleetError> {
        if payload.is_empty() {
            return Ok(if self.peers.heads.remove(peer).is_some() {
                Accepted::Updated
            } else {
                Accepted::Unchanged
            });
        }
        let result = open(
            payload,
            peer,
            &self.config.group,
            &self.trusted,
            expect,
            algorithm,
            self.config.max_peer_samples,
        )
        .and_then(|v| self.peers.accept(peer, v, self.config.max_peers));
        if result.is_err() {
            self.peers.rejected += 1;
        }
        result
    }

    /// The `fleet` part of `{root}/info`.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "group": self.config.group,
            "public_key": self.identity.public_hex(),
            "trusted_keys": self.trusted.len(),
            "peers": self.peers.info(),
            "excluded": self.peers.excluded,
            "rejected": self.peers.rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HeadConfig;

    /// The key the `fleet_envelope` fuzz target trusts (fuzz/fuzz_targets/fleet_envelope.rs).
    const FUZZ_SEED: [u8; 32] = [7; 32];

    /// The fuzz target's seed envelope: the `head_file` seed, sealed by the fuzz key as
    /// device `peer` of group `group`. It must open, or the fuzzer starts from nothing that gets
    /// past the signature. `ADAPTD_WRITE_FUZZ_SEEDS=1 cargo test --lib fuzz_seed` rewrites it.
    #[test]
    fn fuzz_seed_envelope_opens_with_the_fuzz_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let path = root.join("fleet_envelope/ncm-head.envelope");
        let id = Identity::from_seed(&FUZZ_SEED).unwrap();
        let expect = Expect {
            backbone_sha256: None,
            dim: None,
            max_bytes: 1 << 22,
        };
        if std::env::var_os("ADAPTD_WRITE_FUZZ_SEEDS").is_some() {
            let head_bytes = std::fs::read(root.join("head_file/ncm-head.cbor")).unwrap();
            let head = Head::from_bytes(&head_bytes, &expect).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, id.seal("peer", "group", &head).unwrap()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let trusted = [id.public_key()];
        let v = open(
            &bytes,
            "peer",
            "group",
            &trusted,
            &expect,
            Algorithm::Ncm,
            1000,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(v.key, id.public_hex());
        // Re-signing a tampered envelope makes it verify again (what the fuzz target relies on).
        let mut env: Envelope = ciborium::from_reader(bytes.as_slice()).unwrap();
        env.version += 1;
        let mut tampered = Vec::new();
        ciborium::into_writer(&env, &mut tampered).unwrap();
        assert!(matches!(
            open(
                &tampered,
                "peer",
                "group",
                &trusted,
                &expect,
                Algorithm::Ncm,
                1000
            ),
            Err(FleetError::BadSignature)
        ));
        let resigned = id.resign(&tampered).unwrap();
        assert!(matches!(
            open(
                &resigned,
                "peer",
                "group",
                &trusted,
                &expect,
                Algorithm::Ncm,
                1000
            ),
            Err(FleetError::Unsigned(_)) // envelope and head versions now differ
        ));
    }

    const SHA: &str = "ab";
    const D: usize = 8;

    fn head(label: &str, n: usize, level: f32, version: u64) -> Head {
        let mut h = Head::new(&HeadConfig::default(), D, SHA);
        for i in 0..n {
            let x: Vec<f32> = (0..D)
                .map(|j| level + ((i * 5 + j * 3) % 7) as f32 * 0.1)
                .collect();
            h.update(&x, label).unwrap();
        }
        h.set_version(version);
        h
    }

    fn expect() -> Expect<'static> {
        Expect {
            backbone_sha256: Some(SHA),
            dim: Some(D),
            max_bytes: 1 << 24,
        }
    }

    fn ids(dir: &Path, names: &[&str]) -> Vec<Identity> {
        names
            .iter()
            .map(|n| Identity::load_or_create(&dir.join(n)).unwrap())
            .collect()
    }

    fn key(id: &Identity) -> [u8; 32] {
        parse_key(&id.public_hex()).unwrap()
    }

    fn verify(
        id: &Identity,
        peer: &str,
        h: &Head,
        trusted: &[[u8; 32]],
    ) -> Result<Verified, FleetError> {
        let env = id.seal(peer, "g", h).unwrap();
        open(&env, peer, "g", trusted, &expect(), h.algorithm(), 1000)
    }

    fn scores(h: &Head, x: &[f32]) -> Vec<(String, f32)> {
        let p = h.snapshot().predict(x, 10).unwrap();
        let mut v: Vec<(String, f32)> = p.top.into_iter().map(|s| (s.label, s.score)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn key_is_created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FLEET_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        std::fs::write(dir.path().join(FLEET_KEY), b"junk").unwrap();
        assert!(Identity::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn merging_is_order_independent_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = <[Identity; 3]>::try_from(ids(dir.path(), &["a", "b", "c"]))
            .ok()
            .unwrap();
        let trusted = [key(&a), key(&b), key(&c)];
        let local = head("cat", 4, 0.0, 3);
        let hb = head("cup", 5, 1.0, 7);
        let hc = head("cat", 3, 0.4, 2);
        let mut one = Peers::load(None, vec![]);
        let mut two = Peers::load(None, vec![]);
        one.accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8)
            .unwrap();
        one.accept("c", verify(&c, "c", &hc, &trusted).unwrap(), 8)
            .unwrap();
        two.accept("c", verify(&c, "c", &hc, &trusted).unwrap(), 8)
            .unwrap();
        two.accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8)
            .unwrap();
        let x = vec![0.3f32; D];
        let f1 = one.fleet_head(&local);
        assert_eq!(scores(&f1, &x), scores(&two.fleet_head(&local), &x));
        assert_eq!(f1.samples(), 12);
        assert_eq!(
            f1.version(),
            local.version(),
            "the fleet head keeps the local version"
        );
        // The same envelope again changes nothing.
        let again = one
            .accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8)
            .unwrap();
        assert_eq!(again, Accepted::Unchanged);
        assert_eq!(scores(&one.fleet_head(&local), &x), scores(&f1, &x));
        // A newer head of a peer replaces its slot (never adds to it).
        let hb2 = head("cup", 2, 1.0, 8);
        one.accept("b", verify(&b, "b", &hb2, &trusted).unwrap(), 8)
            .unwrap();
        assert_eq!(one.fleet_head(&local).samples(), 4 + 2 + 3);
    }

    #[test]
    fn every_bad_envelope_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let [a, m] = <[Identity; 2]>::try_from(ids(dir.path(), &["a", "mallory"]))
            .ok()
            .unwrap();
        let trusted = [key(&a)];
        let h = head("cup", 3, 1.0, 5);
        let code = |r: Result<Verified, FleetError>| r.err().map(|e| e.code());
        assert_eq!(code(verify(&m, "a", &h, &trusted)), Some("fleet_untrusted"));
        let env = a.seal("a", "g", &h).unwrap();
        let open_as = |bytes: &[u8], peer: &str, group: &str| {
            open(bytes, peer, group, &trusted, &expect(), h.algorithm(), 1000)
        };
        assert!(open_as(&env, "a", "g").is_ok());
        assert_eq!(code(open_as(&env, "b", "g")), Some("fleet_wrong_peer"));
        assert_eq!(code(open_as(&env, "a", "other")), Some("fleet_wrong_peer"));
        assert_eq!(
            code(open_as(&h.to_bytes().unwrap(), "a", "g")),
            Some("fleet_unsigned")
        );
        assert_eq!(code(open_as(b"", "a", "g")), Some("fleet_unsigned"));
        for i in (0..env.len()).step_by(97) {
            let mut t = env.clone();
            t[i] ^= 0x40;
            assert!(open_as(&t, "a", "g").is_err(), "flip at {i} accepted");
        }
        let big = head("cup", 20, 1.0, 6);
        let env = a.seal("a", "g", &big).unwrap();
        let r = open(&env, "a", "g", &trusted, &expect(), big.algorithm(), 10);
        assert_eq!(code(r), Some("fleet_too_many_samples"));
        let r = open(
            &env,
            "a",
            "g",
            &trusted,
            &expect(),
            crate::head::Algorithm::Slda,
            1000,
        );
        assert_eq!(code(r), Some("algorithm_mismatch"));
        let absurd = head("cup", 2, 1e7, 7);
        assert_eq!(
            code(verify(&a, "a", &absurd, &trusted)),
            Some("fleet_absurd")
        );
    }

    #[test]
    fn replays_and_key_changes_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let [a, a2] = <[Identity; 2]>::try_from(ids(dir.path(), &["a", "a-new"]))
            .ok()
            .unwrap();
        let trusted = [key(&a), key(&a2)];
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut peers = Peers::load(Some(&state), vec![]);
        peers
            .accept(
                "a",
                verify(&a, "a", &head("x", 2, 0.0, 5), &trusted).unwrap(),
                8,
            )
            .unwrap();
        let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", old, 8).unwrap_err().code(),
            "fleet_replay"
        );
        let same_version_other_head = verify(&a, "a", &head("y", 1, 0.0, 5), &trusted).unwrap();
        assert_eq!(
            peers
                .accept("a", same_version_other_head, 8)
                .unwrap_err()
                .code(),
            "fleet_replay"
        );
        // After a restart the remembered version still holds, the same head is accepted again.
        let mut peers = Peers::load(Some(&state), vec![]);
        let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", old, 8).unwrap_err().code(),
            "fleet_replay"
        );
        let same = verify(&a, "a", &head("x", 2, 0.0, 5), &trusted).unwrap();
        assert_eq!(peers.accept("a", same, 8).unwrap(), Accepted::Updated);
        // Another (even trusted) key cannot take over a peer id.
        let hijack = verify(&a2, "a", &head("x", 2, 0.0, 9), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", hijack, 8).unwrap_err().code(),
            "fleet_key_changed"
        );
        // Exclusion is remembered.
        assert!(peers.exclude("a"));
        let peers = Peers::load(Some(&state), vec![]);
        assert_eq!(peers.excluded, vec!["a".to_string()]);
    }
}
