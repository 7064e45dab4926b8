//! Immutable prediction snapshots: input transform, `W z + b`, softmax and top-k.

use std::sync::Arc;

use serde::Serialize;

use super::linalg::{dot_f32, normalize};
use super::openset::{quantile_threshold, OpenSetParts};
use super::HeadError;

/// The numbers of a snapshot, as computed by a learner and stored in the head file.
///
/// Prediction: `z = (x - shift) * scale`; if `l2_normalize`, `z /= |z|` (unless zero);
/// `logits = W z + b`; `p = softmax(logits)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PredictorParts {
    /// Class labels, in class-index order.
    pub labels: Vec<String>,
    /// Row-major `C × d` weights.
    pub weights: Vec<f32>,
    /// `C` biases.
    pub bias: Vec<f32>,
    /// Input shift (`d`).
    pub shift: Vec<f32>,
    /// Input scale (`d`).
    pub scale: Vec<f32>,
    /// L2-normalize the transformed input.
    pub l2_normalize: bool,
    /// The open-set scorer and its calibration (on the raw input, not the transform).
    pub open: Option<OpenSetParts>,
}

impl PredictorParts {
    /// Parts without classes for `dim`-dimensional input.
    pub(crate) fn empty(dim: usize) -> PredictorParts {
        PredictorParts {
            labels: Vec::new(),
            weights: Vec::new(),
            bias: Vec::new(),
            shift: vec![0.0; dim],
            scale: vec![1.0; dim],
            l2_normalize: false,
            open: None,
        }
    }

    /// Builds parts from f64 weights (`C` rows of `d`), replacing everything by zeros (uniform
    /// predictions) with a warning if any value is not finite in f32.
    pub(crate) fn from_f64(
        labels: Vec<String>,
        weights: impl IntoIterator<Item = f64>,
        bias: impl IntoIterator<Item = f64>,
        shift: &[f64],
        scale: &[f64],
        l2_normalize: bool,
    ) -> PredictorParts {
        let c = labels.len();
        let mut parts = PredictorParts {
            labels,
            weights: weights.into_iter().map(|v| v as f32).collect(),
            bias: bias.into_iter().map(|v| v as f32).collect(),
            shift: shift.iter().map(|&v| v as f32).collect(),
            scale: scale.iter().map(|&v| v as f32).collect(),
            l2_normalize,
            open: None,
        };
        let d = parts.shift.len();
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !finite(&parts.shift) || !finite(&parts.scale) {
            tracing::warn!("non-finite input transform in head snapshot; using identity");
            parts.shift = vec![0.0; d];
            parts.scale = vec![1.0; d];
        }
        if parts.weights.len() != c * d
            || parts.bias.len() != c
            || !finite(&parts.weights)
            || !finite(&parts.bias)
        {
            tracing::warn!("non-finite weights in head snapshot; predictions are uniform");
            parts.weights = vec![0.0; c * d];
            parts.bias = vec![0.0; c];
        }
        parts
    }

    pub(crate) fn dim(&self) -> usize {
        self.shift.len()
    }
}

/// An immutable prediction snapshot of a head: cheap to clone, `Send + Sync`, never waits on
/// training.
#[derive(Clone)]
pub struct Predictor {
    inner: Arc<PredictorParts>,
    identity: bool,
    version: u64,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("classes", &self.inner.labels.len())
            .field("dim", &self.inner.dim())
            .field("version", &self.version)
            .finish()
    }
}

/// One scored class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Scored {
    /// The class label.
    pub label: String,
    /// Softmax probability over all classes of the head.
    pub score: f32,
}

/// The top classes for one embedding, best first.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Prediction {
    /// Up to `k` classes, by decreasing score (ties: lower class index first).
    pub top: Vec<Scored>,
    /// How unlike every known class the input is ([`Predictor::novelty`]).
    pub novelty: Option<f32>,
}

