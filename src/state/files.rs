//! Every file name in the state directory, and the one atomic write every writer there uses.
//!
//! The names are an on-disk contract: a board upgraded in place finds its state under them
//! (`tests/state_compat.rs` loads a directory written by an older adaptd).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Write-ahead log of labeled samples and of removals (`state::store`):
/// `[len u32 LE][crc32 u32 LE][CBOR]` records, appended and fdatasync'ed by the learner before the MQTT acknowledgement, truncated
/// after each snapshot.
pub const WAL: &str = "wal.log";

/// The last snapshot (`state::store::SnapshotData`: head, stored samples, dedup keys, the
/// unlearning ledger, last WAL sequence), written atomically by the learner.
pub const SNAPSHOT: &str = "snapshot.cbor";

/// Prefix of a snapshot that did not decode, moved aside by `Store::open` (suffixed with the
/// Unix time) for the operator.
pub const CORRUPT_SNAPSHOT_PREFIX: &str = "snapshot.corrupt-";

/// Directory of the heads kept for rollback, one [`kept_head`] file per snapshot, the newest
/// `state.keep_heads` kept; written by the learner through `Store::snapshot`.
pub const HEADS: &str = "heads";

/// Extension of a kept head (`heads/<version>.cbor`, a head file as `head::Head::to_bytes`).
pub const HEAD_EXTENSION: &str = "cbor";

/// Target statistics of domain adaptation (`adapt::TargetStats::to_bytes`), written by the
/// adaptation thread every `adapt.persist_interval_secs` and on stop, removed by
/// `cmd/adapt-reset`.
pub const ADAPT: &str = "adapt.cbor";

/// This board's fleet private key (Ed25519, PKCS#8, mode 0600), created by
/// `fleet::Identity::load_or_create` on first start and never rewritten.
pub const FLEET_KEY: &str = "fleet.key";

/// The fleet peers seen (key, last accepted version and head hash) and those excluded at run
/// time (JSON), written by `fleet::Peers` whenever either changes.
pub const FLEET_PEERS: &str = "fleet-peers.json";

/// Directory of the fleet peers' latest heads (`fleet::PeerStore`): one head file per peer,
/// named by the SHA-256 of its device id (`<hex>.cbor`), replaced without fsync (a file lost or
/// stale after a power cut fails its hash check against [`FLEET_PEERS`] and the peer's
/// retained head fills the slot again).
pub const FLEET_HEADS: &str = "fleet-heads";

/// Extension of a peer's delta log in [`FLEET_HEADS`] (`<hex>.delta`): the samples its deltas
/// added to its stored head since, checked against its hash chain in [`FLEET_PEERS`].
pub const DELTA_EXTENSION: &str = "delta";

/// The training record (JSON, `daemon::learner::record`): prequential accuracy overall and per
/// class, written by the learner after each snapshot; a statistic, reset with the head.
pub const TRAINING: &str = "training.json";

/// Home Assistant discovery topics published and Frigate cameras seen (JSON,
/// `daemon::dashboard`), so that entities no longer wanted are removed, even after a restart
/// with discovery turned off.
pub const HOMEASSISTANT: &str = "homeassistant.json";

/// Prefix of the model cache file (`backbone-<key>.nnef`: the backbone's optimized graph),
/// written by `model::backbone` when `model.cache` is on; a file with another key is stale and
/// removed when a new one is written.
pub const MODEL_CACHE_PREFIX: &str = "backbone-";

/// Suffix of the model cache file (see [`MODEL_CACHE_PREFIX`]).
pub const MODEL_CACHE_SUFFIX: &str = ".nnef";

/// Extension of the temp file of an atomic write (`<stem>.tmp` next to its target). Left over
/// only by a crash mid-write; `Store::open` removes them.
pub const TEMP_EXTENSION: &str = "tmp";

/// Empty file created and removed by the config while choosing the default state directory,
/// to learn whether it is writable.
pub const WRITE_PROBE: &str = ".adaptd-write-probe";

/// The kept head of `version` in the state directory `dir`.
pub fn kept_head(dir: &Path, version: u64) -> PathBuf {
    dir.join(HEADS).join(format!("{version}.{HEAD_EXTENSION}"))
}

/// The model cache file of `key` in `dir`.
pub fn model_cache(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{MODEL_CACHE_PREFIX}{key}{MODEL_CACHE_SUFFIX}"))
}

/// Whether `name` is a model cache file name (of any key).
pub fn is_model_cache(name: &str) -> bool {
    name.starts_with(MODEL_CACHE_PREFIX) && name.ends_with(MODEL_CACHE_SUFFIX)
}

/// `e` with what was being done to which file.
pub(crate) fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// fsyncs a directory, so a rename in it survives a power cut.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ctx(e, "fsync directory", dir))
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]), with the default mode.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, None, |w| w.write_all(bytes))
}

/// Replaces `path` with `bytes` through a temp file and a rename, without fsync: a reader never
/// sees a partial file, but a power cut may leave the old one (or none). For files that can be
/// recovered from elsewhere (the fleet peers' heads).
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(TEMP_EXTENSION);
    fs::write(&tmp, bytes).map_err(|e| ctx(e, "write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| ctx(e, "rename to", path))
}

/// Writes `path` atomically: the content streamed by `write` through a buffered writer into a
/// temp file next to it, fsync, rename over `path`, fsync of the directory. A power cut leaves
/// the old file or the new one, never a mix; large files (snapshots) are never assembled in
/// memory first. `mode` (Unix permission bits, e.g. `0o600` for a private key) is given to the
/// temp file at creation, so the content is never readable under looser permissions.
pub fn write_atomic_with(
    path: &Path,
    mode: Option<u32>,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(TEMP_EXTENSION);
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let f = opts.open(&tmp).map_err(|e| ctx(e, "create", &tmp))?;
        let mut w = io::BufWriter::with_capacity(64 * 1024, f);
        write(&mut w).map_err(|e| ctx(e, "write", &tmp))?;
        let f = w
            .into_inner()
            .map_err(|e| ctx(e.into_error(), "write", &tmp))?;
        f.sync_all().map_err(|e| ctx(e, "fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(|e| ctx(e, "rename to", path))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(SNAPSHOT);
        write_atomic(&p, b"old").expect("first write");
        write_atomic(&p, b"new").expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"new");
        assert!(!p.with_extension(TEMP_EXTENSION).exists());
        let failed = write_atomic_with(&p, None, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err_and(|e| e.to_string().contains("boom")));
        assert_eq!(
            fs::read(&p).expect("read"),
            b"new",
            "a failed write changed the file"
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_mode_applies_to_the_written_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(FLEET_KEY);
        write_atomic_with(&p, Some(0o600), |w| w.write_all(b"secret")).expect("write");
        let mode = fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
    }

    #[test]
    fn names_on_disk_are_unchanged() {
        let d = Path::new("s");
        assert_eq!(kept_head(d, 7), Path::new("s/heads/7.cbor"));
        assert_eq!(model_cache(d, "k"), Path::new("s/backbone-k.nnef"));
        assert!(is_model_cache("backbone-k.nnef") && !is_model_cache("backbone-k.tmp"));
        assert_eq!(
            [WAL, SNAPSHOT, ADAPT, FLEET_KEY, FLEET_PEERS],
            [
                "wal.log",
                "snapshot.cbor",
                "adapt.cbor",
                "fleet.key",
                "fleet-peers.json"
            ]
        );
    }
}
