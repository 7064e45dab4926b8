//! The peers' latest heads on disk (`{state}/fleet-heads/`), bounded by bytes: the fleet's
//! running total subtracts a peer's old head read back from here instead of holding every
//! peer's head in RAM, and a restart rebuilds the fleet head from these files. Without a
//! state directory (unit tests) the files are kept in memory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::state::files::{replace_unsynced, FLEET_HEADS, HEAD_EXTENSION, TEMP_EXTENSION};

/// Head files by peer, and their sizes.
pub struct PeerStore {
    dir: Option<PathBuf>,
    memory: BTreeMap<String, Vec<u8>>,
    sizes: BTreeMap<String, u64>,
}

/// The file name of `peer`'s head: the SHA-256 of its device id, so any id is a safe name.
pub(super) fn file_name(peer: &str) -> String {
    format!("{}.{HEAD_EXTENSION}", hex::encode(Sha256::digest(peer)))
}

impl PeerStore {
    /// The store under `state_dir` (created if missing), or in memory.
    pub fn open(state_dir: Option<&Path>) -> PeerStore {
        let dir = state_dir.map(|d| d.join(FLEET_HEADS));
        if let Some(d) = &dir {
            if let Err(e) = std::fs::create_dir_all(d) {
                tracing::warn!("cannot create {}: {e}", d.display());
            }
        }
        PeerStore {
            dir,
            memory: BTreeMap::new(),
            sizes: BTreeMap::new(),
        }
    }

    fn path(&self, peer: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(file_name(peer)))
    }

    /// Stores `peer`'s head file, replacing the previous one.
    pub fn put(&mut self, peer: &str, bytes: &[u8]) -> io::Result<()> {
        match self.path(peer) {
            Some(p) => replace_unsynced(&p, bytes)?,
            None => {
                self.memory.insert(peer.into(), bytes.to_vec());
            }
        }
        self.sizes.insert(peer.into(), bytes.len() as u64);
        Ok(())
    }

    /// `peer`'s head file if it is there and its SHA-256 is `sha256` (hex): a file that is
    /// missing, stale or damaged is `None`.
    pub fn get(&mut self, peer: &str, sha256: &str) -> Option<Vec<u8>> {
        let bytes = match self.path(peer) {
            Some(p) => match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(peer, "cannot read {}: {e}", p.display());
                    }
                    return None;
                }
            },
            None => self.memory.get(peer)?.clone(),
        };
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            tracing::warn!(peer, "stored fleet head does not match its hash; dropped");
            return None;
        }
        self.sizes.insert(peer.into(), bytes.len() as u64);
        Some(bytes)
    }

    /// Removes `peer`'s file.
    pub fn remove(&mut self, peer: &str) {
        self.sizes.remove(peer);
        match self.path(peer) {
            Some(p) => {
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(peer, "cannot remove {}: {e}", p.display());
                    }
                }
            }
            None => {
                self.memory.remove(peer);
            }
        }
    }

    /// Removes every file that is not the head of one of `peers` (peers dropped while the
    /// daemon was down, temp files of an interrupted write).
    pub fn retain(&mut self, peers: &[&str]) {
        let keep: Vec<String> = peers.iter().map(|p| file_name(p)).collect();
        self.sizes.retain(|p, _| peers.contains(&p.as_str()));
        self.memory.retain(|p, _| peers.contains(&p.as_str()));
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let (head, temp) = (format!(".{HEAD_EXTENSION}"), format!(".{TEMP_EXTENSION}"));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(&head) || name.ends_with(&temp);
            if ours && !keep.contains(&name) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Bytes stored for `peer` (0 if none).
    pub fn size(&self, peer: &str) -> u64 {
        self.sizes.get(peer).copied().unwrap_or(0)
    }

    /// Bytes stored in all.
    pub fn bytes(&self) -> u64 {
        self.sizes.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn files_round_trip_are_checked_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PeerStore::open(Some(dir.path()));
        s.put("cam/1 ☕", b"first").unwrap();
        s.put("b", b"bb").unwrap();
        s.put("cam/1 ☕", b"second!").unwrap();
        assert_eq!(s.bytes(), 9);
        assert_eq!(s.get("cam/1 ☕", &sha(b"second!")).unwrap(), b"second!");
        assert_eq!(s.get("cam/1 ☕", &sha(b"first")), None, "stale");
        assert_eq!(s.get("nobody", &sha(b"")), None);
        // A damaged file fails its hash.
        std::fs::write(dir.path().join(FLEET_HEADS).join(file_name("b")), b"bX").unwrap();
        assert_eq!(s.get("b", &sha(b"bb")), None);
        // Reopened: the files are still there; retain drops the others and stray temp files.
        let mut s = PeerStore::open(Some(dir.path()));
        std::fs::write(dir.path().join(FLEET_HEADS).join("x.tmp"), b"t").unwrap();
        s.retain(&["cam/1 ☕"]);
        let left: Vec<_> = std::fs::read_dir(dir.path().join(FLEET_HEADS))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1);
        assert!(s.get("cam/1 ☕", &sha(b"second!")).is_some());
        s.remove("cam/1 ☕");
        assert_eq!(s.bytes(), 0);
        assert!(s.get("cam/1 ☕", &sha(b"second!")).is_none());
        // In memory.
        let mut m = PeerStore::open(None);
        m.put("a", b"x").unwrap();
        assert_eq!(m.get("a", &sha(b"x")).unwrap(), b"x");
        m.remove("a");
        assert_eq!(m.bytes(), 0);
    }
}
