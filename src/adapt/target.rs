//! Target-domain statistics: an exponentially weighted running mean, per-dimension second
//! moment and (for `coral`) full second-moment matrix of the unlabeled embeddings this board
//! sees, with a CBOR form for the state directory.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::cbor::Bytes;
use crate::head::linalg::{packed_len, syr_packed, unpack_scaled};

/// Format version of the stored statistics.
const FORMAT: u32 = 1;

/// Renormalize the lazy scale below this (keeps the raw sums far from f64 overflow).
const RESCALE_BELOW: f64 = 1e-100;

/// Running statistics with exponential forgetting.
///
/// With `window = W`, every new sample multiplies the weight of all earlier ones by
/// `1 − 1/W`: the effective sample count grows like `n` for `n ≪ W` and levels off at `W`,
/// so the statistics follow a camera that was moved. The decay is applied lazily through one
/// scalar (`scale`), so an update costs one pass over the sums (O(d), or O(d²) with the full
/// matrix) and nothing more.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetStats {
    dim: usize,
    window: u64,
    /// Effective (decayed) number of samples.
    weight: f64,
    /// Samples ever seen since the last reset.
    seen: u64,
    /// True value = `scale` × stored value, for `sum`, `sum_sq` and `packed`.
    scale: f64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// Packed lower triangle of Σ x xᵀ, when full covariance is tracked.
    packed: Option<Vec<f64>>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    backbone_sha256: String,
    dim: usize,
    window: u64,
    weight: f64,
    seen: u64,
    sum: Bytes,
    sum_sq: Bytes,
    packed: Option<Bytes>,
}

