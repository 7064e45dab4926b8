//! Fleet learning: this board's Ed25519 identity, signed head envelopes and deltas (the
//! samples learned since the last head) on the group topics, verification of peers' heads and
//! deltas (trusted key, signature, replay, backbone, algorithm, bounded statistics), the peer
//! table, the fetches of whole heads a delta could not do without, and the fleet head (local
//! statistics merged with every peer's latest local head). See `docs/fleet.md`.

mod config;
mod delta;
mod envelope;
mod identity;
mod peers;
mod store;
#[cfg(test)]
mod testing;

use std::collections::BTreeMap;
use std::path::Path;

pub use config::{parse_key, FleetConfig};
pub use delta::{
    chain, open_delta, parse_log, DeltaEnvelope, Learned, VerifiedDelta, DELTA_FORMAT,
};
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
    /// Peers whose retained whole head this board fetches (a delta it could not apply), with
    /// the version it needs and whether the subscription was queued.
    fetching: BTreeMap<String, (u64, bool)>,
    /// Whole heads fetched since start.
    pub fetched: u64,
}

/// What the learner does about a peer's topic after [`FleetState::on_peer`] or
/// [`FleetState::on_delta`].
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    Nothing,
    /// Subscribe to the peer's head topic: its retained head is needed.
    Fetch,
    /// The needed head came: unsubscribe from the peer's head topic.
    Fetched,
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
            fetching: BTreeMap::new(),
            fetched: 0,
        })
    }

    /// Verifies and takes a peer's envelope (an empty payload withdraws the peer's head), and
    /// says whether a fetch of it is over.
    pub fn on_peer(
        &mut self,
        peer: &str,
        payload: &[u8],
        expect: &Expect<'_>,
        algorithm: Algorithm,
    ) -> (Result<Accepted, FleetError>, Follow) {
        let result = self.take_head(peer, payload, expect, algorithm);
        let have = self.peers.seen.get(peer).map(|s| s.version);
        let follow = match self.fetching.get(peer) {
            Some((want, _)) if payload.is_empty() || have.is_some_and(|h| h >= *want) => {
                self.fetching.remove(peer);
                self.fetched += 1;
                Follow::Fetched
            }
            _ => Follow::Nothing,
        };
        (result, follow)
    }

    /// Verifies and takes a peer's delta (an empty payload withdraws the peer's head, as on
    /// its head topic), and says whether its whole head must be fetched.
    pub fn on_delta(
        &mut self,
        peer: &str,
        payload: &[u8],
        expect: &Expect<'_>,
        algorithm: Algorithm,
    ) -> (Result<Accepted, FleetError>, Follow) {
        if payload.is_empty() {
            return self.on_peer(peer, payload, expect, algorithm);
        }
        let result = open_delta(
            payload,
            peer,
            &self.config.group,
            &self.trusted,
            expect,
            algorithm,
            self.config.max_peer_samples,
        )
        .and_then(|d| {
            self.peers
                .apply_delta(peer, d, self.config.max_store_bytes())
        });
        match result {
            Ok(Accepted::Fetch(version)) => {
                // Trusted and signed: worth a subscription (bounded by the peers there are).
                let want = self
                    .fetching
                    .entry(peer.to_string())
                    .or_insert((version, false));
                want.0 = want.0.max(version);
                let follow = if want.1 {
                    Follow::Nothing
                } else {
                    Follow::Fetch
                };
                (Ok(Accepted::Fetch(version)), follow)
            }
            Err(e) => {
                self.peers.rejected += 1;
                (Err(e), Follow::Nothing)
            }
            ok => (ok, Follow::Nothing),
        }
    }

    /// Fetches whose subscription was not queued yet (the request queue was full), to retry.
    /// A subscription lost with the broker's session needs none: the initial sync after the
    /// reconnection brings every retained head.
    pub fn fetches_to_queue(&self) -> Vec<String> {
        self.fetching
            .iter()
            .filter(|(_, (_, queued))| !queued)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Records that the subscription of `peer`'s fetch was queued.
    pub fn fetch_queued(&mut self, peer: &str) {
        if let Some(f) = self.fetching.get_mut(peer) {
            f.1 = true;
        }
    }

    fn take_head(
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
            "deltas": {
                "enabled": self.config.deltas,
                "applied": self.peers.deltas,
                "fetched": self.fetched,
                "fetching": self.fetching.len(),
            },
        })
    }
}
