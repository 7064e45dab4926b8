//! Durable state in the state directory: a write-ahead log of labeled samples (fsynced before
//! the MQTT acknowledgement), atomic snapshots, and previous heads kept for rollback.
//!
//! Files (names in [`super::files`]):
//! - `wal.log`: records `[len u32 LE][crc32 u32 LE][CBOR body]`, appended and fdatasync'ed: a
//!   learned sample ([`LearnRecord`]) or the removal of one (`cmd/unlearn`, `cmd/relabel`:
//!   [`UnlearnRecord`]).
//! - `snapshot.cbor`: head + stored samples + dedup keys + the last WAL sequence it contains,
//!   written as temp file → fsync → rename → fsync(dir). Replay skips records it already holds,
//!   so a crash between the snapshot and the WAL truncation never applies a sample twice.
//! - `heads/<version>.cbor`: the head at each snapshot, the newest `keep_heads` kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{
    ctx, kept_head, write_atomic, write_atomic_with, CORRUPT_SNAPSHOT_PREFIX, HEADS,
    HEAD_EXTENSION, SNAPSHOT, TEMP_EXTENSION, WAL,
};
use crate::cbor::{Bytes, F32s};

/// Largest WAL record accepted when reading (a record holds one embedding and a label).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Largest snapshot accepted when reading.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 31;

/// A labeled sample as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnRecord {
    /// Monotonic sequence number of the record.
    pub seq: u64,
    /// Class label.
    pub label: String,
    /// The embedding (a little-endian f32 byte string on disk).
    pub embedding: F32s,
    /// Content key of the MQTT message (to drop broker redeliveries), if any.
    pub key: Option<[u8; 16]>,
    /// The sample's id (for `cmd/unlearn`); absent in records of adaptd before unlearning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The removal of one learned sample as logged (`cmd/unlearn`, or `cmd/relabel` with `to`).
/// It has no `label` field: an adaptd older than unlearning stops replaying at it (as at a
/// torn tail) rather than learning it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlearnRecord {
    /// Monotonic sequence number of the record.
    pub seq: u64,
    /// The id of the sample removed.
    pub unlearn: String,
    /// The label it was learned under.
    pub from: String,
    /// Its embedding, bit for bit as learned.
    pub embedding: F32s,
    /// `relabel`: the label it is learned under instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Content key of the command message (to drop broker redeliveries).
    pub key: Option<[u8; 16]>,
}

/// One write-ahead log record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    Learn(LearnRecord),
    Unlearn(UnlearnRecord),
}

impl WalRecord {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            WalRecord::Learn(r) => r.seq,
            WalRecord::Unlearn(r) => r.seq,
        }
    }
}

/// Every field either record kind may have, to tell them apart when reading.
#[derive(Deserialize)]
struct AnyRecord {
    seq: u64,
    #[serde(default)]
    label: Option<String>,
    embedding: F32s,
    #[serde(default)]
    key: Option<[u8; 16]>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    unlearn: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

impl AnyRecord {
    fn into_record(self) -> Option<WalRecord> {
        Some(match (self.unlearn, self.label) {
            (Some(unlearn), None) => WalRecord::Unlearn(UnlearnRecord {
                seq: self.seq,
                unlearn,
                from: self.from?,
                embedding: self.embedding,
                to: self.to,
                key: self.key,
            }),
            (None, Some(label)) => WalRecord::Learn(LearnRecord {
                seq: self.seq,
                label,
                embedding: self.embedding,
                key: self.key,
                id: self.id,
            }),
            _ => return None,
        })
    }
}

/// Everything a snapshot holds, as bytes owned by other modules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Format tag.
    pub format: String,
    /// Highest WAL sequence number included.
    pub last_seq: u64,
    /// The head file (see `head::Head::to_bytes`), empty when there is no head yet.
    pub head: Bytes,
    /// The stored labeled samples (see `samples::SampleStore::to_bytes`).
    pub samples: Bytes,
    /// Recently learned message keys.
    pub dedup: Vec<[u8; 16]>,
    /// The ledger of learned samples by id (see `ledger::Ledger::to_bytes`); empty in snapshots
    /// written before unlearning existed.
    #[serde(default)]
    pub ledger: Bytes,
}

/// What `Store::open` recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The last snapshot, if one exists.
    pub snapshot: Option<SnapshotData>,
    /// WAL records newer than the snapshot, in order.
    pub records: Vec<WalRecord>,
    /// Bytes cut from a torn or corrupt WAL tail.
    pub torn_bytes: u64,
    /// Temp files left by an interrupted write and removed.
    pub removed_temp_files: usize,
    /// Set when the snapshot did not decode: what happened and where it was moved.
    pub corrupt_snapshot: Option<String>,
    /// With a corrupt snapshot: the newest kept head to start from.
    pub fallback_head: Option<Vec<u8>>,
}

