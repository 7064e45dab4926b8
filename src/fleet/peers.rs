//! The peers of this board: their latest verified heads, what was seen of each (kept in the
//! state directory's peers file across restarts, against replays and key changes), and the
//! fleet head merged from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FleetError, Verified};
use crate::head::Head;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::testing::{head, ids, key, verify, D};
    use crate::fleet::Identity;

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
