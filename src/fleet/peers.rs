//! The peers of this board: what was seen of each (kept in the state directory's peers file
//! across restarts, against replays and key changes), a slot per peer whose head is on disk
//! ([`PeerStore`]), and the fleet total — the sum of every peer's latest head, kept as a
//! running total (a peer's new head replaces its old one by `unmerge` + `merge`, with an exact
//! rebuild from the files every [`rebuild_period`] changes), so RAM does not grow with the
//! fleet. A peer's delta (the samples it learned since the version this board has) is applied
//! to the running total sample by sample and appended to the peer's stored log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::delta::{chain, parse_log, VerifiedDelta};
use super::store::{Kind, PeerStore};
use super::{FleetError, Verified};
use crate::head::{Algorithm, Expect, Head, HeadError, MAX_CLASSES};
use crate::state::files::{write_atomic, FLEET_PEERS};

/// What is remembered of a peer across restarts: its key and its last accepted version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    pub key: String,
    /// The last version accepted: of the stored head, or of the last delta applied to it.
    pub version: u64,
    /// The stored head file's SHA-256.
    pub head_sha256: String,
    /// The delta log's hash chain ([`chain`]), when deltas were applied since the stored head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_chain: Option<String>,
    /// Samples in the delta log.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_samples: u64,
    /// The stored head is this board's encoding of the peer's head with a log applied
    /// ([`COMPACT_AFTER`]), not a file the peer signed: the peer's own head of that version
    /// is the same statistics, not a replay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compacted: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A peer's delta log is folded into its stored head (decoded, the samples learned, encoded
/// again) once it holds this many samples or more bytes than the head: what a rebuild, a
/// replacement or a restart replays per peer stays bounded (a sample of `slda` costs about
/// one merge to replay), at the price of one encoding per this many samples.
pub const COMPACT_AFTER: u64 = 64;

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
    /// The peer's labels (what a delta's new labels are checked against).
    pub labels: Vec<String>,
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
    /// Deltas applied since start.
    pub deltas: u64,
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
    /// The same head again (a republish or a restart), or a delta already had: nothing
    /// changes.
    Unchanged,
    /// A delta this board cannot apply (a peer it has no head of, a gap, a change only the
    /// whole head carries): the peer's retained head is needed, at least this version.
    Fetch(u64),
}

/// Changes of the running total between exact rebuilds: at least 64, and 8 per peer, so the
/// rebuild (reading and merging every peer's head) costs at most 1/8 of a merge per change.
/// Rounding drift over that many changes stays far below what a prediction can see
/// (docs/fleet.md, "Fleet at scale").
pub fn rebuild_period(peers: usize) -> u64 {
    (8 * peers as u64).max(64)
}

/// Any head: what was stored was verified when it was accepted (the file's hash is checked
/// by the store).
const STORED: Expect<'static> = Expect {
    backbone_sha256: None,
    dim: None,
    max_bytes: usize::MAX,
};