/// The open state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    wal: File,
    next_seq: u64,
    keep_heads: usize,
}

fn list_versions(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| ctx(e, "list", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(HEAD_EXTENSION)?
                .strip_suffix('.')?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn encode_record(rec: &WalRecord) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match rec {
        WalRecord::Learn(r) => ciborium::into_writer(r, &mut body),
        WalRecord::Unlearn(r) => ciborium::into_writer(r, &mut body),
    }
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses WAL bytes: the valid records and the length of the valid prefix. Stops at the first
/// record that is truncated, oversized, fails its checksum or does not decode.
pub fn parse_wal(bytes: &[u8]) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > MAX_RECORD_BYTES || bytes.len() - pos - 8 < len {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        match ciborium::from_reader::<AnyRecord, _>(body)
            .ok()
            .and_then(AnyRecord::into_record)
        {
            Some(r) => records.push(r),
            None => break,
        }
        pos += 8 + len;
    }
    (records, pos)
}

impl Store {
    /// Opens (creating if needed) the state directory and recovers its contents. A torn WAL
    /// tail is cut off and reported; a snapshot that does not decode is moved aside, reported,
    /// and replaced by the newest kept head (never silently by an empty state).
    pub fn open(dir: &Path, keep_heads: usize) -> io::Result<(Store, Recovered)> {
        fs::create_dir_all(dir.join(HEADS)).map_err(|e| ctx(e, "create", dir))?;
        let mut rec = Recovered::default();
        for sub in [dir.to_path_buf(), dir.join(HEADS)] {
            for entry in fs::read_dir(&sub).map_err(|e| ctx(e, "list", &sub))? {
                let path = entry?.path();
                if path.extension().is_some_and(|x| x == TEMP_EXTENSION) {
                    fs::remove_file(&path).map_err(|e| ctx(e, "remove", &path))?;
                    rec.removed_temp_files += 1;
                }
            }
        }
        let snap_path = dir.join(SNAPSHOT);
        if snap_path.exists() {
            let len = fs::metadata(&snap_path)?.len();
            if len > MAX_SNAPSHOT_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot {} is {len} bytes: too large", snap_path.display()),
                ));
            }
            let bytes = fs::read(&snap_path).map_err(|e| ctx(e, "read", &snap_path))?;
            match ciborium::from_reader::<SnapshotData, _>(bytes.as_slice()) {
                Ok(snap) if snap.format == "adaptd-state-1" => rec.snapshot = Some(snap),
                outcome => {
                    // Power loss cannot produce this (snapshots are renamed into place whole):
                    // it is disk corruption. Keep the file for the operator, fall back to the
                    // newest kept head; the WAL holds everything learned after it.
                    let why = match outcome {
                        Err(e) => e.to_string(),
                        Ok(s) => format!("unknown format {:?}", s.format),
                    };
                    let aside = dir.join(format!(
                        "{CORRUPT_SNAPSHOT_PREFIX}{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    ));
                    fs::rename(&snap_path, &aside).map_err(|e| ctx(e, "move aside", &snap_path))?;
                    rec.corrupt_snapshot = Some(format!(
                        "snapshot was corrupt ({why}); moved to {}",
                        aside.display()
                    ));
                    let heads = list_versions(&dir.join(HEADS))?;
                    if let Some(v) = heads.last() {
                        let p = kept_head(dir, *v);
                        rec.fallback_head = Some(fs::read(&p).map_err(|e| ctx(e, "read", &p))?);
                    }
                }
            }
        }
        let wal_path = dir.join(WAL);
        let mut bytes = Vec::new();
        if wal_path.exists() {
            File::open(&wal_path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| ctx(e, "read", &wal_path))?;
        }
        let (records, valid) = parse_wal(&bytes);
        let last_seq = rec.snapshot.as_ref().map_or(0, |s| s.last_seq);
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(|e| ctx(e, "open", &wal_path))?;
        if valid < bytes.len() {
            rec.torn_bytes = (bytes.len() - valid) as u64;
            wal.set_len(valid as u64)
                .and_then(|_| wal.sync_all())
                .map_err(|e| ctx(e, "truncate torn tail of", &wal_path))?;
        }
        let next_seq = records.last().map_or(last_seq, |r| r.seq().max(last_seq)) + 1;
        rec.records = records.into_iter().filter(|r| r.seq() > last_seq).collect();
        Ok((
            Store {
                dir: dir.to_path_buf(),
                wal,
                next_seq,
                keep_heads,
            },
            rec,
        ))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Next sequence number to assign.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Sequence number of the last assigned record.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends records and makes them durable (one fdatasync for the batch).
    pub fn append(&mut self, records: &[WalRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&encode_record(r)?);
        }
        let path = self.dir.join(WAL);
        self.wal
            .write_all(&buf)
            .and_then(|_| self.wal.sync_data())
            .map_err(|e| ctx(e, "append to", &path))
    }

    /// Writes a snapshot atomically, keeps a copy of its head for rollback, then truncates the
    /// WAL (everything in it is in the snapshot).
    pub fn snapshot(&mut self, data: &SnapshotData, head_version: u64) -> io::Result<()> {
        write_atomic_with(&self.dir.join(SNAPSHOT), None, |w| {
            ciborium::into_writer(data, w).map_err(|e| match e {
                ciborium::ser::Error::Io(e) => e,
                ciborium::ser::Error::Value(v) => io::Error::new(io::ErrorKind::InvalidData, v),
            })
        })?;
        if !data.head.0.is_empty() {
            let kept = kept_head(&self.dir, head_version);
            if !kept.exists() {
                write_atomic(&kept, &data.head.0)?;
            }
            self.prune_heads()?;
        }
        let path = self.dir.join(WAL);
        self.wal
            .set_len(0)
            .and_then(|_| self.wal.sync_all())
            .map_err(|e| ctx(e, "truncate", &path))
    }

    fn prune_heads(&self) -> io::Result<()> {
        let versions = self.head_versions()?;
        if versions.len() > self.keep_heads {
            for v in &versions[..versions.len() - self.keep_heads] {
                let p = kept_head(&self.dir, *v);
                fs::remove_file(&p).map_err(|e| ctx(e, "remove", &p))?;
            }
        }
        Ok(())
    }

    /// Versions of the kept heads, oldest first.
    pub fn head_versions(&self) -> io::Result<Vec<u64>> {
        list_versions(&self.dir.join(HEADS))
    }

    /// The bytes of a kept head.
    pub fn load_head(&self, version: u64) -> io::Result<Vec<u8>> {
        let p = kept_head(&self.dir, version);
        fs::read(&p).map_err(|e| ctx(e, "read", &p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> WalRecord {
        WalRecord::Learn(LearnRecord {
            seq,
            label: format!("c{}", seq % 3),
            // Large enough that CBOR byte strings exceed ciborium's 4 KiB scratch buffer.
            embedding: F32s(vec![
                seq as f32;
                if seq.is_multiple_of(2) { 1280 } else { 8 }
            ]),
            key: Some([seq as u8; 16]),
            id: None,
        })
    }

    fn snap(last_seq: u64) -> SnapshotData {
        SnapshotData {
            format: "adaptd-state-1".into(),
            last_seq,
            head: Bytes(vec![1, 2, 3]),
            samples: Bytes::default(),
            dedup: vec![[7; 16]],
            ledger: Bytes::default(),
        }
    }

    #[test]
    fn wal_round_trip_and_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, r) = Store::open(dir.path(), 3).expect("open");
        assert!(r.snapshot.is_none() && r.records.is_empty());
        let recs: Vec<_> = (0..5).map(|_| rec(s.next_seq())).collect();
        s.append(&recs).expect("append");
        drop(s);
        let (mut s, r) = Store::open(dir.path(), 3).expect("reopen");
        assert_eq!(r.records, recs);
        assert_eq!(s.next_seq(), 6);
    }

    #[test]
    fn unlearn_records_round_trip_and_older_records_still_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Store::open(dir.path(), 3).expect("open");
        let learn = WalRecord::Learn(LearnRecord {
            seq: s.next_seq(),
            label: "cat".into(),
            embedding: F32s(vec![0.5; 8]),
            key: Some([1; 16]),
            id: Some("p-1".into()),
        });
        let relabel = WalRecord::Unlearn(UnlearnRecord {
            seq: s.next_seq(),
            unlearn: "p-1".into(),
            from: "cat".into(),
            embedding: F32s(vec![0.5; 8]),
            to: Some("dog".into()),
            key: Some([2; 16]),
        });
        let unlearn = WalRecord::Unlearn(UnlearnRecord {
            seq: s.next_seq(),
            unlearn: "p-1".into(),
            from: "dog".into(),
            embedding: F32s(vec![0.5; 8]),
            to: None,
            key: None,
        });
        // A record as adaptd wrote it before unlearning: no id field.
        #[derive(Serialize, Deserialize)]
        struct Old {
            seq: u64,
            label: String,
            embedding: F32s,
            key: Option<[u8; 16]>,
        }
        let old = Old {
            seq: s.next_seq(),
            label: "cup".into(),
            embedding: F32s(vec![1.0; 8]),
            key: None,
        };
        s.append(&[learn.clone(), relabel.clone(), unlearn.clone()])
            .expect("append");
        let mut body = Vec::new();
        ciborium::into_writer(&old, &mut body).expect("encode");
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(WAL))
            .and_then(|mut f| f.write_all(&framed))
            .expect("append old record");
        drop(s);
        let (_, r) = Store::open(dir.path(), 3).expect("reopen");
        assert_eq!(r.torn_bytes, 0);
        assert_eq!(r.records.len(), 4);
        assert_eq!(r.records[..3], [learn, relabel, unlearn.clone()]);
        assert!(matches!(&r.records[3], WalRecord::Learn(l) if l.label == "cup" && l.id.is_none()));
        // What an older reader does with a removal: it does not decode as a learned sample.
        let WalRecord::Unlearn(u) = unlearn else {
            unreachable!()
        };
        let mut body = Vec::new();
        ciborium::into_writer(&u, &mut body).expect("encode");
        assert!(ciborium::from_reader::<Old, _>(body.as_slice()).is_err());
    }

    fn record_ends(recs: &[WalRecord]) -> Vec<usize> {
        let mut end = 0;
        recs.iter()
            .map(|r| {
                end += encode_record(r).expect("enc").len();
                end
            })
            .collect()
    }

    /// A state directory whose WAL holds three records.
    fn wal_of_three_records() -> (tempfile::TempDir, Vec<WalRecord>) {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Store::open(dir.path(), 3).expect("open");
        let recs: Vec<_> = (0..3).map(|_| rec(s.next_seq())).collect();
        s.append(&recs).expect("append");
        (dir, recs)
    }

    #[test]
    fn torn_tail_is_cut_and_reported_at_every_length() {
        let (dir, recs) = wal_of_three_records();
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).expect("read");
        let ends = record_ends(&recs);
        assert_eq!(*ends.last().expect("end"), full.len());
        for cut in (1..full.len()).step_by(7).chain(ends.iter().map(|e| e - 1)) {
            fs::write(&wal, &full[..cut]).expect("write");
            let (_, r) = Store::open(dir.path(), 3).expect("reopen");
            let whole = ends.iter().filter(|e| **e <= cut).count();
            let valid = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(r.records, recs[..whole].to_vec(), "cut {cut}");
            assert_eq!(r.torn_bytes as usize, cut - valid);
            assert_eq!(fs::metadata(&wal).expect("meta").len() as usize, valid);
        }
    }

    #[test]
    fn corrupt_record_stops_replay() {
        let (dir, recs) = wal_of_three_records();
        let wal = dir.path().join(WAL);
        let mut bytes = fs::read(&wal).expect("read");
        let ends = record_ends(&recs);
        bytes[ends[0] + 20] ^= 0x40;
        fs::write(&wal, &bytes).expect("write");
        let (_, r) = Store::open(dir.path(), 3).expect("reopen");
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.torn_bytes as usize, bytes.len() - ends[0]);
    }

    #[test]
    fn snapshot_truncates_wal_and_replay_skips_included_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Store::open(dir.path(), 2).expect("open");
        let recs: Vec<_> = (0..4).map(|_| rec(s.next_seq())).collect();
        s.append(&recs).expect("append");
        // Crash between snapshot rename and WAL truncation: records 1..=4 are in both.
        let bytes = {
            let mut b = Vec::new();
            ciborium::into_writer(&snap(4), &mut b).expect("enc");
            b
        };
        write_atomic(&dir.path().join(SNAPSHOT), &bytes).expect("write");
        drop(s);
        let (mut s, r) = Store::open(dir.path(), 2).expect("reopen");
        assert!(
            r.records.is_empty(),
            "records already in the snapshot were replayed"
        );
        assert_eq!(s.next_seq(), 5);
        for v in 1..=4 {
            s.snapshot(&snap(4 + v), v).expect("snapshot");
        }
        assert_eq!(s.head_versions().expect("versions"), vec![3, 4]);
        assert_eq!(fs::metadata(dir.path().join(WAL)).expect("meta").len(), 0);
    }

    #[test]
    fn truncated_snapshot_falls_back_to_the_kept_head_and_temp_files_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Store::open(dir.path(), 2).expect("open");
        s.snapshot(&snap(0), 1).expect("snapshot");
        let recs: Vec<_> = (0..2).map(|_| rec(s.next_seq())).collect();
        s.append(&recs).expect("append");
        drop(s);
        fs::write(dir.path().join("snapshot.tmp"), b"partial").expect("tmp");
        let p = dir.path().join(SNAPSHOT);
        let full = fs::read(&p).expect("read");
        fs::write(&p, &full[..full.len() / 2]).expect("truncate");
        let (_, r) = Store::open(dir.path(), 2).expect("reopen");
        assert_eq!(r.removed_temp_files, 1);
        assert!(!dir.path().join("snapshot.tmp").exists());
        assert!(r.snapshot.is_none());
        assert!(r
            .corrupt_snapshot
            .as_deref()
            .unwrap_or("")
            .contains("corrupt"));
        assert_eq!(r.fallback_head.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(r.records, recs);
        assert!(!p.exists(), "corrupt snapshot left in place");
    }
}
