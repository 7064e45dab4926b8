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
mod tests {
    use super::*;
    use crate::fleet::testing::{expect, head, ids, key, verify, D};
    use crate::fleet::Identity;
    use crate::head::Algorithm;

    fn scores(h: &Head, x: &[f32]) -> Vec<(String, f32)> {
        let p = h.snapshot().predict(x, 10).unwrap();
        let mut v: Vec<(String, f32)> = p.top.into_iter().map(|s| (s.label, s.score)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
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
        one.accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8, u64::MAX)
            .unwrap();
        one.accept("c", verify(&c, "c", &hc, &trusted).unwrap(), 8, u64::MAX)
            .unwrap();
        two.accept("c", verify(&c, "c", &hc, &trusted).unwrap(), 8, u64::MAX)
            .unwrap();
        two.accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8, u64::MAX)
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
            .accept("b", verify(&b, "b", &hb, &trusted).unwrap(), 8, u64::MAX)
            .unwrap();
        assert_eq!(again, Accepted::Unchanged);
        assert_eq!(scores(&one.fleet_head(&local), &x), scores(&f1, &x));
        // A newer head of a peer replaces its slot (never adds to it).
        let hb2 = head("cup", 2, 1.0, 8);
        one.accept("b", verify(&b, "b", &hb2, &trusted).unwrap(), 8, u64::MAX)
            .unwrap();
        assert_eq!(one.fleet_head(&local).samples(), 4 + 2 + 3);
    }

    #[test]
    fn one_key_takes_one_slot() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = <[Identity; 2]>::try_from(ids(dir.path(), &["a", "b"]))
            .ok()
            .unwrap();
        let trusted = [key(&a), key(&b)];
        let mut p = Peers::load(None, vec![]);
        p.accept(
            "a",
            verify(&a, "a", &head("cat", 3, 0.0, 1), &trusted).unwrap(),
            8,
            u64::MAX,
        )
        .unwrap();
        // a's key signing for a made-up device id.
        let sybil = verify(&a, "a2", &head("cup", 900, 1.0, 1), &trusted).unwrap();
        let e = p.accept("a2", sybil, 8, u64::MAX).unwrap_err();
        assert_eq!(e.code(), "fleet_key_reused");
        assert_eq!(p.total().unwrap().samples(), 3);
        p.accept(
            "b",
            verify(&b, "b", &head("cup", 2, 1.0, 1), &trusted).unwrap(),
            8,
            u64::MAX,
        )
        .unwrap();
        // Once a's slot is withdrawn (a renamed board), its key may sign for the new id.
        assert!(p.withdraw("a"));
        let renamed = verify(&a, "a2", &head("cat", 3, 0.0, 1), &trusted).unwrap();
        p.accept("a2", renamed, 8, u64::MAX).unwrap();
        assert_eq!(p.total().unwrap().samples(), 5);
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
                u64::MAX,
            )
            .unwrap();
        let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", old, 8, u64::MAX).unwrap_err().code(),
            "fleet_replay"
        );
        let same_version_other_head = verify(&a, "a", &head("y", 1, 0.0, 5), &trusted).unwrap();
        assert_eq!(
            peers
                .accept("a", same_version_other_head, 8, u64::MAX)
                .unwrap_err()
                .code(),
            "fleet_replay"
        );
        // After a restart the remembered version still holds, the same head is accepted again.
        peers.save_due(true);
        let mut peers = Peers::load(Some(&state), vec![]);
        let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", old, 8, u64::MAX).unwrap_err().code(),
            "fleet_replay"
        );
        let same = verify(&a, "a", &head("x", 2, 0.0, 5), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", same, 8, u64::MAX).unwrap(),
            Accepted::Updated
        );
        // Another (even trusted) key cannot take over a peer id.
        let hijack = verify(&a2, "a", &head("x", 2, 0.0, 9), &trusted).unwrap();
        assert_eq!(
            peers.accept("a", hijack, 8, u64::MAX).unwrap_err().code(),
            "fleet_key_changed"
        );
        // Exclusion is remembered.
        assert!(peers.exclude("a"));
        let peers = Peers::load(Some(&state), vec![]);
        assert_eq!(peers.excluded, vec!["a".to_string()]);
    }

    fn head_of(algorithm: Algorithm, label: &str, n: usize, level: f32, version: u64) -> Head {
        let config = crate::head::HeadConfig {
            algorithm,
            ..crate::head::HeadConfig::default()
        };
        let mut h = Head::new(&config, D, crate::fleet::testing::SHA);
        for i in 0..n {
            let x: Vec<f32> = (0..D)
                .map(|j| level + ((i * 7 + j * 3 + label.len()) % 11) as f32 * 0.1)
                .collect();
            h.update(&x, label).unwrap();
        }
        h.set_version(version);
        h
    }

    /// The fleet head as before the running total: local merged with every head, in order.
    fn merged(local: &Head, heads: &BTreeMap<String, Head>) -> Head {
        let mut h = local.clone();
        for p in heads.values() {
            h.merge(p).unwrap();
        }
        h
    }

    fn assert_close(a: &Head, b: &Head, x: &[f32]) {
        assert_eq!(a.samples(), b.samples());
        let (sa, sb) = (scores(a, x), scores(b, x));
        assert_eq!(sa.len(), sb.len());
        for ((la, va), (lb, vb)) in sa.iter().zip(&sb) {
            assert_eq!(la, lb);
            assert!((va - vb).abs() <= 1e-5, "{la}: {va} vs {vb}");
        }
        let (ma, mb) = (a.source_stats().sum(), b.source_stats().sum());
        let scale = mb.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(ma
            .iter()
            .zip(mb)
            .all(|(p, q)| (p - q).abs() <= 1e-9 * scale));
    }

    #[test]
    fn the_running_total_follows_replacements_like_an_exact_merge() {
        use rand::{Rng as _, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let names = ["p0", "p1", "p2", "p3", "p4"];
        let keys = ids(dir.path(), &names);
        let trusted: Vec<[u8; 32]> = keys.iter().map(key).collect();
        let labels = ["cat", "cup", "dog", "fox"];
        for algorithm in [
            Algorithm::Auto,
            Algorithm::Ncm,
            Algorithm::Slda,
            Algorithm::Ridge,
            Algorithm::Sgd,
        ] {
            let local = head_of(algorithm, "cat", 3, 0.2, 1);
            let state = dir.path().join(format!("state-{algorithm}"));
            std::fs::create_dir_all(&state).unwrap();
            let mut peers = Peers::load(Some(&state), vec![]);
            let mut latest: BTreeMap<String, Head> = BTreeMap::new();
            let mut version = [0u64; 5];
            let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
            let x = vec![0.45f32; D];
            for step in 0..150 {
                let k = rng.gen_range(0..names.len());
                let (peer, id) = (names[k], &keys[k]);
                if step % 37 == 36 {
                    assert_eq!(peers.withdraw(peer), latest.remove(peer).is_some());
                } else {
                    version[k] += 1;
                    let label = labels[rng.gen_range(0..labels.len())];
                    let h = head_of(
                        algorithm,
                        label,
                        rng.gen_range(1..9),
                        rng.gen_range(0.0..1.0),
                        version[k],
                    );
                    let v = verify(id, peer, &h, &trusted).unwrap();
                    assert_eq!(
                        peers.accept(peer, v, 8, u64::MAX).unwrap(),
                        Accepted::Updated
                    );
                    latest.insert(peer.into(), h);
                }
                let want = merged(&local, &latest);
                assert_close(&peers.fleet_head(&local), &want, &x);
            }
            // Exact updates rebuild only when due; sgd's (an average) at every replacement.
            if algorithm.is_exact() {
                assert!(peers.rebuilds <= 150 / rebuild_period(5), "{algorithm}");
            } else {
                assert!(peers.rebuilds > 100);
            }
            // A restart restores the same fleet head from the stored files.
            let before = peers.fleet_head(&local);
            peers.save_due(true);
            let mut again = Peers::load(Some(&state), vec![]);
            again.restore(&expect(), algorithm, "");
            assert_eq!(again.heads, peers.heads);
            assert_close(&again.fleet_head(&local), &before, &x);
            // Another algorithm on this board now: nothing restored, the files go.
            let other = if algorithm == Algorithm::Ncm {
                Algorithm::Slda
            } else {
                Algorithm::Ncm
            };
            let mut changed = Peers::load(Some(&state), vec![]);
            changed.restore(&expect(), other, "");
            assert!(changed.heads.is_empty());
            assert_eq!(changed.stored_bytes(), 0);
            assert!(changed.total().is_none());
        }
    }

    #[test]
    fn a_damaged_file_drops_the_slot_until_the_retained_head_returns() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ids(dir.path(), &["a", "b"]);
        let trusted: Vec<[u8; 32]> = keys.iter().map(key).collect();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut peers = Peers::load(Some(&state), vec![]);
        let ha = head("cat", 3, 0.0, 2);
        let hb = head("cup", 4, 1.0, 3);
        for (k, (p, h)) in [("a", &ha), ("b", &hb)].into_iter().enumerate() {
            let v = verify(&keys[k], p, h, &trusted).unwrap();
            peers.accept(p, v, 8, u64::MAX).unwrap();
        }
        let heads_dir = state.join(crate::state::files::FLEET_HEADS);
        assert_eq!(std::fs::read_dir(&heads_dir).unwrap().count(), 2);
        let stored = peers.stored_bytes();
        assert!(stored > 0);
        let file_a = heads_dir.join(crate::fleet::store::file_name("a"));
        let mut b = std::fs::read(&file_a).unwrap();
        let n = b.len() / 2;
        b[n] ^= 1;
        std::fs::write(&file_a, b).unwrap();
        peers.save_due(true);
        let mut again = Peers::load(Some(&state), vec![]);
        again.restore(&expect(), ha.algorithm(), "");
        assert_eq!(again.heads.keys().collect::<Vec<_>>(), ["b"]);
        // The retained head comes back: the same version is accepted into the empty slot.
        let v = verify(&keys[0], "a", &ha, &trusted).unwrap();
        assert_eq!(
            again.accept("a", v, 8, u64::MAX).unwrap(),
            Accepted::Updated
        );
        let local = head("dog", 1, 0.5, 1);
        assert_close(
            &again.fleet_head(&local),
            &peers.fleet_head(&local),
            &[0.3; D],
        );
        // The store's bound: a head that does not fit is refused and changes nothing.
        let mut big = head("cat", 5, 0.0, 9);
        big.merge(&head("dog", 2, 0.5, 1)).unwrap();
        big.set_version(9);
        let v = verify(&keys[0], "a", &big, &trusted).unwrap();
        let cap = again.stored_bytes();
        assert_eq!(
            again.accept("a", v, 8, cap).unwrap_err().code(),
            "fleet_store_full"
        );
        assert_eq!(again.heads.get("a").unwrap().version, 2);
        assert_eq!(again.stored_bytes(), stored);
        // Heads stored for another group are not restored (and their files go).
        let mut elsewhere = Peers::load(Some(&state), vec![]);
        elsewhere.restore(&expect(), ha.algorithm(), "another-group");
        assert!(
            elsewhere.heads.is_empty(),
            "heads of another group are not restored"
        );
        assert_eq!(elsewhere.stored_bytes(), 0);
    }
}