/// What a peer's stored head and delta log add up to: the head with the log's samples learned
/// in order, at `seen`'s version. `None` when a file is missing, stale or damaged, or does not
/// fit `expect`.
fn read_slot(store: &mut PeerStore, peer: &str, seen: &Seen, expect: &Expect<'_>) -> Option<Head> {
    let bytes = store.get(peer, Kind::Head, &seen.head_sha256)?;
    let mut head = Head::from_bytes(&bytes, expect)
        .map_err(|e| tracing::info!(peer, "stored fleet head: {e}"))
        .ok()?;
    if let Some(want) = &seen.log_chain {
        let log = store.read(peer, Kind::Delta)?;
        let (samples, link) = parse_log(&log)
            .map_err(|e| tracing::warn!(peer, "stored fleet delta log: {e}"))
            .ok()?;
        if link.as_ref() != Some(want) {
            tracing::warn!(
                peer,
                "stored fleet delta log does not match its hash chain; dropped"
            );
            return None;
        }
        for s in samples {
            head.update(&s.x.0, &s.label)
                .map_err(|e| tracing::warn!(peer, "stored fleet delta log: {e}"))
                .ok()?;
        }
        head.set_version(seen.version);
    }
    Some(head)
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
            deltas: 0,
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
            match read_slot(&mut self.store, &id, &seen, expect) {
                Some(h) if h.algorithm() == algorithm => {
                    self.heads.insert(id, slot(&seen, &h));
                }
                Some(h) => tracing::info!(
                    peer = %id,
                    "stored fleet head is {}, this board {algorithm}: not restored",
                    h.algorithm()
                ),
                None => {}
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
            // The whole head of the version this board reached by deltas.
            let reached = v.version == s.version && (s.log_chain.is_some() || s.compacted);
            if v.version < s.version || (v.version == s.version && !same && !reached) {
                return Err(FleetError::Replay {
                    peer: peer.into(),
                    have: s.version,
                    got: v.version,
                });
            }
            // The same statistics this board already holds (its stored head and delta log, or
            // their fold): nothing to change, nothing to write.
            if (same || reached) && self.heads.contains_key(peer) {
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
        let held = self.store.size(peer, Kind::Head) + self.store.size(peer, Kind::Delta);
        let need = self.store.bytes() - held + v.bytes.len() as u64;
        if need > max_bytes {
            return Err(FleetError::StoreFull {
                need,
                cap: max_bytes,
            });
        }
        // The old head (and the samples of its deltas), before its files are replaced: the
        // total subtracts it.
        let old = match (self.heads.contains_key(peer), self.seen.get(peer)) {
            (true, Some(s)) => Some(read_slot(&mut self.store, peer, &s.clone(), &STORED)),
            (true, None) => Some(None),
            _ => None,
        };
        self.store
            .put(peer, Kind::Head, &v.bytes)
            .map_err(|e| FleetError::Store(e.to_string()))?;
        self.store.remove(peer, Kind::Delta);
        let seen = Seen {
            key: v.key.clone(),
            version: v.version,
            head_sha256: v.head_sha256.clone(),
            log_chain: None,
            log_samples: 0,
            compacted: false,
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

    /// Takes a verified delta from `peer`: applies its samples to the fleet total and appends
    /// them to the peer's stored log when it starts at the version this board has of the peer
    /// (folding the log into the stored head past [`COMPACT_AFTER`]); [`Accepted::Fetch`] when
    /// it cannot (no head of the peer yet, a missed delta, a change only a whole head
    /// carries); `Unchanged` for a version already had. Refused like a head: excluded peers, another key, a store over `max_bytes`,
    /// more classes than a head holds.
    pub fn apply_delta(
        &mut self,
        peer: &str,
        d: VerifiedDelta,
        max_bytes: u64,
    ) -> Result<Accepted, FleetError> {
        if self.excluded.iter().any(|e| e == peer) {
            return Err(FleetError::Excluded(peer.into()));
        }
        let Some(seen) = self.seen.get(peer).cloned() else {
            return Ok(Accepted::Fetch(d.version));
        };
        if seen.key != d.key {
            return Err(FleetError::KeyChanged { peer: peer.into() });
        }
        if d.version <= seen.version {
            return Ok(Accepted::Unchanged);
        }
        let Some(slot) = self.heads.get(peer).cloned() else {
            return Ok(Accepted::Fetch(d.version));
        };
        if d.base != Some(seen.version) || slot.samples + d.samples.len() as u64 != d.head_samples {
            return Ok(Accepted::Fetch(d.version));
        }
        let mut labels = slot.labels.clone();
        for s in &d.samples {
            if !labels.contains(&s.label) {
                labels.push(s.label.clone());
            }
        }
        let need = self.store.bytes() + d.samples_bytes.len() as u64;
        if need > max_bytes {
            return Err(FleetError::StoreFull {
                need,
                cap: max_bytes,
            });
        }
        let total_classes = self.total.as_ref().map_or(0, |t| t.classes().len());
        let new = d
            .samples
            .iter()
            .filter(|s| {
                self.total
                    .as_ref()
                    .is_none_or(|t| t.class_stats(&s.label).is_none())
            })
            .map(|s| s.label.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if total_classes + new > MAX_CLASSES {
            return Err(FleetError::Head(HeadError::TooManyClasses {
                limit: MAX_CLASSES,
            }));
        }
        // Only the new samples are written, and the log is not read back: its hash chain
        // moves on from the last link (a damaged log fails it when it is next read).
        match &seen.log_chain {
            None => self.store.put(peer, Kind::Delta, &d.samples_bytes),
            Some(_) => self.store.append(peer, Kind::Delta, &d.samples_bytes),
        }
        .map_err(|e| FleetError::Store(e.to_string()))?;
        let mut seen = Seen {
            version: d.version,
            log_chain: Some(chain(seen.log_chain.as_deref(), &d.samples_bytes)),
            log_samples: seen.log_samples + d.samples.len() as u64,
            ..seen
        };
        if seen.log_samples >= COMPACT_AFTER
            || self.store.size(peer, Kind::Delta) > self.store.size(peer, Kind::Head)
        {
            self.compact(peer, &mut seen);
        }
        self.heads.insert(
            peer.into(),
            Peer {
                version: d.version,
                samples: d.head_samples,
                labels,
                head_sha256: seen.head_sha256.clone(),
                ..slot
            },
        );
        self.seen.insert(peer.into(), seen);
        self.unsaved = true;
        self.save_due(false);
        self.deltas += 1;
        if d.samples.is_empty() {
            // Only the version moved (auto chose another candidate): nothing to merge.
            return Ok(Accepted::Unchanged);
        }
        let updated = match &mut self.total {
            Some(t) => d.samples.iter().all(|s| {
                t.update(&s.x.0, &s.label)
                    .map_err(|e| tracing::warn!("fleet total: {e}"))
                    .is_ok()
            }),
            None => false,
        };
        self.changed(updated);
        Ok(Accepted::Updated)
    }

    /// Folds `peer`'s delta log into its stored head. On failure the log stays (it is still
    /// valid), and the next delta tries again.
    fn compact(&mut self, peer: &str, seen: &mut Seen) {
        let Some(head) = read_slot(&mut self.store, peer, seen, &STORED) else {
            return;
        };
        let bytes = match head.to_bytes() {
            Ok(b) => b,
            Err(e) => return tracing::warn!(peer, "cannot fold the fleet delta log: {e}"),
        };
        if let Err(e) = self.store.put(peer, Kind::Head, &bytes) {
            return tracing::warn!(peer, "cannot fold the fleet delta log: {e}");
        }
        self.store.remove(peer, Kind::Delta);
        seen.head_sha256 = hex::encode(Sha256::digest(&bytes));
        seen.log_chain = None;
        seen.log_samples = 0;
        seen.compacted = true;
    }

    /// Drops `peer`'s slot (its head withdrawn: an empty retained message); true if it had one.
    pub fn withdraw(&mut self, peer: &str) -> bool {
        if self.heads.remove(peer).is_none() {
            return false;
        }
        let old = match self.seen.get(peer).cloned() {
            Some(s) => read_slot(&mut self.store, peer, &s, &STORED),
            None => None,
        };
        self.store.remove_peer(peer);
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
        let slots: Vec<(String, Option<Seen>)> = self
            .heads
            .keys()
            .map(|id| (id.clone(), self.seen.get(id).cloned()))
            .collect();
        for (id, seen) in slots {
            let head = seen.and_then(|s| read_slot(&mut self.store, &id, &s, &STORED));
            let ok = match head {
                Some(h) => self.add_to_total(&h),
                None => false,
            };
            if !ok {
                tracing::warn!(peer = %id, "fleet head dropped from the fleet total");
                self.heads.remove(&id);
                self.store.remove_peer(&id);
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
                        "classes": p.labels.len(),
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
        labels: h.classes().into_iter().map(|c| c.name).collect(),
    }
}

#[cfg(test)]
mod tests;