impl Prediction {
    /// Whether the input is like a known class at `threshold` (`None` without either).
    pub fn known(&self, threshold: Option<f32>) -> Option<bool> {
        Some(self.novelty? <= threshold?)
    }

    /// The top score minus the second's (`None` with fewer than two classes in `top`).
    pub fn margin(&self) -> Option<f32> {
        match self.top.as_slice() {
            [a, b, ..] => Some(a.score - b.score),
            _ => None,
        }
    }

    /// Whether the input is worth a label: unknown at `threshold`, or the top two scores
    /// closer than `margin` (the review queue's rule).
    pub fn worth_review(&self, threshold: Option<f32>, margin: f32) -> bool {
        self.known(threshold) == Some(false) || self.margin().is_some_and(|m| m < margin)
    }
}

impl Predictor {
    pub(crate) fn new(inner: Arc<PredictorParts>, version: u64) -> Predictor {
        let identity =
            inner.shift.iter().all(|&v| v == 0.0) && inner.scale.iter().all(|&v| v == 1.0);
        Predictor {
            inner,
            identity,
            version,
        }
    }

    /// The head version this snapshot was taken at.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True if the head had no classes.
    pub fn is_empty(&self) -> bool {
        self.inner.labels.is_empty()
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.inner.labels.len()
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Class labels in class-index order (the order of [`logits`](Self::logits)).
    pub fn labels(&self) -> &[String] {
        &self.inner.labels
    }

    /// Raw class scores (before softmax), in class-index order.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>, HeadError> {
        super::check_embedding(x, self.dim())?;
        if self.is_empty() {
            return Err(HeadError::NoClasses);
        }
        let p = &*self.inner;
        let d = p.dim();
        let z = self.features(x);
        let logits: Vec<f32> = p
            .weights
            .chunks_exact(d)
            .zip(&p.bias)
            .map(|(w, &b)| dot_f32(w, &z) + b)
            .collect();
        if logits.iter().all(|v| v.is_finite()) {
            Ok(logits)
        } else {
            Err(HeadError::NonFinite)
        }
    }

    /// The head's input transform of `x` (`(x - shift) * scale`, L2-normalized if the head
    /// normalizes); the caller checked the dimension.
    pub(crate) fn features(&self, x: &[f32]) -> Vec<f32> {
        let mut z = Vec::with_capacity(x.len());
        self.features_into(x, &mut z);
        z
    }

    /// [`features`](Self::features) into `z` (cleared first), to reuse one buffer.
    fn features_into(&self, x: &[f32], z: &mut Vec<f32>) {
        let p = &*self.inner;
        z.clear();
        if self.identity {
            z.extend_from_slice(x);
        } else {
            z.extend(
                x.iter()
                    .zip(&p.shift)
                    .zip(&p.scale)
                    .map(|((&v, &m), &s)| (v - m) * s),
            );
        }
        if p.l2_normalize {
            normalize(z);
        }
    }

