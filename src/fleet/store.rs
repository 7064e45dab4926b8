//! The peers' latest heads on disk (`{state}/fleet-heads/`), bounded by bytes: the fleet's
//! running total subtracts a peer's old head read back from here instead of holding every
//! peer's head in RAM, and a restart rebuilds the fleet head from these files. Without a
//! state directory (unit tests) the files are kept in memory. Beside a peer's head, the log of
//! the samples its deltas added since (`.delta`), appended per delta and dropped with the
//! next whole head.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::state::files::{
    replace_unsynced, DELTA_EXTENSION, FLEET_HEADS, HEAD_EXTENSION, TEMP_EXTENSION,
};

/// What a peer's file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Its latest whole head, as signed.
    Head,
    /// The samples its deltas added to that head since (CBOR arrays, one per delta).
    Delta,
}

/// Head and delta files by peer, and their sizes.
pub struct PeerStore {
    dir: Option<PathBuf>,
    memory: BTreeMap<(String, Kind), Vec<u8>>,
    sizes: BTreeMap<(String, Kind), u64>,
}

/// The file name of `peer`'s head or delta log: the SHA-256 of its device id, so any id is a
/// safe name.
pub(super) fn file_name(peer: &str, kind: Kind) -> String {
    let ext = match kind {
        Kind::Head => HEAD_EXTENSION,
        Kind::Delta => DELTA_EXTENSION,
    };
    format!("{}.{ext}", hex::encode(Sha256::digest(peer)))
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

    fn path(&self, peer: &str, kind: Kind) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(file_name(peer, kind)))
    }

    /// Stores `peer`'s head file or delta log, replacing the previous one.
    pub fn put(&mut self, peer: &str, kind: Kind, bytes: &[u8]) -> io::Result<()> {
        match self.path(peer, kind) {
            Some(p) => replace_unsynced(&p, bytes)?,
            None => {
                self.memory.insert((peer.into(), kind), bytes.to_vec());
            }
        }
        self.sizes.insert((peer.into(), kind), bytes.len() as u64);
        Ok(())
    }

    /// Appends `bytes` to `peer`'s file of `kind` (a delta log: only what is new is written;
    /// a write cut short by a crash fails the log's hash chain, and the peer's retained head
    /// fills the slot again).
    pub fn append(&mut self, peer: &str, kind: Kind, bytes: &[u8]) -> io::Result<()> {
        match self.path(peer, kind) {
            Some(p) => {
                use std::io::Write as _;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)?
                    .write_all(bytes)?;
            }
            None => self
                .memory
                .entry((peer.into(), kind))
                .or_default()
                .extend_from_slice(bytes),
        }
        *self.sizes.entry((peer.into(), kind)).or_default() += bytes.len() as u64;
        Ok(())
    }

    /// `peer`'s head file or delta log if it is there and its SHA-256 is `sha256` (hex): a
    /// file that is missing, stale or damaged is `None`.
    pub fn get(&mut self, peer: &str, kind: Kind, sha256: &str) -> Option<Vec<u8>> {
        let bytes = self.read(peer, kind)?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            tracing::warn!(
                peer,
                "stored fleet {kind:?} does not match its hash; dropped"
            );
            return None;
        }
        Some(bytes)
    }

    /// `peer`'s head file or delta log as it is (a delta log is checked against its hash
    /// chain by its reader).
    pub fn read(&mut self, peer: &str, kind: Kind) -> Option<Vec<u8>> {
        let bytes = match self.path(peer, kind) {
            Some(p) => match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(peer, "cannot read {}: {e}", p.display());
                    }
                    return None;
                }
            },
            None => self.memory.get(&(peer.into(), kind))?.clone(),
        };
        self.sizes.insert((peer.into(), kind), bytes.len() as u64);
        Some(bytes)
    }

    /// Removes `peer`'s head file or delta log.
    pub fn remove(&mut self, peer: &str, kind: Kind) {
        self.sizes.remove(&(peer.into(), kind));
        match self.path(peer, kind) {
            Some(p) => {
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(peer, "cannot remove {}: {e}", p.display());
                    }
                }
            }
            None => {
                self.memory.remove(&(peer.into(), kind));
            }
        }
    }

    /// Removes both of `peer`'s files.
    pub fn remove_peer(&mut self, peer: &str) {
        self.remove(peer, Kind::Head);
        self.remove(peer, Kind::Delta);
    }

    /// Removes every file that is not the head or delta log of one of `peers` (peers dropped
    /// while the daemon was down, temp files of an interrupted write).
    pub fn retain(&mut self, peers: &[&str]) {
        let keep: Vec<String> = peers
            .iter()
            .flat_map(|p| [file_name(p, Kind::Head), file_name(p, Kind::Delta)])
            .collect();
        self.sizes.retain(|(p, _), _| peers.contains(&p.as_str()));
        self.memory.retain(|(p, _), _| peers.contains(&p.as_str()));
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let ends = [HEAD_EXTENSION, DELTA_EXTENSION, TEMP_EXTENSION].map(|e| format!(".{e}"));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = ends.iter().any(|end| name.ends_with(end.as_str()));
            if ours && !keep.contains(&name) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Bytes of `peer`'s head file or delta log (0 if none).
    pub fn size(&self, peer: &str, kind: Kind) -> u64 {
        self.sizes.get(&(peer.into(), kind)).copied().unwrap_or(0)
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
        let (h, d) = (Kind::Head, Kind::Delta);
        s.put("cam/1 ☕", h, b"first").unwrap();
        s.put("b", h, b"bb").unwrap();
        s.put("b", d, b"log").unwrap();
        s.put("cam/1 ☕", h, b"second!").unwrap();
        assert_eq!(s.bytes(), 12);
        assert_eq!(s.size("b", d), 3);
        assert_eq!(s.get("cam/1 ☕", h, &sha(b"second!")).unwrap(), b"second!");
        assert_eq!(s.get("cam/1 ☕", h, &sha(b"first")), None, "stale");
        assert_eq!(s.get("nobody", h, &sha(b"")), None);
        assert_eq!(s.get("b", d, &sha(b"log")).unwrap(), b"log");
        // A damaged file fails its hash.
        let file = |p, k| dir.path().join(FLEET_HEADS).join(file_name(p, k));
        std::fs::write(file("b", h), b"bX").unwrap();
        assert_eq!(s.get("b", h, &sha(b"bb")), None);
        // Reopened: the files are still there; retain drops the others and stray temp files.
        let mut s = PeerStore::open(Some(dir.path()));
        std::fs::write(dir.path().join(FLEET_HEADS).join("x.tmp"), b"t").unwrap();
        s.retain(&["cam/1 ☕"]);
        let left: Vec<_> = std::fs::read_dir(dir.path().join(FLEET_HEADS))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "b's head and delta log are gone");
        assert!(s.get("cam/1 ☕", h, &sha(b"second!")).is_some());
        s.put("cam/1 ☕", d, b"more").unwrap();
        s.append("cam/1 ☕", d, b" and more").unwrap();
        assert_eq!(
            s.get("cam/1 ☕", d, &sha(b"more and more")).unwrap(),
            b"more and more"
        );
        assert_eq!(s.size("cam/1 ☕", d), 13);
        s.remove_peer("cam/1 ☕");
        assert_eq!(s.bytes(), 0);
        assert!(s.get("cam/1 ☕", h, &sha(b"second!")).is_none());
        assert!(!file("cam/1 ☕", d).exists());
        // In memory.
        let mut m = PeerStore::open(None);
        m.put("a", h, b"x").unwrap();
        m.append("a", d, b"y").unwrap();
        assert_eq!(m.get("a", h, &sha(b"x")).unwrap(), b"x");
        assert_eq!(m.get("a", d, &sha(b"y")).unwrap(), b"y");
        m.remove_peer("a");
        assert_eq!(m.bytes(), 0);
    }
}
