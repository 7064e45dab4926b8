//! The peers of this board: what was seen of each (kept in the state directory's peers file
//! across restarts, against replays and key changes), a slot per peer whose head is on disk
//! ([`PeerStore`]), and the fleet total — the sum of every peer's latest head, kept as a
//! running total (a peer's new head replaces its old one by `unmerge` + `merge`, with an exact
//! rebuild from the files every [`rebuild_period`] changes), so RAM does not grow with the
//! fleet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::store::PeerStore;
use super::{FleetError, Verified};
use crate::head::{Algorithm, Expect, Head};
use crate::state::files::{write_atomic, FLEET_PEERS};

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
    /// The group the stored heads belong to.
    #[serde(default)]
    group: String,
    #[serde(default)]
    seen: BTreeMap<String, Seen>,
    #[serde(default)]
    excluded: Vec<String>,
}

/// One peer's slot: its latest head is in the store (and in the fleet total), this is what
/// `info` shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub version: u64,
    pub key: String,
    pub head_sha256: String,
    pub samples: u64,
    pub classes: usize,
}

/// The peers of this board: slots, what was seen of each (persisted), the fleet total.
pub struct Peers {
    pub heads: BTreeMap<String, Peer>,
    pub seen: BTreeMap<String, Seen>,
    pub excluded: Vec<String>,
    pub rejected: u64,
    /// Exact rebuilds of the total since start (the periodic ones and any after a failed
    /// update).
    pub rebuilds: u64,
    path: Option<PathBuf>,
    /// The group of the stored heads (from the peers file).
    group: String,
    store: PeerStore,
    /// The sum of every slot's head; `None` without peers.
    total: Option<Head>,
    /// Changes of the total since it was last rebuilt exactly.
    since_rebuild: u64,
    /// `seen` changed since the peers file was last written, and when that was.
    unsaved: bool,
    saved_at: Instant,
}

/// Accepted heads are written to the peers file at most this often (and at shutdown): the file
/// is O(peers) and fsynced, and a fleet of a thousand boards updates several times a second.
/// What a crash loses is at most this much of replay state: the stored head whose hash the
/// older file does not match is not restored, and the peer's retained head brings it back.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What [`Peers::accept`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A new or newer head: the fleet head changes.
    Updated,
    /// The same head again (a republish or a restart): nothing changes.
    Unchanged,
}

/// Changes of the running total between exact rebuilds: at least 64, and 8 per peer, so the
/// rebuild (reading and merging every peer's head) costs at most 1/8 of a merge per change.
/// Rounding drift over that many changes stays far below what a prediction can see
/// (docs/fleet.md, "Fleet at scale").
pub fn rebuild_period(peers: usize) -> u64 {
    (8 * peers as u64).max(64)
}

/// Decodes a stored head, already verified when it was accepted (the file's hash is checked
/// by the store).
fn decode(bytes: &[u8]) -> Option<Head> {
    let expect = Expect {
        backbone_sha256: None,
        dim: None,
        max_bytes: usize::MAX,
    };
    Head::from_bytes(bytes, &expect)
        .map_err(|e| tracing::warn!("stored fleet head: {e}"))
        .ok()
}

