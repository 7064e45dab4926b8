//! Embedding the images of a dataset for `adaptd eval`: a content-addressed cache on disk,
//! parallel workers sharing one backbone, and progress on stderr.
//!
//! Cache key: SHA-256 of a format tag, the backbone's SHA-256, a hash of the model's embedding
//! output and input preprocessing (from `model.toml`) and the image bytes. Moving or renaming a dataset
//! keeps its cache; changing the model, its preprocessing or a file invalidates exactly what
//! changed. Entries are raw little-endian f32 files under
//! `CACHE/embeddings/<backbone sha256[..16]>/<key[..2]>/<key>.f32`, written atomically.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::model::Embedder;
use crate::model::ModelDir;

/// Tag hashed into every key; bump it when the cache layout or meaning changes.
const CACHE_TAG: &[u8] = b"adaptd-eval-embedding-v1\0";

/// The default cache directory: `$XDG_CACHE_HOME/adaptd`, else `$HOME/.cache/adaptd`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    non_empty("XDG_CACHE_HOME")
        .map(|d| PathBuf::from(d).join("adaptd"))
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache").join("adaptd")))
}

/// The identity of a model for caching: its ONNX and `model.toml` hashes.
#[derive(Debug, Clone)]
pub struct ModelId {
    /// SHA-256 (hex) of the ONNX file (the backbone hash heads are tied to).
    pub backbone_sha256: String,
    /// SHA-256 (hex) of the embedding output name and the input preprocessing.
    pub spec_sha256: String,
}

impl ModelId {
    /// Hashes the ONNX file and the parts of the model description that shape embeddings
    /// (embedding output and input preprocessing), without loading the network.
    pub fn of(model: &ModelDir) -> Result<ModelId> {
        let path = model.onnx_path();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let spec = format!("{}\n{:?}", model.spec.embedding_output, model.spec.input);
        Ok(ModelId {
            backbone_sha256: hex::encode(Sha256::digest(&bytes)),
            spec_sha256: hex::encode(Sha256::digest(spec.as_bytes())),
        })
    }

    /// The cache key of an image's bytes.
    pub fn key(&self, image: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(CACHE_TAG);
        h.update(self.backbone_sha256.as_bytes());
        h.update(b"\0");
        h.update(self.spec_sha256.as_bytes());
        h.update(b"\0");
        h.update(image);
        hex::encode(h.finalize())
    }
}

/// The on-disk embedding cache of one model.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache of `model` under `root`.
    pub fn new(root: &Path, model: &ModelId) -> Cache {
        let short = &model.backbone_sha256[..model.backbone_sha256.len().min(16)];
        Cache {
            dir: root.join("embeddings").join(short),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(&key[..2.min(key.len())])
            .join(format!("{key}.f32"))
    }

    /// The cached embedding, if present and well-formed (a corrupt entry is a miss).
    pub fn get(&self, key: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        if bytes.is_empty() || bytes.len() % 4 != 0 {
            return None;
        }
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        v.iter().all(|x| x.is_finite()).then_some(v)
    }

    /// Stores an embedding (write to a temporary file, then rename).
    pub fn put(&self, key: &str, v: &[f32]) -> Result<()> {
        let path = self.path(key);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// How images were turned into embeddings.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EmbedStats {
    /// Images in the dataset.
    pub images: usize,
    /// Served from the cache.
    pub cache_hits: usize,
    /// Run through the backbone.
    pub embedded: usize,
    /// Images that failed to read, decode or embed (left out of the benchmark).
    pub failed: usize,
    /// Mean backbone time per embedded image, in milliseconds (wall clock, all workers).
    pub ms_per_image: Option<f64>,
}

impl EmbedStats {
    /// The stats of two embedding runs together (a train and a test file): counts added, the
    /// mean time weighted by what each run embedded.
    pub fn combined(&self, other: &EmbedStats) -> EmbedStats {
        let embedded = self.embedded + other.embedded;
        let total_ms = |s: &EmbedStats| s.ms_per_image.map(|m| m * s.embedded as f64);
        let ms_per_image = match (total_ms(self), total_ms(other)) {
            (None, None) => None,
            (a, b) if embedded > 0 => Some((a.unwrap_or(0.0) + b.unwrap_or(0.0)) / embedded as f64),
            _ => None,
        };
        EmbedStats {
            images: self.images + other.images,
            cache_hits: self.cache_hits + other.cache_hits,
            embedded,
            failed: self.failed + other.failed,
            ms_per_image,
        }
    }
}

/// Progress on stderr: a rewritten line on a terminal, a log line every 10 s otherwise.
struct Progress {
    tty: bool,
    total: usize,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            total,
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, done: usize, hits: usize, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !force && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let embedded = done.saturating_sub(hits);
        let elapsed = self.started.elapsed().as_secs_f64();
        let (rate, eta) = if embedded > 0 {
            let per = elapsed / embedded as f64;
            let left = (self.total - done) as f64 * per;
            (format!("{:.0} ms/input", per * 1e3), format_secs(left))
        } else {
            ("-".to_string(), "-".to_string())
        };
        let line = format!(
            "embedding {done}/{} ({hits} cached), {rate}, ETA {eta}",
            self.total
        );
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{line}");
            if done == self.total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        } else {
            tracing::info!("{line}");
        }
    }
}