fn f64_bytes(v: &[f64]) -> Bytes {
    Bytes(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn bytes_f64(b: &Bytes, len: usize, what: &str) -> Result<Vec<f64>, String> {
    if b.0.len() != len * 8 {
        return Err(format!("{what}: {} bytes, expected {}", b.0.len(), len * 8));
    }
    let v: Vec<f64> =
        b.0.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
    if v.iter().all(|x| x.is_finite()) {
        Ok(v)
    } else {
        Err(format!("{what}: non-finite value"))
    }
}

impl TargetStats {
    /// Empty statistics; `full` also tracks the d × d second moment (6.5 MB at d = 1280).
    pub fn new(dim: usize, window: u64, full: bool) -> TargetStats {
        TargetStats {
            dim,
            window,
            weight: 0.0,
            seen: 0,
            scale: 1.0,
            sum: vec![0.0; dim],
            sum_sq: vec![0.0; dim],
            packed: full.then(|| vec![0.0; packed_len(dim)]),
        }
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Effective (decayed) sample count.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Samples seen since the last reset.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Whether the full second moment is tracked.
    pub fn is_full(&self) -> bool {
        self.packed.is_some()
    }

    /// Forgets everything (the camera moved).
    pub fn clear(&mut self) {
        let full = self.is_full();
        *self = TargetStats::new(self.dim, self.window, full);
    }

    /// Adds one embedding (the caller checked dimension and finiteness).
    pub fn push(&mut self, x: &[f32]) {
        let keep = if self.window > 0 {
            1.0 - 1.0 / self.window as f64
        } else {
            1.0
        };
        self.weight = self.weight * keep + 1.0;
        self.seen += 1;
        self.scale *= keep;
        if self.scale < RESCALE_BELOW {
            self.rescale();
        }
        let w = 1.0 / self.scale;
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for ((s, q), &v) in self.sum.iter_mut().zip(self.sum_sq.iter_mut()).zip(&xd) {
            *s += w * v;
            *q += w * v * v;
        }
        if let Some(p) = &mut self.packed {
            syr_packed(p, w, &xd);
        }
    }

    fn rescale(&mut self) {
        let s = self.scale;
        self.sum.iter_mut().for_each(|v| *v *= s);
        self.sum_sq.iter_mut().for_each(|v| *v *= s);
        if let Some(p) = &mut self.packed {
            p.iter_mut().for_each(|v| *v *= s);
        }
        self.scale = 1.0;
    }

    /// Weighted mean (zeros when empty).
    pub fn mean(&self) -> Vec<f64> {
        if self.weight <= 0.0 {
            return vec![0.0; self.dim];
        }
        let f = self.scale / self.weight;
        self.sum.iter().map(|s| s * f).collect()
    }

    /// Weighted per-dimension variance (never negative).
    pub fn var(&self) -> Vec<f64> {
        if self.weight <= 0.0 {
            return vec![0.0; self.dim];
        }
        let f = self.scale / self.weight;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let m = s * f;
                (q * f - m * m).max(0.0)
            })
            .collect()
    }

    /// Weighted covariance matrix, if the full second moment is tracked and not empty.
    pub fn cov(&self) -> Option<DMatrix<f64>> {
        let p = self.packed.as_ref()?;
        if self.weight <= 0.0 {
            return None;
        }
        let f = (self.scale / self.weight).sqrt();
        let mut m = unpack_scaled(p, &vec![f; self.dim]);
        let mean = nalgebra::DVector::from_vec(self.mean());
        m.ger(-1.0, &mean, &mean, 1.0);
        Some(m)
    }

    /// The CBOR form stored in the state directory.
    pub fn to_bytes(&self, backbone_sha256: &str) -> Vec<u8> {
        let mut me = self.clone();
        me.rescale();
        let stored = Stored {
            format: FORMAT,
            backbone_sha256: backbone_sha256.to_string(),
            dim: me.dim,
            window: me.window,
            weight: me.weight,
            seen: me.seen,
            sum: f64_bytes(&me.sum),
            sum_sq: f64_bytes(&me.sum_sq),
            packed: me.packed.as_deref().map(f64_bytes),
        };
        let mut out = Vec::new();
        // Writing to a Vec cannot fail for these plain types.
        let _ = ciborium::into_writer(&stored, &mut out);
        out
    }

    /// Reads statistics written by [`to_bytes`](Self::to_bytes) for this backbone and
    /// dimension. A different window keeps the statistics (the new decay applies from now);
    /// a different `full` setting drops or starts the matrix.
    pub fn from_bytes(
        bytes: &[u8],
        backbone_sha256: &str,
        dim: usize,
        window: u64,
        full: bool,
    ) -> Result<TargetStats, String> {
        let s: Stored = ciborium::from_reader(bytes).map_err(|e| format!("not CBOR: {e}"))?;
        if s.format != FORMAT {
            return Err(format!("format {} (expected {FORMAT})", s.format));
        }
        if s.backbone_sha256 != backbone_sha256 {
            return Err("statistics of another backbone".into());
        }
        if s.dim != dim {
            return Err(format!("dimension {} (expected {dim})", s.dim));
        }
        if !(s.weight.is_finite() && s.weight >= 0.0) {
            return Err("bad weight".into());
        }
        let packed = match (&s.packed, full) {
            (Some(p), true) => Some(bytes_f64(p, packed_len(dim), "packed")?),
            (None, true) if s.weight > 0.0 => {
                // Start the matrix from the diagonal: an approximation until the window turns over.
                let mut p = vec![0.0; packed_len(dim)];
                let sq = bytes_f64(&s.sum_sq, dim, "sum_sq")?;
                let mut off = 0;
                for (j, q) in sq.iter().enumerate() {
                    p[off] = *q;
                    off += dim - j;
                }
                Some(p)
            }
            (None, true) => Some(vec![0.0; packed_len(dim)]),
            (_, false) => None,
        };
        Ok(TargetStats {
            dim,
            window,
            weight: s.weight,
            seen: s.seen,
            scale: 1.0,
            sum: bytes_f64(&s.sum, dim, "sum")?,
            sum_sq: bytes_f64(&s.sum_sq, dim, "sum_sq")?,
            packed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, d: usize) -> Vec<f32> {
        (0..d)
            .map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.5 - 1.0)
            .collect()
    }

    #[test]
    fn without_decay_matches_plain_mean_var_and_cov() {
        let d = 4;
        let mut t = TargetStats::new(d, 0, true);
        let xs: Vec<Vec<f32>> = (0..50).map(|i| sample(i, d)).collect();
        xs.iter().for_each(|x| t.push(x));
        assert_eq!(t.seen(), 50);
        assert!((t.weight() - 50.0).abs() < 1e-12);
        let n = xs.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| xs.iter().map(|x| f64::from(x[j])).sum::<f64>() / n)
            .collect();
        for (a, b) in t.mean().iter().zip(&mean) {
            assert!((a - b).abs() < 1e-12);
        }
        let cov = t.cov().unwrap();
        for a in 0..d {
            for b in 0..d {
                let want = xs
                    .iter()
                    .map(|x| (f64::from(x[a]) - mean[a]) * (f64::from(x[b]) - mean[b]))
                    .sum::<f64>()
                    / n;
                assert!((cov[(a, b)] - want).abs() < 1e-9, "{a},{b}");
            }
            assert!((cov[(a, a)] - t.var()[a]).abs() < 1e-9);
        }
    }

    #[test]
    fn decay_follows_a_moved_camera_and_survives_rescaling() {
        let mut t = TargetStats::new(2, 100, false);
        for _ in 0..1000 {
            t.push(&[0.0, 1.0]);
        }
        // 100k more samples force many lazy rescales.
        for _ in 0..100_000 {
            t.push(&[5.0, 1.0]);
        }
        let m = t.mean();
        assert!((m[0] - 5.0).abs() < 1e-6, "{m:?}");
        assert!((t.weight() - 100.0).abs() < 1e-6);
        assert!(t.var()[0] < 1e-6);
    }

    #[test]
    fn clear_and_round_trip() {
        let mut t = TargetStats::new(3, 10, true);
        for i in 0..25 {
            t.push(&sample(i, 3));
        }
        let bytes = t.to_bytes("abc");
        let back = TargetStats::from_bytes(&bytes, "abc", 3, 10, true).unwrap();
        for (a, b) in back.mean().iter().zip(t.mean()) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(back.seen(), 25);
        assert!(TargetStats::from_bytes(&bytes, "other", 3, 10, true).is_err());
        assert!(TargetStats::from_bytes(&bytes, "abc", 4, 10, true).is_err());
        assert!(TargetStats::from_bytes(&bytes[..bytes.len() / 2], "abc", 3, 10, true).is_err());
        let diag = TargetStats::from_bytes(&bytes, "abc", 3, 10, false).unwrap();
        assert!(!diag.is_full());
        t.clear();
        assert_eq!(t, TargetStats::new(3, 10, true));
    }
}