impl Peers {
    /// Peers remembered in `dir` (or none), with the configured exclusions. Their heads come
    /// back with [`restore`](Self::restore).
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
            rebuilds: 0,
            path,
            group: file.group,
            store: PeerStore::open(dir),
            total: None,
            since_rebuild: 0,
            unsaved: false,
            saved_at: Instant::now(),
        }
    }

    /// Takes back the stored head of every peer of `group` seen and not excluded that still
    /// fits this board (`expect`, `algorithm`: the backbone may have changed since), rebuilds
    /// the fleet total from them and removes the other files. A peer whose file is missing or
    /// stale gets its slot back from its retained head.
    pub fn restore(&mut self, expect: &Expect<'_>, algorithm: Algorithm, group: &str) {
        let same_group = self.group == group;
        if !same_group {
            self.group = group.into();
            self.save();
        }
        let ids: Vec<(String, Seen)> = self
            .seen
            .iter()
            .filter(|(id, _)| same_group && !self.excluded.contains(id))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        for (id, seen) in ids {
            let Some(bytes) = self.store.get(&id, &seen.head_sha256) else {
                continue;
            };
            match Head::from_bytes(&bytes, expect) {
                Ok(h) if h.algorithm() == algorithm => {
                    self.heads.insert(id, slot(&seen, &h));
                }
                Ok(h) => tracing::info!(
                    peer = %id,
                    "stored fleet head is {}, this board {algorithm}: not restored",
                    h.algorithm()
                ),
                Err(e) => tracing::info!(peer = %id, "stored fleet head not restored: {e}"),
            }
        }
        let keep: Vec<&str> = self.heads.keys().map(String::as_str).collect();
        self.store.retain(&keep);
        self.rebuild();
    }

    /// Writes the peers file if accepted heads are waiting and it was last written
    /// [`SAVE_EVERY`] ago, or `now` (shutdown).
    pub fn save_due(&mut self, now: bool) {
        if self.unsaved && (now || self.saved_at.elapsed() >= SAVE_EVERY) {
            self.save();
        }
    }

    fn save(&mut self) {
        self.unsaved = false;
        self.saved_at = Instant::now();
        let Some(p) = &self.path else { return };
        let file = PeersFile {
            group: self.group.clone(),
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

    /// Takes a verified head from `peer`: rejects excluded peers, key changes, a key that signs
    /// another peer's slot, versions older
    /// than (or equal to but different from) the last accepted one, a new peer beyond
    /// `max_peers` and a head that would take the store beyond `max_bytes`. The head goes to
    /// the store, then replaces the peer's old one in the fleet total.
    pub fn accept(
        &mut self,
        peer: &str,
        v: Verified,
        max_peers: usize,
        max_bytes: u64,
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
        // One key, one board: a stolen key cannot take many slots under made-up device ids
        // (each with up to `max_peer_samples`).
        if let Some((other, _)) = self
            .heads
            .iter()
            .find(|(id, p)| id.as_str() != peer && p.key == v.key)
        {
            return Err(FleetError::KeyReused {
                peer: peer.into(),
                other: other.clone(),
            });
        }
        if !self.heads.contains_key(peer) && self.heads.len() >= max_peers {
            return Err(FleetError::TooManyPeers(max_peers));
        }
        let need = self.store.bytes() - self.store.size(peer) + v.bytes.len() as u64;
        if need > max_bytes {
            return Err(FleetError::StoreFull {
                need,
                cap: max_bytes,
            });
        }
        // The old head, before its file is replaced: the total subtracts it.
        let old = self
            .heads
            .get(peer)
            .map(|p| p.head_sha256.clone())
            .map(|sha| self.store.get(peer, &sha).and_then(|b| decode(&b)));
        self.store
            .put(peer, &v.bytes)
            .map_err(|e| FleetError::Store(e.to_string()))?;
        let seen = Seen {
            key: v.key.clone(),
            version: v.version,
            head_sha256: v.head_sha256.clone(),
        };
        self.heads.insert(peer.into(), slot(&seen, &v.head));
        self.seen.insert(peer.into(), seen);
        self.unsaved = true;
        self.save_due(false);
        let updated = match old {
            // A new slot.
            None => self.add_to_total(&v.head),
            // The old head read back: replace it.
            Some(Some(o)) => self.remove_from_total(&o) && self.add_to_total(&v.head),
            // The old head could not be read back: only a rebuild is exact.
            Some(None) => false,
        };
        self.changed(updated);
        Ok(Accepted::Updated)
    }

    /// Drops `peer`'s slot (its head withdrawn: an empty retained message); true if it had one.
    pub fn withdraw(&mut self, peer: &str) -> bool {
        let Some(p) = self.heads.remove(peer) else {
            return false;
        };
        let old = self
            .store
            .get(peer, &p.head_sha256)
            .and_then(|b| decode(&b));
        self.store.remove(peer);
        let updated = match old {
            Some(o) if !self.heads.is_empty() => self.remove_from_total(&o),
            Some(_) => {
                self.total = None;
                true
            }
            None => false,
        };
        self.changed(updated);
        true
    }

    /// Drops a peer and never merges it again (until the exclusion is lifted in the config).
    pub fn exclude(&mut self, peer: &str) -> bool {
        if !self.excluded.iter().any(|e| e == peer) {
            self.excluded.push(peer.into());
            self.save();
        }
        self.withdraw(peer)
    }

    fn add_to_total(&mut self, h: &Head) -> bool {
        match &mut self.total {
            Some(t) => t
                .merge(h)
                .map_err(|e| tracing::warn!("fleet total: {e}"))
                .is_ok(),
            None => {
                self.total = Some(h.clone());
                true
            }
        }
    }

    fn remove_from_total(&mut self, h: &Head) -> bool {
        // sgd's merge is an average: it has no exact inverse, so it is rebuilt.
        match &mut self.total {
            Some(t) if h.algorithm().is_exact() => t
                .unmerge(h)
                .map_err(|e| tracing::warn!("fleet total: {e}"))
                .is_ok(),
            _ => false,
        }
    }

    /// Counts a change of the total; rebuilds it exactly when the update failed or is due.
    fn changed(&mut self, updated: bool) {
        self.since_rebuild += 1;
        if !updated || self.since_rebuild >= rebuild_period(self.heads.len()) {
            self.rebuild();
        }
    }

    /// Rebuilds the total exactly from the stored heads, in peer-id order. A slot whose file
    /// is missing, damaged or does not merge is dropped (the peer's retained head restores it
    /// when the board reconnects). Public for measuring the running total's drift against it
    /// (`examples/fleetsim.rs --drift`).
    pub fn rebuild(&mut self) {
        self.total = None;
        self.since_rebuild = 0;
        self.rebuilds += 1;
        let slots: Vec<(String, String)> = self
            .heads
            .iter()
            .map(|(id, p)| (id.clone(), p.head_sha256.clone()))
            .collect();
        for (id, sha) in slots {
            let ok = match self.store.get(&id, &sha).and_then(|b| decode(&b)) {
                Some(h) => self.add_to_total(&h),
                None => false,
            };
            if !ok {
                tracing::warn!(peer = %id, "fleet head dropped from the fleet total");
                self.heads.remove(&id);
                self.store.remove(&id);
            }
        }
    }

    /// The sum of every peer's head, if there are peers.
    pub fn total(&self) -> Option<&Head> {
        self.total.as_ref()
    }

    /// Bytes of peer heads in the store.
    pub fn stored_bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// The fleet head: `local` merged with the fleet total (one merge, whatever the number of
    /// peers), with `local`'s version. A total that cannot be merged (another algorithm) is
    /// skipped with a warning.
    pub fn fleet_head(&self, local: &Head) -> Head {
        let mut h = local.clone();
        if let Some(t) = &self.total {
            if let Err(e) = h.merge(t) {
                tracing::warn!("cannot merge the fleet total: {e}");
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
                        "samples": p.samples,
                        "classes": p.classes,
                        "key": p.key,
                    })
                })
                .collect(),
        )
    }
}

fn slot(seen: &Seen, h: &Head) -> Peer {
    Peer {
        version: seen.version,
        key: seen.key.clone(),
        head_sha256: seen.head_sha256.clone(),
        samples: h.samples(),
        classes: h.classes().len(),
    }
}

#[cfg(test)]
mod tests;