fn format_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Embeds `images` with the model (loaded only if some image is not cached), using `jobs`
/// worker threads. Returns one embedding per image (`None` for failures, which are logged).
pub fn embed_images(
    images: &[PathBuf],
    model: &ModelDir,
    id: &ModelId,
    cache: Option<&Cache>,
    jobs: usize,
) -> Result<(Vec<Option<Vec<f32>>>, EmbedStats)> {
    let load = |i: usize| -> Result<Vec<u8>> {
        let path = &images[i];
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let name = |i: usize| images[i].display().to_string();
    embed_with(images.len(), &load, &name, model, id, cache, jobs)
}

/// Produces the bytes of image `i` (a file, or a generated image such as a corrupted copy).
pub type Loader<'a> = dyn Fn(usize) -> Result<Vec<u8>> + Sync + 'a;

/// Like [`embed_images`] for `n` images whose bytes come from `load` (called once for the
/// cache key and again for each cache miss, so it must be deterministic); `name` names image
/// `i` in messages.
pub fn embed_with(
    n: usize,
    load: &Loader<'_>,
    name: &(dyn Fn(usize) -> String + Sync),
    model: &ModelDir,
    id: &ModelId,
    cache: Option<&Cache>,
    jobs: usize,
) -> Result<(Vec<Option<Vec<f32>>>, EmbedStats)> {
    let mut stats = EmbedStats {
        images: n,
        ..EmbedStats::default()
    };
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut misses: Vec<(usize, String)> = Vec::new();
    for (i, slot) in out.iter_mut().enumerate() {
        let bytes = match load(i) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("{}: {e:#}", name(i));
                stats.failed += 1;
                continue;
            }
        };
        let key = id.key(&bytes);
        match cache.and_then(|c| c.get(&key)) {
            Some(v) => {
                *slot = Some(v);
                stats.cache_hits += 1;
            }
            None => misses.push((i, key)),
        }
    }
    if misses.is_empty() {
        return Ok((out, stats));
    }
    let embedder = Embedder::load(model.clone(), false)
        .with_context(|| format!("loading the model in {}", model.dir.display()))?;
    anyhow::ensure!(
        embedder.backbone.info().sha256 == id.backbone_sha256,
        "the model file changed while it was being read"
    );
    let mut progress = Progress::new(n - stats.failed);
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let jobs = jobs.clamp(1, misses.len());
    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<f32>>)>();
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, misses, embedder) = (&next, &misses, &embedder);
            s.spawn(move || loop {
                let m = next.fetch_add(1, Ordering::Relaxed);
                let Some((i, _)) = misses.get(m) else { break };
                let result = load(*i).and_then(|b| Ok(embedder.embed_payload(&b)?));
                if tx.send((m, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = stats.cache_hits;
        for (m, result) in rx {
            let (i, key) = &misses[m];
            done += 1;
            match result {
                Ok(v) => {
                    if let Some(c) = cache {
                        if let Err(e) = c.put(key, &v) {
                            tracing::warn!("embedding cache: {e:#}");
                        }
                    }
                    out[*i] = Some(v);
                    stats.embedded += 1;
                }
                Err(e) => {
                    tracing::warn!("{}: {e:#}", name(*i));
                    stats.failed += 1;
                }
            }
            progress.tick(done, stats.cache_hits, done == progress.total);
        }
        Ok(())
    })?;
    if stats.embedded > 0 {
        stats.ms_per_image =
            Some(started.elapsed().as_secs_f64() * 1e3 * jobs as f64 / stats.embedded as f64);
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ModelId {
        ModelId {
            backbone_sha256: "ab".repeat(32),
            spec_sha256: "cd".repeat(32),
        }
    }

    #[test]
    fn keys_depend_on_model_and_content() {
        let a = id();
        let mut b = id();
        b.spec_sha256 = "ef".repeat(32);
        assert_eq!(a.key(b"img"), a.key(b"img"));
        assert_ne!(a.key(b"img"), a.key(b"img2"));
        assert_ne!(a.key(b"img"), b.key(b"img"));
        assert_eq!(a.key(b"").len(), 64);
    }

    #[test]
    fn cache_round_trips_and_rejects_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &id());
        let key = id().key(b"x");
        assert_eq!(cache.get(&key), None);
        cache.put(&key, &[1.0, -2.5]).unwrap();
        assert_eq!(cache.get(&key), Some(vec![1.0, -2.5]));
        std::fs::write(cache.path(&key), [0u8; 5]).unwrap();
        assert_eq!(cache.get(&key), None);
        std::fs::write(cache.path(&key), f32::NAN.to_le_bytes()).unwrap();
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_secs(5.4), "5s");
        assert_eq!(format_secs(125.0), "2m05s");
        assert_eq!(format_secs(-1.0), "0s");
    }
}