    /// The index of the best class for `x` (ties: the lower index), with `z` as the buffer of
    /// the input transform; `None` where [`logits`](Self::logits) is an error. Allocates
    /// nothing once `z` has grown: for scoring many inputs (evaluation, `auto`'s candidates).
    pub fn top1(&self, x: &[f32], z: &mut Vec<f32>) -> Option<usize> {
        super::check_embedding(x, self.dim()).ok()?;
        let p = &*self.inner;
        self.features_into(x, z);
        let mut best: Option<(usize, f32)> = None;
        for (i, (w, &b)) in p.weights.chunks_exact(p.dim()).zip(&p.bias).enumerate() {
            let v = dot_f32(w, z) + b;
            if !v.is_finite() {
                return None;
            }
            if best.is_none_or(|(_, m)| v > m) {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i)
    }

    /// How unlike every known class `x` is: the Mahalanobis distance to the nearest class
    /// mean under the shrunk shared covariance (squared, per dimension) for heads that keep
    /// the scatter, else `1 − cos` to the nearest class mean. `None` for a snapshot without
    /// classes or a bad input.
    pub fn novelty(&self, x: &[f32]) -> Option<f32> {
        super::check_embedding(x, self.dim()).ok()?;
        let s = self.inner.open.as_ref()?.score(x);
        s.is_finite().then_some(s)
    }

    /// The novelty above which an input counts as unknown, so that about a fraction `frr` of
    /// the inputs of known classes does: a quantile of the novelty of the head's recent
    /// labeled samples, each scored before it was learned. `None` until enough were scored.
    pub fn threshold(&self, frr: f64) -> Option<f32> {
        quantile_threshold(&self.inner.open.as_ref()?.calibration, frr)
    }

    /// Softmax probabilities over all classes, in class-index order.
    pub fn probabilities(&self, x: &[f32]) -> Result<Vec<f32>, HeadError> {
        let mut p = self.logits(x)?;
        softmax_in_place(&mut p);
        Ok(p)
    }

    /// The `k` best classes (fewer if the head has fewer) with softmax scores, best first.
    pub fn predict(&self, x: &[f32], k: usize) -> Result<Prediction, HeadError> {
        let probs = self.probabilities(x)?;
        let k = k.min(probs.len());
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        let order = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
        if k < idx.len() {
            if k > 0 {
                idx.select_nth_unstable_by(k - 1, order);
            }
            idx.truncate(k);
        }
        idx.sort_unstable_by(order);
        Ok(Prediction {
            novelty: self.novelty(x),
            top: idx
                .into_iter()
                .map(|i| Scored {
                    label: self.inner.labels[i].clone(),
                    score: probs[i],
                })
                .collect(),
        })
    }

    pub(crate) fn parts(&self) -> &PredictorParts {
        &self.inner
    }
}

/// Numerically stable softmax.
pub(crate) fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        v.iter_mut().for_each(|x| *x /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Predictor {
        let parts = PredictorParts {
            labels: vec!["a".into(), "b".into(), "c".into()],
            weights: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            bias: vec![0.0, 0.0, -1.0],
            shift: vec![0.0; 2],
            scale: vec![1.0; 2],
            l2_normalize: false,
            open: None,
        };
        Predictor::new(Arc::new(parts), 7)
    }

    #[test]
    fn top_k_orders_and_truncates() {
        let p = toy();
        assert_eq!(p.version(), 7);
        let all = p.predict(&[2.0, 0.5], 10).unwrap();
        let labels: Vec<&str> = all.top.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["a", "c", "b"]);
        let sum: f32 = all.top.iter().map(|s| s.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(all.top.windows(2).all(|w| w[0].score >= w[1].score));
        let top1 = p.predict(&[2.0, 0.5], 1).unwrap();
        assert_eq!(top1.top, all.top[..1]);
        assert!(p.predict(&[2.0, 0.5], 0).unwrap().top.is_empty());
        // Ties go to the lower class index.
        let tie = p.predict(&[1.0, 1.0], 2).unwrap();
        assert_eq!(tie.top[0].label, "a");
        assert_eq!(tie.top[1].label, "b");
    }

    #[test]
    fn rejects_bad_input() {
        let p = toy();
        assert_eq!(
            p.predict(&[1.0], 1).unwrap_err().code(),
            "dimension_mismatch"
        );
        assert_eq!(
            p.predict(&[f32::INFINITY, 0.0], 1).unwrap_err().code(),
            "non_finite"
        );
        // Finite input whose scores overflow f32.
        assert_eq!(
            p.predict(&[3e38, 3e38], 1).unwrap_err().code(),
            "non_finite"
        );
        let empty = Predictor::new(Arc::new(PredictorParts::empty(2)), 0);
        assert!(empty.is_empty());
        assert_eq!(
            empty.predict(&[0.0, 0.0], 1).unwrap_err().code(),
            "no_classes"
        );
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Predictor>();
    }
}
