//! Fleet learning: this board's Ed25519 identity, signed head envelopes on the group topic,
//! verification of peers' heads (trusted key, signature, replay, backbone, algorithm, bounded
//! statistics), the peer table and the fleet head (local statistics merged with every peer's
//! latest local head). See `docs/fleet.md`.

mod config;
mod envelope;
mod identity;
mod peers;
mod store;
#[cfg(test)]
mod testing;

use std::path::Path;

pub use config::{parse_key, FleetConfig};
pub use envelope::{open, Envelope, Verified, ENVELOPE_FORMAT};
pub use identity::Identity;
pub use peers::{rebuild_period, Accepted, Peer, Peers, Seen};
pub use store::PeerStore;

use crate::head::{Algorithm, Expect, HeadError};

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
    #[error("the key of {peer} already signs the head of {other}: one key, one board")]
    KeyReused { peer: String, other: String },
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
    #[error("peer heads would take {need} bytes on disk, above fleet.max_store_mb ({cap} bytes)")]
    StoreFull { need: u64, cap: u64 },
    #[error("cannot store the peer head: {0}")]
    Store(String),
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
            FleetError::KeyReused { .. } => "fleet_key_reused",
            FleetError::Replay { .. } => "fleet_replay",
            FleetError::TooManySamples { .. } => "fleet_too_many_samples",
            FleetError::TooManyPeers(_) => "fleet_too_many_peers",
            FleetError::Absurd(_) => "fleet_absurd",
            FleetError::Excluded(_) => "fleet_excluded",
            FleetError::StoreFull { .. } => "fleet_store_full",
            FleetError::Store(_) => "fleet_store_failed",
            FleetError::Head(e) => e.code(),
        }
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
            return Ok(if self.peers.withdraw(peer) {
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
        .and_then(|v| {
            self.peers.accept(
                peer,
                v,
                self.config.max_peers,
                self.config.max_store_bytes(),
            )
        });
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
            "stored_bytes": self.peers.stored_bytes(),
            "rebuilds": self.peers.rebuilds,
        })
    }
}
